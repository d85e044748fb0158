"""Calibration-aware quantization: GPTQ (runtime/convert/gptq.py) and SmoothQuant
(runtime/convert/smooth.py), alone and through the converter's layer-by-layer pass
(runtime/convert/sequential.py), composed with pruning.

The layer-level inputs are correlated and unevenly scaled columns (what real activations look
like): there GPTQ's update must beat round-to-nearest clearly (measured on this layer: int8
0.0073 -> 0.0033, int4 g64 0.11 -> 0.05, i.e. more than 2x)."""
from __future__ import annotations

import re

import numpy as np
import pytest

import runtime
from kernels.core import layouts as L
from runtime.convert import gptq, obs, prune
from runtime.convert.smooth import smooth_factors
from tests import model_zoo

# GPTQ's error must be this much below RTN's: with act_order (measured 1.7x-2.2x here); in
# input order the gain is smaller, least with a 70% mask, which leaves few weights to absorb
# the error (measured 1.17x-1.46x)
GPTQ_GAIN = {True: 1.5, False: 1.1}


def _layer(seed=0, n=48, k=256, rows=1500):
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((rows, 24)) @ rng.standard_normal((24, k))
    x = (base + 0.3 * rng.standard_normal((rows, k))) * np.exp(rng.standard_normal(k))[None, :]
    w = rng.standard_normal((n, k)).astype(np.float32)
    stats = obs.LayerInputStats(k)
    stats.add(x)
    return w, x, stats.gram


MASKS = {"dense": lambda w: None, "2:4": lambda w: prune.nm_mask(w, 2, 4),
         "70%": lambda w: prune.magnitude_mask(w, 0.7), "4x4 50%": lambda w: prune.block_mask(w, 0.5, (4, 4))}


@pytest.mark.parametrize("bits, group, symmetric", [(8, None, True), (4, 64, True), (4, 32, True), (4, 32, False)])
@pytest.mark.parametrize("mask_name", list(MASKS))
@pytest.mark.parametrize("act_order", [True, False])
def test_gptq_beats_round_to_nearest_and_keeps_the_zeros(bits, group, symmetric, mask_name, act_order):
    w, x, g = _layer()
    mask = MASKS[mask_name](w)
    target = w if mask is None else np.where(mask, w, 0).astype(np.float32)
    rtn = gptq.rtn_quantize(w, bits, group_size=group, mask=mask, symmetric=symmetric)
    wq, scale, zero = gptq.gptq_quantize(w, g, bits, group_size=group, mask=mask, act_order=act_order,
                                         symmetric=symmetric)
    assert (zero is None) == symmetric
    e_rtn, e_gptq = obs.output_error(rtn, target, g), obs.output_error(wq, target, g)
    assert e_gptq * GPTQ_GAIN[act_order] < e_rtn, (e_gptq, e_rtn)
    # the closed form output_error is the explicit one on these rows
    explicit = np.linalg.norm(x @ (wq.astype(np.float64) - target).T) / np.linalg.norm(x @ target.T.astype(np.float64))
    assert abs(explicit - e_gptq) < 1e-6 * max(1.0, explicit)
    if mask is not None:
        assert np.all(wq[~mask] == 0), "a pruned weight moved off zero"
    # every value is on the grid: the packer, given GPTQ's scales, stores exactly these values
    if bits == 8:
        packed = L.pack_int8("w", wq, mask, scale=scale)
    elif symmetric:
        packed = L.pack_int4_grouped("w", wq, mask, group_size=group, scale=scale)
    else:
        packed = L.pack_int4_grouped("w", wq, mask, group_size=group, symmetric=False, scale=scale, zero_point=zero)
    np.testing.assert_array_equal(packed.to_dense(), wq)
    if mask is not None and bits == 8:
        if mask_name == "2:4":
            sparse = L.pack_nm("w", wq, mask, n=2, m=4, quant="int8", scale=scale)
        elif mask_name == "4x4 50%":
            sparse = L.pack_bsr("w", wq, mask, block_shape=(4, 4), quant="int8", scale=scale)
        else:
            sparse = L.pack_csr("w", wq, mask, quant="int8", scale=scale)
        np.testing.assert_array_equal(sparse.to_dense(), wq)


