"""CuPy backend (kernels/cupy_gpu): CUDA kernels against the numpy references.

Each kernel test runs twice, as parameter ``device``:

* ``cuda``: the registered kernels (kernels.registry, backend "cupy") on a real GPU; skipped
  with the backend's probe reason where cupy or a CUDA device is missing.
* ``emulated``: the same wrappers and the same CUDA sources, compiled with g++ against
  tests/cuda_shim.h and run on the CPU (one fiber per CUDA thread, real barrier and shuffle
  semantics, a barrier or shuffle not reached by every thread is an error), with a numpy
  stand-in for the few cupy functions the wrappers call (``FakeCupy``). Every kernel argument
  is checked against the kernel's C signature (pointer dtypes, scalar types: CuPy passes a
  numpy scalar by its dtype, so an np.int64 for an ``int`` would be garbage on a GPU).
  Skipped where g++ is missing. What it cannot check: CUDA's own math functions (glibc's are
  used), memory races between warps, performance, NVRTC itself (test_sources_compile_with_nvcc
  compiles every source with nvcc where the CUDA toolkit is installed).

Outputs are poisoned (NaN, or 0x5A bytes) before every kernel runs, inputs are fresh random
draws per case, shapes are awkward (M = 1, K not a multiple of 32 or of the 8-row tile, empty
rows, 0% and 100% sparsity). Tolerances are named below with the reason for each value.
Without a GPU the host-side parts are tested as well: the load-time weight preparation
(kernels/cupy_gpu/host.py) against the layouts' to_dense, the probe's reasons, the sources and
the kernel names the wrappers launch.
"""
from __future__ import annotations

import ast
import atexit
import ctypes
import hashlib
import importlib
import re
import shutil
import subprocess
import sys
import tempfile
import types
import zlib
from pathlib import Path

import numpy as np
import pytest

import runtime
from kernels import registry
from kernels.core import device as core_device
from kernels.core import layouts
from kernels.gemm_front import GEMM_ACTIVATIONS
from runtime.convert import prune
from tests.sparse_cases import pack_sparse_case
from tests.test_fusion import ATTENTION_RTOL, MASK_SHAPES, _attention_case, _rel

# Importing the package registers its kernels; the registry forgets them again when the probe
# fails, which backend_status (called first) takes care of.
_REASON = registry.backend_status("cupy")
cupy_gpu = importlib.import_module("kernels.cupy_gpu")
from kernels.cupy_gpu import _common, host  # noqa: E402

GXX = shutil.which("g++")
NVCC = shutil.which("nvcc")
SHIM = Path(__file__).with_name("cuda_shim.h")
PACKAGE_DIR = Path(cupy_gpu.__file__).parent

# --- tolerances -------------------------------------------------------------------------------
# int8 Linear, activation none / relu: exact int32 sum + the reference's float64 epilogue in the
# same order (common.cuh int8_epilogue, no FMA contraction): identical bits.
INT8_ATOL = 0.0
# int8 Linear with a gelu epilogue: float64 GELU with CUDA's erf / tanh (within 2 float64 ulp of
# the reference's) rounded to float32: at most one float32 ulp apart (double rounding); for
# very negative inputs the reference's own 0.5 x (1 + tanh(u)) (or 1 + erf) cancels, so one
# float64 ulp of tanh there is ~1e-16 |x| absolute: the floor of tests/test_fusion.py GELU_ATOL.
EPILOGUE_GELU_ULPS = 1
EPILOGUE_GELU_ATOL = 1e-12
# float path (act_quant "none"): a float32 dot product of n terms in any order is within
# (n - 1) * 2^-24 * sum |x_k w_k| of the exact one; + the bias rounding and the final rounding.
FLOAT_ERR_PER_TERM = 2.0 ** -24
# LayerNorm: float64 statistics and affine step rounded once: one float32 ulp, plus the
# float64 error of (x - mean) * rstd relative to the row's scale (1e-16 * |mean| / std,
# 1e-12 for the offset rows below), which a near-zero output cannot hide in its own ulp.
LN_ULPS = 1
LN_ATOL = 1e-10
# Softmax: expf of a float32-rounded argument d (error |d| e^d 2^-24 <= 2^-24 / e), expf's own
# 2 ulp, the float64 sum and the product with 1 / sum rounded: about 8 * 2^-24 per element.
SOFTMAX_ATOL = 8 * 2.0 ** -24
# float32 Gelu op (gelu.cu): erfcf / expf (4 / 2 ulp on CUDA) of a float32-rounded argument,
# amplified by erfc's condition number (~2 a^2) or the logistic's (~|2u|), which grow into the
# negative tail: 2.9e-6 relative at worst where |GELU(x)| >= 1e-8 (measured over [-12, 12],
# emulated); smaller values are covered by the absolute floor (the reference itself cancels
# there, ~1e-16 |x|).
GELU_F32_RTOL = 3e-6
GELU_F32_ATOL = 1e-12

STATIC = {"act_quant": "static", "act_scale": 0.037, "act_zero_point": -7}
ACTS = {"dynamic": {"act_quant": "dynamic"}, "static": STATIC,
        "static_z0": {"act_quant": "static", "act_scale": 0.05, "act_zero_point": 0},
        "none": {"act_quant": "none"}}

