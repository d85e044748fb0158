"""The benchmark report: the "qrt-bench/1" result dict, checked, written as JSON, Markdown and
plots.

The result (written by runtime/bench/gemm.py and model.py, see SCHEMA_DOC below) holds every
measured number; the Markdown and the plots are views of it and add nothing. Conventions:

- Ratios ("vs_fp32", "vs_ort_int8", "vs_dense_int8", "speedup") are other / this, so > 1 means
  this row (qrt) is faster. They were measured in the same process run, which on noisy
  machines makes them the figures that count; absolute times are context.
- "pct_peak" is a percentage (0-100) of the machine's measured peak for the row's precision.
- Summaries (geometric means) use valid rows only: a fast wrong answer is not a speed-up.
- Numbers must be finite: JSON has no NaN, and a NaN error would hide a failed check. A value
  that could not be measured is None.
"""
from __future__ import annotations

import io
import json
import math
import os
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..format import atomic_write
from .machine import describe

SCHEMA = "qrt-bench/1"

SCHEMA_DOC = """\
{"schema": "qrt-bench/1", "created": ISO-8601 UTC, "command": str, "machine": fingerprint dict,
 "gemm": [row, ...] (optional), "models": [model_result, ...] (optional),
 "omitted": [{"what": str, "reason": str}, ...]}
row: M N K layout sparsity block runtime precision median_s spread calls gops pct_peak
     intensity vs_fp32 vs_ort_int8 vs_dense_int8 max_err valid
model_result: model backend batch seq bytes latency_ms{median p90 spread} throughput unit
     compare[{runtime median_ms p90_ms speedup max_abs_err cosine}]
     profile[{node op layout kernel median_ms share}]
     plan[{node stored chosen rows times_ms{candidate: ms} reason}]"""

LAYOUTS = ("fp32", "int8", "int8w7", "int4", "csr", "bsr", "nm")     # the order rows are listed in
SPARSE_LAYOUTS = ("csr", "bsr", "nm")
PRECISIONS = ("fp32", "int8", "int4")
UNITS = ("sequences/s", "samples/s")
PROFILE_TOP = 15

REPORT_FILES = ("report.md", "report.json", "speedup_vs_sparsity.png", "roofline.png")


# --- validation ------------------------------------------------------------------------------
# A check is a function (value, path) that raises ValueError naming ``path`` when the value is
# not what the schema expects. Records are {field: check}; OPTIONAL fields may be absent.

Check = Callable[[Any, str], None]


def _is(test: Callable[[Any], bool], expected: str) -> Check:
    def check(value: Any, path: str) -> None:
        if not test(value):
            raise ValueError(f"{path}: expected {expected}, got {value!r} ({type(value).__name__})")
    return check


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


INT = _is(_is_int, "an int")
COUNT = _is(lambda v: _is_int(v) and v >= 1, "an int >= 1")
NUMBER = _is(_is_number, "a finite number")
POSITIVE = _is(lambda v: _is_number(v) and v > 0, "a finite number > 0")
NONNEGATIVE = _is(lambda v: _is_number(v) and v >= 0, "a finite number >= 0")
FRACTION = _is(lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]")
STR = _is(lambda v: isinstance(v, str), "a string")
BOOL = _is(lambda v: isinstance(v, bool), "a bool")


def _one_of(*choices: Any) -> Check:
    return _is(lambda v: v in choices, "one of " + ", ".join(repr(c) for c in choices))


def _optional(check: Check) -> Check:
    """None, or what ``check`` accepts."""
    def optional(value: Any, path: str) -> None:
        if value is not None:
            check(value, path)
    return optional


def _record(fields: dict[str, Check], optional: tuple[str, ...] = ()) -> Check:
    def record(value: Any, path: str) -> None:
        if not isinstance(value, dict):
            raise ValueError(f"{path}: expected an object, got {type(value).__name__}")
        for name, check in fields.items():
            if name in value:
                check(value[name], f"{path}.{name}")
            elif name not in optional:
                raise ValueError(f"{path}: missing field {name!r}")
    return record


