"""The conversion pipeline: import -> (later: prune, quantize, calibrate, pack) -> write."""
from __future__ import annotations

import io
import os
from typing import Any, Sequence

from ..graph import Graph


def from_onnx(model: Any, out_path: str | os.PathLike | None = None, *, name: str | None = None) -> Graph:
    """Convert an ONNX model (path, bytes or ModelProto) to a qrt Graph; write it to
    ``out_path`` when given (atomically: a failed write leaves no partial file)."""
    from ..onnx_import import import_onnx
    graph = import_onnx(model, name=name)
    if out_path is not None:
        from ..format import save
        save(graph, out_path)
    return graph


def from_torch(module: Any, example_inputs: Any, out_path: str | os.PathLike | None = None, *,
               input_names: Sequence[str] | None = None, output_names: Sequence[str] | None = None,
               dynamic_axes: dict | None = None, opset: int = 17, dynamo: bool = False,
               name: str | None = None) -> Graph:
    """Export a torch.nn.Module through ONNX in memory, then convert it like from_onnx.

    example_inputs: a tensor or tuple of tensors, passed to torch.onnx.export.
    dynamic_axes:   as torch.onnx.export, e.g. {"x": {0: "batch"}}; names become the
                    symbolic dims of the qrt model's inputs.
    dynamo:         use torch's dynamo-based exporter (needs onnxscript) instead of the
                    TorchScript one; both produce graphs qrt imports.
    """
    try:
        import torch
    except ImportError as e:
        raise ImportError("from_torch needs PyTorch: pip install torch") from e
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    buf = io.BytesIO()
    kwargs = dict(input_names=list(input_names) if input_names else None,
                  output_names=list(output_names) if output_names else None,
                  dynamic_axes=dynamic_axes, opset_version=opset, dynamo=dynamo)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            if dynamo:
                prog = torch.onnx.export(module, tuple(example_inputs), None, verbose=False, **kwargs)
                data = prog.model_proto.SerializeToString()
            else:
                torch.onnx.export(module, tuple(example_inputs), buf, **kwargs)
                data = buf.getvalue()
    finally:
        module.train(was_training)
    return from_onnx(data, out_path, name=name or type(module).__name__)
