"""The `qrt` command: convert, inspect, run, demo.

Every command fails the same way: one line `qrt <command>: error: <what>` on stderr and exit
status 1 (2 for bad usage, as argparse does), no traceback (set QRT_DEBUG=1 to see one), and
no partial output file: outputs are written to a temporary name and renamed on success.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np


class CliError(Exception):
    """An error whose message is meant for the user as is."""


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        print(f"qrt {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the CLI's contract is one line, no traceback
        if os.environ.get("QRT_DEBUG"):
            raise
        msg = str(e).strip() or type(e).__name__
        first, *rest = msg.splitlines()
        print(f"qrt {args.command}: error: {first}", file=sys.stderr)
        for line in rest:  # multi-line messages (e.g. the list of unsupported ops) stay readable
            print(f"  {line.strip()}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qrt", description="qrt: convert, inspect and run int8/sparse "
                                "neural-network models packed in one .qrt file.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    c = sub.add_parser("convert", help="convert an ONNX model to a .qrt file",
                       description="Import an ONNX model (opset 13-21), fold its constant and shape "
                                   "subgraphs, fuse Linear/GELU/LayerNorm/BatchNorm patterns and write "
                                   "one .qrt file. (Pruning and quantization flags come with the converter.)")
    c.add_argument("model", help="input ONNX file")
    c.add_argument("-o", "--output", required=True, help="output .qrt file (written atomically)")
    c.set_defaults(func=_cmd_convert)

    i = sub.add_parser("inspect", help="list the nodes, layouts and tensor bytes of a .qrt file",
                       description="Validate a .qrt file and print its inputs, outputs, nodes, "
                                   "initializers (layout, dtype, shape, bytes) and totals.")
    i.add_argument("file", help=".qrt file")
    i.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    i.set_defaults(func=_cmd_inspect)

    r = sub.add_parser("run", help="run a .qrt model on inputs from .npy files",
                       description="Run a .qrt model. Each --input NAME=FILE.npy feeds one model input.")
    r.add_argument("file", help=".qrt file")
    r.add_argument("--input", "-i", action="append", default=[], metavar="NAME=FILE.npy",
                   help="a model input and the .npy file holding it (repeat for each input)")
    r.add_argument("--backend", default="auto", help="backend: auto (default) or one of reference, "
                   "numba, native, triton, cupy")
    r.add_argument("-o", "--output", metavar="OUT.npz", help="write all outputs to this .npz file")
    r.set_defaults(func=_cmd_run)

    d = sub.add_parser("demo", help="train, convert and run a small model; print a comparison table",
                       description="Train a small MLP on scikit-learn's bundled digits data set, "
                                   "export it to ONNX, convert it to .qrt, run it and compare accuracy, "
                                   "agreement and latency with the original model. Needs no files or "
                                   "network (pip install 'qrt[demo]').")
    d.add_argument("--keep", metavar="DIR", help="keep the .onnx and .qrt files in DIR")
    d.add_argument("--seed", type=int, default=0, help="random seed for the split and training")
    d.set_defaults(func=_cmd_demo)
    return p


# ------------------------------------------------------------------------------ helpers --

def atomic_write(path: str | os.PathLike, write) -> None:
    """format.atomic_write, after checking the output path is usable (one-line errors)."""
    from .format import atomic_write as _atomic_write
    path = Path(path)
    if path.is_dir():
        raise CliError(f"output {str(path)!r} is a directory")
    if not path.parent.exists():
        raise CliError(f"output directory {str(path.parent)!r} does not exist")
    _atomic_write(path, write)


def _require_file(path: str, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise CliError(f"{what} {path!r} does not exist")
    if not p.is_file():
        raise CliError(f"{what} {path!r} is not a file")
    return p


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header), fmt.format(*["-" * w for w in widths])]
    lines += [fmt.format(*[str(x) for x in r]) for r in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- commands --

def _cmd_convert(args) -> int:
    from .convert import from_onnx
    from .format import save
    src = _require_file(args.model, "model")
    out = Path(args.output)
    if not out.parent.exists():
        raise CliError(f"output directory {str(out.parent)!r} does not exist")
    if out.is_dir():  # else save()'s rename fails with a message naming its temporary file
        raise CliError(f"output {str(out)!r} is a directory")
    t0 = time.perf_counter()
    try:
        import onnx
        model = onnx.load(str(src))
    except ImportError:
        raise CliError("converting needs the onnx package: pip install 'qrt[convert]'") from None
    except Exception as e:
        raise CliError(f"cannot read {str(src)!r} as an ONNX model: {type(e).__name__}: {e}") from None
    if not model.opset_import and not model.graph.node:
        # protobuf parses empty (or some non-ONNX) bytes as an empty ModelProto
        raise CliError(f"{str(src)!r} is not an ONNX model (no graph and no opset)")
    graph = from_onnx(model, name=src.stem)
    save(graph, out)
    dt = time.perf_counter() - t0
    nbytes = sum(t.nbytes for t in graph.initializers.values())
    print(f"wrote {out}: {len(graph.nodes)} nodes, {len(graph.initializers)} initializers, "
          f"{_human(nbytes)} of tensors, {_human(out.stat().st_size)} on disk ({dt:.2f} s)")
    return 0


def _describe(path: Path) -> dict:
    from .format import load, read_header
    graph = load(path)
    file_meta, _ = read_header(path)  # the format version is in the file's metadata, not the graph's
    inits = [{"name": n, "layout": t.layout, "dtype": t.dtype, "shape": list(t.shape),
              "bytes": t.nbytes, "params": t.params} for n, t in graph.initializers.items()]
    nodes = [{"name": n.name, "op": n.op, "layout": graph.weight_layout(n), "inputs": n.inputs,
              "outputs": n.outputs,
              "weight_bytes": sum(graph.initializers[i].nbytes for i in n.inputs if i in graph.initializers)}
             for n in graph.nodes]
    by_layout: dict[str, int] = {}
    for t in graph.initializers.values():
        by_layout[t.layout] = by_layout.get(t.layout, 0) + t.nbytes
    return {
        "file": str(path), "file_bytes": path.stat().st_size, "name": graph.name,
        "format_version": int(file_meta["format_version"]),
        "inputs": [v.to_dict() for v in graph.inputs], "outputs": [v.to_dict() for v in graph.outputs],
        "nodes": nodes, "initializers": inits,
        "totals": {"nodes": len(nodes), "initializers": len(inits),
                   "tensor_bytes": sum(i["bytes"] for i in inits), "bytes_by_layout": by_layout,
                   "ops": {op: sum(1 for n in nodes if n["op"] == op) for op in sorted({n["op"] for n in nodes})}},
    }


def _cmd_inspect(args) -> int:
    path = _require_file(args.file, "file")
    info = _describe(path)
    if args.json:
        print(json.dumps(info, indent=1))
        return 0

    def shape(v):
        return "[" + ", ".join("?" if d is None else str(d) for d in v["shape"]) + "]" if v["shape"] is not None else "?"
    print(f"{info['file']}: model {info['name']!r}, {_human(info['file_bytes'])}")
    print("\ninputs:")
    print(_table([[v["name"], v["dtype"], shape(v)] for v in info["inputs"]], ["name", "dtype", "shape"]))
    print("\noutputs:")
    print(_table([[v["name"], v["dtype"], shape(v)] for v in info["outputs"]], ["name", "dtype", "shape"]))
    print("\nnodes:")
    print(_table([[k, n["name"], n["op"], n["layout"], _human(n["weight_bytes"]) if n["weight_bytes"] else "-"]
                  for k, n in enumerate(info["nodes"])], ["#", "name", "op", "layout", "weights"]))
    print("\ninitializers:")
    print(_table([[t["name"], t["layout"], t["dtype"], "x".join(map(str, t["shape"])) or "scalar", _human(t["bytes"])]
                  for t in info["initializers"]], ["name", "layout", "dtype", "shape", "bytes"]))
    tot = info["totals"]
    print(f"\ntotals: {tot['nodes']} nodes ({', '.join(f'{k} {v}' for k, v in tot['ops'].items())}), "
          f"{tot['initializers']} initializers, {_human(tot['tensor_bytes'])} of tensors "
          f"({', '.join(f'{k} {_human(v)}' for k, v in tot['bytes_by_layout'].items())})")
    return 0


def _cmd_run(args) -> int:
    from .session import InferenceSession
    path = _require_file(args.file, "file")
    feeds = {}
    for spec in args.input:
        name, sep, file = spec.partition("=")
        if not sep or not name or not file:
            raise CliError(f"--input {spec!r}: expected NAME=FILE.npy")
        f = _require_file(file, f"input file for {name!r}")
        try:
            with open(f, "rb") as fh:  # a file object, so an .npz given by mistake is closed too
                feeds[name] = np.load(fh, allow_pickle=False)
        except ValueError as e:
            raise CliError(f"cannot read {file!r} as a .npy array (not a .npy file, or it holds "
                           f"Python objects, which qrt never unpickles): {e}") from None
        except Exception as e:
            raise CliError(f"cannot read {file!r} as a .npy array: {e}") from None
        if not isinstance(feeds[name], np.ndarray):
            raise CliError(f"{file!r} is not a single .npy array (an .npz archive? save one array with np.save)")
    if args.output:
        out = Path(args.output)
        if not out.parent.exists():
            raise CliError(f"output directory {str(out.parent)!r} does not exist")
    sess = InferenceSession(path, backend=args.backend)
    t0 = time.perf_counter()
    outputs = sess.run(None, feeds)
    dt = time.perf_counter() - t0
    names = [o.name for o in sess.get_outputs()]
    if args.output:
        atomic_write(args.output, lambda f: np.savez(f, **dict(zip(names, outputs))))
        print(f"wrote {len(outputs)} output(s) to {args.output} ({dt * 1e3:.2f} ms)")
    else:
        for n, a in zip(names, outputs):
            flat = a.reshape(-1)
            head = np.array2string(flat[:6], precision=5, separator=", ")
            print(f"{n}: {a.dtype} {list(a.shape)} {head}{' ...' if flat.size > 6 else ''}")
        print(f"({dt * 1e3:.2f} ms)")
    return 0


def _cmd_demo(args) -> int:
    from .demo import run_demo
    return run_demo(keep_dir=args.keep, seed=args.seed)


if __name__ == "__main__":
    sys.exit(main())
