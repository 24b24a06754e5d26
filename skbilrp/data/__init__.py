"""Small text data sets shipped with skbilrp (nothing is downloaded).

- ``sentences.txt``: a short retrieval corpus, one sentence per line.
- ``sentence_pairs.txt``: sentence pairs written for the faithfulness benchmark,
  tab-separated ``kind``, ``sentence_a``, ``sentence_b`` with a header line. Kinds:
  ``paraphrase`` (same meaning, other words), ``shared_entity`` (different statements
  about the same named entity or key noun) and ``near_miss`` (one word flips the
  meaning: negation, antonym, swapped roles, another number).
"""

from __future__ import annotations

from importlib.resources import files
from typing import Optional

__all__ = ["PAIR_KINDS", "load_sentence_pairs"]

#: The kinds of pairs in ``sentence_pairs.txt``.
PAIR_KINDS = ("paraphrase", "shared_entity", "near_miss")


def load_sentence_pairs(kind: Optional[str] = None, return_kinds: bool = False) -> list[tuple[str, ...]]:
    """The shipped sentence pairs.

    Parameters
    ----------
    kind : {"paraphrase", "shared_entity", "near_miss"}, optional
        Only pairs of this kind (default: all, in file order).
    return_kinds : bool, default=False
        Return ``(sentence_a, sentence_b, kind)`` triples instead of pairs.

    Returns
    -------
    list of tuple
        ``(sentence_a, sentence_b)`` per pair, or triples with ``return_kinds``.

    Raises
    ------
    ValueError
        For an unknown ``kind``.
    """
    if kind is not None and kind not in PAIR_KINDS:
        raise ValueError(f"kind must be one of {PAIR_KINDS} or None, got {kind!r}.")
    lines = files(__name__).joinpath("sentence_pairs.txt").read_text(encoding="utf-8").splitlines()
    rows = [line.split("\t") for line in lines[1:] if line.strip()]
    return [(a, b, k) if return_kinds else (a, b) for k, a, b in rows if kind is None or k == kind]