REQUIRED_KERNELS = {("Linear", "csr"), ("Linear", "nm"), ("LayerNormalization", "dense"),
                    ("SkipLayerNormalization", "dense"), ("Softmax", "dense"), ("Gelu", "dense"),
                    ("Attention", "dense"), ("Split", "dense")}


def _rng(*key) -> np.random.Generator:
    """A fresh generator per test case, reproducible across runs (str hashes are salted)."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _host(a) -> np.ndarray:
    """A kernel output (cupy array on a GPU, numpy under emulation) as numpy."""
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


def _poison(a) -> None:
    if np.dtype(a.dtype).kind == "f":
        a.fill(np.nan)
    else:
        a.view(np.uint8).fill(0x5A)


# --- the CPU emulation of the CUDA sources ---------------------------------------------------

_KERNEL_DECL = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)', re.S)
_POINTEE = {"float": np.float32, "double": np.float64, "signed char": np.int8, "int": np.int32,
            "long long": np.int64, "unsigned char": np.uint8}
_SCALARS = {"int": (np.int32, ctypes.c_int), "long long": (np.int64, ctypes.c_longlong),
            "float": (np.float32, ctypes.c_float), "double": (np.float64, ctypes.c_double)}


def kernel_signatures(source: str) -> dict[str, list[tuple[str, str]]]:
    """name -> [(C type, parameter name)] of every ``extern "C" __global__`` function."""
    out = {}
    for name, params in _KERNEL_DECL.findall(source):
        plist = []
        for p in params.split(","):
            p = " ".join(p.replace("__restrict__", " ").replace("*", "* ").split())
            ctype, pname = p.rsplit(" ", 1)
            plist.append((ctype.replace(" *", "*"), pname))
        out[name] = plist
    return out


def _base_type(ctype: str) -> str:
    return ctype.removeprefix("const ").rstrip("*").strip()


_EMU_DIR = Path(tempfile.mkdtemp(prefix="qrt-cuda-emu-"))
atexit.register(shutil.rmtree, _EMU_DIR, ignore_errors=True)
_EMU_LIBS: dict[str, tuple[ctypes.CDLL, dict]] = {}


def emulated_library(code: str) -> tuple[ctypes.CDLL, dict]:
    """``code`` (a compiled_source) built with g++ against cuda_shim.h, with one launcher per
    kernel; cached per process."""
    key = hashlib.sha256(code.encode()).hexdigest()[:16]
    if key not in _EMU_LIBS:
        sigs = kernel_signatures(code)
        lines = [code, 'extern "C" const char* qrt_emu_error() { return qrt_emu::error.c_str(); }']
        for name, params in sigs.items():
            decl = ", ".join(f"{t} {n}" for t, n in params)
            args = ", ".join(n for _, n in params)
            lines.append(f'extern "C" int qrt_launch_{name}(unsigned gx, unsigned gy, unsigned gz, unsigned bx, '
                         f'unsigned by, unsigned bz, {decl}) {{ return qrt_emu::launch(dim3{{gx, gy, gz}}, '
                         f'dim3{{bx, by, bz}}, [&] {{ {name}({args}); }}); }}')
        src, lib = _EMU_DIR / f"{key}.cpp", _EMU_DIR / f"{key}.so"
        src.write_text("\n".join(lines))
        r = subprocess.run([GXX, "-std=c++17", "-O2", "-fPIC", "-shared", "-ffp-contract=off", "-fno-fast-math",
                            "-Wall", "-Wno-unknown-pragmas", "-Wno-unused-function", "-include", str(SHIM),
                            "-o", str(lib), str(src)], capture_output=True, text=True)
        if r.returncode or "warning" in r.stderr:
            raise AssertionError(f"g++ with tests/cuda_shim.h failed or warned:\n{r.stderr[-4000:]}")
        dll = ctypes.CDLL(str(lib))
        dll.qrt_emu_error.restype = ctypes.c_char_p
        _EMU_LIBS[key] = (dll, sigs)
    return _EMU_LIBS[key]


class EmulatedKernel:
    """cupy.RawKernel's call, on the CPU: kernel(grid, block, args)."""

    def __init__(self, dll, name: str, params: list[tuple[str, str]]):
        self.dll, self.name, self.params = dll, name, params
        self.fn = getattr(dll, f"qrt_launch_{name}")
        self.fn.restype = ctypes.c_int
        self.fn.argtypes = [ctypes.c_uint] * 6 + [ctypes.c_void_p if t.endswith("*") else _SCALARS[t][1]
                                                  for t, _ in params]

    def __call__(self, grid, block, args, shared_mem=0):
        assert shared_mem == 0, "the qrt kernels use static shared memory only"
        if len(args) != len(self.params):
            raise TypeError(f"{self.name}: {len(args)} arguments for {len(self.params)} parameters")
        conv = []
        for (ctype, pname), a in zip(self.params, args):
            if ctype.endswith("*"):
                want = np.dtype(_POINTEE[_base_type(ctype)])
                if not isinstance(a, np.ndarray) or a.dtype != want:
                    raise TypeError(f"{self.name}: parameter {pname} is {ctype}, got "
                                    f"{getattr(a, 'dtype', type(a).__name__)}")
                if not ctype.startswith("const") and not a.flags.writeable:
                    raise TypeError(f"{self.name}: output parameter {pname} got a read-only array")
                conv.append(a.ctypes.data)
            else:
                want_t = _SCALARS[ctype][0]
                if not isinstance(a, np.generic) or a.dtype != np.dtype(want_t):
                    raise TypeError(f"{self.name}: parameter {pname} is {ctype}: pass np.{np.dtype(want_t).name}, "
                                    f"got {type(a).__name__}")
                conv.append(a.item())
        grid = tuple(grid) + (1,) * (3 - len(grid))
        block = tuple(block) + (1,) * (3 - len(block))
        if self.fn(*grid, *block, *conv):
            raise RuntimeError(f"{self.name}: {self.dll.qrt_emu_error().decode()}")


