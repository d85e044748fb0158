"""Interleaved timing of several runners in one process, optionally beside busy processes.

Rows are timed round after round (``ROUNDS`` calls each), so a change in the machine's load
hits every row alike; each round starts with ``WARM_SECONDS`` of untimed calls, so that the
previous row's spinning thread pool (OpenBLAS's idle workers spin about 0.1 s after a call)
does not count against this one. ``busy`` runs that many CPU-bound processes per usable CPU
for the whole timing (other workers on the same cores).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Callable

import numpy as np

from kernels.core.threads import usable_cpus

WARM_SECONDS = 0.2
ROUNDS = 10


def ort_session(path: str):
    """An onnxruntime CPU session of ``path`` with one intra-op thread per CPU: the onnxruntime
    rows of every benchmark here."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = os.cpu_count() or 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def ort_quantize(path: str, out: str, act: str = "dynamic", calib: list | None = None) -> None:
    """Write onnxruntime's int8 form of ``path`` to ``out``, as its users make it: ``quantize_dynamic``
    (int8 weights; activations quantized at run time: ConvInteger / MatMulInteger), or with
    ``act="static"`` ``quantize_static`` on ``calib`` (a list of feed dicts): QDQ, uint8
    activations, int8 weights (QLinearConv and friends after its graph transformations)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static
    if act != "static":
        quantize_dynamic(path, out, weight_type=QuantType.QInt8)
        return

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter(calib or [])

        def get_next(self):
            return next(self.feeds, None)
    quantize_static(path, out, Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)


def time_interleaved(runners: dict[str, Callable[[], object]], seconds: float, busy: int = 0,
                     min_runs: int = 5) -> tuple[dict[str, float], dict[str, int], tuple[float, float]]:
    """(median ms per row, runs per row, (load average before, after)); about ``seconds``
    of timed calls per row."""
    for fn in runners.values():          # first runs: the planner measures, numba compiles
        fn()
        fn()
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy * usable_cpus())]
    try:
        time.sleep(0.5 if procs else 0.0)
        times: dict[str, list[float]] = {k: [] for k in runners}
        load = os.getloadavg()[0]
        t_end = time.perf_counter() + seconds * len(runners)
        while time.perf_counter() < t_end or min(len(v) for v in times.values()) < min_runs:
            for name, fn in runners.items():
                warm = time.perf_counter() + WARM_SECONDS
                while time.perf_counter() < warm:
                    fn()
                for _ in range(ROUNDS):
                    t0 = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t0)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    med = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
    return med, {k: len(v) for k, v in times.items()}, (load, os.getloadavg()[0])
