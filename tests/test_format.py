"""The .qrt file: round trip, zero-copy, safetensors compatibility, atomic writes, and one
crafted bad file per validation rule (each must be a QrtFormatError naming the file and the
problem, never another exception)."""
from __future__ import annotations

import json
import mmap
import os
import struct

import numpy as np
import pytest

from runtime.errors import QrtFormatError
from runtime.format import (ALIGNMENT, FORMAT_VERSION, MAGIC, PAD_PREFIX, load, read_header,
                            save, to_bytes)
from runtime.graph import Graph, Node, Value
from kernels.core.layouts import PackedTensor, dense_tensor

# --- fixtures ----------------------------------------------------------------------------


def make_graph(seed: int = 0) -> Graph:
    """x -> Linear(w, b) -> Relu -> LeakyRelu -> y, plus initializers of awkward dtypes and
    sizes: int64, bool, an odd-length uint8 (forces padding), a zero-size one, a 0-d one."""
    rng = np.random.default_rng(seed)
    inits = [
        dense_tensor("w", rng.standard_normal((4, 3)).astype(np.float32)),
        dense_tensor("b", rng.standard_normal(4).astype(np.float32)),
        dense_tensor("idx", rng.integers(-2**40, 2**40, size=5, dtype=np.int64)),
        dense_tensor("mask", rng.random((2, 3)) > 0.5),
        dense_tensor("bytes7", rng.integers(0, 256, size=7, dtype=np.uint8)),
        dense_tensor("empty", np.zeros((0, 4), np.float32)),
        # built by hand: dense_tensor() turns a 0-d array into shape (1,)
        PackedTensor("scalar", "dense", "float16", (), {"data": np.array(1.5, np.float16)}),
        dense_tensor("i16", rng.integers(-1000, 1000, size=(3, 1), dtype=np.int16)),
    ]
    return Graph(
        name="tiny",
        inputs=[Value("x", "float32", ("batch", 3))],
        outputs=[Value("y", "float32", ("batch", 4))],
        nodes=[Node("fc", "Linear", ["x", "w", "b"], ["h"]),
               Node("act", "Relu", ["h"], ["r"]),
               Node("leaky", "LeakyRelu", ["r"], ["y"], {"alpha": 0.125})],
        initializers={t.name: t for t in inits},
        metadata={"source": "hand-built", "mask_value": float("-inf"), "opset": 17},
    )


@pytest.fixture
def good_file(tmp_path):
    path = tmp_path / "good.qrt"
    save(make_graph(), path)
    return path


def split_file(path) -> tuple[dict, bytes]:
    """(header dict, data section) of a file, parsed with plain json (no qrt code)."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def craft(path, header: dict | bytes, data: bytes = b"", *, header_len: int | None = None):
    """Write a file from a header (dict: serialised compactly, key order kept, so the magic
    survives) and a data section; the header is space-padded so the data stays aligned."""
    text = header if isinstance(header, bytes) else json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % ALIGNMENT)
    n = len(text) if header_len is None else header_len
    path.write_bytes(struct.pack("<Q", n) + text + data)
    return path


def graph_of(header: dict) -> dict:
    return json.loads(header["__metadata__"]["graph"])


def set_graph(header: dict, graph: dict | str) -> None:
    header["__metadata__"]["graph"] = graph if isinstance(graph, str) else json.dumps(graph)


def mmap_behind(arr: np.ndarray):
    """Follow ``arr``'s .base chain (memoryviews via .obj) to the mmap it views, or None."""
    obj = arr
    while obj is not None:
        if isinstance(obj, mmap.mmap):
            return obj
        obj = obj.obj if isinstance(obj, memoryview) else getattr(obj, "base", None)
    return None


def expect_error(path, *fragments: str) -> QrtFormatError:
    with pytest.raises(QrtFormatError) as info:
        load(path)
    msg = str(info.value)
    assert str(path) in msg, msg
    for fragment in fragments:
        assert fragment in msg, msg
    return info.value


# --- round trip --------------------------------------------------------------------------


