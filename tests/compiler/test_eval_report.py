"""``erasec eval``'s report and images (issue 12 items 4, 5, 14): the page reads on its own, the
before/after images are in it, and ``--images`` generates with the pipeline of the model's family.

Specs are built on ``builtin:tiny-sd1`` (one and two concepts) and ``builtin:tiny-sdxl``; images are
1 per concept at 1 step and 32 px (the tiny models' default size), so they stay fast.
"""

from __future__ import annotations

import dataclasses
import html
import json
import os
import types
from html.parser import HTMLParser
from pathlib import Path

import pytest

from cli_helpers import run
from erasec.compiler.eval.html import ONE_CONCEPT, figures, render_html
from erasec.compiler.eval.report import render_table
from erasec.compiler.eval.results import EvalOptions
from erasec.compiler.eval.run import evaluate_patch

SPEC = """\
erasec: 1
name: {name}
version: 1.0.0
model: builtin:{model}
method: uce
erase:
{erase}
preserve: [Claude Monet, a photo of a cat]
"""
VAN_GOGH = "  - {concept: Van Gogh, anchor: art, synonyms: [Vincent van Gogh]}\n"
MCKERNAN = "  - {concept: Kelly McKernan, anchor: art}\n"
FAST = ("--suite", "imagenette", "--max-unrelated", "4")


def _build(root: Path, name: str, model: str, erase: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "spec.yaml").write_text(SPEC.format(name=name, model=model, erase=erase))
    result = run("build", root / "spec.yaml", "-o", root / "patch.safetensors")
    assert result.exit_code == 0, result.output
    return root / "patch.safetensors"


@pytest.fixture(scope="module")
def patches(tmp_path_factory, tiny_sd1_path):
    root = tmp_path_factory.mktemp("eval-report")
    return {
        "one": _build(root / "one", "one", "tiny-sd1", VAN_GOGH),
        "two": _build(root / "two", "two", "tiny-sd1", VAN_GOGH + MCKERNAN),
    }


@pytest.fixture(scope="module")
def results(patches):
    options = EvalOptions(suites=("imagenette",), max_unrelated=4)
    return {key: evaluate_patch(str(path), "builtin:tiny-sd1", options) for key, path in patches.items()}


class _Page(HTMLParser):
    """The parts of report.html the tests read: <img> attributes, table rows (cell texts), all text."""

    def __init__(self, page: str):
        super().__init__()
        self.images: list[dict] = []
        self.rows: list[list[str]] = []
        self.text: list[str] = []
        self._cell: list[str] | None = None
        self.feed(page)
        self.close()

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs))
            if self._cell is not None:
                self._cell.append(f"[img {dict(attrs)['src']}]")
        elif tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


# --- item 14: the page reads well ---------------------------------------------------------------


def test_one_concept_has_no_interference_heatmap_and_says_why(results):
    page = _Page(render_html(results["one"]))
    titles = [image["alt"] for image in page.images]
    assert "Interference" not in titles and "Per-concept scores" in titles
    assert ONE_CONCEPT == "one concept: nothing to interfere with"
    assert ONE_CONCEPT in "".join(page.text)
    assert f"interference: {ONE_CONCEPT}" in render_table(results["one"])
    # two concepts still get it
    assert "Interference" in [image["alt"] for image in _Page(render_html(results["two"])).images]


def _tall(score, total):
    return dataclasses.replace(score, total=total)


def test_two_concepts_legend_beside_the_bars_and_dots_at_their_own_heights(results):
    result = results["two"]
    # bars that fill the axes, as a good patch's do: a legend inside would have to cover one
    result = dataclasses.replace(result, concepts=tuple(
        dataclasses.replace(c, efficacy=_tall(c.efficacy, 0.97), generality=_tall(c.generality, 0.95),
                            recoverability=_tall(c.recoverability, 0.9 + 0.05 * i))
        for i, c in enumerate(result.concepts)
    ))
    plots = dict(figures(result))
    try:
        bars = plots["Per-concept scores"]
        bars.canvas.draw()
        (axis,) = [a for a in bars.axes]
        legend = axis.get_legend().get_window_extent()
        for patch in axis.patches:  # no bar is covered by the legend
            assert not legend.overlaps(patch.get_window_extent()), patch
        scatter = plots["Efficacy against recoverability"]
        (points,) = scatter.axes[0].collections
        heights = points.get_offsets()[:, 1]
        assert len(heights) == 2 and heights[0] != heights[1]  # each concept's own recoverability
        assert list(heights) == pytest.approx([c.recoverability.total for c in result.concepts])
    finally:
        import matplotlib.pyplot as plt

        for figure in plots.values():
            plt.close(figure)


def test_each_column_says_which_way_is_good_and_high_recoverability_is_bad(results):
    page = _Page(render_html(results["two"]))
    header = next(row for row in page.rows if row[:2] == ["erased concept → anchor", "efficacy"])
    legend = page.rows[page.rows.index(header) + 1]
    columns = dict(zip(header, legend))
    assert "high is bad" in columns["recoverable"]
    for name in ("efficacy", "generality", "moved"):
        assert "higher is better" in columns[name], name
    assert "higher is better" in dict(zip(["kept (specificity) on", "rows", "value"],
                                           page.rows[page.rows.index(["kept (specificity) on", "rows", "value"]) + 1]))["value"]


