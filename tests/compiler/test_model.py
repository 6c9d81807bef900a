"""The model frontend on SD1 (tiny-sd1 folder): target from the UNet header, k/v weights, and key rows as the SD1 pipeline makes them."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from erasec.compiler.errors import ModelError
from erasec.compiler.models.sd import SDModel
from erasec.compiler.models.open import open_model

ASTRONAUT = "a photo of an astronaut riding a horse on mars"
ASTRONAUT_IDS = [49406, 320, 1125, 539, 550, 18376, 6765, 320, 4558, 525, 7496, 49407]
# float32 encoder, rows compared across batches of different width/composition.
ROW_TOL = dict(rtol=1e-6, atol=1e-6)


def sd15_site_paths() -> list[str]:
    """SD1.5's 32 attn2 k/v module paths in model order (down, mid, up; k before v)."""
    blocks = [f"down_blocks.{b}.attentions.{a}" for b in range(3) for a in range(2)]
    blocks += ["mid_block.attentions.0"]
    blocks += [f"up_blocks.{b}.attentions.{a}" for b in range(1, 4) for a in range(3)]
    return [f"{block}.transformer_blocks.0.attn2.to_{role}" for block in blocks for role in "kv"]


@pytest.fixture(scope="module")
def model(tiny_sd1_path: Path) -> SDModel:
    return open_model("builtin:tiny-sd1")


@pytest.fixture(scope="module")
def pipeline(tiny_sd1_path: Path):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(
        tiny_sd1_path, safety_checker=None, requires_safety_checker=False, local_files_only=True
    )


def _fake_model(root: Path, source: Path, *, unet: dict[str, torch.Tensor] | None = None) -> Path:
    """A folder sharing ``source``'s text encoder and tokenizer, with the given UNet tensors."""
    root.mkdir()
    for component in ("text_encoder", "tokenizer"):
        (root / component).symlink_to(source / component, target_is_directory=True)
    (root / "unet").mkdir()
    if unet is not None:
        save_file(unet, str(root / "unet" / "diffusion_pytorch_model.safetensors"))
    return root


def _open_error(location: str | Path) -> str:
    with pytest.raises(ModelError) as caught:
        open_model(str(location))
    return str(caught.value)


# --- target ---------------------------------------------------------------------------------------


def test_target_has_sd15_sites_in_model_order(model: SDModel, tiny_sd1_path: Path) -> None:
    assert model.location == "builtin:tiny-sd1"
    assert model.path == tiny_sd1_path
    assert model.unet_weights_file == tiny_sd1_path / "unet" / "diffusion_pytorch_model.safetensors"
    target = model.target
    assert (target.family, target.name) == ("sd1", "builtin:tiny-sd1")
    (space,) = target.spaces
    assert (space.name, space.dim, space.encoder) == ("clip-l", 32, "text_encoder")
    assert [site.module_path for site in space.sites] == sd15_site_paths()
    assert [site.role for site in space.sites] == ["k", "v"] * 16
    up = space.site("up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_v")
    assert (up.out_features, up.in_features) == (32, 32)
    mid = space.site("mid_block.attentions.0.transformer_blocks.0.attn2.to_k")
    assert (mid.out_features, mid.in_features) == (64, 32)


def test_kv_weights_equal_diffusers_unet(model: SDModel, tiny_sd1_path: Path) -> None:
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_sd1_path / "unet", local_files_only=True)
    modules = dict(unet.named_modules())
    weights = model.kv_weights()
    assert list(weights) == sd15_site_paths()
    for path, array in weights.items():
        assert array.dtype == np.float32 and not array.flags.writeable
        np.testing.assert_array_equal(array, modules[path].weight.detach().numpy(), err_msg=path)
    assert model.kv_weights() is not weights and model.kv_weights()[path] is array  # cached


def test_large_kv_weights_are_read_on_demand(model: SDModel, monkeypatch) -> None:
    import erasec.compiler.models.site_weights as frontend

    cached = model.kv_weights()
    monkeypatch.setattr(frontend, "KV_CACHE_BYTES", 0)
    streamed = model.kv_weights()
    assert not isinstance(streamed, dict) and list(streamed) == list(cached)
    for path, array in cached.items():
        again = streamed[path]
        assert again is not array and again.dtype == np.float32 and not again.flags.writeable
        np.testing.assert_array_equal(again, array)
    reads = []
    monkeypatch.setattr(streamed._file, "tensors", lambda names: reads.append(names))
    assert next(iter(cached)) in streamed and "no.such.module" not in streamed
    assert reads == []  # membership reads nothing


