"""Text pairs in the faithfulness benchmark: token flipping of sentence similarities.

:func:`text_section` explains every pair with every method once, scores the same
explanations under both perturbations (``[MASK]`` and deletion) and both modes, and
returns a markdown section with the raw numbers behind it.
"""

from __future__ import annotations

import time
from typing import Any, Optional, Sequence

import numpy as np
import torch

from skbilrp.evaluation import (
    BiLRPTextMethod,
    FaithfulnessResults,
    default_text_methods,
    evaluate_text,
    explain_text_pairs,
    tokenize_texts,
)
from skbilrp.evaluation.text import _encode_ids
from skbilrp.rules import TEXT_RULES

#: the two BiLRP variants every other method is compared with
REFERENCES = ("bilrp_cp", "bilrp_attnlrp")
PERTURBATIONS = ("mask", "delete")
MODES = ("pairwise", "marginal")

#: a few pairs to try the section before the shipped pairs file exists
EXAMPLE_PAIRS = [
    ("A man is playing a guitar.", "A person plays the guitar on stage."),
    ("The cat sat on the mat.", "A cat is sitting on a rug."),
    ("Stocks fell sharply on Monday.", "Share prices dropped steeply at the start of the week."),
    ("A woman is slicing an onion.", "Someone cuts an onion with a knife."),
    ("The children are playing in the park.", "Kids play outside on the grass."),
]


def _encoder(kernel_or_encoder: Any, texts: Sequence[str]) -> tuple[Any, Optional[int], Any]:
    """The SentenceEncoder, truncation length and BiLRP rules of a TextKernel or encoder."""
    from skbilrp import TextKernel

    if isinstance(kernel_or_encoder, TextKernel):
        kern = kernel_or_encoder
        if not hasattr(kern, "model_"):
            kern.fit(list(texts))
        return kern.model_, kern.max_length_, kern.rules
    return kernel_or_encoder, None, TEXT_RULES


def _similar_pairs(encoder: Any, pairs: list, max_length: Optional[int], kernel: str) -> list:
    """Pairs with a positive similarity (the normalised area needs one)."""
    a = tokenize_texts(encoder, [p for p, _ in pairs], max_length)
    b = tokenize_texts(encoder, [q for _, q in pairs], max_length)
    fa, fb = _encode_ids(encoder, a.ids, 64).double(), _encode_ids(encoder, b.ids, 64).double()
    sim = (fa * fb).sum(1)
    if kernel == "cosine":
        sim = sim / (fa.norm(dim=1) * fb.norm(dim=1))
    return [p for p, s in zip(pairs, sim) if s > 0]


def _cp_vs_attnlrp(res: FaithfulnessResults) -> dict:
    return {mode: {"cp_wins": res.wins(mode, "bilrp_cp", "bilrp_attnlrp"),
                   "attnlrp_wins": res.wins(mode, "bilrp_attnlrp", "bilrp_cp"),
                   "p_cp_better": res.sign_test(mode, "bilrp_cp", "bilrp_attnlrp"),
                   "p_attnlrp_better": res.sign_test(mode, "bilrp_attnlrp", "bilrp_cp")}
            for mode in res.modes}


def _raw(res: FaithfulnessResults) -> dict:
    refs = [r for r in REFERENCES if r in res.methods]
    return {
        "auc": {mode: {m: res.auc[mode][m].tolist() for m in res.methods} for mode in res.modes},
        "mean_sem": {mode: {m: res.mean_auc(mode, m) for m in res.methods} for mode in res.modes},
        "wins": {ref: {mode: {m: res.wins(mode, ref, m) for m in res.methods if m != ref} for mode in res.modes}
                 for ref in refs},
        "sign_test": {ref: {mode: {m: res.sign_test(mode, ref, m) for m in res.methods if m != ref}
                            for mode in res.modes} for ref in refs},
        "cp_vs_attnlrp": _cp_vs_attnlrp(res) if len(refs) == 2 else None,
    }


