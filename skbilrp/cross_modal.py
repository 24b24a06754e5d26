"""Image × text similarities as a scikit-learn kernel, explained patch × token with BiLRP.

:class:`CrossModalKernel` is the estimator of :class:`~skbilrp.DeepKernel` over two
encoders: an :class:`~skbilrp.encoders.ImageEncoder` for the image tower ``phi`` and a
:class:`~skbilrp.encoders.TextEncoder` for the text tower ``psi``, both mapping into
one space. The kernel is defined on images and texts alike,
``k(u, v) = <f(u), f(v)>`` with ``f`` the tower of each sample's modality, so
``fit(texts).transform(images)`` gives ``K(images, texts)`` (zero-shot
classification is its argmax over class prompts) and ``fit(images).transform(texts)``
the transposed block. Each entry between an image and a text is explained as a
``(patches of the image) × (tokens of the text)`` relevance matrix: the product of the
two towers' per-sample BiLRP factors, which conserves the similarity.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence, Union

import numpy as np
from torch import nn

from .encoders import ImageEncoder, TextEncoder, modality
from .kernel import DeepKernel, KernelName, OutputName
from .models.towers import image_tower, is_image_tower
from .pairs import DEFAULT_MAX_MEMORY
from .pooling import PoolingSpec
from .rules import RuleSpec
from .token_pairs import TextPairExplanations

__all__ = ["CrossModalKernel", "modality"]


class CrossModalKernel(DeepKernel):
    """Dual-encoder kernel between images and texts, explained patch × token.

    ``transform(X)`` returns ``K(X, X_fit_)``: the cosine (or dot product) of the image
    tower's and the text tower's embeddings, for any modality on either side:
    ``fit(prompts).transform(images)`` is the zero-shot score matrix (argmax over the
    prompts of the classes), ``fit(images).transform(queries)`` ranks images for text
    queries, and ``output="distance"`` feeds ``KNeighborsClassifier(metric="precomputed")``.
    :meth:`explain_pairs` explains entries with BiLRP: an image × text entry on pairs
    of (patch, token), or (patch, word) with ``words=True``.

    The modality of ``X`` is read off its type: strings are texts, arrays and tensors
    images; a batch mixing both is refused.

    Parameters
    ----------
    image_model : torch.nn.Module
        Image tower ``phi``: a batch ``(N, *input_shape)`` to embeddings ``(N, h)``
        (e.g. ``skbilrp.models.zero_shot_imagenet()``). A Hugging Face dual encoder
        (``CLIPModel``, ``SiglipModel``, or their vision models with the projection or
        pooling head) is taken as is: its image side is
        :func:`skbilrp.models.image_tower` of it, exactly ``get_image_features`` of the
        ``pixel_values`` its image processor makes. Copied in :meth:`fit`, never modified.
    text_model : None, SentenceTransformer, Hugging Face model, SentenceEncoder, str or path, default=None
        Text tower ``psi`` mapping texts into the same ``h``-dimensional space, as
        :class:`~skbilrp.TextKernel` takes it; None: all-MiniLM-L6-v2 (offline). A
        ``CLIPModel`` or ``SiglipModel`` gives its text side, ``get_text_features``
        (see :func:`skbilrp.models.text_tower`), so that one dual encoder passed as both
        ``image_model`` and ``text_model`` (with its ``tokenizer``) is the model's own
        similarity.
    kernel : {"linear", "cosine"}, default="cosine"
        Dot product of the embeddings, or of the unit-normalised embeddings. A dual
        encoder's learned temperature (CLIP's ``logit_scale``) is a constant factor
        of the logits, not part of the kernel; multiply by it if logits are wanted.
    output : {"kernel", "distance"}, default="kernel"
        See :class:`~skbilrp.DeepKernel`. Explanations always explain kernel entries.
    tokenizer : None, str or transformers tokenizer, default=None
        The text tower's tokenizer where it does not bring its own (see
        :class:`~skbilrp.TextKernel`).
    input_shape : tuple of int, optional
        Shape of one image as the image tower takes it; lets flat rows through and
        checks image batches. Default: the shape of the images given.
    rules : str, Rule, mapping or callable, default="zero-share"
        LRP rules of both towers (see :class:`~skbilrp.Explainer`). The default, LRP-0
        with the biases' share passed on, conserves the similarity; ``"zero"`` lets
        biases absorb their share (reported as ``conservation_error``). Deep CNNs
        with folded BatchNorm biases (MobileNetV2, EfficientNet) have presets of
        their own (z^B on the first conv, LRP-γ on depthwise convs); to use one on the
        image tower and LRP-0 with shared biases on the text tower, pass e.g.
        ``{**mobilenet_v2_rules(m), rule_targets(): Zero(bias="share")}``, as the
        README does.
    pooling : None, int, tuple or array, optional
        Groups of image positions (e.g. ``16`` for 16-pixel patches), see
        :class:`~skbilrp.DeepKernel`. Texts are explained per token.
    attention : {"cp", "attnlrp"}, default="cp"
        How relevance passes attention layers of either tower (see :class:`~skbilrp.TextKernel`).
    max_length : int, optional
        Texts are truncated to this many tokens; default the text tower's.
    batch_size : int, default=32
        Samples per forward pass (and per relevance batch), on either tower.
    max_memory : int, default=2 GiB
        Largest whole explanation array that the ``relevance`` of an
        :meth:`explain_pairs` result may build, in bytes.
    verbose : bool, default=False

    Attributes
    ----------
    image_model_ : torch.nn.Module
        The frozen copy of ``image_model`` (of its image tower for a dual encoder).
    text_model_ : SentenceEncoder
        The frozen text encoder.
    tokenizer_ : transformers tokenizer
    max_length_ : int
    fit_modality_ : {"images", "texts"}
        What the training samples are.
    X_fit_ : ndarray
        The training samples (images as float64 ``(n, *shape)``, texts as an object
        array): the columns of :meth:`transform`.
    features_fit_ : ndarray of shape (n_fit, h), float64
        Their embeddings.

    See Also
    --------
    DeepKernel : The same estimator on images alone.
    TextKernel : The same estimator on texts alone.

    Examples
    --------
    >>> import numpy as np
    >>> from skbilrp import CrossModalKernel
    >>> from skbilrp.models import zero_shot_imagenet              # doctest: +SKIP
    >>> kern = CrossModalKernel(zero_shot_imagenet(), pooling=32)  # doctest: +SKIP
    >>> kern.fit(["a photo of a cat", "a cup of coffee"])          # doctest: +SKIP
    >>> scores = kern.transform(images)                            # doctest: +SKIP
    >>> scores.argmax(axis=1)                                      # zero-shot classes  # doctest: +SKIP
    >>> E = kern.explain_pairs(images[:1], words=True)            # doctest: +SKIP
    >>> E.pair(0, 0).relevance.shape                               # (patches, words)  # doctest: +SKIP
    """

    def __init__(self, image_model: nn.Module, text_model: Union[None, str, os.PathLike, nn.Module] = None,
                 kernel: KernelName = "cosine", output: OutputName = "kernel", tokenizer: Any = None,
                 input_shape: Optional[tuple] = None, rules: RuleSpec = "zero-share", pooling: PoolingSpec = None,
                 attention: str = "cp", max_length: Optional[int] = None, batch_size: int = 32,
                 max_memory: int = DEFAULT_MAX_MEMORY, verbose: bool = False) -> None:
        self.image_model = image_model
        self.text_model = text_model
        self.kernel = kernel
        self.output = output
        self.tokenizer = tokenizer
        self.input_shape = input_shape
        self.rules = rules
        self.pooling = pooling
        self.attention = attention
        self.max_length = max_length
        self.batch_size = batch_size
        self.max_memory = max_memory
        self.verbose = verbose

    def __sklearn_tags__(self):  # noqa: D105
        tags = super().__sklearn_tags__()
        tags.input_tags.string = True
        return tags

    # ------------------------------------------------------------------ fitting

    # see DeepKernel._check_params_unchanged: what set_params after fit invalidates
    _FIT_PARAMS = ("image_model", "text_model", "tokenizer", "input_shape", "max_length")
    _EXPLAIN_PARAMS = ("rules", "pooling", "attention", "batch_size")

    def fit(self, X: Any, y: Any = None) -> "CrossModalKernel":
        """Copy both towers, store the training samples (texts or images) and their embeddings.

        Parameters
        ----------
        X : sequence of str, or array-like of images
            Training samples of one modality: texts (e.g. class prompts) or images
            ``(n, *input_shape)`` (a list of same-shaped arrays is one batch).
        y : None
            Ignored.

        Returns
        -------
        self : CrossModalKernel

        Raises
        ------
        ValueError
            If the towers embed into spaces of different dimensions, naming both.
        """
        return super().fit(X, y)

    def _fit_encoders(self, X: Any) -> np.ndarray:
        name = type(self).__name__
        images = ImageEncoder(_image_side(self.image_model), self.input_shape, self.rules, self.pooling, self.attention,
                              self.batch_size, owner_name=name)
        texts = TextEncoder(self.text_model, self.tokenizer, self.rules, self.attention, self.max_length,
                            self.batch_size, owner_name=name)
        self._sides = {"images": images, "texts": texts}  # several sides: the samples say which (modality)
        self.fit_modality_ = modality(X)
        X = self._sides[self.fit_modality_].validate(X, reset=True)
        loaded = images.load()
        self.image_model_ = loaded["model_"]
        if images.input_shape_ is not None:
            self.input_shape_ = images.input_shape_
        loaded = texts.load()
        self.text_model_, self.tokenizer_, self.max_length_ = loaded["model_"], loaded["tokenizer_"], loaded["max_length_"]
        self._check_same_space()
        return X

    def _check_same_space(self) -> None:
        """Refuse towers whose embeddings differ in length (one probe sample each)."""
        dims = {side: encoder.feature_dim() for side, encoder in self._sides.items()}
        if None not in dims.values() and dims["images"] != dims["texts"]:
            raise ValueError(_dims_message(dims["images"], dims["texts"]))

    def features(self, X: Any) -> np.ndarray:
        """Embeddings of texts or images by their tower, float64 of shape (n, h).

        Parameters
        ----------
        X : sequence of str, or array-like of images

        Returns
        -------
        ndarray of shape (n_samples, h)

        Raises
        ------
        ValueError
            If the tower of ``X`` embeds into a space of another dimension than the
            training samples' tower.
        """
        features = super().features(X)
        h_fit = self.features_fit_.shape[1]
        if features.shape[1] != h_fit:
            dims = {self.fit_modality_: h_fit, _other(self.fit_modality_): features.shape[1]}
            raise ValueError(_dims_message(dims["images"], dims["texts"]))
        return features

    # -------------------------------------------------------------- explaining

    def explain_pairs(self, X: Any, Y: Any = None, pairs: Optional[Sequence[tuple[int, int]]] = None,
                      words: bool = False) -> TextPairExplanations:
        """Explain kernel entries with BiLRP: patch × token for an image and a text.

        Parameters
        ----------
        X : sequence of str, or array-like of images
            Row samples.
        Y : sequence of str, or array-like of images, optional
            Column samples; default the training samples (the entries of ``transform(X)``).
        pairs : sequence of (i, j), optional
            Explain only these entries.
        words : bool, default=False
            Sum each word's pieces on the text sides (see :meth:`TextKernel.explain_pairs`).

        Returns
        -------
        TextPairExplanations or PairExplanations
            Factored (entries computed on demand); each entry sums to ``similarity``
            up to ``conservation_error``. For an image side ``tokens_a`` (or
            ``tokens_b``) is None and the groups are the image's patches; ``.pair(i, j)``
            gives one ``(patches, tokens)`` matrix. Between two images (no text side),
            a plain :class:`~skbilrp.PairExplanations`.
        """
        expl = super().explain_pairs(X, Y, pairs)
        return expl.words() if words and isinstance(expl, TextPairExplanations) else expl


def _image_side(model: Any) -> Any:
    """The image tower of a Hugging Face dual encoder (a view sharing its weights, which
    the encoder copies), or the model as given."""
    return image_tower(model) if is_image_tower(model) else model


def _other(side: str) -> str:
    return "texts" if side == "images" else "images"


def _dims_message(image_dim: int, text_dim: int) -> str:
    return (f"The image tower embeds into {image_dim} dimensions and the text tower into {text_dim}; a "
            "cross-modal kernel compares the two embeddings in one space. Use towers trained together "
            "(with their projections, e.g. CLIP's get_image_features / get_text_features), or map one "
            "tower into the other's space (e.g. skbilrp.models.zero_shot_imagenet for MiniLM).")
