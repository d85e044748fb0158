"""`qrt convert MODEL_FOLDER` and sentence embeddings without PyTorch (runtime/convert/hf.py,
runtime/text.py, `qrt embed`): tiny random BERTs saved in the transformers and the
sentence-transformers layouts (tests/hf_folders.py) give the embeddings sentence-transformers
gives on the same folder."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("onnx")
st = pytest.importorskip("sentence_transformers")

from tests.test_cli import cli as _cli  # noqa: E402   (main in-process: status, stdout, stderr)
from runtime.convert.hf import read_folder  # noqa: E402
from runtime.text import TextEncoder  # noqa: E402
from tests.hf_folders import TEXTS, sentence_transformers_folder, transformers_folder  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def _reference(folder) -> np.ndarray:
    return st.SentenceTransformer(str(folder), device="cpu").encode(TEXTS, batch_size=3)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {"st mean normalized": sentence_transformers_folder(root / "st_mean"),
            "st cls+max": sentence_transformers_folder(root / "st_cls_max", pooling=("cls", "max"), normalize=False),
            "st mean_sqrt_len": sentence_transformers_folder(root / "st_sqrt", pooling="mean_sqrt_len_tokens"),
            "transformers": transformers_folder(root / "plain")}


@pytest.mark.parametrize("kind", ["st mean normalized", "st cls+max", "st mean_sqrt_len", "transformers"])
def test_fp32_matches_sentence_transformers(folders, kind, tmp_path, capsys):
    out = tmp_path / "m.qrt"
    rc, stdout, err = _cli(capsys, "convert", folders[kind], "-o", out)
    assert rc == 0, err
    assert "wrote" in stdout
    enc = TextEncoder(out)
    got = enc.encode(TEXTS, batch_size=3)
    want = _reference(folders[kind])
    assert got.shape == want.shape and got.dtype == np.float32
    assert _cosines(got, want).min() >= 0.999999
    np.testing.assert_allclose(got, want, atol=2e-5 * np.abs(want).max())
    folder = read_folder(folders[kind])
    assert enc.pooling == list(folder.pooling) and enc.normalize == folder.normalize
    if kind == "st mean normalized":
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)


def test_the_folder_is_read_as_sentence_transformers_would(folders):
    f = read_folder(folders["st mean normalized"])
    assert (f.layout, f.model_type, f.pooling, f.normalize, f.max_seq_length) == \
        ("sentence-transformers", "bert", ("mean",), True, 40)
    assert read_folder(folders["st cls+max"]).pooling == ("cls", "max")
    # a plain transformers folder: sentence-transformers' default (mean, not normalized) and
    # the tokenizer's model_max_length
    f = read_folder(folders["transformers"])
    assert (f.layout, f.pooling, f.normalize, f.max_seq_length) == ("transformers", ("mean",), False, 48)


def test_int8_with_built_in_calibration_text(folders, tmp_path, capsys):
    out = tmp_path / "m8.qrt"
    rc, _, err = _cli(capsys, "convert", folders["st mean normalized"], "-o", out, "--quant", "int8")
    assert rc == 0, err
    assert "built-in English sentences" in err          # the report says where calibration came from
    got = TextEncoder(out).encode(TEXTS)
    assert _cosines(got, _reference(folders["st mean normalized"])).min() >= 0.99
    fp32 = tmp_path / "m.qrt"
    assert _cli(capsys, "convert", folders["st mean normalized"], "-o", fp32, "-q")[0] == 0
    # the matrices shrink 4x; the tokenizer, graph, norms and biases (and the int8 file's
    # report) do not, which on this tiny model leaves about 0.7x
    assert out.stat().st_size < 0.75 * fp32.stat().st_size


def test_calib_text_uses_the_folders_own_tokenizer(folders, tmp_path, capsys):
    text = tmp_path / "calib.txt"
    text.write_text("\n".join([t for t in TEXTS if t] * 4) + "\n")   # one line longer than the model reads
    out = tmp_path / "m8.qrt"
    rc, _, err = _cli(capsys, "convert", folders["transformers"], "-o", out, "--quant", "int8", "--calib-text", text)
    assert rc == 0, err
    assert "calib.txt" in err and "built-in" not in err
    assert "seq-len 48" in err            # capped at the folder's max_seq_length (--seq-len default: 128)


def test_embed_command_writes_one_row_per_line(folders, tmp_path, capsys):
    model = tmp_path / "m.qrt"
    assert _cli(capsys, "convert", folders["st mean normalized"], "-o", model, "-q")[0] == 0
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")       # a blank line in the middle
    out = tmp_path / "e.npy"
    rc, stdout, err = _cli(capsys, "embed", model, "--input", texts, "-o", out, "--batch-size", "2")
    assert rc == 0, err
    assert f"{len(TEXTS)} x 32" in stdout
    assert f"embed: {len(TEXTS)}/{len(TEXTS)} (100%)" in err            # the progress line
    got = np.load(out)
    np.testing.assert_allclose(got, TextEncoder(model).encode(TEXTS, batch_size=5), rtol=0, atol=1e-6)
    assert _cosines(got, _reference(folders["st mean normalized"])).min() >= 0.999999


def test_batching_and_order_do_not_change_the_embeddings(folders, tmp_path, capsys):
    model = tmp_path / "m.qrt"
    assert _cli(capsys, "convert", folders["st cls+max"], "-o", model, "-q")[0] == 0
    enc = TextEncoder(model)
    one = enc.encode(TEXTS, batch_size=1)
    for b in (2, 3, 100):
        np.testing.assert_allclose(enc.encode(TEXTS, batch_size=b), one, rtol=0, atol=1e-5)
    backwards = enc.encode(TEXTS[::-1], batch_size=3)
    np.testing.assert_allclose(backwards[::-1], one, rtol=0, atol=1e-5)
    assert enc.encode([]).shape == (0, 64)


def test_text_encoder_runs_without_torch_or_transformers(folders, tmp_path, capsys):
    model = tmp_path / "m.qrt"
    assert _cli(capsys, "convert", folders["st mean normalized"], "-o", model, "-q")[0] == 0
    want = TextEncoder(model).encode(TEXTS)
    np.save(tmp_path / "want.npy", want)
    code = ("import sys\n"
            "for m in ('torch', 'transformers', 'sentence_transformers', 'onnx'): sys.modules[m] = None\n"
            "import numpy as np\n"
            "from runtime.text import TextEncoder\n"
            f"got = TextEncoder({str(model)!r}).encode({TEXTS!r})\n"
            f"np.testing.assert_allclose(got, np.load({str(tmp_path / 'want.npy')!r}), rtol=0, atol=1e-6)\n"
            "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr


# ------------------------------------------------------------------------------ errors ----

def _write_json(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _copy_folder(src, dst):
    import shutil
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("case, fragments", [
    ("no config", ["has no config.json", "expected a Hugging Face model folder"]),
    ("no weights", ["has no model weights", "model.safetensors"]),
    ("no tokenizer", ["has no tokenizer", "tokenizer.json"]),
    ("dense module", ["Dense module", "qrt does not convert", "Transformer, Pooling and Normalize"]),
    ("lasttoken pooling", ["pooling mode lasttoken", "cls, max, mean, mean_sqrt_len_tokens"]),
    ("no pooling", ["has no Pooling module"]),
    ("bad json", ["is not readable JSON"]),
])
def test_folders_qrt_cannot_convert_are_refused_by_name(folders, tmp_path, capsys, case, fragments):
    d = _copy_folder(folders["st mean normalized"], tmp_path / "model")
    modules = json.loads((d / "modules.json").read_text())
    if case == "no config":
        (d / "config.json").unlink()
    elif case == "no weights":
        (d / "model.safetensors").unlink()
    elif case == "no tokenizer":
        for f in ("tokenizer.json", "tokenizer_config.json"):
            (d / f).unlink()
    elif case == "dense module":
        modules.append({"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"})
        _write_json(d / "modules.json", modules)
    elif case == "lasttoken pooling":
        _write_json(d / "1_Pooling" / "config.json", {"embedding_dimension": 32, "pooling_mode": "lasttoken"})
    elif case == "no pooling":
        _write_json(d / "modules.json", modules[:1])
    elif case == "bad json":
        (d / "1_Pooling" / "config.json").write_text("{not json")
    out = tmp_path / "m.qrt"
    rc, _, err = _cli(capsys, "convert", d, "-o", out, "--quant", "int8")
    assert rc == 1
    assert len(err.strip().splitlines()) == 1, err
    for f in fragments:
        assert f in err, err
    assert not out.exists()


def test_embed_errors(folders, tmp_path, capsys):
    from tests.model_zoo import small_mlp_onnx
    plain = tmp_path / "mlp.qrt"
    onnx_path = tmp_path / "mlp.onnx"
    onnx_path.write_bytes(small_mlp_onnx())
    assert _cli(capsys, "convert", onnx_path, "-o", plain, "-q")[0] == 0
    texts = tmp_path / "t.txt"
    texts.write_text("hello\n")
    rc, _, err = _cli(capsys, "embed", plain, "-i", texts, "-o", tmp_path / "e.npy")
    assert rc == 1 and "holds no tokenizer" in err and "qrt convert DIR" in err
    model = tmp_path / "m.qrt"
    assert _cli(capsys, "convert", folders["st mean normalized"], "-o", model, "-q")[0] == 0
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    rc, _, err = _cli(capsys, "embed", model, "-i", empty, "-o", tmp_path / "e.npy")
    assert rc == 1 and "is empty" in err
    rc, _, err = _cli(capsys, "embed", model, "-i", texts, "-o", tmp_path / "e.txt")
    assert rc == 1 and "expected a .npy file name" in err
    binary = tmp_path / "b.txt"
    binary.write_bytes(b"abc\xff\n")
    rc, _, err = _cli(capsys, "embed", model, "-i", binary, "-o", tmp_path / "e.npy")
    assert rc == 1 and "is not UTF-8 text" in err and "line 1" in err
    assert not (tmp_path / "e.npy").exists()
    with pytest.raises(ValueError, match="got one string"):
        TextEncoder(model).encode("hello")
    with pytest.raises(ValueError, match="item 1 is a int"):
        TextEncoder(model).encode(["hello", 3])


def test_text_longer_than_the_model_reads_is_named(folders, tmp_path, capsys):
    """An exported BERT with 64 positions calibrated on a line of more tokens: the error names
    the feed, its shapes and --seq-len, not a broadcast deep in a LayerNorm (issue 17)."""
    from runtime.convert.hf import export_folder
    model = tmp_path / "bert.onnx"
    model.write_bytes(export_folder(read_folder(folders["transformers"]))[0])
    text = tmp_path / "long.txt"
    text.write_text("the cat sat on the mat " * 20 + "\n")
    rc, _, err = _cli(capsys, "convert", model, "-o", tmp_path / "m.qrt", "--quant", "int8", "--calib-text", text,
                      "--tokenizer", folders["transformers"], "--seq-len", "128")
    assert rc == 1
    assert "the fp32 model fails on calibration feed 0 (input_ids [1, 122]" in err
    assert "lower --seq-len (now 128)" in err
    assert not (tmp_path / "m.qrt").exists()


def test_a_sequence_too_long_for_memory_is_refused_before_running(folders, tmp_path, capsys, monkeypatch):
    """issue 16: a token feed whose attention scores alone would not fit (batch x seq x seq)."""
    import numpy as np

    from runtime import InferenceSession, feeds
    model = tmp_path / "m.qrt"
    assert _cli(capsys, "convert", folders["st mean normalized"], "-o", model, "-q")[0] == 0
    sess = InferenceSession(model)
    monkeypatch.setattr(feeds, "available_memory", lambda: 1 << 30)
    ids = np.ones((2, 20_000), np.int64)                  # 2 x 20,000^2 x 4 B = 3.0 GiB of scores
    with pytest.raises(MemoryError, match=r"needs at least 3\.0 GiB \(attention scores 2 x 20,000 x 20,000\)"):
        sess.run(None, {"input_ids": ids, "attention_mask": ids, "token_type_ids": 0 * ids})