class EmulatedModule:
    """cupy.RawModule on the CPU: compiles ``code`` with g++ and the shim."""

    def __init__(self, code: str, options=()):
        self.dll, self.sigs = emulated_library(code)

    def get_function(self, name: str) -> EmulatedKernel:
        if name not in self.sigs:
            raise AttributeError(f"no extern \"C\" __global__ function {name!r} in the module")
        return EmulatedKernel(self.dll, name, self.sigs[name])


def _poisoned_empty(shape, dtype=np.float32):
    a = np.empty(shape, dtype=dtype)
    _poison(a)
    return a


FAKE_CUPY = types.SimpleNamespace(
    __name__="fake_cupy", ndarray=np.ndarray, asarray=np.asarray, ascontiguousarray=np.ascontiguousarray,
    empty=_poisoned_empty, zeros=np.zeros, broadcast_to=np.broadcast_to, matmul=np.matmul,
    moveaxis=np.moveaxis, clip=np.clip, RawModule=EmulatedModule,
    cuda=types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=lambda: 1)))


class Device:
    def __init__(self, kind: str):
        self.kind = kind

    def factory(self, op: str, layout: str = "dense"):
        if self.kind == "cuda":
            f = registry.lookup(op, layout, "cupy")
            assert f is cupy_gpu.FACTORIES[(op, layout)]
            return f
        return cupy_gpu.FACTORIES[(op, layout)]

    def build(self, op: str, attrs: dict, weights: dict | None = None, layout: str = "dense"):
        return self.factory(op, layout)(registry.fill_attrs(op, attrs), weights or {})


@pytest.fixture(params=["cuda", "emulated"])
def device(request, monkeypatch):
    if request.param == "cuda":
        if _REASON is not None:
            pytest.skip(f"cupy backend unavailable: {_REASON}")
        cp = _common.cupy()
        real_empty = cp.empty

        def poisoned(shape, dtype=np.float32, *args, **kwargs):
            a = real_empty(shape, dtype, *args, **kwargs)
            _poison(a)
            return a
        monkeypatch.setattr(cp, "empty", poisoned)
    else:
        if GXX is None:
            pytest.skip("g++ not found: the CPU emulation of the CUDA kernels needs it")
        monkeypatch.setattr(_common, "_CUPY", FAKE_CUPY)
    return Device(request.param)


# --- backend, probe, sources ---------------------------------------------------------------------

def test_factories_are_the_required_kernels():
    assert set(cupy_gpu.FACTORIES) == REQUIRED_KERNELS
    assert cupy_gpu.FACTORIES[("Linear", "csr")].fused_activations == GEMM_ACTIVATIONS
    if _REASON is None:
        assert set(registry.kernels("cupy")) == {(op, layout, "cupy") for op, layout in REQUIRED_KERNELS}
    else:
        assert registry.kernels("cupy") == []          # forgotten: the probe failed


def test_session_hooks(device):
    """kernels.registry.backend_device reads DEVICE; the session uploads feeds with to_device."""
    assert cupy_gpu.DEVICE == "cuda"
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    d = cupy_gpu.to_device(x)
    assert tuple(d.shape) == (2, 3) and np.array_equal(_host(d), x)
    if device.kind == "cuda":
        assert registry.backend_device("cupy") == "cuda" and not isinstance(d, np.ndarray)


def test_available_backends_gives_the_probe_reason():
    reason = cupy_gpu.probe()
    assert runtime.available_backends()["cupy"] == reason
    assert reason is None or ("\n" not in reason and reason)


@pytest.fixture
def gpu_present(monkeypatch):
    """The probe as on a machine with an NVIDIA GPU: what it says next depends on cupy."""
    monkeypatch.setattr(core_device, "nvidia_gpu_visible", lambda: True)


def test_probe_reason_without_a_gpu_is_the_gpu_whatever_is_installed(monkeypatch):
    monkeypatch.setattr(core_device, "nvidia_gpu_visible", lambda: False)
    monkeypatch.setitem(sys.modules, "cupy", None)
    assert cupy_gpu.probe() == "no CUDA GPU on this machine (no NVIDIA device found)"


def test_probe_reason_without_cupy(monkeypatch, gpu_present):
    monkeypatch.setitem(sys.modules, "cupy", None)            # import cupy -> ModuleNotFoundError
    assert cupy_gpu.probe() == "cupy is not installed (pip install cupy-cuda12x)"


