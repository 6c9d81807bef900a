"""``erasec eval``: the metrics by hand on small matrices, the suites, the report, the command.

The end-to-end cases run on one ``builtin:tiny-sd1`` patch (random weights, real tokenizer) with a
handful of prompts; replacing the patch's ΔW by 0 or by −W0 gives the two reference patches.
"""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser

import numpy as np
import pytest

from cli_helpers import PRESERVE, run, spec_text
from erasec.compiler.eval.report import render_html, render_table
from erasec.compiler.eval.metrics import displacement, efficacy, recoverability, specificity
from erasec.compiler.eval.results import EvalOptions
from erasec.compiler.eval.run import evaluate_patch
from erasec.compiler.eval.suites import SUITES, Request, SuiteRow, load_suite, sort_prompts, templates
from erasec.patches.read import PatchFile

SPEC = spec_text(
    erase=("{concept: Van Gogh, anchor: art, synonyms: [Vincent van Gogh]}", "{concept: Kelly McKernan, anchor: art}"),
    preserve=PRESERVE,
)
PROMPTS = "a photo of a dog\na city street at night\nImage in the style of Van Gogh\n"


# --- metrics on small matrices ------------------------------------------------------------------


def test_efficacy_by_hand():
    w0 = {"a": np.eye(2), "b": 2 * np.eye(2)}
    k, g = np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])
    full = np.array([[-1.0, 0.0], [1.0, 0.0]])  # W'k = g
    assert efficacy(k, g, w0, {"a": full, "b": 2 * full}).total == pytest.approx(1.0, abs=1e-12)
    # half way at layer a: ‖[.5, −.5]‖ / ‖[1, −1]‖ = 1/2; untouched at b (‖[2, −2]‖² = 8 before and
    # after); the total sums squares over the layers: 1 − sqrt((0.5 + 8) / (2 + 8))
    score = efficacy(k, g, w0, {"a": full / 2, "b": np.zeros((2, 2))})
    assert dict(score.layers) == pytest.approx({"a": 0.5, "b": 0.0}, abs=1e-12)
    assert score.total == pytest.approx(1 - np.sqrt(8.5 / 10), abs=1e-12)


def test_specificity_and_displacement_by_hand():
    w0 = {"a": np.eye(2)}
    rows = np.array([[3.0, 4.0]])
    assert specificity(rows, w0, {"a": 0.1 * np.eye(2)}).total == pytest.approx(0.9, abs=1e-12)
    assert specificity(rows, w0, {"a": np.zeros((2, 2))}).total == 1.0
    # ‖ΔW k‖ / ‖W0 (k − g)‖ = ‖[0, 1]‖ / ‖[1, −1]‖
    k, g = np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])
    assert displacement(k, g, w0, {"a": np.array([[0.0, 0.0], [1.0, 0.0]])}) == pytest.approx(1 / np.sqrt(2))


def test_recoverability_by_hand():
    """W0 = I, no edit: the attack c' = c / (1 + λ) misses by λ/(1 + λ); zeroed K/V: nothing recovers."""
    w0 = {"a": np.eye(2)}
    keys = np.array([[1.0, 2.0]])
    assert recoverability(keys, w0, {"a": np.zeros((2, 2))}, 0.25).total == pytest.approx(1 / 1.25, abs=1e-12)
    assert recoverability(keys, w0, {"a": -np.eye(2)}, 0.25).total == pytest.approx(0.0, abs=1e-12)
    # a rank-1 edit that halves the first direction: the attack doubles it back, up to λ
    half = {"a": np.diag([-0.5, 0.0])}
    attack = np.array([1.0 * 0.5 / (0.25 + 0.25), 2.0 / 1.25])  # (λ + a²)⁻¹ a c per axis
    miss = np.linalg.norm(np.array([0.5, 1.0]) * attack - keys[0]) / np.linalg.norm(keys[0])
    assert recoverability(keys, w0, half, 0.25).total == pytest.approx(1 - miss, abs=1e-12)


@pytest.mark.parametrize("roles", [("k", "v"), ("v",)])
@pytest.mark.parametrize("site_gram", [False, True])
def test_the_build_scores_a_shared_solution_as_it_would_site_by_site(roles, site_gram):
    from dataclasses import replace

    from erasec.compiler.eval.metrics import score
    from erasec.ir import LayerFactors, SpaceSolution
    from erasec.passes.solve import SolvePass
    from programs import base_weights, random_program

    rng = np.random.default_rng(3)
    program = random_program(rng, dim=6, erase=5, preserve=4, requests=("a", "b"))
    weights = base_weights(program.target, rng)
    space = program.spaces[0]
    gram = sum(w.T @ w for path, w in weights.items() if path[-1] in roles) if site_gram else None
    program = replace(program, spaces=(replace(space, roles=roles, site_gram=gram),))
    shared = SolvePass().apply(program).solution
    assert shared.spaces[0].form == "shared" and shared.spaces[0].roles == roles
    sol = shared.spaces[0]
    layers = tuple(
        LayerFactors(module_path=path, up=w @ sol.left, down=sol.right.T) for path, w in sorted(weights.items())
    )
    per_layer = replace(
        shared, spaces=(SpaceSolution(space=sol.space, form="per-layer", rank=sol.rank, report=sol.report, layers=layers, roles=roles),)
    )
    fast, slow = score(program, shared, weights), score(program, per_layer, weights)
    for a, b in zip(fast.requests, slow.requests):
        assert a.request == b.request and a.efficacy == pytest.approx(b.efficacy, abs=1e-9)
    assert 0 < fast.specificity < 1
    assert fast.specificity == pytest.approx(slow.specificity, abs=1e-9)
    assert fast.worst_preserve[1] == pytest.approx(slow.worst_preserve[1], abs=1e-9)


