"""The .qrt file: writer, zero-copy reader, validation (numpy only).

A .qrt file is a safetensors container (docs/FORMAT.md has it byte by byte):

    offset 0        u64 little-endian N: length of the JSON header
    offset 8        N bytes of UTF-8 JSON, beginning with MAGIC, padded with spaces
    offset 8 + N    the data section (8 + N is a multiple of ALIGNMENT); every tensor starts
                    at a file offset that is a multiple of ALIGNMENT, gaps are filled with
                    `__qrt_pad_<k>` U8 tensors because safetensors forbids holes

The graph (runtime.graph.Graph.to_dict) travels as a JSON string in ``__metadata__["graph"]``;
each initializer field is one file tensor named ``runtime.graph.file_tensor_name(init, field)``.

The reader maps the file read-only and hands out numpy views into the map, so loading costs
no copy and no allocation proportional to the weights. Before it returns, everything a kernel
relies on has been checked; every problem is a QrtFormatError whose message starts with the
file name. Only the OS can still raise OSError (missing file, no permission).

Implemented with json + mmap + numpy; the `safetensors` package is not needed (the tests check
that it reads our files).
"""
from __future__ import annotations

import io
import json
import math
import mmap
import os
import re
import secrets
import stat
import struct
import threading
import weakref
from typing import Any, BinaryIO

import numpy as np

from .errors import QrtFormatError
from .graph import Graph, GraphError, file_tensor_name
from kernels.core.layouts import DTYPES

FORMAT_NAME = "qrt"
# Bump when a reader of the previous version would misread a new file (see docs/FORMAT.md).
FORMAT_VERSION = 1
PRODUCER = "qrt"

# Tensor data alignment in the file (absolute offsets): a cache line, and the widest SIMD
# register (AVX-512) any kernel loads with.
ALIGNMENT = 64
# The same bound the safetensors library enforces; a larger "header" is a corrupt length field.
MAX_HEADER_BYTES = 100_000_000
# The header's first bytes, written in exactly this key order; the reader's file-type check.
MAGIC = b'{"__metadata__":{"format":"qrt",'
PAD_PREFIX = "__qrt_pad_"
_PAD_NAME = re.compile(r"__qrt_pad_[0-9]+")
_HEADER_LENGTH = struct.Struct("<Q")

# numpy dtype name (kernels.core.layouts.DTYPES) <-> safetensors dtype code. Data is little-endian.
DTYPE_CODES: dict[str, str] = {
    "float64": "F64", "float32": "F32", "float16": "F16",
    "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8",
    "uint64": "U64", "uint32": "U32", "uint16": "U16", "uint8": "U8",
    "bool": "BOOL",
}
CODE_DTYPES: dict[str, str] = {code: name for name, code in DTYPE_CODES.items()}
assert set(DTYPE_CODES) == set(DTYPES), "every storable dtype needs a safetensors code"

# numpy refuses arrays with more dimensions or larger extents than these; a zero-size tensor
# could otherwise declare such a shape with a valid byte count of 0.
_MAX_NDIM = 32
_MAX_DIM = 2 ** 62
# Work a file can ask for is bounded by its size, and these counts bound the per-entry work
# (validation, graph and session building, each linear in them): a header of a million one-byte
# tensors, or a million-node chain, would otherwise take a minute and gigabytes to refuse or
# load. Real models are far below (a 2-layer BERT: ~150 nodes, ~200 tensors; a 7B LLM export:
# ~10,000 nodes).
MAX_TENSORS = 100_000
MAX_NODES = 100_000
# numpy's index type is int64: a shape's element count (zeros read as 1) must fit well within it
_MAX_ELEMENTS = 2 ** 62

_METADATA_REQUIRED = ("format", "format_version", "graph")
_TENSOR_KEYS = ("dtype", "shape", "data_offsets")
_GRAPH_KEYS_REQUIRED = ("name", "inputs", "outputs", "nodes", "initializers")
_GRAPH_KEYS = _GRAPH_KEYS_REQUIRED + ("metadata",)


class _Malformed(Exception):
    """Internal: a problem found while parsing; load()/read_header() prefix the file name."""


# ==========================================================================================
# writer
# ==========================================================================================

