"""SD1, SD2 and SDXL, as diffusers folders and single files: targets, rows, loading rules and refusals.

The tiny built-ins stand in for the real families (compiler/models/builtin/__init__.py); their single-file copies
(``builtin:NAME.safetensors``) use the LDM/SGM names of research/ecosystem.md §3.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from erasec.compiler.build import build
from erasec.compiler.models.builtin import builtin_model_path
from erasec.compiler.cli import cli
from erasec.compiler.errors import ModelError
from erasec.compiler.models.open import open_model
from erasec.ir.naming import ldm_module_path

FAMILIES = {"tiny-sd1": ("sd1", "clip-l", 32), "tiny-sd2": ("sd2", "open-clip-h", 64), "tiny-sdxl": ("sdxl", "clip-l+bigg", 192)}
PROMPTS = ["a cat", "a photo of an astronaut riding a horse on mars", ""]


def sd_attn2_paths() -> list[str]:
    blocks = [f"down_blocks.{b}.attentions.{a}" for b in range(3) for a in range(2)]
    blocks += ["mid_block.attentions.0"]
    blocks += [f"up_blocks.{b}.attentions.{a}" for b in range(1, 4) for a in range(3)]
    return [f"{block}.transformer_blocks.0.attn2" for block in blocks]


def sdxl_attn2_paths() -> list[str]:
    """SDXL base's 70 cross-attention modules, from research/ecosystem.md §3.4's table."""
    table = [("down_blocks.1.attentions.0", 2), ("down_blocks.1.attentions.1", 2)]
    table += [("down_blocks.2.attentions.0", 10), ("down_blocks.2.attentions.1", 10), ("mid_block.attentions.0", 10)]
    table += [(f"up_blocks.0.attentions.{a}", 10) for a in range(3)] + [(f"up_blocks.1.attentions.{a}", 2) for a in range(3)]
    return [f"{block}.transformer_blocks.{t}.attn2" for block, depth in table for t in range(depth)]


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def pair(request):
    """(name, folder model, single-file model) of one family."""
    name = request.param
    return name, open_model(f"builtin:{name}"), open_model(f"builtin:{name}.safetensors")


def test_family_target_and_layouts(pair) -> None:
    name, folder, single = pair
    family, space_name, dim = FAMILIES[name]
    paths = sdxl_attn2_paths() if family == "sdxl" else sd_attn2_paths()
    for model, layout in ((folder, "diffusers"), (single, "single-file")):
        assert (model.family, model.layout) == (family, layout)
        (space,) = model.target.spaces
        assert (space.name, space.dim) == (space_name, dim)
        assert [s.module_path for s in space.sites] == [f"{p}.to_{r}" for p in paths for r in "kv"]
    assert len(paths) == {"sd1": 16, "sd2": 16, "sdxl": 70}[family]
    assert single.weight_name(single.target.sites[0]) == f"model.diffusion_model.{ldm_module_path(paths[0])}.to_k.weight"


def test_single_file_gives_the_folders_weights_and_rows_exactly(pair) -> None:
    _, folder, single = pair
    a, b = folder.kv_weights(), single.kv_weights()
    assert list(a) == list(b)
    for path in a:
        np.testing.assert_array_equal(a[path], b[path], err_msg=path)
    for padded in (False, True):
        for x, y in zip(folder.encode(PROMPTS, padded=padded), single.encode(PROMPTS, padded=padded)):
            np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("name", ["tiny-sd2", "tiny-sdxl"])
def test_padded_rows_equal_the_pipelines_prompt_embeds(name) -> None:
    """SD2 and SDXL's tokenizer_2 pad with '!' (id 0); SDXL concatenates both penultimate states."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    folder = builtin_model_path(name)
    model = open_model(f"builtin:{name}")
    with torch.inference_mode():
        if name == "tiny-sdxl":
            pipe = StableDiffusionXLPipeline.from_pretrained(folder, local_files_only=True)
            embeds = pipe.encode_prompt(PROMPTS[:2], device="cpu", do_classifier_free_guidance=False)[0]
            assert (pipe.tokenizer.pad_token_id, pipe.tokenizer_2.pad_token_id) == (49407, 0)
        else:
            pipe = StableDiffusionPipeline.from_pretrained(
                folder, safety_checker=None, requires_safety_checker=False, local_files_only=True
            )
            embeds = pipe.encode_prompt(PROMPTS[:2], "cpu", 1, False)[0]
            assert pipe.tokenizer.pad_token_id == 0
    for ours, theirs in zip(model.encode(PROMPTS[:2], padded=True), embeds):
        np.testing.assert_allclose(ours, theirs.double().numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_single_file(dtype, tmp_path) -> None:
    source = builtin_model_path("tiny-sdxl.safetensors")
    with safe_open(str(source), framework="pt") as handle:
        metadata = handle.metadata()
    tensors = {k: v.to(dtype) for k, v in load_file(str(source)).items()}
    half = tmp_path / "half.safetensors"
    save_file(tensors, str(half), metadata=metadata)
    model = open_model(str(half))
    for site in model.target.sites[:6]:
        expected = tensors[model.weight_name(site)].to(torch.float32).numpy()
        np.testing.assert_array_equal(model.kv_weights()[site.module_path], expected)
    # The encoders stay in the stored dtype and compute in fp32, so the rows equal those of an fp32
    # file holding the same (rounded) values, bit for bit.
    wide = tmp_path / "wide.safetensors"
    save_file({k: v.to(torch.float32) for k, v in tensors.items()}, str(wide), metadata=metadata)
    reference = open_model(str(wide))
    for padded in (False, True):
        for ours, theirs in zip(model.encode(PROMPTS, padded=padded), reference.encode(PROMPTS, padded=padded)):
            np.testing.assert_array_equal(ours, theirs)
    assert {p.dtype for p in model._text_encoder("text_encoder_2").parameters()} == {dtype}


SPEC = """\
erasec: 1
name: same
version: 1.0.0
method: uce
erase:
  - {concept: Van Gogh, anchor: art}
preserve: [Claude Monet]
"""
# Keys that name where the base came from, or pins computed from a folder's files only; and
# erasec.digest, which covers every other key.
LOCATION_KEYS = {"erasec.spec", "erasec.base", "ss_sd_model_name", "erasec.digest"}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_folder_and_single_file_inputs_give_byte_identical_loras(name, tmp_path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    out = {}
    for suffix in ("", ".safetensors"):
        path = tmp_path / f"patch{suffix or '.folder'}.safetensors"
        build(spec, path, options=_options(f"builtin:{name}{suffix}"))
        raw = path.read_bytes()
        (length,) = struct.unpack("<Q", raw[:8])
        out[suffix] = (json.loads(raw[8 : 8 + length]), raw[8 + length :])
    (head_a, data_a), (head_b, data_b) = out[""], out[".safetensors"]
    assert data_a == data_b  # every tensor byte
    meta_a, meta_b = head_a.pop("__metadata__"), head_b.pop("__metadata__")
    assert head_a == head_b  # names, dtypes, shapes, offsets
    assert {k for k in meta_a if meta_a[k] != meta_b.get(k)} <= LOCATION_KEYS
    assert json.loads(meta_a["erasec.base"])["sha256"] == json.loads(meta_b["erasec.base"])["sha256"]
    family_keys = (meta_a["ss_v2"], meta_a["ss_base_model_version"], meta_a["modelspec.architecture"])
    assert family_keys == {
        "tiny-sd1": ("False", "sd_v1", "stable-diffusion-v1/lora"),
        "tiny-sd2": ("True", "sd_v2", "stable-diffusion-v2-512/lora"),
        "tiny-sdxl": ("False", "sdxl_base_v1-0", "stable-diffusion-xl-v1-base/lora"),
    }[name]


def _options(model: str):
    from erasec.compiler.build import BuildOptions

    # no embedding cache: rows other tests cached for one layout (encoded in other batches) could
    # differ in their last bit from rows encoded fresh for the other (docs/patch-format.md)
    return BuildOptions(model=model, cache=False)


# --- export ---------------------------------------------------------------------------------------------


def test_export_single_file_command_is_deterministic(tmp_path) -> None:
    out = tmp_path / "sd2.safetensors"
    result = CliRunner().invoke(cli, ["export-single-file", "builtin:tiny-sd2", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == builtin_model_path("tiny-sd2.safetensors").read_bytes()
    with safe_open(str(out), framework="pt") as handle:
        keys = set(handle.keys())
        assert handle.metadata() is None or "erasec.text_encoders" not in handle.metadata()
    assert "cond_stage_model.model.transformer.resblocks.2.attn.in_proj_weight" in keys  # the block SD2 skips
    assert "first_stage_model.decoder.mid.attn_1.q.weight" in keys


def test_tiny_sd1_single_file_carries_its_head_count() -> None:
    with safe_open(str(builtin_model_path("tiny-sd1.safetensors")), framework="pt") as handle:
        metadata = handle.metadata()
    assert json.loads(metadata["erasec.text_encoders"]) == {"text_encoder": {"num_attention_heads": 4}}


# --- refusals -------------------------------------------------------------------------------------------


def _error(location, **kwargs) -> str:
    with pytest.raises(ModelError) as caught:
        open_model(str(location), **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_truncated_and_corrupted_single_files(tmp_path) -> None:
    data = builtin_model_path("tiny-sd2.safetensors").read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    assert _error(truncated) == (
        f"{truncated}: not a readable safetensors file (Error while deserializing header: "
        "incomplete metadata, file not fully covered); re-download or re-save it"
    )
    corrupted = tmp_path / "corrupted.safetensors"
    corrupted.write_bytes(struct.pack("<Q", 12) + b"{not json!!}" + data[-64:])
    assert _error(corrupted).startswith(f"{corrupted}: not a readable safetensors file (")


def test_unknown_architectures(tmp_path) -> None:
    unet_only = tmp_path / "unet-only.safetensors"
    save_file({"model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(4, 8)},
              str(unet_only))
    assert _error(unet_only) == (
        f"{unet_only}: unknown architecture: a UNet but no SD1 (cond_stage_model.transformer), SD2 "
        "(cond_stage_model.model) or SDXL base (conditioner.embedders.0/1) text encoder"
    )
    other = tmp_path / "other.safetensors"
    save_file({"transformer.blocks.0.weight": torch.zeros(2, 2)}, str(other))
    assert _error(other) == (
        f"{other}: unknown architecture: no model.diffusion_model.* tensors; not a Stable Diffusion checkpoint"
    )


def test_pickles_need_the_flag_and_load_weights_only(tmp_path) -> None:
    checkpoint = tmp_path / "model.ckpt"
    torch.save({"state_dict": load_file(str(builtin_model_path("tiny-sd1.safetensors")))}, str(checkpoint))
    assert _error(checkpoint) == (
        f"{checkpoint}: a .ckpt pickle can run arbitrary code when loaded, so erasec does not open it; "
        "convert it to .safetensors, or pass --allow-pickle to read it with torch.load(weights_only=True)"
    )
    model = open_model(str(checkpoint), allow_pickle=True)
    reference = open_model("builtin:tiny-sd1")
    assert model.family == "sd1"
    for path, array in reference.kv_weights().items():
        np.testing.assert_array_equal(model.kv_weights()[path], array)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": {"x": Evil()}}, str(evil))
    assert _error(evil, allow_pickle=True).startswith(f"{evil}: cannot load this pickle with weights_only=True (")


def test_cli_refuses_a_pickle_without_the_flag(tmp_path) -> None:
    checkpoint = tmp_path / "model.ckpt"
    torch.save({}, str(checkpoint))
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    result = CliRunner().invoke(cli, ["build", str(spec), "-o", str(tmp_path / "p.safetensors"), "--model", str(checkpoint)])
    assert result.exit_code == 2
    assert "--allow-pickle" in result.output and result.output.count("\n") == 1
    result = CliRunner().invoke(
        cli, ["build", str(spec), "-o", str(tmp_path / "p.safetensors"), "--model", str(checkpoint), "--allow-pickle"]
    )
    assert result.exit_code == 2
    assert "unknown architecture: no model.diffusion_model.* tensors" in result.output


def test_pooled_rows_equal_the_pipelines_pooled_embeds() -> None:
    from diffusers import StableDiffusionXLPipeline

    model = open_model("builtin:tiny-sdxl.safetensors", pooled=True)
    (_, space) = model.target.spaces
    (site,) = space.sites
    assert (space.name, space.dim, site.module_path, site.role, site.full_in_features) == (
        "pooled", 32, "add_embedding.linear_1", "pooled", 80
    )
    assert model.weight_name(site) == "model.diffusion_model.label_emb.0.0.weight"
    assert model.kv_weights()[site.module_path].shape == (site.out_features, 32)
    pipe = StableDiffusionXLPipeline.from_pretrained(builtin_model_path("tiny-sdxl"), local_files_only=True)
    with torch.inference_mode():
        pooled = pipe.encode_prompt(PROMPTS, device="cpu", do_classifier_free_guidance=False)[2]
    for ours, theirs in zip(model.encode_pooled(PROMPTS), pooled):
        np.testing.assert_allclose(ours, theirs.double().numpy(), rtol=1e-6, atol=1e-6)
    full = pipe.unet.add_embedding.linear_1.weight.detach().numpy()
    np.testing.assert_array_equal(model.kv_weights()[site.module_path], full[:, :32])


def test_pooled_is_sdxl_only() -> None:
    assert _error("builtin:tiny-sd2", pooled=True) == (
        "builtin:tiny-sd2: options.pooled: only SDXL has a pooled text path; this is sd2"
    )


@pytest.mark.parametrize("name", ["tiny-sd2", "tiny-sdxl"])
def test_single_file_loads_in_diffusers_with_a_local_config(name) -> None:
    """Every component of the written single file (UNet, VAE, CLIP-L, OpenCLIP) converts back bit-exactly
    through diffusers' own from_single_file, offline (research/ecosystem.md §3.5)."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    folder = builtin_model_path(name)
    cls = StableDiffusionXLPipeline if name == "tiny-sdxl" else StableDiffusionPipeline
    extra = {} if name == "tiny-sdxl" else {"safety_checker": None, "requires_safety_checker": False}
    ours = cls.from_single_file(str(builtin_model_path(f"{name}.safetensors")), config=str(folder),
                                local_files_only=True, **extra)
    theirs = cls.from_pretrained(folder, local_files_only=True, **extra)
    for component in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if getattr(theirs, component, None) is None:
            continue
        a, b = getattr(ours, component).state_dict(), getattr(theirs, component).state_dict()
        assert sorted(a) == sorted(b), component
        for key in b:
            assert torch.equal(a[key], b[key]), f"{component}.{key}"
