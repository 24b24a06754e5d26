"""Cross-modal second-order pointing game: does a patch × token explanation find the named photo?

The image × text analogue of the collage game (:mod:`.pointing`), after FIxLIP's
second-order pointing game (Baniecki et al., NeurIPS 2025): a collage of ``grid²``
photos in a ``grid × grid`` grid is paired with a prompt that names one of them ("a
photo of a cat"), so the truth is known by construction: the prompt matches the
named photo's tile, not the other tiles (:func:`make_named_collages`).

The score of one explanation ``R`` (``(patches, tokens)``, all tokens of the prompt,
special ones included) is the **share of its positive relevance on patches inside
the named tile**, :func:`~skbilrp.evaluation.pointing_share` with the mask "patch in
the named tile" over every token (:func:`named_tile_masks`). Chance is the tile's
share of the patches, ``1 / grid²``: a relevance blind to the content gets that on
average. A second column restricts both the explanation and the mask to the tokens
of the prompt's content words (the name without function words, e.g. "cup" and
"coffee" of "a cup of coffee", :func:`content_token_flags`), where the link to the
photo is made.

:func:`cross_pointing_game` explains every collage-prompt pair with every method
(:func:`default_cross_methods`: BiLRP of a :class:`~skbilrp.CrossModalKernel`, the
outer product of the two gradient × input maps of the similarity, random) and
returns a :class:`~skbilrp.evaluation.PointingResults`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional, Protocol, Union

import numpy as np
import torch
from sklearn.base import clone

from ..pooling import PoolingSpec, make_pooling
from .flipping import _kernel_rows
from .pointing import PointingResults, _assemble, _collage_photos, _tile, group_tiles, score_pointing
from .text import FIRST_LAYER, _embed, _explained_at, _length_batches, tokenize_texts
from .text_pointing import STOPWORDS, _WORD, _token_flags

__all__ = [
    "NamedCollages",
    "make_named_collages",
    "named_tile_masks",
    "content_token_flags",
    "CrossExplanationMethod",
    "BiLRPCrossMethod",
    "SaliencyOuterCrossMethod",
    "RandomCrossMethod",
    "default_cross_methods",
    "cross_pointing_game",
]

#: the column names of :func:`cross_pointing_game`'s results
NAMED_TILE = "named tile"
CONTENT_TOKENS = "named tile, content tokens"


# --------------------------------------------------------------------------- collages


@dataclass
class NamedCollages:
    """Collages of distinct photos, one of which a prompt will name.

    Attributes
    ----------
    X : torch.Tensor of shape (n, C, side, side), float32
    photos : ndarray of shape (n, grid²), int
        Index (into the photos given) of the photo in each tile, row-major tiles.
    named : ndarray of shape (n,), int
        The tile whose photo the prompt names.
    grid : int
    """

    X: torch.Tensor
    photos: np.ndarray
    named: np.ndarray
    grid: int

    def __len__(self) -> int:
        return len(self.X)

    @property
    def named_photo(self) -> np.ndarray:
        """Index of the named photo of every collage, ``(n,)``."""
        return self.photos[np.arange(len(self.named)), self.named]


def make_named_collages(photos: Sequence[np.ndarray], n_collages: int, side: int, grid: int = 2,
                        random_state: Union[None, int, np.random.Generator] = None) -> NamedCollages:
    """Collages of ``grid²`` distinct photos in random places, one tile drawn to be named.

    Every tile shows the central square of a photo resized to ``side // grid`` pixels
    (as in :func:`~skbilrp.evaluation.make_collage_pairs`). Per collage, the photos,
    their places and the named tile are drawn independently.

    Parameters
    ----------
    photos : sequence of ndarray of shape (C, H, W)
        At least ``grid²`` photos, all with the same channels, values as the model
        expects them.
    n_collages : int
    side : int
        Collage side in pixels, a multiple of ``grid``.
    grid : int, default=2
    random_state : None, int or numpy.random.Generator

    Returns
    -------
    NamedCollages

    Raises
    ------
    ValueError
        For too few photos, a side that is not a multiple of ``grid``, or photos with
        different channels.
    """
    k = grid * grid
    pics = _collage_photos(photos, side, grid)
    rng = np.random.default_rng(random_state)
    chosen = np.stack([rng.choice(len(pics), size=k, replace=False) for _ in range(n_collages)])
    named = rng.integers(k, size=n_collages)
    tiles = {i: _tile(pics[i], side // grid, 1.0, False) for i in np.unique(chosen)}  # each photo resized once
    X = torch.stack([_assemble([tiles[i] for i in row], grid) for row in chosen])
    return NamedCollages(X, chosen, named, grid)


def named_tile_masks(collages: NamedCollages, pooling: PoolingSpec, n_tokens: Sequence[int],
                     channel_axis: Optional[int] = 0) -> list[np.ndarray]:
    """The hits of every collage-prompt pair: patches of the named tile, with every token.

    Parameters
    ----------
    collages : NamedCollages
    pooling : None, int, tuple or array
        Groups of pixels; none may straddle two tiles (see
        :func:`~skbilrp.evaluation.group_tiles`).
    n_tokens : sequence of int
        Tokens of each prompt (special ones included).
    channel_axis : int or None, default=0

    Returns
    -------
    list of ndarray of bool
        ``(patches, T_n)`` per pair.
    """
    tiles = group_tiles(pooling, tuple(collages.X.shape[1:]), collages.grid, channel_axis)
    return [np.repeat((tiles == t)[:, None], n, axis=1) for t, n in zip(collages.named, n_tokens)]


def content_token_flags(encoder: Any, prompts: Sequence[str], names: Sequence[str],
                        max_length: Optional[int] = None) -> list[np.ndarray]:
    """Which tokens of each prompt belong to the content words of the name it holds.

    The name's last occurrence in the prompt is taken; its content words are its
    words not in :data:`~skbilrp.evaluation.STOPWORDS` ("a cup of coffee": "cup",
    "coffee").

    Parameters
    ----------
    encoder : SentenceEncoder
        Or any module whose ``tokenize(texts, max_length)`` gives character
        ``offset_mapping`` (a fast tokenizer), with an optional ``prompt`` prefix.
    prompts : sequence of str
    names : sequence of str
        The phrase naming the photo, a substring of its prompt.
    max_length : int, optional

    Returns
    -------
    list of ndarray of bool
        ``(T_n,)`` per prompt.

    Raises
    ------
    ValueError
        If a name is not in its prompt or has no content word, the tokenizer gives no
        character offsets, or a name's tokens were truncated away.
    """
    encoding = encoder.tokenize(list(prompts), max_length)
    if "offset_mapping" not in encoding:
        raise ValueError("The tokenizer gives no character offsets (offset_mapping); the name's tokens cannot be "
                         "found. Use a fast tokenizer.")
    shift = len(getattr(encoder, "prompt", "") or "")
    flags = []
    for n, (prompt, name) in enumerate(zip(prompts, names)):
        start = prompt.rfind(name)
        if start < 0:
            raise ValueError(f"The name {name!r} is not in its prompt {prompt!r}.")
        words = [m.span() for m in _WORD.finditer(name) if m.group().lower() not in STOPWORDS]
        if not words:
            raise ValueError(f"The name {name!r} has no content word (all of its words are stop words).")
        offsets = encoding["offset_mapping"][n]
        hit = np.zeros(len(offsets), dtype=bool)
        for s, e in words:
            hit |= _token_flags(offsets, (start + s, start + e), shift)
        if not hit.any():
            raise ValueError(f"The name {name!r} of prompt {n} has no token (truncated?).")
        flags.append(hit)
    return flags


# ---------------------------------------------------------------------------- methods


class CrossExplanationMethod(Protocol):
    """A way to explain image × text similarities on (patch, token) pairs.

    ``method(kernel, images, texts)`` explains ``k(phi(images[n]), psi(texts[n]))``
    for every ``n``, with ``kernel`` a fitted :class:`~skbilrp.CrossModalKernel` (its
    towers, kernel and pooling), and returns a list of ndarrays, the ``n``-th of shape
    ``(patches, T_n)`` over all tokens of ``texts[n]``, special ones included.
    """

    def __call__(self, kernel: Any, images: torch.Tensor, texts: Sequence[str]) -> list[np.ndarray]: ...


@dataclass
class BiLRPCrossMethod:
    """BiLRP with the kernel's own rules: :meth:`CrossModalKernel.explain_pairs`."""

    def __call__(self, kernel: Any, images: torch.Tensor, texts: Sequence[str]) -> list[np.ndarray]:
        expl = kernel.explain_pairs(images, list(texts), pairs=[(n, n) for n in range(len(texts))])
        return [np.asarray(expl.pair(k).relevance, dtype=np.float64) for k in range(len(texts))]


