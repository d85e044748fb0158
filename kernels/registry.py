"""(op, layout, backend) -> kernel factory, with lazy backend import.

A *kernel factory* is called once per node when a session plans:

    factory(attrs: dict, weights: dict[int, PackedTensor]) -> run

``attrs`` are the node's attributes with the op's defaults filled in; ``weights`` are the
node's initializer inputs by input position (so a backend can repack them once, at load).
``run(*inputs)`` takes every input of the node in order (numpy arrays; for a ``dense``
initializer its array, for other layouts the PackedTensor; None for an absent optional input)
and returns a tuple of output arrays. ``run`` is what the session calls on every inference.

Bound weights: the weight input of an op that has one (kernels/core/ops.py ``weight_input``:
Linear's and Conv's weight, Gather's table) is bound at plan time when it is an initializer:
the factory prepares ``weights[weight_input]`` and ``run`` does not read that slot (the session
still passes it, so every op keeps one calling convention). Only a weight computed at run time
(not in ``weights``) is read from the slot. So a kernel is a function of the activations, and
the planner swaps whole kernels built on different forms of one weight.
Linear/Conv kernels on packed weights are made by kernels/gemm_front.py.

A backend is a package (kernels/reference, kernels/numba_cpu, ...) whose import registers its
kernels with ``@register``. It may define ``probe() -> str | None`` returning why it cannot run
here (no GPU, CPU lacks an ISA...). Importing a backend is deferred until someone asks for it,
so a missing optional dependency only makes that backend unavailable, with the reason.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable

from kernels.core import config
from kernels.core.ops import op_spec

BACKENDS = ("reference", "numba", "native", "triton", "cupy")
# Preference order for backend="auto" on the CPU: fastest first. A node falls back along this
# list to the first backend that has a kernel for its (op, layout); "reference" has every one.
AUTO_ORDER = ("native", "numba", "reference")
# Backends whose kernels take and return device arrays (kernels/core/device.py). With a CUDA GPU,
# "auto" uses them (GPU_AUTO_ORDER) and never mixes in the CPU backends: every op they lack
# runs on the reference, on the host, and the session says so in its plan.
GPU_BACKENDS = ("triton", "cupy")
GPU_AUTO_ORDER = ("triton", "cupy", "reference")

_MODULES = {
    "reference": "kernels.reference",
    "numba": "kernels.numba_cpu",
    "native": "kernels.native_cpu",
    "triton": "kernels.triton_gpu",
    "cupy": "kernels.cupy_gpu",
}

KernelFactory = Callable[[dict, dict], Callable[..., tuple]]

_KERNELS: dict[tuple[str, str, str], KernelFactory] = {}
_STATUS: dict[str, str | None] = {}   # backend -> None (usable) or the reason it is not


class KernelNotFound(LookupError):
    pass


def register(op: str, backend: str, layout: str = "dense") -> Callable[[KernelFactory], KernelFactory]:
    """Decorator: register ``factory`` as the kernel for (op, layout, backend)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")

    def deco(factory: KernelFactory) -> KernelFactory:
        key = (op, layout, backend)
        if key in _KERNELS:
            raise ValueError(f"kernel {key} registered twice")
        _KERNELS[key] = factory
        return factory
    return deco


