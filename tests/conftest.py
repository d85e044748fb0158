"""Test-wide settings: per-layer planning's measurement cache (runtime/planner.py) goes to a
temporary folder, never to the user's ~/.cache, and starts empty for every test run."""
import importlib.util
import os
import tempfile

import pytest


def _triton_interpreter_without_gpu() -> None:
    """Without a CUDA GPU, run the Triton backend's kernels in Triton's interpreter on CPU
    tensors. TRITON_INTERPRET is read when triton is first imported (and when kernels are
    decorated), so it must be set here, before any test module imports the backend. A value
    the user set wins; without torch (or triton) there is nothing to do."""
    if "TRITON_INTERPRET" in os.environ or importlib.util.find_spec("triton") is None \
            or importlib.util.find_spec("torch") is None:
        return
    import torch
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


_triton_interpreter_without_gpu()


@pytest.fixture(autouse=True, scope="session")
def _plan_cache_dir():
    old = os.environ.get("QRT_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="qrt-test-cache-") as d:
        os.environ["QRT_CACHE_DIR"] = d
        yield d
    if old is None:
        os.environ.pop("QRT_CACHE_DIR", None)
    else:
        os.environ["QRT_CACHE_DIR"] = old