def _list_of(check: Check) -> Check:
    def list_of(value: Any, path: str) -> None:
        if not isinstance(value, list):
            raise ValueError(f"{path}: expected a list, got {type(value).__name__}")
        for i, item in enumerate(value):
            check(item, f"{path}[{i}]")
    return list_of


def _map_of(check: Check) -> Check:
    def map_of(value: Any, path: str) -> None:
        if not isinstance(value, dict):
            raise ValueError(f"{path}: expected an object, got {type(value).__name__}")
        for key, item in value.items():
            STR(key, f"{path} key")
            check(item, f"{path}[{key!r}]")
    return map_of


OPT_NUMBER = _optional(NUMBER)

PEAKS = _record({"int8_gops": OPT_NUMBER, "fp32_gflops": OPT_NUMBER, "source": STR})

MACHINE = _record({
    "cpu": STR, "isa": _list_of(STR), "logical_cores": COUNT, "threads": COUNT, "key": STR,
    "peaks": _optional(PEAKS), "mem_bw_gbs": _optional(POSITIVE),
}, optional=("peaks", "mem_bw_gbs"))

GEMM_ROW = _record({
    "M": COUNT, "N": COUNT, "K": COUNT, "layout": _one_of(*LAYOUTS), "sparsity": FRACTION,
    "block": _optional(STR), "runtime": STR, "precision": _one_of(*PRECISIONS),
    "median_s": POSITIVE, "spread": NONNEGATIVE, "calls": COUNT, "gops": NONNEGATIVE,
    "pct_peak": _optional(NONNEGATIVE), "intensity": POSITIVE, "vs_fp32": _optional(POSITIVE),
    "vs_ort_int8": _optional(POSITIVE), "vs_dense_int8": _optional(POSITIVE),
    "max_err": _optional(NONNEGATIVE), "valid": BOOL,
})

MODEL_RESULT = _record({
    "model": STR, "backend": STR, "batch": COUNT, "seq": _optional(COUNT), "bytes": INT,
    "latency_ms": _record({"median": POSITIVE, "p90": POSITIVE, "spread": NONNEGATIVE}),
    "throughput": NONNEGATIVE, "unit": _one_of(*UNITS),
    "compare": _list_of(_record({
        "runtime": STR, "median_ms": POSITIVE, "p90_ms": POSITIVE, "speedup": POSITIVE,
        "max_abs_err": _optional(NONNEGATIVE), "cosine": OPT_NUMBER})),
    "profile": _list_of(_record({
        "node": STR, "op": STR, "layout": _optional(STR), "kernel": STR,
        "median_ms": NONNEGATIVE, "share": NONNEGATIVE})),
    "plan": _list_of(_record({
        "node": STR, "stored": STR, "chosen": STR, "rows": INT,
        "times_ms": _map_of(NONNEGATIVE), "reason": STR})),
})

RESULT = _record({
    "schema": _one_of(SCHEMA), "created": STR, "command": STR, "machine": MACHINE,
    "gemm": _list_of(GEMM_ROW), "models": _list_of(MODEL_RESULT),
    "omitted": _list_of(_record({"what": STR, "reason": STR})),
}, optional=("gemm", "models"))


def validate(result: dict) -> None:
    """Raise ValueError naming the first field that does not fit the "qrt-bench/1" schema
    (e.g. "result.gemm[3].median_s: expected a finite number > 0, got None (NoneType)")."""
    RESULT(result, "result")


# --- Markdown --------------------------------------------------------------------------------

