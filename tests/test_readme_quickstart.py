"""The README's quickstart numbers are what its commands print (slow: about a minute on 2 cores)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from erasec.compiler.cli import cli

ROOT = Path(__file__).resolve().parents[1]
# lines whose numbers are exact (times and sizes vary, so those lines are not compared)
EXACT = re.compile(r"^\s*(Van Gogh|preserved|artists|coco|least preserved|moved most|rows|rank)\b")


def _exact_lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.splitlines() if EXACT.match(line)]


@pytest.mark.slow
def test_the_quickstart_prints_what_the_readme_says(tmp_path, minilm_sd1_path):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```\n(.*?)```", readme, flags=re.S)
    build_block = next(b for b in blocks if b.startswith("built out/patch.safetensors"))
    eval_block = next(b for b in blocks if b.startswith("$ erasec eval out/patch.safetensors"))
    patch = tmp_path / "patch.safetensors"
    built = CliRunner().invoke(cli, ["build", str(ROOT / "examples" / "quickstart.yaml"), "-o", str(patch)])
    assert built.exit_code == 0, built.output
    assert _exact_lines(built.output) == _exact_lines(build_block)
    evaluated = CliRunner().invoke(cli, ["eval", str(patch), "--model", "builtin:minilm-sd1"])
    assert evaluated.exit_code == 0, evaluated.output
    assert _exact_lines(evaluated.stdout) == _exact_lines(eval_block)
