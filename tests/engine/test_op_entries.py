"""Every entry of the operator table against its detach-trick twin (zennit-style).

``SAMPLES`` maps each ATen overload of ``skbilrp.engine.OPS`` that can carry relevance
to tiny float64 models whose exported graph contains it, fed by a relevance-carrying
tensor (typically ``Linear -> op -> flatten``), one case per branch of its operator.
Each case comes with a *twin*: a plain function computing the same values, written so
that its ordinary derivative is the LRP-0 rule (biases absorbed):

- ratio-rule activations ``z * (f(z) / z).detach()``; gates (a sigmoid / hardsigmoid
  factor of a carrying tensor) detached;
- LayerNorm / GroupNorm / RMSNorm with the standard deviation / rms detached; vector
  norms, softmax probabilities (CP-LRP) and ``detach`` are constants;
- max-pool / ``max.dim`` / ``amax``: the input gathered (ties: averaged) at winners
  found on detached values;
- a product of two carrying tensors ``(a * b.detach() + a.detach() * b) / 2``;
- a constant added to the *model input* relabels it (preprocessing, e.g. ``(x - mean)
  / std``): the input becomes ``x * ((x + c) / x).detach()``, a ratio rule;
- linear ops (layouts, pools, convolutions, products with a constant) are their own
  twin: ``twin=None`` below means the model's function itself.

The engine's flow of a probe ``p`` must equal ``jvp(twin, x, p * x)``. No skbilrp
relevance code is in the oracle. ``test_every_entry_has_a_sample`` keeps the table and
the samples in step.
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


def relabel(x, y):
    """The model input relabelled as ``y`` (position-wise preprocessing of ``x``)."""
    return x * (y / x).detach()


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
#: (op, case name) -> why the engine disagrees with the twin (strict xfails: a fix shows)
XFAIL: dict = {}


def entry(op, name, fn, twin=None, shape=(D,), scale=1.0, **parts):
    """Register a case: ``fn(m, x)`` is the forward, ``twin(m, x)`` its detach-trick
    twin (None: ``fn`` is linear in the carrying tensors, its own twin)."""
    model = Model(fn, **parts).double().eval()
    x = scale * torch.randn((N, *shape), dtype=torch.float64)
    SAMPLES.setdefault(op, {})[name] = (model, partial(twin or fn, model), x)


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
    aten.clamp.default: {"": lambda z: z.clamp(-0.5, 0.8), "min_only": lambda z: torch.clamp(z, min=0.3)},
    aten.clamp_min.default: {"": lambda z: z.clamp_min(0.3)},
    aten.clamp_max.default: {"": lambda z: z.clamp_max(0.3)},
    aten.gelu.default: {"": F.gelu, "tanh": partial(F.gelu, approximate="tanh")},
    aten.silu.default: {"": F.silu},
    aten.hardswish.default: {"": F.hardswish},
    aten.hardsigmoid.default: {"": F.hardsigmoid},
    aten.sigmoid.default: {"": torch.sigmoid},
    aten.tanh.default: {"": torch.tanh},
    aten.elu.default: {"": partial(F.elu, alpha=0.5)},
    aten.softplus.default: {"": partial(F.softplus, beta=2.0, threshold=1.0)},
    aten.mish.default: {"": F.mish},
}


def _build():
    # ---- weighted layers (linear in the flow; the biases are constants)
    entry(aten.linear.default, "bias", lambda m, x: m.a(x), a=lin())
    entry(aten.linear.default, "no_bias", lambda m, x: m.a(x), a=lin(bias=False))
    entry(aten.linear.default, "tokens", lambda m, x: m.a(x).flatten(1), shape=(3, D), a=lin())
    conv = lambda m, x: m.c(x).flatten(1)  # noqa: E731
    entry(aten.conv1d.default, "stride_padding_dilation", conv, shape=(3, 9),
          c=nn.Conv1d(3, 4, 3, stride=2, padding=1, dilation=2))
    entry(aten.conv1d.default, "groups", conv, shape=(4, 9), c=nn.Conv1d(4, 6, 3, groups=2, bias=False))
    entry(aten.conv1d.padding, "same", conv, shape=(4, 9), c=nn.Conv1d(4, 4, 3, padding="same", dilation=2, groups=2))
    entry(aten.conv2d.default, "stride_padding", conv, shape=(2, 6, 6), c=nn.Conv2d(2, 4, 3, stride=2, padding=1))
    entry(aten.conv2d.default, "groups_dilation", conv, shape=(2, 7, 7),
          c=nn.Conv2d(2, 4, 3, dilation=2, groups=2, bias=False))
    entry(aten.conv2d.padding, "same", conv, shape=(2, 5, 5), c=nn.Conv2d(2, 3, 3, padding="same"))
    entry(aten.conv2d.padding, "valid", conv, shape=(2, 5, 5), c=nn.Conv2d(2, 3, (3, 1), padding="valid"))

    # ---- ratio-rule activations: after a Linear (fused into its scale) and on the input
    for op, variants in ACTIVATIONS.items():
        for name, f in variants.items():
            sep = "_" if name else ""
            entry(op, f"after_linear{sep}{name}", lambda m, x, f=f: f(m.a(x)),
                  lambda m, x, f=f: ratio(f, m.a(x)), scale=5.0, a=lin())
            entry(op, f"on_input{sep}{name}", lambda m, x, f=f: m.a(f(x)),
                  lambda m, x, f=f: m.a(ratio(f, x)), scale=5.0, a=lin())
    # gates: a sigmoid / hardsigmoid factor of a carrying tensor is a constant
    entry(aten.sigmoid.default, "gate", lambda m, x: m.a(x) * torch.sigmoid(m.b(x)),
          lambda m, x: m.a(x) * torch.sigmoid(m.b(x)).detach(), a=lin(), b=lin())
    entry(aten.sigmoid.default, "gate_silu_written_out", lambda m, x: m.a(x) * torch.sigmoid(m.a(x)),
          lambda m, x: m.a(x) * torch.sigmoid(m.a(x)).detach(), a=lin())
    entry(aten.sigmoid.default, "not_a_gate_times_constant", lambda m, x: torch.sigmoid(m.a(x)) * m.c,
          lambda m, x: ratio(torch.sigmoid, m.a(x)) * m.c, a=lin(), c=torch.randn(5))

    def se(m, x, gate, twin=False):  # squeeze-excitation: the gate reaches the product through views
        h = m.c(x)
        g = gate(m.fc(h.mean((2, 3))))
        g = g.detach() if twin else g
        return (h * g[:, :, None, None]).flatten(1)

    entry(aten.hardsigmoid.default, "gate_squeeze_excitation", partial(se, gate=F.hardsigmoid),
          partial(se, gate=F.hardsigmoid, twin=True), shape=(2, 5, 5),
          c=nn.Conv2d(2, 4, 3), fc=lin(4, 4))
    entry(aten.sigmoid.default, "gate_squeeze_excitation", partial(se, gate=torch.sigmoid),
          partial(se, gate=torch.sigmoid, twin=True), shape=(2, 5, 5), c=nn.Conv2d(2, 4, 3), fc=lin(4, 4))

    # ---- sums: flows add (alpha kept); a term without flow is a constant
    two = dict(a=lin(), b=lin(), c=torch.randn(5))
    entry(aten.add.Tensor, "two_carrying", lambda m, x: m.a(x) + m.b(x), **two)
    entry(aten.add.Tensor, "two_carrying_alpha", lambda m, x: torch.add(m.a(x), m.b(x), alpha=-0.5), **two)
    entry(aten.add.Tensor, "same_tensor_twice", lambda m, x: m.a(x) + m.a(x), **two)
    entry(aten.add.Tensor, "constant", lambda m, x: m.a(x) + m.c, **two)
    entry(aten.add.Tensor, "constant_first_alpha", lambda m, x: torch.add(m.c, m.a(x), alpha=3.0), **two)
    entry(aten.add.Tensor, "number", lambda m, x: m.a(x) + 1.5, **two)
    entry(aten.add.Tensor, "residual", lambda m, x: m.b(F.relu(m.a(x)) + m.a(x)) + x[:, :5],
          lambda m, x: m.b(ratio(F.relu, m.a(x)) + m.a(x)) + x[:, :5], a=lin(D, D), b=lin(D, 5))
    pre = dict(a=lin(), c=torch.randn(D))
    entry(aten.add.Tensor, "input_plus_constant", lambda m, x: m.a(x + m.c),
          lambda m, x: m.a(relabel(x, x + m.c)), **pre)
    entry(aten.add.Tensor, "constant_plus_input", lambda m, x: m.a(m.c + x),
          lambda m, x: m.a(relabel(x, m.c + x)), **pre)
    XFAIL[aten.add.Tensor, "constant_plus_input"] = (
        "Add.push relabels the model input only when it is the first operand: x + c keeps the "
        "InputFlow (flow p*(x + c)), c + x materialises it and absorbs c (flow p*x)")
    entry(aten.sub.Tensor, "two_carrying", lambda m, x: m.a(x) - m.b(x), **two)
    entry(aten.sub.Tensor, "two_carrying_alpha", lambda m, x: torch.sub(m.a(x), m.b(x), alpha=2.0), **two)
    entry(aten.sub.Tensor, "constant", lambda m, x: m.a(x) - m.c, **two)
    entry(aten.sub.Tensor, "constant_minus", lambda m, x: m.c - m.a(x), **two)
    entry(aten.sub.Tensor, "number", lambda m, x: m.a(x) - 1.5, **two)
    norm = dict(a=lin(), mu=torch.randn(D), sd=torch.rand(D) + 0.5)
    entry(aten.sub.Tensor, "input_standardised", lambda m, x: m.a((x - m.mu) / m.sd),
          lambda m, x: m.a(relabel(x, (x - m.mu) / m.sd)), **norm)
    entry(aten.sub.Tensor, "constant_minus_input", lambda m, x: m.a(m.mu - x),
          lambda m, x: m.a(relabel(x, m.mu - x)), **norm)
    XFAIL[aten.sub.Tensor, "constant_minus_input"] = (
        "Add.push relabels the model input only when it is the first operand: x - c keeps the "
        "InputFlow (flow p*(x - c)), c - x materialises it and absorbs c (flow -p*x)")
    entry(aten.add.Scalar, "number", lambda m, x: aten.add.Scalar(m.a(x), 1.5), **two)
    entry(aten.add.Scalar, "number_alpha", lambda m, x: aten.add.Scalar(m.a(x), 1.5, 2.0), **two)
    entry(aten.add.Scalar, "input_plus_number", lambda m, x: m.a(aten.add.Scalar(x, 1.5)),
          lambda m, x: m.a(relabel(x, x + 1.5)), **pre)
    entry(aten.sub.Scalar, "number", lambda m, x: aten.sub.Scalar(m.a(x), 1.5), **two)
    entry(aten.sub.Scalar, "input_minus_number", lambda m, x: m.a(aten.sub.Scalar(x, 1.5)),
          lambda m, x: m.a(relabel(x, x - 1.5)), **pre)
    entry(aten.rsub.Scalar, "number_minus", lambda m, x: 1.5 - m.a(x), **two)
    entry(aten.rsub.Scalar, "number_minus_alpha", lambda m, x: torch.rsub(m.a(x), 1.5, alpha=2.0), **two)
    XFAIL[aten.rsub.Scalar, "number_minus_alpha"] = (
        "rsub.Scalar's alpha is positional in its schema (rsub.Scalar(self, other, alpha=1)): "
        "the export passes it as args[2], Add.record reads kwargs.get('alpha', 1), so the flow "
        "is -u instead of -alpha*u")
    entry(aten.rsub.Scalar, "number_minus_input", lambda m, x: m.a(1.5 - x),
          lambda m, x: m.a(relabel(x, 1.5 - x)), **pre)
    XFAIL[aten.rsub.Scalar, "number_minus_input"] = (
        "rsub.Scalar never keeps the model input's InputFlow: 1.5 - x gives the flow -p*x while "
        "x - 1.5 and -x + 1.5 relabel the input (flows p*(x - 1.5), p*(1.5 - x))")

    # ---- products: by constants (tensor, number, detached), gates above, two carrying
    entry(aten.mul.Tensor, "constant", lambda m, x: m.a(x) * m.c, **two)
    entry(aten.mul.Tensor, "constant_first", lambda m, x: m.c * m.a(x), **two)
    entry(aten.mul.Tensor, "number", lambda m, x: m.a(x) * 2.5, **two)
    entry(aten.mul.Tensor, "two_carrying", lambda m, x: m.a(x) * m.b(x),
          lambda m, x: uniform(m.a(x), m.b(x)), **two)
    entry(aten.mul.Tensor, "square", lambda m, x: m.a(x) * m.a(x), lambda m, x: uniform(m.a(x), m.a(x)), **two)
    entry(aten.mul.Tensor, "input_by_constant", lambda m, x: m.a(x * m.c), **pre)
    entry(aten.mul.Tensor, "input_broadcast_up", lambda m, x: m.a(x * m.c).flatten(1), shape=(1, D),
          a=lin(), c=torch.randn(3, D))
    entry(aten.mul.Scalar, "number", lambda m, x: aten.mul.Scalar(m.a(x), 2.5), **two)
    entry(aten.mul.Scalar, "input", lambda m, x: m.a(aten.mul.Scalar(x, 2.5)), **pre)
    entry(aten.div.Tensor, "constant", lambda m, x: m.a(x) / (m.c.abs() + 0.5), **two)
    entry(aten.div.Tensor, "number", lambda m, x: m.a(x) / 4.0, **two)
    entry(aten.div.Tensor, "input", lambda m, x: m.a(x / (m.c.abs() + 0.5)), **pre)
    entry(aten.div.Tensor, "by_detached_norm", lambda m, x: m.a(x) / m.a(x).detach().abs().sum(-1, keepdim=True),
          **two)
    entry(aten.div.Scalar, "number", lambda m, x: aten.div.Scalar(m.a(x), 4.0), **two)
    entry(aten.div.Scalar, "input", lambda m, x: m.a(aten.div.Scalar(x, 4.0)), **pre)
    entry(aten.neg.default, "carrying", lambda m, x: -m.a(x), **two)
    entry(aten.neg.default, "input", lambda m, x: m.a(-x), **pre)
    entry(aten.neg.default, "input_then_constant", lambda m, x: m.a(-x + m.c),
          lambda m, x: m.a(relabel(x, -x + m.c)), **pre)

    # ---- BatchNorm that cannot be folded (and one that is)
    bn_relu = lambda m, x: m.bn(F.relu(m.a(x)))  # noqa: E731
    bn_relu_twin = lambda m, x: m.bn(ratio(F.relu, m.a(x)))  # noqa: E731 - BN in eval: affine
    bn = aten._native_batch_norm_legit_no_training.default
    entry(bn, "after_relu", bn_relu, bn_relu_twin, a=lin(), bn=randomized(nn.BatchNorm1d(5)))
    entry(bn, "after_relu_no_affine", bn_relu, bn_relu_twin, a=lin(),
          bn=randomized(nn.BatchNorm1d(5, affine=False)))
    entry(bn, "after_residual_2d", lambda m, x: m.bn(m.c(x) + x).flatten(1), shape=(2, 4, 4),
          c=nn.Conv2d(2, 2, 3, padding=1), bn=randomized(nn.BatchNorm2d(2)))
    entry(bn, "folded_into_linear", lambda m, x: m.bn(m.a(x)), a=lin(), bn=randomized(nn.BatchNorm1d(5)))

    # ---- normalisations with a constant scale
    entry(aten.layer_norm.default, "affine", lambda m, x: m.ln(m.a(x)),
          lambda m, x: layer_norm(m.a(x), -1, m.ln.weight, m.ln.bias), a=lin(), ln=randomized(nn.LayerNorm(5)))
    entry(aten.layer_norm.default, "no_affine", lambda m, x: m.ln(m.a(x)),
          lambda m, x: layer_norm(m.a(x), -1), a=lin(), ln=nn.LayerNorm(5, elementwise_affine=False))
    entry(aten.layer_norm.default, "no_bias", lambda m, x: m.ln(m.a(x)),
          lambda m, x: layer_norm(m.a(x), -1, m.ln.weight), a=lin(), ln=randomized(nn.LayerNorm(5, bias=False)))
    entry(aten.layer_norm.default, "two_axes", lambda m, x: m.ln(m.a(x)).flatten(1),
          lambda m, x: layer_norm(m.a(x), (-2, -1), m.ln.weight, m.ln.bias, eps=1e-3).flatten(1),
          shape=(3, D), a=lin(D, 4), ln=randomized(nn.LayerNorm((3, 4), eps=1e-3)))
    entry(aten.group_norm.default, "affine_2d", lambda m, x: m.gn(m.c(x)).flatten(1),
          lambda m, x: group_norm(m.c(x), 2, m.gn.weight, m.gn.bias).flatten(1), shape=(2, 5, 5),
          c=nn.Conv2d(2, 4, 3), gn=randomized(nn.GroupNorm(2, 4)))
    entry(aten.group_norm.default, "no_affine_1d", lambda m, x: m.gn(m.c(x)).flatten(1),
          lambda m, x: group_norm(m.c(x), 3, eps=1e-3).flatten(1), shape=(2, 7),
          c=nn.Conv1d(2, 6, 3), gn=nn.GroupNorm(3, 6, eps=1e-3, affine=False))
    entry(aten.rms_norm.default, "weight", lambda m, x: m.rms(m.a(x)),
          lambda m, x: rms_norm(m.a(x), -1, m.rms.weight, 1e-5), a=lin(), rms=randomized(nn.RMSNorm(5, eps=1e-5)))
    entry(aten.rms_norm.default, "no_weight_default_eps", lambda m, x: m.rms(m.a(x)),
          lambda m, x: rms_norm(m.a(x), -1), a=lin(), rms=nn.RMSNorm(5, elementwise_affine=False))
    entry(aten.rms_norm.default, "two_axes", lambda m, x: m.rms(m.a(x)).flatten(1),
          lambda m, x: rms_norm(m.a(x), (-2, -1), m.rms.weight, 1e-4).flatten(1), shape=(3, D),
          a=lin(D, 4), rms=randomized(nn.RMSNorm((3, 4), eps=1e-4)))
    entry(aten.linalg_vector_norm.default, "normalize", lambda m, x: F.normalize(m.a(x), dim=-1),
          lambda m, x: m.a(x) / torch.linalg.vector_norm(m.a(x).detach(), dim=-1, keepdim=True).clamp_min(1e-12),
          a=lin())

    # ---- constants: softmax probabilities (CP-LRP), detached tensors
    att = dict(a=lin(), b=lin())
    entry(aten.softmax.int, "scaled_values", lambda m, x: torch.softmax(m.a(x), -1) * m.b(x),
          lambda m, x: torch.softmax(m.a(x).detach(), -1) * m.b(x), **att)
    entry(aten.softmax.int, "attention", lambda m, x: (torch.softmax(m.a(x) @ m.a(x).transpose(1, 2), -1)
                                                      @ m.b(x)).flatten(1),
          lambda m, x: (torch.softmax(m.a(x).detach() @ m.a(x).detach().transpose(1, 2), -1) @ m.b(x)).flatten(1),
          shape=(3, D), **att)
    entry(aten._softmax.default, "scaled_values", lambda m, x: aten._softmax.default(m.a(x), -1, False) * m.b(x),
          lambda m, x: torch.softmax(m.a(x).detach(), -1) * m.b(x), **att)
    entry(aten._safe_softmax.default, "scaled_values", lambda m, x: aten._safe_softmax.default(m.a(x), -1) * m.b(x),
          lambda m, x: torch.softmax(m.a(x).detach(), -1) * m.b(x), **att)
    entry(aten.detach.default, "detached_factor", lambda m, x: m.a(x) * m.b(x).detach(), **att)
    entry(aten.detach.default, "detached_square", lambda m, x: m.a(x) * m.a(x).detach(), **att)

    # ---- matrix products with one constant operand (and two carrying: uniform)
    tok = dict(shape=(3, D), a=lin(D, 4), b=lin(D, 4), w=torch.randn(4, 5), wl=torch.randn(2, 3),
               wb=torch.randn(N, 4, 5), wbl=torch.randn(N, 2, 3), wh=torch.randn(2, 4, 5))
    entry(aten.matmul.default, "constant_right", lambda m, x: (m.a(x) @ m.w).flatten(1), **tok)
    entry(aten.matmul.default, "constant_left", lambda m, x: (m.wl @ m.a(x)).flatten(1), **tok)
    entry(aten.matmul.default, "constant_right_2d", lambda m, x: m.a(x) @ m.w[:, :3], a=lin(D, 4),
          w=torch.randn(4, 5))
    entry(aten.matmul.default, "heads_broadcast_constant", lambda m, x: (m.a(x)[:, None] @ m.wh).flatten(1), **tok)
    entry(aten.matmul.default, "two_carrying", lambda m, x: (m.a(x) @ m.b(x).transpose(1, 2)).flatten(1),
          lambda m, x: uniform(m.a(x), m.b(x).transpose(1, 2), torch.matmul).flatten(1), **tok)
    entry(aten.bmm.default, "constant_right", lambda m, x: torch.bmm(m.a(x), m.wb).flatten(1), **tok)
    entry(aten.bmm.default, "constant_left", lambda m, x: torch.bmm(m.wbl, m.a(x)).flatten(1), **tok)
    entry(aten.bmm.default, "two_carrying", lambda m, x: torch.bmm(m.a(x), m.b(x).transpose(1, 2)).flatten(1),
          lambda m, x: uniform(m.a(x), m.b(x).transpose(1, 2), torch.bmm).flatten(1), **tok)
    entry(aten.mm.default, "constant_right", lambda m, x: torch.mm(m.a(x), m.w), a=lin(D, 4), w=torch.randn(4, 5))
    entry(aten.einsum.default, "constant_second", lambda m, x: torch.einsum("nij,jk->nik", m.a(x), m.w).flatten(1),
          **tok)
    entry(aten.einsum.default, "constant_first", lambda m, x: torch.einsum("jk,nij->nki", m.w, m.a(x)).flatten(1),
          **tok)
    entry(aten.einsum.default, "implicit_output", lambda m, x: torch.einsum("bij,jk", m.a(x), m.w).flatten(1),
          **tok)
    entry(aten.einsum.default, "ellipsis", lambda m, x: torch.einsum("...j,jk->...k", m.a(x), m.w).flatten(1),
          **tok)

    # ---- attention kept whole: probabilities are constants
    def sdpa(m, x, twin=False, **kw):
        q, k, v = (heads(f(x)) for f in (m.q, m.k, m.v))
        out = attention(q, k, v, **kw) if twin else F.scaled_dot_product_attention(
            q, k, v, attn_mask=kw.get("mask"), is_causal=kw.get("causal", False), scale=kw.get("scale"))
        return out.flatten(1)

    qkv = dict(shape=(4, D), q=lin(D, 4), k=lin(D, 4), v=lin(D, 4))
    keep = torch.rand(4, 4) > 0.3
    keep[:, 0] = True  # no query attends to nothing
    masks = {"plain": {}, "causal": {"causal": True}, "scale": {"scale": 0.3}, "bool_mask": {"mask": keep},
             "float_mask": {"mask": torch.randn(4, 4, dtype=torch.float64)}}
    for name, kw in masks.items():
        entry(aten.scaled_dot_product_attention.default, name, partial(sdpa, **kw),
              partial(sdpa, twin=True, **kw), **qkv)

    # ---- winner takes all
    conv2 = dict(shape=(2, 7, 7), c=nn.Conv2d(2, 3, 2))
    conv1 = dict(shape=(2, 9), c=nn.Conv1d(2, 3, 2))
    pools2 = {"k2": dict(kernel_size=2), "stride_padding": dict(kernel_size=3, stride=2, padding=1),
              "dilation": dict(kernel_size=2, dilation=2), "ceil_mode": dict(kernel_size=4, stride=3, ceil_mode=True)}
    for name, kw in pools2.items():
        entry(aten.max_pool2d.default, name, lambda m, x, kw=kw: F.max_pool2d(m.c(x), **kw).flatten(1),
              lambda m, x, kw=kw: max_pool(F.max_pool2d, m.c(x), **kw).flatten(1), **conv2)
        entry(aten.max_pool1d.default, name, lambda m, x, kw=kw: F.max_pool1d(m.c(x), **kw).flatten(1),
              lambda m, x, kw=kw: max_pool(F.max_pool1d, m.c(x), **kw).flatten(1), **conv1)
    entry(aten.amax.default, "last_axis", lambda m, x: m.a(x).amax(-1), lambda m, x: amax(m.a(x), -1),
          shape=(3, D), a=lin())
    entry(aten.amax.default, "two_axes_keepdim", lambda m, x: m.a(x).amax((1, 2), keepdim=True).flatten(1),
          lambda m, x: amax(m.a(x), (1, 2), True).flatten(1), shape=(3, D), a=lin())
    entry(aten.amax.default, "ties", lambda m, x: torch.cat([m.a(x), m.a(x)], -1).amax(-1),
          lambda m, x: amax(torch.cat([m.a(x), m.a(x)], -1), -1), shape=(3, D), a=lin())
    entry(aten.max.dim, "values", lambda m, x: m.a(x).max(1).values, lambda m, x: max_dim(m.a(x), 1),
          shape=(3, D), a=lin())
    entry(aten.max.dim, "keepdim", lambda m, x: m.a(x).max(-1, keepdim=True)[0].flatten(1),
          lambda m, x: max_dim(m.a(x), -1, True).flatten(1), shape=(3, D), a=lin())

    # ---- reductions, average pools, upsampling: linear
    entry(aten.mean.dim, "last_axis", lambda m, x: m.a(x).mean(-1), shape=(3, D), a=lin())
    entry(aten.mean.dim, "two_axes_keepdim", lambda m, x: m.a(x).mean((1, 2), keepdim=True).flatten(1),
          shape=(3, D), a=lin())
    entry(aten.sum.dim_IntList, "axis_1", lambda m, x: m.a(x).sum(1), shape=(3, D), a=lin())
    entry(aten.sum.dim_IntList, "keepdim", lambda m, x: m.a(x).sum(-1, keepdim=True).flatten(1), shape=(3, D),
          a=lin())
    pool = lambda f: (lambda m, x: f(m.c(x)).flatten(1))  # noqa: E731
    entry(aten.avg_pool1d.default, "k2", pool(nn.AvgPool1d(2)), **conv1)
    entry(aten.avg_pool1d.default, "padding_no_count_ceil", pool(nn.AvgPool1d(3, 2, 1, ceil_mode=True,
                                                                             count_include_pad=False)), **conv1)
    entry(aten.avg_pool2d.default, "k2", pool(nn.AvgPool2d(2)), **conv2)
    entry(aten.avg_pool2d.default, "padding_no_count", pool(nn.AvgPool2d(3, 2, 1, count_include_pad=False)), **conv2)
    entry(aten.avg_pool2d.default, "divisor_override", pool(nn.AvgPool2d(3, 2, divisor_override=4)), **conv2)
    entry(aten.adaptive_avg_pool1d.default, "overlapping", pool(nn.AdaptiveAvgPool1d(3)), **conv1)
    entry(aten.adaptive_avg_pool2d.default, "overlapping", pool(nn.AdaptiveAvgPool2d((4, 2))), **conv2)
    entry(aten.adaptive_avg_pool2d.default, "global", pool(nn.AdaptiveAvgPool2d(1)), **conv2)
    entry(aten._adaptive_avg_pool2d.default, "overlapping",
          pool(lambda h: aten._adaptive_avg_pool2d.default(h, [4, 2])), **conv2)
    small2 = dict(shape=(2, 4, 4), c=nn.Conv2d(2, 3, 2))
    entry(aten.upsample_nearest2d.vec, "scale", pool(partial(F.interpolate, scale_factor=2)), **small2)
    entry(aten.upsample_nearest2d.vec, "size", pool(partial(F.interpolate, size=(5, 7))), **small2)
    entry(aten.upsample_nearest2d.default, "size", pool(lambda h: aten.upsample_nearest2d.default(h, [5, 7])),
          **small2)
    entry(aten.upsample_bilinear2d.vec, "scale", pool(partial(F.interpolate, scale_factor=2, mode="bilinear")),
          **small2)
    entry(aten.upsample_bilinear2d.vec, "size_align_corners",
          pool(partial(F.interpolate, size=(5, 7), mode="bilinear", align_corners=True)), **small2)
    entry(aten.upsample_nearest1d.vec, "scale", pool(partial(F.interpolate, scale_factor=2)), **conv1)
    entry(aten.upsample_linear1d.vec, "scale", pool(partial(F.interpolate, scale_factor=2, mode="linear")), **conv1)
    entry(aten.upsample_linear1d.vec, "size_align_corners",
          pool(partial(F.interpolate, size=11, mode="linear", align_corners=True)), **conv1)

    # ---- layout: the op on the flow
    t3 = dict(shape=(3, D), a=lin(D, 4), b=lin(D, 4), c=torch.randn(1, 1, 4),
              idx=torch.tensor([2, 0, 2]), idx2=torch.tensor([[1], [0]]), gidx=torch.randint(0, 4, (N, 3, 2)))
    lay = lambda f: (lambda m, x: f(m.a(x)).flatten(1))  # noqa: E731
    entry(aten.view.default, "split_axis", lay(lambda h: h.view(N, 3, 2, 2)), **t3)
    entry(aten.view.default, "batch_folded", lambda m, x: m.a(x.view(N * 3, D)).view(N, -1), **t3)
    entry(aten._unsafe_view.default, "after_permute", lambda m, x: m.a(x).permute(0, 2, 1).reshape(N, -1), **t3)
    entry(aten.expand.default, "new_axis", lay(lambda h: h[:, None].expand(-1, 2, -1, -1)), **t3)
    entry(aten.expand.default, "singleton", lay(lambda h: h[:, :1].expand(-1, 3, -1)), **t3)
    entry(aten.permute.default, "last_two", lay(lambda h: h.permute(0, 2, 1)), **t3)
    entry(aten.permute.default, "batch_moved_and_back", lay(lambda h: h.permute(1, 2, 0).permute(2, 0, 1)), **t3)
    entry(aten.transpose.int, "last_two", lay(lambda h: h.transpose(-1, -2)), **t3)
    entry(aten.transpose.int, "batch_moved_and_back", lay(lambda h: (h.transpose(0, 1) * 2).transpose(0, 1)), **t3)
    entry(aten.unsqueeze.default, "middle", lay(lambda h: h.unsqueeze(1)), **t3)
    entry(aten.unsqueeze.default, "last", lay(lambda h: h.unsqueeze(-1)), **t3)
    entry(aten.slice.Tensor, "range", lay(lambda h: h[:, 1:3]), **t3)
    entry(aten.slice.Tensor, "step_last_axis", lay(lambda h: h[..., ::2]), **t3)
    entry(aten.slice.Tensor, "narrow", lay(lambda h: h.narrow(-1, 1, 2)), **t3)
    entry(aten.select.int, "middle", lay(lambda h: h[:, 1]), **t3)
    entry(aten.select.int, "last_negative", lay(lambda h: h.select(-1, -1)), **t3)
    entry(aten.squeeze.dim, "middle", lay(lambda h: h[:, :1].squeeze(1)), **t3)
    entry(aten.squeeze.dims, "two", lay(lambda h: h[:, :1, :1].squeeze((1, 2))), **t3)
    entry(aten.unbind.int, "tokens", lay(lambda h: h.unbind(1)[0] + 2 * h.unbind(1)[2]), **t3)
    entry(aten.unbind.int, "timm_qkv", lambda m, x: sum(
        i * t for i, t in enumerate(m.a(x).reshape(N, 3, 2, 2).permute(2, 0, 3, 1).unbind(0), 1)).flatten(1), **t3)
    entry(aten.flip.default, "last", lay(lambda h: h.flip(-1)), **t3)
    entry(aten.flip.default, "two_axes", lay(lambda h: h.flip((1, 2))), **t3)
    entry(aten.split.Tensor, "equal", lay(lambda h: torch.cat(h.split(2, -1)[::-1], 1)), **t3)
    entry(aten.split.Tensor, "chunk", lay(lambda h: h.chunk(2, 1)[1]), **t3)
    entry(aten.split_with_sizes.default, "sizes", lay(lambda h: h.split([1, 3], -1)[1] * 2 + h.split([1, 3], -1)[0]),
          **t3)
    entry(aten.roll.default, "one_axis", lay(lambda h: h.roll(1, -1)), **t3)
    entry(aten.roll.default, "two_axes", lay(lambda h: h.roll((1, -2), (1, 2))), **t3)
    entry(aten.index.Tensor, "one_axis", lambda m, x: m.a(x)[:, m.idx].flatten(1), **t3)
    entry(aten.index.Tensor, "broadcast_indices", lambda m, x: m.a(x)[:, m.idx2, m.idx].flatten(1), **t3)
    entry(aten.gather.default, "last_axis", lambda m, x: m.a(x).gather(-1, m.gidx).flatten(1), **t3)
    entry(aten.repeat.default, "tile", lay(lambda h: h.repeat(1, 2, 3)), **t3)
    entry(aten.repeat.default, "new_leading_axis", lay(lambda h: h.repeat(2, 1, 1, 1).transpose(0, 1)), **t3)
    entry(aten.clone.default, "clone", lay(lambda h: h.clone()), **t3)
    entry(aten.clone.default, "dropout_in_eval", lambda m, x: m.drop(m.a(x)).flatten(1), drop=nn.Dropout(0.5),
          **t3)
    entry(aten.alias.default, "alias", lay(aten.alias.default), **t3)
    entry(aten.cat.default, "two_carrying", lambda m, x: torch.cat([m.a(x), m.b(x)], 1).flatten(1), **t3)
    entry(aten.cat.default, "constant_part", lambda m, x: torch.cat([m.c.expand(N, 1, 4), m.a(x)], 1).flatten(1),
          **t3)
    entry(aten.stack.default, "two_carrying", lambda m, x: torch.stack([m.a(x), m.b(x)], -1).flatten(1), **t3)
    entry(aten.stack.default, "constant_part", lambda m, x: torch.stack([m.a(x), m.c.expand(N, 3, 4)], 1).flatten(1),
          **t3)
    entry(aten.constant_pad_nd.default, "zeros", lay(lambda h: aten.constant_pad_nd.default(h, [1, 2, 0, 1], 0.0)),
          **t3)
    entry(aten.constant_pad_nd.default, "fill_absorbed", lay(lambda h: aten.constant_pad_nd.default(h, [1, 0], 0.5)),
          **t3)
    entry(aten.pad.default, "zeros", lay(lambda h: F.pad(h, (1, 2))), **t3)
    entry(aten.pad.default, "fill_absorbed", lay(lambda h: F.pad(h, (0, 1, 2, 0), value=-0.5)), **t3)
    # getitem: the parts of split / max.dim (one stands on its own here too)
    entry(operator.getitem, "split_parts", lay(lambda h: h.split(2, -1)[1] - h.split(2, -1)[0]), **t3)
    entry(operator.getitem, "max_values", lambda m, x: m.a(x).max(1)[0], lambda m, x: max_dim(m.a(x), 1), **t3)


with torch.random.fork_rng():
    torch.manual_seed(0)
    _build()


# ----------------------------------------------------------------------- exemptions

#: refusals: entries that raise instead of pushing (tests/engine/test_refusals.py)
REFUSED = {op for op, cls in OPS.items() if issubclass(cls, Refused)}
#: entries torch 2.13's export + run_decompositions({}) never emits, even when the model
#: calls them by name (checked by test_unreachable_entries_are_decomposed): no graph can
#: exercise them; the op they become has samples
UNREACHABLE = {
    aten.dropout.default: aten.clone.default,  # eval mode: an identity clone
    aten.reshape.default: aten.view.default,
    aten.chunk.default: aten.split.Tensor,
    aten.narrow.default: aten.slice.Tensor,
    aten.lift_fresh_copy.default: aten.clone.default,
    aten.upsample_bilinear2d.default: aten._unsafe_index.Tensor,  # decomposed into index arithmetic
}
EXEMPT = REFUSED | set(UNREACHABLE)


def _cases():
    for op in sorted(SAMPLES, key=str):
        for name in SAMPLES[op]:
            why = XFAIL.get((op, name))
            marks = [pytest.mark.xfail(strict=True, reason=why)] if why else []
            yield pytest.param(op, name, id=f"{op}-{name}", marks=marks)


@pytest.mark.parametrize("op, name", list(_cases()))
def test_entry_matches_its_twin(op, name, monkeypatch):
    model, twin, x = SAMPLES[op][name]
    # one export per case: the engine's own call of trace.export, watched
    graphs = []

    def watched(*args):
        traced = trace.export(*args)
        graphs.append({n.target for n in traced.graph.nodes if n.op == "call_function"})
        return traced

    monkeypatch.setattr(engine_network, "export", watched)
    rec = ExportedNetwork(model, "zero", torch.float64).record(x)
    assert len(graphs) == 1 and op in graphs[0], f"{op} not in the exported graph: {sorted(map(str, graphs[0]))}"
    with torch.no_grad():
        close(rec.features, model(x).flatten(1))
    p = probes(x, 3)
    flows = rec.push(p).reshape(3, N, -1)
    for k, pk in enumerate(p.reshape(3, *x.shape)):
        _, ref = torch.func.jvp(twin, (x,), (pk * x,))
        close(flows[k], ref.flatten(1))


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
        parts = [aten.dropout.default(h, 0.5, False), aten.reshape.default(h, [N, 2, 12]),
                 aten.chunk.default(h, 2, -1)[0], aten.narrow.default(h, -1, 1, 2),
                 aten.lift_fresh_copy.default(h), aten.upsample_bilinear2d.default(h, [4, 5], False)]
        return torch.cat([t.flatten(1) for t in parts], 1)

    model = Model(calls, a=lin(D, 4)).double().eval()
    x = torch.randn((N, 2, 3, D), dtype=torch.float64)
    traced = trace.export(model, (x,), {})
    targets = {n.target for n in traced.graph.nodes if n.op == "call_function"}
    assert not targets & set(UNREACHABLE), f"now emitted, give them samples: {targets & set(UNREACHABLE)}"
    assert set(UNREACHABLE.values()) <= targets
