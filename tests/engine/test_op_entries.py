"""Every entry of the operator table against its detach-trick twin (zennit-style).

``SAMPLES`` maps each ATen overload of ``skbilrp.engine.OPS`` that can carry relevance
to cases ``(model, twin, x)``: tiny float64 models whose exported graph applies the op
to a relevance-carrying tensor (typically ``Linear -> op -> flatten``), in one *branch*
per branch of its operator (alpha, a constant operand, two carrying operands, the model
input, ...). The twin is a plain function computing the same values, written so that
its ordinary derivative is the LRP-0 rule (biases absorbed):

- ratio-rule activations ``z * (f(z) / z).detach()``; gates (a sigmoid / hardsigmoid
  factor of a carrying tensor) detached;
- LayerNorm / GroupNorm / RMSNorm with the standard deviation / rms detached; vector
  norms, softmax probabilities (CP-LRP) and ``detach`` are constants;
- max-pool / ``max.dim`` / ``amax``: the input gathered (ties: averaged) at winners
  found on detached values;
- a product of two carrying tensors ``(a * b.detach() + a.detach() * b) / 2``;
- a constant added anywhere, the *model input* included (preprocessing, ``(x - mean) /
  std``, position embeddings), is absorbed as a bias is: its own twin (its sharing under
  "share" / "flat" is checked by conservation in tests/engine/test_constants.py);
- linear ops (layouts, pools, convolutions, products with a constant) are their own
  twin: a branch given without a twin below.

For three random probes ``p`` the engine's flows must equal ``jvp(twin, x, p * x)``
(``helpers.close``), branch by branch; the features must equal the model's output, and
every branch must apply its op to a descendant of the input in the graph the engine
exported. No skbilrp relevance code is in the oracle. Cases of one input shape share
one model (one export; see :class:`Group`); known engine defects are strict xfails,
each in a model of its own. ``test_every_entry_has_a_sample`` keeps the table and the
samples in step.
"""

from __future__ import annotations

import operator
import warnings
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from helpers import close, probes
from torch import nn

import skbilrp.engine.network as engine_network
from skbilrp.engine import OPS, ExportedNetwork, trace
from skbilrp.engine.ops import UnsupportedOperatorError
from skbilrp.engine.ops.refused import Refused

warnings.filterwarnings("ignore", category=FutureWarning)

aten = torch.ops.aten
N, D = 2, 6  # batch size, input width


# ----------------------------------------------------------------------- twin pieces


def ratio(f, z):
    """The ratio rule as a detach trick: value ``f(z)``, derivative ``f(z) / z``."""
    return z * (f(z) / z).detach()


def uniform(a, b, op=torch.mul):
    """A product of two carrying tensors, split uniformly (AttnLRP)."""
    return 0.5 * (op(a, b.detach()) + op(a.detach(), b))


def layer_norm(h, dims, w=None, b=None, eps=1e-5):
    mu = h.mean(dims, keepdim=True)
    std = torch.sqrt(h.var(dims, keepdim=True, correction=0) + eps).detach()
    y = (h - mu) / std
    y = y if w is None else y * w
    return y if b is None else y + b


def group_norm(h, groups, w=None, b=None, eps=1e-5):
    y = layer_norm(h.reshape(h.shape[0], groups, -1), -1, eps=eps).reshape(h.shape)
    grid = (1, -1) + (1,) * (h.dim() - 2)
    return y if w is None else y * w.reshape(grid) + b.reshape(grid)


def rms_norm(h, dims, w=None, eps=None):
    eps = torch.finfo(h.dtype).eps if eps is None else eps
    y = h * torch.rsqrt(h.pow(2).mean(dims, keepdim=True) + eps).detach()
    return y if w is None else y * w


def max_pool(pool, h, *args, **kwargs):
    """``pool`` (F.max_pool1d / 2d) as a gather at the winners of the detached input."""
    _, idx = pool(h.detach(), *args, return_indices=True, **kwargs)
    return h.flatten(2).gather(2, idx.flatten(2)).reshape(idx.shape)


def amax(h, dims, keepdim=False):
    mask = (h == h.detach().amax(dims, keepdim=True)).to(h.dtype)
    return (h * mask / mask.sum(dims, keepdim=True)).sum(dims, keepdim=keepdim)


def max_dim(h, dim, keepdim=False):
    out = h.gather(dim, h.detach().argmax(dim, keepdim=True))
    return out if keepdim else out.squeeze(dim)


