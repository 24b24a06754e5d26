"""Canonical form of an exported graph: BatchNorm folded into the conv/linear that alone
feeds it (LRP rules are defined for ``z = W a + b``), normalisations' statistics held
constant whatever their spelling (:mod:`.norms`), schema defaults filled in, mutable ops
refused."""

from __future__ import annotations

import operator

import sympy
import torch
from torch import fx

from ..rules import add_rule_target
from .norms import hold_statistics_constant
from .ops import aten, lookup
from .trace import UnsupportedModelError, _size

__all__ = ["canonicalize", "full_args"]

_FOLDABLE = (aten.conv1d.default, aten.conv2d.default, aten.linear.default, aten.conv2d.padding,
             aten.conv1d.padding)
_BN = aten._native_batch_norm_legit_no_training.default


def full_args(node: fx.Node) -> tuple[list, dict]:
    """Positional arguments with schema defaults filled in; kwarg-only ones in kwargs."""
    op = node.target
    if not isinstance(op, torch._ops.OpOverload):
        return list(node.args), dict(node.kwargs)
    args, kwargs = list(node.args), dict(node.kwargs)
    for i, a in enumerate(op._schema.arguments):
        if a.kwarg_only:
            if a.name not in kwargs and a.has_default_value() and a.name == "alpha":
                kwargs[a.name] = a.default_value
            continue
        if i < len(args):
            continue
        if a.name in kwargs:
            args.append(kwargs.pop(a.name))
        elif a.has_default_value():
            args.append(a.default_value)
    return args, kwargs


def canonicalize(graph: fx.Graph, constants: dict) -> None:
    """Fill schema defaults, fold BatchNorms, hold normalisation statistics constant,
    refuse mutable ops; edits ``graph`` in place."""
    for node in graph.nodes:
        if node.op == "call_function":
            if isinstance(node.target, torch._ops.OpOverload) and node.target._schema.is_mutable:
                lookup(node)  # raises, naming op, node and module
            args, kwargs = full_args(node)
            node.args, node.kwargs = tuple(args), kwargs
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target is aten.addmm.default:
            _addmm_as_linear(node, constants)
    hold_statistics_constant(graph, constants)
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not _BN:
            continue
        src = node.args[0]
        if not (isinstance(src, fx.Node) and src.target in _FOLDABLE and len(src.users) == 1):
            continue
        if src.target is aten.linear.default and len(_shape(src) or ()) != 2:
            continue  # BatchNorm's channels are axis 1; a Linear's features are its last axis
        w_node, b_node = src.args[1], src.args[2]
        if not _is_constant(w_node, constants) or not (b_node is None or _is_constant(b_node, constants)):
            continue
        users = list(node.users)
        if not all(u.target is operator.getitem for u in users) or any(u.args[1] != 0 for u in users if u.users):
            continue
        _, bw, bb, mean, var, _, eps = (constants.get(a.name) if isinstance(a, fx.Node) else a for a in node.args)
        weight = constants[w_node.name]
        bias = None if b_node is None else constants[b_node.name]
        with torch.no_grad():
            std = torch.sqrt(var + eps)
            scale = bw / std if bw is not None else 1 / std
            shift = (bb if bb is not None else 0) - mean * scale
            w2 = weight * scale.reshape((-1,) + (1,) * (weight.dim() - 1))
            b2 = (bias if bias is not None else torch.zeros_like(shift)) * scale + shift
        args = list(src.args)
        args[1], args[2] = w2, b2
        src.args = tuple(args)
        for u in users:
            u.replace_all_uses_with(src)
            graph.erase_node(u)
        graph.erase_node(node)


def _addmm_as_linear(node: fx.Node, constants: dict) -> None:
    """``beta * b + alpha * x @ W`` with constant ``W`` and ``b`` (Hugging Face's Conv1D)
    is a Linear layer ``linear(x, alpha * W^T, beta * b)``: its bias then follows the
    layer's Rule like any other. Other addmm nodes keep their entry (a refusal)."""
    bias, x, weight = node.args[:3]
    beta, alpha = node.kwargs.get("beta", 1), node.kwargs.get("alpha", 1)
    if not (_is_constant(weight, constants) and _is_constant(bias, constants)):
        return
    with torch.no_grad():
        w = constants[weight.name].T * alpha
        b = constants[bias.name] * beta
    node.target, node.args, node.kwargs = aten.linear.default, (x, w.contiguous(), b), {}
    _unfold_rows(node)


_VIEWS = (aten.view.default, aten.reshape.default, aten._unsafe_view.default)


def _shape(node) -> "tuple | None":
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    return tuple(_size(s) for s in val.shape) if isinstance(val, torch.Tensor) else None


