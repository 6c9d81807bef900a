"""Issue 12's done-when, end to end on each family a user has: build, eval with images, verify, apply
(to the folder and to the single file), then the patch loaded and fused by diffusers' own loader —
every step exit 0, no traceback (slow: about a minute per family on 2 cores)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from erasec.compiler.cli import cli

SPEC = """\
erasec: 1
name: no-van-gogh-{model}
version: 1.0.0
model: builtin:{model}
erase:
  - {{concept: Van Gogh, anchor: art}}
preserve: [Claude Monet]
"""


def _ok(*args) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0 and result.exception is None, (args, result.output)
    assert "Traceback" not in result.output
    return result.output


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny-sd1", "tiny-sd2", "tiny-sdxl"])
def test_the_first_ten_minutes_run_without_a_traceback(tmp_path, model):
    from diffusers import DiffusionPipeline

    from erasec.compiler.models.builtin import builtin_model_path

    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.format(model=model))
    patch = tmp_path / "patch.safetensors"
    _ok("build", spec, "-o", patch)
    _ok("eval", patch, "--model", f"builtin:{model}", "-o", tmp_path / "report", "--images", "1", "--steps", "2")
    assert "<img" in (tmp_path / "report" / "report.html").read_text(encoding="utf-8")
    assert f"verified against builtin:{model}" in _ok("verify", patch, "--model", f"builtin:{model}")
    _ok("apply", patch, "--model", f"builtin:{model}", "-o", tmp_path / "merged")
    _ok("apply", patch, "--model", f"builtin:{model}.safetensors", "-o", tmp_path / "merged.safetensors")
    pipe = DiffusionPipeline.from_pretrained(builtin_model_path(model), local_files_only=True)
    pipe.load_lora_weights(str(tmp_path), weight_name="patch.safetensors")
    pipe.fuse_lora(lora_scale=1.0)
