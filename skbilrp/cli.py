"""The ``skbilrp`` command: ``demo``, ``explain`` (two images), ``text`` (two sentences),
``report`` (an interactive HTML report of a kernel on the user's images or texts, or of
the digits demo) and ``neighbors`` (a query's nearest images or texts, explained). Models
are named as ``skbilrp._model_loading`` reads them: shipped names, ``package.module:factory``
for images, local folders for texts.

Expected failures (a missing file, a file that is no image, a model factory that does
not import, a weights file that does not match the model, an ``--output`` that cannot
be written, a missing optional package, an input size whose work does not fit in
memory) end with one line
``skbilrp: error: <cause and fix>`` on stderr and exit status 2; anything else is a bug
and keeps its traceback. Every argument that can be checked without the model is
checked before any work starts.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Any, Callable, Optional, Sequence

import numpy as np

__all__ = ["main", "build_parser", "CommandError", "explain_memory"]

PROG = "skbilrp"
EXIT_USAGE = 2

#: LRP rules presets of ``report --rules`` (those of :data:`skbilrp.rules.PRESETS` that need no model family).
PRESET_NAMES = ("zero", "zero-share", "zero-mass", "zero-flat", "epsilon", "gamma")

#: Input side (pixels) and patch size of each image model, when not given.
_IMAGE_DEFAULTS = {"mobilenet_v2": (224, 16), "efficientnet_lite0": (224, 16), "vgg16": (224, 16),
                   "digits": (8, 1)}


class CommandError(Exception):
    """A user-facing failure: its message names the cause and the fix."""


# ---------------------------------------------------------------------- commands


def _cmd_demo(args: argparse.Namespace) -> int:
    _check_output(args, "folder")
    _check_n_train(args.n_train)
    _require_plotting()
    from .demo import run_demo

    run_demo(args.output, n_train=args.n_train, verbose=True)
    return 0


def _image_model(name: str, weights: Optional[str]) -> tuple[Any, Any]:
    """The feature extractor and its rules for ``--model``."""
    from . import models

    if name == "mobilenet_v2":
        model = models.mobilenet_v2(pretrained=True)
        return model, models.mobilenet_v2_rules(model)
    if name == "efficientnet_lite0":
        model = models.efficientnet_lite0(pretrained=True)
        return model, models.efficientnet_lite0_rules(model)
    if name == "vgg16":
        if weights is None:
            raise CommandError(_VGG_NO_WEIGHTS)
        state = _vgg16_state_dict(weights)
        try:
            model = models.vgg16(weights=state)
        except (ValueError, RuntimeError, TypeError) as err:
            raise CommandError(f"--weights {weights!r} is no VGG-16 state_dict: {_one_line(err)} "
                               f"Fix: {_VGG_FIX}.") from err
        return model, models.vgg16_rules(model)
    model = models.digits_cnn(pretrained=True)
    return model, models.digits_cnn_rules(model)


_VGG_NO_WEIGHTS = ("--model vgg16 needs --weights PATH (a torchvision VGG-16 state_dict file); no VGG-16 "
                   "weights ship offline, or use --model mobilenet_v2.")
_VGG_FIX = ("give a torchvision VGG-16 state_dict file, e.g. torchvision's vgg16-397923af.pth or "
            "torch.save(model.state_dict(), PATH) of a torchvision.models.vgg16")


def _vgg16_state_dict(path: str) -> Any:
    """Read ``--weights`` safely, naming the file and what is wrong with it; what it holds
    is checked by :func:`skbilrp.models.vgg16`."""
    from ._model_loading import read_state_dict

    return read_state_dict(path, _VGG_FIX)


def _check_weights_file(path: str) -> None:
    """``--weights`` names a file (what it holds is checked when it is read)."""
    if os.path.isdir(path):
        raise CommandError(f"--weights {path!r} is a folder, not a weights file; give the path of the file inside it.")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No such weights file: {path!r}; check the path.")


# ------------------------------------------------------------- memory estimate

#: Share of this machine's memory one ``explain`` run may plan to use.
MEMORY_SHARE = 0.8
#: The limit where the machine's memory cannot be read (e.g. on Windows).
FALLBACK_MEMORY = 8 * 2**30
#: Explainer's default probe budget (``max_memory``), used as is by ``explain``.
_PROBE_MEMORY = 2**30
#: Total downsampling of each image model: activation sides are ceil(size / 2^k), so
#: rounding the size up to a multiple of it makes the per-pixel scaling an upper bound.
_STRIDES = {"mobilenet_v2": 32, "efficientnet_lite0": 32, "vgg16": 32}


def _architecture(name: str) -> Any:
    """The network of ``--model`` with random weights: activation sizes need no checkpoint."""
    from . import models

    if name == "mobilenet_v2":
        return models.mobilenet_v2(pretrained=False)
    if name == "efficientnet_lite0":
        return models.efficientnet_lite0(pretrained=False)
    return models.vgg16()


def _activation_sizes(model: Any, size: int) -> tuple[int, int, int]:
    """Per-image numel of all leaf-module outputs (and the input), of the largest, and of the features."""
    import torch

    numels = [3 * size * size]
    hooks = [m.register_forward_hook(lambda _m, _i, out: numels.append(out[0].numel()))
             for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            features = model(torch.zeros(1, 3, size, size))
    finally:
        for hook in hooks:
            hook.remove()
    return sum(numels), max(numels), features[0].numel()


def explain_memory(model: str, patch: int) -> Callable[[int], int]:
    """A conservative estimate of the memory ``skbilrp explain`` needs, as a function of ``--size``.

    Activation sizes are measured once on the model at two small sizes (random weights,
    a few milliseconds) and scaled by the number of pixels, the size rounded up to a
    multiple of the model's downsampling (so the scaling over- rather than
    underestimates). For two images, with ``p = ceil(size / patch)²`` patches and ``h``
    features, the estimate in bytes of float32 is the sum of: the recorded activations,
    counted twice (the rules keep states of the same size); one chunk of probes, the
    larger of the Explainer's 1 GiB budget and one probe (3 × the largest activation in
    forward mode, 2 × all activations in reverse mode, whichever ``mode="auto"``
    picks); the relevance ``2 × h × p``; and the ``p × p`` pair matrix at 4 + 8 bytes
    (float32, then float64).

    Parameters
    ----------
    model : {"mobilenet_v2", "efficientnet_lite0", "vgg16"}
        The ``--model``.
    patch : int
        The ``--patch`` side in pixels.

    Returns
    -------
    callable
        ``size -> bytes``.
    """
    from .relevance import REVERSE_COST

    stride = _STRIDES[model]
    net = _architecture(model)
    small, large = 2 * stride, 4 * stride
    t1, m1, h1 = _activation_sizes(net, small)
    t2, m2, h2 = _activation_sizes(net, large)
    px1, px2 = small * small, large * large
    n, item = 2, 4

    def estimate(size: int) -> int:
        px = (stride * math.ceil(size / stride)) ** 2
        total, largest = max(t1, t2) / px1 * px, max(m1, m2) / px1 * px  # per-pixel, the larger ratio
        h = max(h1, h1 + (h2 - h1) / (px2 - px1) * (px - px1))  # features: constant + per-pixel part
        p = math.ceil(size / patch) ** 2
        probe = 3 * largest if p <= REVERSE_COST * h else 2 * total
        return int(n * item * 2 * total + max(_PROBE_MEMORY, n * item * probe)
                   + n * item * h * p + (4 + 8) * p * p)

    return estimate


def _memory_limit() -> tuple[int, str]:
    """The memory one run may plan to use, and where that number comes from."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return FALLBACK_MEMORY, "the default, as this machine's memory is unknown"
    return int(MEMORY_SHARE * total), f"{MEMORY_SHARE:.0%} of this machine's {_gib(total)}"