def test_int4_scale_search_never_rounds_worse_than_max_scaling():
    """search_int4_grid picks, per (row, group), the candidate grid with the least
    input-weighted rounding error; max|group| / 7 is a candidate, so no group can get worse, and
    on heavy-tailed weights clipping the tails must win clearly (measured 1.30x lower here)."""
    rng = np.random.default_rng(5)
    w = (rng.standard_t(3, size=(64, 200)) * 0.02).astype(np.float32)
    w[3, 32:64] = 0.0                                     # an all-zero group keeps scale 1
    d = np.exp(rng.standard_normal(200))
    searched, zp = gptq.search_int4_grid(w, d, 32)
    plain = gptq.rtn_scales(w, 4, group_size=32)
    assert searched.shape == plain.shape == (64, 7) and searched.dtype == np.float32
    assert searched[3, 1] == 1.0

    def group_errors(scale):
        q = L.pack_int4_grouped("w", w, group_size=32, scale=scale).to_dense().astype(np.float64)
        e = np.zeros((64, 224))
        e[:, :200] = d * (w - q) ** 2
        return e.reshape(64, 7, 32).sum(axis=2)
    e_s, e_p = group_errors(searched), group_errors(plain)
    assert np.all(e_s <= e_p * (1 + 1e-9))
    assert e_s.sum() * 1.15 < e_p.sum(), (e_s.sum(), e_p.sum())
    # a group whose extreme is negative: 7/8 of the max scale puts it exactly on -8
    v = np.linspace(-0.5, 0.5, 32).astype(np.float32)
    v[0] = -0.8
    s1, _ = gptq.search_int4_grid(v[None, :], np.ones(32), 32)
    assert s1[0, 0] < gptq.rtn_scales(v[None, :], 4, group_size=32)[0, 0]
    # asymmetric: the same guarantee against the packer's own (max - min) / 15 grid, and lower
    # than the best symmetric grid on these weights (measured 1.2x lower)
    sa, za = gptq.search_int4_grid(w, d, 32, symmetric=False)
    assert za.dtype == np.uint8 and za.shape == sa.shape and za.max() <= 15 and (sa[3, 1], za[3, 1]) == (1.0, 0)

    def asym_errors(**grid):
        q = L.pack_int4_grouped("w", w, group_size=32, symmetric=False, **grid).to_dense().astype(np.float64)
        e = np.zeros((64, 224))
        e[:, :200] = d * (w - q) ** 2
        return e.reshape(64, 7, 32).sum(axis=2)
    e_as, e_ap = asym_errors(scale=sa, zero_point=za), asym_errors()
    assert np.all(e_as <= e_ap * (1 + 1e-9))
    assert e_as.sum() * 1.1 < e_s.sum(), (e_as.sum(), e_s.sum())


def test_rtn_quantize_is_what_the_packer_stores():
    w, _, _ = _layer(seed=3)
    np.testing.assert_array_equal(gptq.rtn_quantize(w, 8), L.pack_int8("w", w).to_dense())
    np.testing.assert_array_equal(gptq.rtn_quantize(w, 4, group_size=64),
                                  L.pack_int4_grouped("w", w, group_size=64).to_dense())
    np.testing.assert_array_equal(gptq.rtn_quantize(w, 8, per_channel=False),
                                  L.pack_int8("w", w, per_channel=False).to_dense())


def test_bad_scales_and_shapes_are_refused():
    w, _, g = _layer()
    with pytest.raises(ValueError, match="positive finite float32"):
        L.pack_int8("w", w, scale=np.ones(3, np.float32))
    with pytest.raises(ValueError, match="symmetric"):
        L.pack_int8("w", w, symmetric=False, scale=np.ones(w.shape[0], np.float32))
    # a given asymmetric int4 grid (GPTQ's): scale and zero point together, each well formed
    s4, z4 = np.ones((w.shape[0], 4), np.float32), np.full((w.shape[0], 4), 8, np.uint8)
    with pytest.raises(ValueError, match="a zero point needs asymmetric quantization"):
        L.pack_int4_grouped("w", w, group_size=64, scale=s4, zero_point=z4)
    with pytest.raises(ValueError, match="both scale and zero_point, or neither"):
        L.pack_int4_grouped("w", w, group_size=64, symmetric=False, scale=s4)
    with pytest.raises(ValueError, match=r"weight 'w': a given zero point must be 192 uint8 value\(s\) in \[0, 15\]"):
        L.pack_int4_grouped("w", w, group_size=64, symmetric=False, scale=s4, zero_point=z4 + 8)
    with pytest.raises(ValueError, match="asymmetric GPTQ is int4 only"):
        gptq.gptq_quantize(w, g, 8, symmetric=False)
    with pytest.raises(ValueError, match=r"expected \(256, 256\)"):
        gptq.gptq_quantize(w, g[:10, :10], 8)
    with pytest.raises(ValueError, match="8 or 4 bits"):
        gptq.gptq_quantize(w, g, 2)
    with pytest.raises(ValueError, match="group size"):
        gptq.gptq_quantize(w, g, 4)


