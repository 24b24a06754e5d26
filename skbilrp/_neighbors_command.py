"""``skbilrp neighbors``: a query's nearest items in the user's images or texts, each
similarity explained on pairs of patches or words, in one figure.

As in ``report``, every argument and input is checked before any work (the query, the
folder or table, the model, ``-k``); the network of a model of the user's own is built
and its weights matched as the last check. Then the kernel is fitted on the items, the
query's ``k`` nearest (by the kernel-induced distance, :func:`skbilrp.audits.explain_neighbors`)
are explained, one line per hit is printed and the figure is written.
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Optional

import numpy as np

from . import cli  # by attribute: tests patch the helpers that start work
from ._model_loading import (build_image_model, image_model_and_sides, text_kernel_class, text_model, text_model_name,
                             truncation_note)
from ._report_command import _note, _stage
from .cli import CommandError
from .rules import TEXT_RULES

__all__ = ["run_neighbors"]


def run_neighbors(args: argparse.Namespace) -> int:
    """Run ``skbilrp neighbors``.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed arguments of the ``neighbors`` subcommand.

    Returns
    -------
    int
        0; user errors raise :class:`skbilrp.cli.CommandError` (or ValueError,
        FileNotFoundError, ...), which :func:`skbilrp.cli.main` turns into one line and exit 2.
    """
    from .datasets import check_image_files, find_images, read_texts

    cli._check_output(args)
    if (args.images is None) == (args.texts is None):
        raise CommandError("give the items to search with --images DIR or with --texts FILE (one of them).")
    images = args.images is not None
    wrong = (("--text-column", "text_column"), ("--label-column", "label_column"), ("--attention", "attention"),
             ("--kind", "kind")) if images else (("--size", "size"), ("--patch", "patch"), ("--weights", "weights"))
    for flag, name in wrong:
        if getattr(args, name) is not None:
            raise CommandError(f"{flag} applies to --{'texts' if images else 'images'}, not to "
                               f"--{'images' if images else 'texts'}; drop it.")
    if images:
        spec, size, patch = image_model_and_sides(args)
        notes = check_image_files([args.query])
        data = find_images(args.images, "--images")
        same = [p for p in data.items if os.path.realpath(p) == os.path.realpath(args.query)]
    else:
        if not args.query.strip():
            raise CommandError("the query text is empty; give the text whose neighbours to find.")
        data = read_texts(args.texts, args.text_column, args.label_column, "--texts")
        model = text_model(args.model)
        notes, same = [], [t for t in data.items if t == args.query.strip()]
    if same:  # the query itself would be its own nearest item
        keep = [k for k, item in enumerate(data.items) if item not in same]
        data.items, data.labels = [data.items[k] for k in keep], None if data.labels is None else data.labels[keep]
        data.notes.append(f"the query is one of the items ({'its file' if images else 'the same text'}); it is "
                          "left out of the search")
    if not len(data):
        raise CommandError(f"{'--images' if images else '--texts'} holds no item besides the query itself; add "
                           "items to search.")
    if not 1 <= args.k <= len(data):
        raise CommandError(f"-k {args.k} asks for more neighbours than the {len(data)} items searched; give -k "
                           f"{len(data)} or less, or more items.")
    cli._require_plotting()
    if images:
        network, rules = build_image_model(spec, size, patch)  # the last check (memory; a model of your own)
    for note in notes + data.notes:
        _note(note)
    if images:
        kern, query = _image_kernel(args, spec, network, rules, size, patch, data)
        what = f"{len(data)} images under {args.images} ({spec.name}, {kern.kernel} kernel)"
    else:
        kern = _text_kernel(args, model, data)
        query = [args.query.strip()]
        cut = truncation_note(kern, query + list(data.items))
        if cut:
            _note(cut)
        what = f"{len(data)} texts of {args.texts} ({text_model_name(model)}, {kern.kernel} kernel)"
    from .audits import explain_neighbors

    with _stage(f"BiLRP of the {args.k} nearest"):
        found = explain_neighbors(kern, query, n_neighbors=args.k)
    hits = [_hit(args, data, found, rank, images) for rank in range(args.k)]
    print(f"{args.k} nearest of {args.query if images else repr(query[0])} among {what}:")
    for rank, hit in enumerate(hits, 1):
        print(f"  {rank}. {hit['similarity']:.4f}  {hit['name']}{hit['label']}  strongest {hit['strongest']}  "
              f"(conservation error {hit['error']:.2g})")
    fig = _figure(args, hits, query if images else None)
    cli._save(fig, args.output)
    return 0


def _image_kernel(args: argparse.Namespace, spec: Any, model: Any, rules: Any, size: int, patch: int,
                  data: Any) -> tuple[Any, np.ndarray]:
    from .datasets import load_images
    from .kernel import DeepKernel

    X = load_images(data.items, size, grayscale=spec.grayscale, progress=True)
    query = load_images([args.query], size, grayscale=spec.grayscale)
    kern = DeepKernel(model, kernel=args.kernel or "cosine", input_shape=X.shape[1:], rules=args.rules or rules,
                      pooling=patch, batch_size=16, verbose=True)
    with _stage(f"features of {len(X)} images ({spec.name})"):
        kern.fit(X)
    return kern, query


def _text_kernel(args: argparse.Namespace, model: Any, data: Any) -> Any:
    TextKernel = text_kernel_class()
    kern = TextKernel(model, kernel=args.kernel or "cosine", rules=args.rules or TEXT_RULES,
                      attention=args.attention or "cp", batch_size=16, verbose=True)
    with _stage(f"loading {text_model_name(model)}; embeddings of {len(data)} texts"):
        return kern.fit(data.items)


def _hit(args: argparse.Namespace, data: Any, found: Any, rank: int, images: bool) -> dict:
    """What is printed and drawn of the ``rank``-th neighbour."""
    j = int(found.indices[0, rank])
    expl = found.pair(0, rank)
    if images:
        name = os.path.relpath(data.items[j], args.images)
        grid = expl.pooling_a.grid_shape
        g, h, r = expl.top_interactions(1)[0]
        strongest = f"{cli._patch_name(g, grid)} with {cli._patch_name(h, grid)} {r:+.3g}"
    else:
        expl = expl.words()  # words, not word pieces: what a reader compares
        text = data.items[j]
        name = repr(text if len(text) <= 70 else text[:67] + "...")
        a, b, r = expl.top_token_pairs(1)[0]
        strongest = f"{a!r} with {b!r} {r:+.3g}"
    label = "" if data.labels is None else f" [{data.labels[j]}]"
    return {"index": j, "item": data.items[j], "name": name, "label": label, "explanation": expl,
            "similarity": float(expl.similarity), "error": float(expl.conservation_error), "strongest": strongest}


def _figure(args: argparse.Namespace, hits: list, query: Optional[np.ndarray]) -> Any:
    """One row per hit: the query and the hit with their strongest pairs linked (images),
    or the word pairs as arcs or a matrix (texts)."""
    import matplotlib.pyplot as plt

    from .datasets import load_images
    from .plot import plot_pair, plot_tokens

    k = len(hits)
    if query is not None:
        fig, axes = plt.subplots(k, 1, figsize=(9, 4.2 * k), squeeze=False, layout="constrained")
        size = query.shape[-1]
        for ax, hit in zip(axes[:, 0], hits):
            image = load_images([hit["item"]], size, grayscale=query.shape[1] == 1)[0]
            plot_pair(hit["explanation"], query[0], image, n_links=args.links, ax=ax, title=_title(hit))
        fig.suptitle(f"query {os.path.basename(args.query)} (left) and its {k} nearest images", fontsize=13)
        return fig
    kind = args.kind or "arcs"
    longest = max(max(len(h["explanation"].tokens_a), len(h["explanation"].tokens_b)) for h in hits)
    if kind == "arcs":
        row = (max(8.0, 0.7 * longest), 3.4)
    else:  # a colour bar beside each matrix, and the title above it: wider
        row = (max(10.0, 0.45 * longest + 3), max(4.0, 0.4 * longest))
    fig, axes = plt.subplots(k, 1, figsize=(row[0], row[1] * k), squeeze=False, layout="constrained")
    for ax, hit in zip(axes[:, 0], hits):
        e = hit["explanation"]
        plot_tokens(e, e.tokens_a, e.tokens_b, kind=kind, n_links=args.links, ax=ax, title=_title(hit))
    where = "top row" if kind == "arcs" else "rows"
    fig.suptitle(f"the query's words ({where}) and its {k} nearest texts", fontsize=13)
    return fig


def _title(hit: dict) -> str:
    return f"{hit['name']}{hit['label']}: similarity {hit['similarity']:.4f} (conservation error {hit['error']:.2g})"
