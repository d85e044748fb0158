"""Held-back calibration samples (ConvertOptions.holdout, --holdout): the last feeds of real
calibration data are kept out of every calibration step and only evaluated, so the report
says what to expect on data the conversion did not see."""
from __future__ import annotations

import numpy as np
import pytest

import runtime
from runtime.convert import calibrate
from runtime.convert.pipeline import _split_holdout
from tests import model_zoo


def _feeds(n, rows=8):
    rng = np.random.default_rng(0)
    return [{"x": rng.standard_normal((rows, 8)).astype(np.float32)} for _ in range(n)]


def test_split_takes_whole_feeds_from_the_end_and_says_so():
    feeds = calibrate.CalibFeeds(_feeds(10), "c.npz: 80 sample(s) in 10 feed(s)")
    calib, held = _split_holdout(feeds, 0.2)
    assert len(calib) == 8 and len(held) == 2
    assert all(a is b for a, b in zip(calib + held, feeds))       # disjoint, nothing copied or lost
    assert "the first 8 feed(s), 64 sample(s)" in calib.source and calib.source.startswith("c.npz")
    assert held.source.startswith("2 held-back feed(s), 16 sample(s)")
    # at least one each side; none from random inputs, from one feed, or with holdout 0
    assert [len(x) for x in _split_holdout(calibrate.CalibFeeds(_feeds(2), "s"), 0.9)] == [1, 1]
    for feeds, frac in ((calibrate.CalibFeeds(_feeds(1), "s"), 0.2), (calibrate.CalibFeeds(_feeds(5), "s"), 0.0),
                        (calibrate.CalibFeeds(_feeds(5), "r", is_random=True), 0.2)):
        calib, held = _split_holdout(feeds, frac)
        assert held is None and calib is feeds


def test_report_has_held_out_metrics_on_unseen_feeds():
    data = model_zoo.small_mlp_onnx()
    feeds = _feeds(5)
    g = runtime.convert(data, calib=feeds, quant="int8", act="static")
    rep = g.metadata["report"]
    assert rep["held_out"] and rep["held_out_source"].startswith("1 held-back feed(s), 8 sample(s)")
    # exactly the converted model on the last feed, against the fp32 model
    want = runtime.InferenceSession(runtime.convert.from_onnx(data), backend="reference").run(None, feeds[-1])
    got = runtime.InferenceSession(g, backend="reference").run(None, feeds[-1])
    a = np.concatenate([w.ravel() for w in want]).astype(np.float64)
    b = np.concatenate([x.ravel() for x in got]).astype(np.float64)
    assert rep["held_out"]["max_abs_error"] == pytest.approx(float(np.abs(a - b).max()), rel=1e-6)
    assert "held-back" in runtime.convert(data, calib=feeds, quant="int8").metadata["report"]["held_out_source"]
    none = runtime.convert(data, calib=feeds, quant="int8", holdout=0).metadata["report"]
    assert not none["held_out"] and none["calibration"].endswith("5 feed(s) from an iterable")


@pytest.mark.parametrize("bad", [1.0, -0.1, True, "0.2"])
def test_bad_holdout_is_refused(bad):
    with pytest.raises(ValueError, match="holdout is the fraction"):
        runtime.convert(model_zoo.small_mlp_onnx(), quant="int8", holdout=bad)