def to_markdown(result: dict) -> str:
    """The whole report as Markdown: machine, GEMM tables and summary, models, omissions.
    ``result`` is assumed valid (see validate)."""
    lines = [f"# qrt benchmark ({result.get('created', '?')})", "",
             f"Command: `{result.get('command', '?')}`", "", "## Machine", ""]
    lines += [f"- {line}" for line in describe(result.get("machine") or {})]
    rows = result.get("gemm") or []
    if rows:
        lines += ["", *_gemm_section(rows, result.get("machine") or {})]
    for model in result.get("models") or []:
        lines += ["", *_model_section(model)]
    lines += ["", "## Omitted", ""]
    omitted = result.get("omitted") or []
    lines += [f"- {o['what']}: {o['reason']}" for o in omitted] or ["Nothing was omitted."]
    return "\n".join(lines) + "\n"


# calls of one measurement further apart than this (spread: interquartile range / median of
# every call, runtime/bench/timing.py) say the machine was busy during it, not that the
# kernel varies
BUSY_SPREAD = 0.25

GEMM_HEADER = ("runtime", "layout", "median ms", "spread", "GOP/s", "% peak", "x fp32",
               "x ort int8", "x dense int8", "err")


def _gemm_section(rows: list[dict], machine: dict) -> list[str]:
    lines = ["## GEMM: y = x W^T, x (M, K) fp32, W (N, K)", "",
             ("Ratios are other runtime's median / this one's (> 1: this row is faster), "
              "measured in one process run. GOP/s counts dense-equivalent 2*M*N*K ops; "
              "% peak is of the measured peak for the row's precision (a sparse row's of the operations "
              f"it does). qrt rows in bold. A spread above {BUSY_SPREAD:.0%} is flagged \"busy?\": repeats "
              "that far apart mean other work shared the cores. "
              f"Threads: {machine.get('threads', '?')}.")]
    lines += ["", "### Overview", "", *overview_lines(rows), "", "### Every row"]
    for (n, k, m), group in sorted(_group_by_shape(rows).items()):
        group = sorted(group, key=_row_order)
        lines += ["", f"### M={m} N={n} K={k}", "",
                  *markdown_table(GEMM_HEADER, [_gemm_cells(r) for r in group],
                          bold=[_is_qrt(r) for r in group])]
    lines += ["", "### Summary (geometric mean over valid rows)", ""]
    lines += _summary_lines(rows) or ["No qrt rows."]
    return lines


OVERVIEW_SPARSITY = 0.9     # the sparse columns of the overview: this sparsity where measured


def overview_lines(rows: list[dict]) -> list[str]:
    """One Markdown row per (K, N, M): best dense fp32 and onnxruntime int8 GOP/s, and per qrt
    runtime its dense int8 against onnxruntime int8 and the peak, and its csr / bsr at
    OVERVIEW_SPARSITY (else the highest sparsity measured) against its own dense int8."""
    qrts = sorted({r["runtime"] for r in rows if _is_qrt(r)})
    sparsities = {r["sparsity"] for r in rows if r["layout"] in ("csr", "bsr")}
    s = OVERVIEW_SPARSITY if OVERVIEW_SPARSITY in sparsities else max(sparsities, default=None)
    header = ["K", "N", "M", "best fp32 GOP/s", "ort int8 GOP/s"]
    for q in qrts:
        header += [f"{q} int8 x ort int8", f"{q} int8 % peak"]
        if s is not None:
            header += [f"{q} csr {s:.0%} x int8", f"{q} bsr {s:.0%} x int8"]
    out = []
    for (n, k, m), group in sorted(_group_by_shape(rows).items(), key=lambda kv: (kv[0][1], kv[0][0], kv[0][2])):
        def find(runtime=None, layout=None, sparsity=0.0, baseline=False):
            return [r for r in group if r["valid"] and (runtime is None or r["runtime"] == runtime)
                    and (layout is None or r["layout"] == layout) and r["sparsity"] == sparsity
                    and (not baseline or not _is_qrt(r))]
        fp32 = find(layout="fp32", baseline=True)
        ort = [r for r in group if r["runtime"] == "onnxruntime int8"]
        cells = [str(k), str(n), str(m), _fmt_opt(max((r["gops"] for r in fp32), default=None), "{:.0f}"),
                 _fmt_opt(ort[0]["gops"] if ort else None, "{:.0f}")]
        for q in qrts:
            dense = find(q, "int8")
            cells += [_fmt_ratio(dense[0]["vs_ort_int8"] if dense else None),
                      _fmt_opt(dense[0]["pct_peak"] if dense else None, "{:.0f}")]
            if s is not None:
                for lay in ("csr", "bsr"):
                    sp = find(q, lay, s)
                    cells.append(_fmt_ratio(sp[0]["vs_dense_int8"] if sp else None))
        out.append(cells)
    return markdown_table(tuple(header), out)


