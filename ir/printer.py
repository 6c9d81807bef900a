"""Stable text for IR objects: goldens, ``--print-ir-after``.

Fixed order; counts, shapes and provenance exactly; norms and condition numbers to 3 significant
digits and residuals as an order of magnitude, so BLAS noise cannot change the text; never
digests of computed floats.
"""

from __future__ import annotations

import math

import numpy as np

from .program import EditProgram, SpaceProgram
from .rows import EraseRows, HardRows, Moments, PreserveRows, Provenance
from .solution import SpaceSolution

MAX_ROWS = 12


def fmt(value: float) -> str:
    """3 significant digits, stable across tiny perturbations in all but boundary cases."""
    if value == 0:
        return "0"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.3g}"


def magnitude(value: float, floor: float = 1e-10) -> str:
    """An upper bound as a power of ten (``<1e-3``); anything below ``floor`` prints as ``<floor``,
    so rounding noise (residuals of 1e-16 vs 3e-15) cannot change the text."""
    if value < floor:
        return f"<{floor:.0e}"
    return f"<1e{math.floor(math.log10(value)) + 1}"


def _prov(p: Provenance) -> str:
    return f"{p.request!r} prompt={p.prompt!r} token={p.token}"


def _rows(lines: list[str], indent: str, count: int, render) -> None:
    for i in range(min(count, MAX_ROWS)):
        lines.append(f"{indent}[{i}] {render(i)}")
    if count > MAX_ROWS:
        lines.append(f"{indent}... {count - MAX_ROWS} more")


def _folded(lines: list[str], folded: Moments | None) -> None:
    if folded is not None:
        lines.append(
            f"      folded rows={folded.rows} prompts={len(folded.prompts)} w={fmt(folded.weight)} "
            f"|gram|={fmt(np.linalg.norm(folded.gram))}"
            + ("" if folded.cross is None else f" |cross|={fmt(np.linalg.norm(folded.cross))}")
        )


def _erase(lines: list[str], rows: EraseRows, label: str = "erase") -> None:
    form = "guide" if rows.shared else "per-layer"
    lines.append(f"    {label} rows={rows.count} target={form}")
    _folded(lines, rows.folded)

    def render(i: int) -> str:
        text = f"{_prov(rows.provenance[i])} w={fmt(rows.weights[i])} |k|={fmt(np.linalg.norm(rows.keys[i]))}"
        if rows.guides is not None:
            text += f" |g-k|={fmt(np.linalg.norm(rows.guides[i] - rows.keys[i]))}"
        return text

    _rows(lines, "      ", rows.count, render)


def _preserve(lines: list[str], rows: PreserveRows, label: str = "preserve") -> None:
    lines.append(f"    {label} rows={rows.count}")
    _folded(lines, rows.folded)
    _rows(
        lines,
        "      ",
        rows.count,
        lambda i: f"{_prov(rows.provenance[i])} w={fmt(rows.weights[i])} |k|={fmt(np.linalg.norm(rows.keys[i]))}",
    )


def _hard(lines: list[str], label: str, rows: HardRows) -> None:
    lines.append(f"    {label} rows={rows.count}")
    _rows(lines, "      ", rows.count, lambda i: f"{_prov(rows.provenance[i])} |k|={fmt(np.linalg.norm(rows.keys[i]))}")


def print_space(space: SpaceProgram, dim: int, sites: int) -> list[str]:
    roles = "" if space.roles == ("k", "v") else f" roles={','.join(space.roles)}"
    gram = "" if space.site_gram is None else " site-gram"
    separable = " separable" if space.separable else ""
    lines = [f"  space {space.space} dim={dim} sites={sites} lambda={fmt(space.lam)}{roles}{gram}{separable}"]
    _erase(lines, space.erase)
    _preserve(lines, space.preserve)
    _hard(lines, "hard", space.hard)
    _hard(lines, "invariant-rows", space.invariant_rows)
    if space.attack_sources is not None:
        _erase(lines, space.attack_sources, "attack-sources")
    if space.attack_retain is not None:
        _preserve(lines, space.attack_retain, "attack-retain")
    for site in space.site_rows[:MAX_ROWS]:
        own = "".join(
            f" {name} rows={rows.count}" for name, rows in (("preserve", site.preserve), ("hard", site.hard)) if rows is not None
        )
        lines.append(f"    site {site.module_path} W0{list(site.weight.shape)} |W0|={fmt(np.linalg.norm(site.weight))}{own}")
    if len(space.site_rows) > MAX_ROWS:
        lines.append(f"    ... {len(space.site_rows) - MAX_ROWS} more sites")
    if space.drift is not None:
        d = space.drift
        lines.append(
            f"    drift-budget max={fmt(d.max_drift)} scale={fmt(d.scale)} drift={fmt(d.drift)} efficacy={fmt(d.efficacy)} "
            f"full-drift={fmt(d.full_drift)} full-efficacy={fmt(d.full_efficacy)} preserve-rows={d.preserve_rows}"
        )
    return lines


def print_solution(solution: SpaceSolution) -> list[str]:
    report = solution.report
    lines = [
        f"  solution {solution.space} form={solution.form} rank={solution.rank} "
        f"condition={fmt(report.condition)} residual={magnitude(report.residual)} hard-rank={report.hard_rank}"
    ]
    if solution.roles != ("k", "v"):
        lines.append(f"    edits roles {','.join(solution.roles)} only")
    if solution.form == "shared":
        lines.append(f"    T-I = left{list(solution.left.shape)} @ right{list(solution.right.shape)}^T")
    else:
        for layer in solution.layers:
            lines.append(f"    {layer.module_path} up{list(layer.up.shape)} down{list(layer.down.shape)}")
    if solution.truncation_error:
        lines.append(f"    rank cap error={fmt(solution.truncation_error)}")
    if solution.dtype is not None:
        lines.append(f"    dtype {solution.dtype.dtype} rounding={magnitude(solution.dtype.max_rel_error)}")
    return lines


def print_program(program: EditProgram) -> str:
    target = program.target
    lines = [f"program family={target.family} model={target.name!r} requests={len(program.requests)}"]
    for request in program.requests:
        lines.append(f"  request {request!r}")
    for space in program.spaces:
        key_space = target.space(space.space)
        lines.extend(print_space(space, key_space.dim, len(key_space.sites)))
    if program.solution is not None:
        for solution in program.solution.spaces:
            lines.extend(print_solution(solution))
    for diagnostic in program.diagnostics:
        lines.append(f"  {diagnostic.severity} [{diagnostic.origin}] {diagnostic.message}")
    return "\n".join(lines) + "\n"