def test_smooth_factors_balance_the_ranges():
    x = np.array([100.0, 1.0, 0.0, 4.0])
    wmax = np.array([1.0, 1.0, 2.0, 0.0])
    s = smooth_factors(x, wmax, 0.5)
    np.testing.assert_allclose(s, [10.0, 1.0, 1.0, 1.0])     # 0 in X or W: nothing to balance
    assert s.dtype == np.float32
    # after smoothing, max|X / s| = max|W * s| per channel at alpha 0.5
    assert (x[0] / s[0]) == pytest.approx(wmax[0] * s[0])


# --------------------------------------------------------------------------- converter ---

@pytest.fixture(scope="module")
def outlier_model():
    """LayerNorm -> Linear -> ReLU -> Linear -> LayerNorm(residual) -> Linear, with a few
    LayerNorm channels 40x the rest (the activation outliers of real transformers): the first
    Linear's input is a LayerNorm output read by it alone (SmoothQuant folds 1/s into the
    LayerNorm), the second's is a ReLU output (a Mul by 1/s is inserted), the last one's
    LayerNorm output is also read by the residual Add (a Mul, so the residual is unchanged)."""
    import torch
    import torch.nn as nn

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln = nn.LayerNorm(64)
            self.fc1 = nn.Linear(64, 128)
            self.fc2 = nn.Linear(128, 64)
            self.ln2 = nn.LayerNorm(64)
            self.fc3 = nn.Linear(64, 64)

        def forward(self, x):
            h = self.fc2(torch.relu(self.fc1(self.ln(x))))
            y = self.ln2(h + x)
            return self.fc3(y) + y

    m = M()
    model_zoo.randomize_(m, seed=4)
    with torch.no_grad():
        for ln in (m.ln, m.ln2):
            ln.weight[:4] = 40.0
    rng = np.random.default_rng(0)
    x = rng.standard_normal((24, 16, 64)).astype(np.float32)
    data = model_zoo.export(m, (torch.from_numpy(x[:2]),), input_names=["x"], output_names=["y"],
                            dynamic_axes={"x": {0: "b"}, "y": {0: "b"}})
    calib = [{"x": x[i:i + 8]} for i in range(0, 16, 8)]
    held = {"x": x[16:]}
    return data, calib, held


def _cosine_to_fp32(data, g, feed):
    want = runtime.InferenceSession(runtime.convert.from_onnx(data), backend="reference").run(None, feed)[0]
    got = runtime.InferenceSession(g, backend="reference").run(None, feed)[0]
    a, b = want.ravel().astype(np.float64), got.ravel().astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)), float(np.abs(a - b).max() / np.abs(a).max())


def test_smoothquant_lowers_static_int8_error_and_keeps_other_readers_exact(outlier_model):
    data, calib, held = outlier_model
    plain = runtime.convert(data, calib=calib, quant="int8", act="static", smooth="none")
    lines: list[str] = []
    smooth = runtime.convert(data, calib=calib, quant="int8", act="static", smooth=0.5, progress=lines.append)
    _, err_plain = _cosine_to_fp32(data, plain, held)
    _, err_smooth = _cosine_to_fp32(data, smooth, held)
    assert err_smooth < 0.7 * err_plain, (err_smooth, err_plain)
    notes = {lr["name"]: lr["note"] for lr in smooth.metadata["report"]["layers"]}
    assert any("folded into" in n for n in notes.values()), notes
    assert sum("Mul by 1/s inserted" in n for n in notes.values()) == 2, notes
    assert any(line.startswith("smooth ") for line in lines)
    # the smoothing itself changes nothing but rounding: the same graph unquantized is the fp32 model
    muls = [n for n in smooth.nodes if n.op == "Mul" and n.name.endswith("/smooth")]
    assert len(muls) == 2
    # per-layer errors are measured against the unsmoothed layer on the same input (small, finite)
    for lr in smooth.metadata["report"]["layers"]:
        assert lr["output_rel_error"] < 0.05, lr