def _group_by_shape(rows: list[dict]) -> dict[tuple[int, int, int], list[dict]]:
    """Rows by (N, K, M): one weight shape's M values sit together, as in the shapes table."""
    groups: dict[tuple[int, int, int], list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["N"], r["K"], r["M"])].append(r)
    return groups


def _row_order(row: dict) -> tuple:
    # Dense first, baselines before qrt at each sparsity, then the layout table's order.
    return (row["sparsity"], _is_qrt(row), LAYOUTS.index(row["layout"]), row["runtime"])


def _is_qrt(row: dict) -> bool:
    return row["runtime"].startswith("qrt")


def layout_label(row: dict) -> str:
    """"int8", "csr 90%", "bsr 4x4 80%", "nm 2:4": the layout as a reader names it."""
    if row["layout"] not in SPARSE_LAYOUTS:
        return row["layout"]
    block = f" {row['block']}" if row.get("block") else ""
    if row["layout"] == "nm" and block:
        return f"nm{block}"       # N:M fixes the sparsity; the percentage would repeat it
    return f"{row['layout']}{block} {row['sparsity']:.0%}"


def _gemm_cells(row: dict) -> list[str]:
    err = _fmt_err(row.get("max_err"))
    if not row["valid"]:
        err = f"INVALID {err}"
    return [row["runtime"], layout_label(row), _fmt_sig(row["median_s"] * 1e3),
            f"{row['spread']:.1%}" + (" busy?" if row["spread"] > BUSY_SPREAD else ""), _fmt_sig(row["gops"]),
            _fmt_opt(row.get("pct_peak"), "{:.1f}"),
            _fmt_ratio(row.get("vs_fp32")), _fmt_ratio(row.get("vs_ort_int8")),
            _fmt_ratio(row.get("vs_dense_int8")), err]


