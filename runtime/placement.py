"""Device placement of a planned session: which values cross between host and GPU, and where.

A session whose nodes all run on CPU backends is left exactly as planned. With GPU nodes:
host nodes get their device-array inputs copied to the host (Shape / Size only a shape
stand-in: no copy), and the feeds a GPU node reads are uploaded once per run, by the backend
of the first GPU node that reads them. ``host_transfers`` counts the host nodes that read a
device value (the plan's round trips).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from kernels import registry
from kernels.core.device import is_device_array, shape_stand_in, to_numpy

from .graph import Graph


@dataclass
class Placement:
    on_gpu: bool = False                                           # any node on a GPU backend
    uploads: dict[int, Callable[[np.ndarray], Any]] = field(default_factory=dict)   # feed slot -> to_device
    host_transfers: int = 0

    def feed(self, env: list, fed: list) -> None:
        """Put checked feeds (slot, array) in ``env``; numpy feeds a GPU node reads are uploaded."""
        for slot, array in fed:
            upload = self.uploads.get(slot)
            env[slot] = upload(array) if upload is not None and isinstance(array, np.ndarray) else array


def place(graph: Graph, backends: Sequence[str], steps: list, slots: dict[str, int]) -> Placement:
    """backends[k] runs graph.nodes[k]; steps[k] = (run, ins, outs, where), whose ``run`` is
    wrapped in place for host nodes that may read device arrays."""
    gpu = [b in registry.GPU_BACKENDS for b in backends]
    placement = Placement(on_gpu=any(gpu))
    if not placement.on_gpu:
        return placement
    on_device = set()                      # slots a GPU node writes (device values)
    feeds = {slots[v.name] for v in graph.inputs}
    for k, (node, (run, ins, outs, where)) in enumerate(zip(graph.nodes, steps)):
        if gpu[k]:
            to_device = getattr(registry.backend_module(backends[k]), "to_device", None)
            for s in ins:
                if s in feeds and s not in placement.uploads and to_device is not None:
                    placement.uploads[s] = to_device
            on_device.update(outs)
            continue
        if any(s in on_device or s in feeds for s in ins):
            placement.host_transfers += any(s in on_device for s in ins) and node.op not in ("Shape", "Size")
            steps[k] = (_on_host(run, node.op), ins, outs, where)
    return placement


def _on_host(run, op: str):
    """``run`` (a host kernel) with its device-array inputs brought to the host first; Shape
    and Size read only the shape, so they get a stand-in without the data."""
    convert = shape_stand_in if op in ("Shape", "Size") else to_numpy

    def host_run(*inputs):
        return run(*[convert(a) if is_device_array(a) else a for a in inputs])
    return host_run
