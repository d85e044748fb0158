"""What a session skips on a run like an earlier one (runtime/shape_cache.py, runtime/feeds.py):
mask values (computed from integer inputs and small constants only) are remembered per input
bytes; a feed with the dtypes and shapes of the last accepted one is not re-checked. Both must
give exactly the results of a full run, and neither may let a bad feed through."""
from __future__ import annotations

import numpy as np
import pytest

from kernels.core.layouts import dense_tensor
from runtime import InferenceSession
from runtime.graph import Graph, Node, Value


def _mask_graph() -> Graph:
    """A transformer-like input stage on the reference backend:
    bias = Where(Not(Cast(mask, bool)), -1e4, 0)                 (mask values: integer input, scalars)
    emb  = Gather(table, ids) + Gather(types_table, types)        (weights: never mask values)
    y    = emb + Unsqueeze(bias, -1); also returned: bias (an output that is a mask value)."""
    rng = np.random.default_rng(0)
    inits = {"table": dense_tensor("table", rng.standard_normal((50, 4)).astype(np.float32)),
             "types_table": dense_tensor("types_table", rng.standard_normal((2, 4)).astype(np.float32)),
             "neg": dense_tensor("neg", np.array(-1e4, np.float32)),
             "zero": dense_tensor("zero", np.array(0.0, np.float32))}
    nodes = [Node("cast", "Cast", ["mask"], ["m"], {"to": "bool"}),
             Node("not", "Not", ["m"], ["nm"]),
             Node("where", "Where", ["nm", "neg", "zero"], ["bias"]),
             Node("gather", "Gather", ["table", "ids"], ["e"], {"axis": 0}),
             Node("gather_t", "Gather", ["types_table", "types"], ["t"], {"axis": 0}),
             Node("add_t", "Add", ["e", "t"], ["emb"]),
             Node("unsq", "Unsqueeze", ["bias"], ["b3"], {"axes": [-1]}),
             Node("add", "Add", ["emb", "b3"], ["y"])]
    g = Graph("mask", [Value("ids", "int64", ("b", "s")), Value("mask", "int64", ("b", "s")),
                       Value("types", "int64", ("b", "s"))],
              [Value("y", "float32", ("b", "s", 4)), Value("bias", "float32", ("b", "s"))], nodes, inits)
    g.validate()
    return g


def _want(g: Graph, ids, mask, types):
    table = g.initializers["table"].to_dense()
    types_table = g.initializers["types_table"].to_dense()
    bias = np.where(mask == 0, np.float32(-1e4), np.float32(0.0))
    return table[ids] + types_table[types] + bias[..., None], bias


def test_mask_values_are_the_integer_plumbing_only():
    sess = InferenceSession(_mask_graph(), backend="reference")
    cache = sess._shape_cache
    skipped = [s.where for s in cache.value_steps if s not in cache.mask_steps]
    # Cast, Not, Where (two scalar constants) and Unsqueeze; never the Gathers (a weight
    # table), nor what reads a float value
    assert [w.split("'")[1] for w in skipped] == ["cast", "not", "where", "unsq"]
    assert cache.mask_key_slots == (sess._input_slots[1][1],)      # keyed on 'mask' alone


def test_a_value_made_from_a_weight_is_never_a_mask_value():
    """A shape-only value that copies a weight (gathered position embeddings, here an Identity
    of a 4-element table) counts as the weight: what reads it is model compute."""
    w = np.array([0.5, -1.0, 2.0, 3.0], np.float32)
    nodes = [Node("wi", "Identity", ["w"], ["wi"]),
             Node("cast", "Cast", ["mask"], ["mf"], {"to": "float32"}),
             Node("mul", "Mul", ["mf", "wi"], ["y"])]
    g = Graph("w", [Value("mask", "int64", ("b", 4))], [Value("y", "float32", ("b", 4))], nodes,
              {"w": dense_tensor("w", w)})
    g.validate()
    sess = InferenceSession(g, backend="reference")
    cache = sess._shape_cache
    assert [s.where.split("'")[1] for s in cache.value_steps if s not in cache.mask_steps] == ["cast"]
    mask = np.array([[1, 0, 1, 1]], np.int64)
    for _ in range(3):
        np.testing.assert_array_equal(sess.run(None, {"mask": mask})[0], mask * w)


