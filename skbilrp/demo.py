"""The demo job behind ``skbilrp demo``: a deep kernel on digits, in scikit-learn, explained.

Steps: the bias-free digits CNN shipped with skbilrp gives a cosine kernel
(:class:`~skbilrp.kernel.DeepKernel`); an SVM (``kernel="precomputed"``) and a k-NN
classifier (``metric="precomputed"`` on the kernel-induced distance) are fitted on
the training split and scored on the held-out split; then BiLRP explains why a few
test digits are closest to their nearest training neighbour, and what drove one SVM
decision. The model has no biases and the rules conserve, so every explanation sums
to the similarity it explains; the printed conservation errors show it.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import numpy as np

from ._checks import check_output_path

__all__ = ["run_demo", "digits_pipelines"]


def _log(verbose: bool, message: str) -> None:
    if verbose:
        print(message, flush=True)


def _pipelines(model: Any, rules: Any, n_neighbors: int, verbose: bool) -> tuple[Any, Any]:
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.svm import SVC

    from .kernel import DeepKernel

    def kernel(output: str) -> DeepKernel:
        # pixel pooling (None): an 8×8 digit has 64 groups, few enough to link pixels
        return DeepKernel(model, kernel="cosine", output=output, input_shape=(1, 8, 8), rules=rules,
                          pooling=None, verbose=verbose)

    svm = make_pipeline(kernel("kernel"), SVC(kernel="precomputed", C=10.0))
    knn = make_pipeline(kernel("distance"), KNeighborsClassifier(n_neighbors=n_neighbors, metric="precomputed"))
    return svm, knn


def digits_pipelines(n_neighbors: int = 3, verbose: bool = True) -> tuple[Any, Any]:
    """The demo's two unfitted pipelines on the shipped digits CNN's cosine kernel.

    Parameters
    ----------
    n_neighbors : int, default=3
        ``k`` of the k-NN classifier.
    verbose : bool, default=True
        Progress bars of the kernels.

    Returns
    -------
    svm : Pipeline
        ``DeepKernel(output="kernel")`` then ``SVC(kernel="precomputed", C=10)``.
    knn : Pipeline
        ``DeepKernel(output="distance")`` then ``KNeighborsClassifier(metric="precomputed")``.
    """
    from .models import digits_cnn, digits_cnn_rules

    model = digits_cnn(pretrained=True)
    return _pipelines(model, digits_cnn_rules(model), n_neighbors, verbose)


def run_demo(output_dir: str = "skbilrp-demo", n_train: Optional[int] = None, n_pairs: int = 3,
             n_neighbors: int = 3, verbose: bool = True, random_state: int = 0) -> dict[str, Any]:
    """Fit and explain deep-kernel classifiers on scikit-learn's digits; write figures.

    Parameters
    ----------
    output_dir : str, default="skbilrp-demo"
        Folder for the PNG figures (created if needed).
    n_train : int, optional
        Use a stratified subset of this many training images (default: the whole
        training split of :data:`skbilrp.models.digits.DIGITS_SPLIT`, 1347 images).
    n_pairs : int, default=3
        Test digits whose nearest training neighbour is explained.
    n_neighbors : int, default=3
        ``k`` of the k-NN classifier.
    verbose : bool, default=True
        Print results and show progress bars.
    random_state : int, default=0
        Seed of the training subset.

    Returns
    -------
    dict
        ``svm_accuracy``, ``knn_accuracy`` (held-out), ``n_train``, ``n_test``,
        ``neighbor_pairs`` (list of (test index, training index)),
        ``neighbor_explanations`` (PairExplanations of those kernel entries),
        ``decision`` (:class:`~skbilrp.audits.DecisionExplanation` of the first query's
        one-vs-one SVM decision between its top two classes), ``conservation_errors`` (ndarray, every explained
        entry), ``figures`` (dict name → path) and ``output_dir``.

    Raises
    ------
    ValueError, PermissionError
        Before any work, if ``output_dir`` is a file or cannot be written (see
        :func:`skbilrp._checks.check_output_path`), or ``n_train`` is out of range.
    """
    _require_matplotlib()
    check_output_path(output_dir, "folder", "output_dir")  # before the work, not after it
    from sklearn.model_selection import train_test_split

    from .audits import explain_neighbors
    from .models import digits_cnn, digits_cnn_rules, load_digits_images

    X_train, y_train = load_digits_images("train")
    X_test, y_test = load_digits_images("test")
    if n_train is not None:
        if not 10 <= int(n_train) <= len(X_train):
            raise ValueError(f"n_train must lie between 10 and {len(X_train)}, got {n_train}.")
        if int(n_train) < len(X_train):
            X_train, _, y_train, _ = train_test_split(X_train, y_train, train_size=int(n_train),
                                                      stratify=y_train, random_state=random_state)
    model = digits_cnn(pretrained=True)
    rules = digits_cnn_rules(model)
    flat_train, flat_test = X_train.reshape(len(X_train), -1), X_test.reshape(len(X_test), -1)

    _log(verbose, f"digits: {len(X_train)} training and {len(X_test)} held-out images; "
                  "bias-free CNN features (64-d), cosine kernel")
    svm, knn = _pipelines(model, rules, n_neighbors, verbose)
    svm.fit(flat_train, y_train)
    knn.fit(flat_train, y_train)
    # pipeline.score(flat_test, y_test) step by step, keeping K and D for later steps
    K_test = svm[0].transform(flat_test)
    D_test = knn[0].transform(flat_test)
    svm_acc = float(svm[-1].score(K_test, y_test))
    knn_acc = float(knn[-1].score(D_test, y_test))
    _log(verbose, f"SVC(kernel='precomputed') accuracy: {svm_acc:.4f}")
    _log(verbose, f"KNeighborsClassifier(metric='precomputed', n_neighbors={n_neighbors}) accuracy: {knn_acc:.4f}")

    # nearest training neighbour of the first test digit of each of n_pairs classes
    queries = [int(np.flatnonzero(y_test == c)[0]) for c in np.unique(y_test)[:n_pairs]]
    found = explain_neighbors(knn, flat_test[queries], n_neighbors=1)
    pairs = [(q, int(found.indices[k, 0])) for k, q in enumerate(queries)]
    neighbors = found.explanations  # entry k: query k with its nearest neighbour
    errors = [np.asarray(neighbors.conservation_error, dtype=np.float64)]
    for k, (i, j) in enumerate(pairs):
        e = neighbors.pair(k)
        _log(verbose, f"test #{i} (digit {y_test[i]}) and its nearest training image #{j} "
                      f"(digit {y_train[j]}): cosine {e.similarity:.4f}, explanation sums to "
                      f"{e.relevance.sum():.4f}, conservation error {e.conservation_error:.1e}")

    decision = _explain_decision(svm, flat_test[queries[:1]], verbose)
    errors.append(np.ravel(decision.conservation_error))
    errors_all = np.concatenate(errors)
    _log(verbose, f"largest conservation error over {errors_all.size} explained entries: "
                  f"{np.abs(errors_all).max():.1e}")

    os.makedirs(output_dir, exist_ok=True)
    figures = _write_figures(output_dir, svm[0], K_test, y_test, X_test, X_train, y_train,
                             pairs, neighbors, decision, queries[0])
    _log(verbose, f"figures written to {os.path.abspath(output_dir)}:")
    for path in figures.values():
        _log(verbose, f"  {os.path.basename(path)}")
    return {
        "svm_accuracy": svm_acc,
        "knn_accuracy": knn_acc,
        "n_train": len(X_train),
        "n_test": len(X_test),
        "neighbor_pairs": pairs,
        "neighbor_explanations": neighbors,
        "decision": decision,
        "conservation_errors": errors_all,
        "figures": figures,
        "output_dir": output_dir,
    }


def _explain_decision(svm: Any, x: np.ndarray, verbose: bool) -> Any:
    """Explain the SVM's one-vs-one decision between its top two classes for one input.

    A multi-class SVC's ``decision_function`` is a vote, not a kernel expansion; the
    one-vs-one decision between the predicted class and the runner-up is one, and it
    is the comparison that decided the prediction.
    """
    from .audits import explain_decision

    scores = svm.decision_function(x[:1])[0]  # one-vs-rest shaped votes, for ranking only
    classes = svm[-1].classes_
    predicted, runner_up = classes[np.argsort(-scores, kind="stable")[:2]]
    decision = explain_decision(svm, x[:1], classes=(runner_up, predicted))
    _log(verbose, f"SVM decision {predicted} vs {runner_up} (positive for {predicted}): "
                  f"f(x) = {decision.decision[0]:.4f} = sum over {len(decision.support)} support vectors "
                  f"{decision.contributions[0].sum():.4f} + intercept {decision.intercept:.4f}; "
                  f"pixel relevance sums to {decision.relevance[0].sum():.4f}, conservation error "
                  f"{decision.conservation_error[0]:.1e}")
    for row, share in decision.top_support(0, 3):
        _log(verbose, f"  support vector #{row}: alpha * k(x, x_sv) = {share:+.4f}")
    return decision


def _write_figures(output_dir: str, kernel: Any, K_test: np.ndarray, y_test: np.ndarray,
                   X_test: np.ndarray, X_train: np.ndarray, y_train: np.ndarray, pairs: list,
                   neighbors: Any, decision: Any, decision_query: int) -> dict[str, str]:
    import matplotlib.pyplot as plt

    from .plot import plot_decision, plot_kernel, plot_marginals, plot_pair

    figures: dict[str, str] = {}

    def save(fig: Any, name: str) -> None:
        path = os.path.join(output_dir, name)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        figures[name.rsplit(".", 1)[0]] = path

    n = len(pairs)
    fig, axes = plt.subplots(n, 1, figsize=(7, 3.0 * n + 0.6), squeeze=False, layout="constrained")
    for k, (i, j) in enumerate(pairs):
        e = neighbors.pair(k)
        plot_pair(e, X_test[i], X_train[j], n_links=25, ax=axes[k, 0],
                  title=f"test digit {y_test[i]} and nearest training digit {y_train[j]}: "
                        f"cosine {e.similarity:.3f}")
    fig.suptitle("BiLRP: pixel pairs behind each nearest-neighbour similarity\n"
                 "red raises it, blue lowers it, opacity ∝ |relevance|")
    save(fig, "neighbors_links.png")

    fig, axes = plt.subplots(n, 4, figsize=(9, 2.6 * n), squeeze=False, layout="constrained")
    for k, (i, j) in enumerate(pairs):
        plot_marginals(neighbors.pair(k), X_test[i], X_train[j], ax=axes[k],
                       titles=(f"test #{i}", f"train #{j}"))
    fig.suptitle("First-order relevance (sum over the partner's pixels) of each neighbour pair")
    save(fig, "neighbors_marginals.png")

    # kernel between held-out and training digits, both sorted by class for block structure
    rows, cols = np.argsort(y_test, kind="stable"), np.argsort(y_train, kind="stable")
    K = K_test[np.ix_(rows, cols)]
    row_pos, col_pos = np.argsort(rows), np.argsort(cols)
    fig = plot_kernel(K, marked=[(int(row_pos[i]), int(col_pos[j])) for i, j in pairs],
                      labels=(y_test[rows], y_train[cols]),
                      title="cosine kernel K(held-out, training), sorted by digit;\n"
                            "red boxes: the explained neighbour pairs")
    fig.axes[0].set_xlabel("training digits")
    fig.axes[0].set_ylabel("held-out digits")
    save(fig, "kernel.png")

    fig = plot_decision(decision, X_test[decision_query], kernel.X_fit_, n_support=4, train_labels=y_train)
    save(fig, "svm_decision.png")
    return figures


def _require_matplotlib() -> None:
    from .plot import _pyplot

    _pyplot()