def test_smoothing_alone_is_exact_in_fp32(outlier_model):
    """The smoothed graph with its weights left in float computes the fp32 model."""
    from runtime.convert import sequential
    from runtime.convert.pipeline import _Plan, _copy, find_layers
    data, calib, held = outlier_model
    g = _copy(runtime.convert.from_onnx(data))
    layers = find_layers(g)
    plans = {lr.name: _Plan() for lr in layers}
    sequential.run(g, layers, plans, sequential.Steps(smooth_alpha=0.5), calib,
                   prune_sparsity=lambda lr: None, baseline_mask=None)
    assert all(plans[lr.name].smooth is not None for lr in layers)
    want = runtime.InferenceSession(runtime.convert.from_onnx(data), backend="reference").run(None, held)[0]
    got = runtime.InferenceSession(g, backend="reference").run(None, held)[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("extra, layout", [({}, "int8"), ({"prune": "nm"}, "nm"),
                                           ({"prune": "magnitude", "sparsity": 0.6}, "csr"),
                                           ({"quant": "int4"}, "int4_grouped"),
                                           ({"quant": "int4", "symmetric": False}, "int4_grouped")])
def test_gptq_through_the_converter(outlier_model, extra, layout):
    data, calib, held = outlier_model
    opts = {"quant": "int8", **extra}
    rtn = runtime.convert(data, calib=calib, **opts)
    g = runtime.convert(data, calib=calib, quant_method="gptq", **opts)
    rep = g.metadata["report"]
    for lr in rep["layers"]:
        assert lr["layout"] == layout
        m = re.search(r"gptq int(\d): output error (\d+\.\d+) \(round to nearest: (\d+\.\d+)\)", lr["note"])
        assert m, lr["note"]
        assert float(m.group(2)) <= float(m.group(3)), lr["note"]
    # end to end on held-back rows GPTQ is not always ahead: with obs pruning and drift correction
    # (the defaults) csr 60% gave 0.99698 against 0.99723 for round to nearest
    assert rep["end_to_end"]["cosine"] >= rtn.metadata["report"]["end_to_end"]["cosine"] - 1e-3
    if extra.get("symmetric") is False:      # GPTQ's zero points reached the file
        zps = [t.fields["zero_point"] for t in g.initializers.values() if t.layout == "int4_grouped"]
        assert zps and all(z.dtype == np.uint8 for z in zps)
    if "prune" in extra:
        for node in g.nodes:
            if node.op == "Linear" and extra["prune"] == "nm":
                t = g.initializers[node.inputs[1]].to_dense()
                assert np.all((t.reshape(t.shape[0], -1, 4) != 0).sum(axis=2) <= 2)


def test_gptq_unpruned_by_the_budget_is_rounded_from_the_original(outlier_model):
    """The budget's "unpruned, still int8" step packs the layer's own weight by rounding:
    GPTQ's grid belonged to the pruned weight."""
    data, calib, held = outlier_model
    orig = {n: t.fields["data"] for n, t in runtime.convert.from_onnx(data).initializers.items()}
    g = runtime.convert(data, calib=calib, quant="int8", quant_method="gptq", prune="magnitude",
                        sparsity=0.9, max_error=0.999, smooth="none")   # unsmoothed: orig is the weight
    unpruned = g.metadata["report"]["budget"]["unpruned"]
    assert unpruned
    for node in g.nodes:
        if node.name in unpruned and node.name not in g.metadata["report"]["budget"]["reverted"]:
            t = g.initializers[node.inputs[1]]
            assert t.layout == "int8"
            np.testing.assert_array_equal(t.to_dense(), L.pack_int8("w", orig[node.inputs[1]]).to_dense())


@pytest.mark.parametrize("options, fragment", [
    ({"quant": "int8", "quant_method": "gptq"}, "quant_method='gptq' needs real calibration data"),
    ({"quant_method": "gptq", "calib": [{}]}, "needs quant='int8' or 'int4'"),
    ({"quant": "int8", "quant_method": "gptq", "symmetric": False, "calib": [{}]}, "asymmetric weights is int4 only"),
    ({"quant": "int8", "quant_method": "optq"}, "quant_method must be one of rtn, gptq"),
    ({"smooth": 0.5, "calib": [{}]}, "it needs quant='int8', got quant='none'"),
    ({"quant": "int4", "smooth": "auto", "calib": [{}]}, "int4 layers are weight-only"),
    ({"quant": "int8", "act": "static", "smooth": 1.5, "calib": [{}]}, "alpha, in (0, 1)"),
    ({"quant": "int8", "act": "static", "smooth": 0.5}, "smooth (SmoothQuant) needs real calibration data"),
])
def test_bad_quantization_options_are_refused_before_any_work(outlier_model, options, fragment):
    data, *_ = outlier_model
    with pytest.raises(ValueError, match=re.escape(fragment)):
        runtime.convert(data, **options)


def test_cli_flags(tmp_path, outlier_model, capsys):
    from runtime.cli import main
    data, calib, _ = outlier_model
    (tmp_path / "m.onnx").write_bytes(data)
    np.savez(tmp_path / "calib.npz", x=np.concatenate([f["x"] for f in calib]))
    rc = main(["convert", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "m.qrt"), "--quant", "int8",
               "--act", "static", "--smooth", "0.5", "--quant-method", "gptq", "--calib", str(tmp_path / "calib.npz"),
               "--report", str(tmp_path / "r.json")])
    err = capsys.readouterr().err          # progress goes to stderr
    assert rc == 0, err
    assert "gptq int8" in err and "smooth" in err
    import json
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["options"]["quant_method"] == "gptq" and rep["options"]["smooth"] == 0.5