def text_section(model_name: str, kernel_or_encoder: Any, pairs: list[tuple[str, str]],
                 methods: Optional[dict] = None, steps: int = 10, ij_steps: int = 8,
                 kernel: str = "linear", perturbations: Sequence[str] = PERTURBATIONS) -> tuple[str, dict]:
    """Token-flipping results of every method on text pairs, as a markdown section.

    Parameters
    ----------
    model_name : str
        Heading of the section.
    kernel_or_encoder : TextKernel or SentenceEncoder
        A TextKernel (fitted on the pair texts if it is not fitted; its rules and
        truncation length are used) or the encoder itself.
    pairs : list of (str, str)
        Pairs with a non-positive similarity are left out (and counted).
    methods : dict, optional
        Default :func:`skbilrp.evaluation.default_text_methods` (``ij_steps``); the
        BiLRP methods use the TextKernel's rules.
    steps : int, default=10
        Points of each curve (minus one).
    ij_steps : int, default=8
        Quadrature intervals of integrated Jacobians.
    kernel : {"linear", "cosine"}, default="linear"
    perturbations : sequence of {"mask", "delete"}, default=("mask", "delete")

    Returns
    -------
    markdown : str
    raw : dict
        ``n_pairs``, ``dropped``, ``explain_seconds`` per method, ``curve_seconds``
        per perturbation, and per perturbation the areas, their mean ± s.e., the
        wins and sign-test p-values of both BiLRP variants against every method, and
        ``cp_vs_attnlrp`` (wins and one-sided p-values in both directions).
    """
    torch.set_num_threads(1)
    texts = [t for pair in pairs for t in pair]
    encoder, max_length, rules = _encoder(kernel_or_encoder, texts)
    if methods is None:
        methods = default_text_methods(ij_steps)
        methods.update({name: BiLRPTextMethod(att, rules) for name, att in
                        (("bilrp_cp", "cp"), ("bilrp_attnlrp", "attnlrp"))})
    kept = _similar_pairs(encoder, list(pairs), max_length, kernel)
    explanations, seconds = explain_text_pairs(encoder, kept, methods, kernel, max_length)
    results, curve_seconds = {}, {}
    for pert in perturbations:
        start = time.perf_counter()
        results[pert] = evaluate_text(encoder, kept, explanations, kernel, MODES, steps, pert,
                                      max_length=max_length)
        curve_seconds[pert] = time.perf_counter() - start
    raw = {"n_pairs": len(kept), "dropped": len(pairs) - len(kept), "explain_seconds": seconds,
           "curve_seconds": curve_seconds, "steps": steps, "ij_steps": ij_steps, "kernel": kernel,
           "results": results, **{pert: _raw(res) for pert, res in results.items()}}
    return _markdown(model_name, raw, results, seconds, curve_seconds), raw


def _markdown(model_name: str, raw: dict, results: dict, seconds: dict, curve_seconds: dict) -> str:
    lines = [f"### {model_name}: token flipping ({raw['n_pairs']} pairs"
             + (f", {raw['dropped']} with non-positive similarity left out" if raw["dropped"] else "")
             + f"; {raw['kernel']} kernel, {raw['steps']} steps, integrated Jacobians with {raw['ij_steps']} "
             "intervals)", ""]
    for pert, res in results.items():
        refs = [r for r in REFERENCES if r in res.methods]
        lines += [f"**{pert} perturbation** (AUC: lower is more faithful)", "", res.to_markdown(refs), ""]
        cmp = raw[pert]["cp_vs_attnlrp"]
        if cmp:
            lines.append("CP-LRP vs AttnLRP: " + "; ".join(
                f"{mode}: cp lower on {c['cp_wins']}, attnlrp lower on {c['attnlrp_wins']} "
                f"(p={c['p_cp_better']:.2g} for cp, {c['p_attnlrp_better']:.2g} for attnlrp)"
                for mode, c in cmp.items()))
            lines.append("")
    n = max(raw["n_pairs"], 1)
    lines += ["| method | explain s | per pair ms |", "|---|---|---|"]
    lines += [f"| {m} | {s:.1f} | {1000 * s / n:.0f} |" for m, s in seconds.items()]
    lines += ["", "Curves: " + ", ".join(f"{p} {s:.1f} s" for p, s in curve_seconds.items()) + "."]
    return "\n".join(lines)


