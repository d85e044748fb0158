"""Small float models for the import/equivalence tests, built here (no downloads).

Every parameter is drawn at random, biases and norms included, so a dropped bias or a
mis-fused LayerNorm shows up as an error instead of hiding behind zero-initialised weights.
"""
from __future__ import annotations

import io

import numpy as np


def randomize_(module, seed: int = 0, scale: float = 0.2) -> None:
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "LayerNorm.weight" in name or name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(scale * torch.randn(p.shape, generator=g))
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g))


def export(module, args, *, input_names, output_names, dynamic_axes=None, opset=17, dynamo=False) -> bytes:
    """torch.onnx.export to bytes (the same bytes then go to qrt and to onnxruntime)."""
    import torch
    module.eval()
    with torch.no_grad():
        if dynamo:
            prog = torch.onnx.export(module, args, None, input_names=input_names, output_names=output_names,
                                     dynamic_axes=dynamic_axes, opset_version=opset, dynamo=True, verbose=False)
            return prog.model_proto.SerializeToString()
        buf = io.BytesIO()
        torch.onnx.export(module, args, buf, input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic_axes, opset_version=opset, dynamo=False)
        return buf.getvalue()


def mlp():
    import torch.nn as nn
    m = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 48), nn.GELU(), nn.Linear(48, 32),
                      nn.Tanh(), nn.Linear(32, 16), nn.Sigmoid(), nn.Linear(16, 10), nn.Softmax(dim=-1))
    randomize_(m, seed=1)
    return m.eval()


def cnn():
    import torch.nn as nn

    class SmallCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                nn.Conv2d(16, 16, 3, stride=2, padding=(1, 2), groups=4), nn.BatchNorm2d(16), nn.ReLU(),
                nn.MaxPool2d(2, ceil_mode=True),
                nn.Conv2d(16, 24, 3, padding=2, dilation=2), nn.ReLU(),
                nn.AvgPool2d(2, stride=1, padding=1),
                nn.Conv2d(24, 32, 1), nn.BatchNorm2d(32), nn.ReLU(),
                nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))

        def forward(self, x):
            return self.body(x)

    m = SmallCNN()
    randomize_(m, seed=2)
    return m.eval()


def bert(layers: int = 2, hidden: int = 64, heads: int = 4, ffn: int = 128, vocab: int = 100,
         attn_implementation: str | None = "eager"):
    """A random-weight transformers BertModel, wrapped to take (input_ids, attention_mask).
    attn_implementation None: transformers' default (sdpa, what users export); "eager": the
    explicit MatMul/Softmax pattern the session's fusion turns into one Attention node."""
    import torch
    from transformers import BertConfig, BertModel
    cfg = BertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=ffn, vocab_size=vocab, max_position_embeddings=128,
                     **({} if attn_implementation is None else {"attn_implementation": attn_implementation}))
    model = BertModel(cfg)
    randomize_(model, seed=3, scale=0.1)

    class Wrapper(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            o = self.m(input_ids=input_ids, attention_mask=attention_mask)
            return o.last_hidden_state, o.pooler_output

    return Wrapper(model).eval()


def bert_feeds(batch: int, seq: int, vocab: int = 100, seed: int = 0) -> dict[str, np.ndarray]:
    """Token ids and a mask that masks real positions: each row keeps a random-length prefix
    (at least one token) and, in odd rows, also masks one position in the middle."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, size=(batch, seq), dtype=np.int64)
    mask = np.ones((batch, seq), np.int64)
    for b in range(batch):
        keep = int(rng.integers(1, seq + 1))
        mask[b, keep:] = 0
        if b % 2 == 1 and keep > 2:
            mask[b, keep // 2] = 0
    return {"input_ids": ids, "attention_mask": mask}


# ----------------------------------------------------------------- onnx.helper models ----

def onnx_model(nodes, inputs, outputs, inits=(), opset: int = 17) -> bytes:
    """A checked ONNX model (bytes) from onnx.helper nodes, value infos and initializers."""
    import onnx
    from onnx import helper
    g = helper.make_graph(nodes, "test", inputs, outputs, list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], producer_name="qrt-tests")
    onnx.checker.check_model(m)
    return m.SerializeToString()


_MLP_RNG = np.random.default_rng(0)
W1 = _MLP_RNG.standard_normal((8, 16)).astype(np.float32)
B1 = _MLP_RNG.standard_normal(16).astype(np.float32)
W2 = _MLP_RNG.standard_normal((16, 5)).astype(np.float32)
B2 = _MLP_RNG.standard_normal(5).astype(np.float32)


def small_mlp_onnx() -> bytes:
    """x[batch, 8] -> MatMul+Add -> Relu -> h (an output, also read further) -> MatMul+Add ->
    Softmax -> y[batch, 5]; outputs y and h. Weights W1, B1, W2, B2 above."""
    from onnx import TensorProto, helper, numpy_helper
    f = TensorProto.FLOAT
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["mm1"], name="fc1/MatMul"),
             helper.make_node("Add", ["mm1", "B1"], ["z1"], name="fc1/Add"),
             helper.make_node("Relu", ["z1"], ["h"], name="relu"),
             helper.make_node("MatMul", ["h", "W2"], ["mm2"], name="fc2/MatMul"),
             helper.make_node("Add", ["mm2", "B2"], ["z2"], name="fc2/Add"),
             helper.make_node("Softmax", ["z2"], ["y"], axis=-1, name="softmax")]
    inits = [numpy_helper.from_array(a, n) for a, n in ((W1, "W1"), (B1, "B1"), (W2, "W2"), (B2, "B2"))]
    return onnx_model(nodes, [helper.make_tensor_value_info("x", f, ["batch", 8])],
                      [helper.make_tensor_value_info("y", f, ["batch", 5]),
                       helper.make_tensor_value_info("h", f, ["batch", 16])], inits)


def small_mlp_numpy(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """small_mlp_onnx in float64 numpy: (y, h)."""
    x = x.astype(np.float64)
    h = np.maximum(x @ W1 + B1, 0)
    z = h @ W2 + B2
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True), h