# --- suites -------------------------------------------------------------------------------------


def test_every_suite_loads_with_its_licence_noted():
    from importlib import resources

    folder = resources.files("erasec.compiler") / "data" / "suites"
    readme = (folder / "README.md").read_text(encoding="utf-8")
    for name in SUITES:
        assert load_suite(name), name
        assert f"| {name} |" in readme
    assert (folder / "LICENSE-RECE.txt").is_file() and (folder / "LICENSE-unified-concept-editing.txt").is_file()


def test_prompts_are_sorted_into_pairs_targets_and_unrelated():
    request = Request(concept="Van Gogh", names=("Van Gogh", "Vincent van Gogh"), anchor="art",
                      own=(("Van Gogh", "art"), ("art by Van Gogh", "art by art")))
    rows = [
        SuiteRow("Image in the style of Claude Monet", concept="Claude Monet", source="s"),
        SuiteRow("art by Van Gogh", concept="Van Gogh", source="s"),  # the spec's own: not held out
        SuiteRow("Starry night, in the style of van gogh", "Starry night", "Van Gogh", "s"),
        SuiteRow("a nude figure", concept="van gogh", source="s"),
        SuiteRow("a photo of a cat", source="t"),
    ]
    assert templates(rows) == ["Image in the style of {}", "Starry night, in the style of {}", "art by {}"]
    out = sort_prompts([request], rows)
    assert out.pairs["Van Gogh"] == (
        ("Image in the style of Van Gogh", "Image in the style of art"),
        ("Image in the style of Vincent van Gogh", "Image in the style of art"),
        ("Starry night, in the style of Van Gogh", "Starry night, in the style of art"),
        ("Starry night, in the style of Vincent van Gogh", "Starry night, in the style of art"),
        ("art by Vincent van Gogh", "art by art"),  # "art by Van Gogh" is the spec's own prompt
        ("Starry night, in the style of van gogh", "Starry night"),
    )
    assert out.targets == {"Van Gogh": ("a nude figure",)}
    assert out.unrelated == {"s": ("Image in the style of Claude Monet",), "t": ("a photo of a cat",)}


# --- on a tiny build ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_sd1_path):
    root = tmp_path_factory.mktemp("eval")
    (root / "spec.yaml").write_text(SPEC)
    (root / "prompts.txt").write_text(PROMPTS)
    result = run("build", root / "spec.yaml", "-o", root / "patch.safetensors")
    assert result.exit_code == 0, result.output
    return root


def _evaluate(tiny, **options):
    return evaluate_patch(
        str(tiny / "patch.safetensors"), "builtin:tiny-sd1",
        EvalOptions(suites=("coco",), prompts=str(tiny / "prompts.txt"), max_unrelated=12, **options),
    )


def test_a_patch_that_does_nothing_erases_nothing_and_keeps_everything(tiny, monkeypatch):
    stored = PatchFile.layer_delta
    monkeypatch.setattr(PatchFile, "layer_delta", lambda self, layer: 0.0 * stored(self, layer))
    result = _evaluate(tiny)
    for concept in result.concepts:
        assert concept.efficacy.total == pytest.approx(0.0, abs=1e-12)
        assert concept.generality is None or concept.generality.total == pytest.approx(0.0, abs=1e-12)
        assert concept.recoverability.total > 0.99  # the attack simply uses the concept itself
    assert [group for group, _ in result.specificity] == ["preserved", "coco", str(tiny / "prompts.txt")]
    assert all(score.total == 1.0 for _, score in result.specificity)


def test_a_patch_that_zeroes_k_and_v_keeps_nothing(tiny, monkeypatch, tiny_sd1_path):
    from erasec.compiler.models.open import open_model

    base = open_model(str(tiny_sd1_path)).kv_weights()
    monkeypatch.setattr(PatchFile, "layer_delta", lambda self, layer: -np.asarray(base[layer], dtype=np.float64))
    result = _evaluate(tiny, interference_max=0)
    assert all(score.total == pytest.approx(0.0, abs=1e-9) for _, score in result.specificity)
    assert all(c.recoverability.total == pytest.approx(0.0, abs=1e-9) for c in result.concepts)
    assert result.interference is None and "interference-max 0" in result.interference_note


