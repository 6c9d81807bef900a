"""The embedding cache: a rebuild after a spec edit encodes only the new prompts, and cold, warm and
``--no-cache`` builds write the same bytes; ``erasec cache info|clear``; ``erasec build-many``."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from erasec.compiler.build import BuildOptions, build
from erasec.compiler.cli import cli

SPEC = """\
erasec: 1
name: cache-test
version: 1.0.0
model: builtin:tiny-sd1
method: {method}
erase:
{erase}
preserve: [Claude Monet, a photo of a cat]
"""


def _spec(folder, name, concepts, method="uce"):
    path = folder / f"{name}.yaml"
    erase = "\n".join(f"  - {{concept: {c}, anchor: art}}" for c in concepts)
    path.write_text(SPEC.format(method=method, erase=erase))
    return path


def test_rebuild_after_an_edit_encodes_only_the_new_prompts_and_writes_the_same_bytes(tmp_path, tiny_sd1_path):
    cache = tmp_path / "cache"
    first = build(_spec(tmp_path, "a", ["Van Gogh"]), tmp_path / "a.safetensors", BuildOptions(cache_dir=cache))
    assert first.prompts["cached"] == 0 and first.prompts["encoded"] > 0

    edited = _spec(tmp_path, "b", ["Van Gogh", "Kelly McKernan"])
    warm = build(edited, tmp_path / "warm.safetensors", BuildOptions(cache_dir=cache))
    assert warm.prompts["encoded"] == 1  # only "Kelly McKernan"; the anchor, preserved and "" are cached
    assert warm.prompts["cached"] == first.prompts["encoded"]

    cold = build(edited, tmp_path / "cold.safetensors", BuildOptions(cache_dir=tmp_path / "fresh"))
    uncached = build(edited, tmp_path / "none.safetensors", BuildOptions(cache=False))
    assert uncached.prompts["cached"] == 0
    assert (tmp_path / "warm.safetensors").read_bytes() == (tmp_path / "cold.safetensors").read_bytes()
    assert (tmp_path / "warm.safetensors").read_bytes() == (tmp_path / "none.safetensors").read_bytes()


def test_the_site_gram_and_base_pin_are_memoised_under_the_weights_file_stamp(tmp_path, tiny_sd1_path, monkeypatch):
    import os
    import shutil

    from erasec.compiler import embedding_cache
    from erasec.compiler.model import SDModel

    model = tmp_path / "model"
    shutil.copytree(tiny_sd1_path, model)
    spec = _spec(tmp_path, "a", ["Van Gogh"])
    options = BuildOptions(cache_dir=tmp_path / "cache", model=str(model))
    build(spec, tmp_path / "first.safetensors", options)
    assert len(list((tmp_path / "cache" / "embeddings" / "grams").glob("*/*.npy"))) == 1

    computed, pinned = [], []
    original_gram, original_pin = SDModel.site_gram, embedding_cache.model_base_pin
    monkeypatch.setattr(SDModel, "site_gram", lambda self, *a: computed.append(1) or original_gram(self, *a))
    monkeypatch.setattr(embedding_cache, "model_base_pin", lambda *a: pinned.append(1) or original_pin(*a))
    build(spec, tmp_path / "again.safetensors", options)
    assert computed == [] and pinned == []  # both read back from their memos
    assert (tmp_path / "again.safetensors").read_bytes() == (tmp_path / "first.safetensors").read_bytes()

    unet = model / "unet" / "diffusion_pytorch_model.safetensors"
    os.utime(unet, ns=(unet.stat().st_atime_ns, unet.stat().st_mtime_ns + 10**9))  # a new file, as far as we know
    build(spec, tmp_path / "touched.safetensors", options)
    assert computed == [1] and pinned == [1]


def test_padded_rows_are_cached_apart_from_unpadded(tmp_path, tiny_sd1_path):
    cache = tmp_path / "cache"
    build(_spec(tmp_path, "a", ["Van Gogh"]), tmp_path / "a.safetensors", BuildOptions(cache_dir=cache))
    legacy = build(
        _spec(tmp_path, "b", ["Van Gogh"], method="uce-legacy"), tmp_path / "b.safetensors", BuildOptions(cache_dir=cache)
    )
    assert legacy.prompts["encoded"] > 0  # 77-row encodings are other entries


def test_cache_info_and_clear(tmp_path, tiny_sd1_path, monkeypatch):
    monkeypatch.setenv("ERASEC_CACHE_DIR", str(tmp_path / "cache"))
    runner = CliRunner()
    spec = _spec(tmp_path, "a", ["Van Gogh"])
    assert runner.invoke(cli, ["build", str(spec), "-o", str(tmp_path / "a.safetensors")]).exit_code == 0
    info = json.loads(runner.invoke(cli, ["cache", "info", "--json"]).output)
    assert info["entries"] > 0 and info["bytes"] > 0
    cleared = json.loads(runner.invoke(cli, ["cache", "clear", "--json"]).output)
    assert cleared["entries"] == info["entries"]
    assert json.loads(runner.invoke(cli, ["cache", "info", "--json"]).output)["entries"] == 0
    result = runner.invoke(cli, ["build", str(spec), "-o", str(tmp_path / "b.safetensors"), "--no-cache"])
    assert result.exit_code == 0
    assert json.loads(runner.invoke(cli, ["cache", "info", "--json"]).output)["entries"] == 0


def test_build_many_builds_each_spec_and_reports_a_failure(tmp_path, tiny_sd1_path):
    specs = tmp_path / "specs"
    specs.mkdir()
    _spec(specs, "one", ["Van Gogh"])
    _spec(specs, "two", ["Kelly McKernan"])
    (specs / "broken.yaml").write_text("erasec: 1\nname: broken\n")
    result = CliRunner().invoke(cli, ["build-many", str(specs), "-o", str(tmp_path / "out"), "-j", "2", "--json"])
    assert result.exit_code == 2
    data = json.loads(result.output)
    by_spec = {r["spec"].rsplit("/", 1)[-1]: r for r in data["results"]}
    assert by_spec["broken.yaml"]["ok"] is False and "version" in by_spec["broken.yaml"]["error"]
    assert by_spec["one.yaml"]["ok"] and by_spec["two.yaml"]["ok"]
    alone = build(specs / "one.yaml", tmp_path / "alone.safetensors")
    assert (tmp_path / "out" / "one.safetensors").read_bytes() == (tmp_path / "alone.safetensors").read_bytes()
    assert data["failed"] == 1


def test_version_and_a_spec_error_do_not_import_torch(tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "bad.yaml"
    bad.write_text("erasec: 1\nname: bad\n")
    probe = (
        "import sys\nfrom click.testing import CliRunner\nfrom erasec.compiler.cli import cli\n"
        f"assert CliRunner().invoke(cli, ['--version']).exit_code == 0\n"
        f"assert CliRunner().invoke(cli, ['build', {str(bad)!r}, '-o', {str(tmp_path / 'x.safetensors')!r}]).exit_code == 2\n"
        "print(sorted(m for m in ('torch', 'transformers', 'diffusers') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_a_warm_rebuild_imports_neither_transformers_nor_diffusers(tmp_path, monkeypatch):
    import os
    import subprocess
    import sys

    monkeypatch.setenv("ERASEC_CACHE_DIR", str(tmp_path / "cache"))  # the built-in model lands there too
    spec = _spec(tmp_path, "a", ["Van Gogh"])
    build(spec, tmp_path / "cold.safetensors", BuildOptions())
    probe = (
        "import sys\nfrom click.testing import CliRunner\nfrom erasec.compiler.cli import cli\n"
        f"result = CliRunner().invoke(cli, ['build', {str(spec)!r}, '-o', {str(tmp_path / 'warm.safetensors')!r}])\n"
        "assert result.exit_code == 0, result.output\n"
        "print(sorted(m for m in ('transformers', 'diffusers') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=dict(os.environ))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "warm.safetensors").read_bytes() == (tmp_path / "cold.safetensors").read_bytes()


@pytest.mark.slow  # starts a Ray cluster: about a minute on 2 cores
def test_build_many_on_a_local_ray_cluster(tmp_path, tiny_sd1_path):
    pytest.importorskip("ray")
    specs = tmp_path / "specs"
    specs.mkdir()
    _spec(specs, "one", ["Van Gogh"])
    result = CliRunner().invoke(cli, ["build-many", str(specs), "-o", str(tmp_path / "out"), "--ray", "local", "--json"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "one.safetensors").is_file()