def _gib(n_bytes: float) -> str:
    gib = n_bytes / 2**30
    return f"{gib:.3g} GiB" if gib < 1000 else f"{gib:,.0f} GiB"


def _check_size_fits(model: str, size: int, patch: int) -> None:
    """Refuse, before any work, a ``--size`` whose estimated memory exceeds the limit."""
    if model not in _STRIDES:  # digits: 8 × 8 only, a few kilobytes
        return
    estimate = explain_memory(model, patch)
    limit, why = _memory_limit()
    need = estimate(size)
    if need <= limit:
        return
    lo, hi = 0, size  # the largest size that fits: the estimate grows with the size
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if estimate(mid) <= limit else (lo, mid)
    fix = f"pass --size {lo} or less" if lo else "no --size fits; use a machine with more memory"
    raise CommandError(
        f"--size {size} with --patch {patch} needs about {_gib(need)} of memory for --model {model} "
        f"(estimate), more than the limit of {_gib(limit)} ({why}); {fix}."
    )


def _cmd_explain(args: argparse.Namespace) -> int:
    from ._model_loading import build_image_model, image_model_and_sides
    from .datasets import check_image_files

    _check_output(args)
    spec, size, patch = image_model_and_sides(args)
    check_image_files([args.image_a, args.image_b])  # exist and open as images; pixels are decoded later
    _require_plotting()
    from .explainer import Explainer
    from .io import load_image
    from .pairs import pair_relevance
    from .plot import plot_pair

    model, rules = build_image_model(spec, size, patch)  # the last check (memory; a model of your own)
    images = np.stack([load_image(p, size=size, grayscale=spec.grayscale) for p in (args.image_a, args.image_b)])
    explainer = Explainer(model, rules=rules, pooling=patch, verbose=True)
    relevance = explainer.relevance(images)
    expl = pair_relevance(relevance[0], relevance[1], kernel="cosine", method=explainer.method).pair(0, 0)
    print(f"cosine similarity: {expl.similarity:.4f}")
    _print_conservation(expl)
    print(f"top interactions ({patch}×{patch} px patches, (row, column) in the patch grid):")
    grid = expl.pooling_a.grid_shape
    for g, h, r in expl.top_interactions(args.top):
        print(f"  {_patch_name(g, grid)} of image 1 with {_patch_name(h, grid)} of image 2: {r:+.4g}")
    fig = plot_pair(expl, images[0], images[1], n_links=args.links)
    _save(fig, args.output)
    return 0


