"""Entry points: :class:`Explainer` (reusable) and :func:`bilrp` (one pair)."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import nn

from ._checks import check_model_weights
from .engine import ExportedNetwork
from .pairs import Kernel, PairExplanation, PairExplanations, pair_relevance
from .pooling import PoolingSpec
from .relevance import Method, Mode, RelevanceComputer, SampleRelevance
from .rules import RuleSpec

__all__ = ["Explainer", "bilrp"]


class Explainer:
    """Explains a deep similarity ``k(x, x') = <phi(x), phi(x')>`` with BiLRP.

    The model is canonised and traced once per model, not per input shape: the export
    has symbolic batch, sequence and spatial sizes where the model allows, and is shared
    by every Explainer (and :func:`bilrp` call) on the same model until its parameters
    or buffers change (see the docs page "Performance"). Per-sample relevance is
    computed once per input and reused for every pair it takes part in.

    Parameters
    ----------
    model : nn.Module
        Feature extractor ``phi``, mapping a batch ``(N, ...)`` to ``(N, h)`` (further
        output axes are flattened). It is copied, never modified.
    rules : str, Rule, mapping or callable, default="zero"
        "zero" (LRP-0, equal to Hessian×Product on ReLU networks), "zero-share",
        "zero-mass" and "zero-flat" (LRP-0 with biases passing their share on),
        "epsilon", "gamma",
        "vgg", a Rule for every layer, a mapping {type or name pattern: Rule}, or a
        callable ``(name, module) -> Rule | None``.
    pooling : None, int, tuple or array, default=None
        Groups of input positions: None (each position), a patch size, or labels.
    channel_axis : int or None, default=0
        Channel axis of one sample, summed over (``-1`` for ``(T, D)`` embeddings).
    mode : {"auto", "forward", "reverse"}, default="auto"
    method : {"bilrp", "hp"}, default="bilrp"
    batch_size : int, default=16
    max_memory : int, default=1 GiB
        Memory budget of one chunk of probes, in bytes.
    dtype : torch.dtype, optional
        Compute dtype (e.g. ``torch.float64`` for exact comparisons).
    verbose : bool, default=False
    attention : {"cp", "attnlrp"}, default="cp"
        Attention probabilities as constants (CP-LRP) or AttnLRP's softmax rule (see
        the docs page "Operator table").

    Examples
    --------
    >>> import torch
    >>> phi = torch.nn.Sequential(torch.nn.Linear(4, 3, bias=False), torch.nn.ReLU())
    >>> ex = Explainer(phi)
    >>> e = ex.explain(torch.rand(2, 4), torch.rand(3, 4))
    >>> e.relevance.shape
    (2, 3, 4, 4)
    """

    def __init__(self, model: nn.Module, rules: RuleSpec = "zero", pooling: PoolingSpec = None,
                 channel_axis: Optional[int] = 0, mode: Mode = "auto", method: Method = "bilrp",
                 batch_size: int = 16, max_memory: int = 2**30, dtype: Optional[torch.dtype] = None,
                 verbose: bool = False, attention: str = "cp") -> None:
        check_model_weights(model)  # before tracing: torch's meta-tensor error advises to_empty()
        self.network = ExportedNetwork(model, rules=rules, dtype=dtype, attention=attention)
        self.computer = RelevanceComputer(self.network, pooling, channel_axis, mode, method,
                                          batch_size, max_memory, verbose)

    @property
    def method(self) -> str:
        return self.computer.method

    def relevance(self, x: Any, context: Optional[dict] = None) -> SampleRelevance:
        """Per-sample pooled relevance ``A(x) P`` of a batch, ``(N, h, p)``."""
        return self.computer(x, context)

    def explain(self, x: Any, y: Any = None, kernel: Kernel = "linear",
                pairs: Optional[Sequence[tuple[int, int]]] = None,
                context_x: Optional[dict] = None, context_y: Optional[dict] = None) -> PairExplanations:
        """Explain the kernel entries ``k(x_i, y_j)`` (``y`` defaults to ``x``).

        Parameters
        ----------
        x, y : array-like or torch.Tensor
            Batches, samples first.
        kernel : {"linear", "cosine"}
        pairs : sequence of (i, j), optional
            Restrict to these entries.
        context_x, context_y : dict, optional
            Further model inputs (e.g. attention masks) of each batch.

        Returns
        -------
        PairExplanations
        """
        ra = self.relevance(x, context_x)
        rb = ra if y is None else self.relevance(y, context_y)
        return pair_relevance(ra, rb, kernel, pairs, self.method)


def bilrp(model: nn.Module, x: Any, x2: Any, kernel: Kernel = "linear", rules: RuleSpec = "zero",
          pooling: PoolingSpec = None, method: Method = "bilrp", mode: Mode = "auto",
          channel_axis: Optional[int] = 0, dtype: Optional[torch.dtype] = None,
          attention: str = "cp") -> PairExplanation:
    """Explain one similarity ``k(x, x2)`` on pairs of input groups.

    Parameters
    ----------
    model : nn.Module
        Feature extractor ``phi``.
    x, x2 : array-like or torch.Tensor
        One sample each, without a batch axis (a leading axis of size one is accepted
        only when the model's input has that many dimensions, so pass ``x[0]``).
    kernel : {"linear", "cosine"}, default="linear"
    rules, pooling, mode, channel_axis, dtype, attention
        See :class:`Explainer`.
    method : {"bilrp", "hp"}, default="bilrp"
        "hp" gives the Hessian×Product baseline from plain autograd.

    Returns
    -------
    PairExplanation
        ``.relevance`` (p, p'), ``.similarity``, ``.conservation_error``.
    """
    ex = Explainer(model, rules=rules, pooling=pooling, channel_axis=channel_axis, mode=mode,
                   method=method, dtype=dtype, attention=attention)
    x_t = torch.as_tensor(x) if not isinstance(x, torch.Tensor) else x
    x2_t = torch.as_tensor(x2) if not isinstance(x2, torch.Tensor) else x2
    ra = ex.relevance(x_t[None])
    rb = ex.relevance(x2_t[None])
    return pair_relevance(ra, rb, kernel, method=ex.method).pair(0, 0)
