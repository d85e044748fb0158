"""One Conv at a time, the layers of ResNets and MobileNets: qrt int8 and float32 against onnxruntime
int8 (quantize_dynamic: ConvInteger) and float32, in one process, timed interleaved.

    python benchmarks/conv_speed.py [--seconds 0.5] [--batch 1] [--act dynamic|static]

Each layer is a one-node ONNX model (float32 weights and bias, random); qrt int8 is
``runtime.convert(f, quant="int8")`` (dynamic activations: one scale per patch; depthwise layers
and those with a patch of at most 64 values stay float32 by default, so every layer is
converted with ``quant_depthwise=True, quant_small_convs=True`` here to show the int8 form
too), qrt fp32 the unconverted import. With ``--act static`` both sides calibrate
on 8 inputs like the timed one: qrt ``act="static"``, onnxruntime ``quantize_static`` (QDQ,
uint8 activations, int8 weights: its QLinearConv) instead of ``quantize_dynamic``
(benchmarks/interleaved.py ``ort_quantize``). GOP/s count 2 x M x C/group x kh x kw x OH x OW
per image; the int8 peak is ``_native.measure_peaks`` on this machine (register-only VNNI / AVX2
loop), so "% int8 peak" is qrt int8's share of what the cores can multiply.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

import runtime  # noqa: E402
from benchmarks.interleaved import ort_quantize, ort_session, time_interleaved  # noqa: E402
from kernels.core.cpu import cpu_name  # noqa: E402
from runtime.bench.machine import cpu_pair_latency, describe_cpu_pair  # noqa: E402
from runtime.tables import format_table  # noqa: E402

# name: (C, M, H = W, kernel, stride, group)
LAYERS = {
    "resnet stem 7x7/2": (3, 64, 224, 7, 2, 1),
    "resnet 3x3 64": (64, 64, 56, 3, 1, 1),
    "resnet 3x3/2 64->128": (64, 128, 56, 3, 2, 1),
    "resnet 3x3 128": (128, 128, 28, 3, 1, 1),
    "resnet 3x3 256": (256, 256, 14, 3, 1, 1),
    "resnet 1x1 256->64": (256, 64, 56, 1, 1, 1),
    "mobilenet stem 3x3/2": (3, 16, 224, 3, 2, 1),
    "mobilenet 1x1 16->64": (16, 64, 112, 1, 1, 1),
    "mobilenet 1x1 24->72": (24, 72, 56, 1, 1, 1),
    "mobilenet 1x1 240->40": (240, 40, 28, 1, 1, 1),
    "mobilenet dw 3x3 64": (64, 64, 112, 3, 1, 64),
    "mobilenet dw 5x5/2 96": (96, 96, 56, 5, 2, 96),
}


def conv_model(c: int, m: int, hw: int, k: int, s: int, group: int) -> bytes:
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((m, c // group, k, k)) / np.sqrt(c // group * k * k)).astype(np.float32)
    b = rng.standard_normal(m).astype(np.float32) * 0.1
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[k, k], strides=[s, s],
                            pads=[k // 2] * 4, group=group)
    graph = helper.make_graph([node], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", c, hw, hw])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=0.5, help="timed seconds per row (default 0.5)")
    ap.add_argument("--batch", type=int, default=1, help="images per run (default 1)")
    ap.add_argument("--act", choices=["dynamic", "static"], default="dynamic",
                    help="int8 activations on both sides (default dynamic)")
    args = ap.parse_args()
    from kernels.native_cpu import _native
    peak = _native.measure_peaks(os.cpu_count() or 1, 1.0)["int8_gops"]
    print(f"# {cpu_name()}; {os.cpu_count()} CPUs; batch {args.batch}; {args.act} int8 activations; "
          f"int8 peak {peak:.0f} GOP/s "
          f"({_native.int8_isa()})", flush=True)
    rows = []
    for name, (c, m, hw, k, s, group) in LAYERS.items():
        rng = np.random.default_rng(1)
        def relu_input():                                                             # after a ReLU
            return np.maximum(rng.standard_normal((args.batch, c, hw, hw)), 0).astype(np.float32)
        x = relu_input()
        calib = [{"x": relu_input()} for _ in range(8)]
        with tempfile.TemporaryDirectory() as t:
            path, i8 = os.path.join(t, "c.onnx"), os.path.join(t, "c8.onnx")
            Path(path).write_bytes(conv_model(c, m, hw, k, s, group))
            ort_quantize(path, i8, args.act, calib)
            q8 = runtime.InferenceSession(runtime.convert(path, quant="int8", quant_depthwise=True, quant_small_convs=True,
                                                          act=args.act, calib=calib if args.act == "static" else None))
            q32 = runtime.InferenceSession(runtime.convert(path))
            o8, o32 = ort_session(i8), ort_session(path)
        feed = {"x": x}
        out = (hw + 2 * (k // 2) - k) // s + 1
        gop = 2 * m * (c // group) * k * k * out * out * args.batch / 1e9
        before = cpu_pair_latency()
        med, _, (load, _) = time_interleaved({"q8": lambda: q8.run(None, feed), "q32": lambda: q32.run(None, feed),
                                              "o8": lambda: o8.run(None, feed), "o32": lambda: o32.run(None, feed)},
                                             args.seconds)
        pair_line, far = describe_cpu_pair(before, cpu_pair_latency())
        rows.append([name, f"{gop * 1e3:.0f}", f"{med['q8']:.3f}", f"{med['q32']:.3f}", f"{med['o8']:.3f}",
                     f"{med['o32']:.3f}", f"{med['o32'] / med['q8']:.2f}x", f"{med['o8'] / med['q8']:.2f}x",
                     f"{gop / med['q8'] * 1e3:.0f}", f"{100 * gop / med['q8'] * 1e3 / peak:.0f}%",
                     f"{load:.2f}", pair_line.split(": ")[-1] + (" (far)" if far else "")])
    print(format_table(rows, ["layer", "MOP", "qrt int8 ms", "qrt fp32 ms", "ort int8 ms", "ort fp32 ms",
                              "qrt int8 vs ort fp32", "vs ort int8", "qrt int8 GOP/s", "% int8 peak",
                              "load before", "CPU pair round trip"]))


if __name__ == "__main__":
    main()