def _print_conservation(expl: Any) -> None:
    print(f"conservation error: {expl.conservation_error:.3g} (similarity minus the sum of the relevance)")
    if abs(expl.conservation_error) > 0.05 * max(abs(expl.similarity), 1e-12):
        # not a bug: LRP-rules with bias="absorb" give part of each layer's output to its
        # biases (folded BatchNorm); only conserving rules on bias-free layers sum exactly
        print("  (the difference goes to the network's biases; the pairs below explain the rest)")


def _patch_name(group: int, grid: Optional[tuple]) -> str:
    if grid is None:
        return f"group {group}"
    return "patch ({}, {})".format(*np.unravel_index(group, grid))


def _cmd_text(args: argparse.Namespace) -> int:
    from ._model_loading import text_kernel_class, text_model

    _check_output(args)
    model = text_model(args.model)
    _require_plotting()
    TextKernel = text_kernel_class()
    from .plot import plot_tokens

    kernel = TextKernel(model).fit([args.sentence_b])
    expl = kernel.explain_pairs([args.sentence_a]).pair(0, 0)
    print(f"cosine similarity: {expl.similarity:.4f}")
    _print_conservation(expl)
    print("top token pairs ([CLS] and [SEP] are inputs too):")
    for a, b, r in expl.top_token_pairs(args.top):
        print(f"  {a!r} with {b!r}: {r:+.4g}")
    fig = plot_tokens(expl, expl.tokens_a, expl.tokens_b, kind=args.kind)
    _save(fig, args.output)
    return 0


def _cmd_neighbors(args: argparse.Namespace) -> int:
    from ._neighbors_command import run_neighbors  # late: it reads this module's helpers (and their test patches)

    return run_neighbors(args)


def _cmd_report(args: argparse.Namespace) -> int:
    from ._report_command import run_report  # late: it reads this module's helpers (and their test patches)

    return run_report(args)


_TEXT_HINT = 'install the text extra with: pip install torch==2.13.0 "skbilrp[text]"'


# ----------------------------------------------------------------------- helpers


