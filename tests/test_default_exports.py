"""The models people export, exported the default way, import and match onnxruntime fp32.

transformers models with their default attention (sdpa: IsNaN + Where around the softmax),
small configs and random weights, through torch.onnx.export's TorchScript exporter (and the
encoders that fuse into one Attention node through the default dynamo exporter too);
ViT; and CNNs built from the blocks of torchvision's resnet18, mobilenet_v3_small and
efficientnet_b0 (Conv + BatchNorm + ReLU / MaxPool / residual Add; depthwise convs, Hardswish,
Hardsigmoid squeeze-excitation; SiLU and Sigmoid squeeze-excitation): torchvision's wheel on the
package index is built against the CUDA torch and does not load beside the CPU build this
project pins, so the blocks are written here with torch.nn. Every model runs on the default
backend ("auto") and must agree with onnxruntime within 1e-4 of the output's scale.
"""
from __future__ import annotations

import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")
T = pytest.importorskip("transformers")
ort = pytest.importorskip("onnxruntime")

import runtime  # noqa: E402

TOL = 1e-4
_SMALL = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=100,
              max_position_embeddings=64)


_DEBERTA_V3 = dict(_SMALL, relative_attention=True, position_buckets=8, norm_rel_ebd="layer_norm", share_att_key=True,
                   pos_att_type=["p2c", "c2p"], position_biased_input=False, type_vocab_size=0, layer_norm_eps=1e-7)


def _text_models():
    return {
        "bert": lambda: T.BertModel(T.BertConfig(**_SMALL)),
        "distilbert": lambda: T.DistilBertModel(T.DistilBertConfig(dim=32, n_layers=1, n_heads=2, hidden_dim=64,
                                                                   vocab_size=100, max_position_embeddings=64)),
        "roberta": lambda: T.RobertaModel(T.RobertaConfig(**_SMALL)),
        "albert": lambda: T.AlbertModel(T.AlbertConfig(embedding_size=16, **_SMALL)),
        "electra": lambda: T.ElectraModel(T.ElectraConfig(embedding_size=16, **_SMALL)),
        "xlm-roberta": lambda: T.XLMRobertaModel(T.XLMRobertaConfig(**_SMALL)),
        "mpnet": lambda: T.MPNetModel(T.MPNetConfig(**_SMALL)),
        "deberta-v2": lambda: T.DebertaV2Model(T.DebertaV2Config(**_SMALL)),
        # DeBERTa-v3's configuration (microsoft/deberta-v3-*): disentangled attention with
        # log-bucketed relative positions, shared key projections, no absolute positions
        "deberta-v3": lambda: T.DebertaV2Model(T.DebertaV2Config(**_DEBERTA_V3)),
        "gpt2": lambda: T.GPT2Model(T.GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=100, n_positions=64)),
    }


