"""Cost of a patch × token explanation: BiLRP against Banzhaf-interaction sampling (FIxLIP-style).

FIxLIP (Baniecki et al., NeurIPS 2025) explains an image-text similarity by the
Banzhaf interactions of (patch, token) players, estimated from 2^13 to 2^19 masked
forward passes per pair. This script times both on the same image-prompt pairs of the
shipped zero-shot model (``zero_shot_imagenet("mobilenet_v2")`` × all-MiniLM-L6-v2,
cosine, the README's rules ``{**mobilenet_v2_rules(m), rule_targets(): Zero(bias="share")}``),
224-px photos in 28-px patches (8 × 8 players, the grid of the cross-modal pointing game):

* **BiLRP**: ``CrossModalKernel.explain_pairs`` of one pair, materialised as its
  ``(patches, tokens)`` matrix; *cold* = the first pair on a freshly fitted kernel
  (tracing both towers included), *warm* = every pair afterwards, one at a time.
* **Banzhaf, MSR** (:func:`banzhaf_msr`): masks ``z`` with every player kept with
  probability 1/2; a masked patch takes the per-channel mean of its image (the
  project's "mean" perturbation); a masked prompt token is replaced by the tokenizer's
  ``[MASK]`` with the attention mask unchanged (the project's token-flipping "mask":
  length and positions stay, so the text stays an input of the shape the model was
  trained on); ``[CLS]`` and ``[SEP]`` are no players (always kept). ``f(z)`` is the
  cosine of the masked pair; masks run in batches through both towers. It is timed at
  scaled-down budgets and extrapolated linearly (the cost is one forward of each tower
  per mask) to FIxLIP's 2^13, 2^16 and 2^19.

The table gives seconds per pair, measured or extrapolated (marked), and the ratio to
warm BiLRP. For information only, the Pearson correlation between the Banzhaf estimate
and BiLRP's matrix over the same (patch, ordinary token) cells is printed: they are
different quantities (Banzhaf interactions are not a decomposition of the similarity),
so it says how alike the two look, not which is right. Peak RSS is printed at the end.
Before timing, the estimator is checked on a function with known interactions.

Run from the repository root::

    .venv/bin/python benchmarks/bench_cross_modal_cost.py            # 4 pairs, 2^8 and 2^10 masks
    .venv/bin/python benchmarks/bench_cross_modal_cost.py --quick    # 1 pair, 2^6 and 2^7 masks
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _faith_cross_pointing import NAMES, PATCH, SIDE, TEMPLATE, model_and_rules  # noqa: E402

#: photos the zero-shot model ranks first for their prompt (see _faith_cross_pointing)
PHOTOS = ("coffee", "rocket", "motorcycle", "horse")
FIXLIP_BUDGETS = (2 ** 13, 2 ** 16, 2 ** 19)


def banzhaf_msr(masks: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Banzhaf interactions of all player pairs from random masks (maximum sample reuse).

    With every player kept independently with probability 1/2 (``z`` uniform on
    ``{0, 1}^n``), the Banzhaf interaction of players ``i != j`` is

        I_ij = E_{S ⊆ N \\ {i, j}} [f(S ∪ {i, j}) - f(S ∪ {i}) - f(S ∪ {j}) + f(S)],

    the expectation over the uniform coalitions ``S`` of the others. Conditioning on
    ``(z_i, z_j)``, each of the four cases has probability 1/4, and
    ``(2 z_i - 1)(2 z_j - 1)`` is +1 for ``(1, 1)`` and ``(0, 0)``, -1 for ``(1, 0)`` and
    ``(0, 1)``, independently of the other players, so

        E[f(z) (2 z_i - 1)(2 z_j - 1)] = (1/4) (f11 - f10 - f01 + f00) = I_ij / 4,

    hence ``I_ij ≈ 4 · mean_k f(z_k) (2 z_ki - 1)(2 z_kj - 1)``: every sample is reused
    for every pair (MSR). ``f`` is centred by its sample mean first, a control variate
    that leaves the expectation unchanged (``E[(2 z_i - 1)(2 z_j - 1)] = 0`` for
    ``i != j``) and lowers the variance when ``f`` is far from 0.

    Parameters
    ----------
    masks : ndarray of shape (m, n), {0, 1}
    values : ndarray of shape (m,)
        ``f`` of every mask.

    Returns
    -------
    ndarray of shape (n, n)
        Estimates for ``i != j`` (the diagonal means nothing).
    """
    signs = 2.0 * np.asarray(masks, dtype=np.float64) - 1.0
    centred = np.asarray(values, dtype=np.float64) - np.mean(values)
    return 4.0 * (signs * centred[:, None]).T @ signs / len(centred)