#: the arguments that name files or folders a command reads, as its help names them
_INPUTS = {"image_a": "IMG1", "image_b": "IMG2", "query": "QUERY", "images": "--images", "labels": "--labels",
           "texts": "--texts", "queries": "--queries", "weights": "--weights", "model": "--model"}


def _check_output(args: argparse.Namespace, kind: str = "file") -> None:
    """``--output`` can be written (see :func:`skbilrp._checks.check_output_path`) and
    overwrites none of the command's inputs: checked before any work, so a bad path
    fails at once rather than after the computation."""
    from ._checks import check_output_path
    from .datasets import IMAGE_EXTENSIONS

    check_output_path(args.output, kind, "--output")
    out = os.path.realpath(args.output)
    for attr, flag in _INPUTS.items():
        value = getattr(args, attr, None)
        if not isinstance(value, str) or not os.path.exists(value):
            continue
        src = os.path.realpath(value)
        if out == src:
            raise ValueError(f"--output {args.output!r} is the input {flag} {value!r}: writing would replace it; "
                             "give another --output path.")
        inside = attr in ("images", "queries") and os.path.isdir(src) and out.startswith(os.path.join(src, ""))
        if inside and (kind == "folder" or out.lower().endswith(IMAGE_EXTENSIONS)):
            raise ValueError(f"--output {args.output!r} lies inside the input folder {flag} {value!r}, where the next "
                             "run would read it as an input; give an --output path outside that folder.")


def _check_n_train(n_train: Optional[int]) -> None:
    """``--n-train`` lies between 10 and the size of the digits training split (read in
    milliseconds from scikit-learn's bundled file, before any model is built)."""
    if n_train is None:
        return
    from .models import load_digits_images

    n_max = len(load_digits_images("train")[1])
    if not 10 <= n_train <= n_max:
        raise CommandError(f"--n-train must lie between 10 and {n_max} (the digits training split), got {n_train}.")


def _require_plotting() -> None:
    """Fail before any computation if figures cannot be drawn; draw off-screen."""
    try:
        import matplotlib
    except ImportError as err:
        raise ImportError(_missing_module_message(err, "Figures need matplotlib")) from err
    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")  # a command-line run never opens windows


def _save(fig: Any, path: str) -> None:
    import matplotlib.pyplot as plt

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    try:
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
    print(f"figure written to {path}")


def _missing_module_message(err: ImportError, context: str) -> str:
    """Name the package that is really missing: matplotlib imports Pillow, for one."""
    from .io import IMAGES_INSTALL
    from .plot import PLOT_INSTALL

    name = (err.name or "").split(".")[0]
    if name == "PIL":
        return f"{context}, which needs Pillow, and Pillow is not installed; install it with: {IMAGES_INSTALL}"
    if name in ("", "matplotlib"):
        return f"{context}; install it with: {PLOT_INSTALL}"
    return (f"{context}, which needs {name!r}, and {name!r} cannot be imported ({_one_line(err)}); "
            f"reinstall it with: {PLOT_INSTALL}")


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