def test_round_trip(good_file):
    g = make_graph()
    h = load(good_file)
    assert h.to_dict() == g.to_dict()
    assert h.initializers.keys() == g.initializers.keys()
    for name, t in g.initializers.items():
        a, b = t.fields["data"], h.initializers[name].fields["data"]
        assert b.dtype == a.dtype and b.shape == a.shape, name
        np.testing.assert_array_equal(b, a)
        assert type(b) is np.ndarray
    assert h.initializers["scalar"].fields["data"].shape == ()


def test_tensors_are_aligned_and_contiguous(good_file):
    meta, tensors = read_header(good_file)
    assert meta["format"] == "qrt" and meta["format_version"] == str(FORMAT_VERSION)
    assert meta["producer"] == "qrt"
    assert json.loads(meta["graph"]) == make_graph().to_dict()
    assert list(tensors) == [f"{n}::data" for n in make_graph().initializers]   # file order
    for name, info in tensors.items():
        assert info["offset"] % ALIGNMENT == 0, (name, info)
    assert tensors["w::data"] == {"dtype": "float32", "shape": [4, 3], "offset": tensors["w::data"]["offset"],
                                  "nbytes": 48}
    header, data = split_file(good_file)
    assert good_file.read_bytes()[8:8 + len(MAGIC)] == MAGIC
    # safetensors rule: tensors (padding included) tile the data section with no holes.
    spans = sorted(tuple(e["data_offsets"]) for k, e in header.items() if k != "__metadata__")
    assert spans[0][0] == 0 and spans[-1][1] == len(data)
    assert all(e0 == b1 for (_, e0), (b1, _) in zip(spans, spans[1:]))
    pads = [k for k in header if k.startswith(PAD_PREFIX)]
    assert pads, "the odd-sized tensors should have forced padding"
    assert all(header[k]["dtype"] == "U8" for k in pads)


def test_arrays_are_read_only_views_of_the_file_map(good_file):
    g = load(good_file)
    maps = set()
    for name, t in g.initializers.items():
        arr = t.fields["data"]
        assert not arr.flags.writeable, name
        with pytest.raises(ValueError):
            arr.flags.writeable = True
        mm = mmap_behind(arr)
        assert mm is not None, name
        maps.add(id(mm))
        if arr.size:
            assert np.shares_memory(arr, np.frombuffer(mm, np.uint8)), name
    assert len(maps) == 1, "one map for the whole file"


def test_to_bytes_matches_save_and_is_deterministic(good_file, tmp_path):
    assert to_bytes(make_graph()) == good_file.read_bytes()
    again = tmp_path / "again.qrt"
    save(load(good_file), again)        # re-saving a loaded (memory-mapped) graph
    assert again.read_bytes() == good_file.read_bytes()


def test_graph_without_initializers(tmp_path):
    g = Graph("id", [Value("x", "int8", (2,))], [Value("y", "int8", (2,))],
              [Node("n", "Identity", ["x"], ["y"])])
    path = tmp_path / "id.qrt"
    save(g, path)
    assert load(path).to_dict() == g.to_dict()
    assert read_header(path)[1] == {}


def test_non_contiguous_field_is_written_in_c_order(tmp_path):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    t = PackedTensor("t", "dense", "float32", (4, 3), {"data": a.T})
    g = Graph("nc", [], [Value("t", "float32", (4, 3))], [], {"t": t})
    path = tmp_path / "nc.qrt"
    save(g, path)
    np.testing.assert_array_equal(load(path).initializers["t"].fields["data"], a.T)


def test_safetensors_library_reads_our_file(good_file):
    st_numpy = pytest.importorskip("safetensors.numpy")
    from safetensors import safe_open
    g = make_graph()
    loaded = st_numpy.load_file(str(good_file))
    expected = {f"{n}::data": t.fields["data"] for n, t in g.initializers.items()}
    assert {k for k in loaded if not k.startswith(PAD_PREFIX)} == set(expected)
    for k, a in expected.items():
        assert loaded[k].dtype == a.dtype and loaded[k].shape == a.shape, k
        np.testing.assert_array_equal(loaded[k], a)
    assert all(not loaded[k].any() for k in loaded if k.startswith(PAD_PREFIX))
    with safe_open(str(good_file), framework="numpy") as f:
        meta = f.metadata()
    assert meta["format"] == "qrt" and json.loads(meta["graph"]) == g.to_dict()