def test_smooth_auto_searches_alpha_per_input(outlier_model):
    """smooth="auto": per layer input, the alpha (or none) whose simulated int8 output error is
    lowest; on the outlier channels it smooths, and it is no worse than a fixed 0.5."""
    data, calib, held = outlier_model
    lines: list[str] = []
    auto = runtime.convert(data, calib=calib, quant="int8", act="static", smooth="auto", progress=lines.append)
    fixed = runtime.convert(data, calib=calib, quant="int8", act="static", smooth=0.5)
    searches = [line for line in lines if "alpha search" in line]
    assert len(searches) == 3, lines
    assert any("folded into" in lr["note"] or "inserted" in lr["note"] for lr in auto.metadata["report"]["layers"])
    _, err_auto = _cosine_to_fp32(data, auto, held)
    _, err_fixed = _cosine_to_fp32(data, fixed, held)
    assert err_auto <= err_fixed * 1.05, (err_auto, err_fixed)


def test_alpha_search_prefers_no_smoothing_without_outliers():
    from runtime.convert.smooth import search_alpha
    rng = np.random.default_rng(0)
    x = rng.standard_normal((512, 64))
    w = rng.standard_normal((32, 64)).astype(np.float32)
    best, errors = search_alpha(x, x.min(axis=0), x.max(axis=0), w, "dynamic")
    assert set(errors) == {None, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9}
    assert errors[best] == min(errors.values())
    x[:, :3] *= 50                                   # outlier channels: smoothing must win
    best, errors = search_alpha(x, x.min(axis=0), x.max(axis=0), w, "static")
    assert best is not None and errors[best] < 0.5 * errors[None], errors


def test_alpha_search_rounds_weights_on_the_grid_the_file_gets():
    """weight_bits=7 (the converter's --weight-bits 7): the search measures each alpha with the
    weights on [-63, 63], whose rounding error is larger than on 8 bits."""
    from runtime.convert.smooth import search_alpha
    rng = np.random.default_rng(1)
    x = rng.standard_normal((256, 64))
    w = rng.standard_normal((32, 64)).astype(np.float32)
    _, e8 = search_alpha(x, x.min(axis=0), x.max(axis=0), w, "dynamic")
    _, e7 = search_alpha(x, x.min(axis=0), x.max(axis=0), w, "dynamic", weight_bits=7)
    assert all(e7[a] > e8[a] for a in e8), (e7, e8)