def test_probe_reason_when_cupy_cannot_load(monkeypatch, gpu_present):
    class Broken:
        def find_spec(self, name, path=None, target=None):
            if name == "cupy":
                raise ImportError("libcudart.so.12: cannot open shared object file\n(second line)")
    monkeypatch.delitem(sys.modules, "cupy", raising=False)
    monkeypatch.setattr(sys, "meta_path", [Broken(), *sys.meta_path])
    assert cupy_gpu.probe() == ("cupy failed to import: ImportError: libcudart.so.12: cannot open shared object "
                                "file (second line)")


@pytest.mark.parametrize("count, want", [(0, "no CUDA device: cupy.cuda.runtime.getDeviceCount() is 0"),
                                         (RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected"),
                                          "no CUDA device: RuntimeError: cudaErrorNoDevice: no CUDA-capable device "
                                          "is detected"),
                                         (3, None)])
def test_probe_reason_without_a_device(monkeypatch, gpu_present, count, want):
    def get_device_count():
        if isinstance(count, Exception):
            raise count
        return count
    fake = types.ModuleType("cupy")
    fake.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=get_device_count))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    assert cupy_gpu.probe() == want


def test_importing_the_package_does_not_import_cupy():
    code = ("import sys; sys.modules['cupy'] = None; from kernels.core import device; "
            "device.nvidia_gpu_visible = lambda: True; import kernels.cupy_gpu as c; "
            "from kernels import registry; print(registry.backend_status('cupy'))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "cupy is not installed (pip install cupy-cuda12x)"


CU_FILES = ("csr_spmm_int8.cu", "nm_int8.cu", "quantize.cu", "layer_norm.cu", "softmax.cu", "gelu.cu")


def test_sources_are_listed():
    src = cupy_gpu.sources()
    assert set(src) == {*CU_FILES, "common.cuh"}
    for name, text in src.items():
        assert text == (PACKAGE_DIR / name).read_text(encoding="utf-8") and text.strip()
        assert not re.search(r"^\s*#\s*include", text, re.M), f"{name}: NVRTC has no C library headers; common.cuh is prepended instead"
    for name in CU_FILES:
        assert _common.compiled_source(name).startswith(src["common.cuh"])
    with pytest.raises(ValueError, match="no CUDA source"):
        _common.compiled_source("common.cuh")


def _launches() -> list[tuple[str, str, str]]:
    """(python file, .cu file, kernel) of every ``launch(...)`` / ``kernel(...)`` call in the
    package; the names must be string literals."""
    found = []
    for py in sorted(PACKAGE_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(py.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("launch", "kernel") \
                    and py.name != "_common.py":
                names = node.args[:2]
                assert all(isinstance(a, ast.Constant) and isinstance(a.value, str) for a in names), \
                    f"{py.name}:{node.lineno}: launch names must be string literals (checked here)"
                found.append((py.name, names[0].value, names[1].value))
    return found


def test_every_launched_kernel_exists_and_every_kernel_is_launched():
    launches = _launches()
    declared = {(name, fn) for name in CU_FILES for fn in kernel_signatures(_common.compiled_source(name))}
    for py, cu, fn in launches:
        assert (cu, fn) in declared, f"{py} launches {fn!r} of {cu}, which declares no such extern \"C\" __global__"
    assert {(cu, fn) for _, cu, fn in launches} == declared, "a kernel nothing launches"


def test_activation_codes_match_common_cuh():
    defines = dict(re.findall(r"#define QRT_ACT_(\w+) (\d+)", cupy_gpu.sources()["common.cuh"]))
    assert {k.lower(): int(v) for k, v in defines.items()} == _common.ACTIVATION_CODES
    assert tuple(_common.ACTIVATION_CODES) == ("none",) + GEMM_ACTIVATIONS   # the GEMM epilogues'


@pytest.mark.skipif(NVCC is None, reason="nvcc not found (CUDA toolkit not installed)")
@pytest.mark.parametrize("name", CU_FILES)
def test_sources_compile_with_nvcc(name, tmp_path):
    """Every translation unit NVRTC would compile builds for sm_80 with nvcc (front end, NVVM
    and ptxas), without a warning."""
    src = tmp_path / name
    src.write_text(_common.compiled_source(name))
    r = subprocess.run([NVCC, "-arch=sm_80", "-cubin", "-Werror", "all-warnings", "-o", str(tmp_path / "out.cubin"),
                        str(src)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-4000:]


@pytest.mark.skipif(GXX is None, reason="g++ not found")
@pytest.mark.parametrize("name", CU_FILES)
def test_sources_compile_with_gxx_and_the_shim(name):
    _, sigs = emulated_library(_common.compiled_source(name))
    assert sigs


# --- host-side weight preparation (numpy only) ------------------------------------------------

CSR_CASES = [(5, 8, "magnitude0.7"), (7, 300, "empty_rows"), (3, 70000, "magnitude0.999"), (4, 33, "dense"),
             (6, 17, "all_pruned"), (9, 40, "explicit_zeros")]


@pytest.mark.parametrize("n, k, kind", CSR_CASES)
@pytest.mark.parametrize("quant", ["none", "int8"])
def test_csr_host_arrays_match_to_dense(n, k, kind, quant):
    t = pack_sparse_case(_rng("csr-host", n, k, kind, quant), "csr", n, k, kind, quant=quant)
    indptr, indices = host.csr_device_arrays(t)
    assert indptr.dtype == np.int64 and indices.dtype == np.int32
    assert indptr.flags.c_contiguous and indices.flags.c_contiguous
    assert np.array_equal(indptr, t.fields["indptr"]) and np.array_equal(indices, t.fields["indices"])
    want_idx = "uint8" if k <= 256 else "uint16" if k <= 65536 else "int32"
    assert str(t.fields["indices"].dtype) == want_idx             # every stored index width is covered
    np.testing.assert_array_equal(host.dense_from_device_arrays(t, host.float_values(t)), t.to_dense())
    if quant == "int8":
        np.testing.assert_array_equal(host.dense_from_device_arrays(t, host.stored_int8(t).astype(np.int64)),
                                      layouts.int_weight(t).q)
        assert np.array_equal(host.weight_scale64(t), t.fields["scale"].astype(np.float64))


def test_csr_host_arrays_widen_an_int64_indptr():
    t = pack_sparse_case(_rng("csr-int64"), "csr", 6, 20)
    t64 = layouts.PackedTensor(t.name, "csr", t.dtype, t.shape, {**t.fields, "indptr": t.fields["indptr"].astype(np.int64)},
                               t.params)
    indptr, _ = host.csr_device_arrays(t64)
    assert indptr.dtype == np.int64 and np.array_equal(indptr, t.fields["indptr"])
    assert host.csr_max_row_entries(t64) == int(np.diff(t.fields["indptr"]).max())


@pytest.mark.parametrize("nm", [(2, 4), (1, 4), (1, 2), (4, 8), (3, 16), (5, 32)])   # meta codes of 2, 2, 1, 4, 4, 8 bits
@pytest.mark.parametrize("quant", ["none", "int8"])
@pytest.mark.parametrize("per_channel", [True, False])
def test_nm_column_indices_match_to_dense(nm, quant, per_channel):
    n_rows, k = 7, nm[1] * 5
    rng = _rng("nm-host", nm, quant, per_channel)
    w = rng.standard_normal((n_rows, k)).astype(np.float32)
    t = layouts.pack("nm", "w", w, prune.nm_mask(w, *nm), n=nm[0], m=nm[1], quant=quant, per_channel=per_channel)
    cols = host.nm_column_indices(t)
    assert cols.dtype == np.int32 and cols.shape == (n_rows, k // nm[1] * nm[0]) and cols.flags.c_contiguous
    assert host.nm_count(t) == cols.shape[1]
    assert np.all(np.diff(cols, axis=1) > 0)                      # ascending along a row
    np.testing.assert_array_equal(host.dense_from_device_arrays(t, host.float_values(t)), t.to_dense())
    if quant == "int8":
        np.testing.assert_array_equal(host.dense_from_device_arrays(t, host.stored_int8(t).astype(np.int64)),
                                      layouts.int_weight(t).q)
        assert host.weight_scale64(t).shape == (n_rows,)


def test_int32_accumulation_bounds():
    assert host.max_entries_int32(127) == 133144 and host.max_entries_int32(255) == 66311
    for q in (127, 255):
        most = host.max_entries_int32(q)
        assert most * q * 127 <= 2 ** 31 - 1 < (most + 1) * q * 127


def test_a_row_past_the_int32_bound_is_refused_before_any_upload():
    w = np.ones((2, 70000), np.float32)
    t = layouts.pack("csr", "w", w, np.ones_like(w, bool), quant="int8")
    with pytest.raises(ValueError, match=r"70000 stored entries.*exact up to 66311"):
        cupy_gpu.FACTORIES[("Linear", "csr")](registry.fill_attrs("Linear", {**STATIC, "act_zero_point": -128}),
                                               {1: t})
    with pytest.raises(ValueError, match="stores float values"):
        cupy_gpu.FACTORIES[("Linear", "csr")](registry.fill_attrs("Linear", {"act_quant": "dynamic"}),
                                               {1: pack_sparse_case(_rng("f"), "csr", 3, 8, quant="none")})


# --- quantize.cu -------------------------------------------------------------------------------

# exact ties of x / s (found by search): dynamic, the row's max 8.496261596679688 makes s with
# 4.248130798339844 / s = 63.5 exactly, while 4.248130798339844 * (1 / s) rounds to 63 (a kernel
# multiplying by a reciprocal differs from the reference only at such ties); static, x / 0.037
# = +-62.5 and x / 0.05 = -122.5, -117.5, 127.5: round half to even (np.rint), not away from zero
QUANTIZE_TIES = {"dynamic": [8.496261596679688, 4.248130798339844], "static": [2.3125, -2.3125],
                 "static_z0": [-6.125, -5.875, 6.375]}


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (17, 300), (9, 33)])
@pytest.mark.parametrize("act", ["dynamic", "static", "static_z0"])
def test_quantize_matches_the_reference(device, shape, act):
    from kernels.cupy_gpu.quantize import dequantize_rows, quantize_rows
    from kernels.reference.packed import PackedPlan
    rng = _rng("quantize", shape, act)
    x = (rng.standard_normal(shape) * 1.5).astype(np.float32)
    if shape[0] > 2:
        x[1] = 0                                                   # all-zero row: s = 1
        x[2, : min(5, shape[1])] = [127.0, 0.5, 1.5, 2.5, -0.5][: min(5, shape[1])]   # ties round to even
    if shape[0] > 3:
        x[3] = 0
        x[3, : len(QUANTIZE_TIES[act])] = QUANTIZE_TIES[act]
    attrs = ACTS[act]
    t = pack_sparse_case(rng, "csr", 2, shape[1])
    ref = PackedPlan(t, attrs["act_quant"], attrs.get("act_scale"), attrs.get("act_zero_point", 0))
    want_q, want_s = ref.quantize_rows(x)
    z = attrs.get("act_zero_point", 0)
    qx, x_scale, step = quantize_rows(_common.to_device(x), attrs["act_quant"], attrs.get("act_scale", 1.0), z)
    qx, x_scale = _host(qx), _host(x_scale)
    assert qx.dtype == np.int8 and qx.shape == shape
    np.testing.assert_array_equal(qx.astype(np.float64) - z, want_q)
    np.testing.assert_array_equal(x_scale[np.arange(shape[0]) * step], np.broadcast_to(want_s, (shape[0],)))
    y = _host(dequantize_rows(_common.to_device(qx), _common.to_device(x_scale), step, z))
    want_y = ((qx.astype(np.float64) - z) * x_scale[np.arange(shape[0]) * step][:, None]).astype(np.float32)
    np.testing.assert_array_equal(y, want_y)


# --- Linear on csr / nm ---------------------------------------------------------------------------

# (layout, N, K, sparsity kind or n:m): N not a multiple of the 4 warps of a block, K not a
# multiple of 32, whole-row and whole-weight emptiness, a dense row, uint16 indices (K > 256)
LINEAR_WEIGHTS = [("csr", 5, 36, "magnitude0.7"), ("csr", 9, 300, "empty_rows"), ("csr", 4, 33, "dense"),
                  ("csr", 3, 17, "all_pruned"), ("csr", 6, 40, "explicit_zeros"),
                  ("nm", 5, 36, (2, 4)), ("nm", 7, 64, (1, 4)), ("nm", 3, 48, (4, 8))]
MS = (1, 3, 17)                  # M = 1, a partial 8-row tile, three tiles


def _linear_reference(t, attrs, x, bias):
    run = registry.build("Linear", t.layout, "reference", registry.fill_attrs("Linear", attrs), {1: t})
    return run(x, t, bias)[0]


def _linear_case(layout, n, k, kind, quant, key):
    rng = _rng("linear", layout, n, k, kind, quant, key)
    if layout == "csr":
        return rng, pack_sparse_case(rng, "csr", n, k, kind, quant=quant)
    return rng, pack_sparse_case(rng, "nm", n, k, quant=quant, nm=kind)


def _check_linear(got, want, t, x, bias, attrs, what):
    got = _host(got)
    assert got.shape == want.shape and got.dtype == np.float32, what
    assert not np.isnan(got).any(), f"{what}: unwritten (poisoned) outputs"
    act = attrs.get("activation", "none")
    if attrs["act_quant"] != "none":
        if act in ("none", "relu"):
            assert np.max(np.abs(got - want), initial=0.0) <= INT8_ATOL, what
        else:
            err = np.abs(got.astype(np.float64) - want)
            assert np.all(err <= EPILOGUE_GELU_ULPS * np.spacing(np.abs(want)) + EPILOGUE_GELU_ATOL), what
        return
    dense = t.to_dense().astype(np.float64)
    x2 = np.abs(x.reshape(-1, t.shape[1]).astype(np.float64))
    terms = np.count_nonzero(dense, axis=1) + 2
    b = np.zeros(t.shape[0]) if bias is None else np.abs(bias.astype(np.float64))
    bound = (terms * FLOAT_ERR_PER_TERM * (x2 @ np.abs(dense).T) + b * FLOAT_ERR_PER_TERM).reshape(want.shape)
    slack = 1.2 if act.startswith("gelu") else 1.0               # |GELU'| <= 1.13
    err = np.abs(got.astype(np.float64) - want)
    assert np.all(err <= slack * bound + 2 * np.spacing(np.abs(want)) + 1e-30), \
        f"{what}: max excess {np.max(err - slack * bound)}"


@pytest.mark.parametrize("layout, n, k, kind", LINEAR_WEIGHTS)
@pytest.mark.parametrize("act", list(ACTS))
def test_linear_matches_the_reference(device, layout, n, k, kind, act):
    quant = "none" if act == "none" and kind == "explicit_zeros" else "int8"    # float values too
    rng, t = _linear_case(layout, n, k, kind, quant, act)
    for activation in ("none",) + GEMM_ACTIVATIONS:
        attrs = {**ACTS[act], "activation": activation}
        bias = rng.standard_normal(n).astype(np.float32)
        run = device.build("Linear", attrs, {1: t, 2: layouts.dense_tensor("b", bias)}, layout=layout)
        for m in MS:
            x = (rng.standard_normal((m, k)) * 1.5).astype(np.float32)
            if m > 2:
                x[1] = 0                                           # all-zero row: s_x = 1
            (got,) = run(x, t, bias)                               # the constant bias: uploaded once
            _check_linear(got, _linear_reference(t, attrs, x, bias), t, x, bias, attrs,
                          f"{layout} {kind} {act} {activation} M={m}")


@pytest.mark.parametrize("layout", ["csr", "nm"])
def test_linear_bias_inputs_shapes_and_errors(device, layout):
    rng, t = _linear_case(layout, 6, 24, "magnitude0.5" if layout == "csr" else (2, 4), "int8", "misc")
    attrs = {"act_quant": "dynamic"}
    run = device.build("Linear", attrs, {1: t}, layout=layout)
    x = rng.standard_normal((2, 3, 24)).astype(np.float32)      # leading dims (2, 3)
    for bias in (None, rng.standard_normal(6).astype(np.float32), rng.standard_normal(6)):   # absent, f32, f64
        (got,) = run(_common.to_device(x), t, bias)
        _check_linear(got, _linear_reference(t, attrs, x, bias), t, x, bias, attrs, f"bias {getattr(bias, 'dtype', None)}")
    (empty,) = run(np.zeros((0, 24), np.float32), t)
    assert _host(empty).shape == (0, 6)
    with pytest.raises(ValueError, match="float32"):
        run(x.astype(np.float64), t)
    with pytest.raises(ValueError, match="does not match packed weight"):
        run(x[..., :23], t)
    with pytest.raises(ValueError, match="bias has shape"):
        run(x, t, np.zeros(5, np.float32))
    other = pack_sparse_case(_rng("other", layout), layout, 6, 24, quant="int8")   # the slot is not read:
    (got,) = run(x, other)                                                          # the weight is bound
    _check_linear(got, _linear_reference(t, attrs, x, None), t, x, None, attrs, "bound weight")


# --- LayerNormalization, SkipLayerNormalization ---------------------------------------------------

def _check_ln(got, want, what):
    got = _host(got)
    assert got.shape == want.shape and got.dtype == np.float32, what
    tol = LN_ULPS * np.spacing(np.abs(want)) + LN_ATOL * max(1.0, float(np.abs(want).max(initial=0)))
    err = np.abs(got.astype(np.float64) - want)
    assert np.all(err <= tol), f"{what}: max err {err.max()} (poisoned outputs are NaN)"


LN_SHAPES = [((1, 1), -1), ((3, 7), -1), ((5, 33), -1), ((2, 3, 130), -1), ((4, 769), -1), ((2, 3, 10), 1),
             ((0, 8), -1)]


@pytest.mark.parametrize("shape, axis", LN_SHAPES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_layer_norm_matches_the_reference(device, shape, axis, with_bias):
    from kernels.reference.reduction import layer_normalization_ref
    rng = _rng("ln", shape, axis, with_bias)
    x = rng.standard_normal(shape).astype(np.float32)
    if x.size:
        x.reshape(-1, x.shape[-1])[0] = 100 + 0.01 * x.reshape(-1, x.shape[-1])[0]   # large mean, small spread
    d_shape = shape[axis % len(shape):]
    g = (1 + 0.1 * rng.standard_normal(d_shape)).astype(np.float32)
    b = rng.standard_normal(d_shape).astype(np.float32) if with_bias else None
    weights = {1: layouts.dense_tensor("g", g)}
    if with_bias:
        weights[2] = layouts.dense_tensor("b", b)
    run = device.build("LayerNormalization", {"axis": axis, "epsilon": 1e-5}, weights)
    want = layer_normalization_ref(x, g, b, axis=axis, epsilon=1e-5)
    _check_ln(run(x, g, b)[0], want, f"{shape} axis {axis}")
    # scale / bias passed at run time (not the planned constants), and a broadcast scale
    run2 = device.build("LayerNormalization", {"axis": axis, "epsilon": 1e-3}, {})
    g1 = np.float32([1.5])
    _check_ln(run2(_common.to_device(x), g1, None)[0], layer_normalization_ref(x, g1, None, axis=axis, epsilon=1e-3),
              f"{shape} broadcast scale")


@pytest.mark.parametrize("rows, d", [(1, 1), (3, 7), (16, 384), (5, 1000)])
def test_skip_layer_norm_matches_the_reference(device, rows, d):
    from kernels.reference.fused import skip_layer_normalization_ref
    rng = _rng("skipln", rows, d)
    x = rng.standard_normal((rows, d)).astype(np.float32)
    skip = rng.standard_normal((rows, d)).astype(np.float32)
    g = (1 + 0.1 * rng.standard_normal(d)).astype(np.float32)
    b = rng.standard_normal(d).astype(np.float32)
    run = device.build("SkipLayerNormalization", {"epsilon": 1e-12},
                       {2: layouts.dense_tensor("g", g), 3: layouts.dense_tensor("b", b)})
    _check_ln(run(x, skip, g, b)[0], skip_layer_normalization_ref(x, skip, g, b, epsilon=1e-12), "skip")
    _check_ln(run(x, skip, g)[0], skip_layer_normalization_ref(x, skip, g, None, epsilon=1e-12), "no bias")
    # a broadcast skip (a bias-like (1, D) row) and a 3-D x
    x3 = x.reshape(1, rows, d)
    _check_ln(run(x3, skip[:1], g, b)[0], skip_layer_normalization_ref(x3, skip[:1], g, b, epsilon=1e-12), "broadcast")
    if (rows, d) == (3, 7):
        with pytest.raises(ValueError, match="do not broadcast"):
            run(x, np.zeros((4, 7), np.float32), g, b)


# --- Softmax, Gelu ------------------------------------------------------------------------------

@pytest.mark.parametrize("shape, axis", [((1, 1), -1), ((3, 7), -1), ((2, 5, 300), -1), ((4, 6), 0),
                                         ((2, 9, 3), 1), ((5, 0), -1), ((0, 4), -1)])
def test_softmax_matches_the_reference(device, shape, axis):
    from kernels.reference.reduction import softmax_ref
    rng = _rng("softmax", shape, axis)
    x = (rng.standard_normal(shape) * 8).astype(np.float32)       # exp(x) overflows without the max
    if x.size:
        x.flat[0] = 80.0
    (got,) = device.build("Softmax", {"axis": axis}).__call__(x)
    got, want = _host(got), softmax_ref(x, axis=axis)
    assert got.shape == want.shape and got.dtype == np.float32
    assert np.all(np.abs(got.astype(np.float64) - want) <= SOFTMAX_ATOL), "poisoned outputs are NaN"


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("shape", [(1,), (3, 7), (1000,), (2, 3, 129)])
def test_gelu_matches_the_reference(device, approximate, shape):
    from kernels.reference.elementwise import gelu_ref
    rng = _rng("gelu", approximate, shape)
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    specials = np.float32([0.0, -0.0, 1e-30, -1e-30, 6.0, -6.0, 10.0, -10.0, -20.0, 3e4, -3e4])
    x.flat[: min(x.size, specials.size)] = specials[: x.size]
    (got,) = device.build("Gelu", {"approximate": approximate})(x)
    got, want = _host(got), gelu_ref(x, approximate=approximate).astype(np.float64)
    assert got.shape == x.shape and got.dtype == np.float32
    err = np.abs(got.astype(np.float64) - want)
    assert np.all(err <= GELU_F32_RTOL * np.abs(want) + GELU_F32_ATOL), f"max rel err {np.max(err / np.abs(want + 1e-30))}"


# --- Attention --------------------------------------------------------------------------------------

# (B, Sq, Sk, H, D, Dv): Sq != Sk, D and Dv not multiples of 4 or 8, Sq = 1 (decoding), Sk past
# one block of threads' first step (row_threads caps at 256)
ATTENTION_SHAPES = [(1, 1, 1, 1, 1, 1), (2, 7, 13, 3, 6, 6), (3, 5, 9, 4, 5, 3), (1, 9, 300, 2, 16, 8),
                    (2, 1, 11, 2, 10, 24)]


@pytest.mark.parametrize("shape", ATTENTION_SHAPES)
@pytest.mark.parametrize("mask_kind", MASK_SHAPES)
def test_attention_matches_the_reference(device, shape, mask_kind):
    from kernels.reference.fused import attention_ref
    b, sq, sk, h, d, dv = shape
    q, k, v, mask = _attention_case("cupy", *shape, mask_kind)
    run = device.build("Attention", {"head_dim": d, "scale": 0.37})
    (got,) = run(q, k, v, mask) if mask is not None else run(q, k, v)
    want = attention_ref(q, k, v, mask, head_dim=d, scale=0.37)
    got = _host(got)
    assert got.shape == want.shape == (b, sq, h * dv) and got.dtype == np.float32
    assert _rel(got, want) < ATTENTION_RTOL


def test_attention_constant_mask_masked_rows_and_errors(device):
    from kernels.reference.fused import attention_ref
    rng = _rng("attention-misc")
    q, k, v = (rng.standard_normal((2, 4, 6)).astype(np.float32) for _ in range(3))
    mask = np.where(rng.random((2, 1, 4, 4)) < 0.5, -10000.0, 0.0).astype(np.float32)
    mask[0, 0, 1] = -10000.0                                        # a fully masked row: equal weights
    run = device.build("Attention", {"head_dim": 3, "scale": 0.5}, {3: layouts.dense_tensor("mask", mask)})
    (got,) = run(q, k, v, mask)
    assert _rel(_host(got), attention_ref(q, k, v, mask, head_dim=3, scale=0.5)) < ATTENTION_RTOL
    very = np.full((2, 1, 4, 4), -1e300)                            # float64: clipped, not -inf
    (got,) = run(q, k, v, very)
    assert np.all(np.isfinite(_host(got)))
    assert _rel(_host(got), attention_ref(q, k, v, very, head_dim=3, scale=0.5)) < ATTENTION_RTOL
    with pytest.raises(ValueError, match="float32"):
        run(q.astype(np.float64), k, v)
    with pytest.raises(ValueError, match="does not broadcast"):
        run(q, k, v, np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match="head_dim"):
        device.build("Attention", {"head_dim": 0, "scale": 1.0})


def test_split_views_on_device_arrays():
    """The GPU Split (kernels/split_views.py device_split_factory) slices any array that
    slices like numpy, without a copy; the num_outputs form goes through the host."""
    from kernels.split_views import device_split_factory
    torch = pytest.importorskip("torch")
    x = torch.arange(24, dtype=torch.float32).reshape(2, 12)
    run = device_split_factory(registry.fill_attrs("Split", {"axis": -1, "split": [4, 4, 4]}), {})
    parts = run(x)
    assert [tuple(p.shape) for p in parts] == [(2, 4)] * 3
    assert all(p.data_ptr() == x.data_ptr() + 16 * i for i, p in enumerate(parts))    # views
    run = device_split_factory(registry.fill_attrs("Split", {"axis": 1, "num_outputs": 3}), {})
    np.testing.assert_array_equal(np.concatenate(run(x), axis=1), x.numpy())
