"""One typed model interface (issue 13 item 2): every model object a build, an evaluation or a patch
tool can hold is a ``TextModel``, each wrapper implements every member itself (nothing reaches the
wrapped model through ``__getattr__``), and families come from one registry."""

import numpy as np
import pytest

from erasec.compiler.frontend import spec as frontend_spec
from erasec.compiler.models.embedding_cache import CachingModel
from erasec.compiler.models.families import FAMILIES
from erasec.compiler.models.open import open_model
from erasec.compiler.models.protocol import TextModel
from erasec.compiler.models.recording import RecordingModel, ReplayModel
from erasec.compiler.models.sd import SDModel
from erasec.compiler.models.wrapper import ModelWrapper

MEMBERS = sorted(name for name in dir(TextModel) if not name.startswith("_"))


def _models(opened: SDModel) -> dict:
    caching = CachingModel(opened, None)
    return {
        "SDModel": opened,
        "CachingModel": caching,
        "RecordingModel": RecordingModel(caching),  # as a build with output.link holds it
        "ReplayModel": ReplayModel(opened, {}, where="compose"),
    }


def test_the_protocol_names_what_its_callers_use():
    assert MEMBERS == [
        "base_pin", "checkpoint_source", "component", "encode", "encode_pooled", "family", "kv_weights", "location",
        "padded_rows", "release_text_encoders", "seen_rows", "sequence_length", "site_gram", "storage_dtype", "target",
        "text_encoder_pin", "tokenize",
    ]


@pytest.mark.parametrize("kind", ["SDModel", "CachingModel", "RecordingModel", "ReplayModel"])
def test_every_model_the_build_sees_is_a_text_model(kind, tiny_sd1_path):
    model = _models(open_model("builtin:tiny-sd1"))[kind]
    assert isinstance(model, TextModel)
    cls = type(model)
    assert "__getattr__" not in {name for klass in cls.__mro__ for name in vars(klass)}
    for name in MEMBERS:  # each member is defined on the class, not found by forwarding
        assert any(name in vars(klass) for klass in cls.__mro__ if klass is not object), (kind, name)


def test_wrappers_answer_as_the_model_they_wrap(tiny_sd1_path):
    opened = open_model("builtin:tiny-sd1")
    module_paths = [site.module_path for site in opened.target.sites[:2]]
    for kind, model in _models(opened).items():
        assert (model.location, model.family, model.target) == (opened.location, "sd1", opened.target), kind
        assert model.storage_dtype() == "fp32" and model.component == "unet"
        assert model.base_pin(module_paths) == opened.base_pin(module_paths)
        assert model.text_encoder_pin() == opened.text_encoder_pin()
        assert model.checkpoint_source().weights_file == opened.unet_weights_file
        assert model.kv_weights().keys() == opened.kv_weights().keys()
        if kind != "ReplayModel":
            assert model.tokenize(["a cat"]) == opened.tokenize(["a cat"])
            assert np.array_equal(model.encode(["a cat"], padded=False)[0], opened.encode(["a cat"], padded=False)[0])
        model.release_text_encoders()


def test_a_protocol_member_missing_from_the_wrapper_is_caught(monkeypatch, tiny_sd1_path):
    """What the isinstance check above rests on: a wrapper without a member is no TextModel."""
    monkeypatch.delattr(ModelWrapper, "storage_dtype")
    assert not isinstance(RecordingModel(open_model("builtin:tiny-sd1")), TextModel)


def test_the_model_memo_is_not_shared_by_a_model_with_another_target(tiny_sd1_path):
    """``cache_dir`` is a field; what an SDModel loads lives in a memo that a replaced model starts anew."""
    import dataclasses

    opened = open_model("builtin:tiny-sd1")
    opened.kv_weights()
    fewer = dataclasses.replace(opened, target=dataclasses.replace(opened.target, spaces=opened.target.spaces))
    assert fewer._loaded is not opened._loaded and fewer._loaded.kv is None
    assert "_cache" not in {field.name for field in dataclasses.fields(SDModel)}


def test_families_come_from_one_registry():
    assert set(FAMILIES) == set(frontend_spec.FAMILIES)  # the spec's family: accepts exactly these
    for name, family in FAMILIES.items():
        assert family.name == name and family.encoders and family.pipeline