def test_the_real_patch_erases_what_it_names_and_measures_interference(tiny):
    result = _evaluate(tiny)
    assert [c.concept for c in result.concepts] == ["Kelly McKernan", "Van Gogh"]
    efficacy_ = {c.concept: c.efficacy.total for c in result.concepts}
    assert efficacy_["Van Gogh"] > 0.5 and efficacy_["Kelly McKernan"] > 0.5
    van_gogh = result.concepts[1]
    assert van_gogh.generality is not None and "Image in the style of Van Gogh" in van_gogh.examples
    assert len(van_gogh.efficacy.layers) == result.layers == 32
    matrix = np.array(result.interference)
    assert matrix.shape == (2, 2) and np.all(np.diag(matrix) > 0.5)
    assert "re-solved alone" in result.interference_note
    # per layer: one 2×2 matrix per K/V site; the total is a weighted RMS of them, so it lies between
    layers = dict(result.interference_layers)
    assert len(layers) == 32
    stacked = np.array(list(layers.values()))
    assert stacked.shape == (32, 2, 2) and np.all(stacked >= 0)
    assert np.all(stacked.min(axis=0) <= matrix + 1e-12) and np.all(matrix <= stacked.max(axis=0) + 1e-12)
    assert result.as_dict()["interference"]["per_layer"].keys() == layers.keys()


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs)["src"])


def test_the_html_report_is_one_file_with_its_plots_embedded(tiny):
    result = _evaluate(tiny)
    page = render_html(result)
    parser = _Images()
    parser.feed(page)
    parser.close()
    assert len(parser.sources) == 5  # bars, scatter, interference heatmap, efficacy against drift, per layer
    for source in parser.sources:
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "http" not in page.replace("http-equiv", "")  # nothing fetched from elsewhere
    assert "Van Gogh" in render_table(result)


def test_cli_eval_writes_json_and_html_and_stays_quiet_off_a_terminal(tiny):
    out = tiny / "report"
    result = run(
        "eval", tiny / "patch.safetensors", "--model", "builtin:tiny-sd1", "--suite", "imagenette",
        "--prompts", tiny / "prompts.txt", "-o", out, "--images", "1", "--steps", "1", "--json",
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data["specificity"]) == {"preserved", "imagenette", str(tiny / "prompts.txt")}
    images = data["written"].pop("images")
    assert data["written"] == {"json": str(out / "report.json"), "html": str(out / "report.html")}
    assert [g["file"] for g in images] == [f"images/{n}.png" for n in ("kelly-mckernan", "van-gogh")]  # report-relative
    assert json.loads((out / "images" / "images.json").read_text()) == images
    assert json.loads((out / "report.json").read_text())["concepts"] == data["concepts"]
    assert "erasec eval" not in result.stderr  # no progress bar when not a TTY


@pytest.mark.parametrize(
    "flags, message",
    [
        (("--suite", "nope"), "--suite nope: unknown suite; choose from artists"),
        (("--attack-lambda", "0"), "--attack-lambda 0.0: must be > 0"),
        (("--images", "2"), "eval: --images writes grids; give -o FOLDER"),
    ],
)
def test_cli_eval_refuses_with_the_reason(tiny, flags, message):
    result = run("eval", tiny / "patch.safetensors", "--model", "builtin:tiny-sd1", *flags)
    assert result.exit_code == 2
    assert f"erasec: error: {message}" in result.output


def test_image_grids_show_base_over_patched_at_the_same_seeds(tiny, tiny_sd1_path):
    from PIL import Image

    from erasec.compiler.eval.images import ImageOptions, image_grids

    clip = _tiny_clip(tiny / "clip")
    grids = image_grids(str(tiny / "patch.safetensors"), tiny_sd1_path, {"Van Gogh": ["Van Gogh", "art by Van Gogh"]},
                        tiny / "grids", ImageOptions(count=2, steps=1, clip_model=str(clip)))
    (grid,) = grids
    assert grid["prompts"] == ["Van Gogh", "art by Van Gogh"] and grid["seeds"] == [0, 1]
    width, height = Image.open(tiny / "grids" / grid["file"]).size
    assert width == height  # a row per seed: base | patched
    assert grid["mean_pixel_difference"] > 0  # the patch changes the picture at the same seed
    assert set(grid["clip_score"]) == {"base", "patched"}
    assert all(-100 <= v <= 100 for v in grid["clip_score"].values())


def test_a_clip_folder_that_is_not_one_is_refused(tmp_path):
    from erasec.compiler.errors import EvalError
    from erasec.compiler.eval.images import _clip_scorer

    with pytest.raises(EvalError, match=f"--clip-model {tmp_path}: cannot load a CLIP model there"):
        _clip_scorer(str(tmp_path))


def _tiny_clip(folder):
    """A random 1-layer CLIP with the real tokenizer: enough to exercise the score, offline."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from erasec.compiler.models.tokenizer import write_clip_tokenizer

    tower = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2)
    config = CLIPConfig(text_config=dict(tower, vocab_size=49408),
                        vision_config=dict(tower, image_size=32, patch_size=8), projection_dim=16)
    CLIPModel(config).save_pretrained(folder)
    write_clip_tokenizer(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder
