"""The numpy reference backend: the spec of every op in kernels.core.ops.

Each op has a plain function ``<snake_op>_ref`` (``add_ref``, ``conv_ref``, ``gather_nd_ref``)
written to be read, not to be fast; every fast kernel is tested against it. Importing this
package registers all of them as (op, "dense", "reference") kernel factories; see _common.py
for the factory interface, output dtypes and aliasing rules. Needs numpy only.

Modules: elementwise (arithmetic, comparisons, logic, activations, Cast, Clip, Where),
reduction (Reduce*, Softmax, LayerNormalization, BatchNormalization), gemm (MatMul, Linear,
Gemm), conv_pool (Conv, MaxPool, AveragePool, GlobalAveragePool), shape_ops (shape, slicing,
indexing, Range, ConstantOfShape), packed (Linear and Conv on the int8, int4_grouped, csr,
bsr and nm layouts), packed_gather (Gather on a packed table: the quantized embedding
lookup), fused (Attention, SkipLayerNormalization: what runtime/fuse.py puts in place of
op patterns).
"""
from . import conv_pool, elementwise, fused, gemm, packed, packed_gather, reduction, shape_ops  # noqa: F401  (registers kernels)

MODULES = (elementwise, reduction, gemm, conv_pool, shape_ops, packed, packed_gather, fused)


def probe() -> str | None:
    """The reference backend runs wherever numpy does."""
    return None