def attention(q, k, v, mask=None, causal=False, scale=None):
    """SDPA with constant probabilities (CP-LRP)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = q.detach() @ k.detach().transpose(-2, -1) * scale
    if causal:
        s = s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool).triu(1), float("-inf"))
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask
    return torch.softmax(s, -1) @ v


def heads(t, h=2):
    """``(N, T, D)`` tokens as ``(N, h, T, D / h)`` heads."""
    n, length, d = t.shape
    return t.reshape(n, length, h, d // h).transpose(1, 2)



# ------------------------------------------------------------------------- samples


class Model(nn.Module):
    """``forward(x) = fn(self, x)``; submodules and buffers given by keyword."""

    def __init__(self, fn, **parts):
        super().__init__()
        self.fn = fn
        for name, part in parts.items():
            if isinstance(part, nn.Module):
                self.add_module(name, part)
            else:
                self.register_buffer(name, part)

    def forward(self, x):
        return self.fn(self, x)


#: op -> {case name: (model, twin, x)}
SAMPLES: dict = {}
#: (op, case name) -> [(branch name, its index in the model, its columns of the output)]
BRANCHES: dict = {}
#: (op, case name) -> why the engine disagrees with the twin (strict xfails: a fix shows)
XFAIL: dict = {}
#: ids of the models exported through run_decompositions({}), as models with in-place ops
#: are: the ops only that graph holds (clone, _unsafe_view) get their samples there
DECOMPOSED: set = set()


def _joined(fns, flat=True):
    if flat:
        return lambda m, x: torch.cat([f(m, x).flatten(1) for f in fns], 1)
    return lambda m, x: torch.cat([f(m, x).reshape(x.shape[0], -1) for f in fns], 1)


class Group:
    """Cases that share one model, so one export (each costs ~0.1 s of fixed
    ``run_decompositions`` overhead): the model's output joins every case's branches,
    each ``fn(m, x)`` (linear in the carrying tensors: its own twin) or ``(fn, twin)``.
    A case is checked on its own columns only; a known defect gets a group of its own."""

    def __init__(self, shape=(D,), scale=1.0, flat=True, decompose=False, **parts):
        self.shape, self.scale, self.parts, self.cases = shape, scale, parts, []
        self.flat = flat  # False: joined by reshape, so the export's own IR is kept (see trace)
        self.decompose = decompose

    def add(self, op, branches, name="all", xfail=None):
        assert name not in SAMPLES.get(op, {}) and all(c[:2] != (op, name) for c in self.cases), (op, name)
        self.cases.append((op, name, branches, xfail))
        return self

    def build(self):
        pairs = [b if isinstance(b, tuple) else (b, b) for *_, branches, _ in self.cases for b in branches.values()]
        model = Model(_joined([f for f, _ in pairs], self.flat), **self.parts).double().eval()
        if self.decompose:
            DECOMPOSED.add(id(model))
        x = self.scale * torch.randn((N, *self.shape), dtype=torch.float64)
        twin = partial(_joined([t for _, t in pairs], self.flat), model)
        with torch.no_grad():
            widths = iter([f(model, x).flatten(1).shape[1] for f, _ in pairs])
        start, index = 0, 0
        for op, name, branches, why in self.cases:
            BRANCHES[op, name] = []
            for branch in branches:
                width = next(widths)
                BRANCHES[op, name].append((branch, index, slice(start, start + width)))
                start, index = start + width, index + 1
            SAMPLES.setdefault(op, {})[name] = (model, twin, x)
            if why:
                XFAIL[op, name] = why


def alone(op, branches, name="all", xfail=None, shape=(D,), scale=1.0, **parts):
    Group(shape, scale, **parts).add(op, branches, name, xfail).build()


def lin(i=D, o=5, **kw):
    return nn.Linear(i, o, **kw)


def randomized(norm):
    """A normalisation layer with non-trivial affine parameters and running statistics."""
    with torch.no_grad():
        for name in ("weight", "bias"):
            p = getattr(norm, name, None)
            if p is not None:
                p.normal_()
        if getattr(norm, "running_mean", None) is not None:
            norm.running_mean.normal_()
            norm.running_var.uniform_(0.5, 2.0)
    return norm


ACTIVATIONS = {
    aten.relu.default: {"": F.relu},
    aten.leaky_relu.default: {"": partial(F.leaky_relu, negative_slope=0.2)},
    aten.hardtanh.default: {"": partial(F.hardtanh, min_val=-0.5, max_val=0.8)},
    aten.relu6.default: {"": F.relu6},
    aten.clamp.default: {"": lambda z: z.clamp(-0.5, 0.8), "min_only_": lambda z: torch.clamp(z, min=0.3)},
    aten.clamp_min.default: {"": lambda z: z.clamp_min(0.3)},
    aten.clamp_max.default: {"": lambda z: z.clamp_max(0.3)},
    aten.gelu.default: {"": F.gelu, "tanh_": partial(F.gelu, approximate="tanh")},
    aten.silu.default: {"": F.silu},
    aten.hardswish.default: {"": F.hardswish},
    aten.hardsigmoid.default: {"": F.hardsigmoid},
    aten.sigmoid.default: {"": torch.sigmoid},
    aten.tanh.default: {"": torch.tanh},
    aten.elu.default: {"": partial(F.elu, alpha=0.5)},
    aten.softplus.default: {"": partial(F.softplus, beta=2.0, threshold=1.0)},
    aten.mish.default: {"": F.mish},
}


def on(f, twin=None):
    """Branches ``f(h)`` of the first Linear's output ``h = m.a(x)`` (twin: ``twin(h)``)."""
    if twin is None:
        return lambda m, x: f(m.a(x))
    return lambda m, x: f(m.a(x)), lambda m, x: twin(m.a(x))


