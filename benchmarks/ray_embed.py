"""Embedding throughput: one process (1 or 2 threads) against Ray with 1 or 2 actors.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/ray_embed.py MODEL.qrt [--texts 2048]

MODEL.qrt: a text model (`qrt convert MODEL_FOLDER`, e.g. all-MiniLM-L6-v2 --quant int8).
Texts: sentences of Python's docs and standard-library docstrings. Every Ray row includes the
actors' start (process, session load, first-run planning), as a user's call pays it; the
single-process rows include the session load too. Ray runs on a local cluster of all CPUs.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from runtime.convert.builtin_text import docstring_sentences  # noqa: E402
from runtime.text import TextEncoder  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--texts", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    texts = docstring_sentences(args.texts)
    cpus = os.cpu_count() or 1
    rows = []
    want = None
    for threads in sorted({1, cpus}):
        t = time.perf_counter()
        got = TextEncoder(args.model, threads=threads).encode(texts, batch_size=args.batch_size)
        rows.append((f"one process, {threads} thread(s)", time.perf_counter() - t, True))
        want = got if want is None else want
    import ray
    from runtime import ray_embed
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    for actors, threads in sorted({(1, 1), (1, cpus), (cpus, 1)}):
        t = time.perf_counter()
        got = ray_embed.embed_texts(texts, args.model, batch_size=args.batch_size, actors=actors,
                                    threads_per_actor=threads)
        rows.append((f"Ray, {actors} actor(s) x {threads} thread(s)", time.perf_counter() - t,
                     bool(np.array_equal(got, want))))
    print(f"{len(texts)} texts, batch {args.batch_size}, {cpus} CPUs, model {args.model}\n")
    print("| run | seconds | texts/s | same bits as one process |")
    print("|---|---|---|---|")
    for name, dt, same in rows:
        print(f"| {name} | {dt:.1f} | {len(texts) / dt:.1f} | {'yes' if same else 'no'} |")


if __name__ == "__main__":
    main()