# ------------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``skbilrp`` command."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Explain deep similarities on pairs of input features (BiLRP).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="digits CNN kernel in scikit-learn pipelines, explained",
                          description="Fit an SVM and a k-NN classifier on a deep cosine kernel of "
                                      "scikit-learn's digits, explain neighbours and a decision, "
                                      "and write figures.")
    demo.add_argument("--output", "-o", default="skbilrp-demo", metavar="DIR",
                      help="folder for the figures (default: %(default)s)")
    demo.add_argument("--n-train", type=int, default=None, metavar="N",
                      help="training images to use (default: the whole training split)")
    demo.set_defaults(run=_cmd_demo)

    explain = sub.add_parser("explain", help="explain the similarity of two images",
                             description="Explain the cosine similarity of two images' deep features "
                                         "on pairs of image patches, and draw the strongest pairs.")
    explain.add_argument("image_a", metavar="IMG1")
    explain.add_argument("image_b", metavar="IMG2")
    explain.add_argument("--model", default="mobilenet_v2", metavar="NAME|MODULE:FACTORY", help=_IMAGE_MODEL_HELP)
    explain.add_argument("--weights", metavar="PATH", help=_WEIGHTS_HELP)
    explain.add_argument("--patch", type=int, default=None, metavar="PX",
                         help="patch side in pixels (default: 16; 1 for digits)")
    explain.add_argument("--size", type=int, default=None, metavar="PX",
                         help="images are resized and centre-cropped to this side (default: 224; 8 for digits)")
    explain.add_argument("--links", type=_positive, default=30, help="patch pairs drawn (default: %(default)s)")
    explain.add_argument("--top", type=_non_negative, default=5, help="patch pairs printed (default: %(default)s)")
    explain.add_argument("--output", "-o", default="skbilrp-pair.png", metavar="PNG",
                         help="figure file (default: %(default)s)")
    explain.set_defaults(run=_cmd_explain)

    text = sub.add_parser("text", help="explain the similarity of two sentences (MiniLM)",
                          description="Explain the cosine similarity of two sentence embeddings "
                                      "(all-MiniLM-L6-v2) on pairs of tokens.")
    text.add_argument("sentence_a", metavar="SENTENCE1")
    text.add_argument("sentence_b", metavar="SENTENCE2")
    text.add_argument("--model", metavar="DIR", help=_TEXT_MODEL_HELP)
    text.add_argument("--kind", choices=("matrix", "arcs"), default="matrix",
                      help="token × token heatmap or arcs between the sentences (default: %(default)s)")
    text.add_argument("--top", type=_non_negative, default=5, help="token pairs printed (default: %(default)s)")
    text.add_argument("--output", "-o", default="skbilrp-tokens.png", metavar="PNG",
                      help="figure file (default: %(default)s)")
    text.set_defaults(run=_cmd_text)

    report = sub.add_parser(
        "report", help="interactive HTML report of a deep kernel on your images or texts (or the digits demo)",
        description="Write one self-contained HTML file (no network) with a deep kernel's heatmap sorted by "
                    "label, clickable BiLRP pair explanations, nearest-neighbour explanations of queries, the "
                    "dataset audit and the conservation errors. The kernel is fitted on your data (--images DIR "
                    "or --texts FILE) or, without either, on the digits demo. What is shown is precomputed and "
                    "capped; the report says what was capped.")
    data = report.add_argument_group("your data (without --images or --texts: the digits demo)")
    data.add_argument("--images", metavar="DIR",
                      help="folder of images, read recursively; the names of its subfolders are the labels")
    data.add_argument("--labels", metavar="CSV",
                      help="labels of --images from a .csv/.tsv table (header, then image path relative to DIR "
                           "and label), instead of subfolder names")
    data.add_argument("--texts", metavar="FILE",
                      help=".txt file (one text per line) or .csv/.tsv file with a header row")
    data.add_argument("--text-column", metavar="NAME", help="column of the texts in a .csv/.tsv file")
    data.add_argument("--label-column", metavar="NAME", help="column of the labels in a .csv/.tsv file")
    data.add_argument("--queries", metavar="DIR|FILE",
                      help="queries (rows of the kernel), in the layout of --images or --texts (default: a "
                           "held-out split of the data); for the digits demo, a number as --n-queries")
    data.add_argument("--test-size", metavar="F|N",
                      help="share (e.g. 0.25, the default) or number of samples held out as queries")
    _add_model_arguments(data)
    report.add_argument("--output", "-o", default="skbilrp-report.html", metavar="HTML",
                        help="report file (default: %(default)s)")
    report.add_argument("--n-train", type=int, default=None, metavar="N",
                        help="digits demo: training images to use (default: the whole training split)")
    report.add_argument("--n-queries", type=_non_negative, default=10, metavar="N",
                        help="queries whose neighbours are explained (default: %(default)s)")
    report.add_argument("--neighbors", type=_positive, default=5, metavar="K",
                        help="neighbours explained per query (default: %(default)s)")
    report.add_argument("--max-entries", type=_non_negative, default=300, metavar="N",
                        help="cap on precomputed pair explanations (default: %(default)s)")
    report.add_argument("--max-heatmap", type=_positive, default=512, metavar="CELLS",
                        help="most heatmap cells per side; larger kernels are shown as block means "
                             "(default: %(default)s)")
    report.add_argument("--links", type=_positive, default=30, help="pixel pairs embedded per entry (default: %(default)s)")
    report.add_argument("--audit-max-pairs", type=_positive, default=200, metavar="N",
                        help="kernel entries aggregated per class by the audit (default: %(default)s)")
    report.add_argument("--no-audit", action="store_true", help="leave the dataset audit out")
    report.set_defaults(run=_cmd_report)

    near = sub.add_parser(
        "neighbors", help="a query's nearest images or texts, each similarity explained",
        description="Fit a deep kernel on your images (--images DIR) or texts (--texts FILE), find the k items "
                    "nearest to QUERY (an image file, or a text) and draw, for each, the query beside it with "
                    "the pairs of patches or words that make their similarity; one line per hit on stdout.")
    near.add_argument("query", metavar="QUERY", help="an image file (with --images) or a text (with --texts)")
    near.add_argument("--images", metavar="DIR", help="folder of images searched, read recursively "
                                                      "(subfolder names are shown as labels)")
    near.add_argument("--texts", metavar="FILE", help=".txt file (one text per line) or .csv/.tsv file with a "
                                                      "header row, searched")
    near.add_argument("--text-column", metavar="NAME", help="column of the texts in a .csv/.tsv file")
    near.add_argument("--label-column", metavar="NAME", help="column of labels shown beside the hits")
    near.add_argument("-k", type=_positive, default=5, help="neighbours shown (default: %(default)s)")
    _add_model_arguments(near)
    near.add_argument("--kind", choices=("matrix", "arcs"), default=None,
                      help="texts: word arcs or a word × word heatmap per hit (default: arcs)")
    near.add_argument("--links", type=_positive, default=30, help="pairs drawn per hit (default: %(default)s)")
    near.add_argument("--output", "-o", default="skbilrp-neighbors.png", metavar="PNG",
                      help="figure file (default: %(default)s)")
    near.set_defaults(run=_cmd_neighbors)
    return parser