def summary(rows: list[dict]) -> dict[tuple[str, str], dict[str, tuple[float, int]]]:
    """(qrt runtime, layout) -> {"vs_fp32": (geomean, n rows), "vs_ort_int8": (...)} over the
    valid rows that have the ratio; a ratio no row has is left out."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        if _is_qrt(r) and r["valid"]:
            groups[(r["runtime"], r["layout"])].append(r)
    out: dict[tuple[str, str], dict[str, tuple[float, int]]] = {}
    for key, group in groups.items():
        out[key] = {}
        for ratio in ("vs_fp32", "vs_ort_int8"):
            values = [r[ratio] for r in group if r.get(ratio) is not None]
            if values:
                out[key][ratio] = (geomean(values), len(values))
    return out


def geomean(values: list[float]) -> float:
    """Geometric mean of positive numbers (the mean of ratios that treats 2x and 0.5x alike)."""
    return math.exp(sum(math.log(v) for v in values) / len(values))


def _summary_lines(rows: list[dict]) -> list[str]:
    lines = []
    for (runtime, layout), ratios in sorted(summary(rows).items(),
                                            key=lambda kv: (kv[0][0], LAYOUTS.index(kv[0][1]))):
        parts = [f"{_fmt_ratio(g)} {name.replace('vs_', 'vs ').replace('_', ' ')} (n={n})"
                 for name, (g, n) in ratios.items()]
        lines.append(f"- **{runtime} {layout}**: " + (", ".join(parts) or "no ratios measured"))
    return lines


def _model_section(m: dict) -> list[str]:
    seq = f", seq {m['seq']}" if m.get("seq") is not None else ""
    lat = m["latency_ms"]
    lines = [f"## Model {m['model']} ({m['backend']}, batch {m['batch']}{seq})", "",
             (f"Latency: median {_fmt_sig(lat['median'])} ms, p90 {_fmt_sig(lat['p90'])} ms, "
              f"spread {lat['spread']:.1%}; throughput {_fmt_sig(m['throughput'])} {m['unit']}; "
              f"file {m['bytes'] / 2**20:.2f} MiB")]
    if m.get("compare"):
        lines += ["", "Against other runtimes (speedup > 1: qrt faster):", "", *markdown_table(
            ("runtime", "median ms", "p90 ms", "speedup", "max abs err", "cosine"),
            [[c["runtime"], _fmt_sig(c["median_ms"]), _fmt_sig(c["p90_ms"]),
              _fmt_ratio(c["speedup"]), _fmt_err(c.get("max_abs_err")),
              _fmt_opt(c.get("cosine"), "{:.6f}")] for c in m["compare"]])]
    if m.get("profile"):
        top = sorted(m["profile"], key=lambda p: -p["median_ms"])[:PROFILE_TOP]
        lines += ["", f"Profile (top {len(top)} of {len(m['profile'])} nodes by time):", "",
                  *markdown_table(("node", "op", "layout", "kernel", "median ms", "share"),
                          [[p["node"], p["op"], p.get("layout") or "-", p["kernel"],
                            _fmt_sig(p["median_ms"]), f"{p['share']:.1%}"] for p in top])]
    if m.get("plan"):
        lines += ["", "Layout plan:", "", *markdown_table(
            ("node", "stored", "chosen", "rows", "times ms", "reason"),
            [[p["node"], p["stored"], p["chosen"], str(p["rows"]),
              ", ".join(f"{c} {_fmt_sig(t)}" for c, t in p["times_ms"].items()) or "-",
              p["reason"]] for p in m["plan"]])]
    return lines


def markdown_table(header: tuple[str, ...], rows: list[list[str]], bold: list[bool] | None = None
           ) -> list[str]:
    """A Markdown table; rows whose ``bold`` flag is set have every non-empty cell in bold."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i, cells in enumerate(rows):
        if bold and bold[i]:
            cells = [f"**{c}**" if c not in ("", "-") else c for c in cells]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return lines


def _fmt_sig(x: float) -> str:
    """Three significant digits without an exponent: 0.0123, 1.23, 123, 12345."""
    if x == 0:
        return "0"
    decimals = max(0, 2 - math.floor(math.log10(abs(x))))
    return f"{x:.{decimals}f}"


def _fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _fmt_err(x: float | None) -> str:
    return "-" if x is None else f"{x:.1e}"


def _fmt_opt(x: float | None, fmt: str) -> str:
    return "-" if x is None else fmt.format(x)


# --- files -----------------------------------------------------------------------------------

def write_json(result: dict, path: str | os.PathLike) -> Path:
    """Validate, then write ``result`` as indented JSON, atomically (temp file + os.replace),
    so that a reader never sees half a report."""
    validate(result)
    text = json.dumps(result, indent=1, allow_nan=False) + "\n"
    return write_atomic(Path(path), text.encode())


def read_json(path: str | os.PathLike) -> dict:
    """Load and validate a result written by write_json."""
    result = json.loads(Path(path).read_text())
    validate(result)
    return result


