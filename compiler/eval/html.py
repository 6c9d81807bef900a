"""``report.html``: one page that reads on its own — what was erased, what was kept, how hard the
erasure is to undo (each column with a one-line legend saying which way is good), interference,
plots, the before/after images and the JSON.

Plots are matplotlib (Agg backend: no display needed) embedded as base64 PNG. Images from
``--images`` are files in ``images/`` beside the page, linked by paths relative to it, so the report
folder can be moved or published whole. The page needs nothing from the network.
"""

from __future__ import annotations

import base64
import html
import io
import json

from .results import EvalResult

_STYLE = (
    "body{font-family:sans-serif;max-width:64em;margin:2em auto;padding:0 1em;line-height:1.4}"
    ".scroll{overflow-x:auto;max-width:100%}"
    "table{border-collapse:collapse;margin:.5em 0}th,td{padding:.25em .6em;text-align:left;vertical-align:top}"
    "thead th{border-bottom:1px solid #888}td.n{text-align:right;font-variant-numeric:tabular-nums}"
    "tr.legend td{font-size:.8em;color:#555;max-width:14em}"
    "pre{background:#f4f4f4;padding:1em;white-space:pre-wrap;overflow-wrap:anywhere}"
    "figure{display:inline-block;margin:1em;vertical-align:top;max-width:100%}figure img{max-width:100%;height:auto}"
    "table.images img{width:256px;max-width:40vw;image-rendering:pixelated;display:block}"
    ".bad{color:#a00;font-weight:bold}"
)
ONE_CONCEPT = "one concept: nothing to interfere with"


def number(value) -> str:
    """A score as the table and the page print it (— for not measured)."""
    return "—" if value is None else f"{value:.4f}"


def _e(text) -> str:
    return html.escape(str(text))


