"""Kernel conformance: every registered kernel against the reference, parametrized by the registry.

One row per (backend, op, layout, case): for every backend but the reference that is usable
here, every (op, layout) it registers (``registry.kernels(backend)``), every case of that
(op, layout) in tests/conformance_cases.py. A row builds the backend's kernel and the
reference kernel of the same (op, layout) the way a session does (``registry.build``: the
factory with the node's attributes, op defaults filled in by ``registry.fill_attrs``, and its
initializers by input position; a Linear / Conv epilogue activation that the kernel does not
fuse runs after it, as in a session), runs both on the same inputs and compares: the same
number of outputs, each of the reference's dtype and shape, within the case's tolerance
(exact where the numerics contract promises the reference's bits). The backend's kernel gets
copies of the non-initializer inputs and must leave them as they were. Registering a kernel
in any backend adds its rows here; a registered (op, layout) without cases fails
``test_every_registered_op_layout_has_cases`` (and its own row).

Backends that cannot run here get one skipped row each, with the registry's reason. GPU
backends take device arrays: inputs go through the backend's ``to_device`` hook and outputs
come back with kernels.core.device.to_numpy. Triton's interpreter (TRITON_INTERPRET=1 with no
GPU, set by tests/conftest.py) runs each kernel program in Python, so there only the cases
up to ``INTERPRETER_MAX_COST`` multiply-adds (or input elements) run.

The reference itself: every reference registration runs every case of its (op, layout) and
returns a tuple of arrays, within the op's output count (``test_reference_runs_every_case``).

Cases a backend documents it refuses (conformance_cases.REFUSALS) must raise the documented
error. Disagreements found and not yet fixed are listed in KNOWN_DISAGREEMENTS (xfail, strict:
a fix makes the row fail until the entry is removed).
"""
from __future__ import annotations

import re

import numpy as np
import pytest

from kernels import registry
from kernels.core.device import is_device_array, to_numpy
from kernels.core.layouts import PackedTensor
from kernels.core.ops import op_spec
from tests import conformance_cases as cc

FAST_BACKENDS = tuple(b for b in registry.BACKENDS if b != "reference")
# Triton's interpreter executes every program instance of a kernel in Python (the slowest row
# kept, a 17 x 300 x 7 bsr Linear, takes ~0.6 s here); cases up to this cost (a Linear's
# M * N * K, else the inputs' elements) still reach every Triton code path (GEMV and tl.dot
# branches, partial tiles, padded int4 groups, empty block rows): ~90 rows in a few seconds.
INTERPRETER_MAX_COST = 40_000

# (backend, op, layout, case name) -> why the backend disagrees with the reference (a bug to
# fix in the kernel: the row is xfail until then)
KNOWN_DISAGREEMENTS: dict[tuple[str, str, str, str], str] = {
}


def _row_id(*parts: str) -> str:
    """A row id that ``pytest -k`` accepts: shapes (2, 3) as 2x3, no spaces or brackets."""
    text = "-".join(parts).replace(" ", "").replace(",", "x").replace("=", "")
    return re.sub(r"[^A-Za-z0-9_.\-]", "", text)


def _rows() -> list:
    rows = []
    for backend in FAST_BACKENDS:
        reason = registry.backend_status(backend)
        if reason is not None:
            rows.append(pytest.param(backend, "", "", "", id=f"{backend}-unavailable",
                                     marks=pytest.mark.skip(reason=f"backend {backend!r} unavailable: {reason}")))
            continue
        interpreted = registry.backend_device(backend) == "cpu"
        for op, layout, _ in registry.kernels(backend):
            try:
                cases = cc.cases(op, layout)
            except Exception as e:     # noqa: BLE001 - no builder, or a broken one: a failing row
                rows.append(pytest.param(backend, op, layout, f"!{type(e).__name__}: {e}",
                                         id=_row_id(backend, op, layout, "NO-CASES")))
                continue
            for c in cases:
                if interpreted and c.cost > INTERPRETER_MAX_COST and cc.refusal(backend, c) is None:
                    continue
                key = (backend, op, layout, c.name)
                marks = [pytest.mark.xfail(reason=KNOWN_DISAGREEMENTS[key], strict=True)] \
                    if key in KNOWN_DISAGREEMENTS else []
                rows.append(pytest.param(*key, id=_row_id(*key), marks=marks))
    return rows


_REFERENCE: dict[tuple[str, str, str], tuple[np.ndarray, ...]] = {}


def reference_outputs(case: cc.Case) -> tuple[np.ndarray, ...]:
    """The reference kernel's outputs on the case (computed once per case and process)."""
    key = (case.op, case.layout, case.name)
    if key not in _REFERENCE:
        run = registry.build(case.op, case.layout, "reference", case.attrs, case.weights)
        with np.errstate(all="ignore"):
            _REFERENCE[key] = tuple(run(*case.inputs))
    return _REFERENCE[key]


