"""What a new user meets in the first ten minutes (issue 12): the README's set-up without the
optional extras, hub ids from the local Hugging Face cache, listing what exists, and examples
that erase something."""

from __future__ import annotations

import sys

import pytest
from click.testing import CliRunner

from erasec.compiler.cli import cli

ONNX_MODULES = ("onnx", "onnx_ir", "onnxruntime", "onnxscript")
ONNX_HINT = 'needs the onnx extra (onnx, onnx_ir, onnxruntime, onnxscript not installed); pip install "erasec[onnx]"'


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture()
def without_onnx(monkeypatch):
    """The README's ``.[semantic]`` install, simulated: each onnx module's ``sys.modules`` entry is
    None (``import onnx_ir`` then raises ModuleNotFoundError, ``find_spec`` finds nothing), and the
    erasec modules that import them are dropped so that they are imported afresh."""
    for name in ONNX_MODULES:
        monkeypatch.setitem(sys.modules, name, None)
    for name in [n for n in sys.modules if n.startswith(("erasec.compiler.onnx_", "erasec.backends.onnx"))]:
        monkeypatch.delitem(sys.modules, name)


@pytest.mark.parametrize(
    "command, where",
    [
        (("export-onnx", "--model", "builtin:tiny-sd1", "-o", "{tmp}/exported"), "export-onnx"),
        (("run-onnx", "{tmp}/unet.onnx"), "run-onnx"),
        (("apply", "{tmp}/patch.safetensors", "--onnx", "{tmp}/unet.onnx", "-o", "{tmp}/out.onnx"), "apply --onnx"),
        (("build", "{tmp}/spec.yaml", "-o", "{tmp}/out.onnx"), "{tmp}/spec.yaml:5: output.format"),
    ],
)
def test_onnx_commands_without_the_onnx_extra_name_the_extra(tmp_path, without_onnx, command, where):
    (tmp_path / "spec.yaml").write_text(
        "erasec: 1\nname: t\nversion: 1.0.0\nerase: [{concept: Van Gogh, anchor: art}]\noutput: {format: onnx}\n"
        "model: builtin:tiny-sd1\n"
    )
    result = _run(*(part.format(tmp=tmp_path) for part in command))
    assert result.exit_code == 2, result.output
    assert result.output == f"erasec: error: {where.format(tmp=tmp_path)}: {ONNX_HINT} (in a checkout: pip install \".[onnx]\")\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]  # nothing written


def test_ray_without_ray_names_the_cluster_extra_as_docs_scaling_does(tmp_path, monkeypatch):
    from pathlib import Path

    monkeypatch.setitem(sys.modules, "ray", None)
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "a.yaml").write_text(
        "erasec: 1\nname: a\nversion: 1.0.0\nmodel: builtin:tiny-sd1\nerase: [{concept: Van Gogh}]\n"
    )
    result = _run("build-many", tmp_path / "specs", "-o", tmp_path / "out", "--ray", "local")
    assert result.exit_code == 2
    hint = 'pip install "erasec[cluster]" (in a checkout: pip install ".[cluster]")'
    assert result.output == f"erasec: error: --ray: needs the cluster extra (ray not installed); {hint}\n"
    scaling = (Path(__file__).resolve().parents[2] / "docs" / "scaling.md").read_text()
    assert '`pip install "erasec[cluster]"`, in a checkout\n  `pip install ".[cluster]"`' in scaling


def _folder_bytes(path):
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def test_models_lists_the_builtin_models_with_family_and_cache_location(tiny_sd1_path, erasec_cache_dir):
    import json

    listed = {m["name"]: m for m in json.loads(_run("models", "--json").output)["models"]}
    assert sorted(listed) == ["minilm-sd1", "tiny-sd1", "tiny-sd2", "tiny-sdxl"]
    assert {name: m["family"] for name, m in listed.items()} == {
        "minilm-sd1": "sd1", "tiny-sd1": "sd1", "tiny-sd2": "sd2", "tiny-sdxl": "sdxl"
    }
    assert listed["tiny-sd1"]["folder"] == {"path": str(tiny_sd1_path), "built": True, "bytes": _folder_bytes(tiny_sd1_path)}
    assert listed["tiny-sd1"]["single_file"]["path"].startswith(str(erasec_cache_dir / "single-file"))
    text = _run("models").output
    assert f"    folder {tiny_sd1_path} (built, " in text
    assert "builtin:tiny-sdxl   sdxl  " in text


def test_methods_marks_the_default_and_build_help_names_single_files():
    from erasec.compiler.spec import DEFAULT_METHOD

    lines = _run("methods").output.splitlines()
    marked = [line for line in lines if "(default" in line]
    assert marked == [f"{DEFAULT_METHOD}  (default: a spec without method: uses it)"]
    help_text = " ".join(_run("build", "--help").output.split())
    assert "--model TEXT a diffusers folder, a single-file .safetensors checkpoint, or builtin:NAME[.safetensors]" in help_text


def test_cache_info_counts_the_builtin_models_apart_from_the_embeddings(tiny_sd1_path, erasec_cache_dir):
    import json

    info = json.loads(_run("cache", "info", "--json").output)
    models = info["builtin_models"]
    assert models["root"] == str(erasec_cache_dir) and str(tiny_sd1_path) in models["built"]
    assert models["bytes"] >= _folder_bytes(tiny_sd1_path) > 0
    assert info["root"] == str(erasec_cache_dir / "embeddings")  # the embedding cache's own count is unchanged
    assert f"built-in models ({erasec_cache_dir}): {len(models['built'])} built, " in _run("cache", "info").output