def _add_model_arguments(group: Any) -> None:
    """The model and explanation options shared by ``report`` and ``neighbors``."""
    group.add_argument("--model", metavar="NAME|MODULE:FACTORY|DIR",
                       help=f"images: {_IMAGE_MODEL_HELP}; texts: {_TEXT_MODEL_HELP}")
    group.add_argument("--weights", metavar="PATH", help=_WEIGHTS_HELP)
    group.add_argument("--size", type=_positive, default=None, metavar="PX",
                       help="images are resized and centre-cropped to this side (default: 224; 8 for digits)")
    group.add_argument("--patch", type=_positive, default=None, metavar="PX",
                       help="patch side in pixels (default: 16; 1 for digits)")
    group.add_argument("--kernel", choices=("cosine", "linear"), default=None,
                       help="similarity of the features (default: cosine)")
    group.add_argument("--rules", choices=sorted(PRESET_NAMES), default=None,
                       help="LRP rules preset (default: the image model's own rules; zero-mass for texts; "
                            "zero-share for image models of your own)")
    group.add_argument("--attention", choices=("cp", "attnlrp"), default=None,
                       help="texts: relevance through attention, CP-LRP or AttnLRP (default: cp)")


_IMAGE_MODEL_HELP = (f"{', '.join(sorted(_IMAGE_DEFAULTS))} (default: mobilenet_v2), or package.module:factory, "
                     "a callable returning a torch.nn.Module of your own (its folder on PYTHONPATH; 224 px, "
                     "16-px patches and the zero-share rules unless given)")
_WEIGHTS_HELP = ("state dict file (torch.save(model.state_dict(), PATH)) for a model of your own, or the "
                 "torchvision VGG-16 weights for --model vgg16")
_TEXT_MODEL_HELP = "a local SentenceTransformer or Hugging Face folder (default: all-MiniLM-L6-v2)"


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return number


def _non_negative(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {value}")
    return number


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``skbilrp`` command.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name; default ``sys.argv[1:]``.

    Returns
    -------
    int
        Exit status: 0 on success, 2 on a user error (one line on stderr).
    """
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (CommandError, ImportError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError,
            ValueError) as err:
        print(f"{PROG}: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_USAGE