def test_plain_safetensors_file_is_not_a_qrt_file(tmp_path):
    st_numpy = pytest.importorskip("safetensors.numpy")
    path = tmp_path / "plain.safetensors"
    st_numpy.save_file({"a": np.ones(3, np.float32)}, str(path))
    expect_error(path, "not a .qrt file (wrong magic")


# --- atomic writes -----------------------------------------------------------------------


def test_invalid_graph_writes_nothing(tmp_path):
    g = make_graph()
    g.nodes[1].op = "Frobnicate"
    path = tmp_path / "bad.qrt"
    with pytest.raises(QrtFormatError, match="unknown op 'Frobnicate'"):
        save(g, path)
    assert os.listdir(tmp_path) == []


def test_invalid_graph_does_not_clobber_existing_file(good_file):
    before = good_file.read_bytes()
    g = make_graph()
    g.nodes[0].inputs[0] = "nowhere"
    with pytest.raises(QrtFormatError, match="'nowhere'"):
        save(g, good_file)
    assert good_file.read_bytes() == before
    assert os.listdir(good_file.parent) == [good_file.name]


def test_unserialisable_attribute_is_a_format_error(tmp_path):
    g = make_graph()
    g.nodes[2].attrs["alpha"] = object()
    with pytest.raises(QrtFormatError, match="cannot write graph 'tiny'"):
        save(g, tmp_path / "x.qrt")
    assert os.listdir(tmp_path) == []


def test_writer_refuses_what_the_reader_would_refuse(tmp_path):
    g = make_graph()
    g.name = None                       # validate() does not look at the name; the schema does
    with pytest.raises(QrtFormatError, match="graph JSON 'name' is NoneType"):
        save(g, tmp_path / "x.qrt")
    assert os.listdir(tmp_path) == []


def test_io_failure_leaves_no_partial_file(good_file, monkeypatch):
    before = good_file.read_bytes()

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    g = make_graph(seed=1)
    with pytest.raises(OSError, match="No space left"):
        save(g, good_file)
    assert good_file.read_bytes() == before
    assert os.listdir(good_file.parent) == [good_file.name]


# --- bad files: container ------------------------------------------------------------------


def test_file_too_short(tmp_path):
    expect_error(craft_raw(tmp_path / "s.qrt", b"\x01\x02\x03"), "too short (3 bytes)")
    expect_error(craft_raw(tmp_path / "e.qrt", b""), "too short (0 bytes)")


def craft_raw(path, raw: bytes):
    path.write_bytes(raw)
    return path


