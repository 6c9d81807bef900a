"""What ``erasec build`` says about itself: its flags checked before any work, and a summary whose
numbers agree with each other and with what the patch was solved for (issue 12)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from erasec.compiler.cli import cli
from erasec.patches.read import read_patch

SPEC = """\
erasec: 1
name: no-van-gogh
version: 1.0.0
model: {model}
method: uce
erase:
  - {{concept: Van Gogh, anchor: art}}
preserve: [Claude Monet, a photo of a cat]
"""


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def _spec(tmp_path, model="builtin:tiny-sd1", text=SPEC):
    path = tmp_path / "spec.yaml"
    path.write_text(text.format(model=model))
    return path


# --- --print-ir-after (issue 12 item 8) --------------------------------------------------------------


def test_an_unknown_print_ir_after_pass_is_refused_with_a_suggestion_before_any_work(tmp_path):
    spec = _spec(tmp_path, model=str(tmp_path / "missing-model"))  # opening it would be the first work
    out = tmp_path / "p.safetensors"
    result = _run("build", spec, "-o", out, "--print-ir-after=canonicalize,solv")
    assert result.exit_code == 2
    assert result.output.strip() == "erasec: error: --print-ir-after: unknown pass 'solv'; did you mean 'solve'?"
    assert not out.exists()
    unlike = _run("build", spec, "-o", out, "--print-ir-after=zzz")
    assert unlike.exit_code == 2 and "unknown pass 'zzz'; passes are: " in unlike.output and "solve" in unlike.output


def test_print_ir_after_a_pass_name_or_all_still_prints(tmp_path):
    spec = _spec(tmp_path)
    one = _run("build", spec, "-o", tmp_path / "a.safetensors", "--print-ir-after=solve")
    assert one.exit_code == 0, one.output
    assert one.output.count("// ----- IR after ") == 1 and "// ----- IR after solve{" in one.output
    every = _run("build", spec, "-o", tmp_path / "b.safetensors", "--print-ir-after=all")
    assert every.exit_code == 0 and every.output.count("// ----- IR after ") == 3


# --- dropped preserve prompts (issue 12 item 6) -----------------------------------------------------

FILTERED = """\
erasec: 1
name: {name}
version: 1.0.0
model: builtin:tiny-sd1
method: uce
erase:
  - {{concept: {concept}, anchor: art}}
preserve: [{preserve}]
options: {{pipeline: "canonicalize,filter-preserve,solve"}}
output: {{link: true}}
"""
DROPPED = "a painting by Van Gogh"


def _build(tmp_path, name, concept, preserve) -> tuple:
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(FILTERED.format(name=name, concept=concept, preserve=", ".join(preserve)))
    out = tmp_path / f"{name}.safetensors"
    result = _run("build", spec, "-o", out, "--json")
    assert result.exit_code == 0, result.output
    return out, json.loads(result.output)


def test_a_dropped_preserve_prompt_is_not_reported_as_kept(tmp_path):
    """filter-preserve leaves 'a painting by Van Gogh' out of the solve: the summary, the manifest's
    report and inspect describe the patch without it, as a spec that never listed it."""
    dropped, built = _build(tmp_path, "with-drop", "Van Gogh", [DROPPED, "Claude Monet", "a photo of a cat"])
    clean, reference = _build(tmp_path, "clean", "Van Gogh", ["Claude Monet", "a photo of a cat"])
    assert built["scores"]["dropped_preserve"] == [DROPPED]
    assert "dropped_preserve" not in reference["scores"]
    assert built["scores"]["preserve_rows"] == reference["scores"]["preserve_rows"] == built["rows"]["preserve"]
    assert built["scores"]["specificity"] == pytest.approx(reference["scores"]["specificity"], abs=1e-9)
    assert built["scores"]["worst_preserved"]["prompt"] == reference["scores"]["worst_preserved"]["prompt"]
    assert read_patch(dropped).report["dropped_preserve"] == [DROPPED]
    text = _run("build", tmp_path / "with-drop.yaml", "-o", dropped).output
    assert f"least preserved: {DROPPED!r}" not in text and "preserved prompts (2 rows)" in text
    facts = json.loads(_run("inspect", dropped, "--json").output)
    assert facts["preserve"] == ["a photo of a cat", "Claude Monet"] and facts["dropped_preserve"] == [DROPPED]
    shown = _run("inspect", dropped).output
    assert "  keeps     a photo of a cat, Claude Monet\n" in shown
    assert f"  dropped   {DROPPED} (names an erased concept; not solved for)\n" in shown


def test_eval_after_compose_does_not_score_a_dropped_prompt_as_preserved(tmp_path):
    """B preserves 'a painting by Van Gogh'; composed with A, which erases Van Gogh, the union's solve
    drops it, and eval's preserved group is what the union was solved to keep."""
    from erasec.compiler.evaluation import EvalOptions, evaluate_patch

    a, _ = _build(tmp_path, "a", "Van Gogh", ["Claude Monet", "a photo of a cat"])
    b, _ = _build(tmp_path, "b", "Kelly McKernan", [DROPPED, "Pablo Picasso"])
    composed = tmp_path / "ab.safetensors"
    result = _run("compose", a, b, "-o", composed, "--version", "1.1.0")
    assert result.exit_code == 0, result.output
    assert read_patch(composed).report["dropped_preserve"] == [DROPPED]
    measured = evaluate_patch(str(composed), "builtin:tiny-sd1", EvalOptions(suites=()))
    assert [group for group, _ in measured.specificity] == ["preserved"]
    assert {prompt for prompt, _ in measured.least_kept} == {"Claude Monet", "Pablo Picasso", "a photo of a cat"}