class _Text(torch.nn.Module):
    """input_ids, attention_mask -> last hidden state, as a user wraps a transformers model."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask)[0]


def _export(module, args, names, dynamic) -> bytes:
    buf = io.BytesIO()
    torch.onnx.export(module.eval(), args, buf, input_names=names, output_names=["y"], dynamic_axes=dynamic,
                      opset_version=17, dynamo=False)
    return buf.getvalue()


def _assert_matches(data: bytes, feeds: dict, what: str) -> None:
    got = runtime.InferenceSession(runtime.convert(data)).run(None, feeds)[0]
    want = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert got.shape == want.shape, what
    err = float(np.max(np.abs(got.astype(np.float64) - want)))
    assert err <= TOL * max(1.0, float(np.max(np.abs(want)))), f"{what}: max |qrt - onnxruntime| = {err}"


@pytest.mark.parametrize("name", list(_text_models()))
def test_transformers_default_export(name):
    torch.manual_seed(0)
    model = _text_models()[name]().eval()
    assert model.config._attn_implementation in ("sdpa", "eager")   # whatever the default is
    ids = torch.randint(3, 100, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, 6:] = 0                                                  # a padded row
    data = _export(_Text(model), (ids, mask), ["input_ids", "attention_mask"],
                   {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}})
    for b, s in ((2, 8), (1, 5)):                                    # the symbolic axes at other sizes
        feeds = {"input_ids": ids[:b, :s].numpy(), "attention_mask": mask[:b, :s].numpy()}
        _assert_matches(data, feeds, f"{name} batch {b} seq {s}")


# Encoders whose sdpa attention is softmax(q k^T / sqrt(d) + mask) v fuse into one Attention
# node (runtime/fuse.py); MPNet's scores + relative position bias + mask too (the bias and the
# mask summed by one Add before it); GPT-2 too (its causal mask is the additive mask; its key /
# value cache, exported without a past, is a one-input Concat, and its head shapes are read off
# the Split of one projection); DeBERTa-v2 (disentangled attention, 3-D batched MatMuls) runs
# unfused. "dynamo" is torch.onnx.export with no exporter named (the default since torch 2.9):
# its K^T goes through a 3-D Reshape / Transpose / Reshape and its mask uses float32's minimum;
# the TorchScript export masks with -inf, so a sequence of padding only has NaN softmax rows
# that its IsNaN + Where turn into zeros (nan_to_zero). DeBERTa-v3 (relative attention) fuses
# into DisentangledAttention from the dynamo export: test_deberta_v3_default_export_fuses.
_FUSED = ["bert", "distilbert", "roberta", "albert", "electra", "xlm-roberta", "mpnet", "gpt2"]


@pytest.mark.parametrize("name,exporter", [(n, "torchscript") for n in _FUSED]
                         + [(n, "dynamo") for n in ("bert", "distilbert", "roberta", "gpt2")])
def test_sdpa_export_fuses_into_attention(name, exporter, tmp_path):
    from runtime.fuse import fuse
    torch.manual_seed(0)
    model = _text_models()[name]().eval()
    ids = torch.randint(3, 100, (3, 8))
    mask = torch.ones(3, 8, dtype=torch.long)
    mask[1, 5:] = 0                                                  # padding
    mask[2, :] = 0                                                   # padding only
    names = ["input_ids", "attention_mask"]
    axes = {n: {0: "batch", 1: "seq"} for n in names}
    if exporter == "dynamo":
        path = tmp_path / "m.onnx"                                   # plus m.onnx.data beside it
        torch.onnx.export(_Text(model), (ids, mask), path, input_names=names, output_names=["y"],
                          dynamic_axes=axes)
        data = str(path)
    else:
        data = _export(_Text(model), (ids, mask), names, axes)
    graph = runtime.convert(data)
    fused = fuse(graph)
    ops = [n.op for n in fused.nodes]
    assert ops.count("Attention") == 1 and "Softmax" not in ops and "IsNaN" not in ops, ops
    if exporter == "dynamo" and name != "gpt2":
        # the dynamo export merges the heads by a Reshape to a run-time [batch, seq, -1]; shape
        # folding follows the mask's GatherND, so it folds and goes: the projection reads the
        # Attention output (GPT-2 flattens it to 2-D for its Gemm, a Reshape of its own)
        out = next(n for n in fused.nodes if n.op == "Attention").outputs[0]
        assert [n.op for n in fused.nodes if out in n.inputs] == ["Linear"], ops
    feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    want = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert np.isfinite(want).all()
    for backend in ("reference", "numba", "native"):
        got = runtime.InferenceSession(graph, backend=backend).run(None, feeds)[0]
        err = float(np.max(np.abs(got.astype(np.float64) - want)))
        assert err <= TOL * max(1.0, float(np.max(np.abs(want)))), f"{name} {exporter} {backend}: {err}"


@pytest.mark.parametrize("layers,seq", [(2, 8), (1, 40)])
def test_deberta_v3_default_export_fuses(layers, seq, tmp_path):
    # the default (dynamo) export of DeBERTa-v3's attention: Q / K / V heads merged to 3-D,
    # c2p / p2c as MatMul + GatherElements over (B*H, S, 2 * span), a masked fill, Softmax;
    # every layer becomes one DisentangledAttention (runtime/fuse.py). seq 40 > 2 * buckets:
    # the log buckets and the clipped indices. Padding, and a row of padding only (its softmax
    # rows are uniform, the masked fill's lowest float32 value absorbing every score).
    from runtime.fuse import fuse
    torch.manual_seed(0)
    model = T.DebertaV2Model(T.DebertaV2Config(**dict(_DEBERTA_V3, num_hidden_layers=layers))).eval()
    ids = torch.randint(3, 100, (3, seq))
    mask = torch.ones(3, seq, dtype=torch.long)
    mask[1, seq // 2:] = 0
    mask[2, :] = 0
    names = ["input_ids", "attention_mask"]
    path = tmp_path / "m.onnx"
    torch.onnx.export(_Text(model).eval(), (ids, mask), path, input_names=names, output_names=["y"],
                      dynamic_axes={n: {0: "batch", 1: "seq"} for n in names})
    graph = runtime.convert(str(path))
    ops = [n.op for n in fuse(graph).nodes]
    assert ops.count("DisentangledAttention") == layers, ops
    for gone in ("Softmax", "GatherElements", "MatMul", "Tile", "Expand"):
        assert gone not in ops, (gone, ops)
    feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    for backend in ("reference", "native"):
        got = runtime.InferenceSession(graph, backend=backend).run(None, feeds)[0]
        err = float(np.max(np.abs(got.astype(np.float64) - want)))
        assert err <= TOL * max(1.0, float(np.max(np.abs(want)))), f"deberta-v3 {backend}: {err}"
    unfused = runtime.InferenceSession(graph, fuse=False).run(None, feeds)[0]
    assert float(np.max(np.abs(unfused.astype(np.float64) - want))) <= TOL * max(1.0, float(np.max(np.abs(want))))
    # a finite fill is not absorbed by every score (a fully masked row would no longer be uniform
    # as an additive mask): the pattern is left as it is
    from kernels.core.layouts import dense_tensor
    readers = graph.consumers()
    fill = next(n.inputs[1] for n in graph.nodes
                if n.op == "Where" and any(r.op == "Softmax" for r in readers.get(n.outputs[0], [])))
    graph.initializers[fill] = dense_tensor(fill, np.array(-1e4, np.float32))
    assert "DisentangledAttention" not in [n.op for n in fuse(graph).nodes]


class _SE(torch.nn.Module):
    def __init__(self, c, gate):
        super().__init__()
        self.pool, self.f1, self.f2, self.gate = torch.nn.AdaptiveAvgPool2d(1), torch.nn.Conv2d(c, c // 2, 1), \
            torch.nn.Conv2d(c // 2, c, 1), gate

    def forward(self, x):
        return x * self.gate(self.f2(torch.relu(self.f1(self.pool(x)))))


class _Basic(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        nn = torch.nn
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                                  nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return torch.relu(x + self.body(x))


def _cnn(name):
    nn = torch.nn
    if name == "resnet18-blocks":
        return nn.Sequential(nn.Conv2d(3, 16, 7, 2, 3, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
                             _Basic(16), nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(16, 10))
    if name == "mobilenet_v3-blocks":
        return nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.Hardswish(),
                             nn.Conv2d(16, 16, 3, 1, 1, groups=16), nn.BatchNorm2d(16), _SE(16, nn.Hardsigmoid()),
                             nn.Conv2d(16, 24, 1), nn.Hardswish(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 10))
    return nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.SiLU(),       # efficientnet_b0
                         nn.Conv2d(16, 16, 3, 1, 1, groups=16), nn.BatchNorm2d(16), nn.SiLU(), _SE(16, nn.Sigmoid()),
                         nn.Conv2d(16, 24, 1), nn.BatchNorm2d(24), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Dropout(0.2), nn.Linear(24, 10))


@pytest.mark.parametrize("name", ["resnet18-blocks", "mobilenet_v3-blocks", "efficientnet_b0-blocks"])
def test_cnn_default_export(name):
    torch.manual_seed(0)
    model = _cnn(name)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):          # non-trivial statistics, so folding matters
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 32, 32)
    data = _export(model, (x,), ["x"], {"x": {0: "batch"}})
    _assert_matches(data, {"x": x.numpy()}, name)


class _Vit(torch.nn.Module):
    """pixel_values -> last hidden state of a small ViT (32 x 32 images, 8 x 8 patches)."""

    def __init__(self, layers: int):
        super().__init__()
        self.model = T.ViTModel(T.ViTConfig(hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                                            intermediate_size=64, image_size=32, patch_size=8))

    def forward(self, pixel_values):
        return self.model(pixel_values=pixel_values).last_hidden_state


def test_vit_default_export():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    data = _export(_Vit(1), (x,), ["pixel_values"], {"pixel_values": {0: "batch"}})
    _assert_matches(data, {"pixel_values": x.numpy()}, "vit")


def test_vit_dynamo_export_fuses(tmp_path):
    # the dynamo export fixes ViT's sequence length: its head splits are Reshape(x, [-1, S, H, D])
    # and K^T goes through Reshape([-1, S, D]) / Transpose / Reshape([-1, H, D, S]);
    # runtime/shape_fold.py writes the first as [0, 0, H, D] and the second as one Transpose,
    # so every layer's attention fuses
    from runtime.fuse import fuse
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    path = tmp_path / "vit.onnx"
    torch.onnx.export(_Vit(2).eval(), (x,), path, input_names=["pixel_values"], output_names=["y"],
                      dynamic_axes={"pixel_values": {0: "batch"}})
    graph = runtime.convert(str(path))
    ops = [n.op for n in fuse(graph).nodes]
    assert ops.count("Attention") == 2 and "Softmax" not in ops and "MatMul" not in ops, ops
    for batch in (2, 3):                                  # the batch stays a run-time axis
        feeds = {"pixel_values": np.random.default_rng(batch).standard_normal((batch, 3, 32, 32)).astype(np.float32)}
        want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
        got = runtime.InferenceSession(graph).run(None, feeds)[0]
        err = float(np.max(np.abs(got.astype(np.float64) - want)))
        assert err <= TOL * max(1.0, float(np.max(np.abs(want)))), f"vit dynamo batch {batch}: {err}"