def run(model: str, args: Any) -> list:
    """The benchmark's text section for ``model`` ("minilm" or "mpnet"), as one ``ModelRun``."""
    from _faith_images import ModelRun

    from skbilrp.data import load_sentence_pairs
    from skbilrp.models import minilm, mpnet

    start = time.perf_counter()
    pairs = load_sentence_pairs()
    limit = args.text_pairs if model == "minilm" else args.mpnet_pairs
    if limit is not None:
        # an even spread over the kinds (the file lists them in blocks)
        pairs = [pairs[i] for i in np.linspace(0, len(pairs) - 1, min(limit, len(pairs))).astype(int)]
    title, encoder = {"minilm": ("all-MiniLM-L6-v2", lambda: minilm()[0]),
                      "mpnet": ("all-mpnet-base-v2", lambda: mpnet()[0])}[model]
    kwargs = {} if args.ij_steps is None else {"ij_steps": args.ij_steps}
    _, raw = text_section(title, encoder(), pairs, **kwargs)
    detail = (f"{raw['n_pairs']} sentence pairs of `skbilrp/data/sentence_pairs.txt`"
              + (f" ({raw['dropped']} with non-positive similarity left out)" if raw["dropped"] else "")
              + f"; the embedding's dot product; {raw['steps']} curve steps; integrated Jacobians with "
              f"{raw['ij_steps']} intervals. Curves: "
              + ", ".join(f"{p} {s:.0f} s" for p, s in raw["curve_seconds"].items()) + ".")
    return [ModelRun(f"{title} (sentence-transformers weights, token pairs)", detail, raw["results"],
                     raw["explain_seconds"], time.perf_counter() - start)]


def bias_modes(n_pairs: Optional[int] = None) -> str:
    """Token flipping (``[MASK]``) of all-MiniLM-L6-v2 on the shipped pairs under the bias
    modes ``"zero-mass"`` (TextKernel's default) and ``"zero-share"``: per mode the mean
    area, and on how many pairs each mode has the lower (better) area, with the one-sided
    sign test. Not a section of the results page: ``python benchmarks/_faith_text.py bias``."""
    from skbilrp.data import load_sentence_pairs
    from skbilrp.models import minilm

    methods = {f"bilrp_{r}": BiLRPTextMethod("cp", r) for r in ("zero-mass", "zero-share")}
    pairs = load_sentence_pairs()[:n_pairs]
    _, raw = text_section("all-MiniLM-L6-v2", minilm()[0], pairs, methods=methods, perturbations=("mask",))
    res, lines = raw["results"]["mask"], [f"all-MiniLM-L6-v2, {raw['n_pairs']} pairs, [MASK], CP-LRP"]
    a, b = methods
    for mode in res.modes:
        areas = ", ".join(f"{m} {mean:.4f} ± {sem:.4f}" for m in res.methods for mean, sem in [res.mean_auc(mode, m)])
        lines.append(f"  {mode}: area {areas}")
        for x, y in ((a, b), (b, a)):
            lines.append(f"    {x} lower on {res.wins(mode, x, y)}/{raw['n_pairs']} pairs "
                         f"(sign test p = {res.sign_test(mode, x, y):.3g})")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    from skbilrp.models import minilm

    torch.set_num_threads(1)
    if sys.argv[1:] == ["bias"]:
        print(bias_modes())
    else:
        text, _ = text_section("all-MiniLM-L6-v2", minilm()[0], EXAMPLE_PAIRS)
        print(text)
