"""``skbilrp report``: the interactive HTML report of a deep kernel on the user's images or
texts, or on the digits demo. Both go through one writer (:func:`skbilrp.report.write_report`).

Order of work: every argument and input is checked first (image headers, table columns,
the model's name or folder, the split), then the model is loaded, pixels decoded, the
kernel fitted and the report written, each stage with a progress line on stderr.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from typing import Any, Optional

import numpy as np

from . import cli  # its helpers by attribute: tests patch the ones that start work
from ._model_loading import (build_image_model, image_model_and_sides, text_kernel_class, text_model, text_model_name,
                             truncation_note)
from .cli import CommandError
from .rules import TEXT_RULES

__all__ = ["run_report"]


def run_report(args: argparse.Namespace) -> int:
    """Run ``skbilrp report``: on ``--images`` or ``--texts`` when given, else on the digits demo.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed arguments of the ``report`` subcommand.

    Returns
    -------
    int
        0; user errors raise :class:`skbilrp.cli.CommandError` (or ValueError,
        FileNotFoundError, ...), which :func:`skbilrp.cli.main` turns into one line and exit 2.
    """
    import time

    start = time.perf_counter()
    cli._check_output(args)
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
    cli._check_n_train(args.n_train)
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
                      ("--label-column", "label_column"), ("--labels", "labels"))


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
        spec, size, patch = image_model_and_sides(args)
        if size % patch and not args.no_audit:  # the audit sums relevance over whole patches of the grid
            fits = [p for p in range(patch - 1, 0, -1) if size % p == 0][:1] + \
                   [p for p in range(patch + 1, size + 1) if size % p == 0][:1]
            raise CommandError(f"--patch {patch} does not divide --size {size}, as the dataset audit needs; give "
                               f"--patch {' or '.join(map(str, fits))}, or --no-audit.")
        data = find_images(args.images, "--images", args.labels)
        queries = None if args.queries is None else find_images(args.queries, "--queries")
    else:
        for flag in ("--size", "--patch", "--weights", "--labels"):
            if getattr(args, flag[2:]) is not None:
                raise CommandError(f"{flag} applies to --images, not to --texts; drop it.")
        data = read_texts(args.texts, args.text_column, args.label_column, "--texts")
        if args.queries is not None and args.queries.lower().endswith(".txt") and (args.text_column or
                                                                                  args.label_column):
            raise CommandError(f"--queries {args.queries!r} is a .txt file (one text per line) but --texts is a "
                               "table read by column; give the queries as a .csv/.tsv table with the same columns.")
        queries = None if args.queries is None else read_texts(args.queries, args.text_column, args.label_column,
                                                               "--queries")
        model = text_model(args.model)
    if queries is None:
        train, queries = _held_out(data, _test_size(args.test_size, len(data)))
    else:
        train = data
        same = {os.path.realpath(p) if images else p for p in data.items}
        shared = sum((os.path.realpath(q) if images else q) in same for q in queries.items)
        if shared:
            queries.notes.append(f"{shared} of the {len(queries)} queries are also among the training "
                                 f"{'images' if images else 'texts'}: each is its own nearest neighbour "
                                 "(similarity 1); give queries held out of --" + ("images" if images else "texts"))
    if images:
        # the last check (memory; a model of your own is built): a refusal stays one line, before the notes
        network, rules = build_image_model(spec, size, patch)
    for note in data.notes + (queries.notes if queries is not data else []):
        _note(note)
    if images:
        kern = _fit_image_kernel(args, spec, network, rules, size, patch, train)
        X = _read_pixels(queries, spec, size)
    else:
        kern = _fit_text_kernel(args, model, train)
        X = np.asarray(queries.items, dtype=object)
        cut = truncation_note(kern, list(train.items) + ([] if queries is train else list(queries.items)))
        if cut:
            _note(cut)
    source = args.images if images else args.texts
    title = f"skbilrp report: {source} ({spec.name if images else text_model_name(model)} {kern.kernel} kernel)"
    names = names_fit = None
    if images:  # file names beside the indices: texts show themselves
        names = [os.path.relpath(p, args.queries or args.images) for p in queries.items]
        names_fit = [os.path.relpath(p, args.images) for p in train.items]
    return _write(args, kern, X, queries.labels, train.labels, title, start, names, names_fit)


def _test_size(value: Optional[str], n: int) -> Any:
    """``--test-size`` as sklearn's ``test_size``: a fraction in (0, 1) or a count, leaving both sides non-empty."""
    if n < 2:
        raise CommandError(f"The data hold {n} sample; a report without --queries needs at least 2 (training samples "
                           "and queries held out from them): add data, or give the queries with --queries.")
    value = "0.25" if value is None else value
    try:
        size: Any = int(value) if re.fullmatch(r"\d+", value) else float(value)
    except ValueError:
        size = math.nan
    if isinstance(size, float) and not math.isfinite(size):  # "abc", "nan", "inf", "1e999"
        raise CommandError(f"--test-size must be a fraction such as 0.25 or a number of samples, got {value!r}.")
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
    except ValueError:  # a class of one sample, or fewer queries than classes: a plain split
        train, test = train_test_split(idx, test_size=test_size, random_state=0)
        _note("the labels allow no stratified split (a class with one sample, or fewer queries than classes); "
              "the queries are a plain random split (give --queries to choose them)")

    def subset(rows: np.ndarray) -> Dataset:
        rows = np.sort(rows)
        return Dataset([data.items[i] for i in rows], None if data.labels is None else data.labels[rows], data.kind)

    return subset(train), subset(test)


def _read_pixels(data: Any, spec: Any, size: int) -> np.ndarray:
    from .datasets import load_images

    return load_images(data.items, size, grayscale=spec.grayscale, progress=True)


def _fit_image_kernel(args: argparse.Namespace, spec: Any, model: Any, rules: Any, size: int, patch: int,
                      train: Any) -> Any:
    from .kernel import DeepKernel

    X = _read_pixels(train, spec, size)
    # batches of 16: a progress bar moves on small data too, memory stays low at 224 px
    kern = DeepKernel(model, kernel=args.kernel or "cosine", input_shape=X.shape[1:], rules=args.rules or rules,
                      pooling=patch, batch_size=16, verbose=True)
    with _stage(f"features of {len(X)} training images ({spec.name})"):
        return kern.fit(X)


def _fit_text_kernel(args: argparse.Namespace, model: Optional[str], train: Any) -> Any:
    TextKernel = text_kernel_class()
    kern = TextKernel(model, kernel=args.kernel or "cosine", rules=args.rules or TEXT_RULES,
                      attention=args.attention or "cp", batch_size=16, verbose=True)
    with _stage(f"loading {text_model_name(model)}; embeddings of {len(train)} training texts"):
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
