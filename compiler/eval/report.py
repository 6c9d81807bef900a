"""How ``erasec eval`` shows its result: a terminal table, and in a report folder ``report.json`` and
``report.html`` (the page is ``compiler/eval/html.py``; the images it shows, ``compiler/eval/images.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

from .html import ONE_CONCEPT, number, render_html
from .results import EvalResult


def render_table(result: EvalResult) -> str:
    lines = [
        f"{result.name} {result.version} ({result.method}) on {result.model}: "
        f"{result.edited_layers} of {result.layers} {result.layer_kind} layers edited",
        *([f"  {result.padding_note}"] if result.padding_note else []),
        "",
        f"  {'erased concept':<28} {'efficacy':>9} {'generality':>11} {'moved':>7} {'recoverable':>12}",
    ]
    for concept in result.concepts:
        general = concept.generality.total if concept.generality else None
        moved = 1.0 - concept.targets.total if concept.targets else None
        lines.append(
            f"  {concept.concept[:28]:<28} {number(concept.efficacy.total):>9} {number(general):>11} "
            f"{number(moved):>7} {number(concept.recoverability.total):>12}"
        )
    lines += ["", f"  {'kept (specificity) on':<28} {'rows':>9} {'value':>11}"]
    for group, score in result.specificity:
        lines.append(f"  {group[:28]:<28} {score.rows:>9} {number(score.total):>11}")
    if result.least_kept:  # least_kept holds kept values (specificity); moved = 1 − kept
        lines.append(
            "  moved most (1 − kept): " + "; ".join(f"{p[:40]!r} {1.0 - v:.3f}" for p, v in result.least_kept[:3])
        )
    if result.interference is not None and len(result.concepts) > 1:
        lines += ["", "  interference (row: erased alone; column: concept moved, in units of its erase distance)"]
        width = max(len(c.concept[:20]) for c in result.concepts)
        for concept, row in zip(result.concepts, result.interference):
            lines.append(f"  {concept.concept[:20]:<{width}} " + " ".join(f"{v:6.3f}" for v in row))
    else:
        lines.append(f"  interference: {ONE_CONCEPT if len(result.concepts) == 1 else result.interference_note}")
    lines += drift_curve_lines(result)
    lines.append(
        "  (text pathway, exact; efficacy/generality 1 = reads as the anchor, kept 1 = untouched, "
        f"recoverable 1 = a closed-form attack (λ={result.attack_lambda:g}) restores it; docs/evaluation.md)"
    )
    return "\n".join(lines)


def drift_curve_lines(result: EvalResult) -> list[str]:
    """The efficacy-against-drift curve (compiler/eval/drift_curve.py) as a few columns, and the patch's point."""
    curve = result.drift_curve
    if curve is None:
        return [f"  efficacy against drift: {result.drift_note}"] if result.drift_note else []
    shown = curve.points[::2]  # 1/1024, 1/256, … 16 × the spec's erase weights
    budget = "" if curve.max_drift is None else f", budget {curve.max_drift:g}"
    scale, drift, efficacy = curve.landed
    return [
        "",
        f"  efficacy against drift (erase weights × scale; drift of the {curve.preserve_rows} preserve rows as solved)",
        "  " + f"{'scale':<9}" + "".join(f"{p[0]:>8.3g}" for p in shown),
        "  " + f"{'drift':<9}" + "".join(f"{p[1]:>8.4f}" for p in shown),
        "  " + f"{'efficacy':<9}" + "".join(f"{p[2]:>8.4f}" for p in shown),
        f"  this patch: scale {scale:.3g}, drift {drift:.4f}, efficacy {efficacy:.4f}{budget}",
    ]


REPORT_FILES = ("report.json", "report.html")


def check_report_folder(folder: Path, *, inputs: tuple = (), images: bool = False) -> None:
    """Before ``eval`` runs: ``folder`` (and with ``images`` its ``images/``) can be made or written,
    is no input, and neither report file is an input, a link or a device (``patches/outputs.py``;
    the report files themselves are erasec's and are replaced)."""
    from erasec.patches.outputs import check_output, check_output_folder

    from .images import IMAGES_FOLDER

    check_output_folder(folder, inputs=inputs)
    if images:
        check_output_folder(folder / IMAGES_FOLDER, inputs=inputs)
    for name in REPORT_FILES:
        check_output(folder / name, inputs=inputs, force=True)


def write_report(result: EvalResult, folder: Path, images: list[dict] | None = None) -> dict[str, str]:
    """``report.json`` and ``report.html`` in ``folder`` (made if missing), both or neither, through
    the one writer (``patches/atomic.py``); ``images`` (written before, paths relative to ``folder``)
    are shown in the page. Returns what was written. A full disk or an unwritable folder is a
    one-line ``PatchError`` naming the file."""
    from erasec.patches.atomic import write_files_atomically

    json_text = json.dumps(result.as_dict(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    texts = dict(zip(REPORT_FILES, (json_text, render_html(result, images))))

    def write(staging: Path) -> None:
        for name, text in texts.items():
            (staging / name).write_bytes(text.encode("utf-8"))

    write_files_atomically([folder / name for name in texts], write)
    return {"json": str(folder / "report.json"), "html": str(folder / "report.html")}
