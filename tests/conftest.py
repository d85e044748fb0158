"""Test-wide settings: per-layer planning's measurement cache (runtime/planner.py) goes to a
temporary folder, never to the user's ~/.cache, and starts empty for every test run."""
import os
import tempfile

import pytest


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