def save(graph: Graph, path: str | os.PathLike) -> None:
    """Write ``graph`` to ``path`` atomically.

    The graph is validated and serialised first (QrtFormatError, nothing touched on disk),
    then written with atomic_write: ``path`` is either the old file or the complete new one.
    Processes that have the old file mapped keep reading the old bytes (the rename swaps
    inodes)."""
    header, entries = _encode(graph)
    atomic_write(path, lambda f: _write(f, header, entries))


def atomic_write(path: str | os.PathLike, write, *, durable: bool = True) -> None:
    """Call ``write(binary_file)`` on a temporary file next to ``path``, flush and fsync it,
    rename it onto ``path`` (os.replace) and fsync the directory (``durable=False``: no fsync,
    for files that may be lost in a power cut but never seen half-written, such as caches). On any failure the temporary
    file is removed and the exception propagates, so no partial file is ever left.

    A process killed outright (SIGKILL, OOM) runs no cleanup. Where the file system allows it
    (Linux O_TMPFILE), the data is written to a file with no name, which the kernel frees with
    the process; it gets its temporary name only once complete, for the instant before the
    rename. Elsewhere, and for that instant, the next write to ``path`` removes temporary files
    of ``path`` left by processes that no longer exist (remove_stale_temps)."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    remove_stale_temps(path)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    unnamed = _open_unnamed(directory)
    try:
        # os.open with 0o666 lets the umask decide the permissions, like a plain open() would.
        fd = unnamed if unnamed is not None else \
            os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as e:
        raise _naming(e, path) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if durable:
                os.fsync(f.fileno())
            if unnamed is not None:          # complete: give it its temporary name
                os.link(f"/proc/self/fd/{f.fileno()}", tmp, follow_symlinks=True)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except (FileNotFoundError, IsADirectoryError, PermissionError):
            pass
        if isinstance(e, OSError) and e.filename in (tmp, None):
            raise _naming(e, path) from None
        raise
    if durable:
        _fsync_directory(directory)


def _naming(e: OSError, path: str) -> OSError:
    """The same kind of OSError, naming the file the caller asked for instead of the
    temporary one ("cannot write 'out.qrt': Permission denied", not '.out.qrt.123.ab.tmp')."""
    new = type(e)(f"cannot write {path!r}: {e.strerror or e}")
    new.errno = e.errno          # str() stays the message: filename is left unset
    return new


# st_dev -> whether unnamed files on it can be given a name (probed once per file system:
# some kernels and sandboxes refuse the link with EXDEV)
_UNNAMED_LINKS: dict[int, bool] = {}


def _open_unnamed(directory: str) -> int | None:
    """An O_TMPFILE descriptor in ``directory`` that can be given a name later (Linux), or
    None where the OS or file system has none (the caller then writes a named temporary)."""
    flag = getattr(os, "O_TMPFILE", 0)
    if not flag or not os.path.isdir("/proc/self/fd"):
        return None
    try:
        dev = os.stat(directory).st_dev
        # 0o666: the umask decides the permissions, like a plain open() would
        fd = os.open(directory, flag | os.O_WRONLY, 0o666)
    except OSError:     # EOPNOTSUPP / EISDIR / EINVAL: this file system has no unnamed files
        return None
    if dev not in _UNNAMED_LINKS:
        probe = os.path.join(directory, f".qrt-probe.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            os.link(f"/proc/self/fd/{fd}", probe, follow_symlinks=True)
            os.unlink(probe)
            _UNNAMED_LINKS[dev] = True
        except OSError:
            _UNNAMED_LINKS[dev] = False
    if not _UNNAMED_LINKS[dev]:
        os.close(fd)
        return None
    return fd


_TEMP_NAME = re.compile(r"\.(?P<base>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp")


def remove_stale_temps(path: str | os.PathLike) -> list[str]:
    """Remove the temporary files atomic_write left next to ``path`` in processes that no
    longer exist (a conversion killed while writing); returns what was removed. A temporary
    of a live process (a concurrent writer) is left alone."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        m = _TEMP_NAME.fullmatch(name)
        if not m or m.group("base") != base or _alive(int(m.group("pid"))):
            continue
        try:
            os.unlink(os.path.join(directory, name))
            removed.append(name)
        except OSError:
            pass
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True     # exists but not ours, or not a pid this OS knows: leave it
    return True


