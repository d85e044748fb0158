"""Fuzz of the native extension's bindings (csrc/bindings.cpp, bind_sparse.cpp, bind_int4.cpp,
bind_fused.cpp): malformed
arguments must give Python exceptions, never a crash, a hang or an out-of-bounds access.

Every binding is called with a valid argument set first (so that the mutations below reach the
deeper checks, not just the first one), then a few hundred times with one or two arguments
replaced from a seeded RNG: wrong dtypes (byte-swapped ones too), non-contiguous, Fortran-order
and read-only arrays, mismatched and empty shapes, a broadcast view of 2^40 rows (huge dims,
no memory), out-of-range values (NaN / inf / negative scales, zero points and activation
parameters out of range, indices out of range, non-monotone indptr, bad N:M metadata), None,
Python scalars of every kind including huge and negative integers, strings, and random garbage.
Bindings that this file does not know (added later) get a generic pass of garbage arguments.

The fuzz runs in a subprocess (``python -c "from tests.test_native_fuzz import run; ..."``), so
that a crash is reported as a test failure with the signal and the last case started (each
case is written to stderr before it runs), instead of killing pytest. Under the sanitizer
build (tools/sanitize.sh) the same subprocess runs with AddressSanitizer, which also catches
out-of-bounds reads that do not crash.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import traceback

import numpy as np
import pytest

from kernels import registry

_REASON = registry.backend_status("native")
pytestmark = pytest.mark.skipif(_REASON is not None, reason=f"native backend unavailable: {_REASON}")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED = 5
CASES = 1500
# bindings that take arrays get most of the cases: they have the checks worth fuzzing
HEAVY = {"Int8Weight", "int8_linear", "int8_conv2d", "int8_pointwise_conv", "depthwise_conv2d", "f32_channel_gemm", "binary_f32",
         "mean_rows_f32", "max_pool2d", "im2col",
         "apply_activation", "sparse_int8_csr", "sparse_int8_bsr", "sparse_int8_nm",
         "sparse_int8_linear", "Int4Weight", "int4_linear", "attention", "skip_layer_norm"}
# exception types a malformed call may raise: TypeError / ValueError from the binding's own
# checks and pybind11's argument conversion, OverflowError for Python ints beyond C types,
# RuntimeError for pybind11's cast errors (e.g. a shape tuple holding a string). Anything else
# (SystemError: an error return without an exception; a crash) is a bug.
ALLOWED = ("TypeError", "ValueError", "OverflowError", "RuntimeError")
TIMEOUT_S = 300


def test_bindings_survive_malformed_arguments():
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    code = f"from tests.test_native_fuzz import run; run({SEED}, {CASES})"
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=TIMEOUT_S, check=False)
    lines = res.stderr.splitlines()
    last_case = next((line for line in reversed(lines) if line.startswith("case ")), "(none)")
    # a sanitizer's report (tools/sanitize.sh), if there is one: its first lines name the bug
    report = [line for line in lines if any(k in line for k in ("ERROR:", "runtime error", "CHECK failed", "SUMMARY:"))]
    if res.returncode < 0:
        sig = signal.Signals(-res.returncode).name
        pytest.fail(f"the fuzz subprocess died of {sig} in {last_case}\n" + "\n".join(report[:6]))
    assert res.returncode == 0, f"fuzz failed (exit {res.returncode}):\n{res.stderr[-4000:]}"
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["cases"] >= CASES, summary
    assert not summary["disallowed"], summary["disallowed"][:10]
    # every known binding was called, and most of them both failed and succeeded at least once
    for name, counts in summary["calls"].items():
        assert counts["ok"] + sum(counts["raised"].values()) >= 5, (name, counts)
    assert summary["calls"]["int8_linear"]["ok"] > 0 and summary["calls"]["int8_linear"]["raised"], summary


# --- the fuzzer (runs in the subprocess) -------------------------------------------------------

_DTYPES = [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.int64, np.float16, np.float32, np.float64,
           np.bool_, np.complex64, np.dtype(">f4"), np.dtype(">i4"), np.dtype(">i8")]
_DIMS = [0, 1, 2, 3, 4, 7, 16, 63, 64, 65]
_STRINGS = ["", "auto", "none", "dynamic", "static", "relu", "gelu", "gelu_tanh", "swish", "scalar", "avx2",
            "avx512_vnni", "byte", "dword", "ell", "quads", "quad_tiles", "\x00", "x" * 300, "GELU"]
_SCALARS = [None, True, False, 0, 1, -1, 2, 3, 4, 127, 128, -128, -129, 255, 2 ** 31, -2 ** 31 - 1, 2 ** 63,
            -2 ** 63 - 1, 2 ** 100, 0.0, -0.0, 0.5, 1e-30, 1e30, math.nan, math.inf, -math.inf, b"bytes",
            [], [1, 2], [[1.0, 2.0]], (), (1,), (2, 3), (0, 5), (-1, 5), (2 ** 40, 2 ** 40), ("a", 1), {}, object()]


def _random_array(rng):
    dtype = _DTYPES[rng.integers(len(_DTYPES))]
    shape = tuple(int(_DIMS[rng.integers(len(_DIMS))]) for _ in range(rng.integers(0, 4)))
    a = np.asarray(rng.standard_normal(shape) * 10.0 ** rng.integers(-3, 4)).astype(dtype)   # 0-d stays an array
    return _variant(rng, a)


def _variant(rng, a):
    """a, or a malformed view or copy of it."""
    if a.size > 1 << 20:
        return a                  # already a huge broadcast view: copying it would need terabytes
    kind = rng.integers(8)
    if kind == 0 and a.ndim >= 1 and a.shape[-1] >= 2:
        return a[..., ::2]                                   # non-contiguous
    if kind == 1 and a.ndim >= 2:
        return np.asfortranarray(a)
    if kind == 2:
        a = a.copy()
        a.flags.writeable = False
        return a
    if kind == 3 and a.dtype.kind == "f" and a.size:
        a = a.copy()
        a.flat[rng.integers(a.size)] = [np.nan, np.inf, -np.inf, 0.0][rng.integers(4)]
        return a
    if kind == 4 and a.ndim >= 1:
        return a[:0]                                         # empty
    if kind == 5 and a.ndim >= 1 and a.size:
        # a broadcast view of 2^40 leading rows: huge dims, no memory (stride 0: not contiguous)
        return np.broadcast_to(a.reshape(-1)[:1].reshape((1,) * a.ndim), (2 ** 40,) + (1,) * (a.ndim - 1))
    if kind == 6:
        return a.astype(a.dtype.newbyteorder())             # byte-swapped, same values
    return a


def _garbage(rng):
    r = rng.random()
    if r < 0.45:
        return _random_array(rng)
    if r < 0.6:
        return _STRINGS[rng.integers(len(_STRINGS))]
    return _SCALARS[rng.integers(len(_SCALARS))]


def _mutate_array(rng, a):
    """A near miss of a valid array: the right dtype with a wrong shape, the right shape with a
    wrong dtype, a malformed view, or values out of range."""
    a = np.asarray(a)
    if a.size > 1 << 20:
        return a                  # as in _variant
    kind = rng.integers(6)
    if kind == 0:
        shape = list(a.shape) or [1]
        i = rng.integers(len(shape))
        shape[i] = max(0, shape[i] + int(rng.choice([-1, 1, 5])))
        return np.zeros(shape, a.dtype)
    if kind == 1:
        return a.astype(_DTYPES[rng.integers(len(_DTYPES))])
    if kind == 2:
        return _variant(rng, a)
    if kind == 3 and a.size:
        b = a.copy()
        if b.dtype.kind == "f":
            b.flat[rng.integers(b.size)] = [np.nan, np.inf, -1.0, 0.0, 1e38][rng.integers(5)]
        elif b.dtype.kind in "iu":
            info = np.iinfo(b.dtype)
            b.flat[rng.integers(b.size)] = [info.max, info.min, 0, 1][rng.integers(4)]
        return b
    if kind == 4 and a.ndim:
        return a.reshape(-1) if a.ndim > 1 else a.reshape(1, -1)
    return a[::-1] if a.ndim else a


def _mutate(rng, value):
    if isinstance(value, np.ndarray) and rng.random() < 0.7:
        return _mutate_array(rng, value)
    return _garbage(rng)


def _valid_cases(rng):
    """(name, callable, args, kwargs) with valid arguments for every binding known here."""
    from kernels.native_cpu import _native
    from kernels.core.layouts import pack_bsr, pack_csr, pack_nm

    n, k, m = int(rng.integers(1, 70)), int(rng.integers(1, 100)), int(rng.integers(0, 9))
    qdata = rng.integers(-128, 128, (n, k)).astype(np.int8)
    scale = (rng.random(n) + 0.01).astype(np.float32)
    zp = rng.integers(-128, 128, n).astype(np.int8)
    w = _native.Int8Weight(qdata, scale, zp)
    x = rng.standard_normal((m, k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    out = np.empty((m, n), np.float32)
    cases = [
        ("Int8Weight", _native.Int8Weight, [qdata, scale, zp], {}),
        ("int8_linear", _native.int8_linear, [w, x, bias, "static", 0.05, 3, out, "gelu"], {}),
        ("apply_activation", _native.apply_activation, [rng.standard_normal(37).astype(np.float32), "gelu_tanh"], {}),
        ("set_threads", _native.set_threads, [2], {}),
        ("get_threads", _native.get_threads, [], {}),
        ("set_int8_isa", _native.set_int8_isa, ["auto"], {}),
        ("int8_isa", _native.int8_isa, [], {}),
        ("int8_isas", _native.int8_isas, [], {}),
        ("measure_peaks", _native.measure_peaks, [1, 1e-4], {}),
        ("cpu_features", _native.cpu_features, [], {}),
        ("cpu_brand", _native.cpu_brand, [], {}),
        ("build_info", _native.build_info, [], {}),
    ]
    if hasattr(_native, "int8_conv2d"):
        # the int8 Conv (csrc/bind_cnn.cpp): two groups of a 3 x 2 window over 2 channels each
        wc = _native.Int8Weight(rng.integers(-128, 128, (3, 12)).astype(np.int8), np.ones(3, np.float32), None)
        xc = rng.standard_normal((int(rng.integers(0, 3)), 4, 5, 6)).astype(np.float32)
        cases.append(("int8_conv2d", _native.int8_conv2d,
                      [[wc, wc], xc, [3, 2], [1, 2], [1, 0, 1, 1], [1, 1], rng.standard_normal(6).astype(np.float32),
                       "static", 0.05, 3, "relu"], {}))
        cases.append(("int8_pointwise_conv", _native.int8_pointwise_conv,
                      [wc, rng.standard_normal((int(rng.integers(0, 3)), 12, 70)).astype(np.float32),
                       rng.standard_normal(3).astype(np.float32), "dynamic", 1.0, 0, "gelu"], {}))
        xd = rng.standard_normal((int(rng.integers(0, 3)), 3, 7, 6)).astype(np.float32)
        cases += [
            ("depthwise_conv2d", _native.depthwise_conv2d,
             [xd, rng.standard_normal((6, 1, 3, 3)).astype(np.float32), [2, 1], [1, 1, 0, 2], [1, 2],
              rng.standard_normal(6).astype(np.float32), "hard_swish"], {}),
            ("f32_channel_gemm", _native.f32_channel_gemm,
             [rng.standard_normal((int(rng.integers(0, 3)), 5, 37)).astype(np.float32),
              rng.standard_normal((11, 5)).astype(np.float32), rng.standard_normal(11).astype(np.float32),
              "relu"], {}),
            ("binary_f32", _native.binary_f32,
             ["mul", rng.standard_normal(12).astype(np.float32), 0, rng.standard_normal(3).astype(np.float32), 1,
              3, 4], {}),
            ("mean_rows_f32", _native.mean_rows_f32, [rng.standard_normal((3, 7)).astype(np.float32)], {}),
            ("max_pool2d", _native.max_pool2d, [xd, [3, 2], [2, 2], [1, 0, 1, 1], [1, 1], [4, 3]], {}),
            ("hard_sigmoid", _native.hard_sigmoid, [xd, 0.2, 0.5, True], {}),
            ("sigmoid", _native.sigmoid, [xd], {}),
            ("im2col", _native.im2col, [xd, [3, 2], [2, 1], [1, 1, 0, 2], [1, 2]], {}),
        ]
    if hasattr(_native, "sparse_int8_csr"):
        # the sparse bindings (csrc/bind_sparse.cpp), with their fields as kernels/core/layouts.py
        # stores them and kernels/native_cpu/sparse.py passes them
        ns, ks = 4 * int(rng.integers(1, 17)), 8 * int(rng.integers(1, 13))
        dense = rng.standard_normal((ns, ks)).astype(np.float32)
        mask = rng.random((ns, ks)) < 0.3
        s_scale = lambda t: np.ascontiguousarray(np.broadcast_to(t.fields["scale"], (ns,)), np.float32)  # noqa: E731
        csr = pack_csr("w", dense, mask, quant="int8")
        bsr = pack_bsr("w", dense, mask, block_shape=(4, 4), quant="int8")
        groups = np.abs(dense).reshape(ns, ks // 4, 4)
        nm_mask = (groups >= np.sort(groups, axis=-1)[..., 2:3]).reshape(ns, ks)
        nm = pack_nm("w", dense, nm_mask, n=2, m=4, quant="int8")
        f = csr.fields
        csr_args = [f["indptr"], f["indices"], np.ascontiguousarray(f["qdata"]), s_scale(csr), (ns, ks), "auto", -1]
        f = bsr.fields
        bsr_args = [f["indptr"], f["indices"], np.ascontiguousarray(f["qdata"]), s_scale(bsr), (ns, ks), "auto", -1]
        f = nm.fields
        nm_args = [f["meta"], np.ascontiguousarray(f["qdata"]), s_scale(nm), (ns, ks), 2, 4, "auto", -1]
        sw = _native.sparse_int8_csr(*csr_args)
        xs = rng.standard_normal((m, ks)).astype(np.float32)
        cases += [
            ("sparse_int8_csr", _native.sparse_int8_csr, csr_args, {}),
            ("sparse_int8_bsr", _native.sparse_int8_bsr, bsr_args, {}),
            ("sparse_int8_nm", _native.sparse_int8_nm, nm_args, {}),
            ("sparse_int8_linear", _native.sparse_int8_linear,
             [sw, xs, rng.standard_normal(ns).astype(np.float32), "dynamic", 1.0, 0, None, "auto"], {}),
            ("SparseInt8Weight.path", sw.path, [m], {}),
            ("sparse_has_vbmi", _native.sparse_has_vbmi, [], {}),
        ]
    if hasattr(_native, "int4_linear"):
        # the int4 weight-only Linear (csrc/bind_int4.cpp), fields as kernels/core/layouts.py stores them
        from kernels.core.layouts import pack_int4_grouped
        n4, k4 = int(rng.integers(1, 40)), 32 * int(rng.integers(1, 5))
        t4 = pack_int4_grouped("w", rng.standard_normal((n4, k4)).astype(np.float32), group_size=32, symmetric=False)
        f = t4.fields
        int4_args = [np.ascontiguousarray(f["qdata"]), np.ascontiguousarray(f["scale"], np.float32),
                     np.ascontiguousarray(f["zero_point"]), (n4, k4), 32]
        w4 = _native.Int4Weight(*int4_args)
        cases += [
            ("Int4Weight", _native.Int4Weight, int4_args, {}),
            ("int4_linear", _native.int4_linear,
             [w4, rng.standard_normal((m, k4)).astype(np.float32), rng.standard_normal(n4).astype(np.float32)], {}),
        ]
    if hasattr(_native, "attention"):
        # the fused BERT ops (csrc/bind_fused.cpp)
        b, sq, sk, h, d = (int(v) for v in rng.integers(1, 5, 5))
        qkv = [rng.standard_normal((b, s_, h * d)).astype(np.float32) for s_ in (sq, sk, sk)]
        mask = rng.standard_normal((b, 1, sq, sk)).astype(np.float32)
        xs2 = rng.standard_normal((m + 1, 24)).astype(np.float32)
        cases += [
            ("attention", _native.attention, [*qkv, mask, d, 0.5], {}),
            ("skip_layer_norm", _native.skip_layer_norm,
             [xs2, xs2.copy(), np.ones(24, np.float32), np.zeros(24, np.float32), 1e-5], {}),
            ("exp32", _native.exp32, [-rng.random(19).astype(np.float32)], {}),
        ]
    return cases


# measure_peaks' arguments are drawn from these only: a valid thread count with a valid time
# would spend real time (and a random valid count could start thousands of threads)
_PEAK_THREADS = [None, -5, 0, 1, 2, 2 ** 31, 2 ** 70, 1.5, "2", 5000]
_PEAK_SECONDS = [None, -1.0, 0.0, 1e-4, math.nan, math.inf, 1e9, "x", -0.0]
# set_threads: at most a few threads (the cases run small problems; each call is undone)
_THREADS = [None, -1, 0, 1, 2, 3, 64, 2 ** 31, 2 ** 40, -2 ** 63, 1.5, "1", math.nan]


def _short(v) -> str:
    if isinstance(v, np.ndarray):
        return f"ndarray({v.shape}, {v.dtype}, C={v.flags.c_contiguous}, W={v.flags.writeable})"
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


def run(seed: int, cases: int) -> None:
    """The fuzz loop; prints one JSON summary line on stdout."""
    from kernels.native_cpu import _native

    rng = np.random.default_rng(seed)
    isas = list(_native.int8_isas())
    calls: dict[str, dict] = {}
    disallowed: list[str] = []
    done = 0

    def call(name, fn, args, kwargs, must_succeed=False):
        nonlocal done
        sys.stderr.write(f"case {done}: {name}({', '.join(map(_short, args))}"
                         f"{', ' if kwargs else ''}{', '.join(f'{k}={_short(v)}' for k, v in kwargs.items())})\n")
        sys.stderr.flush()
        done += 1
        counts = calls.setdefault(name, {"ok": 0, "raised": {}})
        try:
            fn(*args, **kwargs)
            counts["ok"] += 1
        except Exception as e:  # noqa: BLE001 - the point: which exceptions come out
            kind = type(e).__name__
            counts["raised"][kind] = counts["raised"].get(kind, 0) + 1
            if must_succeed or kind not in ALLOWED:
                disallowed.append(f"{name}: {kind}: {e}" + (" (a valid call)" if must_succeed else "")
                                  + "\n" + traceback.format_exc(limit=2))
        finally:
            if name == "set_threads":
                _native.set_threads(2)

    # a valid call of each binding, on every code path
    for isa in isas:
        _native.set_int8_isa(isa)
        for name, fn, args, kwargs in _valid_cases(rng):
            call(name, fn, args, kwargs, must_succeed=True)
    known = {name for name, *_ in _valid_cases(rng)}

    while done < cases:
        if rng.random() < 0.05:
            _native.set_int8_isa(isas[rng.integers(len(isas))])
        valid = _valid_cases(rng)
        weights = np.array([6.0 if case[0] in HEAVY else 1.0 for case in valid])
        name, fn, args, kwargs = valid[rng.choice(len(valid), p=weights / weights.sum())]
        args = list(args)
        if name == "measure_peaks":
            args = [_PEAK_THREADS[rng.integers(len(_PEAK_THREADS))], _PEAK_SECONDS[rng.integers(len(_PEAK_SECONDS))]]
        elif name == "set_threads":
            args = [_THREADS[rng.integers(len(_THREADS))]]
        elif args and rng.random() < 0.9:
            for _ in range(1 + int(rng.random() < 0.3)):     # one argument, sometimes two
                i = int(rng.integers(len(args)))
                args[i] = _mutate(rng, args[i])
            if rng.random() < 0.1:
                args = args[: int(rng.integers(len(args) + 1))]   # too few arguments
        else:
            args = args + [_garbage(rng)]                   # too many arguments
        call(name, fn, args, kwargs)

    # bindings added after this file was written: garbage positional arguments only
    for attr in sorted(dir(_native)):
        obj = getattr(_native, attr)
        if attr.startswith("_") or attr in known or attr in ("measure_peaks", "set_threads") or not callable(obj):
            continue
        if isinstance(obj, type):
            continue      # classes: constructed through their factories above
        for _ in range(10):
            call(attr, obj, [_garbage(rng) for _ in range(int(rng.integers(0, 4)))], {})

    _native.set_int8_isa("auto")
    sys.stdout.write(json.dumps({"cases": done, "calls": calls, "disallowed": disallowed}) + "\n")