def test_moved_most_prints_how_far_a_prompt_moved_not_how_much_it_kept(results):
    result = results["two"]
    prompt, kept = result.least_kept[0]
    assert 0 < kept < 1
    table = render_table(result)
    line = next(line for line in table.splitlines() if "moved most" in line)
    assert f"{prompt[:40]!r} {1 - kept:.3f}" in line and f"{kept:.3f}" not in line
    assert f"moved <b>{1 - kept:.3f}</b> (kept {kept:.3f})" in render_html(result)


def test_the_summary_is_tables_that_scroll_or_wrap_inside_their_box(results):
    page = render_html(results["two"])
    style = page[page.index("<style>"):page.index("</style>")]
    assert ".scroll{overflow-x:auto" in style and "white-space:pre-wrap" in style
    assert page.count('<div class="scroll"><table') == page.count("<table")  # every table scrolls inside its box
    assert html.escape(render_table(results["two"])) not in page  # the terminal's wide text block is not on the page


# --- items 4 and 5: images of every family, labelled, inside the report -------------------------


class _Terminal:
    """A stderr that says it is a terminal, so the progress bars draw."""

    def __init__(self):
        self.written: list[str] = []

    def isatty(self):
        return True

    def write(self, text):
        self.written.append(text)

    def flush(self):
        pass


def test_eval_images_on_sdxl_are_labelled_side_by_side_inside_the_report(tmp_path, monkeypatch):
    import torch

    patch = _build(tmp_path / "xl", "xl", "tiny-sdxl", VAN_GOGH)
    out = tmp_path / "moved-report"
    terminal = _Terminal()
    monkeypatch.setattr("erasec.compiler.cli.patch.sys", types.SimpleNamespace(stderr=terminal))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what use_all_cores() reads first: the usable cores
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        result = run("eval", patch, "--model", "builtin:tiny-sdxl", *FAST, "-o", out, "--images", "1", "--steps", "1")
        assert torch.get_num_threads() == 1  # set once to the usable cores, not torch's own guess
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    assert "erasec eval: images" in "".join(terminal.written)  # image generation shows progress
    assert f"wrote {out / 'images' / 'van-gogh.png'}" in result.stdout

    # the report folder moves as a whole: every path is relative to it
    moved = tmp_path / "elsewhere"
    os.rename(out, moved)
    (entry,) = json.loads((moved / "images" / "images.json").read_text())
    assert entry["base"] == ["images/van-gogh-0-base.png"] and entry["patched"] == ["images/van-gogh-0-patched.png"]
    for name in (entry["file"], *entry["base"], *entry["patched"]):
        assert (moved / name).is_file() and not Path(name).is_absolute()
    page = _Page((moved / "report.html").read_text())
    tiles = [image for image in page.images if not image["src"].startswith("data:")]
    assert [image["src"] for image in tiles] == entry["base"] + entry["patched"]
    assert all((moved / image["src"]).is_file() for image in tiles)
    row = next(row for row in page.rows if row and row[0] == "0")
    assert row == ["0", entry["prompts"][0], "[img images/van-gogh-0-base.png]", "[img images/van-gogh-0-patched.png]"]
    assert ["seed", "prompt", "base", "patched"] in page.rows
    assert "seed 0" in tiles[0]["alt"] and entry["prompts"][0] in tiles[0]["alt"] and "base" in tiles[0]["alt"]
    assert not [p for p in (moved / "images").iterdir() if p.name.startswith(".")]  # no temporary left


def test_each_family_generates_with_its_own_pipeline(tiny_sd1_path):
    from erasec.compiler.eval.images import PIPELINES, image_model

    assert image_model("builtin:tiny-sdxl").pipeline == "StableDiffusionXLPipeline"
    assert image_model("builtin:tiny-sd2").pipeline == image_model(str(tiny_sd1_path)).pipeline == "StableDiffusionPipeline"
    from erasec.compiler.models.sd import FAMILIES

    assert set(PIPELINES) == set(FAMILIES)  # a new family needs its line


def test_images_of_a_single_file_are_refused_before_any_work(tmp_path, patches, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("evaluated before refusing")

    monkeypatch.setattr("erasec.compiler.eval.run.evaluate_patch", no_work)
    out = tmp_path / "report"
    result = run("eval", patches["one"], "--model", "builtin:tiny-sd1.safetensors", "-o", out, "--images", "1")
    assert result.exit_code == 2
    assert ("erasec: error: builtin:tiny-sd1.safetensors: --images needs a diffusers folder (model_index.json) or "
            "builtin:NAME, not a single file") in result.output
    assert not out.exists()


def test_image_progress_counts_every_image(tmp_path, patches, tiny_sd1_path):
    from erasec.compiler.eval.images import ImageOptions, image_count, image_grids

    prompts = {"Van Gogh": ["Van Gogh"], "Kelly McKernan": ["Kelly McKernan"]}
    options = ImageOptions(count=2, steps=1)
    ticks = []
    grids = image_grids(str(patches["two"]), tiny_sd1_path, prompts, tmp_path, options, progress=lambda: ticks.append(1))
    assert len(ticks) == image_count(prompts, options) == 8
    assert [g["seeds"] for g in grids] == [[0, 1], [0, 1]]
    from PIL import Image

    width, height = Image.open(tmp_path / grids[0]["file"]).size
    assert width == height  # 2 seeds a row each: base | patched


def test_image_options_are_checked(tmp_path):
    from erasec.compiler.errors import EvalError
    from erasec.compiler.eval.images import ImageOptions

    with pytest.raises(EvalError, match=r"^--images 0: give at least 1$"):
        ImageOptions(count=0)
    with pytest.raises(EvalError, match=r"^--steps 0: give at least 1$"):
        ImageOptions(steps=0)