def test_mask_values_remembered_per_input_bytes_and_recomputed_for_new_ones():
    g = _mask_graph()
    sess = InferenceSession(g, backend="reference")
    cache = sess._shape_cache
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 50, (2, 5))
    types = rng.integers(0, 2, (2, 5))
    masks = [np.ones((2, 5), np.int64), np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], np.int64)]
    for rnd, mask in enumerate(masks + masks):
        for _ in range(2):
            ids = rng.integers(0, 50, (2, 5))              # other tokens: never a cache key
            y, bias = sess.run(None, {"ids": ids, "mask": mask, "types": types})
            want_y, want_bias = _want(g, ids, mask, types)
            np.testing.assert_array_equal(bias, want_bias)
            np.testing.assert_allclose(y, want_y, rtol=1e-6)
            bias[:] = 7.0                                   # the caller's copy, not the cache's
    assert len(cache._masks) == 2                           # one entry per distinct mask
    # another length: its own shape and mask entries
    y, bias = sess.run(None, {"ids": ids[:, :3], "mask": masks[1][:, :3], "types": types[:, :3]})
    np.testing.assert_array_equal(bias, _want(g, ids[:, :3], masks[1][:, :3], types[:, :3])[1])
    assert len(cache._masks) == 3


def test_a_remembered_mask_skips_its_steps(monkeypatch):
    """Not one mask step runs on a repeat: the run counts every step's calls."""
    sess = InferenceSession(_mask_graph(), backend="reference")
    feed = {"ids": np.zeros((1, 3), np.int64), "mask": np.ones((1, 3), np.int64), "types": np.zeros((1, 3), np.int64)}
    sess.run(None, feed)          # shape-only and mask values remembered
    calls = []
    from runtime import session as session_mod
    real = session_mod.execute

    def counting(steps, env, *a, **kw):
        calls.append([s.where.split("'")[1] for s in steps])
        return real(steps, env, *a, **kw)
    monkeypatch.setattr(session_mod, "execute", counting)
    sess.run(None, feed)
    assert calls and not {"cast", "not", "where", "unsq"} & set(calls[-1])
    feed["mask"] = np.array([[1, 0, 1]], np.int64)
    sess.run(None, feed)
    assert {"cast", "not", "where", "unsq"} <= set(calls[-1])


def test_integer_inputs_that_are_data_turn_the_mask_cache_off(monkeypatch):
    """A new mask on every run (integer data, e.g. uint8 images): after MASK_MISSES_OFF misses
    in a row nothing more is keyed or kept; inputs over MASK_KEY_MAX_BYTES are never keyed.
    Results stay exact throughout."""
    from runtime import shape_cache
    g = _mask_graph()
    sess = InferenceSession(g, backend="reference")
    cache = sess._shape_cache
    ids, types = np.zeros((1, 8), np.int64), np.zeros((1, 8), np.int64)
    for r in range(shape_cache.MASK_CACHE_ENTRIES + 4):
        mask = np.array([[int(b) for b in np.binary_repr(r + 1, 8)]], np.int64)    # a new one each run
        y, bias = sess.run(None, {"ids": ids, "mask": mask, "types": types})
        np.testing.assert_array_equal(bias, _want(g, ids, mask, types)[1])
    assert cache._mask_misses >= shape_cache.MASK_MISSES_OFF
    kept = len(cache._masks)
    assert kept <= shape_cache.MASK_MISSES_OFF + 1      # the first run's, then the misses' until off
    sess.run(None, {"ids": ids, "mask": np.ones((1, 8), np.int64), "types": types})
    assert len(cache._masks) == kept                    # off: nothing more kept

    monkeypatch.setattr(shape_cache, "MASK_KEY_MAX_BYTES", 8 * 8 - 1)   # one (1, 8) int64 mask is 64 bytes
    sess = InferenceSession(g, backend="reference")
    for _ in range(3):
        sess.run(None, {"ids": ids, "mask": np.ones((1, 8), np.int64), "types": types})
    assert len(sess._shape_cache._masks) == 0


# ----------------------------------------------------------------------- feed checks -----

def test_the_feed_fast_path_lets_no_bad_feed_through():
    """After a good run (whose dtypes and shapes are remembered), every bad feed still gets
    check_feeds' error, and a good one after it still runs."""
    g = _mask_graph()
    sess = InferenceSession(g, backend="reference")
    good = {"ids": np.zeros((1, 3), np.int64), "mask": np.ones((1, 3), np.int64), "types": np.zeros((1, 3), np.int64)}
    sess.run(None, good)
    bad = [({**good, "mask": np.ones((1, 3), np.int32)}, "expected dtype int64"),
           ({**good, "mask": np.ones((1, 4), np.int64)}, "'s'"),
           ({k: v for k, v in good.items() if k != "types"}, "missing input 'types'"),
           ({**good, "extra": np.ones(3)}, "unknown input 'extra'")]
    for feeds, fragment in bad:
        with pytest.raises(ValueError, match=fragment):
            sess.run(None, feeds)
        sess.run(None, good)
    # a strided view of the right dtype and shape: taken (made contiguous), same result
    ids = np.zeros((1, 6), np.int64)[:, ::2]
    y, _ = sess.run(None, {**good, "ids": ids})
    np.testing.assert_array_equal(y, sess.run(None, good)[0])
    with pytest.raises(TypeError, match="input_feed"):
        sess.run(None, [("ids", good["ids"])])
