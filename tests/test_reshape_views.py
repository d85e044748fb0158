"""Reshape on the CPU backends (kernels/reshape_views.py): numpy views with the target resolved
once when it is a constant, numpy's own reshape for run-time targets with allowzero=1, the
reference for everything else and for every error (so its messages stay)."""
from __future__ import annotations

import numpy as np
import pytest

from kernels import reshape_views
from kernels.core.layouts import dense_tensor
from kernels.registry import lookup


@pytest.fixture
def spy(monkeypatch):
    """Calls that reached the reference kernel."""
    calls = []

    def spying_lookup(op, layout, backend):
        factory = lookup(op, layout, backend)

        def make(attrs, weights):
            ref = factory(attrs, weights)

            def run(*args):
                calls.append(args)
                return ref(*args)
            return run
        return make

    monkeypatch.setattr(reshape_views, "lookup", spying_lookup)
    return calls


def _views(target, allowzero=0, constant=True):
    weights = {1: dense_tensor("shape", np.array(target, np.int64))} if constant else {}
    return reshape_views.reshape_views_factory({"allowzero": allowzero}, weights)


def test_constant_target_is_resolved_once_and_gives_a_view(spy):
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    shape = np.array([0, -1], np.int64)
    (y,) = _views([0, -1])(x, shape)
    assert y.shape == (2, 12) and np.shares_memory(x, y) and not spy
    (y,) = _views([-1, 4], allowzero=1)(x, np.array([-1, 4], np.int64))
    assert y.shape == (6, 4) and not spy


def test_runtime_target_with_allowzero(spy):
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    run = _views(None, allowzero=1, constant=False)
    (y,) = run(x, np.array([4, -1], np.int64))
    assert y.shape == (4, 6) and not spy
    # allowzero=0 at run time: the reference (0 copies a dim)
    (y,) = _views(None, allowzero=0, constant=False)(x, np.array([0, -1], np.int64))
    assert y.shape == (2, 12) and len(spy) == 1


@pytest.mark.parametrize("target,allowzero,constant", [([5, -1], 0, True), ([-1, -1], 0, True), ([7, 2], 1, False),
                                                       ([0, 0, 0, 0], 0, True), ([-2, 12], 1, False), ([-2, 12], 0, True)])
def test_errors_are_the_reference_s(spy, target, allowzero, constant):
    x = np.zeros((2, 3, 4), np.float32)
    shape = np.array(target, np.int64)
    with pytest.raises((ValueError, IndexError)) as got:
        _views(target if constant else None, allowzero, constant)(x, shape)
    with pytest.raises(type(got.value), match=str(got.value).replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        lookup("Reshape", "dense", "reference")({"allowzero": allowzero}, {})(x, shape)
    assert spy, "the error came from the reference"
