"""The shipped sentence pairs: well-formed, varied, and similar under the real MiniLM."""

from __future__ import annotations

import pytest

from skbilrp.data import PAIR_KINDS, load_sentence_pairs


def test_every_row_has_a_known_kind_and_two_distinct_non_empty_sentences():
    rows = load_sentence_pairs(return_kinds=True)
    assert len(rows) >= 150
    for a, b, kind in rows:
        assert kind in PAIR_KINDS
        assert a.strip() == a and b.strip() == b and a and b and a != b
        assert a.isascii() and b.isascii()
    assert len({(a, b) for a, b, _ in rows}) == len(rows)
    for kind in PAIR_KINDS:
        assert len(load_sentence_pairs(kind)) >= 40


def test_unknown_kind_is_refused_by_name():
    with pytest.raises(ValueError, match="near_miss"):
        load_sentence_pairs("paraphrases")


@pytest.mark.slow
def test_minilm_finds_every_pair_similar():
    # the flipping score is normalised by the unperturbed similarity, which must be positive
    pytest.importorskip("sentence_transformers")
    from sentence_transformers import SentenceTransformer

    from skbilrp.models import minilm_path

    model = SentenceTransformer(str(minilm_path()), device="cpu")
    pairs = load_sentence_pairs()
    emb_a = model.encode([a for a, _ in pairs], convert_to_tensor=True)
    emb_b = model.encode([b for _, b in pairs], convert_to_tensor=True)
    assert bool(((emb_a * emb_b).sum(1) > 0).all())


def _mpnet_parts_or_skip():
    from skbilrp.models.sentence import MPNET_INSTALL, _mpnet_parts

    try:
        return _mpnet_parts()
    except ImportError:
        pytest.skip(f"all-mpnet-base-v2 is not installed (the benchmark's `make setup-bench`: {MPNET_INSTALL})")


def test_mpnet_without_its_wheels_names_the_install_command(monkeypatch):
    import importlib.metadata as metadata

    from skbilrp.models import MPNET_INSTALL, mpnet_path

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", missing)
    with pytest.raises(ImportError, match="part 1 is missing") as err:
        mpnet_path(cache_dir="/nonexistent-never-created")
    assert MPNET_INSTALL in str(err.value)


@pytest.mark.slow
def test_mpnet_unpacks_once_and_reproduces_sentence_transformers(tmp_path):
    pytest.importorskip("sentence_transformers")
    _mpnet_parts_or_skip()
    import os

    import torch
    from sentence_transformers import SentenceTransformer

    from skbilrp.models import mpnet, mpnet_path

    path = mpnet_path(cache_dir=tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["all-mpnet-base-v2"]  # no temporary folder left behind
    stamp = os.stat(os.path.join(path, "modules.json")).st_mtime_ns
    assert mpnet_path(cache_dir=tmp_path) == path
    assert os.stat(os.path.join(path, "modules.json")).st_mtime_ns == stamp  # reused, not unpacked again
    encoder, tokenizer = mpnet(cache_dir=tmp_path)
    texts = ["The museum is open on Sundays.", "The museum is closed on Sundays."]
    expected = SentenceTransformer(path, device="cpu").encode(texts, convert_to_tensor=True)
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    x, mask = encoder.embed(batch["input_ids"], batch["attention_mask"])
    with torch.no_grad():
        got = encoder(x, attention_mask=mask)
    torch.testing.assert_close(got, expected, rtol=0, atol=64 * torch.finfo(torch.float32).eps)


def _fake_parts(folder, n=5):
    """A small SentenceTransformer-shaped zip split in ``n`` pieces, as the wheels ship it."""
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("all-mpnet-base-v2/modules.json", "[]")
        zf.writestr("all-mpnet-base-v2/config.json", "{}" + " " * 4000)
    data = buf.getvalue()
    step = -(-len(data) // n)
    parts = []
    for i in range(n):
        part = folder / f"all-mpnet-base-v2.zip.00{i + 1}"
        part.write_bytes(data[i * step:(i + 1) * step])
        parts.append(part)
    return parts


def test_mpnet_path_unpacks_atomically_and_reuses_the_folder(tmp_path, monkeypatch):
    # the wheels' layout stood in by a small split archive: runs without the 420 MB model
    import os
    import zipfile

    from skbilrp.models import sentence

    pieces = tmp_path / "pieces"
    pieces.mkdir()
    monkeypatch.setattr(sentence, "_mpnet_parts", lambda: _fake_parts(pieces))
    cache = tmp_path / "cache"

    real_extract = zipfile.ZipFile.extractall

    def interrupted(self, path=None, *args, **kwargs):
        real_extract(self, path, *args, **kwargs)  # everything is written, then the run dies
        raise KeyboardInterrupt

    monkeypatch.setattr(zipfile.ZipFile, "extractall", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sentence.mpnet_path(cache_dir=cache)
    assert os.listdir(cache) == []  # neither a half folder nor the temporary one

    monkeypatch.setattr(zipfile.ZipFile, "extractall", real_extract)
    monkeypatch.setenv("SKBILRP_CACHE", str(cache))
    path = sentence.mpnet_path()
    assert path == str(cache / "all-mpnet-base-v2")
    assert os.listdir(cache) == ["all-mpnet-base-v2"]
    assert sorted(os.listdir(path)) == ["config.json", "modules.json"]

    def no_parts():
        raise AssertionError("the unpacked folder should have been reused")

    monkeypatch.setattr(sentence, "_mpnet_parts", no_parts)
    assert sentence.mpnet_path(cache_dir=cache) == path