def write_report(result: dict, folder: str | os.PathLike) -> dict[str, Path]:
    """Write report.json, the plots where there is data, and report.md into ``folder``.

    Returns {file name: path} for what was written. Without matplotlib the plots are skipped
    and report.md says so. Raises ValueError (and writes nothing) when ``result`` is invalid.
    """
    folder = Path(folder)
    validate(result)
    folder.mkdir(parents=True, exist_ok=True)
    written = {"report.json": write_json(result, folder / "report.json")}
    notes: list[str] = []
    for name, plot in (("speedup_vs_sparsity.png", plot_speedup_vs_sparsity),
                       ("roofline.png", plot_roofline)):
        try:
            if plot(result, folder / name):
                written[name] = folder / name
                notes.append(f"![{name}]({name})")
            else:
                notes.append(f"{name}: nothing to plot.")
        except ImportError as e:
            notes.append(f"{name}: skipped, matplotlib is not importable ({e}).")
    markdown = to_markdown(result) + "\n## Plots\n\n" + "\n\n".join(notes) + "\n"
    written["report.md"] = write_atomic(folder / "report.md", markdown.encode())
    return written


def write_atomic(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through runtime.format.atomic_write (a temporary file in the
    same folder, renamed: no half-written report; permissions from the umask)."""
    atomic_write(path, lambda f: f.write(data))
    return Path(path)


# --- plots -----------------------------------------------------------------------------------

def plot_speedup_vs_sparsity(result: dict, path: str | os.PathLike) -> bool:
    """Speed-up over the best dense fp32 against sparsity, one panel per (N, K, M) shape with
    sparse rows: a line per runtime + layout (colour = runtime, marker = layout) and a dashed
    line at each runtime's dense int8. Returns False, writing nothing, without sparse rows."""
    rows = [r for r in result.get("gemm") or [] if r["valid"] and r.get("vs_fp32") is not None]
    groups = _group_by_shape(rows)
    shapes = sorted(s for s, g in groups.items() if any(r["layout"] in SPARSE_LAYOUTS for r in g))
    if not shapes:
        return False
    fig, axes = figure(len(shapes))
    colors = _color_map(sorted({r["runtime"] for r in rows}))
    for ax, shape in zip(axes, shapes):
        _speedup_panel(ax, shape, groups[shape], colors)
    # one legend for every panel, below them: inside a panel it would cover points
    handles: dict[str, Any] = {}
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    fig.legend(list(handles.values()), list(handles.keys()), fontsize=7, loc="outside lower center",
               ncols=min(4, len(handles)))
    fig.suptitle("Sparse int8 GEMM: speed-up over the best dense fp32 runtime of the same run "
                 "(higher is faster)", fontsize=9)
    save_figure(fig, Path(path))
    return True


MARKERS = {"csr": "o", "bsr": "s", "nm": "^", "int8": "D", "int4": "v", "fp32": "x"}


def _speedup_panel(ax, shape: tuple[int, int, int], rows: list[dict], colors: dict) -> None:
    n, k, m = shape
    lines: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        if r["layout"] in SPARSE_LAYOUTS:
            lines[(r["runtime"], f"{r['layout']} {r.get('block') or ''}".strip())].append(r)
    for (runtime, label), points in sorted(lines.items()):
        points.sort(key=lambda r: r["sparsity"])
        ax.plot([100 * r["sparsity"] for r in points], [r["vs_fp32"] for r in points],
                marker=MARKERS[points[0]["layout"]], color=colors[runtime],
                label=f"{runtime} {label}")
    # the dense int8 of every runtime that has one, onnxruntime's included: what sparsity must beat
    for runtime in sorted({r["runtime"] for r in rows if r["layout"] == "int8" and r["sparsity"] == 0}):
        dense = [r["vs_fp32"] for r in rows if r["runtime"] == runtime and r["layout"] == "int8"
                 and r["sparsity"] == 0]
        ax.axhline(max(dense), linestyle="--" if runtime.startswith("qrt") else "-.", linewidth=1,
                   color=colors[runtime], label=f"{runtime} (dense)" if runtime.endswith("int8")
                   else f"{runtime} dense int8")
    ax.axhline(1.0, linestyle=":", linewidth=1, color="gray", label="1.0 = the best dense fp32")
    ax.set_title(f"N={n} K={k} M={m}", fontsize=9)
    ax.set_xlabel("sparsity (%)")
    ax.set_ylabel("x dense fp32")


def plot_roofline(result: dict, path: str | os.PathLike) -> bool:
    """GOP/s against arithmetic intensity (ops per byte), log-log: a point per valid row
    (colour = runtime), the measured int8 and fp32 peaks as horizontal lines and, where the
    bandwidth was measured, the memory roof mem_bw_gbs * intensity. Returns False, writing
    nothing, without rows to plot."""
    rows = [r for r in result.get("gemm") or [] if r["valid"] and r["gops"] > 0]
    if not rows:
        return False
    machine = result.get("machine") or {}
    peaks = machine.get("peaks") or {}
    roofs = {name: peaks.get(key) for name, key in (("int8 peak", "int8_gops"),
                                                    ("fp32 peak", "fp32_gflops"))
             if peaks.get(key)}
    fig, (ax,) = figure(1, width=7.0, height=4.5)
    colors = _color_map(sorted({r["runtime"] for r in rows}))
    for runtime, color in colors.items():
        mine = [r for r in rows if r["runtime"] == runtime]
        ax.scatter([r["intensity"] for r in mine], [r["gops"] for r in mine], s=14,
                   color=color, label=runtime, alpha=0.8)
    xs = [r["intensity"] for r in rows]
    x_lo, x_hi = min(xs) / 2, max(xs) * 2
    _draw_roofs(ax, roofs, machine.get("mem_bw_gbs"), x_lo, x_hi)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(x_lo, x_hi)
    ax.set_ylim(top=1.6 * max([r["gops"] for r in rows] + list(roofs.values())))
    ax.set_xlabel("intensity (dense-equivalent ops / byte moved)")
    ax.set_ylabel("GOP/s")
    ax.set_title(f"Roofline, {machine.get('cpu', '?')}, {machine.get('threads', '?')} threads",
                 fontsize=9)
    ax.legend(fontsize=7, loc="best")
    save_figure(fig, Path(path))
    return True


def _draw_roofs(ax, roofs: dict[str, float], bw: float | None, x_lo: float, x_hi: float) -> None:
    for (name, value), style in zip(roofs.items(), ("-", "-.")):
        ax.axhline(value, linestyle=style, color="black", linewidth=1,
                   label=f"{name} {value:.0f} GOP/s")
    if not bw:
        return
    # GB/s times ops/byte is Gop/s: the most a kernel can do when it streams its bytes. Drawn up
    # to the highest compute roof, past which it is no longer the limit.
    x_end = min(x_hi, max(roofs.values()) / bw) if roofs else x_hi
    if x_end > x_lo:
        ax.plot([x_lo, x_end], [bw * x_lo, bw * x_end], linestyle="--", color="gray",
                linewidth=1, label=f"memory {bw:.0f} GB/s")


def figure(panels: int, width: float = 4.5, height: float = 3.2):
    """A figure with ``panels`` axes in rows of up to three, drawn by Agg without pyplot (no
    global state, no display needed). Raises ImportError without matplotlib."""
    import matplotlib  # noqa: F401  (imported first so that a missing package fails here)
    from matplotlib.figure import Figure
    cols = min(3, panels)
    nrows = math.ceil(panels / cols)
    fig = Figure(figsize=(width * cols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, cols, squeeze=False).ravel()
    for ax in axes[panels:]:
        ax.set_visible(False)
    return fig, list(axes[:panels])


def _color_map(runtimes: list[str]) -> dict[str, Any]:
    from matplotlib import colormaps
    palette = colormaps["tab10"]
    return {rt: palette(i % 10) for i, rt in enumerate(runtimes)}


def save_figure(fig, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    FigureCanvasAgg(fig)
    buf = io.BytesIO()              # PNG bytes, reaching disk through _write_atomic
    fig.savefig(buf, format="png", dpi=110)
    write_atomic(path, buf.getvalue())
