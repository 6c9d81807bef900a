"""What ``erasec build`` says about itself: its flags checked before any work, and a summary whose
numbers agree with each other and with what the patch was solved for (issue 12)."""

from __future__ import annotations

import json

import pytest

from cli_helpers import PRESERVE, run, spec_text, write_spec
from erasec.patches.read import read_patch


def _spec(tmp_path, model="builtin:tiny-sd1"):
    return write_spec(tmp_path, spec_text(model=model, preserve=PRESERVE))


# --- --print-ir-after (issue 12 item 8) --------------------------------------------------------------


def test_an_unknown_print_ir_after_pass_is_refused_with_a_suggestion_before_any_work(tmp_path):
    spec = _spec(tmp_path, model=str(tmp_path / "missing-model"))  # opening it would be the first work
    out = tmp_path / "p.safetensors"
    result = run("build", spec, "-o", out, "--print-ir-after=canonicalize,solv")
    assert result.exit_code == 2
    assert result.output.strip() == "erasec: error: --print-ir-after: unknown pass 'solv'; did you mean 'solve'?"
    assert not out.exists()
    unlike = run("build", spec, "-o", out, "--print-ir-after=zzz")
    assert unlike.exit_code == 2 and "unknown pass 'zzz'; passes are: " in unlike.output and "solve" in unlike.output


def test_print_ir_after_a_pass_name_or_all_still_prints(tmp_path):
    spec = _spec(tmp_path)
    one = run("build", spec, "-o", tmp_path / "a.safetensors", "--print-ir-after=solve")
    assert one.exit_code == 0, one.output
    assert one.output.count("// ----- IR after ") == 1 and "// ----- IR after solve{" in one.output
    every = run("build", spec, "-o", tmp_path / "b.safetensors", "--print-ir-after=all")
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
    result = run("build", spec, "-o", out, "--json")
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
    text = run("build", tmp_path / "with-drop.yaml", "-o", dropped).output
    assert f"least preserved: {DROPPED!r}" not in text and "preserved prompts (2 rows)" in text
    facts = json.loads(run("inspect", dropped, "--json").output)
    assert facts["preserve"] == ["a photo of a cat", "Claude Monet"] and facts["dropped_preserve"] == [DROPPED]
    shown = run("inspect", dropped).output
    assert "  keeps     a photo of a cat, Claude Monet\n" in shown
    assert f"  dropped   {DROPPED} (names an erased concept; not solved for)\n" in shown


def test_eval_after_compose_does_not_score_a_dropped_prompt_as_preserved(tmp_path):
    """B preserves 'a painting by Van Gogh'; composed with A, which erases Van Gogh, the union's solve
    drops it, and eval's preserved group is what the union was solved to keep."""
    from erasec.compiler.eval.results import EvalOptions
    from erasec.compiler.eval.run import evaluate_patch

    a, _ = _build(tmp_path, "a", "Van Gogh", ["Claude Monet", "a photo of a cat"])
    b, _ = _build(tmp_path, "b", "Kelly McKernan", [DROPPED, "Pablo Picasso"])
    composed = tmp_path / "ab.safetensors"
    result = run("compose", a, b, "-o", composed, "--version", "1.1.0")
    assert result.exit_code == 0, result.output
    assert read_patch(composed).report["dropped_preserve"] == [DROPPED]
    measured = evaluate_patch(str(composed), "builtin:tiny-sd1", EvalOptions(suites=()))
    assert [group for group, _ in measured.specificity] == ["preserved"]
    assert {prompt for prompt, _ in measured.least_kept} == {"Claude Monet", "Pablo Picasso", "a photo of a cat"}


def test_retarget_does_not_score_a_dropped_prompt_as_preserved(tmp_path):
    """retarget re-scores the patch on the new model from its recorded rows: what it was solved for."""
    dropped, built = _build(tmp_path, "with-drop", "Van Gogh", [DROPPED, "Claude Monet", "a photo of a cat"])
    moved = tmp_path / "moved.safetensors"
    result = run("retarget", dropped, "--model", "builtin:tiny-sd1.safetensors", "-o", moved)
    assert result.exit_code == 0, result.output
    report = read_patch(moved).report
    assert report["dropped_preserve"] == [DROPPED]
    assert report["worst_preserved"]["prompt"] == built["scores"]["worst_preserved"]["prompt"] != DROPPED
    assert report["specificity"] == pytest.approx(built["scores"]["specificity"], abs=1e-9)