def test_wrong_magic(tmp_path):
    expect_error(craft_raw(tmp_path / "png.qrt", b"\x89PNG\r\n\x1a\n" + bytes(100)), "wrong magic")
    expect_error(craft(tmp_path / "st.qrt", {"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}},
                       b"\0"), "not a .qrt file (wrong magic")
    # right JSON, other key order: still refused, the magic is a byte prefix
    header, data = split_file(craft_good(tmp_path))
    meta = header["__metadata__"]
    header["__metadata__"] = {"format_version": meta.pop("format_version"), **meta}
    expect_error(craft(tmp_path / "order.qrt", header, data), "wrong magic")


def craft_good(tmp_path):
    path = tmp_path / "source.qrt"
    if not path.exists():
        save(make_graph(), path)
    return path


def test_header_length_absurd(tmp_path):
    raw = struct.pack("<Q", 2**40) + MAGIC + b'"format_version":"1"}}'
    expect_error(craft_raw(tmp_path / "a.qrt", raw), "header length 1099511627776 is absurd")


def test_header_length_larger_than_file(tmp_path):
    raw = craft_good(tmp_path).read_bytes()
    bad = struct.pack("<Q", len(raw)) + raw[8:]
    expect_error(craft_raw(tmp_path / "h.qrt", bad), "truncated", "larger than the file")


def test_truncated_data_section(tmp_path):
    raw = craft_good(tmp_path).read_bytes()
    expect_error(craft_raw(tmp_path / "t.qrt", raw[:-5]), "out of file bounds", "truncated")


def test_every_truncation_is_a_format_error(tmp_path):
    raw = craft_good(tmp_path).read_bytes()
    path = tmp_path / "cut.qrt"
    for cut in sorted(set(range(0, len(raw), 7)) | {len(raw) - 1}):
        path.write_bytes(raw[:cut])
        with pytest.raises(QrtFormatError):
            load(path)


def test_random_header_corruption_never_crashes(tmp_path):
    raw = craft_good(tmp_path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    rng = np.random.default_rng(1234)
    path = tmp_path / "flip.qrt"
    outcomes = {"loaded": 0, "refused": 0}
    for _ in range(300):
        bad = bytearray(raw)
        for pos in rng.integers(0, 8 + n, size=rng.integers(1, 4)):
            bad[pos] = int(rng.integers(0, 256))
        path.write_bytes(bytes(bad))
        try:
            load(path)
            outcomes["loaded"] += 1
        except QrtFormatError as e:
            assert str(path) in str(e)
            outcomes["refused"] += 1
    assert outcomes["refused"] > 0


def test_header_not_utf8(tmp_path):
    expect_error(craft(tmp_path / "u.qrt", MAGIC + b'"format_version":"\xff\xfe"}}'), "not valid UTF-8")


def test_header_not_json(tmp_path):
    expect_error(craft(tmp_path / "j.qrt", MAGIC + b"this is not json"), "header is not valid JSON")


def test_header_nested_too_deeply(tmp_path):
    expect_error(craft(tmp_path / "d.qrt", MAGIC + b'"x":' + b"[" * 100_000), "nested too deeply")


def test_duplicate_key_cannot_override_format(tmp_path):
    # the only way to name another format behind the magic is a repeated key
    bad = MAGIC + b'"format":"onnx","format_version":"1","graph":"{}"}}'
    expect_error(craft(tmp_path / "dup.qrt", bad), "duplicate key 'format'")


# --- bad files: metadata ------------------------------------------------------------------


def mutate_file(tmp_path, name, mutate):
    """Load the good file's header and data, apply ``mutate(header)`` (which may return new
    data), write it as ``name``."""
    header, data = split_file(craft_good(tmp_path))
    new_data = mutate(header)
    return craft(tmp_path / name, header, data if new_data is None else new_data)


@pytest.mark.parametrize("key", ["format_version", "graph"])
def test_metadata_missing_field(tmp_path, key):
    path = mutate_file(tmp_path, "m.qrt", lambda h: h["__metadata__"].pop(key) and None)
    expect_error(path, f"__metadata__ lacks '{key}'")


def test_metadata_value_not_a_string(tmp_path):
    path = mutate_file(tmp_path, "m.qrt", lambda h: h["__metadata__"].update(format_version=1))
    expect_error(path, "__metadata__['format_version'] is a int, not a string")


@pytest.mark.parametrize("version", ["abc", "0", "-1", "1.0", " 1", ""])
def test_unknown_format_version(tmp_path, version):
    path = mutate_file(tmp_path, "v.qrt", lambda h: h["__metadata__"].update(format_version=version))
    expect_error(path, f"unknown format version {version!r}")


def test_newer_format_version_is_refused_naming_both(tmp_path):
    newer = FORMAT_VERSION + 1

    def mutate(h):
        # a newer file may change anything else too: the version check comes first
        h["__metadata__"] = {"format": "qrt", "format_version": str(newer)}
        h["w::data"]["dtype"] = "F8_E4M3"
    path = mutate_file(tmp_path, "new.qrt", mutate)
    expect_error(path, f"file format version {newer} is newer than this qrt reads "
                       f"(version {FORMAT_VERSION}); upgrade qrt")


# --- bad files: tensor entries ------------------------------------------------------------


def _set(tensor, key, value):
    def mutate(h):
        h[tensor][key] = value
    return mutate


@pytest.mark.parametrize("mutate, fragment", [
    (_set("w::data", "dtype", "BF16"), "unknown dtype code 'BF16'"),
    (_set("w::data", "dtype", 7), "unknown dtype code 7"),
    (_set("w::data", "shape", [-4, 3]), "is not a list of non-negative integers"),
    (_set("w::data", "shape", "4x3"), "is not a list of non-negative integers"),
    (_set("w::data", "shape", [4.0, 3]), "is not a list of non-negative integers"),
    (_set("w::data", "shape", [True, 3]), "is not a list of non-negative integers"),
    (_set("empty::data", "shape", [0, 2**70]), "is too large"),
    # zero bytes, each dimension allowed, but numpy cannot shape it (was numpy's ValueError)
    (_set("empty::data", "shape", [0, 2**40, 2**40]), "product of its non-zero dimensions"),
    (_set("w::data", "data_offsets", [0]), "data_offsets [0] is not [begin, end]"),
    (_set("w::data", "data_offsets", ["0", 48]), "is not [begin, end]"),
    (_set("w::data", "data_offsets", [48, 0]), "is not [begin, end]"),
    (_set("w::data", "shape", [4, 4]), "dtype/shape mismatch"),
    (_set("w::data", "dtype", "F64"), "dtype/shape mismatch"),
    (_set("empty::data", "data_offsets", [1 << 20, 1 << 20]), "out of file bounds"),
    (_set("w::data", "data_offsets", [4, 52]), "not a multiple of 64"),
    (lambda h: h.update({"w2::data": dict(h["w::data"])}), "overlapping tensors"),
    (lambda h: h.update({"w::data": [0, 48]}), "entry is a list, not an object"),
    (lambda h: h["w::data"].pop("shape") and None, "entry lacks ['shape']"),
    (_set("w::data", "offsets", [0, 48]), "unknown keys ['offsets']"),
], ids=lambda x: x if isinstance(x, str) else "")
def test_bad_tensor_entry(tmp_path, mutate, fragment):
    expect_error(mutate_file(tmp_path, "t.qrt", mutate), fragment)


def test_a_fifo_or_device_is_refused_without_blocking(tmp_path):
    """Opening a FIFO for reading waits for a writer: load once blocked forever. The file is
    opened non-blocking and refused as not a regular file, for load and read_header."""
    fifo = tmp_path / "model.qrt"
    os.mkfifo(fifo)
    for read in (load, read_header):
        with pytest.raises(QrtFormatError, match="not a regular file"):
            read(fifo)
        with pytest.raises(QrtFormatError, match="not a regular file"):
            read("/dev/zero")


def test_read_header_validates_too(tmp_path):
    path = mutate_file(tmp_path, "t.qrt", _set("w::data", "dtype", "BF16"))
    with pytest.raises(QrtFormatError, match="unknown dtype code"):
        read_header(path)


def test_unreferenced_tensor(tmp_path):
    def mutate(h):
        h["stray::data"] = {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}
    expect_error(mutate_file(tmp_path, "u.qrt", mutate), "unreferenced tensor 'stray::data'")


# --- bad files: the graph -----------------------------------------------------------------


def _graph_edit(edit):
    def mutate(h):
        g = graph_of(h)
        edit(g)
        set_graph(h, g)
    return mutate


def _pop(d, key):
    d.pop(key)


@pytest.mark.parametrize("mutate, fragment", [
    (lambda h: set_graph(h, "{not json"), "graph JSON is not valid JSON"),
    (lambda h: set_graph(h, "[1, 2]"), "graph JSON is not an object"),
    (_graph_edit(lambda g: _pop(g, "nodes")), "graph JSON lacks keys ['nodes']"),
    (_graph_edit(lambda g: g.update(extra=1)), "graph JSON has unknown keys ['extra']"),
    (_graph_edit(lambda g: g["inputs"][0].update(name=5)), "graph JSON inputs[0] name is int 5"),
    (_graph_edit(lambda g: g["inputs"][0].update(shape=[-1, 3])), "shape [-1, 3] is not null or a list"),
    (_graph_edit(lambda g: g["nodes"][0].update(inputs="x")), "inputs is not a list of strings"),
    (_graph_edit(lambda g: _pop(g["nodes"][1], "op")), "graph JSON nodes[1] lacks keys ['op']"),
    (_graph_edit(lambda g: g["initializers"]["w"].update(shape=[4, "3"])),
     "initializer 'w' shape [4, '3'] is not a list of non-negative integers"),
    # Graph.from_dict's own failure, wrapped
    (_graph_edit(lambda g: g["initializers"]["w"]["fields"].update(data="nope::data")),
     "refers to tensor 'nope::data', which the file does not contain"),
    # graph.validate() failures, wrapped
    (_graph_edit(lambda g: g["nodes"][1].update(op="Frobnicate")), "unknown op 'Frobnicate'"),
    (_graph_edit(lambda g: g["nodes"][1].update(inputs=["ghost"])),
     "input 0 names 'ghost', which is not a graph input"),
    (_graph_edit(lambda g: g["nodes"].reverse()), "which is not a graph input"),
    (_graph_edit(lambda g: g["outputs"][0].update(name="nobody")), "graph output 'nobody' is not produced"),
    (_graph_edit(lambda g: g["nodes"][2]["attrs"].update(beta=1)), "unknown attributes ['beta']"),
    (_graph_edit(lambda g: g["initializers"]["w"].update(layout="int9")), "unknown layout 'int9'"),
    # initializer dtype/shape disagreeing with its file tensor: the layout check
    (_graph_edit(lambda g: g["initializers"]["w"].update(dtype="int32")),
     "field 'data' has dtype float32, the tensor says int32"),
    (_graph_edit(lambda g: g["initializers"]["w"].update(shape=[3, 4])),
     "field 'data' has shape (4, 3), the tensor says (3, 4)"),
], ids=lambda x: x if isinstance(x, str) else "")
def test_bad_graph(tmp_path, mutate, fragment):
    expect_error(mutate_file(tmp_path, "g.qrt", mutate), fragment)


def test_pad_tensors_are_ignored_but_other_names_are_not(tmp_path):
    def mutate(h):
        pad = next(k for k in h if k.startswith(PAD_PREFIX))
        h["__qrt_pad_x"] = h.pop(pad)       # not the pad pattern: an ordinary stray tensor
    expect_error(mutate_file(tmp_path, "p.qrt", mutate), "tensor '__qrt_pad_x'")


# --- writes that are killed ------------------------------------------------------------------

_KILLED_WRITER = """
import sys, time
from runtime.format import atomic_write
def write(f):
    f.write(b"x" * 4096)
    f.flush()
    print("writing", flush=True)
    time.sleep(60)
atomic_write(sys.argv[1], write)
"""


def test_a_killed_write_leaves_nothing_behind_after_the_next_write(tmp_path):
    """SIGKILL in the middle of atomic_write: the output is never created half-written, and
    whatever temporary the dead process had (none where unnamed files exist) is removed by
    the next write to the same path; a live writer's temporary is left alone."""
    import signal
    import subprocess
    import sys
    from runtime import format as F
    out = tmp_path / "model.qrt"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(out)], cwd=root, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "writing"
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    p.stdout.close()
    assert not out.exists()
    leftovers = [q.name for q in tmp_path.iterdir()]
    assert all(n.startswith(".model.qrt.") and n.endswith(".tmp") for n in leftovers), leftovers
    live = tmp_path / f".model.qrt.{os.getpid()}.0123abcd.tmp"   # a concurrent writer (this process)
    live.write_bytes(b"partial")
    other = tmp_path / ".other.qrt.999999999.0123abcd.tmp"       # another output's temporary
    other.write_bytes(b"partial")
    F.atomic_write(out, lambda f: f.write(b"done"))
    assert out.read_bytes() == b"done"
    assert sorted(q.name for q in tmp_path.iterdir()) == sorted([out.name, live.name, other.name])


# --- limits ----------------------------------------------------------------------------------

def test_too_many_tensors_are_refused_before_any_per_tensor_work(tmp_path, monkeypatch):
    """A header of MAX_TENSORS + 1 empty tensors is refused on the count (once: 1,000,000
    one-byte tensors took 13.5 s and 1.1 GB to load, as many unreferenced ones 26.7 s to
    refuse). The per-entry check must not run at all."""
    from runtime import format as F
    header, data = split_file(craft_good(tmp_path))
    for k in range(F.MAX_TENSORS + 1):
        header[f"t{k}"] = {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}
    path = craft(tmp_path / "many.qrt", header, data)

    def never(*a):
        raise AssertionError("a tensor entry was checked")
    monkeypatch.setattr(F, "_check_tensor_entry", never)
    for read in (load, read_header):
        with pytest.raises(QrtFormatError, match=f"more than the {F.MAX_TENSORS}"):
            read(path)


@pytest.mark.parametrize("section", ["nodes", "inputs", "outputs", "initializers"])
def test_too_many_graph_entries_are_refused_on_the_count(tmp_path, section):
    from runtime import format as F
    header, data = split_file(craft_good(tmp_path))
    g = graph_of(header)
    cap = F.MAX_TENSORS if section == "initializers" else F.MAX_NODES
    if section == "initializers":
        g[section] = {f"i{k}": {} for k in range(cap + 1)}
    else:
        g[section] = [{} for _ in range(cap + 1)]
    set_graph(header, g)
    expect_error(craft(tmp_path / "big.qrt", header, data), f"more than the {cap}", section)


def test_an_onnx_model_is_named_as_such(tmp_path):
    """An ONNX file handed to load / qrt run / inspect / bench: said to be an ONNX model to
    convert first, not "wrong magic ... found b'rch...'" (the bytes of "pytorch")."""
    from tests import model_zoo
    path = tmp_path / "model.onnx"
    path.write_bytes(model_zoo.small_mlp_onnx())
    for read in (load, read_header):
        with pytest.raises(QrtFormatError, match="this is an ONNX model, not a .qrt file: convert it first"):
            read(path)
    torch_like = tmp_path / "torch.onnx"          # what torch.onnx.export writes first
    torch_like.write_bytes(b"\x08\x08\x12\x07pytorch\x1a\x0b2.13.0+cpu" + b"\x00" * 64)
    with pytest.raises(QrtFormatError, match="ONNX model"):
        load(torch_like)


# --------------------------------------------------- errors name the file asked for -----

def test_a_failed_write_names_the_output_not_its_temporary(tmp_path, monkeypatch):
    """issue 17: "an unwritable output is reported under its temp-file name"."""
    from runtime import format as fmt
    out = tmp_path / "m.qrt"

    def refuse(src, dst):
        raise PermissionError(13, "Permission denied", src)
    monkeypatch.setattr(fmt.os, "replace", refuse)
    with pytest.raises(PermissionError) as e:
        fmt.atomic_write(out, lambda f: f.write(b"x"))
    assert str(e.value) == f"cannot write {str(out)!r}: Permission denied" and e.value.errno == 13
    assert os.listdir(tmp_path) == []            # and no temporary left behind


@pytest.mark.skipif(not os.path.isdir("/sys/kernel"), reason="Linux /sys: a folder nobody may create files in")
def test_an_unwritable_folder_names_the_output(capsys):
    from runtime.format import atomic_write
    with pytest.raises(OSError, match=r"^cannot write '/sys/kernel/m\.qrt': "):
        atomic_write("/sys/kernel/m.qrt", lambda f: f.write(b"x"))
