"""The ``skbilrp`` command: ``demo``, ``explain`` (two images) and ``text`` (two sentences).

Expected failures (a missing file, a file that is no image, a missing optional
package) end with one line ``skbilrp: error: <cause and fix>`` on stderr and exit
status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Optional, Sequence

import numpy as np

__all__ = ["main", "build_parser", "CommandError"]

PROG = "skbilrp"
EXIT_USAGE = 2

#: Input side (pixels) and patch size of each image model, when not given.
_IMAGE_DEFAULTS = {"mobilenet_v2": (224, 16), "vgg16": (224, 16), "digits": (8, 1)}


class CommandError(Exception):
    """A user-facing failure: its message names the cause and the fix."""


# ---------------------------------------------------------------------- commands


def _cmd_demo(args: argparse.Namespace) -> int:
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
    if name == "vgg16":
        if weights is None:
            raise CommandError(
                "--model vgg16 needs --weights PATH (a torchvision VGG-16 state_dict file); no VGG-16 "
                "weights ship offline, or use --model mobilenet_v2."
            )
        if not os.path.isfile(weights):
            raise FileNotFoundError(f"No such weights file: {weights!r}; check the path.")
        model = models.vgg16(weights=weights)
        return model, models.vgg16_rules(model)
    model = models.digits_cnn(pretrained=True)
    return model, models.digits_cnn_rules(model)


def _cmd_explain(args: argparse.Namespace) -> int:
    _require_plotting()
    from .explainer import Explainer
    from .io import load_image
    from .pairs import pair_relevance
    from .plot import plot_pair

    size, patch = _IMAGE_DEFAULTS[args.model]
    size = args.size if args.size is not None else size
    patch = args.patch if args.patch is not None else patch
    if args.model == "digits" and size != 8:
        raise CommandError(f"--model digits takes 8×8 images; drop --size or give --size 8 (got {size}).")
    if size < 1 or patch < 1:
        raise CommandError(f"--size and --patch must be positive, got {size} and {patch}.")
    # read both images before the (slower) model, so a bad path fails at once
    grey = args.model == "digits"
    images = np.stack([load_image(p, size=size, grayscale=grey) for p in (args.image_a, args.image_b)])
    model, rules = _image_model(args.model, args.weights)
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
    _require_plotting()
    try:
        from .text import TextKernel
    except ImportError as err:  # transformers or torch pieces missing
        raise ImportError(f"{_one_line(err)}; {_TEXT_HINT}") from err
    from .plot import plot_tokens

    kernel = TextKernel().fit([args.sentence_b])
    expl = kernel.explain_pairs([args.sentence_a]).pair(0, 0)
    print(f"cosine similarity: {expl.similarity:.4f}")
    _print_conservation(expl)
    print("top token pairs ([CLS] and [SEP] are inputs too):")
    for a, b, r in expl.top_token_pairs(args.top):
        print(f"  {a!r} with {b!r}: {r:+.4g}")
    fig = plot_tokens(expl, expl.tokens_a, expl.tokens_b, kind=args.kind)
    _save(fig, args.output)
    return 0


_TEXT_HINT = 'install the text extra with: pip install torch==2.13.0 "skbilrp[text]"'


# ----------------------------------------------------------------------- helpers


def _require_plotting() -> None:
    """Fail before any computation if figures cannot be drawn; draw off-screen."""
    try:
        import matplotlib
    except ImportError as err:
        from .plot import PLOT_INSTALL

        raise ImportError(f"Figures need matplotlib; install it with: {PLOT_INSTALL}") from err
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
    explain.add_argument("--model", choices=sorted(_IMAGE_DEFAULTS), default="mobilenet_v2",
                         help="feature extractor (default: %(default)s)")
    explain.add_argument("--weights", metavar="PATH", help="torchvision VGG-16 weights file, for --model vgg16")
    explain.add_argument("--patch", type=int, default=None, metavar="PX",
                         help="patch side in pixels (default: 16; 1 for digits)")
    explain.add_argument("--size", type=int, default=None, metavar="PX",
                         help="images are resized and centre-cropped to this side (default: 224; 8 for digits)")
    explain.add_argument("--links", type=int, default=30, help="patch pairs drawn (default: %(default)s)")
    explain.add_argument("--top", type=int, default=5, help="patch pairs printed (default: %(default)s)")
    explain.add_argument("--output", "-o", default="skbilrp-pair.png", metavar="PNG",
                         help="figure file (default: %(default)s)")
    explain.set_defaults(run=_cmd_explain)

    text = sub.add_parser("text", help="explain the similarity of two sentences (MiniLM)",
                          description="Explain the cosine similarity of two sentence embeddings "
                                      "(all-MiniLM-L6-v2) on pairs of tokens.")
    text.add_argument("sentence_a", metavar="SENTENCE1")
    text.add_argument("sentence_b", metavar="SENTENCE2")
    text.add_argument("--kind", choices=("matrix", "arcs"), default="matrix",
                      help="token × token heatmap or arcs between the sentences (default: %(default)s)")
    text.add_argument("--top", type=int, default=5, help="token pairs printed (default: %(default)s)")
    text.add_argument("--output", "-o", default="skbilrp-tokens.png", metavar="PNG",
                      help="figure file (default: %(default)s)")
    text.set_defaults(run=_cmd_text)
    return parser


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
    except (CommandError, ImportError, FileNotFoundError, IsADirectoryError, PermissionError, ValueError) as err:
        print(f"{PROG}: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_USAGE