def _unfold_rows(node: fx.Node) -> None:
    """``view(x, (-1, d)) → linear → view(·, x.shape[:-1] + (out,))`` (Conv1D folds batch
    and tokens into rows) is ``linear(x)``: the layer then keeps the batch axis first,
    which placing a bias on the input (``"flat"``, the excess of a bounded share) needs."""
    x, users = node.args[0], list(node.users)
    if not (isinstance(x, fx.Node) and x.target in _VIEWS and isinstance(x.args[0], fx.Node) and users):
        return
    src, rows, out = _shape(x.args[0]), _shape(x), _shape(node)
    if src is None or rows is None or out is None or len(src) < 3 or len(rows) != 2:
        return
    if rows[1] != src[-1] or sympy.expand(rows[0] - sympy.Mul(*src[:-1])) != 0:
        return
    if not all(u.target in _VIEWS and _shape(u) == src[:-1] + (out[1],) for u in users):
        return
    node.args = (x.args[0],) + tuple(node.args[1:])
    node.meta["val"] = users[0].meta["val"]
    for u in users:
        u.replace_all_uses_with(node)
        node.graph.erase_node(u)
    if not x.users:
        node.graph.erase_node(x)


def _is_constant(node, constants) -> bool:
    return isinstance(node, fx.Node) and node.op == "placeholder" and node.name in constants


# ----------------------------------------------------------------- module-level forms


class BatchFirstAttention(torch.nn.Module):
    """``nn.MultiheadAttention(batch_first=True)`` written with the batch axis first
    throughout (torch's own forward moves it to axis 1), same weights and values.
    The output projection stays the module ``out_proj`` (rules by name keep working)."""

    def __init__(self, mha: torch.nn.MultiheadAttention, path: str = "") -> None:
        super().__init__()
        options = [name for name, on in (("add_bias_kv", mha.bias_k is not None),
                                         ("add_zero_attn", mha.add_zero_attn)) if on]
        if options:
            raise UnsupportedModelError(
                f"nn.MultiheadAttention at module {path!r} is built with {' and '.join(options)}, "
                "which skbilrp does not support (the attention then sees extra key/value rows); "
                "build it without them.")
        self.num_heads, self.embed_dim = mha.num_heads, mha.embed_dim
        self.in_proj_weight, self.in_proj_bias = mha.in_proj_weight, mha.in_proj_bias
        self.q_proj_weight = getattr(mha, "q_proj_weight", None)
        self.k_proj_weight = getattr(mha, "k_proj_weight", None)
        self.v_proj_weight = getattr(mha, "v_proj_weight", None)
        self.out_proj = mha.out_proj  # attention dropout: inactive on the eval-mode copy

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        e, h = self.embed_dim, self.num_heads
        if self.in_proj_weight is not None:
            wq, wk, wv = self.in_proj_weight.chunk(3)
        else:
            wq, wk, wv = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        bq, bk, bv = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None,) * 3
        n = query.shape[0]

        def heads(t):
            return t.reshape(n, t.shape[1], h, e // h).transpose(1, 2)

        q = heads(torch.nn.functional.linear(query, wq, bq))
        k = heads(torch.nn.functional.linear(key, wk, bk))
        v = heads(torch.nn.functional.linear(value, wv, bv))
        mask = None
        if attn_mask is not None:
            mask = attn_mask if attn_mask.dtype != torch.bool else torch.zeros_like(
                attn_mask, dtype=q.dtype).masked_fill(attn_mask, float("-inf"))
        if key_padding_mask is not None:
            pad = key_padding_mask[:, None, None, :]
            pad = torch.zeros_like(pad, dtype=q.dtype).masked_fill(pad, float("-inf")) \
                if pad.dtype == torch.bool else pad.to(q.dtype)
            mask = pad if mask is None else mask + pad
        scores = q @ k.transpose(-2, -1) / (e // h) ** 0.5
        if mask is not None:
            scores = scores + mask
        if is_causal:
            scores = scores.masked_fill(torch.ones(scores.shape[-2:], dtype=torch.bool,
                                                   device=scores.device).triu(1), float("-inf"))
        probs = torch.softmax(scores, -1)
        out = (probs @ v).transpose(1, 2).reshape(n, query.shape[1], e)
        out = self.out_proj(out)
        weights = None
        if need_weights:
            weights = probs.mean(1) if average_attn_weights else probs
        return out, weights


# its in-projection is functional (F.linear on its own weights): the module takes the Rule
add_rule_target(BatchFirstAttention)


def canonical_modules(model: torch.nn.Module, prefix: str = "") -> None:
    """Replace modules whose torch forward takes paths the tracer cannot follow (in place,
    on the engine's copy)."""
    for name, child in list(model.named_children()):
        path = f"{prefix}{name}"
        if isinstance(child, torch.nn.MultiheadAttention) and child.batch_first:
            setattr(model, name, BatchFirstAttention(child, path))
        elif _is_tanh_gelu_formula(child):
            setattr(model, name, torch.nn.GELU(approximate="tanh"))
        else:
            canonical_modules(child, path + ".")


#: Hugging Face activations that write GELU's tanh approximation out as a formula
#: (``pow``, ``tanh`` and products of the input with itself): the same function as
#: ``nn.GELU(approximate="tanh")`` up to rounding, which the ratio rule explains
_TANH_GELU_FORMULAS = {"NewGELUActivation", "FastGELUActivation", "GELUTanh"}


def _is_tanh_gelu_formula(module: torch.nn.Module) -> bool:
    cls = type(module)
    if cls.__name__ not in _TANH_GELU_FORMULAS or not cls.__module__.startswith("transformers."):
        return False
    return cls.__name__ != "GELUTanh" or getattr(module.act, "__name__", "") == "_gelu_tanh_python"
