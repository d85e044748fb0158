"""Files written at every released format version load and compute what they computed when
written (docs/FORMAT.md, Versioning: a file written by version N is read by every later
version). The fixtures (tests/fixtures/format_v<N>/, made by make_format_fixture.py when the
version was current) are committed and never rewritten, so a change to the reader, the graph
schema or a layout's meaning that breaks an old file fails here."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import runtime
from kernels import registry
from runtime.format import FORMAT_VERSION, read_header

FIXTURES = Path(__file__).resolve().parent / "fixtures"
VERSIONS = sorted(FIXTURES.glob("format_v*"), key=lambda p: int(p.name.split("_v")[1]))
BACKENDS = ["reference"] + [b for b in ("numba", "native") if registry.backend_status(b) is None]


def _cases():
    return [(d, f) for d in VERSIONS for f in sorted(d.glob("*.qrt"))]


def test_every_version_up_to_the_current_one_has_fixtures():
    assert [int(d.name.split("_v")[1]) for d in VERSIONS] == list(range(1, FORMAT_VERSION + 1))
    assert all(len(list(d.glob("*.qrt"))) >= 10 for d in VERSIONS)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", _cases(), ids=lambda c: f"{c[0].name}/{c[1].stem}")
def test_old_files_load_and_compute_the_same(case, backend):
    directory, path = case
    expected = np.load(directory / "expected.npz")
    meta, _ = read_header(path)
    assert int(meta["format_version"]) == int(directory.name.split("_v")[1])
    feeds = {k.split("/")[2]: expected[k] for k in expected.files if k.startswith(f"{path.stem}/in/")}
    outs = runtime.InferenceSession(str(path), backend).run(None, feeds)
    want = [expected[f"{path.stem}/out/{k}"] for k in range(len(outs))]
    assert len(want) == len(outs) and f"{path.stem}/out/{len(outs)}" not in expected.files
    for got, w in zip(outs, want):
        np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-6)
