"""The bad calls every packed Linear kernel must refuse with a reason, in one place: the
native and numba int8 tests and the sparse tests call it for their (layout, backend)."""
from __future__ import annotations

import numpy as np
import pytest

from kernels import registry


def assert_common_refusals(layout: str, backend: str, t, k: int = 20, n: int = 10) -> None:
    """``t``: a packed (N, K) = (n, k) weight of ``layout``. X of the wrong width, integer X, a
    bias of the wrong length, and static activations without act_scale are each refused with
    a message naming the problem."""
    run = registry.lookup("Linear", layout, backend)({"act_quant": "dynamic"}, {1: t})
    with pytest.raises(ValueError, match="does not match packed weight"):
        run(np.zeros((3, k + 1), np.float32), t, None)
    with pytest.raises(ValueError, match="float"):
        run(np.zeros((3, k), np.int32), t, None)
    with pytest.raises(ValueError, match="bias"):
        run(np.zeros((3, k), np.float32), t, np.zeros(n + 1, np.float32))
    with pytest.raises(ValueError, match="act_scale"):
        registry.lookup("Linear", layout, backend)({"act_quant": "static"}, {1: t})
