"""What ``erasec build`` says about itself: its flags checked before any work, and a summary whose
numbers agree with each other and with what the patch was solved for (issue 12)."""

from __future__ import annotations

from click.testing import CliRunner

from erasec.compiler.cli import cli

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
