"""The `qrt` command: convert, inspect, run, bench, demo.

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
import warnings
from pathlib import Path

import numpy as np

from kernels.core import config
from kernels.core.ops import op_spec

from .bench.command import add_parser as add_bench_parser
from .convert import ConvertOptions, convert
from .convert.recover import DEFAULT_LR as DEFAULT_RECOVER_LR
from .convert.recover import PRECISIONS as RECOVER_PRECISIONS
from .demo import run_demo
from .format import atomic_write as _atomic_write
from .format import load, read_header
from .planner import QrtCacheWarning
from .session import InferenceSession
from .tables import format_table


class CliError(Exception):
    """An error whose message is meant for the user as is."""


def _alpha(text: str):
    """--smooth: a float, "auto" or "none"."""
    if text in ("auto", "none"):
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), 'auto' or 'none', got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)   # for reports: the command as given
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        with warnings.catch_warnings():
            if not config.get("QRT_DEBUG"):
                # other libraries' warnings (torch's exporter, numba, scikit-learn) are not the
                # user's business here; qrt's own (a damaged plan cache) are
                warnings.simplefilter("ignore")
                warnings.simplefilter("default", QrtCacheWarning)
            return args.func(args) or 0
    except KeyboardInterrupt:
        print(f"qrt {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the CLI's contract is one line, no traceback
        if config.get("QRT_DEBUG"):
            raise
        msg = str(e).strip() or type(e).__name__
        first, *rest = msg.splitlines()
        print(f"qrt {args.command}: error: {first}", file=sys.stderr)
        for line in rest:  # multi-line messages (e.g. the list of unsupported ops) stay readable
            print(f"  {line.strip()}", file=sys.stderr)
        return 1


class _DefaultsFormatter(argparse.HelpFormatter):
    """ArgumentDefaultsHelpFormatter without the noise: "(default: X)" only where the help
    does not already say its default and X means something (not None, False or empty)."""

    def _get_help_string(self, action):
        text = action.help or ""
        d = action.default
        if ("default" in text or d is None or d is False or d == [] or d is argparse.SUPPRESS
                or action.option_strings == [] or isinstance(action, argparse._HelpAction)):
            return text
        return f"{text} (default: %(default)s)"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qrt", description="qrt: convert, inspect and run int8/sparse "
                                "neural-network models packed in one .qrt file.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    c = sub.add_parser("convert", help="convert (prune, quantize) an ONNX model or a Hugging Face model folder to a .qrt file",
                       formatter_class=_DefaultsFormatter,
                       description="Import an ONNX model (opset 13-28) or a Hugging Face / sentence-transformers "
                                   "model folder (exported inside with PyTorch, tokenizer and pooling kept in the "
                                   ".qrt for `qrt embed`; calibrated on built-in English text unless --calib or "
                                   "--calib-text is given), fold its constant and shape "
                                   "subgraphs, fuse Linear/GELU/LayerNorm/BatchNorm patterns, then prune "
                                   "and quantize its Linear/Conv weights into packed layouts, print a "
                                   "per-layer accuracy report and write one .qrt file. Layer patterns are "
                                   "fnmatch globs on node or weight names (see `qrt inspect`).")
    c.add_argument("model", help="input ONNX file, or a Hugging Face model folder (config.json, weights, tokenizer)")
    c.add_argument("-o", "--output", required=True, help="output .qrt file (written atomically)")
    g = c.add_argument_group("pruning")
    g.add_argument("--prune", default="none", choices=["none", "magnitude", "nm", "block", "channel", "random"],
                   help="pruning method: the mask's shape (magnitude = unstructured)")
    g.add_argument("--prune-method", default="auto", choices=["auto", "magnitude", "wanda", "obs"],
                   help="how the kept weights of a magnitude/nm/block mask are chosen: obs (SparseGPT: "
                        "second-order, updates the kept weights), wanda (|w| x input norm), magnitude; "
                        "obs and wanda need --calib or --calib-text (Linear and ungrouped Conv layers; grouped "
                        "Convs use magnitude); auto: obs with calibration data, else magnitude with a warning")
    g.add_argument("--sparsity", type=float, default=0.0, help="target fraction of weights removed, in [0, 1)")
    g.add_argument("--layer-sparsity", action="append", default=[], metavar="PATTERN=F",
                   help="override the sparsity of layers matching PATTERN (repeatable)")
    g.add_argument("--nm", metavar="N:M", help="N:M structured sparsity, with --prune nm (default 2:4)")
    g.add_argument("--block", metavar="RxC", help="block shape, with --prune block (default 1x4)")
    g.add_argument("--scope", default="layer", choices=["layer", "global"],
                   help="magnitude pruning threshold per layer or one across all layers")
    g.add_argument("--skip", nargs="+", default=[], metavar="PATTERN", help="layers not to prune (still quantized)")
    q = c.add_argument_group("quantization")
    q.add_argument("--quant", default="none", choices=["none", "int8", "int4"],
                   help="weight quantization (int4 is weight-only, grouped)")
    q.add_argument("--act", default="dynamic", choices=["dynamic", "static"],
                   help="int8 activations: per row at run time, or per tensor from calibration")
    q.add_argument("--per-tensor", action="store_true", help="one int8 weight scale per tensor (default: per output channel)")
    q.add_argument("--asymmetric", action="store_true", help="asymmetric weights with a zero point (default: symmetric)")
    q.add_argument("--group-size", type=int, default=64, help="int4 group size (32, 64 or 128)")
    q.add_argument("--weight-bits", type=int, default=8, choices=[8, 7],
                   help="int8 weights on 8 bits (default) or 7 ([-63, 63], the same file layout): AVX2 CPUs "
                        "multiply 7-bit weights about 1.3x faster, exactly (block-sparse bsr about 1.2x); "
                        "the rounding step doubles (symmetric int8 only)")
    q.add_argument("--embed-quant", default="auto", choices=["auto", "int8", "int4", "none"],
                   help="embedding tables (constant tables read by Gather): auto (default) = int8 per row "
                        "whenever --quant is int8 or int4; int4 = int4_grouped along the row; none = fp32")
    q.add_argument("--quant-method", default="rtn", choices=["rtn", "gptq"],
                   help="how weights are rounded: rtn (round to nearest, default) or gptq (each layer's "
                        "rounding error corrected on its calibration inputs; needs calibration data, "
                        "composes with pruning)")
    q.add_argument("--quant-depthwise", action="store_true",
                   help="also prune and quantize depthwise Convs (one input channel per group), which stay "
                        "dense fp32 by default: a few weights a channel, and slower in int8 than in float32")
    q.add_argument("--quant-small-convs", action="store_true",
                   help="with --quant int8, also quantize (and prune) Convs whose patch (input channels per group x "
                        "kernel) has at most 64 values, which then stay dense fp32 by default: slower in int8 than in "
                        "float32")
    q.add_argument("--bias-correction", action="store_true",
                   help="shift each layer's bias by the mean output error its pruned / rounded weight leaves on "
                        "the calibration inputs (needs calibration data)")
    q.add_argument("--drift-correction", choices=["obs", "all", "off"],
                   help="aim each layer at the original model's output instead of its own output on the "
                        "already-changed model's inputs: obs (the default) for obs pruning, all for obs and "
                        "gptq, off (SparseGPT's and GPTQ's way); one more forward pass per layer input")
    q.add_argument("--no-act-order", action="store_true",
                   help="gptq: visit the inputs in their order instead of largest activations first")
    q.add_argument("--smooth", type=_alpha, metavar="ALPHA|auto|none",
                   help="SmoothQuant for int8 activations: move activation outliers into the weights by "
                        "max|X|^ALPHA / max|W|^(1-ALPHA) per input channel (0.5 is usual; auto: the alpha with the "
                        "lowest int8 output error per layer input, or none; needs calibration data). Default: auto "
                        "for --quant int8 with calibration data, none otherwise")
    q.add_argument("--calib", metavar="FILE.npz|DIR", help="calibration data: an .npz of arrays named like "
                   "the model inputs, or a folder with one INPUT_NAME.npy per model input; first axis = "
                   "samples (default: random inputs, reported as such)")
    q.add_argument("--calib-text", metavar="FILE", help="calibration data for a text model: a UTF-8 text "
                   "file, one sentence or paragraph per line (blank lines skipped), tokenized with "
                   "--tokenizer into input_ids / attention_mask / token_type_ids")
    q.add_argument("--tokenizer", metavar="DIR", help="Hugging Face tokenizer folder holding tokenizer.json, "
                   "for --calib-text (needs the tokenizers package); a model folder is its own tokenizer")
    q.add_argument("--seq-len", type=int, default=128, metavar="N",
                   help="--calib-text: at most N tokens per line (longer lines are truncated)")
    q.add_argument("--calib-method", default="minmax", choices=["minmax", "percentile", "mse", "entropy"],
                   help="static activation range estimation")
    q.add_argument("--percentile", type=float, default=99.99, help="percentile for --calib-method percentile")
    q.add_argument("--keep-fp32", nargs="+", default=[], metavar="PATTERN", help="layers (node or weight name) or embedding tables (table or Gather name) kept dense fp32")
    q.add_argument("--holdout", type=float, default=0.2, metavar="F",
                   help="fraction of the calibration feeds held back from every calibration step and used "
                        "only to report end-to-end accuracy on unseen samples (default 0.2; 0: none)")
    q.add_argument("--max-error", type=float, metavar="COS", help="accuracy budget: minimum cosine similarity "
                   "of the outputs; the most sensitive layers are unpruned (still quantized), then "
                   "fall back to fp32, until it holds")
    r = c.add_argument_group("recovery (knowledge distillation; needs PyTorch: pip install torch==2.13.0)")
    r.add_argument("--recover", action="store_true",
                   help="after pruning, fine-tune the pruned model toward the original (output and hidden-state "
                        "losses, masks fixed) on unlabeled data, then quantize")
    r.add_argument("--recover-data", metavar="FILE.npz|DIR|FILE.txt",
                   help="training data for --recover, in the forms of --calib (a text file takes --tokenizer); "
                        "default: the calibration data")
    r.add_argument("--recover-minutes", type=float, metavar="M",
                   help="time budget of --recover in minutes (default 10 when --recover-steps is not given)")
    r.add_argument("--recover-steps", type=int, metavar="N", help="optimizer steps of --recover (with "
                   "--recover-minutes: whichever ends first)")
    r.add_argument("--recover-lr", type=float, default=DEFAULT_RECOVER_LR, metavar="LR",
                   help=f"peak learning rate of --recover (default {DEFAULT_RECOVER_LR:g}, measured on a pretrained "
                        "transformer: benchmarks/RESULTS.md, \"Recovery settings\")")
    r.add_argument("--recover-precision", choices=RECOVER_PRECISIONS, default="auto",
                   help="the student's forward pass while training: bf16 (matmuls in bfloat16, float32 weights "
                        "and optimizer), fp32, or auto (default: bf16 where the CPU has AMX-BF16 tiles, else fp32)")
    r.add_argument("--recover-gradual", action="store_true",
                   help="prune during training instead of one-shot: sparsity grows on a cubic schedule from 0 "
                        "to the target over the first 2/3 of the budget (--prune magnitude or block)")
    c.add_argument("--report", metavar="REPORT.json", help="also write the accuracy report as JSON")
    c.add_argument("--seed", type=int, default=0, help="seed for random pruning and random calibration inputs")
    c.add_argument("-q", "--quiet", action="store_true", help="no per-layer progress and report table")
    c.set_defaults(func=_cmd_convert)

    i = sub.add_parser("inspect", help="list the nodes, layouts and tensor bytes of a .qrt file",
                       description="Validate a .qrt file and print its inputs, outputs, nodes, "
                                   "initializers (layout, dtype, shape, bytes) and totals.")
    i.add_argument("file", help=".qrt file")
    i.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    i.add_argument("--plan", type=int, metavar="ROWS",
                   help="also show per-layer planning for ROWS GEMM rows (batch x sequence): which layout "
                        "and backend each Linear runs here and the measured reason (measured once per "
                        "machine and shape, then cached)")
    i.add_argument("--backend", default="auto", help="backend for --plan (default auto)")
    i.add_argument("--threads", type=int, help="threads for --plan (default: all cores)")
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

    e = sub.add_parser("embed", help="sentence embeddings of a text file, with a .qrt converted from a Hugging Face folder",
                       formatter_class=_DefaultsFormatter,
                       description="Embed every line of a UTF-8 text file with a text model converted by `qrt "
                                   "convert MODEL_FOLDER`: tokenized with the tokenizer stored in the .qrt, pooled "
                                   "and normalised as the model was configured, written as one float32 .npy "
                                   "array [lines, dimension], row i for line i+1 (blank lines included). Needs "
                                   "numpy and the tokenizers package, no PyTorch.")
    e.add_argument("file", help=".qrt text model")
    e.add_argument("--input", "-i", required=True, metavar="TEXTS.txt", help="UTF-8 text file, one text per line")
    e.add_argument("-o", "--output", required=True, metavar="OUT.npy", help="output .npy file (written atomically)")
    e.add_argument("--batch-size", type=int, default=32, metavar="N", help="texts per model run")
    e.add_argument("--backend", default="auto", help="backend: auto or one of reference, numba, native, triton, cupy")
    e.add_argument("--threads", type=int, help="threads (default: the CPUs this process may use; with --ray: "
                   "threads per actor, default 1)")
    e.add_argument("--ray", metavar="ADDRESS", help="run on a Ray cluster: 'local' starts one on this machine, "
                   "'auto' or ray://HOST:PORT joins one (pip install -e '.[ray]'); the same embeddings")
    e.add_argument("--actors", type=int, metavar="N", help="with --ray: actors (qrt sessions), default: the "
                   "cluster's CPUs / --threads")
    e.add_argument("-q", "--quiet", action="store_true", help="no progress line")
    e.set_defaults(func=_cmd_embed)

    add_bench_parser(sub)

    d = sub.add_parser("demo", help="train, convert and run a small model; print a comparison table and a report",
                       description="Train an MLP on scikit-learn's bundled digits data set, export it to "
                                   "ONNX, convert it to .qrt as fp32, int8, int4, 2:4 + int8 and 90% sparse + "
                                   "int8, run each on every available backend and in onnxruntime, print one "
                                   "table (accuracy, size, latency, speed-ups) and write report.md, report.json "
                                   "and plots to a folder. Needs no files or network (pip install -e '.[demo]' in the qrt checkout).")
    d.add_argument("--out", metavar="DIR", default="qrt-demo", help="folder for the report (created; default ./qrt-demo)")
    d.add_argument("--keep-models", action="store_true", help="also keep the .onnx and .qrt files, in DIR/models")
    d.add_argument("--seed", type=int, default=0, help="random seed for the split and training")
    d.set_defaults(func=_cmd_demo)
    return p


# ------------------------------------------------------------------------------ helpers --

def atomic_write(path: str | os.PathLike, write) -> None:
    """format.atomic_write, after checking the output path is usable (one-line errors)."""
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


# ----------------------------------------------------------------------------- commands --

def _cmd_convert(args) -> int:
    folder = Path(args.model).is_dir()
    src = Path(args.model) if folder else _require_file(args.model, "model")
    out = Path(args.output)
    if not out.parent.exists():
        raise CliError(f"output directory {str(out.parent)!r} does not exist")
    if out.is_dir():  # else save()'s rename fails with a message naming its temporary file
        raise CliError(f"output {str(out)!r} is a directory")
    t0 = time.perf_counter()
    if folder:
        from .convert.hf import read_folder
        read_folder(src)        # a folder qrt cannot convert is refused before any option is checked
        model = None
    else:
        model = _read_onnx(src)
    # a folder is its own tokenizer, and calibrates on built-in text without --calib: from_folder
    # fills those in, then validates
    opts = _convert_options(args, validate=not folder)
    report = Path(args.report) if args.report else None
    if report is not None and (not report.parent.exists() or report.is_dir()):
        raise CliError(f"report path {args.report!r} is a directory or its directory does not exist")
    say = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    if folder:
        from .convert.hf import from_folder
        graph = from_folder(src, out, progress=say, report_path=report, options=opts)
    else:
        graph = convert(model, out, name=src.stem, progress=say, report_path=report, options=opts)
    dt = time.perf_counter() - t0
    nbytes = sum(t.nbytes for t in graph.initializers.values())
    print(f"wrote {out}: {len(graph.nodes)} nodes, {len(graph.initializers)} initializers, "
          f"{_human(nbytes)} of tensors, {_human(out.stat().st_size)} on disk ({dt:.2f} s)"
          + (f"; report {report}" if report else ""))
    return 0


def _read_onnx(src: Path):
    try:
        from .onnx_import import load_onnx_file
        model = load_onnx_file(src)
    except ValueError as e:                   # external data missing: the message says what to do
        raise CliError(str(e)) from None
    except ImportError:
        raise CliError("converting needs the onnx package: pip install onnx (or pip install -e '.[convert]' in the qrt checkout)") from None
    except Exception as e:
        raise CliError(f"cannot read {str(src)!r} as an ONNX model: {type(e).__name__}: {e}") from None
    if not model.opset_import and not model.graph.node:
        # protobuf parses empty (or some non-ONNX) bytes as an empty ModelProto
        raise CliError(f"{str(src)!r} is not an ONNX model (no graph and no opset)")
    return model


def _pair(text: str, sep: str, flag: str) -> tuple[int, int]:
    a, found, b = text.lower().partition(sep)
    try:
        if not found:
            raise ValueError
        return int(a), int(b)
    except ValueError:
        raise CliError(f"{flag} {text!r}: expected two integers like {'2:4' if sep == ':' else '4x4'}") from None


def _convert_options(args, validate: bool = True):
    layer_sparsity = {}
    for spec in args.layer_sparsity:
        pattern, sep, value = spec.rpartition("=")
        try:
            layer_sparsity[pattern] = float(value)
            if not sep or not pattern:
                raise ValueError
        except ValueError:
            raise CliError(f"--layer-sparsity {spec!r}: expected PATTERN=F, e.g. '*fc2*=0.5'") from None
    if args.calib is not None and not Path(args.calib).is_dir():   # a folder of .npy is checked by the loader
        _require_file(args.calib, "calibration file")
    if args.calib_text is not None:
        _require_file(args.calib_text, "calibration text file")
    if args.recover_data is not None and not Path(args.recover_data).is_dir():
        _require_file(args.recover_data, "recovery data file")
    if args.tokenizer is not None and not Path(args.tokenizer).exists():
        raise CliError(f"tokenizer folder {args.tokenizer!r} does not exist")
    # a mask-shape option for another mask would silently do nothing
    for flag, value, prune in (("--nm", args.nm, "nm"), ("--block", args.block, "block")):
        if value is not None and args.prune != prune:
            raise CliError(f"{flag} {value} applies to --prune {prune} only; this conversion has --prune {args.prune}")
    opts = ConvertOptions(
        prune=args.prune, prune_method=args.prune_method, sparsity=args.sparsity, layer_sparsity=layer_sparsity,
        nm=_pair(args.nm or "2:4", ":", "--nm"), block=_pair(args.block or "1x4", "x", "--block"), scope=args.scope,
        quant=args.quant, act=args.act, per_channel=not args.per_tensor, symmetric=not args.asymmetric,
        group_size=args.group_size, quant_method=args.quant_method, weight_bits=args.weight_bits, embed_quant=args.embed_quant, act_order=not args.no_act_order,
        smooth=args.smooth, calib=args.calib, calib_text=args.calib_text, tokenizer=args.tokenizer,
        seq_len=args.seq_len, calib_method=args.calib_method,
        percentile=args.percentile, keep_fp32=args.keep_fp32, quant_depthwise=args.quant_depthwise,
        quant_small_convs=args.quant_small_convs, skip=args.skip,
        max_error=args.max_error, holdout=args.holdout,
        bias_correction=args.bias_correction,
        drift_correction=args.drift_correction,
        recover=args.recover, recover_data=args.recover_data, recover_minutes=args.recover_minutes,
        recover_steps=args.recover_steps, recover_lr=args.recover_lr, recover_gradual=args.recover_gradual,
        recover_precision=args.recover_precision,
        seed=args.seed)
    if validate:
        opts.validate()
    return opts


def _describe(path: Path) -> dict:
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
    layers = []
    for n in graph.nodes:
        wi = op_spec(n.op).weight_input
        if n.op in ("Linear", "Conv") and wi is not None and len(n.inputs) > wi and n.inputs[wi] in graph.initializers:
            t = graph.initializers[n.inputs[wi]]
            dense = t.to_dense()
            fp32 = int(np.prod(t.shape)) * 4   # what this weight costs as plain fp32
            layers.append({"name": n.name, "op": n.op, "weight": n.inputs[wi], "layout": t.layout,
                           "shape": list(t.shape), "act_quant": n.attrs.get("act_quant", "none"),
                           "sparsity": 1.0 - float(np.count_nonzero(dense)) / max(dense.size, 1),
                           "bytes": t.nbytes, "fp32_bytes": fp32, "ratio": t.nbytes / fp32 if fp32 else 1.0})
    return {
        "file": str(path), "file_bytes": path.stat().st_size, "name": graph.name,
        "format_version": int(file_meta["format_version"]),
        "inputs": [v.to_dict() for v in graph.inputs], "outputs": [v.to_dict() for v in graph.outputs],
        "nodes": nodes, "initializers": inits, "layers": layers, "report": graph.metadata.get("report"),
        "totals": {"nodes": len(nodes), "initializers": len(inits),
                   "tensor_bytes": sum(i["bytes"] for i in inits), "bytes_by_layout": by_layout,
                   "ops": {op: sum(1 for n in nodes if n["op"] == op) for op in sorted({n["op"] for n in nodes})}},
    }


def _cmd_inspect(args) -> int:
    path = _require_file(args.file, "file")
    if args.plan is not None and args.plan < 1:
        raise CliError(f"--plan ROWS must be >= 1, got {args.plan}")
    info = _describe(path)
    if args.plan is not None:
        sess = InferenceSession(path, backend=args.backend, threads=args.threads)
        info["plan"] = sess.plan_layers(args.plan)
    if args.json:
        print(json.dumps(info, indent=1))
        return 0

    def shape(v):
        return "[" + ", ".join("?" if d is None else str(d) for d in v["shape"]) + "]" if v["shape"] is not None else "?"
    print(f"{info['file']}: model {info['name']!r}, {_human(info['file_bytes'])}")
    print("\ninputs:")
    print(format_table([[v["name"], v["dtype"], shape(v)] for v in info["inputs"]], ["name", "dtype", "shape"]))
    print("\noutputs:")
    print(format_table([[v["name"], v["dtype"], shape(v)] for v in info["outputs"]], ["name", "dtype", "shape"]))
    print("\nnodes:")
    print(format_table([[k, n["name"], n["op"], n["layout"], _human(n["weight_bytes"]) if n["weight_bytes"] else "-"]
                  for k, n in enumerate(info["nodes"])], ["#", "name", "op", "layout", "weights"]))
    if info["layers"]:
        print("\nweight layers:")
        rows = [[lr["name"], lr["op"], lr["layout"], "x".join(map(str, lr["shape"])),
                 lr["act_quant"] if lr["act_quant"] != "none" else "-", f"{lr['sparsity'] * 100:.1f}%",
                 _human(lr["bytes"]), f"{lr['ratio']:.3f}"] for lr in info["layers"]]
        print(format_table(rows, ["layer", "op", "layout", "shape", "act", "sparsity", "bytes", "x fp32"]))
        packed = sum(lr["bytes"] for lr in info["layers"])
        fp32 = sum(lr["fp32_bytes"] for lr in info["layers"])
        print(f"weight layers: {_human(packed)} vs {_human(fp32)} as fp32 ({packed / max(fp32, 1):.3f}x)")
    print("\ninitializers:")
    print(format_table([[t["name"], t["layout"], t["dtype"], "x".join(map(str, t["shape"])) or "scalar", _human(t["bytes"])]
                  for t in info["initializers"]], ["name", "layout", "dtype", "shape", "bytes"]))
    tot = info["totals"]
    print(f"\ntotals: {tot['nodes']} nodes ({', '.join(f'{k} {v}' for k, v in tot['ops'].items())}), "
          f"{tot['initializers']} initializers, {_human(tot['tensor_bytes'])} of tensors "
          f"({', '.join(f'{k} {_human(v)}' for k, v in tot['bytes_by_layout'].items())})")
    if "plan" in info:
        print(f"\nlayer plan for {args.plan} rows on backend {args.backend!r} (measured here, or cached for this machine):")
        if info["plan"]:
            print(format_table([[r["node"], r["stored"], r["chosen"],
                                 ", ".join(f"{k} {v:.3f}" for k, v in r["times_ms"].items()), r["reason"]]
                                for r in info["plan"]], ["layer", "stored", "chosen", "ms per candidate", "reason"]))
        else:
            print("  no Linear layer has a choice (dense fp32 weights, or a single candidate layout and backend)")
    rep = info["report"]
    if rep:
        e = rep.get("end_to_end") or {}
        print(f"\nconversion report (stored in the file): {rep.get('options', {}).get('prune')} pruning, "
              f"{rep.get('options', {}).get('quant')} weights; evaluated on {rep.get('calibration')}")
        if e:
            top1 = e.get("top1_agreement")
            print(f"  end to end: cosine {e['cosine']:.6f}, relative error {e['rel_error']:.3e}, "
                  f"max abs error {e['max_abs_error']:.3e}"
                  + (f", top-1 agreement {top1 * 100:.2f}%" if top1 is not None else ""))
        h = rep.get("held_out") or {}
        if h:
            top1 = h.get("top1_agreement")
            print(f"  held out ({rep.get('held_out_source')}): cosine {h['cosine']:.6f}, relative error "
                  f"{h['rel_error']:.3e}" + (f", top-1 agreement {top1 * 100:.2f}%" if top1 is not None else ""))
        for lr in rep.get("layers", []):
            if lr.get("note"):
                print(f"  {lr['name']}: {lr['note']}")
        for e in rep.get("embeddings", []):
            print(f"  embedding table {e['name']} {'x'.join(map(str, e['shape']))}: {e['layout']}, "
                  f"{e['ratio']:.3f}x fp32{' - ' + e['note'] if e.get('note') else ''}")
        r = rep.get("recovery") or {}
        if r:
            print(f"  recovery: {r['steps']} steps in {r['seconds']} s, loss {r['loss_start']:.4f} -> "
                  f"{r['loss_end']:.4f}, fp32 cosine {r['cosine_before']:.4f} -> {r['cosine_after']:.4f}")
        if rep.get("budget"):
            print(f"  accuracy budget: {rep['budget'].get('summary')}")
    return 0


def _cmd_run(args) -> int:
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
    # The first run of an input size also plans its layers (times each candidate kernel):
    # that time is not the model's, so a run that planned is followed by one that did not.
    measured = sum(1 for r in sess.layer_plan if r.get("source") == "measured")
    timing = f"{dt * 1e3:.2f} ms"
    if sess.layer_plan:
        t0 = time.perf_counter()
        sess.run(None, feeds)
        what = (f"timing the kernels of {measured} layer(s) for this input size (once per machine and size)"
                if measured else "choosing each layer's kernel from the plan cache")
        timing = f"{(time.perf_counter() - t0) * 1e3:.2f} ms; the first run took {dt * 1e3:.2f} ms, {what}"
    names = [o.name for o in sess.get_outputs()]
    if args.output:
        atomic_write(args.output, lambda f: np.savez(f, **dict(zip(names, outputs))))
        print(f"wrote {len(outputs)} output(s) to {args.output} ({timing})")
    else:
        for n, a in zip(names, outputs):
            flat = a.reshape(-1)
            head = np.array2string(flat[:6], precision=5, separator=", ")
            print(f"{n}: {a.dtype} {list(a.shape)} {head}{' ...' if flat.size > 6 else ''}")
        print(f"({timing})")
    return 0


def _cmd_embed(args) -> int:
    from .text import ProgressLine, TextEncoder, read_text_lines
    _require_file(args.file, "model")
    _require_file(args.input, "input text file")
    if args.batch_size < 1:
        raise CliError(f"--batch-size must be >= 1, got {args.batch_size}")
    out = Path(args.output)
    if out.suffix != ".npy":
        raise CliError(f"output {args.output!r}: expected a .npy file name (np.save adds .npy to any other)")
    texts = read_text_lines(args.input, f"input text {args.input!r}")
    if not texts:
        raise CliError(f"input text {args.input!r} is empty; expected one text per line")
    if args.actors is not None and not args.ray:
        raise CliError("--actors applies to --ray only")
    for flag, v in (("--threads", args.threads), ("--actors", args.actors)):
        if v is not None and v < 1:
            raise CliError(f"{flag} must be >= 1, got {v}")
    progress = None if args.quiet else ProgressLine("embed")
    t0 = time.perf_counter()
    if args.ray:
        from .ray_embed import connect, embed_texts
        ray = connect(args.ray)
        t1 = time.perf_counter()
        emb = embed_texts(texts, args.file, batch_size=args.batch_size, actors=args.actors,
                          threads_per_actor=args.threads, backend=args.backend, progress=progress)
        where = f"Ray at {args.ray} ({int(ray.cluster_resources().get('CPU', 0))} CPUs); connected in {t1 - t0:.2f} s"
    else:
        enc = TextEncoder(args.file, backend=args.backend, threads=args.threads)
        t1 = time.perf_counter()
        emb = enc.encode(texts, batch_size=args.batch_size, progress=progress)
        where = f"{enc.session.threads} thread(s); model loaded in {t1 - t0:.2f} s"
    dt = time.perf_counter() - t1
    atomic_write(out, lambda f: np.save(f, emb))
    # the first batches of each length also plan their layers (measured once per machine)
    print(f"wrote {out}: {emb.shape[0]} x {emb.shape[1]} float32 embeddings in {dt:.2f} s "
          f"({emb.shape[0] / dt:.1f} texts/s, {where})")
    return 0


def _cmd_demo(args) -> int:
    return run_demo(out_dir=args.out, keep_models=args.keep_models, seed=args.seed)


if __name__ == "__main__":
    sys.exit(main())
