"""Sentence embeddings on a Ray cluster: one qrt session per actor, the .qrt shipped once per node.

    embed_dataset(ds, "model.qrt", text_column="text")   a Ray Dataset in, the same rows plus
                                                         "embedding" out (streaming, any size)
    embed_texts(texts, "model.qrt", address=...)         a list in, the array `qrt embed` gives,
                                                         bit for bit (`qrt embed --ray ADDRESS`)

How the work is laid out (docs/ARCHITECTURE.md, "Scale-out on Ray"):
- the .qrt file's bytes are put in Ray's object store once; the first actor on each node writes
  them to a node-local file named by their hash (others on the node find it there), which its
  session maps like any .qrt, so a node holds one copy on disk and one in the page cache;
- each actor is one process with one TextEncoder (InferenceSession + tokenizer) on
  ``threads_per_actor`` threads, and asks Ray for that many CPUs, so actors x threads never
  exceeds the cluster's cores; by default one thread per actor and one actor per CPU (whole
  processes scale better than threads for batches this small: docs, measured);
- embed_dataset: every Ray batch of ``batch_size`` rows is one model batch (its texts sorted by
  length inside, as TextEncoder.encode does);
- embed_texts: the driver tokenizes and plans the batches exactly as TextEncoder.encode does
  (longest first); the actors run those batches, so an int8 model gives the same bits as one
  process (int8 arithmetic is exact, and the planner keeps the stored layout's bits whatever
  the thread count, runtime/planner.py). fp32 layers run on BLAS, whose sums change with the
  thread count: an fp32 model matches a single process on as many threads as each actor, and
  otherwise to about 1e-7.

Ray is an optional extra (pip install -e '.[ray]' in the checkout); nothing else imports this.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from typing import Any, Callable, Sequence

import numpy as np

INSTALL_HINT = "pip install -e '.[ray]' in the qrt checkout (Ray Data)"


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ImportError(f"running on Ray needs the ray package: {INSTALL_HINT}") from None
    return ray


def connect(address: str | None = None) -> Any:
    """ray, initialised: an already initialised Ray as is; "local" (or None) starts a Ray on
    this machine; anything else is ray.init's address ("auto", "ray://host:10001", ...)."""
    ray = _ray()
    if not ray.is_initialized():
        ray.init(address=None if address in (None, "local") else address, include_dashboard=False,
                 log_to_driver=False, logging_level="ERROR")
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False          # qrt prints its own progress line
    logging.getLogger("ray.data").setLevel(logging.ERROR)   # no "Starting execution ..." lines
    return ray


def _ship(ray, model: str | os.PathLike) -> tuple[Any, str]:
    """(an ObjectRef of the file's bytes, a name for node-local copies: its hash)."""
    with open(model, "rb") as f:
        data = f.read()
    # in a list: an ObjectRef nested in an actor's arguments is fetched where the actor wants
    # it (once per node), and Ray does not pin it as a restart dependency of every actor
    return [ray.put(data)], hashlib.sha256(data).hexdigest()[:20] + ".qrt"


def _node_copy(data: bytes, name: str) -> str:
    """The node-local path of the shipped .qrt, written once per node (atomically: actors
    starting together on one node may race; each finds a complete file or writes one)."""
    from .format import atomic_write
    folder = os.path.join(tempfile.gettempdir(), "qrt-ray")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        atomic_write(path, lambda f: f.write(data), durable=False)
    return path


class _Embedder:
    """A Ray Data actor: one TextEncoder on a node-local copy of the model."""

    def __init__(self, ref: Any, name: str, threads: int, backend: str):
        from .text import TextEncoder
        path = os.path.join(tempfile.gettempdir(), "qrt-ray", name)
        if not os.path.isfile(path):          # the first actor on this node fetches the bytes
            path = _node_copy(_ray().get(ref[0]), name)
        self.encoder = TextEncoder(path, backend=backend, threads=threads)

    def __call__(self, batch: dict[str, np.ndarray], *, text_column: str | None = None) -> dict[str, np.ndarray]:
        enc = self.encoder
        if text_column is not None:               # embed_dataset: this Ray batch is one model batch
            texts = [str(t) for t in batch[text_column]]
            batch["embedding"] = enc.encode(texts, batch_size=max(len(texts), 1))
            return batch
        # embed_texts: each row holds one planned model batch, run exactly as planned
        return {"batch": batch["batch"],
                "embedding": np.array([enc.run_batch(enc.tokenize([str(t) for t in texts]))
                                       for texts in batch["texts"]] + [None], dtype=object)[:-1]}


def _layout(ray, actors: int | None, threads_per_actor: int | None) -> tuple[int, int]:
    cpus = int(ray.cluster_resources().get("CPU", 1))
    threads = threads_per_actor or 1
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads_per_actor must be a positive int, got {threads_per_actor!r}")
    if threads > cpus:
        raise ValueError(f"threads_per_actor {threads} is more than the cluster's {cpus} CPUs")
    n = actors or max(1, cpus // threads)
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"actors must be a positive int, got {actors!r}")
    return n, threads


def embed_dataset(ds: Any, model: str | os.PathLike, *, text_column: str = "text", batch_size: int = 32,
                  actors: int | None = None, threads_per_actor: int | None = None,
                  backend: str = "auto") -> Any:
    """``ds`` (a ray.data.Dataset with a string column ``text_column``) with a column
    "embedding" (float32 vectors) added, computed lazily by ``actors`` actors of
    ``threads_per_actor`` threads each (defaults: one thread, one actor per cluster CPU)."""
    ray = connect()
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if text_column not in ds.columns():
        raise ValueError(f"the dataset has no column {text_column!r} (it has {', '.join(ds.columns())})")
    n, threads = _layout(ray, actors, threads_per_actor)
    ref, name = _ship(ray, model)
    return ds.map_batches(_Embedder, fn_constructor_args=(ref, name, threads, backend),
                          fn_kwargs={"text_column": text_column}, batch_size=batch_size, batch_format="numpy",
                          num_cpus=threads, compute=ray.data.ActorPoolStrategy(size=n))


def embed_texts(texts: Sequence[str], model: str | os.PathLike, *, address: str | None = None,
                batch_size: int = 32, actors: int | None = None, threads_per_actor: int | None = None,
                backend: str = "auto", progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """The embeddings TextEncoder(model).encode(texts, batch_size=batch_size) gives, the same
    bits, computed by actors on the Ray cluster at ``address`` (see connect)."""
    from .text import TextEncoder, assemble
    ray = connect(address)
    n, threads = _layout(ray, actors, threads_per_actor)
    planner = TextEncoder(model, backend="reference", threads=1)     # tokenizer and batch plan only
    plan = planner.plan(list(texts), batch_size)
    if not plan:
        return np.zeros((0, planner.dimension or 0), np.float32)
    ref, name = _ship(ray, model)
    rows = [{"batch": k, "texts": [texts[i] for i in idx]} for k, (idx, _) in enumerate(plan)]
    ds = ray.data.from_items(rows, override_num_blocks=min(len(rows), 4 * n))
    ds = ds.map_batches(_Embedder, fn_constructor_args=(ref, name, threads, backend), batch_size=1,
                        batch_format="numpy", num_cpus=threads, compute=ray.data.ActorPoolStrategy(size=n))
    return assemble(((plan[int(row["batch"])][0], np.asarray(row["embedding"], np.float32)) for row in ds.iter_rows()),
                    len(texts), planner.dimension, progress)
