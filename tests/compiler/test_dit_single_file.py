"""Single-file diffusion transformers and text encoders given apart (issue 14 deliverable 1 and its
"done when": "the same for single-file checkpoints; a FLUX transformer file plus separate
ComfyUI-style encoder files builds"; "a missing encoder ... gets one clear line and exit 2, no file
written").

The single files are the tiny built-ins written by ``erasec export-single-file --text-encoders``:
the transformer under its native names (BFL's FLUX.1, SAI's MMDiT), the encoders as ComfyUI keeps
them (``t5.safetensors``, ``clip_l.safetensors``, ``clip_g.safetensors`` holding the HF state dicts)
and the T5 tokenizer folder beside them. A build from them must give the folder build's ΔW.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import fails, run
from erasec.compiler.frontend.spec import TEXT_ENCODER_SLOTS
from erasec.compiler.models.dit_inputs import TextInputs
from erasec.compiler.models.families import FAMILIES
from erasec.compiler.models.families.dit import native_family
from erasec.compiler.models.open import open_model
from safetensors.torch import load_file, save_file

LENGTH = 8
PROMPTS = ("Van Gogh", "a painter")
BUILTINS = {"flux": "tiny-flux", "sd3": "tiny-sd3", "wan": "tiny-wan"}
SLOTS = {"flux": ("t5", "clip_l"), "sd3": ("clip_g", "clip_l", "t5"), "wan": ("t5",)}


def _spec(model: str, extra: str = "") -> str:
    return (
        f"erasec: 1\nname: dit\nversion: 1.0.0\nmodel: {model}\n{extra}method: uce\n"
        "erase:\n  - {concept: Van Gogh, anchor: a painter}\npreserve: [a photo of a cat]\n"
        f"options:\n  sequence_length: {LENGTH}\n  pooled: true\noutput:\n  format: peft\n"
    )


def _inputs_yaml(folder: Path, family: str) -> str:
    encoders = ", ".join(f"{slot}: {folder / 'enc' / slot}.safetensors" for slot in SLOTS[family])
    return f"text_encoders: {{{encoders}}}\ntokenizers: {{t5: {folder / 'enc' / 't5_tokenizer'}}}\n"


@pytest.fixture(scope="module")
def exported(tmp_path_factory, dit_builtin) -> dict[str, Path]:
    """family → a folder holding ``model.safetensors`` (native names) and ``enc/`` (its encoders)."""
    out = {}
    for family, name in BUILTINS.items():
        folder = tmp_path_factory.mktemp(family)
        result = run("export-single-file", f"builtin:{name}", "-o", folder / "model.safetensors",
                     "--text-encoders", folder / "enc")
        assert result.exit_code == 0, result.output
        out[family] = folder
    return out


def _delta(patch: Path) -> dict[str, np.ndarray]:
    """module → B·A of a PEFT patch (the scale is the same in both builds: rank = alpha)."""
    tensors = load_file(str(patch))
    return {
        key.removesuffix(".lora_A.weight"): (tensors[key.replace("lora_A", "lora_B")] @ tensors[key]).double().numpy()
        for key in tensors if key.endswith(".lora_A.weight")
    }


# --- detection ---------------------------------------------------------------------------------------

_MARKS = {  # the names ComfyUI's detect_unet_config tests (Comfy-Org/ComfyUI@a125cd8 comfy/model_detection.py)
    "flux": {"txt_in.weight", "img_in.weight", "double_blocks.0.img_attn.qkv.weight", "vector_in.in_layer.weight"},
    "chroma": {"txt_in.weight", "double_blocks.0.img_attn.qkv.weight", "distilled_guidance_layer.in_proj.weight"},
    "sd3": {"context_embedder.weight", "joint_blocks.0.context_block.attn.qkv.weight", "y_embedder.mlp.0.weight"},
    "wan": {"text_embedding.0.weight", "blocks.0.cross_attn.k.weight", "head.modulation"},
}


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model.", "diffusion_model."])
@pytest.mark.parametrize("family", sorted(_MARKS))
def test_each_family_is_told_by_its_native_names_under_every_prefix(family, prefix):
    keys = {prefix + key for key in _MARKS[family]} | {"text_encoders.clip_l.transformer.text_model.x"}
    assert native_family(keys) == (family, prefix)
    assert [name for name, facts in FAMILIES.items() if facts.in_single_file(keys)] == [family]


def test_what_is_no_dit_family_is_told_as_none():
    flux2_like = _MARKS["flux"] - {"vector_in.in_layer.weight"}  # FLUX.2: no vector_in, no guidance layer
    sd1 = {"model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"}
    assert native_family(flux2_like) is None
    assert native_family(sd1) is None
    assert native_family({"model.diffusion_model.txt_in.weight"} | _MARKS["flux"]) == ("flux", "")


def test_the_spec_slots_are_the_registrys():
    slots = {slot.slot for facts in FAMILIES.values() for slot in facts.encoder_slots}
    assert set(TEXT_ENCODER_SLOTS) == slots


# --- the export --------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["sd3", "wan"])
def test_the_native_file_converts_back_exactly_with_diffusers_own_converter(exported, dit_builtin, family):
    from diffusers.loaders import single_file_utils as converters

    convert = {"sd3": converters.convert_sd3_transformer_checkpoint_to_diffusers,
               "wan": converters.convert_wan_transformer_to_diffusers}[family]
    native = load_file(str(exported[family] / "model.safetensors"))
    expected = load_file(str(dit_builtin(BUILTINS[family]) / "transformer" / "diffusion_pytorch_model.safetensors"))
    converted = convert(dict(native))
    assert sorted(converted) == sorted(expected)
    assert all(torch.equal(converted[key], expected[key]) for key in expected)


def test_the_flux_file_fuses_qkv_as_bfl_and_keeps_txt_in(exported, dit_builtin):
    """diffusers' FLUX converter assumes the full 3072 width, so the tiny file is checked by hand:
    BFL's img_attn.qkv = [to_q; to_k; to_v], linear1 = [q; k; v; proj_mlp], txt_in = context_embedder."""
    native = load_file(str(exported["flux"] / "model.safetensors"))
    folder = load_file(str(dit_builtin("tiny-flux") / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert torch.equal(native["txt_in.weight"], folder["context_embedder.weight"])
    assert torch.equal(native["vector_in.in_layer.weight"], folder["time_text_embed.text_embedder.linear_1.weight"])
    q, k, v = (folder[f"transformer_blocks.0.attn.to_{p}.weight"] for p in "qkv")
    assert torch.equal(native["double_blocks.0.img_attn.qkv.weight"], torch.cat([q, k, v]))
    single = [folder[f"single_transformer_blocks.0.attn.to_{p}.bias"] for p in "qkv"]
    single.append(folder["single_transformer_blocks.0.proj_mlp.bias"])
    assert torch.equal(native["single_blocks.0.linear1.bias"], torch.cat(single))
    assert sum(t.numel() for t in native.values()) == sum(t.numel() for t in folder.values())


# --- builds ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_a_single_file_with_separate_encoders_builds_the_folders_patch(exported, tmp_path, family):
    folder = exported[family]
    from_folder = tmp_path / "folder.safetensors"
    from_file = tmp_path / "file.safetensors"
    for spec_name, model, extra, out in (("a.yaml", f"builtin:{BUILTINS[family]}", "", from_folder),
                                         ("b.yaml", folder / "model.safetensors", _inputs_yaml(folder, family), from_file)):
        spec = folder / spec_name
        spec.write_text(_spec(str(model), extra))
        result = run("build", spec, "-o", out, "--allow-outside-spec")
        assert result.exit_code == 0, result.output
    expected, got = _delta(from_folder), _delta(from_file)
    assert sorted(got) == sorted(expected) and len(got) == 2  # the text entry and the pooled path
    for module, delta in expected.items():
        assert np.linalg.norm(got[module] - delta) <= 1e-6 * np.linalg.norm(delta), module


def test_the_encoders_come_from_a_comfyui_all_in_one_file_too(exported, tmp_path):
    """ComfyUI's CheckpointSave layout: model.diffusion_model.* and text_encoders.<name>.transformer.*."""
    folder = exported["flux"]
    tensors = {f"model.diffusion_model.{k}": v for k, v in load_file(str(folder / "model.safetensors")).items()}
    for slot, name in (("t5", "t5xxl"), ("clip_l", "clip_l")):
        tensors |= {f"text_encoders.{name}.transformer.{k}": v for k, v in load_file(str(folder / "enc" / f"{slot}.safetensors")).items()}
    combined = tmp_path / "flux-all-in-one.safetensors"
    save_file(tensors, str(combined), metadata={"erasec.text_encoders": '{"clip_l": {"num_attention_heads": 4}}'})
    tokenizer = TextInputs(tokenizers=(("t5", str(folder / "enc" / "t5_tokenizer")),))
    given = TextInputs(encoders=tuple((s, str(folder / "enc" / f"{s}.safetensors")) for s in ("clip_l", "t5")),
                       tokenizers=tokenizer.tokenizers)
    inside = open_model(str(combined), text_inputs=tokenizer, sequence_length=LENGTH, pooled=True)
    apart = open_model(str(folder / "model.safetensors"), text_inputs=given, sequence_length=LENGTH, pooled=True)
    assert inside.weight_name(inside.target.sites[0]) == "model.diffusion_model.txt_in.weight"
    for a, b in zip(inside.encode(PROMPTS, padded=True), apart.encode(PROMPTS, padded=True), strict=True):
        assert np.array_equal(a, b)
    assert np.array_equal(inside.encode_pooled(PROMPTS)[0], apart.encode_pooled(PROMPTS)[0])
    assert inside.text_encoder_pin() == apart.text_encoder_pin()


def test_a_folder_missing_its_t5_takes_it_from_a_file(exported, dit_builtin, tmp_path):
    source = dit_builtin("tiny-flux")
    folder = tmp_path / "flux"
    shutil.copytree(source, folder, ignore=lambda where, names: ["text_encoder_2", "tokenizer_2"] if where == str(source) else [])
    enc = exported["flux"] / "enc"
    given = TextInputs(encoders=(("t5", str(enc / "t5.safetensors")),), tokenizers=(("t5", str(enc / "t5_tokenizer")),))
    opened = open_model(str(folder), text_inputs=given, sequence_length=LENGTH)
    whole = open_model(str(source), sequence_length=LENGTH)
    for a, b in zip(opened.encode(PROMPTS, padded=True), whole.encode(PROMPTS, padded=True), strict=True):
        assert np.array_equal(a, b)


# --- refusals ----------------------------------------------------------------------------------------


def test_a_missing_encoder_is_one_line_naming_where_it_looked_and_writes_nothing(exported, tmp_path):
    folder = exported["flux"]
    spec = folder / "missing.yaml"
    spec.write_text(_spec(str(folder / "model.safetensors"), f"tokenizers: {{t5: {folder / 'enc' / 't5_tokenizer'}}}\n"))
    out = tmp_path / "p.safetensors"
    line = fails(["build", spec, "-o", out], "no T5 text encoder (t5, FluxPipeline's text_encoder_2)")
    assert "none given (text_encoders.t5 in the spec, --text-encoder t5=FILE)" in line
    assert "none inside model.safetensors (no text_encoders.t5xxl.transformer.* tensors)" in line
    assert not out.exists()
    # the encoder given, its tokenizer not: the T5 vocabulary is not in the weights
    line = fails(["build", spec, "-o", out, "--text-encoder", f"t5={folder / 'enc' / 't5.safetensors'}",
                  "--text-encoder", f"clip_l={folder / 'enc' / 'clip_l.safetensors'}", "--tokenizer",
                  f"t5={tmp_path / 'nowhere'}"], "no such file or folder (tokenizers.t5)")
    assert not out.exists()


def test_a_missing_t5_tokenizer_says_what_to_give(exported):
    enc = exported["flux"] / "enc"
    given = TextInputs(encoders=(("t5", str(enc / "t5.safetensors")),))
    with pytest.raises(Exception, match=r"no tokenizer for the t5 encoder: none given \(tokenizers.t5 in the spec, "
                       r"--tokenizer t5=PATH\); an encoder file holds no vocabulary"):
        open_model(str(exported["flux"] / "model.safetensors"), text_inputs=given)


def test_a_wan_spec_against_a_flux_file_is_refused_in_one_line(exported, tmp_path):
    folder = exported["flux"]
    spec = folder / "wan.yaml"
    spec.write_text(_spec(str(folder / "model.safetensors"), "family: wan\n" + _inputs_yaml(folder, "flux")))
    out = tmp_path / "p.safetensors"
    fails(["build", spec, "-o", out], "the spec says family 'wan' but the file is a Flux transformer (BFL's txt_in")
    assert not out.exists()


def test_an_encoder_of_the_wrong_kind_or_slot_is_refused(exported, tmp_path):
    folder = exported["sd3"]
    spec = folder / "kinds.yaml"
    spec.write_text(_spec(str(folder / "model.safetensors"), _inputs_yaml(folder, "sd3")))
    out = tmp_path / "p.safetensors"
    fails(["build", spec, "-o", out, "--text-encoder", f"clip_g={folder / 'enc' / 't5.safetensors'}"],
          "text_encoders.clip_g: holds no text_model.* tensors")
    flux = exported["flux"]
    fails(["build", spec, "-o", out, "--model", flux / "model.safetensors"],
          "a FluxPipeline model has no 'clip_g' text encoder; its slots are t5, clip_l")
    fails(["build", spec, "-o", out, "--text-encoder", "t5"], "--text-encoder 't5': not SLOT=PATH")
    assert not out.exists()


def test_apply_merges_into_a_single_file_whose_encoders_are_apart(exported, tmp_path):
    """ComfyUI keeps the transformer file without its encoders. Merging a patch into it reads weights
    only, so ``erasec apply`` needs no encoders: the merged file's txt_in is W0 + ΔW and nothing else
    changes. Commands that read text (verify's efficacy re-measure) still say which encoder is missing."""
    folder = exported["flux"]
    spec = folder / "apply.yaml"
    spec.write_text(_spec(str(folder / "model.safetensors"), _inputs_yaml(folder, "flux")))
    patch = tmp_path / "patch.safetensors"
    result = run("build", spec, "-o", patch, "--allow-outside-spec")
    assert result.exit_code == 0, result.output
    merged = tmp_path / "merged.safetensors"
    result = run("apply", patch, "--model", folder / "model.safetensors", "-o", merged)
    assert result.exit_code == 0, result.output
    before, after = load_file(str(folder / "model.safetensors")), load_file(str(merged))
    deltas = _delta(patch)
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed == {"txt_in.weight", "vector_in.in_layer.weight"}
    expected = before["txt_in.weight"].double().numpy() + deltas["transformer.context_embedder"]
    got = after["txt_in.weight"].double().numpy()
    assert np.linalg.norm(got - expected) <= 1e-6 * np.linalg.norm(expected)
    fails(["verify", patch, "--model", folder / "model.safetensors"], "no T5 text encoder (t5, FluxPipeline's text_encoder_2)")
    # given the encoders, as build takes them, verify re-measures and passes
    given = [arg for slot in SLOTS["flux"] for arg in ("--text-encoder", f"{slot}={folder / 'enc' / slot}.safetensors")]
    result = run("verify", patch, "--model", folder / "model.safetensors", *given,
                 "--tokenizer", f"t5={folder / 'enc' / 't5_tokenizer'}")
    assert result.exit_code == 0, result.output
    fails(["verify", patch, "--model", folder / "model.safetensors", "--text-encoder", "t5"], "--text-encoder t5: expected SLOT=PATH")