def check_estimator(seed: int = 0) -> float:
    """The MSR estimate of ``f(z) = c + sum_{i<j} a_ij z_i z_j + sum_i b_i z_i`` (Banzhaf
    interactions exactly ``a_ij``) from 2^16 masks; fails loudly if it is off."""
    rng = np.random.default_rng(seed)
    n, m = 8, 2 ** 16
    a = np.triu(rng.normal(size=(n, n)), 1)
    b, z = rng.normal(size=n), rng.integers(0, 2, (m, n)).astype(np.float64)
    values = 3.0 + np.einsum("ki,ij,kj->k", z, a, z) + z @ b
    est = np.triu(banzhaf_msr(z, values), 1)
    err = np.abs(est - a).max()
    # each estimate: a mean of m terms of variance <= E[f_centred²]; six standard errors
    bound = 6 * 4 * np.std(values) / np.sqrt(m)
    if err > bound:
        raise AssertionError(f"MSR estimator off by {err:.3g} > {bound:.3g} on a function with known interactions.")
    return float(err)


def photos() -> torch.Tensor:
    from _faith_images import sample_images

    from skbilrp.evaluation.pointing import _tile

    samples = sample_images()
    return torch.stack([_tile(torch.as_tensor(samples[n].transpose(2, 0, 1)), SIDE, 1.0, False) for n in PHOTOS])


def bilrp_pair(kern, image: torch.Tensor, prompt: str) -> tuple[np.ndarray, float]:
    """BiLRP's (patches, tokens) matrix of one pair and the seconds it took."""
    start = time.perf_counter()
    rel = kern.explain_pairs(image[None], [prompt], pairs=[(0, 0)]).pair(0).relevance
    return np.asarray(rel, dtype=np.float64), time.perf_counter() - start


class MaskedPair:
    """``f(z)``: the cosine of an image and a prompt with the players of ``z`` kept."""

    def __init__(self, kern, image: torch.Tensor, prompt: str) -> None:
        from skbilrp.evaluation import tokenize_texts
        from skbilrp.pooling import make_pooling

        self.image_model, self.encoder = kern.image_model_, kern.text_model_
        self.image = image
        self.baseline = image.mean((1, 2), keepdim=True).expand_as(image)  # per-channel mean
        self.labels = torch.as_tensor(make_pooling(PATCH, tuple(image.shape), 0).labels)
        self.n_patches = int(self.labels.max()) + 1
        tokens = tokenize_texts(self.encoder, [prompt])
        self.ids = torch.as_tensor(tokens.ids[0])
        self.players = np.flatnonzero(~tokens.special[0])  # ordinary tokens: players
        self.mask_id = self.encoder.tokenizer.mask_token_id

    @property
    def n_players(self) -> int:
        return self.n_patches + len(self.players)

    @torch.no_grad()
    def __call__(self, z: np.ndarray) -> np.ndarray:
        z = torch.as_tensor(z, dtype=torch.bool)
        keep_pixels = z[:, : self.n_patches][:, self.labels][:, None]  # (B, 1, H, W)
        images = torch.where(keep_pixels, self.image, self.baseline)
        ids = self.ids.repeat(len(z), 1)
        players = torch.as_tensor(self.players)
        ids[:, players] = torch.where(z[:, self.n_patches:], ids[:, players], self.mask_id)
        x, mask = self.encoder.embed(ids, torch.ones_like(ids))
        return F.cosine_similarity(self.image_model(images), self.encoder(x, mask), dim=1).double().numpy()