def to_bytes(graph: Graph) -> bytes:
    """The bytes save() would write (validated the same way)."""
    header, entries = _encode(graph)
    buf = io.BytesIO()
    _write(buf, header, entries)
    return buf.getvalue()


def _encode(graph: Graph) -> tuple[bytes, list[tuple[str, np.ndarray | int]]]:
    """Validate and lay out ``graph``: the padded header (without its length field) and the
    data section as a list of (tensor name, little-endian C-contiguous array, or pad size)."""
    what = f"cannot write graph {getattr(graph, 'name', '?')!r}"
    try:
        graph.validate()
        graph_dict = graph.to_dict()
        # The reader's schema check, run here too, so the writer never produces a file that
        # load() refuses (validate() does not look at, e.g., the graph's name).
        _check_graph_dict(graph_dict)
        graph_json = json.dumps(graph_dict, separators=(",", ":"))
    except (GraphError, _Malformed) as e:
        raise QrtFormatError(f"{what}: {e}") from None
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as e:
        raise QrtFormatError(f"{what}: {type(e).__name__}: {e}") from None

    tensors: list[tuple[str, np.ndarray]] = []
    taken: set[str] = set()
    for init_name, t in graph.initializers.items():
        for field_name, arr in t.fields.items():
            tname = file_tensor_name(init_name, field_name)
            if tname in taken:
                raise QrtFormatError(f"{what}: two initializer fields map to the file tensor {tname!r}; "
                                     f"rename initializer {init_name!r}")
            taken.add(tname)
            # np.asarray(order="C") keeps 0-d arrays 0-d (np.ascontiguousarray makes them 1-d).
            arr = np.asarray(arr, order="C")
            arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
            tensors.append((tname, arr))

    entries: list[tuple[str, np.ndarray | int]] = []
    header_parts = [json.dumps({"__metadata__": {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "graph": graph_json,
        "producer": PRODUCER,
    }}, separators=(",", ":"))[:-1]]          # drop the closing brace: tensors follow
    cursor = n_pads = 0
    for tname, arr in tensors:
        begin = _align_up(cursor)
        if begin > cursor:
            pad_name = f"{PAD_PREFIX}{n_pads}"
            n_pads += 1
            header_parts.append(_tensor_json(pad_name, "U8", [begin - cursor], cursor, begin))
            entries.append((pad_name, begin - cursor))
        end = begin + arr.nbytes
        header_parts.append(_tensor_json(tname, DTYPE_CODES[str(arr.dtype)], list(arr.shape), begin, end))
        entries.append((tname, arr))
        cursor = end
    header = (",".join(header_parts) + "}").encode("utf-8")
    assert header.startswith(MAGIC)
    # Spaces after the JSON (allowed by JSON and by safetensors) put the data section on an
    # ALIGNMENT boundary, so relative offsets that are multiples of ALIGNMENT are absolute ones.
    header += b" " * (_align_up(_HEADER_LENGTH.size + len(header)) - _HEADER_LENGTH.size - len(header))
    if len(header) > MAX_HEADER_BYTES:
        raise QrtFormatError(f"{what}: the header would be {len(header)} bytes, more than "
                             f"{MAX_HEADER_BYTES} (a reader limit shared with safetensors)")
    return header, entries


def _tensor_json(name: str, code: str, shape: list[int], begin: int, end: int) -> str:
    return json.dumps(name) + ":" + json.dumps(
        {"dtype": code, "shape": [int(d) for d in shape], "data_offsets": [begin, end]},
        separators=(",", ":"))


def _write(f: BinaryIO, header: bytes, entries: list[tuple[str, np.ndarray | int]]) -> None:
    f.write(_HEADER_LENGTH.pack(len(header)))
    f.write(header)
    for _, item in entries:
        if isinstance(item, int):
            f.write(bytes(item))
        elif item.nbytes:
            f.write(item.reshape(-1).view(np.uint8))