def test_site_order_is_numeric_and_down_mid_up(tiny_sd1_path: Path, tmp_path: Path) -> None:
    names = [
        "up_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v",
        "up_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
        "mid_block.attentions.0.transformer_blocks.10.attn2.to_k",
        "mid_block.attentions.0.transformer_blocks.2.attn2.to_k",
        "down_blocks.10.attentions.0.transformer_blocks.0.attn2.to_k",
        "down_blocks.2.attentions.1.transformer_blocks.0.attn2.to_k",
        "down_blocks.2.attentions.0.transformer_blocks.0.attn2.to_k",
    ]
    unet = {f"{name}.weight": torch.zeros(8, 32) for name in names}
    unet["down_blocks.2.attentions.0.transformer_blocks.0.attn2.to_out.0.weight"] = torch.zeros(8, 8)
    opened = open_model(str(_fake_model(tmp_path / "model", tiny_sd1_path, unet=unet)))
    assert [site.module_path for site in opened.target.sites] == [
        "down_blocks.2.attentions.0.transformer_blocks.0.attn2.to_k",
        "down_blocks.2.attentions.1.transformer_blocks.0.attn2.to_k",
        "down_blocks.10.attentions.0.transformer_blocks.0.attn2.to_k",
        "mid_block.attentions.0.transformer_blocks.2.attn2.to_k",
        "mid_block.attentions.0.transformer_blocks.10.attn2.to_k",
        "up_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
        "up_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v",
    ]


@pytest.mark.parametrize("roles", [("k", "v"), ("v",)])
def test_site_gram_is_the_sum_of_the_edited_sites_grams(model: SDModel, roles, monkeypatch) -> None:
    monkeypatch.setattr("erasec.compiler.models.grams._GRAM_BLOCK", 5)  # several row blocks per matrix
    space = model.target.spaces[0]
    weights = model.kv_weights()
    expected = sum(
        np.asarray(weights[s.module_path], np.float64).T @ np.asarray(weights[s.module_path], np.float64)
        for s in space.sites
        if s.role in roles
    )
    gram = model.site_gram(space, roles)
    np.testing.assert_array_equal(gram, gram.T)
    np.testing.assert_allclose(gram, expected, rtol=1e-12, atol=1e-12 * np.abs(expected).max())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_unet_is_upcast(dtype: torch.dtype, model: SDModel, tmp_path: Path) -> None:
    tensors = {name: t.to(dtype) for name, t in load_file(str(model.unet_weights_file)).items()}
    half = open_model(str(_fake_model(tmp_path / "half", model.path, unet=tensors)))
    assert [s.module_path for s in half.target.sites] == sd15_site_paths()
    for path, array in half.kv_weights().items():
        assert array.dtype == np.float32
        expected = tensors[f"{path}.weight"].to(torch.float32).numpy()
        np.testing.assert_array_equal(array, expected, err_msg=path)