@dataclass
class SaliencyOuterCrossMethod:
    """Outer product of the two gradient × input maps of the similarity, from plain autograd.

    ``s = x ⊙ ∇_x y`` summed over the pixels of each patch, ``t = e ⊙ ∇_e y`` summed
    over the hidden axis of each token, for ``y = k(phi(x), psi(e))``; then ``R = s tᵀ``.
    It says which patches and which tokens matter, not which patch goes with which
    token.

    Parameters
    ----------
    at : str or None, default="encoder.layer.0"
        Where the text side's input ``e`` is taken: the input of this module of the
        text tower (the first transformer layer, as for
        :class:`~skbilrp.evaluation.SaliencyOuterTextMethod`: at the raw embeddings the
        embedding LayerNorm makes every token's gradient × input zero), or None for
        the text encoder's own explained input.
    batch_size : int, default=8
        Pairs per backward pass.
    """

    at: Optional[str] = FIRST_LAYER
    batch_size: int = 8

    def __call__(self, kernel: Any, images: torch.Tensor, texts: Sequence[str]) -> list[np.ndarray]:
        image_model, encoder = kernel.image_model_, _explained_at(kernel.text_model_, self.at)
        dtype = next(image_model.parameters()).dtype
        tokens = tokenize_texts(kernel.text_model_, texts, kernel.max_length_)
        pool = make_pooling(kernel.pooling, tuple(images.shape[1:]), 0)
        out: list = [None] * len(texts)
        for rows in _length_batches([len(s) for s in tokens.ids], self.batch_size):
            x = torch.as_tensor(images)[torch.as_tensor(rows)].to(dtype).detach().requires_grad_(True)
            e, mask = _embed(encoder, [tokens.ids[r] for r in rows])
            e = e.detach().requires_grad_(True)
            with torch.enable_grad():
                y = _kernel_rows(image_model(x).flatten(1), encoder(e, mask).flatten(1), kernel.kernel)
                gx, ge = torch.autograd.grad(y.sum(), (x, e))
            s = pool.pool((gx * x).detach()).double().numpy()
            t = (ge * e).sum(-1).detach().double().numpy()
            for k, r in enumerate(rows):
                out[r] = np.outer(s[k], t[k, : len(tokens.ids[r])])
        return out