def test_int8_with_calibration_is_smoothed_by_default(outlier_model):
    """smooth unset: "auto" for int8 with real calibration data (the report says so), no
    smoothing without it or for int4; "none" turns it off."""
    data, calib, held = outlier_model
    default = runtime.convert(data, calib=calib, quant="int8")
    off = runtime.convert(data, calib=calib, quant="int8", smooth="none")
    assert default.metadata["report"]["options"]["smooth"] == "auto"
    assert off.metadata["report"]["options"]["smooth"] is None
    assert any(n.op == "Mul" and n.name.endswith("/smooth") for n in default.nodes)
    assert not any(n.name.endswith("/smooth") for n in off.nodes)
    _, err_default = _cosine_to_fp32(data, default, held)
    _, err_off = _cosine_to_fp32(data, off, held)
    assert err_default < err_off, (err_default, err_off)
    for options in (dict(quant="int8"), dict(quant="int4", calib=calib)):
        g = runtime.convert(data, **options)
        assert g.metadata["report"]["options"]["smooth"] is None
        assert not any(n.name.endswith("/smooth") for n in g.nodes)


# ------------------------------------------------------------------------ bias correction ---

def test_bias_shift_is_the_least_squares_constant():
    from runtime.convert.sequential import bias_shift
    rng = np.random.default_rng(2)
    x = rng.standard_normal((400, 24)) + 1.5              # inputs with a mean (ReLU / GELU outputs)
    w = rng.standard_normal((8, 24)).astype(np.float32)
    final = (w * (rng.random(w.shape) > 0.7)).astype(np.float32)   # pruned: a mean error remains
    c, before, after = bias_shift(w, final, x.T @ x, x.sum(axis=0), len(x))
    ref = x @ w.T.astype(np.float64)
    err = lambda y: float(np.linalg.norm(y - ref) / np.linalg.norm(ref))  # noqa: E731
    assert before == pytest.approx(err(x @ final.T.astype(np.float64)), rel=1e-9)
    assert after == pytest.approx(err(x @ final.T.astype(np.float64) + c), rel=1e-6)
    assert after < 0.8 * before
    for eps in (0.05, -0.05):                            # any other constant does worse
        assert err(x @ final.T.astype(np.float64) + c + eps) > after


def test_bias_correction_through_the_converter(outlier_model):
    """Magnitude pruning leaves a mean output error on inputs with a mean: bias correction
    removes it (held-back rows the calibration did not see), with no bias or a shared one
    left changed for other readers; layers the budget gives back keep their own bias."""
    data, calib, held = outlier_model
    opts = dict(calib=calib, prune="magnitude", sparsity=0.8, prune_method="magnitude", quant="int8", smooth="none")
    plain = runtime.convert(data, **opts)
    corrected = runtime.convert(data, bias_correction=True, **opts)
    cos_plain, err_plain = _cosine_to_fp32(data, plain, held)
    cos_corr, err_corr = _cosine_to_fp32(data, corrected, held)
    # measured: cosine 0.588 -> 0.607, max error 0.848 -> 0.804
    assert cos_corr > cos_plain + 0.01 and err_corr < err_plain, (cos_corr, cos_plain, err_corr, err_plain)
    notes = [lr["note"] for lr in corrected.metadata["report"]["layers"]]
    assert all("bias corrected: output error" in n for n in notes), notes
    for lr in corrected.metadata["report"]["layers"]:
        before, after = (float(v) for v in re.search(r"bias corrected: output error (\S+) -> (\S+)", lr["note"]).groups())
        assert after <= before
    linears = [n for n in corrected.nodes if n.op == "Linear"]
    assert all(n.inputs[2].endswith(".corrected") for n in linears)
    assert corrected.metadata["report"]["options"]["bias_correction"] is True
    # every layer back in fp32 (an unreachable budget): the model's own biases
    fp32 = runtime.convert(data, bias_correction=True, max_error=0.99999999, **opts)
    assert not any(n.inputs[2].endswith(".corrected") for n in fp32.nodes if n.op == "Linear"
                   if n.name in fp32.metadata["report"]["budget"]["reverted"])


@pytest.mark.parametrize("options, fragment", [
    ({"quant": "int8", "bias_correction": True}, "bias_correction needs real calibration data"),
    ({"bias_correction": True, "calib": [{}]}, "it needs quant or a sparse prune"),
    ({"quant": "int8", "symmetric": False, "bias_correction": True, "calib": [{}]}, "takes symmetric weights"),
])
def test_bad_bias_correction_options(outlier_model, options, fragment):
    with pytest.raises(ValueError, match=re.escape(fragment)):
        runtime.convert(outlier_model[0], **options)
