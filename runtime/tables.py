"""Plain-text tables for the CLI, the conversion report and the benchmarks."""
from __future__ import annotations


def format_table(rows: list[list], header: list[str]) -> str:
    """Left-aligned columns separated by two spaces, a dashed rule under the header."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header), fmt.format(*["-" * w for w in widths])]
    lines += [fmt.format(*[str(x) for x in r]) for r in rows]
    return "\n".join(line.rstrip() for line in lines)