def banzhaf_pair(f: MaskedPair, budget: int, batch: int, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Banzhaf (patch, ordinary token) interactions from ``budget`` masks, and the seconds."""
    start = time.perf_counter()
    z = rng.integers(0, 2, (budget, f.n_players)).astype(np.int8)
    values = np.concatenate([f(z[k:k + batch]) for k in range(0, budget, batch)])
    interactions = banzhaf_msr(z, values)[: f.n_patches, f.n_patches:]
    return interactions, time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 pair, budgets 2^6 and 2^7")
    parser.add_argument("--pairs", type=int, default=len(PHOTOS), help="image-prompt pairs (at most 4)")
    parser.add_argument("--budgets", type=int, nargs="+", default=[2 ** 8, 2 ** 10], help="masks per pair, measured")
    parser.add_argument("--batch", type=int, default=32, help="masks per batched forward of both towers")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args(argv)
    if args.quick:
        args.pairs, args.budgets = 1, [2 ** 6, 2 ** 7]
    torch.set_num_threads(args.threads)
    from skbilrp import CrossModalKernel

    print(f"MSR estimator check (known interactions, 2^16 masks): max error {check_estimator():.3g}")
    model, rules = model_and_rules()
    images = photos()[: args.pairs]
    prompts = [TEMPLATE.format(NAMES[n]) for n in PHOTOS[: args.pairs]]
    kern = CrossModalKernel(model, rules=rules, pooling=PATCH).fit(prompts)

    cold_rel, cold = bilrp_pair(kern, images[0], prompts[0])
    warm, rels = [], []
    for image, prompt in zip(images, prompts):
        rel, seconds = bilrp_pair(kern, image, prompt)
        warm.append(seconds)
        rels.append(rel)
    np.testing.assert_allclose(rels[0], cold_rel, rtol=1e-5, atol=1e-7 * np.abs(cold_rel).max())
    t_bilrp = float(np.mean(warm))
    print(f"BiLRP: cold {cold:.2f} s (first pair, tracing included); warm per pair "
          + ", ".join(f"{s:.2f}" for s in warm) + f" s (mean {t_bilrp:.2f})")

    rng = np.random.default_rng(0)
    per_mask, corr = {}, {}
    for budget in args.budgets:
        secs, rs = [], []
        for image, prompt, rel in zip(images, prompts, rels):
            f = MaskedPair(kern, image, prompt)
            est, seconds = banzhaf_pair(f, budget, args.batch, rng)
            secs.append(seconds)
            rs.append(np.corrcoef(est.ravel(), rel[:, f.players].ravel())[0, 1])
        per_mask[budget], corr[budget] = np.mean(secs) / budget, rs
        print(f"Banzhaf, {budget} masks: " + ", ".join(f"{s:.1f}" for s in secs) + " s per pair; correlation "
              "with BiLRP " + ", ".join(f"{r:+.2f}" for r in rs))

    largest = max(args.budgets)
    n_tokens = [r.shape[1] for r in rels]
    lines = ["| method | forward passes per pair | seconds per pair | | × BiLRP (warm) |", "|---|---|---|---|---|"]
    # one recording forward per tower, then one linearised pass per group (fewer groups than features)
    tokens = f"{min(n_tokens)}" if min(n_tokens) == max(n_tokens) else f"{min(n_tokens)}–{max(n_tokens)}"
    probes = f"1 + {rels[0].shape[0]} image, 1 + {tokens} text"
    lines.append(f"| BiLRP, cold | {probes} | {cold:.2f} | measured | {cold / t_bilrp:.1f} |")
    lines.append(f"| BiLRP, warm | {probes} | {t_bilrp:.2f} | measured | 1 |")
    for budget in args.budgets:
        s = per_mask[budget] * budget
        lines.append(f"| Banzhaf MSR | {budget} (2^{int(np.log2(budget))}) | {s:.1f} | measured | {s / t_bilrp:.0f} |")
    for budget in FIXLIP_BUDGETS:
        s = per_mask[largest] * budget
        lines.append(f"| Banzhaf MSR | {budget} (2^{int(np.log2(budget))}) | {s:,.0f} | *extrapolated* | "
                     f"{s / t_bilrp:,.0f} |")
    print()
    print("\n".join(lines))
    print()
    print("Correlation (Pearson, patch × ordinary token cells) of the Banzhaf estimate with BiLRP's matrix, mean "
          "over pairs: " + ", ".join(f"{b} masks {np.mean(corr[b]):+.2f}" for b in args.budgets)
          + " (information only: different quantities).")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"Peak RSS {peak:.0f} MiB. {args.pairs} pairs ({', '.join(PHOTOS[: args.pairs])}), {SIDE} px, "
          f"{PATCH}-px patches, batch {args.batch}, torch threads {args.threads}; torch {torch.__version__}, "
          f"Python {platform.python_version()}, {os.cpu_count()} CPUs.")


if __name__ == "__main__":
    main(sys.argv[1:])
