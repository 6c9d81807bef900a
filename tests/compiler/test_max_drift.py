"""``options.max_drift`` end to end: the budget lands where it says on the preserve prior, the build,
``inspect`` and the manifest say where, ``eval`` draws the efficacy-against-drift curve, and every
bad input is a one-line refusal (exit 2, no file).

The drift is re-measured from the written patch file, site by site: ``ΔW_l = up @ down`` from its
tensors, ``W0_l`` from the model, the preserve rows from the spec's lowering (the method's COCO prior,
mostly folded into moments, and the spec's list) — not from the solver's site Gram.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from cli_helpers import fails, ok_json, run, spec_text, write_spec
from erasec.compiler.eval.metrics import output_change
from erasec.compiler.frontend.methods import pipeline_text
from erasec.compiler.frontend.presets import PRESETS
from erasec.compiler.frontend.reader import load_spec
from erasec.compiler.lowering.lower import Lowering
from erasec.compiler.models.embedding_cache import CachingModel, EmbeddingCache
from erasec.compiler.models.open import open_model
from erasec.passes.filter_preserve import drop_named
from erasec.passes.pipeline import Pipeline
from erasec.patches.read import read_patch

BUDGET = 0.02  # this spec drifts 0.036 (tiny-sd1) and 0.041 (minilm-sd1) at full strength; its floor on tiny-sd1 0.018
LANDS = 2e-3  # measured drift within this fraction below the budget (fp32 tensors, the search's 1e-4)
ENTRY = "{concept: Van Gogh, anchor: art, synonyms: [Vincent van Gogh], templates: ['a painting in the style of {}']}"


def _spec(folder, model: str, extra: str, method: str = "erasec", name: str = "spec.yaml"):
    text = spec_text(model=model, method=method, erase=(ENTRY,), preserve=("Claude Monet", "a photo of a cat"), extra=extra)
    return write_spec(folder, text, name=name)


def measured_drift(patch_path, spec_path) -> tuple[float, bool]:
    """(drift of the lowered preserve rows under the patch file's ΔW, whether some rows were folded)."""
    spec = load_spec(spec_path, methods=tuple(PRESETS))
    model = CachingModel(open_model(spec.model), EmbeddingCache.at())  # the rows the build encoded, read back
    lowered = Lowering.for_pipeline(model, Pipeline.parse(pipeline_text(spec))).lower(spec, PRESETS[spec.method])
    preserve = drop_named(lowered)[0].spaces[0].preserve  # the rows the patch was solved to keep
    patch = read_patch(patch_path)
    weights = model.kv_weights()
    moved = base = 0.0
    for site in model.target.spaces[0].sites:
        w0 = np.asarray(weights[site.module_path], dtype=np.float64)
        delta = patch.layer_delta(site.module_path) if site.module_path in patch.layers() else np.zeros_like(w0)
        site_moved, site_base = output_change(preserve.keys, {site.module_path: w0}, {site.module_path: delta})
        moved += site_moved.sum()
        base += site_base.sum()
        if preserve.folded is not None:
            moved += preserve.folded.trace(delta.T @ delta)
            base += preserve.folded.trace(w0.T @ w0)
    return float(np.sqrt(moved / base)), preserve.folded is not None


@pytest.fixture(scope="module", params=["builtin:tiny-sd1", "builtin:minilm-sd1"])
def budgeted(request, tmp_path_factory, tiny_sd1_path, minilm_sd1_path):
    folder = tmp_path_factory.mktemp("drift")
    spec = _spec(folder, request.param, f"options: {{max_drift: {BUDGET}}}\n")
    summary = ok_json("build", spec, "-o", folder / "patch.safetensors")
    return spec, folder / "patch.safetensors", summary


def test_max_drift_lands_on_the_preserve_prior(budgeted) -> None:
    spec, patch, summary = budgeted
    drift, folded = measured_drift(patch, spec)
    assert folded  # the prior's rows stream in as moments: the budget counts them exactly
    assert BUDGET * (1 - LANDS) <= drift <= BUDGET * (1 + 1e-5)
    (space, landed), = summary["drift"].items()
    assert landed["binding"] and 0 < landed["scale"] < 1 and landed["full_drift"] > BUDGET
    assert landed["drift"] == pytest.approx(drift, rel=1e-4)
    # the build's own specificity is the same measure on the same rows
    assert 1 - summary["scores"]["specificity"] == pytest.approx(drift, rel=1e-4)
    assert "drift-budget{max-drift=0.02 floor=0.5},solve" in summary["pipeline"]


def test_a_weaker_patch_is_never_silent(budgeted) -> None:
    spec, patch, summary = budgeted
    (space, landed), = summary["drift"].items()
    warning = next(d for d in summary["diagnostics"] if d.startswith("warning [drift-budget]"))
    assert f"erases at {landed['scale']:.3g} × the spec's erase weights" in warning
    assert f"(efficacy {landed['efficacy']:.3f}, not {landed['full_efficacy']:.3f})" in warning
    text = run("inspect", patch).output
    assert f"drift budget 0.02 ({space}, {landed['preserve_rows']} preserve rows): drift 0.0200; binds: " in text
    report = json.loads(read_patch(patch).metadata["erasec.report"])
    assert report["drift"] == summary["drift"]


def test_eval_draws_efficacy_against_drift(budgeted, tmp_path) -> None:
    spec, patch, summary = budgeted
    model = load_spec(spec, methods=tuple(PRESETS)).model
    table = run("eval", patch, "--model", model, "--suite", "coco", "--max-unrelated", "5", "-o", tmp_path).output
    result = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    curve = result["drift_curve"]
    drifts = [p["drift"] for p in curve["points"]]
    efficacies = [p["efficacy"] for p in curve["points"]]
    assert np.all(np.diff(drifts) > 0) and np.all(np.diff(efficacies) > 0)
    (_, landed), = summary["drift"].items()
    assert curve["patch"]["scale"] == landed["scale"] and curve["max_drift"] == BUDGET
    assert curve["patch"]["drift"] == pytest.approx(landed["drift"], rel=1e-4)
    assert curve["patch"]["efficacy"] == pytest.approx(summary["scores"]["efficacy"]["Van Gogh"], abs=1e-5)
    at_one = next(p for p in curve["points"] if p["scale"] == 1.0)
    assert at_one["drift"] == pytest.approx(landed["full_drift"], rel=1e-4)
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert 'alt="Efficacy against drift"' in page
    assert f"this patch: scale {landed['scale']:.3g}, drift 0.0200" in table


@pytest.mark.parametrize(
    ("value", "what"),
    [
        ("0", "'0' is not in (0, 1); a drift budget is a fraction of the preserved rows' outputs, e.g. 0.05"),
        ("1", "'1' is not in (0, 1)"),
        ("-0.05", "'-0.05' is not in (0, 1)"),
        ("1.5", "'1.5' is not in (0, 1)"),
        ("five", "expected a number, got str"),
    ],
)
def test_max_drift_out_of_range_is_a_spec_error(tmp_path, value: str, what: str) -> None:
    spec = _spec(tmp_path, "builtin:tiny-sd1", f"options: {{max_drift: {value}}}\n")
    line = fails(["build", spec, "-o", tmp_path / "p.safetensors"], f"{spec}:9: options.max_drift: ")
    assert what in line
    assert not (tmp_path / "p.safetensors").exists()


def test_a_budget_no_erasure_meets_names_the_least_drift(tmp_path, tiny_sd1_path) -> None:
    spec = _spec(tmp_path, "builtin:tiny-sd1", "options: {max_drift: 0.001}\n")
    line = fails(["build", spec, "-o", tmp_path / "p.safetensors"], "no erasure meets the drift budget 0.001: ")
    assert f"{spec}: drift-budget: key space clip-l: " in line
    least = float(line.split("the least drift of any erasure is ")[1].split(" ")[0])
    assert 0.001 < least < 0.045 and "raise options.max_drift to " in line
    assert not (tmp_path / "p.safetensors").exists()


def test_max_drift_needs_a_solve_and_preserve_rows(tmp_path, tiny_sd1_path) -> None:
    rece = _spec(tmp_path, "builtin:tiny-sd1", "options: {max_drift: 0.05}\n", method="rece")
    fails(["build", rece, "-o", tmp_path / "r.safetensors"], f"{rece}:9: options.max_drift: the pipeline has no solve pass")
    bare = write_spec(
        tmp_path, spec_text(method="uce", preserve=(), extra="options: {max_drift: 0.05}\n"), name="bare.yaml"
    )
    fails(["build", bare, "-o", tmp_path / "b.safetensors"], "no preserve rows to measure drift on; add preserve prompts")
    assert not any(tmp_path.glob("*.safetensors"))


def test_a_budget_that_does_not_bind_keeps_the_spec_strength(tmp_path, tiny_sd1_path) -> None:
    loose = _spec(tmp_path, "builtin:tiny-sd1", "options: {max_drift: 0.5}\n", name="loose.yaml")
    loose = ok_json("build", loose, "-o", tmp_path / "l.safetensors")
    plain = ok_json("build", _spec(tmp_path, "builtin:tiny-sd1", ""), "-o", tmp_path / "p.safetensors")
    (_, landed), = loose["drift"].items()
    assert landed["scale"] == 1 and not landed["binding"]
    assert loose["scores"] == plain["scores"]
    assert "drift" not in plain and not any("drift-budget" in d for d in loose["diagnostics"])