def _build():
    # ---- ratio-rule activations: after a Linear (fused into its scale), on the model input (not)
    acts = Group(scale=5.0, a=lin())
    for op, variants in ACTIVATIONS.items():
        branches = {}
        for prefix, f in variants.items():
            branches[prefix + "after_linear"] = (lambda m, x, f=f: f(m.a(x)), lambda m, x, f=f: ratio(f, m.a(x)))
            branches[prefix + "on_input"] = (lambda m, x, f=f: f(x), lambda m, x, f=f: ratio(f, x))
        acts.add(op, branches)
    acts.build()

    # ---- vectors (N, D): linear layers, sums, products, gates, BatchNorm1d, vector norm
    vec = Group(a=lin(), b=lin(), nb=lin(bias=False), c=torch.randn(5), mu=torch.randn(D), sd=torch.rand(D) + 0.5,
                w=torch.randn(3, D), bn=randomized(nn.BatchNorm1d(5)),
                bn0=randomized(nn.BatchNorm1d(5, affine=False)))
    vec.add(aten.linear.default, {"bias": lambda m, x: m.a(x), "no_bias": lambda m, x: m.nb(x)})
    vec.add(aten.add.Tensor, {
        "two_carrying": lambda m, x: m.a(x) + m.b(x),
        "two_carrying_alpha": lambda m, x: torch.add(m.a(x), m.b(x), alpha=-0.5),
        "same_tensor_twice": on(lambda h: h + h),
        "constant": lambda m, x: m.a(x) + m.c,
        "constant_first_alpha": lambda m, x: torch.add(m.c, m.a(x), alpha=3.0),
        "number": on(lambda h: h + 1.5),
        "residual": (lambda m, x: F.relu(m.a(x)) + m.b(x), lambda m, x: ratio(F.relu, m.a(x)) + m.b(x)),
        "input_plus_constant": lambda m, x: m.a(x + m.mu),
    })
    vec.add(aten.sub.Tensor, {
        "two_carrying": lambda m, x: m.a(x) - m.b(x),
        "two_carrying_alpha": lambda m, x: torch.sub(m.a(x), m.b(x), alpha=2.0),
        "constant": lambda m, x: m.a(x) - m.c,
        "constant_minus": lambda m, x: m.c - m.a(x),
        "number": on(lambda h: h - 1.5),
        "input_standardised": lambda m, x: m.a((x - m.mu) / m.sd),
    })
    vec.add(aten.add.Scalar, {
        "number": on(lambda h: aten.add.Scalar(h, 1.5)),
        "number_alpha": on(lambda h: aten.add.Scalar(h, 1.5, 2.0)),
        "input_plus_number": lambda m, x: m.a(aten.add.Scalar(x, 1.5)),
    })
    vec.add(aten.sub.Scalar, {
        "number": on(lambda h: aten.sub.Scalar(h, 1.5)),
        "input_minus_number": lambda m, x: m.a(aten.sub.Scalar(x, 1.5)),
    })
    vec.add(aten.rsub.Scalar, {"number_minus": on(lambda h: 1.5 - h)})
    vec.add(aten.mul.Tensor, {
        "constant": lambda m, x: m.a(x) * m.c,
        "constant_first": lambda m, x: m.c * m.a(x),
        "number": on(lambda h: h * 2.5),
        "two_carrying": (lambda m, x: m.a(x) * m.b(x), lambda m, x: uniform(m.a(x), m.b(x))),
        "square": on(lambda h: h * h, lambda h: uniform(h, h)),
        "input_by_constant": lambda m, x: m.a(x * m.sd),
        "broadcast_up": lambda m, x: m.a(x[:, None] * m.w),
    })
    vec.add(aten.mul.Scalar, {"number": on(lambda h: aten.mul.Scalar(h, 2.5)),
                              "input": lambda m, x: m.a(aten.mul.Scalar(x, 2.5))})
    vec.add(aten.div.Tensor, {
        "constant": lambda m, x: m.a(x) / (m.c.abs() + 0.5),
        "number": on(lambda h: h / 4.0),
        "input": lambda m, x: m.a(x / m.sd),
        "by_detached": lambda m, x: m.a(x) / m.b(x).detach().abs().sum(-1, keepdim=True),
    })
    vec.add(aten.div.Scalar, {"number": on(lambda h: aten.div.Scalar(h, 4.0)),
                              "input": lambda m, x: m.a(aten.div.Scalar(x, 4.0))})
    vec.add(aten.neg.default, {
        "carrying": on(lambda h: -h),
        "input": lambda m, x: m.a(-x),
        "input_then_constant": lambda m, x: m.a(-x + m.mu),
    })
    # gates: a sigmoid factor of a carrying tensor is a constant (squeeze-excitation: conv group)
    vec.add(aten.sigmoid.default, {
        "gate": (lambda m, x: m.a(x) * torch.sigmoid(m.b(x)), lambda m, x: m.a(x) * torch.sigmoid(m.b(x)).detach()),
        "gate_silu_written_out": on(lambda h: h * torch.sigmoid(h), lambda h: h * torch.sigmoid(h).detach()),
        "not_a_gate_times_constant": (lambda m, x: torch.sigmoid(m.a(x)) * m.c,
                                      lambda m, x: ratio(torch.sigmoid, m.a(x)) * m.c),
    }, name="gates")
    # BatchNorm that cannot be folded (and one that is); in eval mode it is affine
    vec.add(aten._native_batch_norm_legit_no_training.default, {
        "after_relu": (lambda m, x: m.bn(F.relu(m.a(x))), lambda m, x: m.bn(ratio(F.relu, m.a(x)))),
        "after_relu_no_affine": (lambda m, x: m.bn0(F.relu(m.a(x))), lambda m, x: m.bn0(ratio(F.relu, m.a(x)))),
        "folded_into_linear": lambda m, x: m.bn(m.b(x)),
        "after_residual": lambda m, x: m.bn(m.a(x) + m.b(x)),
    })
    # a Linear's output (N, 3, 3) under BatchNorm1d(3): the BatchNorm's channels are the
    # tokens (axis 1), not the Linear's features, so it must not be folded into the Linear
    alone(aten._native_batch_norm_legit_no_training.default, {"after_linear": lambda m, x: m.bn(m.a(x))},
          name="channels_are_tokens", shape=(3, D), a=lin(D, 3), bn=randomized(nn.BatchNorm1d(3)))
    # GemmaRMSNorm's cast back to its input's dtype: the input's own flow ends (dtype only)
    vec.add(aten.type_as.default, {"back_to_input_dtype": on(lambda h: (h.float() * 2).type_as(h))})
    vec.build()

    # constants mixed into the model input, each alone
    defects = dict(a=lin(), mu=torch.randn(D))
    alone(aten.add.Tensor, {"constant_plus_input": lambda m, x: m.a(m.mu + x)},
          name="constant_plus_input", **defects)
    alone(aten.sub.Tensor, {"constant_minus_input": lambda m, x: m.a(m.mu - x)},
          name="constant_minus_input", **defects)
    alone(aten.rsub.Scalar, {"number_minus_alpha": on(lambda h: torch.rsub(h, 1.5, alpha=2.0))}, name="alpha", **defects)
    alone(aten.rsub.Scalar, {"number_minus_input": lambda m, x: m.a(1.5 - x)},
          name="number_minus_input", **defects)

    # ---- tokens (N, 3, D): norms, softmax, products, attention, reductions, layout
    keep = torch.rand(3, 3) > 0.3
    keep[:, 0] = True  # no query attends to nothing
    tok = Group(shape=(3, D), decompose=True, a=lin(D, 4), b=lin(D, 4), l5=lin(), q=lin(D, 4), k=lin(D, 4), v=lin(D, 4),
                w=torch.randn(4, 5), wl=torch.randn(2, 3), wb=torch.randn(N, 4, 5), wbl=torch.randn(N, 2, 3),
                wh=torch.randn(2, 4, 5), c=torch.randn(1, 1, 4), idx=torch.tensor([2, 0, 2]),
                idx2=torch.tensor([[1], [0]]), gidx=torch.randint(0, 4, (N, 3, 2)), keep=keep,
                bias_mask=torch.randn(3, 3), drop=nn.Dropout(0.5), empty=torch.zeros(0), fill=torch.tensor([[True], [False], [True]]),
                ln=randomized(nn.LayerNorm(4)), ln0=nn.LayerNorm(4, elementwise_affine=False),
                lnw=randomized(nn.LayerNorm(4, bias=False)), ln2=randomized(nn.LayerNorm((3, 4), eps=1e-3)),
                rms=randomized(nn.RMSNorm(4, eps=1e-5)), rms0=nn.RMSNorm(4, elementwise_affine=False),
                rms2=randomized(nn.RMSNorm((3, 4), eps=1e-4)))
    tok.add(aten.linear.default, {"tokens": lambda m, x: m.l5(x)}, name="tokens")
    tok.add(aten.layer_norm.default, {
        "affine": (lambda m, x: m.ln(m.a(x)), lambda m, x: layer_norm(m.a(x), -1, m.ln.weight, m.ln.bias)),
        "no_affine": (lambda m, x: m.ln0(m.a(x)), lambda m, x: layer_norm(m.a(x), -1)),
        "no_bias": (lambda m, x: m.lnw(m.a(x)), lambda m, x: layer_norm(m.a(x), -1, m.lnw.weight)),
        "two_axes": (lambda m, x: m.ln2(m.a(x)),
                     lambda m, x: layer_norm(m.a(x), (-2, -1), m.ln2.weight, m.ln2.bias, eps=1e-3)),
    })
    tok.add(aten.rms_norm.default, {
        "weight": (lambda m, x: m.rms(m.a(x)), lambda m, x: rms_norm(m.a(x), -1, m.rms.weight, 1e-5)),
        "no_weight_default_eps": (lambda m, x: m.rms0(m.a(x)), lambda m, x: rms_norm(m.a(x), -1)),
        "two_axes": (lambda m, x: m.rms2(m.a(x)), lambda m, x: rms_norm(m.a(x), (-2, -1), m.rms2.weight, 1e-4)),
    })
    # constants: softmax probabilities (CP-LRP), detached tensors
    tok.add(aten.softmax.int, {
        "scaled_values": (lambda m, x: torch.softmax(m.a(x), -1) * m.b(x),
                          lambda m, x: torch.softmax(m.a(x).detach(), -1) * m.b(x)),
        "attention": (lambda m, x: torch.softmax(m.a(x) @ m.a(x).transpose(1, 2), -1) @ m.b(x),
                      lambda m, x: torch.softmax(m.a(x).detach() @ m.a(x).detach().transpose(1, 2), -1) @ m.b(x)),
    })
    tok.add(aten._softmax.default, {"scaled_values": (
        lambda m, x: aten._softmax.default(m.a(x), -1, False) * m.b(x),
        lambda m, x: torch.softmax(m.a(x).detach(), -1) * m.b(x))})
    tok.add(aten._safe_softmax.default, {"scaled_values": (
        lambda m, x: aten._safe_softmax.default(m.a(x), -1) * m.b(x),
        lambda m, x: torch.softmax(m.a(x).detach(), -1) * m.b(x))})
    tok.add(aten.detach.default, {"detached_factor": lambda m, x: m.a(x) * m.b(x).detach(),
                                  "detached_square": on(lambda h: h * h.detach())})
    # matrix products with one constant operand (two carrying: uniform)
    tok.add(aten.matmul.default, {
        "constant_right": lambda m, x: m.a(x) @ m.w,
        "constant_left": lambda m, x: m.wl @ m.a(x),
        "constant_right_2d": lambda m, x: m.a(x[:, 0]) @ m.w,
        "heads_broadcast_constant": lambda m, x: m.a(x)[:, None] @ m.wh,
        "two_carrying": (lambda m, x: m.a(x) @ m.b(x).transpose(1, 2),
                         lambda m, x: uniform(m.a(x), m.b(x).transpose(1, 2), torch.matmul)),
    })
    tok.add(aten.bmm.default, {
        "constant_right": lambda m, x: torch.bmm(m.a(x), m.wb),
        "constant_left": lambda m, x: torch.bmm(m.wbl, m.a(x)),
        "two_carrying": (lambda m, x: torch.bmm(m.a(x), m.b(x).transpose(1, 2)),
                         lambda m, x: uniform(m.a(x), m.b(x).transpose(1, 2), torch.bmm)),
    })
    tok.add(aten.mm.default, {"constant_right": lambda m, x: torch.mm(m.a(x[:, 0]), m.w)})
    tok.add(aten.einsum.default, {
        "constant_second": lambda m, x: torch.einsum("nij,jk->nik", m.a(x), m.w),
        "constant_first": lambda m, x: torch.einsum("jk,nij->nki", m.w, m.a(x)),
        "implicit_output": lambda m, x: torch.einsum("bij,jk", m.a(x), m.w),
        "ellipsis": lambda m, x: torch.einsum("...j,jk->...k", m.a(x), m.w),
    })

    # attention kept whole: probabilities are constants
    def sdpa(twin=False, mask=None, **kw):
        def fn(m, x):
            q, k, v = (heads(f(x)) for f in (m.q, m.k, m.v))
            bias = None if mask is None else getattr(m, mask)
            if twin:
                return attention(q, k, v, bias, **kw)
            extra = {key: val for key, val in kw.items() if key != "causal"}
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, is_causal=kw.get("causal", False), **extra)
        return fn

    variants = {"plain": {}, "causal": {"causal": True}, "bool_mask": {"mask": "keep"},
                "float_mask": {"mask": "bias_mask"}}
    tok.add(aten.scaled_dot_product_attention.default,
            {k: (sdpa(**kw), sdpa(True, **kw)) for k, kw in variants.items()})
    # winners take all
    tok.add(aten.amax.default, {
        "last_axis": on(lambda h: h.amax(-1), lambda h: amax(h, -1)),
        "two_axes_keepdim": on(lambda h: h.amax((1, 2), keepdim=True), lambda h: amax(h, (1, 2), True)),
        "ties": on(lambda h: torch.cat([h, h], -1).amax(-1), lambda h: amax(torch.cat([h, h], -1), -1)),
    })
    tok.add(aten.max.dim, {"values": on(lambda h: h.max(1).values, lambda h: max_dim(h, 1)),
                           "keepdim": on(lambda h: h.max(-1, keepdim=True)[0], lambda h: max_dim(h, -1, True))})
    # reductions: linear
    tok.add(aten.mean.dim, {"last_axis": on(lambda h: h.mean(-1)),
                            "two_axes_keepdim": on(lambda h: h.mean((1, 2), keepdim=True))})
    tok.add(aten.sum.dim_IntList, {"axis_1": on(lambda h: h.sum(1)), "keepdim": on(lambda h: h.sum(-1, keepdim=True))})
    # layout: the op on the flow (the batch axis may move)
    tok.add(aten.view.default, {"split_axis": on(lambda h: h.view(N, 3, 2, 2)),
                                "batch_folded": lambda m, x: m.a(x.view(N * 3, D)).view(N, -1)})
    tok.add(aten._unsafe_view.default, {"after_permute": on(lambda h: h.permute(0, 2, 1).reshape(N, -1))})
    tok.add(aten.expand.default, {"new_axis": on(lambda h: h[:, None].expand(-1, 2, -1, -1)),
                                  "singleton": on(lambda h: h[:, :1].expand(-1, 3, -1))})
    tok.add(aten.permute.default, {"last_two": on(lambda h: h.permute(0, 2, 1)),
                                   "batch_moved_and_back": on(lambda h: (h.permute(1, 2, 0) * 2).permute(2, 0, 1))})
    tok.add(aten.transpose.int, {"last_two": on(lambda h: h.transpose(-1, -2)),
                                 "batch_moved_and_back": on(lambda h: (h.transpose(0, 1) * 2).transpose(0, 1))})
    tok.add(aten.unsqueeze.default, {"middle": on(lambda h: h.unsqueeze(1)), "last": on(lambda h: h.unsqueeze(-1))})
    tok.add(aten.slice.Tensor, {"range": on(lambda h: h[:, 1:3]), "step_last_axis": on(lambda h: h[..., ::2]),
                                "narrow": on(lambda h: h.narrow(-1, 1, 2))})
    tok.add(aten.select.int, {"middle": on(lambda h: h[:, 1]), "last_negative": on(lambda h: h.select(-1, -1))})
    tok.add(aten.squeeze.dim, {"middle": on(lambda h: h[:, :1].squeeze(1))})
    tok.add(aten.squeeze.dims, {"two": on(lambda h: h[:, :1, None].squeeze((1, 2)))})
    tok.add(aten.unbind.int, {
        "tokens": on(lambda h: h.unbind(1)[0] + 2 * h.unbind(1)[2]),
        "timm_qkv": on(lambda h: sum(i * t for i, t in enumerate(h.reshape(N, 3, 2, 2).permute(2, 0, 3, 1).unbind(0),
                                                                  1))),
    })
    tok.add(aten.flip.default, {"last": on(lambda h: h.flip(-1)), "two_axes": on(lambda h: h.flip((1, 2)))})
    tok.add(aten.split.Tensor, {"equal": on(lambda h: torch.cat(h.split(2, -1)[::-1], 1)),
                                "chunk": on(lambda h: h.chunk(2, 1)[1])})
    tok.add(aten.split_with_sizes.default, {"sizes": on(lambda h: h.split([1, 3], -1)[1] * 2 + h.split([1, 3], -1)[0])})
    tok.add(aten.roll.default, {"one_axis": on(lambda h: h.roll(1, -1)),
                                "two_axes": on(lambda h: h.roll((1, -2), (1, 2)))})
    tok.add(aten.index.Tensor, {"one_axis": lambda m, x: m.a(x)[:, m.idx],
                                "broadcast_indices": lambda m, x: m.a(x)[:, m.idx2, m.idx]})
    tok.add(aten.gather.default, {"last_axis": lambda m, x: m.a(x).gather(-1, m.gidx)})
    tok.add(aten.repeat.default, {"tile": on(lambda h: h.repeat(1, 2, 3))})
    tok.add(aten.clone.default, {"clone": on(lambda h: h.clone()), "dropout_in_eval": lambda m, x: m.drop(m.a(x))})
    tok.add(aten.alias.default, {"alias": on(aten.alias.default)})
    tok.add(aten._to_copy.default, {"cast": on(lambda h: aten._to_copy.default(h, dtype=torch.float64))})
    tok.add(aten.masked_fill.Scalar, {"zeros": lambda m, x: m.a(x).masked_fill(m.fill, 0.0),
                                      "fill_absorbed": lambda m, x: m.a(x).masked_fill(~m.fill, -1.5)})
    tok.add(aten.masked_fill.Tensor, {"fill_absorbed": lambda m, x: m.a(x).masked_fill(
        m.fill, torch.tensor(0.5, dtype=torch.float64))})
    tok.add(aten.where.self, {"two_carrying": lambda m, x: torch.where(m.fill, m.a(x), m.b(x)),
                              "constant_absorbed": lambda m, x: torch.where(m.fill, m.c, m.a(x))})
    tok.add(aten.cat.default, {"two_carrying": lambda m, x: torch.cat([m.a(x), m.b(x)], 1),
                               "constant_part": lambda m, x: torch.cat([m.c.expand(N, 1, 4), m.a(x)], 1),
                               # a KV cache's first step (a 1-d empty tensor, skipped), then
                               # grouped-query attention's repeat_kv (expand, reshape)
                               "empty_cache_then_repeat_kv": lambda m, x: torch.cat(
                                   [m.empty, heads(m.a(x))], -2)[:, :, None].expand(N, 2, 2, 3, 2).reshape(N, 4, 3, 2)})
    tok.add(aten.stack.default, {"two_carrying": lambda m, x: torch.stack([m.a(x), m.b(x)], -1),
                                 "constant_part": lambda m, x: torch.stack([m.a(x), m.c.expand(N, 3, 4)], 1)})
    tok.add(aten.constant_pad_nd.default, {
        "zeros": on(lambda h: aten.constant_pad_nd.default(h, [1, 2, 0, 1], 0.0)),
        "fill_absorbed": on(lambda h: aten.constant_pad_nd.default(h, [1, 0], 0.5))})
    tok.add(aten.pad.default, {"zeros": on(lambda h: F.pad(h, (1, 2))),
                               "fill_absorbed": on(lambda h: F.pad(h, (0, 1, 2, 0), value=-0.5))})
    # getitem: the parts of multi-output ops (split, max.dim, unbind) carry it
    tok.add(operator.getitem, {"split_parts": on(lambda h: h.split(2, -1)[1] - h.split(2, -1)[0]),
                               "max_values": on(lambda h: h.max(1)[0], lambda h: max_dim(h, 1))})
    tok.build()

    alone(aten.scaled_dot_product_attention.default, {"scale": (sdpa(scale=0.3), sdpa(True, scale=0.3))},
          name="scale", shape=(3, D), q=lin(D, 4), k=lin(D, 4), v=lin(D, 4))
    alone(aten.repeat.default, {"new_leading_axis": on(lambda h: h.repeat(2, 1, 1, 1).transpose(0, 1))},
          name="new_leading_axis", shape=(3, D), a=lin(D, 4))
    # the probe axis leads every flow; torch's rules that put new axes in front meet it instead
    ahead = dict(shape=(3, D), a=lin(D, 4), w=torch.randn(2, 1, 1, 4), i=torch.tensor([0, 2]), j=torch.tensor([1, 0]))
    alone(aten.expand.default, {"new_leading_axis": on(lambda h: h.expand(2, N, 3, 4).transpose(0, 1))},
          name="new_leading_axis", **ahead)
    alone(aten.mul.Tensor, {"constant_of_higher_rank": lambda m, x: (m.a(x) * m.w).transpose(0, 1)},
          name="constant_of_higher_rank",
          **ahead)
    alone(aten.add.Tensor, {"constant_of_higher_rank": lambda m, x: (m.a(x) + m.w).transpose(0, 1)},
          name="constant_of_higher_rank",
          **ahead)
    alone(aten.index.Tensor, {"non_adjacent_indices": lambda m, x: m.a(x).view(N, 3, 2, 2)[:, m.i, :, m.j]
                              .transpose(0, 1)},
          name="non_adjacent_indices", **ahead)
    # the model input broadcast up by a constant (its InputFlow cannot keep the input's shape)
    up = Group(shape=(1, D), a=lin(), c=torch.randn(3, D))
    up.add(aten.mul.Tensor, {"input_broadcast_up": lambda m, x: m.a(x * m.c)}, name="input_broadcast_up")
    up.add(aten.add.Tensor, {"input_broadcast_up": lambda m, x: m.a(x + m.c)},
           name="input_broadcast_up")
    up.build()

    # ---- signals (N, 2, 9): conv1d, 1d pools and upsampling, GroupNorm on 1d
    def pooled(**fs):
        return {k: (lambda m, x, f=f: f(m.c(x))) for k, f in fs.items()}

    pools = {"k2": dict(kernel_size=2), "stride_padding": dict(kernel_size=3, stride=2, padding=1),
             "dilation": dict(kernel_size=2, dilation=2), "ceil_mode": dict(kernel_size=4, stride=3, ceil_mode=True)}

    def max_pools(f):
        return {k: (lambda m, x, kw=kw: f(m.c(x), **kw), lambda m, x, kw=kw: max_pool(f, m.c(x), **kw))
                for k, kw in pools.items()}

    sig = Group(shape=(4, 9), c=nn.Conv1d(4, 3, 2), s=nn.Conv1d(4, 3, 3, stride=2, padding=1, dilation=2),
                g=nn.Conv1d(4, 6, 3, groups=2, bias=False),
                same=nn.Conv1d(4, 4, 3, padding="same", dilation=2, groups=2),
                gn0=nn.GroupNorm(3, 6, eps=1e-3, affine=False))
    sig.add(aten.conv1d.default, {"stride_padding_dilation": lambda m, x: m.s(x),
                                  "groups_no_bias": lambda m, x: m.g(x)})
    sig.add(aten.conv1d.padding, {"same_dilation_groups": lambda m, x: m.same(x)})
    sig.add(aten.max_pool1d.default, max_pools(F.max_pool1d))
    sig.add(aten.avg_pool1d.default, pooled(
        k2=nn.AvgPool1d(2), padding_no_count_ceil=nn.AvgPool1d(3, 2, 1, ceil_mode=True, count_include_pad=False)))
    sig.add(aten.adaptive_avg_pool1d.default, pooled(overlapping=nn.AdaptiveAvgPool1d(3)))
    sig.add(aten.upsample_nearest1d.vec, pooled(scale=partial(F.interpolate, scale_factor=2),
                                                size=partial(F.interpolate, size=11)))
    sig.add(aten.upsample_linear1d.vec, pooled(
        scale=partial(F.interpolate, scale_factor=2, mode="linear"),
        size_align_corners=partial(F.interpolate, size=11, mode="linear", align_corners=True)))
    sig.add(aten.group_norm.default, {"no_affine_1d": (lambda m, x: m.gn0(m.g(x)),
                                                       lambda m, x: group_norm(m.g(x), 3, eps=1e-3))}, name="1d")
    sig.build()

    # ---- images (N, 2, 7, 7): conv2d, 2d pools and upsampling, GroupNorm, BatchNorm2d, SE gates
    def se(gate, twin=False):  # squeeze-excitation: the gate reaches the product through unsqueezes
        def fn(m, x):
            h = m.g(x)
            g = gate(m.fc(h.mean((2, 3))))
            return h * (g.detach() if twin else g)[:, :, None, None]
        return fn

    # ---- the export's own IR, kept undecomposed where it holds only table entries and ops
    #      the decomposition keeps (trace._functional): spellings no decomposed graph has
    raw = Group(shape=(3, D), flat=False, a=lin(D, 4), b=lin(D, 4), drop=nn.Dropout(0.5),
                c=torch.randn(N, 3, 4))
    raw.add(aten.dropout.default, {"eval": lambda m, x: m.drop(m.a(x))})
    raw.add(aten.reshape.default, {"merge_axes": on(lambda h: h.reshape(h.shape[0], -1, 2))})
    raw.add(aten.flatten.using_ints, {"trailing": on(lambda h: h.flatten(1) * 2),
                                      "middle": on(lambda h: h[:, :, None].flatten(2, 3))})
    raw.add(aten.chunk.default, {"second": on(lambda h: h.chunk(2, -1)[1])})
    raw.add(aten.narrow.default, {"middle": on(lambda h: h.narrow(-1, 1, 2))})
    raw.add(aten.to.dtype, {"same_dtype": on(lambda h: h.to(torch.float64))})
    raw.add(aten.to.device, {"device_and_dtype": on(lambda h: h.to(dtype=torch.float64, device="cpu"))})
    raw.add(aten.to.dtype_layout, {"device": on(lambda h: h.to("cpu"))})
    raw.add(aten.expand_as.default, {"like_carrying": lambda m, x: m.a(x)[:, :1].expand_as(m.b(x)),
                                     "like_constant": lambda m, x: m.a(x)[:, :1].expand_as(m.c)})
    raw.add(aten.detach.default, {"detached_factor": lambda m, x: m.a(x) * m.b(x).detach()}, name="training_ir")
    # a tensor literal is lifted with it (test_export_ir's "literal" case); here on the flow
    raw.add(aten.lift_fresh_copy.default, {"by_name": on(aten.lift_fresh_copy.default)})
    raw.add(aten.contiguous.default, {"transposed": on(lambda h: h.transpose(1, 2).contiguous() * 2)})
    # no random number drawn: p = 0 (refused as random before; the decomposed graph ran it)
    raw.add(aten.dropout.default, {"p0": on(lambda h: F.dropout(h, 0.0, training=True))}, name="training_p0")
    raw.build()

    img = Group(shape=(2, 7, 7), c=nn.Conv2d(2, 3, 2), s=nn.Conv2d(2, 4, 3, stride=2, padding=1),
                g=nn.Conv2d(2, 4, 3, dilation=2, groups=2, bias=False), same=nn.Conv2d(2, 3, 3, padding="same"),
                valid=nn.Conv2d(2, 3, (3, 1), padding="valid"), fc=lin(4, 4), gn=randomized(nn.GroupNorm(2, 4)),
                r=nn.Conv2d(2, 2, 3, padding=1), bn=randomized(nn.BatchNorm2d(2)))
    # a memory format of the 4-d map: none of the flow's (it has the probes' axis in front)
    img.add(aten.contiguous.default, {"channels_last": lambda m, x: m.c(x).contiguous(memory_format=torch.channels_last)},
            name="channels_last")
    img.add(aten.conv2d.default, {"stride_padding": lambda m, x: m.s(x),
                                  "groups_dilation_no_bias": lambda m, x: m.g(x)})
    img.add(aten.conv2d.padding, {"same": lambda m, x: m.same(x), "valid": lambda m, x: m.valid(x)})
    img.add(aten.max_pool2d.default, max_pools(F.max_pool2d))
    img.add(aten.avg_pool2d.default, pooled(
        k2=nn.AvgPool2d(2), padding_no_count=nn.AvgPool2d(3, 2, 1, count_include_pad=False),
        divisor_override=nn.AvgPool2d(3, 2, divisor_override=4)))
    img.add(aten.adaptive_avg_pool2d.default, pooled(overlapping=nn.AdaptiveAvgPool2d((4, 2)),
                                                     global_=nn.AdaptiveAvgPool2d(1)))
    img.add(aten._adaptive_avg_pool2d.default, pooled(
        overlapping=lambda h: aten._adaptive_avg_pool2d.default(h, [4, 2])))
    img.add(aten.upsample_nearest2d.vec, pooled(
        scale=partial(F.interpolate, scale_factor=2), size=partial(F.interpolate, size=(5, 9))))
    img.add(aten.upsample_nearest2d.default, pooled(size=lambda h: aten.upsample_nearest2d.default(h, [5, 9])))
    img.add(aten.upsample_bilinear2d.vec, pooled(
        scale=partial(F.interpolate, scale_factor=2, mode="bilinear"),
        size_align_corners=partial(F.interpolate, size=(5, 9), mode="bilinear", align_corners=True)))
    img.add(aten.group_norm.default, {"affine_2d": (lambda m, x: m.gn(m.g(x)),
                                                    lambda m, x: group_norm(m.g(x), 2, m.gn.weight, m.gn.bias))})
    img.add(aten._native_batch_norm_legit_no_training.default, {
        "after_residual_2d": lambda m, x: m.bn(m.r(x) + x)}, name="2d")
    for op, gate in [(aten.sigmoid.default, torch.sigmoid), (aten.hardsigmoid.default, F.hardsigmoid)]:
        img.add(op, {"gate_squeeze_excitation": (se(gate), se(gate, True))}, name="gate_squeeze_excitation")
    img.build()


with torch.random.fork_rng():
    torch.manual_seed(0)
    _build()


# ----------------------------------------------------------------------- exemptions

#: refusals: entries that raise instead of pushing (tests/engine/test_refusals.py)
REFUSED = {op for op, cls in OPS.items() if issubclass(cls, Refused)}
#: entries no exported graph holds, even when the model calls them by name (checked by
#: test_unreachable_entries_are_decomposed): run_decompositions({}) rewrites them, and a
#: training IR holding one is decomposed (trace.DECOMPOSE_FIRST). The op each becomes
#: has a sample.
UNREACHABLE = {
    aten.upsample_bilinear2d.default: aten._unsafe_index.Tensor,  # decomposed into index arithmetic
}
EXEMPT = REFUSED | set(UNREACHABLE)


# ---------------------------------------------------------------------------- tests


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tensors here are tiny: intra-op threads only add synchronisation (a 2x7x7 conv
    took 14 ms with two threads on a busy machine, 4 us with one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


#: id(model) -> (per branch: the ops that depend on the input and feed the branch's
#: output, in the exported graph; features; flows (3, N, h); the twin's (3, N, h))
_RUNS: dict = {}


def _branch_ops(traced) -> list:
    """Per branch (an input of the final ``cat``), the targets of the nodes that depend
    on the explained input and feed that branch."""
    nodes = list(traced.graph.nodes)
    carrying = {next(n for n in nodes if n.op == "placeholder" and n.name == traced.inputs[0])}
    for n in nodes:
        if n.op == "call_function" and any(a in carrying for a in n.all_input_nodes):
            carrying.add(n)
    (cat,) = next(n for n in nodes if n.op == "output").args[0]
    assert cat.target is aten.cat.default
    out = []
    for branch in cat.args[0]:
        seen, todo = set(), [branch]
        while todo:
            n = todo.pop()
            if n not in seen:
                seen.add(n)
                todo.extend(n.all_input_nodes)
        out.append({n.target for n in seen & carrying if n.op == "call_function"})
    return out


def _run(model, twin, x):
    if id(model) not in _RUNS:
        graphs = []

        def watched(*args):  # the engine's own call of trace.export, watched
            traced = trace.export(*args)
            graphs.append(_branch_ops(traced))
            return traced

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(engine_network, "export", watched)
            if id(model) in DECOMPOSED:
                mp.setattr(trace, "_functional", lambda ep: ep.run_decompositions({}))
            rec = ExportedNetwork(model, "zero", torch.float64).record(x)
        assert len(graphs) == 1
        p = probes(x, 3)
        flows = rec.push(p).reshape(3, N, -1)
        refs = torch.stack([torch.func.jvp(twin, (x,), (pk * x,))[1].detach() for pk in p.reshape(3, *x.shape)])
        _RUNS[id(model)] = (graphs[0], rec.features, flows, refs)
    return _RUNS[id(model)]


def _cases():
    for op in sorted(SAMPLES, key=str):
        for name in SAMPLES[op]:
            why = XFAIL.get((op, name))
            marks = [pytest.mark.xfail(strict=True, reason=why)] if why else []
            label = "operator.getitem" if op is operator.getitem else str(op)
            yield pytest.param(op, name, id=f"{label}-{name}", marks=marks)


@pytest.mark.parametrize("op, name", list(_cases()))
def test_entry_matches_its_twin(op, name):
    model, twin, x = SAMPLES[op][name]
    branch_ops, features, flows, refs = _run(model, twin, x)
    for branch, index, _ in BRANCHES[op, name]:  # each branch really exercises the op
        assert op in branch_ops[index], (
            f"branch {branch!r}: {op} is not applied to the input's descendants in the exported graph "
            f"({sorted(map(str, branch_ops[index]))})")
    with torch.no_grad():
        close(features, model(x))
    for branch, _, cols in BRANCHES[op, name]:
        for k in range(len(refs)):
            try:
                close(flows[k][:, cols], refs[k][:, cols])
            except AssertionError as err:
                raise AssertionError(f"branch {branch!r}, probe {k}: {err}") from None


def test_every_entry_has_a_sample():
    missing = set(OPS) - EXEMPT - set(SAMPLES)
    assert not missing, f"entries without a sample: {sorted(map(str, missing))}"
    assert set(SAMPLES) <= set(OPS), "a sample for an op that is not in the table"
    assert not set(SAMPLES) & EXEMPT


def test_unreachable_entries_are_decomposed():
    """Calling each unreachable entry by name still leaves it out of the exported graph
    (if a torch release keeps one, it needs a sample instead of the exemption)."""

    def calls(m, x):
        h = m.a(x)  # (N, 2, 3, 4)
        return aten.upsample_bilinear2d.default(h, [4, 5], False).reshape(N, -1)  # decomposed for it alone

    model = Model(calls, a=lin(D, 4)).double().eval()
    x = torch.randn((N, 2, 3, D), dtype=torch.float64)
    traced = trace.export(model, (x,), {})
    targets = {n.target for n in traced.graph.nodes if n.op == "call_function"}
    assert set(UNREACHABLE) == trace.DECOMPOSE_FIRST
    assert not targets & set(UNREACHABLE), f"now emitted, give them samples: {targets & set(UNREACHABLE)}"
    assert set(UNREACHABLE.values()) <= targets


class _Conv1D(nn.Module):
    """Hugging Face's GPT-2 ``Conv1D``: ``addmm(b, x, W)`` with ``W`` of shape (in, out)."""

    def __init__(self, linear: nn.Linear, beta: float, alpha: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(linear.weight.detach().T / alpha)
        self.bias = nn.Parameter(linear.bias.detach() / beta)
        self.beta, self.alpha = beta, alpha

    def forward(self, x):
        out = torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight, beta=self.beta, alpha=self.alpha)
        return out.reshape(x.shape[:-1] + (out.shape[-1],))


@pytest.mark.parametrize("bias", ["absorb", "share", "flat"])
def test_addmm_is_explained_as_the_linear_layer_it_is(bias):
    from skbilrp.rules import Zero

    torch.manual_seed(0)
    lin1, lin2 = nn.Linear(4, 6).double(), nn.Linear(6, 3).double()
    plain = nn.Sequential(lin1, nn.ReLU(), lin2)
    conv1d = nn.Sequential(_Conv1D(lin1, 0.5, 2.0), nn.ReLU(), _Conv1D(lin2, 1.0, 1.0))
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    p = torch.rand(3 * 2, 5, 4, dtype=torch.float64)
    want = ExportedNetwork(plain, Zero(bias=bias), torch.float64).record(x).push(p, -1)
    # Conv1D folds batch and tokens into rows; unfolded again, its biases find their
    # place on the input ("flat", and the excess of a bounded "share": some unit here
    # has |b| > sum |w a|)
    rec = ExportedNetwork(conv1d, Zero(bias=bias), torch.float64).record(x)
    close(rec.push(p, -1), want, k=16)
