"""The spec's ``family:`` overrides detection where detection fails, and is refused where the files contradict it."""

from __future__ import annotations

import json
import shutil

import pytest
from safetensors import safe_open

from erasec.compiler.build import build
from erasec.compiler.models.builtin import builtin_model_path
from erasec.compiler.errors import ModelError

SPEC = "erasec: 1\nname: f\nversion: 1.0.0\nmodel: {model}\n{family}method: uce\nerase: [{{concept: Van Gogh}}]\n"


def _spec(tmp_path, model, family=None):
    path = tmp_path / f"spec-{family}.yaml"
    path.write_text(SPEC.format(model=model, family=f"family: {family}\n" if family else ""))
    return path


def test_family_override_lets_an_unrecognised_encoder_build(tmp_path):
    folder = tmp_path / "odd-sd2"
    shutil.copytree(builtin_model_path("tiny-sd2"), folder)
    config_file = folder / "text_encoder" / "config.json"
    config = json.loads(config_file.read_text())
    config["hidden_act"] = "gelu_new"  # a fine-tune with another activation: detection cannot tell
    config_file.write_text(json.dumps(config))
    with pytest.raises(ModelError, match="unknown architecture"):
        build(_spec(tmp_path, folder), tmp_path / "a.safetensors")
    result = build(_spec(tmp_path, folder, "sd2"), tmp_path / "b.safetensors")
    assert result.family == "sd2"
    with safe_open(str(tmp_path / "b.safetensors"), "np") as f:
        assert f.metadata()["ss_v2"] == "True"


def test_the_override_equal_to_detection_changes_nothing_but_the_record(tmp_path):
    a = build(_spec(tmp_path, "builtin:tiny-sd1"), tmp_path / "a.safetensors")
    b = build(_spec(tmp_path, "builtin:tiny-sd1", "sd1"), tmp_path / "b.safetensors")
    assert a.family == b.family == "sd1"
    with safe_open(str(tmp_path / "a.safetensors"), "np") as fa, safe_open(str(tmp_path / "b.safetensors"), "np") as fb:
        assert sorted(fa.keys()) == sorted(fb.keys())
        assert all((fa.get_tensor(k) == fb.get_tensor(k)).all() for k in fa.keys())


def test_an_override_the_files_contradict_is_refused(tmp_path):
    with pytest.raises(ModelError) as error:
        build(_spec(tmp_path, "builtin:tiny-sd1", "sdxl"), tmp_path / "c.safetensors")
    spec = tmp_path / "spec-sdxl.yaml"  # the model the spec names: its file and line come first
    assert str(error.value) == (
        f"{spec}:4: model: builtin:tiny-sd1: family 'sdxl' does not fit the files, which have one text encoder; "
        "remove family:"
    )
    assert not (tmp_path / "c.safetensors").exists()
