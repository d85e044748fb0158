"""The output block cache of the native bindings (csrc/output_cache.h): float32 outputs of
256 KiB or more reuse the blocks of freed outputs. A reused block must hold the new result
only, stay the array's while any view of it lives, and the cache must hold at most 64 MiB of
free blocks; smaller outputs are plain numpy arrays."""
from __future__ import annotations

import gc
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kernels import registry
from kernels.core.layouts import pack, pack_int8
from runtime.convert import prune

_REASON = registry.backend_status("native")
pytestmark = pytest.mark.skipif(_REASON is not None, reason=f"native backend unavailable: {_REASON}")

if _REASON is None:
    from kernels.native_cpu import _native
    from kernels.native_cpu.int8 import Int8Plan
    from kernels.native_cpu.sparse import SparsePlan

CACHED_MIN = 256 << 10
CACHE_MAX = 64 << 20
K, N = 64, 256          # (M, N) float32 outputs: M = 256 rows make 256 KiB


def _plans():
    w = np.random.default_rng(5).standard_normal((N, K)).astype(np.float32)
    return (Int8Plan(pack_int8("w", w), act_quant="dynamic"),
            SparsePlan(pack("csr", "w", w, prune.magnitude_mask(w, 0.8), quant="int8"), act_quant="dynamic"))


def _address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def _call(plan, x):
    fn = _native.int8_linear if isinstance(plan, Int8Plan) else _native.sparse_int8_linear
    return fn(plan.packed, x, None, "dynamic")


@pytest.fixture(autouse=True)
def _empty_cache():
    gc.collect()
    _native.output_cache_clear()
    yield
    gc.collect()
    _native.output_cache_clear()


@pytest.mark.parametrize("kind", [0, 1], ids=["int8", "csr"])
def test_a_freed_output_is_reused_and_fully_overwritten(kind):
    plan = _plans()[kind]
    rng = np.random.default_rng(0)
    x1 = rng.standard_normal((300, K)).astype(np.float32)
    x2 = rng.standard_normal((300, K)).astype(np.float32)
    y1 = _call(plan, x1)
    assert y1.nbytes >= CACHED_MIN and y1.dtype == np.float32 and y1.flags.c_contiguous and y1.flags.writeable
    address, first = _address(y1), y1.copy()
    del y1
    free, held, _ = _native.output_cache_stats()
    assert free == 1 and held >= 300 * N * 4
    y2 = _call(plan, x2)
    assert _address(y2) == address                      # the freed block, taken again
    assert _native.output_cache_stats()[0] == 0
    fresh = np.empty((300, N), np.float32)
    fn = _native.int8_linear if kind == 0 else _native.sparse_int8_linear
    fn(plan.packed, x2, None, "dynamic", out=fresh)
    np.testing.assert_array_equal(y2, fresh)             # nothing of y1 left in it
    assert not np.array_equal(y2, first)


def test_a_view_keeps_the_block():
    plan = _plans()[0]
    y = _call(plan, np.ones((300, K), np.float32))
    view = y[10:20]
    address = _address(y)
    del y
    gc.collect()
    assert _native.output_cache_stats()[0] == 0         # the view still owns it
    view[:] = 7.0                                        # and may write it
    other = _call(plan, np.ones((300, K), np.float32))
    assert _address(other) != address
    del view
    assert _native.output_cache_stats()[0] == 1


def test_small_outputs_are_plain_arrays():
    plan = _plans()[0]
    before = _native.output_cache_stats()[2]
    y = _call(plan, np.ones((8, K), np.float32))       # 8 KiB
    assert y.flags.owndata
    del y
    assert _native.output_cache_stats()[2] == before
    assert _native.output_cache_stats()[0] == 0


def test_the_free_blocks_held_stay_bounded():
    plan = _plans()[0]
    x = np.ones((1, K), np.float32)
    sizes = range(256, 256 + 64 * 80, 64)               # 256 KiB to 5.2 MiB, 80 sizes
    outs = [_call(plan, np.broadcast_to(x, (m, K)).copy()) for m in sizes]
    assert sum(o.nbytes for o in outs) > 2 * CACHE_MAX
    del outs
    gc.collect()
    free, held, _ = _native.output_cache_stats()
    assert 0 < held <= CACHE_MAX and free > 0            # the default limit
    old = _native.output_cache_set_limit(3 << 20)
    assert old == CACHE_MAX
    try:
        assert _native.output_cache_stats()[1] <= 3 << 20   # the oldest blocks freed
        outs = [_call(plan, np.broadcast_to(x, (m, K)).copy()) for m in sizes[:20]]
        del outs
        gc.collect()
        assert _native.output_cache_stats()[1] <= 3 << 20
    finally:
        _native.output_cache_set_limit(old)
    _native.output_cache_clear()
    assert _native.output_cache_stats()[:2] == (0, 0)
    with pytest.raises(ValueError, match="limit must be >= 0"):
        _native.output_cache_set_limit(-1)


def test_limit_zero_turns_the_cache_off():
    plan = _plans()[0]
    old = _native.output_cache_set_limit(0)
    try:
        handed = _native.output_cache_stats()[2]
        y = _call(plan, np.ones((300, K), np.float32))
        assert y.flags.owndata and _native.output_cache_stats()[2] == handed
        del y
        assert _native.output_cache_stats()[:2] == (0, 0)
    finally:
        _native.output_cache_set_limit(old)


@pytest.mark.parametrize("value,limit", [("0", 0), ("3", 3 << 20), ("", CACHE_MAX), ("lots", CACHE_MAX),
                                         ("-1", CACHE_MAX)])
def test_the_environment_sets_the_limit_on_import(value, limit):
    code = ("import warnings; warnings.simplefilter('always'); import kernels.native_cpu as n; "
            "print(n._native.output_cache_set_limit(0))")
    env = dict(os.environ, QRT_OUTPUT_CACHE_MB=value)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=str(Path(__file__).resolve().parents[1]), timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.split()[-1]) == limit
    assert ("QRT_OUTPUT_CACHE_MB" in out.stderr) == (value in ("lots", "-1"))   # the warning names it


def _child(queue):
    plan = _plans()[0]
    y = _call(plan, np.ones((300, K), np.float32))
    del y
    y = _call(plan, np.ones((300, K), np.float32))
    queue.put((float(y.sum()), _native.output_cache_stats()[0]))


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_a_forked_child_allocates_on_its_own_cache():
    plan = _plans()[0]
    y = _call(plan, np.ones((300, K), np.float32))   # parent: one block in use, one freed
    _call(plan, np.ones((300, K), np.float32))
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    p = ctx.Process(target=_child, args=(queue,))
    p.start()
    total, free = queue.get(timeout=60)
    p.join(timeout=60)
    assert p.exitcode == 0
    assert total == pytest.approx(float(y.sum()), rel=1e-6) and free == 0
