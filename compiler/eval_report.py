"""How ``erasec eval`` shows its result: a terminal table, JSON, and one self-contained HTML file.

The HTML report embeds its plots as base64 PNG ``<img>`` tags (matplotlib, Agg backend: no display
needed), so it is one file that can be mailed or attached to a model card: per-concept bars
(efficacy, generality, recoverability), efficacy against specificity per concept, the interference
heatmap, and efficacy per layer.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from .evaluation import EvalResult


def _number(value) -> str:
    return "—" if value is None else f"{value:.4f}"


def render_table(result: EvalResult) -> str:
    lines = [
        f"{result.name} {result.version} ({result.method}) on {result.model}: "
        f"{result.edited_layers} of {result.layers} K/V layers edited",
        "",
        f"  {'erased concept':<28} {'efficacy':>9} {'generality':>11} {'moved':>7} {'recoverable':>12}",
    ]
    for concept in result.concepts:
        general = concept.generality.total if concept.generality else None
        moved = 1.0 - concept.targets.total if concept.targets else None
        lines.append(
            f"  {concept.concept[:28]:<28} {_number(concept.efficacy.total):>9} {_number(general):>11} "
            f"{_number(moved):>7} {_number(concept.recoverability.total):>12}"
        )
    lines += ["", f"  {'kept (specificity) on':<28} {'rows':>9} {'value':>11}"]
    for group, score in result.specificity:
        lines.append(f"  {group[:28]:<28} {score.rows:>9} {_number(score.total):>11}")
    if result.least_kept:
        lines.append("  moved most: " + "; ".join(f"{p[:40]!r} {v:.3f}" for p, v in result.least_kept[:3]))
    if result.interference is not None and len(result.concepts) > 1:
        lines += ["", "  interference (row: erased alone; column: concept moved, in units of its erase distance)"]
        width = max(len(c.concept[:20]) for c in result.concepts)
        for concept, row in zip(result.concepts, result.interference):
            lines.append(f"  {concept.concept[:20]:<{width}} " + " ".join(f"{v:6.3f}" for v in row))
    else:
        lines.append(f"  interference: {result.interference_note}")
    lines.append(
        "  (text pathway, exact; efficacy/generality 1 = reads as the anchor, kept 1 = untouched, "
        f"recoverable 1 = a closed-form attack (λ={result.attack_lambda:g}) restores it; docs/evaluation.md)"
    )
    return "\n".join(lines)


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=96, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _plots(result: EvalResult) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plots = []
    names = [c.concept for c in result.concepts]
    x = range(len(names))
    figure, axis = plt.subplots(figsize=(max(4, 1.2 * len(names) + 2), 3.2))
    series = (
        ("efficacy", [c.efficacy.total for c in result.concepts]),
        ("generality", [c.generality.total if c.generality else 0.0 for c in result.concepts]),
        ("recoverability", [c.recoverability.total for c in result.concepts]),
    )
    for offset, (label, values) in enumerate(series):
        axis.bar([i + (offset - 1) * 0.27 for i in x], values, width=0.27, label=label)
    axis.set_xticks(list(x), names, rotation=20, ha="right")
    axis.set_ylim(min(0.0, *[v for _, vs in series for v in vs]), 1.05)
    axis.legend(fontsize=8)
    axis.set_title("per concept")
    plots.append(("Per-concept scores", _png(figure)))
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(4.5, 3.5))
    kept = min(score.total for _, score in result.specificity) if result.specificity else 1.0
    for concept in result.concepts:
        axis.scatter(concept.efficacy.total, kept, s=30)
        axis.annotate(concept.concept, (concept.efficacy.total, kept), fontsize=7)
    axis.set_xlabel("efficacy")
    axis.set_ylabel("specificity (worst group)")
    axis.set_title("efficacy vs specificity")
    plots.append(("Efficacy against specificity", _png(figure)))
    plt.close(figure)

    if result.interference is not None:
        figure, axis = plt.subplots(figsize=(max(3.5, 0.6 * len(names) + 2), max(3, 0.6 * len(names) + 1.5)))
        image = axis.imshow(result.interference, cmap="viridis", vmin=0.0)
        axis.set_xticks(list(x), names, rotation=30, ha="right", fontsize=7)
        axis.set_yticks(list(x), names, fontsize=7)
        axis.set_xlabel("concept moved")
        axis.set_ylabel("concept erased alone")
        figure.colorbar(image, ax=axis)
        plots.append(("Interference", _png(figure)))
        plt.close(figure)

    figure, axis = plt.subplots(figsize=(7, 3))
    for concept in result.concepts:
        axis.plot([v for _, v in concept.efficacy.layers], marker=".", label=concept.concept)
    axis.set_xlabel("K/V layer (model order)")
    axis.set_ylabel("efficacy")
    axis.legend(fontsize=7)
    axis.set_title("efficacy per layer")
    plots.append(("Efficacy per layer", _png(figure)))
    plt.close(figure)
    return plots


def render_html(result: EvalResult) -> str:
    """One self-contained HTML page: the table, the plots (inline PNG) and the JSON."""
    data = result.as_dict()
    figures = "\n".join(
        f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,{png}"><figcaption>{html.escape(title)}'
        "</figcaption></figure>"
        for title, png in _plots(result)
    )
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>erasec eval: {html.escape(result.name)} {html.escape(result.version)}</title>"
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}pre{background:#f4f4f4;padding:1em;"
        "overflow-x:auto}figure{display:inline-block;margin:1em}</style></head><body>\n"
        f"<h1>erasec eval: {html.escape(result.name)} {html.escape(result.version)}</h1>\n"
        f"<pre>{html.escape(render_table(result))}</pre>\n{figures}\n"
        "<h2>Data</h2>\n<details><summary>JSON (per layer)</summary>"
        f"<pre>{html.escape(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False))}</pre></details>\n"
        "</body></html>\n"
    )


REPORT_FILES = ("report.json", "report.html")


def check_report_folder(folder: Path, *, inputs: tuple = ()) -> None:
    """Before ``eval`` runs: ``folder`` can be made or written, is no input, and neither report file
    is an input, a link or a device (``patches/outputs.py``; the report files themselves are
    erasec's and are replaced)."""
    from erasec.patches.outputs import check_output, check_output_folder

    check_output_folder(folder, inputs=inputs)
    for name in REPORT_FILES:
        check_output(folder / name, inputs=inputs, force=True)


def write_report(result: EvalResult, folder: Path) -> dict[str, str]:
    """``report.json`` and ``report.html`` in ``folder`` (made if missing), both or neither, through
    the one writer (``patches/atomic.py``); returns what was written. A full disk or an unwritable
    folder is a one-line ``PatchError`` naming the file."""
    from erasec.patches.atomic import write_files_atomically

    json_text = json.dumps(result.as_dict(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    texts = dict(zip(REPORT_FILES, (json_text, render_html(result))))

    def write(staging: Path) -> None:
        for name, text in texts.items():
            (staging / name).write_bytes(text.encode("utf-8"))

    write_files_atomically([folder / name for name in texts], write)
    return {"json": str(folder / "report.json"), "html": str(folder / "report.html")}