def run_backend(backend: str, case: cc.Case) -> tuple[np.ndarray, ...]:
    """The backend's kernel on the case, as a session runs it: initializers as planned, every
    other array input a fresh copy (on the backend's device for a GPU backend); outputs as
    host arrays. AssertionError if the kernel wrote into an input."""
    run = registry.build(case.op, case.layout, backend, case.attrs, case.weights)
    to_device = registry.backend_module(backend).to_device if registry.backend_device(backend) else None
    args, given = [], []
    for i, a in enumerate(case.inputs):
        if i in case.weights or not isinstance(a, np.ndarray):
            args.append(a)
            continue
        copy = a.copy()
        given.append((i, copy))
        args.append(to_device(copy) if to_device is not None else copy)
    with np.errstate(all="ignore"):
        out = run(*args)
    assert isinstance(out, tuple), f"run must return a tuple, got {type(out).__name__}"
    for i, copy in given:
        assert np.array_equal(copy, case.inputs[i], equal_nan=copy.dtype.kind in "fc"), \
            f"the kernel wrote into its input {i}"
    return tuple(to_numpy(o) if is_device_array(o) else o for o in out)


@pytest.mark.isa
@pytest.mark.parametrize("backend,op,layout,name", _rows())
def test_kernel_matches_reference(backend, op, layout, name):
    if name.startswith("!"):
        pytest.fail(f"({op!r}, {layout!r}) is registered on {backend!r} but tests/conformance_cases.py "
                    f"gives no cases for it ({name[1:]})")
    case = cc.case(op, layout, name)
    refused = cc.refusal(backend, case)
    if refused is not None:
        with pytest.raises(refused.raises, match=refused.match):
            run_backend(backend, case)
        return
    want = reference_outputs(case)
    got = run_backend(backend, case)
    assert len(got) == len(want), f"{len(got)} outputs, the reference has {len(want)}"
    tol = case.tolerance(backend)
    for j, (g, w) in enumerate(zip(got, want)):
        assert isinstance(g, np.ndarray), f"output {j} is a {type(g).__name__}, not an array"
        assert g.dtype == w.dtype and g.shape == w.shape, \
            f"output {j}: {g.dtype} {g.shape}, the reference's is {w.dtype} {w.shape}"
        try:
            tol.check(g, w, case)
        except AssertionError as e:
            raise AssertionError(f"output {j} vs the reference ({tol}): {e}") from None


# --- the table against the registry -----------------------------------------------------------

def _registered() -> set[tuple[str, str]]:
    """Every (op, layout) some backend registers: all usable backends' registry keys, plus the
    ``FACTORIES`` table of a backend package that imports but cannot run here (CuPy without a
    GPU forgets its registrations; its package still lists them)."""
    import importlib
    keys = set()
    for backend in registry.BACKENDS:
        if registry.backend_status(backend) is None:
            keys |= {(op, layout) for op, layout, _ in registry.kernels(backend)}
            continue
        try:
            module = importlib.import_module(registry._MODULES[backend])
        except Exception:          # noqa: BLE001 - an unavailable backend may not even import
            continue
        keys |= set(getattr(module, "FACTORIES", {}))
    return keys


def test_every_registered_op_layout_has_cases():
    missing = sorted(_registered() - set(cc.BUILDERS))
    assert not missing, f"registered (op, layout) without a case builder in tests/conformance_cases.py: {missing}"
    for op, layout in cc.BUILDERS:
        op_spec(op)                                          # a known op
        assert cc.cases(op, layout), f"({op}, {layout}): the builder yields no case"


@pytest.mark.parametrize("op,layout", sorted({(o, lay) for o, lay, _ in registry.kernels("reference")}),
                         ids=lambda v: str(v))
def test_reference_runs_every_case(op, layout):
    """The reference kernel runs every case of its (op, layout) without raising and returns a
    tuple of arrays within the op's output count; a dense initializer's array is the input."""
    spec = op_spec(op)
    cases = cc.cases(op, layout)
    assert cases
    for case in cases:
        out = reference_outputs(case)
        assert spec.min_outputs <= len(out) <= spec.max_outputs, (case.name, len(out))
        assert all(isinstance(o, np.ndarray) for o in out), case.name
        for p, t in case.weights.items():
            assert isinstance(t, PackedTensor)
            if t.layout == "dense":
                assert case.inputs[p] is t.fields["data"], (case.name, p)


def test_sparse_cases_cover_every_index_dtype():
    """The Linear cases of csr and bsr hold every column-index dtype the packers produce (uint8,
    uint16, int32: kernels/core/layouts.py index_dtypes), and those of nm every position-code
    width (1, 2, 4 and 8 bits). (An int64 indptr needs 2^31 stored values: not a unit-test size.)"""
    from kernels.core.layouts import nm_meta_bits
    for layout in ("csr", "bsr"):
        have = {str(c.inputs[1].fields["indices"].dtype) for c in cc.cases("Linear", layout)}
        assert have == {"uint8", "uint16", "int32"}, (layout, have)
    bits = {nm_meta_bits(int(c.inputs[1].params["m"])) for c in cc.cases("Linear", "nm")}
    assert bits == {1, 2, 4, 8}, bits


def test_every_case_draws_nonzero_inputs():
    """Random inputs, never all zeros (a kernel that ignores its input would pass on zeros)."""
    for key in cc.BUILDERS:
        for case in cc.cases(*key):
            arrays = [a for a in case.inputs if isinstance(a, np.ndarray) and a.size and a.dtype.kind in "fiu"]
            arrays += [t.to_dense() for t in case.weights.values() if t.layout != "dense"]
            if arrays:
                assert any(np.any(a != 0) for a in arrays), (key, case.name)