def backend_status(backend: str) -> str | None:
    """None if ``backend`` is usable here, else a one-line reason. Imports it on first call."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if backend not in _STATUS:
        _STATUS[backend] = _load(backend)
    return _STATUS[backend]


def _forget(backend: str) -> None:
    """Drop kernels a backend registered before its import failed half-way."""
    for key in [k for k in _KERNELS if k[2] == backend]:
        del _KERNELS[key]


def _load(backend: str) -> str | None:
    disabled = [b.strip() for b in config.get("QRT_DISABLE_BACKENDS").split(",") if b.strip()]
    if backend in disabled and backend != "reference":   # the reference is every op's fallback
        return "disabled by QRT_DISABLE_BACKENDS"
    try:
        mod = importlib.import_module(_MODULES[backend])
    except ModuleNotFoundError as e:
        _forget(backend)
        if e.name and _MODULES[backend].startswith(e.name):
            return "no kernels for this backend yet (its package is not part of this build)"
        return f"import failed: {e}"
    except Exception as e:  # a broken optional dependency must not break qrt
        _forget(backend)
        return f"import failed: {type(e).__name__}: {e}"
    probe = getattr(mod, "probe", None)
    if probe is not None:
        try:
            reason = probe()
        except Exception as e:
            reason = f"probe failed: {type(e).__name__}: {e}"
        if reason:
            _forget(backend)
            return reason
    if not any(k[2] == backend for k in _KERNELS):
        return "no kernels registered yet"
    return None


def thread_setter(backend: str) -> Callable[[int], None] | None:
    """The backend's ``set_threads(n)`` hook (None if it has none or is unavailable). A session
    calls it before each run with its ``threads=`` option."""
    if backend_status(backend) is not None:
        return None
    return getattr(importlib.import_module(_MODULES[backend]), "set_threads", None)


def backend_device(backend: str) -> str | None:
    """Where a usable GPU backend's arrays live: "cuda", or "cpu" (Triton's interpreter);
    None for a CPU backend or an unavailable one."""
    if backend not in GPU_BACKENDS or backend_status(backend) is not None:
        return None
    return getattr(importlib.import_module(_MODULES[backend]), "DEVICE", "cuda")


def backend_module(backend: str):
    """The imported package of a usable backend (its to_device / set_threads hooks)."""
    if backend_status(backend) is not None:
        raise KernelNotFound(f"backend {backend!r} is unavailable: {backend_status(backend)}")
    return importlib.import_module(_MODULES[backend])


def auto_order() -> tuple[str, ...]:
    """backend="auto": the GPU backends when one runs on a CUDA device, else the CPU ones."""
    if any(backend_device(b) == "cuda" for b in GPU_BACKENDS):
        return GPU_AUTO_ORDER
    return AUTO_ORDER


def fallback_order(backend: str) -> tuple[str, ...]:
    """The backends a node may run on when a session asks for ``backend`` explicitly: that one,
    then (for a GPU backend) the other GPU backend on the same device, then the reference."""
    if backend in GPU_BACKENDS:
        device = backend_device(backend)
        others = tuple(b for b in GPU_BACKENDS if device is not None and b != backend and backend_device(b) == device)
        return (backend, *others, "reference")
    return (backend, "reference")


def available_backends() -> dict[str, str | None]:
    """Every backend name -> None if usable here, else the reason it is not."""
    return {b: backend_status(b) for b in BACKENDS}


def has_kernel(op: str, layout: str, backend: str) -> bool:
    return backend_status(backend) is None and (op, layout, backend) in _KERNELS


def lookup(op: str, layout: str, backend: str) -> KernelFactory:
    reason = backend_status(backend)
    if reason is not None:
        raise KernelNotFound(f"backend {backend!r} is unavailable: {reason}")
    try:
        return _KERNELS[(op, layout, backend)]
    except KeyError:
        have = sorted(b for (o, l, b) in _KERNELS if o == op and l == layout)
        raise KernelNotFound(f"backend {backend!r} has no kernel for op {op!r} with layout {layout!r}"
                             f" (backends that have one: {', '.join(have) or 'none'})") from None


# A Linear/Conv node's "activation" attribute (kernels/core/ops.py ACTIVATIONS) -> the op, with its
# attributes, whose kernel applies it: the definition of the fused epilogue. A kernel may fuse
# it (compute it while the output tile is still in registers or L1) by listing the name in its
# factory's ``fused_activations``; for every other kernel build() runs that op after it.
EPILOGUE_OPS = {"relu": ("Relu", {}), "gelu": ("Gelu", {"approximate": "none"}),
                "gelu_tanh": ("Gelu", {"approximate": "tanh"}), "hard_swish": ("HardSwish", {}),
                "silu": ("Sigmoid", {})}
# Activations that are Y times their op on Y (the op a gate, then a float32 Mul: SiLU is Sigmoid ->
# Mul, as exported): one IEEE product, so any backend's Mul gives these bits.
GATED_ACTIVATIONS = frozenset({"silu"})


def apply_epilogue_op(activation: str, run_op: Callable[..., tuple], y):
    """An activation of EPILOGUE_OPS on Y through ``run_op``, its op's kernel: op(Y), or Y * op(Y)
    for the GATED_ACTIVATIONS."""
    (a,) = run_op(y)
    return y * a if activation in GATED_ACTIVATIONS else a


# A Conv's "channel_mean" output (kernels/core/ops.py): this ReduceMean of its first output.
CHANNEL_MEAN_ATTRS = {"axes": [2, 3], "keepdims": 1}


def build(op: str, layout: str, backend: str, attrs: dict[str, Any], weights: dict,
          fallbacks: tuple[str, ...] = ("reference",)) -> Callable[..., tuple]:
    """The ``run`` of one node: its kernel factory called with ``attrs`` (defaults filled in)
    and ``weights``; a Linear/Conv "activation" the kernel does not fuse is applied after it
    by that activation op's kernel on ``backend``, else on the first of ``fallbacks`` that has
    one (a session passes the backends it may use: AUTO_ORDER for "auto"), so results are
    those of the unfused pair whichever kernel runs. A Conv's "channel_mean" likewise: the
    factory computes it where it says so (``fused_channel_mean``, with the activation fused),
    else the ReduceMean kernel runs after it."""
    factory = lookup(op, layout, backend)
    if attrs.get("channel_mean"):
        act = attrs.get("activation", "none")
        if getattr(factory, "fused_channel_mean", False) and (
                act == "none" or act in getattr(factory, "fused_activations", ())):
            return factory(attrs, weights)
        inner = build(op, layout, backend, {k: v for k, v in attrs.items() if k != "channel_mean"}, weights,
                      fallbacks)
        mean = _kernel_after(op, "channel_mean", "ReduceMean", CHANNEL_MEAN_ATTRS, backend, fallbacks)

        def with_mean(*inputs):
            (y,) = inner(*inputs)
            return (y, *mean(y))
        return with_mean
    if "activation" not in attrs:
        return factory(attrs, weights)
    act = attrs["activation"]
    if act != "none" and act not in EPILOGUE_OPS:
        raise ValueError(f"{op}: activation must be one of none, {', '.join(EPILOGUE_OPS)}; got {act!r}")
    if act in getattr(factory, "fused_activations", ()):
        return factory(attrs, weights)
    inner = factory({k: v for k, v in attrs.items() if k != "activation"}, weights)
    if act == "none":
        return inner
    post = _kernel_after(op, f"activation {act!r}", *EPILOGUE_OPS[act], backend, fallbacks)

    def run(*inputs):
        (y,) = inner(*inputs)
        return (apply_epilogue_op(act, post, y),)
    return run


def _kernel_after(op: str, what: str, post_op: str, post_attrs: dict, backend: str,
                  fallbacks: tuple[str, ...]) -> Callable[..., tuple]:
    """The run of ``post_op`` (``post_attrs``) that build() applies to an ``op`` kernel's output
    for its ``what``: on ``backend`` where that has the op, else on the first of ``fallbacks``
    (or the reference) that does."""
    if backend in GPU_BACKENDS and not has_kernel(post_op, "dense", backend):
        # the fallbacks are CPU kernels: they cannot take this kernel's device array
        raise ValueError(f"{op}: {what} is not available after a {backend} kernel (no {post_op} "
                         f"kernel on {backend}); run this node on a CPU backend")
    post_backend = next(b for b in (backend, *fallbacks, "reference") if has_kernel(post_op, "dense", b))
    return lookup(post_op, "dense", post_backend)(fill_attrs(post_op, post_attrs), {})


def kernels(backend: str | None = None) -> list[tuple[str, str, str]]:
    """Registered (op, layout, backend) keys, for inspection and tests."""
    if backend is not None:
        backend_status(backend)
    return sorted(k for k in _KERNELS if backend is None or k[2] == backend)


def bound_dense(weights: dict, index: int):
    """The array of a dense initializer input (bound at plan time: module docstring), or None
    when that input is computed at run time or packed."""
    t = weights.get(index)
    return t.fields["data"] if t is not None and getattr(t, "layout", None) == "dense" else None


def fill_attrs(op: str, attrs: dict[str, Any]) -> dict[str, Any]:
    """The node's attributes with the op's defaults for those it does not set."""
    out = dict(op_spec(op).attrs)
    out.update(attrs)
    return out