# --- row counts labelled apart; the pooled path's kohya caveat (issue 12 item 15) --------------------

POOLED = """\
erasec: 1
name: no-van-gogh-sdxl
version: 1.0.0
model: builtin:tiny-sdxl
method: uce
erase:
  - {{concept: Van Gogh, anchor: art}}
preserve: [Claude Monet, a photo of a cat]
options: {{pooled: true}}
output: {{format: {format}}}
"""
NOTE = ("  note: kohya sd-scripts skips the pooled module (lora_unet_label_emb_0_0): there only the K/V edit "
        "applies; diffusers, ComfyUI and A1111/Forge load both (docs/models.md)")


def test_the_rows_line_says_it_counts_the_solve_and_the_scores_the_spec_rows(tmp_path):
    """SDXL with options.pooled: "rows … 4 preserve" is the two key spaces' solve together; each scores
    block counts its own space's 2 rows, and the summary says which is which."""
    spec = tmp_path / "sdxl.yaml"
    spec.write_text(POOLED.format(format="kohya"))
    out = tmp_path / "p.safetensors"
    text = run("build", spec, "-o", out).output
    facts = json.loads(run("build", spec, "-o", out, "--json").output)
    spaces = facts["scores"]["preserve_rows"], facts["pooled_scores"]["preserve_rows"]
    assert spaces == (2, 2) and facts["rows"]["preserve"] == sum(spaces)  # uce's passes neither add nor merge rows
    assert "  rows     2 erase, 4 preserve, 0 hard as solved (text and pooled key spaces together)   condition" in text
    assert "  (text pathway, all edited K/V layers, on the spec's own rows; 1 = fully erased / fully kept)" in text
    assert text.count("preserved prompts (2 rows)") == 2
    assert text.rstrip().endswith(NOTE)
    one_space = run("build", _spec(tmp_path), "-o", tmp_path / "sd1.safetensors").output
    assert "  rows     1 erase, 2 preserve, 0 hard as solved   condition" in one_space and "note: kohya" not in one_space


def test_the_kohya_caveat_is_not_shown_for_a_peft_pooled_patch(tmp_path):
    spec = tmp_path / "sdxl.yaml"
    spec.write_text(POOLED.format(format="peft"))
    text = run("build", spec, "-o", tmp_path / "p.safetensors").output
    assert "pooled path (add_embedding.linear_1):" in text and "kohya sd-scripts" not in text


# --- library progress bars stay off piped stderr (issue 12 item 15) ---------------------------------


def test_quiet_libraries_silences_diffusers_and_transformers_bars_imported_after_it(tmp_path):
    """Every command that loads models calls quiet_libraries before any library is imported (build,
    build-many, and run_command's default: verify, apply, compose, retarget, eval with --images, the
    ONNX commands); diffusers' bars ignore its own variables, so this runs the libraries' own tqdm
    wrappers in a fresh process, stderr piped as a user's script pipes it."""
    import os
    import subprocess
    import sys

    script = (
        "from erasec.compiler.cli.common import quiet_libraries\n"
        "quiet_libraries()\n"
        "import diffusers.utils.logging as d, transformers.utils.logging as t\n"
        "from tqdm.auto import tqdm\n"
        "for bar in (d.tqdm, t.tqdm, tqdm):\n"
        "    for _ in bar(range(3), desc='Loading pipeline components'):\n"
        "        pass\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


def test_print_ir_changed_prints_only_the_passes_that_changed_the_program(tmp_path):
    """canonicalize finds nothing to merge in a two-concept spec and returns the same program: with
    --print-ir-changed it prints nothing, solve and compress print; --print-ir-after=all prints all."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "erasec: 1\nname: ir\nversion: 1.0.0\nmodel: builtin:tiny-sd1\nmethod: uce\n"
        "erase: [{concept: Van Gogh, anchor: art}, {concept: Kelly McKernan}]\n"
    )

    def banners(*flags):
        result = run("build", spec, "-o", tmp_path / "p.safetensors", *flags)
        assert result.exit_code == 0, result.output
        return [line.split(" ")[4].split("{")[0] for line in result.stderr.splitlines() if "----- IR after" in line]

    assert banners("--print-ir-changed") == ["solve", "compress"]
    assert banners("--print-ir-after", "all") == ["canonicalize", "solve", "compress"]