@dataclass
class RandomCrossMethod:
    """Random (patch, token) relevance, uniform in [0, 1), seeded.

    Parameters
    ----------
    seed : int, default=0
    """

    seed: int = 0

    def __call__(self, kernel: Any, images: torch.Tensor, texts: Sequence[str]) -> list[np.ndarray]:
        rng = np.random.default_rng(self.seed)
        p = make_pooling(kernel.pooling, tuple(images.shape[1:]), 0).n_groups
        tokens = tokenize_texts(kernel.text_model_, texts, kernel.max_length_)
        return [rng.random((p, len(ids))) for ids in tokens.ids]


def default_cross_methods(at: Optional[str] = FIRST_LAYER, seed: int = 0) -> dict[str, CrossExplanationMethod]:
    """The methods of the cross-modal pointing game: ``bilrp``, ``gradxinput_outer``, ``random``.

    Parameters
    ----------
    at : str or None, default="encoder.layer.0"
        Text input of the gradient method (see :class:`SaliencyOuterCrossMethod`).
    seed : int, default=0
        Seed of the random method.

    Returns
    -------
    dict of str to CrossExplanationMethod
    """
    return {"bilrp": BiLRPCrossMethod(), "gradxinput_outer": SaliencyOuterCrossMethod(at=at),
            "random": RandomCrossMethod(seed)}


# ------------------------------------------------------------------------------- game


def cross_pointing_game(kernel: Any, collages: NamedCollages, prompts: Sequence[str],
                        methods: Optional[Mapping[str, Union[CrossExplanationMethod, Sequence[np.ndarray]]]] = None,
                        names: Optional[Sequence[str]] = None) -> PointingResults:
    """Explain every collage-prompt pair with every method and score the named tile's share.

    Parameters
    ----------
    kernel : CrossModalKernel
        With an integer (or tuple) ``pooling`` whose patches do not straddle two
        tiles. Used as given if fitted, else a clone is fitted on the prompts (the
        estimator passed is never modified).
    collages : NamedCollages
        From :func:`make_named_collages`.
    prompts : sequence of str
        One per collage, naming its named photo.
    methods : mapping of str to CrossExplanationMethod or list of ndarray, optional
        Default :func:`default_cross_methods`; a list gives precomputed
        ``(patches, T_n)`` explanations.
    names : sequence of str, optional
        The phrase of each prompt naming the photo; adds the column restricted to its
        content tokens (:func:`content_token_flags`).

    Returns
    -------
    PointingResults
        Column ``"named tile"`` (all tokens), and ``"named tile, content tokens"``
        when ``names`` are given; chance is the named tile's share of the patches.

    Raises
    ------
    ValueError
        If the prompts are not one per collage.
    """
    if len(prompts) != len(collages):
        raise ValueError(f"{len(prompts)} prompts for {len(collages)} collages; give one prompt per collage.")
    if not hasattr(kernel, "image_model_"):
        kernel = clone(kernel).fit(list(dict.fromkeys(prompts)))
    methods = default_cross_methods() if methods is None else methods
    explanations, seconds = {}, {}
    for name, method in methods.items():
        start = time.perf_counter()
        explanations[name] = method(kernel, collages.X, list(prompts)) if callable(method) else list(method)
        seconds[name] = time.perf_counter() - start
    tokens = tokenize_texts(kernel.text_model_, prompts, kernel.max_length_)
    masks = named_tile_masks(collages, kernel.pooling, [len(ids) for ids in tokens.ids])
    results = score_pointing(explanations, {NAMED_TILE: masks}, seconds)
    if names is not None:
        keep = content_token_flags(kernel.text_model_, prompts, names, kernel.max_length_)
        content = score_pointing({m: [r[:, c] for r, c in zip(rel, keep)] for m, rel in explanations.items()},
                                 {CONTENT_TOKENS: [mask[:, c] for mask, c in zip(masks, keep)]})
        results.columns.append(CONTENT_TOKENS)
        results.share.update(content.share)
        results.chance.update(content.chance)
    return results
