"""pytest-benchmark suite settings (benchmarks/test_kernels.py).

    pytest benchmarks/ --benchmark-only              # the whole grid (the shapes table of runtime/bench/gemm.py)
    pytest benchmarks/ --benchmark-only -m quick     # the quick subset, under 2 minutes

Like `qrt bench`, the benchmark process runs without OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE
(they slow numpy's fp32 BLAS on some machines): pytest re-executes itself without them before
collecting. This happens only when benchmarks/ is collected; the test suite (tests/, what CI
runs) never changes the BLAS environment.
"""
from __future__ import annotations


def pytest_configure(config):
    config.addinivalue_line("markers", "quick: the quick subset of the benchmark grid (-m quick)")
    from runtime.bench.machine import openblas_reexec
    openblas_reexec()