def test_open_and_kv_weights_do_not_load_the_text_encoder(tiny_sd1_path: Path, monkeypatch) -> None:
    import erasec.compiler.models.text_encoders as text_encoders

    calls = []
    original = text_encoders.assemble_clip

    def counting(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(text_encoders, "assemble_clip", counting)
    opened = open_model(str(tiny_sd1_path))
    opened.kv_weights()
    assert opened.tokenize(["x"]) == [[49406, 343, 49407]]
    assert calls == []
    opened.encode(["x"], padded=False)
    opened.encode(["y"], padded=True)
    assert len(calls) == 1


# --- tokenize / encode ----------------------------------------------------------------------------


def test_tokenize_real_ids(model: SDModel) -> None:
    ids = model.tokenize([ASTRONAUT, "", "word " * 90])
    assert ids[0] == ASTRONAUT_IDS
    assert ids[1] == [49406, 49407]
    assert len(ids[2]) == 77 and ids[2][-1] == 49407


def test_unpadded_rows_are_prefix_of_padded(model: SDModel) -> None:
    prompts = [ASTRONAUT, "a cat", "van gogh", ""]
    short = model.encode(prompts, padded=False)
    full = model.encode(prompts, padded=True)
    for prompt, ids, rows, padded_rows in zip(prompts, model.tokenize(prompts), short, full):
        assert rows.shape == (len(ids), 32) and padded_rows.shape == (77, 32), prompt
        assert rows.dtype == np.float64 and padded_rows.dtype == np.float64
        np.testing.assert_allclose(rows, padded_rows[: len(ids)], **ROW_TOL, err_msg=prompt)


def test_padded_equals_pipeline_encode_prompt(model: SDModel, pipeline) -> None:
    prompts = ["a cat", ASTRONAUT, "van gogh"]
    with torch.inference_mode():
        expected, _ = pipeline.encode_prompt(prompts, "cpu", 1, False)
    ours = model.encode(prompts, padded=True)
    for index, prompt in enumerate(prompts):
        np.testing.assert_allclose(ours[index], expected[index].double().numpy(), **ROW_TOL, err_msg=prompt)


def test_caller_order_duplicates_and_chunks(model: SDModel, pipeline) -> None:
    # 70 distinct prompts of five lengths span two batches of 64; each prompt's rows equal its rows
    # encoded alone, to fp32 rounding (the last bits follow the batch: docs/patch-format.md).
    prompts = [f"artist {i} " + "painting " * (i % 5) for i in range(70)]
    asked = list(reversed(prompts)) + [prompts[3]]
    rows = model.encode(asked, padded=False)
    assert len(rows) == len(asked)
    np.testing.assert_array_equal(rows[-1], rows[len(prompts) - 1 - 3])
    encoder = pipeline.text_encoder
    for prompt, got in zip(asked[::7], rows[::7]):
        ids = torch.tensor([model.tokenize([prompt])[0]])
        with torch.inference_mode():
            alone = encoder(input_ids=ids).last_hidden_state[0].double().numpy()
        np.testing.assert_allclose(got, alone, **ROW_TOL, err_msg=prompt)
    assert model.encode([], padded=True) == []


def test_encode_is_deterministic(model: SDModel) -> None:
    first = model.encode(["a cat", "a dog"], padded=True)
    second = model.encode(["a cat", "a dog"], padded=True)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    assert np.abs(first[0] - first[1]).max() > 1e-2


# --- refusals ---------------------------------------------------------------------------------------


def test_missing_folder(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    assert _open_error(missing) == (
        f"{missing}: no such file or folder; give a diffusers folder, a single-file .safetensors "
        "checkpoint or builtin:NAME (or a hub id ORG/NAME in the local Hugging Face cache)"
    )


def test_file_that_is_not_safetensors(tmp_path: Path) -> None:
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"x")
    assert _open_error(checkpoint) == (
        f"{checkpoint}: not a readable safetensors file (Error while deserializing header: "
        "header too small); re-download or re-save it"
    )


@pytest.mark.parametrize("component", ["unet", "text_encoder", "tokenizer"])
def test_missing_component(component: str, tiny_sd1_path: Path, tmp_path: Path) -> None:
    root = tmp_path / "model"
    root.mkdir()
    for name in ("unet", "text_encoder", "tokenizer"):
        if name != component:
            (root / name).symlink_to(tiny_sd1_path / name, target_is_directory=True)
    assert _open_error(root) == (
        f"{root}: no {component}/ folder; expected a diffusers Stable Diffusion folder "
        "with unet/, text_encoder/ and tokenizer/ (or a single-file checkpoint)"
    )


def test_bin_only_unet(tiny_sd1_path: Path, tmp_path: Path) -> None:
    root = _fake_model(tmp_path / "model", tiny_sd1_path)
    (root / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"pickle")
    unet_file = root / "unet" / "diffusion_pytorch_model.safetensors"
    assert _open_error(root) == (
        f"{unet_file}: no such file; erasec reads only safetensors (.bin pickles are not read), "
        "re-save the UNet with safe_serialization=True"
    )


def test_unet_without_cross_attention(tiny_sd1_path: Path, tmp_path: Path) -> None:
    root = _fake_model(tmp_path / "model", tiny_sd1_path, unet={"conv_in.weight": torch.zeros(4, 4, 3, 3)})
    unet_file = root / "unet" / "diffusion_pytorch_model.safetensors"
    assert _open_error(root) == f"{unet_file}: no attn2.to_k/attn2.to_v weights; not a Stable Diffusion UNet"


def test_unet_text_width_mismatch(tiny_sd1_path: Path, tmp_path: Path) -> None:
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    root = _fake_model(tmp_path / "model", tiny_sd1_path, unet={name: torch.zeros(32, 768)})
    unet_file = root / "unet" / "diffusion_pytorch_model.safetensors"
    assert _open_error(root) == (
        f"{unet_file}: {name} reads 768 features but the text encoders give 32; "
        "the UNet and text encoder do not belong together"
    )


@pytest.mark.parametrize(
    ("damage", "detail"),
    [
        ("truncate", "Error while deserializing header: incomplete metadata, file not fully covered"),
        ("garbage", "Error while deserializing header: header too large"),
    ],
)
def test_corrupt_unet_file(damage: str, detail: str, tiny_sd1_path: Path, tmp_path: Path) -> None:
    root = _fake_model(tmp_path / "model", tiny_sd1_path)
    unet_file = root / "unet" / "diffusion_pytorch_model.safetensors"
    data = (tiny_sd1_path / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    unet_file.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"not a safetensors file at all")
    assert _open_error(root) == (
        f"{unet_file}: not a readable safetensors file ({detail}); re-download or re-save it"
    )


def test_unknown_builtin() -> None:
    from erasec.compiler.models.builtin import BUILTIN_MODELS

    assert _open_error("builtin:nope") == (
        f"builtin:nope: unknown built-in model; available: {', '.join(BUILTIN_MODELS)} "
        "(add .safetensors for a single file)"
    )


def test_copy_of_builtin_opens_from_plain_path(tiny_sd1_path: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_sd1_path, copy)
    opened = open_model(str(copy))
    assert opened.target.name == str(copy)
    assert [s.module_path for s in opened.target.sites] == sd15_site_paths()
