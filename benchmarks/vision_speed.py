"""A ViT and small CNNs exported the default way: qrt int8 against onnxruntime int8 and fp32,
in one process.

    python benchmarks/vision_speed.py [--seconds 1.5] [--batch 1]

ViT: transformers' ViTModel with ViT-S-like sizes (hidden 384, 6 layers of 6 heads of 64, FFN
1536, 224 x 224 images, 16 x 16 patches), random weights. ResNet-like: a 7 x 7 / 2 stem with
BatchNorm and ReLU, a 3 x 3 / 2 MaxPool, two basic blocks of 64 channels, a stride-2 3 x 3 conv
to 128 and two blocks of 128, global pooling, a Linear. MobileNetV3-like: a 3 x 3 / 2 stem, six
inverted residual blocks (1 x 1 expand, 3 x 3 or 5 x 5 depthwise, squeeze-excitation in three,
1 x 1 project; Hardswish), a 1 x 1 conv to 480, pooling, a Linear. EfficientNet-like: the first
stages of EfficientNet-B0 (a 3 x 3 / 2 stem to 32, six MBConv blocks to 80 channels with SiLU and
squeeze-excitation gated by a Sigmoid), a 1 x 1 conv to 480, pooling, a Linear (torchvision's wheel does not
load beside the CPU torch this project pins, so the blocks are written with torch.nn); BatchNorm
statistics random. Both exported by ``torch.onnx.export`` (dynamo) with a dynamic batch; qrt int8
(``runtime.convert(f, quant="int8")``, or ``quant="none"`` with ``--quant none``), onnxruntime int8
(``quantize_dynamic``) and fp32, timed interleaved (benchmarks/interleaved.py).
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


import runtime  # noqa: E402
from benchmarks.interleaved import ort_quantize, ort_session, time_interleaved  # noqa: E402
from kernels.core.cpu import cpu_name  # noqa: E402
from runtime.bench.machine import cpu_pair_latency, describe_cpu_pair  # noqa: E402
from runtime.tables import format_table  # noqa: E402


def models() -> dict:
    import torch
    import transformers as T
    nn = torch.nn

    class Vit(nn.Module):
        def __init__(self):
            super().__init__()
            self.m = T.ViTModel(T.ViTConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=6,
                                            intermediate_size=1536, image_size=224, patch_size=16))

        def forward(self, x):
            return self.m(pixel_values=x).last_hidden_state

    class Basic(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                                      nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c))

        def forward(self, x):
            return torch.relu(x + self.body(x))

    def resnet():
        return nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
                             Basic(64), Basic(64), nn.Conv2d(64, 128, 3, 2, 1), nn.ReLU(), Basic(128), Basic(128),
                             nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(128, 10))
    class SE(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.f = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, c // 4, 1), nn.ReLU(), nn.Conv2d(c // 4, c, 1),
                                   nn.Hardsigmoid())

        def forward(self, x):
            return x * self.f(x)

    class Inverted(nn.Module):
        """MobileNetV3's block: 1 x 1 expand, depthwise k x k, optional SE, 1 x 1 project."""

        def __init__(self, cin, mid, cout, k, stride, se):
            super().__init__()
            layers = [nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.Hardswish(),
                      nn.Conv2d(mid, mid, k, stride, k // 2, groups=mid, bias=False), nn.BatchNorm2d(mid), nn.Hardswish()]
            layers += [SE(mid)] if se else []
            layers += [nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)]
            self.body, self.residual = nn.Sequential(*layers), stride == 1 and cin == cout

        def forward(self, x):
            return x + self.body(x) if self.residual else self.body(x)

    def mobilenet():
        return nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish(),
                             Inverted(16, 64, 24, 3, 2, False), Inverted(24, 72, 24, 3, 1, False),
                             Inverted(24, 96, 40, 5, 2, True), Inverted(40, 240, 40, 5, 1, True),
                             Inverted(40, 240, 80, 3, 2, False), Inverted(80, 480, 80, 3, 1, True),
                             nn.Conv2d(80, 480, 1, bias=False), nn.BatchNorm2d(480), nn.Hardswish(),
                             nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(480, 10))
    class SESilu(nn.Module):
        """EfficientNet's squeeze-excitation: SiLU inside, a Sigmoid gate."""

        def __init__(self, c, squeeze):
            super().__init__()
            self.f = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, squeeze, 1), nn.SiLU(), nn.Conv2d(squeeze, c, 1),
                                   nn.Sigmoid())

        def forward(self, x):
            return x * self.f(x)

    class MBConv(nn.Module):
        """EfficientNet's block (torchvision's MBConv): 1 x 1 expand (ratio > 1), depthwise k x k, SE
        squeezed to a quarter of the block's input, 1 x 1 project; SiLU throughout."""

        def __init__(self, cin, ratio, cout, k, stride):
            super().__init__()
            mid = cin * ratio
            layers = [nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.SiLU()] if ratio > 1 else []
            layers += [nn.Conv2d(mid, mid, k, stride, k // 2, groups=mid, bias=False), nn.BatchNorm2d(mid), nn.SiLU(),
                       SESilu(mid, max(1, cin // 4)), nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)]
            self.body, self.residual = nn.Sequential(*layers), stride == 1 and cin == cout

        def forward(self, x):
            return x + self.body(x) if self.residual else self.body(x)

    def efficientnet():
        return nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.SiLU(),
                             MBConv(32, 1, 16, 3, 1), MBConv(16, 6, 24, 3, 2), MBConv(24, 6, 24, 3, 1),
                             MBConv(24, 6, 40, 5, 2), MBConv(40, 6, 40, 5, 1), MBConv(40, 6, 80, 3, 2),
                             nn.Conv2d(80, 480, 1, bias=False), nn.BatchNorm2d(480), nn.SiLU(),
                             nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(480, 10))
    return {"vit-s (6 layers)": Vit, "resnet-like": resnet, "mobilenet-v3-like": mobilenet,
            "efficientnet-like": efficientnet}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=1.5, help="timed seconds per row (default 1.5)")
    ap.add_argument("--batch", type=int, default=1, help="images per run (default 1)")
    ap.add_argument("--only", nargs="+", metavar="MODEL", help="these models only (default: all)")
    ap.add_argument("--save", metavar="DIR", help="keep each model's ONNX export in DIR (NAME.onnx)")
    ap.add_argument("--act", choices=["dynamic", "static"], default="dynamic",
                    help="int8 activations on both sides: dynamic (default; onnxruntime quantize_dynamic) or "
                         "static, calibrated on 8 random images (qrt act='static'; onnxruntime quantize_static, "
                         "QDQ with uint8 activations)")
    ap.add_argument("--quant", choices=["int8", "none"], default="int8",
                    help="qrt's conversion: int8 (default) or none (qrt's float32 kernels against onnxruntime fp32)")
    args = ap.parse_args()
    import numpy as np
    import torch
    from runtime.fuse import fuse

    print(f"# {cpu_name()}; {os.cpu_count()} CPUs; batch {args.batch}; {args.act} int8 activations; "
          f"torch {torch.__version__}; qrt quant {args.quant}", flush=True)
    rows = []
    for name, make in models().items():
        if args.only and name not in args.only:
            continue
        torch.manual_seed(0)
        model = make().eval()
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
        x = torch.randn(args.batch, 3, 224, 224)
        with tempfile.TemporaryDirectory() as t:
            path, i8 = os.path.join(t, "m.onnx"), os.path.join(t, "m_int8.onnx")
            with torch.no_grad():
                torch.onnx.export(model, (x,), path, input_names=["x"], output_names=["y"],
                                  dynamic_axes={"x": {0: "batch"}})
            calib = [{"x": torch.randn(args.batch, 3, 224, 224).numpy()} for _ in range(8)]
            ort_quantize(path, i8, args.act, calib)
            if args.save:             # one file, the weights inside (the export keeps them beside it)
                import onnx
                os.makedirs(args.save, exist_ok=True)
                onnx.save(onnx.load(path), os.path.join(args.save, f"{name.split()[0]}.onnx"))
            if args.quant == "none":
                graph = runtime.convert(path, quant="none")
            else:
                graph = runtime.convert(path, quant="int8", act=args.act, calib=calib if args.act == "static" else None)
            ops = collections.Counter(n.op for n in fuse(graph).nodes)
            qrt = runtime.InferenceSession(graph)
            o8, o32 = ort_session(i8), ort_session(path)
        feed = {"x": x.numpy()}
        ref = o32.run(None, feed)[0].reshape(args.batch, -1).astype(np.float64)

        def cosine(y):            # the worst image's cosine to onnxruntime fp32's output
            y = np.asarray(y).reshape(args.batch, -1).astype(np.float64)
            return float(np.min((y * ref).sum(1) / (np.linalg.norm(y, axis=1) * np.linalg.norm(ref, axis=1))))
        cos = f"{cosine(qrt.run(None, feed)[0]):.4f} / {cosine(o8.run(None, feed)[0]):.4f}"
        before = cpu_pair_latency()
        med, _, (load, _) = time_interleaved({"qrt": lambda: qrt.run(None, feed), "ort8": lambda: o8.run(None, feed),
                                              "ort32": lambda: o32.run(None, feed)}, args.seconds)
        pair_line, far = describe_cpu_pair(before, cpu_pair_latency())
        rows.append([name, f"{med['qrt']:.2f}", f"{med['ort8']:.2f}", f"{med['ort32']:.2f}",
                     f"{med['ort8'] / med['qrt']:.2f}x", f"{med['ort32'] / med['qrt']:.2f}x",
                     f"{ops.get('Attention', 0)}", cos, f"{load:.2f}", pair_line + (" (far)" if far else "")])
    print(format_table(rows, ["model", f"qrt {args.quant} ms", "ort int8 ms", "ort fp32 ms", "qrt vs ort int8",
                              "qrt vs ort fp32", "fused attention", "cosine to fp32: qrt / ort int8", "load before",
                              "CPU pair"]))


if __name__ == "__main__":
    main()