def _concepts_table(result: EvalResult) -> str:
    legend = (
        "the concept's own prompts; 1 = each reads as its anchor (higher is better)",
        "held-out paraphrases, same scale (higher is better)",
        "its unpaired prompts (I2P): how far their K/V outputs moved (higher is better)",
        (f"1 = a closed-form attack (λ={result.attack_lambda:g}) restores the concept; "
         '<span class="bad">high is bad</span>, 0 = nothing recovers it'),
    )
    rows = []
    for concept in result.concepts:
        general = concept.generality.total if concept.generality else None
        moved = 1.0 - concept.targets.total if concept.targets else None
        cells = (concept.efficacy.total, general, moved, concept.recoverability.total)
        rows.append(
            f"<tr><td>{_e(concept.concept)} <small>→ {_e(concept.anchor)}</small></td>"
            + "".join(f'<td class="n">{number(v)}</td>' for v in cells) + "</tr>"
        )
    return (
        '<div class="scroll"><table class="concepts"><thead><tr><th>erased concept → anchor</th><th>efficacy</th>'
        "<th>generality</th><th>moved</th><th>recoverable</th></tr>"
        '<tr class="legend"><td></td>' + "".join(f"<td>{text}</td>" for text in legend) + "</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _kept_table(result: EvalResult) -> str:
    rows = "".join(
        f'<tr><td>{_e(group)}</td><td class="n">{score.rows}</td><td class="n">{number(score.total)}</td></tr>'
        for group, score in result.specificity
    )
    table = (
        '<div class="scroll"><table class="kept"><thead><tr><th>kept (specificity) on</th><th>rows</th><th>value</th></tr>'
        '<tr class="legend"><td></td><td>token rows</td><td>1 = K/V outputs untouched (higher is better)</td></tr>'
        f"</thead><tbody>{rows}</tbody></table></div>"
    )
    if not result.least_kept:
        return table
    moved = "".join(
        f'<li>{_e(repr(prompt))}: moved <b>{1.0 - kept:.3f}</b> (kept {kept:.3f})</li>' for prompt, kept in result.least_kept
    )
    return (
        f"{table}<p>The prompts that moved most (moved = ‖ΔW c‖ / ‖W0 c‖ = 1 − kept; 0 = untouched):</p>"
        f'<ol class="moved">{moved}</ol>'
    )


def _interference_text(result: EvalResult) -> str:
    if len(result.concepts) == 1:
        return ONE_CONCEPT
    if result.interference is None:
        return result.interference_note
    return (
        f"{result.interference_note}. Row: the concept erased alone; column: the concept it moved, in units of that "
        "concept's own erase distance (diagonal about 1; off the diagonal, lower is better)."
    )


def figures(result: EvalResult) -> list[tuple[str, object]]:
    """(caption, matplotlib figure) for each plot; the caller closes them. The heatmap only with two
    or more concepts (one concept has nothing to interfere with)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    out = []
    names = [c.concept for c in result.concepts]
    x = range(len(names))
    figure, axis = plt.subplots(figsize=(max(4.5, 1.2 * len(names) + 3), 3.2))
    series = (
        ("efficacy ↑", [c.efficacy.total for c in result.concepts]),
        ("generality ↑", [c.generality.total if c.generality else 0.0 for c in result.concepts]),
        ("recoverability ↓", [c.recoverability.total for c in result.concepts]),
    )
    for offset, (label, values) in enumerate(series):
        axis.bar([i + (offset - 1) * 0.27 for i in x], values, width=0.27, label=label)
    axis.set_xticks(list(x), names, rotation=20, ha="right")
    axis.set_ylim(min(0.0, *[v for _, vs in series for v in vs]), 1.05)
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)  # beside, never on a bar
    axis.set_title("per concept (↑ higher is better, ↓ lower is better)", fontsize=9)
    out.append(("Per-concept scores", figure))

    figure, axis = plt.subplots(figsize=(4.5, 3.8))
    points = [(c.concept, c.efficacy.total, c.recoverability.total) for c in result.concepts]
    axis.scatter([p[1] for p in points], [p[2] for p in points], s=30)
    for index, (name, px, py) in enumerate(sorted(points, key=lambda p: (p[2], p[1]))):
        # neighbours' labels alternate above and below their dots, so close concepts stay readable
        axis.annotate(name, (px, py), xytext=(5, 5 if index % 2 else -10), textcoords="offset points", fontsize=7)
    axis.margins(0.25)  # zoomed to the concepts, so close ones separate; the axes give the values
    axis.annotate("better", xy=(1.0, 0.0), xytext=(0.8, 0.12), xycoords="axes fraction", textcoords="axes fraction",
                  fontsize=8, color="#080", ha="center", arrowprops={"arrowstyle": "->", "color": "#080"})
    axis.set_xlabel("efficacy (erased: higher is better)")
    axis.set_ylabel("recoverability (lower is better)")
    axis.set_title("erased against recoverable, per concept", fontsize=9)
    out.append(("Efficacy against recoverability", figure))

    if result.interference is not None and len(names) > 1:
        figure, axis = plt.subplots(figsize=(max(3.5, 0.6 * len(names) + 2), max(3, 0.6 * len(names) + 1.5)))
        image = axis.imshow(result.interference, cmap="viridis", vmin=0.0)
        axis.set_xticks(list(x), names, rotation=30, ha="right", fontsize=7)
        axis.set_yticks(list(x), names, fontsize=7)
        axis.set_xlabel("concept moved")
        axis.set_ylabel("concept erased alone")
        figure.colorbar(image, ax=axis)
        out.append(("Interference", figure))

    if result.drift_curve is not None:
        out.append(("Efficacy against drift", _drift_figure(plt, result.drift_curve)))

    figure, axis = plt.subplots(figsize=(7, 3))
    for concept in result.concepts:
        axis.plot([v for _, v in concept.efficacy.layers], marker=".", label=concept.concept)
    axis.set_xlabel("K/V layer (model order)")
    axis.set_ylabel("efficacy")
    if len(names) <= 12:
        axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    axis.set_title("efficacy per layer", fontsize=9)
    out.append(("Efficacy per layer", figure))
    return out


def _drift_figure(plt, curve):
    """Efficacy of the spec's rows against the drift of the preserved rows, one point per erase-weight
    scale (compiler/eval/drift_curve.py), the budget as a line and this patch as a star."""
    figure, axis = plt.subplots(figsize=(5.5, 3.8))
    axis.plot([p[1] for p in curve.points], [p[2] for p in curve.points], marker=".", color="#36c", label="× erase weights")
    for index, (scale, drift, efficacy) in enumerate(curve.points):
        if index % 2 == 0:
            label = f"×{scale:g}" if scale >= 1 else f"×1/{round(1 / scale)}"
            axis.annotate(label, (drift, efficacy), xytext=(4, -10), textcoords="offset points", fontsize=6, color="#555")
    if curve.max_drift is not None:
        axis.axvline(curve.max_drift, linestyle="--", color="#a00", label=f"budget {curve.max_drift:g}")
    axis.plot([curve.landed[1]], [curve.landed[2]], marker="*", markersize=12, color="#a00", linestyle="none", label="this patch")
    axis.margins(x=0.1)
    axis.set_xlabel(f"drift of the {curve.preserve_rows} preserved rows (lower is better)")
    axis.set_ylabel("efficacy (higher is better)")
    axis.legend(fontsize=7, loc="lower right", frameon=False)
    axis.set_title("what each step of erasure costs", fontsize=9)
    return figure


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=96, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _plots(result: EvalResult) -> str:
    import matplotlib.pyplot as plt

    parts = []
    for title, figure in figures(result):
        parts.append(f'<figure><img alt="{_e(title)}" src="data:image/png;base64,{_png(figure)}">'
                     f"<figcaption>{_e(title)}</figcaption></figure>")
        plt.close(figure)
    return "\n".join(parts)


def _images(images: list[dict]) -> str:
    """Per concept a table: seed, prompt, base | patched side by side (paths relative to the page)."""
    if not images:
        return ""
    parts = ["<h2>Images: base | patched, same seed</h2>"]
    for entry in images:
        rows = "".join(
            f"<tr><td>{seed}</td><td>{_e(prompt)}</td>"
            f'<td><img src="{_e(before)}" alt="{_e(entry["concept"])}, base, seed {seed}: {_e(prompt)}"></td>'
            f'<td><img src="{_e(after)}" alt="{_e(entry["concept"])}, patched, seed {seed}: {_e(prompt)}"></td></tr>'
            for seed, prompt, before, after in zip(entry["seeds"], entry["prompts"], entry["base"], entry["patched"])
        )
        notes = f"mean pixel difference {entry['mean_pixel_difference']:.3f} (0–255)"
        if "clip_score" in entry:
            clip = entry["clip_score"]
            notes += f"; CLIP score with “{_e(entry['concept'])}”: base {clip['base']:.2f}, patched {clip['patched']:.2f}"
        parts.append(
            f'<section class="concept-images"><h3>{_e(entry["concept"])}</h3><div class="scroll"><table class="images">'
            f"<thead><tr><th>seed</th><th>prompt</th><th>base</th><th>patched</th></tr></thead><tbody>{rows}</tbody>"
            f'</table></div><p>{notes}; grid: <a href="{_e(entry["file"])}">{_e(entry["file"])}</a></p></section>'
        )
    return "\n".join(parts)


def render_html(result: EvalResult, images: list[dict] | None = None) -> str:
    """One page: the tables with their legends, the plots (inline PNG), the images (``images``: the
    entries ``images.image_grids`` returns, paths relative to the page) and the JSON."""
    data = result.as_dict()
    title = f"erasec eval: {_e(result.name)} {_e(result.version)}"
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{_STYLE}</style></head><body>\n<h1>{title}</h1>\n"
        f"<p>{_e(result.method)} on {_e(result.model)}: {result.edited_layers} of {result.layers} "
        f"{result.layer_kind} layers edited. Text pathway, exact: the numbers compare the edited layers' "
        "outputs with the base ones "
        "(definitions: docs/evaluation.md).</p>\n"
        f"<h2>Erased</h2>\n{_concepts_table(result)}\n<h2>Kept</h2>\n{_kept_table(result)}\n"
        f'<h2>Interference</h2>\n<p class="interference">{_e(_interference_text(result))}</p>\n'
        f"<h2>Plots</h2>\n{_plots(result)}\n{_images(images or [])}\n"
        "<h2>Data</h2>\n<details><summary>JSON (per layer)</summary>"
        f"<pre>{_e(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False))}</pre></details>\n"
        "</body></html>\n"
    )