def _align_up(n: int) -> int:
    return -(-n // ALIGNMENT) * ALIGNMENT


def _fsync_directory(directory: str) -> None:
    """Make the rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


# ==========================================================================================
# reader
# ==========================================================================================

def load(path: str | os.PathLike) -> Graph:
    """Read and fully validate a .qrt file; initializer fields are read-only numpy views into
    a read-only memory map of the file (zero-copy; the map lives as long as any array).

    Raises QrtFormatError naming the file and the problem for anything malformed, OSError if
    the file cannot be opened. Do not truncate or rewrite a file in place while a graph loaded
    from it is alive (save() replaces files by rename, which is safe)."""
    path = os.fspath(path)
    mm = _map(path, shared=True)
    try:
        meta, tensors, data_start = _parse_header(mm)
        arrays = {}
        for name, (dtype, shape, begin, end) in tensors.items():
            if _PAD_NAME.fullmatch(name):
                continue
            dt = np.dtype(dtype).newbyteorder("<")
            count = (end - begin) // dt.itemsize
            arrays[name] = np.frombuffer(mm, dtype=dt, count=count, offset=data_start + begin).reshape(shape)
        graph = _build_graph(meta["graph"], arrays)
    except _Malformed as e:
        raise QrtFormatError(f"{path}: {e}") from None
    return graph


def read_header(path: str | os.PathLike) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """The validated header, for `qrt inspect`, without building the graph.

    Returns (metadata, tensors): ``metadata`` is ``__metadata__`` as stored (string -> string;
    ``json.loads(metadata["graph"])`` is the graph dict); ``tensors`` maps each file tensor
    name, padding excluded, in file order, to {"dtype": numpy name, "shape": [ints],
    "offset": absolute file offset, "nbytes": int}. Checks everything up to (not including)
    the graph: magic, lengths, metadata, version, and every tensor entry."""
    path = os.fspath(path)
    mm = _map(path)
    try:
        meta, tensors, data_start = _parse_header(mm)
    except _Malformed as e:
        raise QrtFormatError(f"{path}: {e}") from None
    finally:
        mm.close()
    out = {name: {"dtype": dtype, "shape": list(shape), "offset": data_start + begin, "nbytes": end - begin}
           for name, (dtype, shape, begin, end) in sorted(tensors.items(), key=lambda kv: kv[1][2:])
           if not _PAD_NAME.fullmatch(name)}
    return dict(meta), out


# Live read-only maps of loaded files by (device, inode, size, mtime): loading a file again
# while a graph of it lives (many sessions of one file in one process) views the same map,
# so the process maps its bytes once; save() replaces a file by rename (a new inode), so a
# rewritten file is never served from an old map.
_MAPS: "weakref.WeakValueDictionary[tuple, mmap.mmap]" = weakref.WeakValueDictionary()
_MAPS_LOCK = threading.Lock()


def _map(path: str, shared: bool = False) -> mmap.mmap:
    """Map ``path`` read-only; header parsing and tensor views use the same snapshot. Opened
    non-blocking, so a FIFO or a device is refused at once instead of waiting for a writer.
    ``shared``: a live map of the same unchanged file is returned instead of a new one (the
    caller must then not close it)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise QrtFormatError(f"{path}: not a regular file")
        if st.st_size < _HEADER_LENGTH.size:
            raise QrtFormatError(f"{path}: file is too short ({st.st_size} bytes) to be a .qrt file: "
                                 f"it needs at least the {_HEADER_LENGTH.size}-byte header length")
        if not shared:
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        with _MAPS_LOCK:
            mm = _MAPS.get(key)
            if mm is None or mm.closed:
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                _MAPS[key] = mm
            return mm


def _looks_like_onnx(mm) -> bool:
    """An ONNX ModelProto as exporters write it: field 1 (ir_version, a small varint) first,
    then producer_name / producer_version / domain / graph / opset_import (fields 2, 3, 4, 7,
    8, length-delimited). A guess for the error message only: the file is refused either way."""
    b = bytes(mm[:3])
    return len(b) == 3 and b[0] == 0x08 and b[1] < 0x80 and b[2] in (0x12, 0x1A, 0x22, 0x3A, 0x42)


def _parse_header(mm: mmap.mmap) -> tuple[dict[str, str], dict[str, tuple], int]:
    """Check the container; returns (metadata, {name: (dtype, shape, begin, end)}, data_start)
    where begin/end are relative to data_start and already checked against the file."""
    size = len(mm)
    (n,) = _HEADER_LENGTH.unpack(mm[:_HEADER_LENGTH.size])
    head = mm[_HEADER_LENGTH.size:_HEADER_LENGTH.size + len(MAGIC)]
    if head != MAGIC:
        if _looks_like_onnx(mm):
            raise _Malformed("this is an ONNX model, not a .qrt file: convert it first, e.g. "
                             "`qrt convert MODEL.onnx -o model.qrt --quant int8` (or runtime.convert)")
        raise _Malformed(f"not a .qrt file (wrong magic: expected {MAGIC!r} at offset 8, found {head!r})")
    if n > MAX_HEADER_BYTES:
        raise _Malformed(f"header length {n} is absurd (more than {MAX_HEADER_BYTES} bytes); "
                         f"the file is corrupt")
    data_start = _HEADER_LENGTH.size + n
    if data_start > size:
        raise _Malformed(f"file is truncated: the header length says {n} bytes but only "
                         f"{size - _HEADER_LENGTH.size} follow the length field (header length larger than the file)")
    if n < len(MAGIC):
        raise _Malformed(f"header length {n} is smaller than the magic itself")
    try:
        text = mm[_HEADER_LENGTH.size:data_start].decode("utf-8")
    except UnicodeDecodeError as e:
        raise _Malformed(f"header is not valid UTF-8 ({e.reason} at byte {e.start})") from None
    top = _json_loads(text, "header")
    if not isinstance(top, dict):
        raise _Malformed("header is not a JSON object")

    meta = _check_metadata(top.get("__metadata__"))
    if len(top) - 1 > MAX_TENSORS:
        raise _Malformed(f"header lists {len(top) - 1} tensors, more than the {MAX_TENSORS} a .qrt file may "
                         f"hold (docs/FORMAT.md, Limits)")

    data_len = size - data_start
    tensors: dict[str, tuple] = {}
    for name, entry in top.items():
        if name == "__metadata__":
            continue
        tensors[name] = _check_tensor_entry(name, entry, data_start, data_len)
    _check_overlaps(tensors)
    return meta, tensors, data_start


def _json_loads(text: str, what: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except _Malformed:
        raise
    except RecursionError:
        raise _Malformed(f"{what} is not valid JSON (nested too deeply)") from None
    except ValueError as e:   # json.JSONDecodeError, or an integer too long to convert
        raise _Malformed(f"{what} is not valid JSON: {e}") from None


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads keeps the last of repeated keys; a repeated key (e.g. a second "format" after
    # the magic) would let a file say two things at once, so it is an error.
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _Malformed(f"duplicate key {k!r} in header JSON")
        out[k] = v
    return out


def _check_metadata(meta: Any) -> dict[str, str]:
    if not isinstance(meta, dict):
        raise _Malformed("header has no __metadata__ object")
    for k, v in meta.items():
        if not isinstance(v, str):
            raise _Malformed(f"__metadata__[{k!r}] is a {type(v).__name__}, not a string "
                             f"(safetensors metadata maps strings to strings)")
    # Format and version first: a newer file may lay out everything else differently.
    for key in ("format", "format_version"):
        if key not in meta:
            raise _Malformed(f"__metadata__ lacks {key!r}")
    if meta["format"] != FORMAT_NAME:
        raise _Malformed(f"__metadata__ format is {meta['format']!r}, not {FORMAT_NAME!r}")
    raw = meta["format_version"]
    if not re.fullmatch(r"[0-9]{1,18}", raw) or int(raw) < 1:
        raise _Malformed(f"unknown format version {raw!r} (versions are positive integers; "
                         f"this qrt reads 1 to {FORMAT_VERSION})")
    version = int(raw)
    if version > FORMAT_VERSION:
        raise _Malformed(f"file format version {version} is newer than this qrt reads "
                         f"(version {FORMAT_VERSION}); upgrade qrt")
    missing = [k for k in _METADATA_REQUIRED if k not in meta]
    if missing:
        raise _Malformed(f"__metadata__ lacks {', '.join(repr(k) for k in missing)}")
    return meta


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_tensor_entry(name: str, entry: Any, data_start: int, data_len: int) -> tuple:
    where = f"tensor {name!r}"
    if not isinstance(entry, dict):
        raise _Malformed(f"{where}: entry is a {type(entry).__name__}, not an object")
    missing = [k for k in _TENSOR_KEYS if k not in entry]
    if missing:
        raise _Malformed(f"{where}: entry lacks {missing}")
    extra = sorted(set(entry) - set(_TENSOR_KEYS))
    if extra:
        raise _Malformed(f"{where}: entry has unknown keys {extra}")
    code, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(code, str) or code not in CODE_DTYPES:
        raise _Malformed(f"{where}: unknown dtype code {code!r}; qrt stores {sorted(CODE_DTYPES)}")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise _Malformed(f"{where}: shape {shape!r} is not a list of non-negative integers")
    if len(shape) > _MAX_NDIM or any(d > _MAX_DIM for d in shape):
        raise _Malformed(f"{where}: shape {shape!r} is too large")
    if math.prod(max(d, 1) for d in shape) > _MAX_ELEMENTS:
        # even with a 0 in it (no bytes), numpy cannot index a shape this large
        raise _Malformed(f"{where}: shape {shape!r} is too large: the product of its non-zero "
                         f"dimensions exceeds {_MAX_ELEMENTS}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)
            and 0 <= offsets[0] <= offsets[1]):
        raise _Malformed(f"{where}: data_offsets {offsets!r} is not [begin, end] with "
                         f"0 <= begin <= end integers")
    begin, end = offsets
    dtype = CODE_DTYPES[code]
    want = math.prod(shape) * np.dtype(dtype).itemsize
    if end - begin != want:
        raise _Malformed(f"{where}: dtype/shape mismatch: {code} {shape} needs {want} bytes, "
                         f"data_offsets [{begin}, {end}] hold {end - begin}")
    if end > data_len:
        raise _Malformed(f"{where}: bytes [{begin}, {end}) of the data section are out of file bounds: "
                         f"the data section has only {data_len} bytes (file truncated?)")
    if not _PAD_NAME.fullmatch(name) and (data_start + begin) % ALIGNMENT:
        raise _Malformed(f"{where}: data starts at file offset {data_start + begin}, "
                         f"not a multiple of {ALIGNMENT}")
    return dtype, tuple(shape), begin, end


def _check_overlaps(tensors: dict[str, tuple]) -> None:
    spans = sorted((begin, end, name) for name, (_, _, begin, end) in tensors.items() if end > begin)
    for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise _Malformed(f"overlapping tensors {n0!r} [{b0}, {e0}) and {n1!r} [{b1}, {e1})")


# --- the graph JSON ----------------------------------------------------------------------

def _build_graph(graph_json: str, arrays: dict[str, np.ndarray]) -> Graph:
    d = _json_loads(graph_json, "graph JSON")
    _check_graph_dict(d)
    try:
        graph = Graph.from_dict(d, arrays)
    except GraphError as e:
        raise _Malformed(f"graph: {e}") from None
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as e:
        raise _Malformed(f"graph JSON is malformed: {type(e).__name__}: {e}") from None
    referenced = {t for desc in d["initializers"].values() for t in desc["fields"].values()}
    for name in arrays:
        if name not in referenced:
            raise _Malformed(f"unreferenced tensor {name!r}: no initializer field refers to it")
    try:
        graph.validate()
    except GraphError as e:
        raise _Malformed(f"graph: {e}") from None
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as e:
        raise _Malformed(f"graph is invalid: {type(e).__name__}: {e}") from None
    return graph


def _check_graph_dict(d: Any) -> None:
    """The schema of docs/FORMAT.md, checked before Graph.from_dict (whose str()/int()
    conversions would otherwise accept, e.g., a number as a name)."""
    if not isinstance(d, dict):
        raise _Malformed("graph JSON is not an object")
    missing = [k for k in _GRAPH_KEYS_REQUIRED if k not in d]
    if missing:
        raise _Malformed(f"graph JSON lacks keys {missing}")
    _only_keys(d, _GRAPH_KEYS, "graph JSON")
    _want(d["name"], str, "graph JSON 'name'")
    for section, cap in (("nodes", MAX_NODES), ("inputs", MAX_NODES), ("outputs", MAX_NODES),
                         ("initializers", MAX_TENSORS)):
        if isinstance(d[section], (list, dict)) and len(d[section]) > cap:
            raise _Malformed(f"graph JSON has {len(d[section])} {section}, more than the {cap} a .qrt file may "
                             f"hold (docs/FORMAT.md, Limits)")
    for section in ("inputs", "outputs"):
        _want(d[section], list, f"graph JSON {section!r}")
        for k, v in enumerate(d[section]):
            where = f"graph JSON {section}[{k}]"
            _want(v, dict, where)
            _require(v, ("name", "dtype"), where)
            _only_keys(v, ("name", "dtype", "shape"), where)
            _want(v["name"], str, f"{where} name")
            _want(v["dtype"], str, f"{where} dtype")
            shape = v.get("shape")
            if shape is not None and not (isinstance(shape, list) and all(
                    dim is None or isinstance(dim, str) or (_is_int(dim) and dim >= 0) for dim in shape)):
                raise _Malformed(f"{where} ({v['name']!r}) shape {shape!r} is not null or a list of "
                                 f"non-negative ints, strings (symbolic) and nulls (unknown)")
    _want(d["nodes"], list, "graph JSON 'nodes'")
    for k, n in enumerate(d["nodes"]):
        where = f"graph JSON nodes[{k}]"
        _want(n, dict, where)
        _require(n, ("name", "op", "inputs", "outputs"), where)
        _only_keys(n, ("name", "op", "inputs", "outputs", "attrs"), where)
        _want(n["name"], str, f"{where} name")
        _want(n["op"], str, f"{where} ({n['name']!r}) op")
        for io_key in ("inputs", "outputs"):
            if not isinstance(n[io_key], list) or not all(isinstance(x, str) for x in n[io_key]):
                raise _Malformed(f"{where} ({n['name']!r}) {io_key} is not a list of strings")
        if n.get("attrs") is not None:
            _want(n["attrs"], dict, f"{where} ({n['name']!r}) attrs")
    _want(d["initializers"], dict, "graph JSON 'initializers'")
    for name, desc in d["initializers"].items():
        where = f"graph JSON initializer {name!r}"
        _want(desc, dict, where)
        _require(desc, ("layout", "dtype", "shape", "fields"), where)
        _only_keys(desc, ("layout", "dtype", "shape", "params", "fields"), where)
        _want(desc["layout"], str, f"{where} layout")
        _want(desc["dtype"], str, f"{where} dtype")
        shape = desc["shape"]
        if not isinstance(shape, list) or not all(_is_int(x) and x >= 0 for x in shape):
            raise _Malformed(f"{where} shape {shape!r} is not a list of non-negative integers")
        if desc.get("params") is not None:
            _want(desc["params"], dict, f"{where} params")
        fields = desc["fields"]
        if not isinstance(fields, dict) or not all(isinstance(t, str) for t in fields.values()):
            raise _Malformed(f"{where} fields is not an object mapping field names to tensor names")
    if d.get("metadata") is not None:
        _want(d["metadata"], dict, "graph JSON 'metadata'")


def _want(x: Any, typ: type, where: str) -> None:
    if not isinstance(x, typ):
        names = {str: "a string", list: "a list", dict: "an object"}
        raise _Malformed(f"{where} is {type(x).__name__} {_short(x)}, expected {names[typ]}")


def _require(d: dict, keys: tuple[str, ...], where: str) -> None:
    missing = [k for k in keys if k not in d]
    if missing:
        raise _Malformed(f"{where} lacks keys {missing}")


def _only_keys(d: dict, keys: tuple[str, ...], where: str) -> None:
    # Unknown keys are errors, not ignored: a schema change bumps FORMAT_VERSION instead.
    extra = sorted(set(d) - set(keys))
    if extra:
        raise _Malformed(f"{where} has unknown keys {extra}")


def _short(x: Any) -> str:
    r = repr(x)
    return r if len(r) <= 60 else r[:57] + "..."
