"""DiT site names across layouts, pinned against the loaders' source.

kohya's names, from kohya-ss/sd-scripts@48d368fa557731ad0488c07304dfeba8c07910eb: ``networks/lora_flux.py``
and ``lora_sd3.py`` build ``"lora_unet" + "." + module path`` with every ``.`` → ``_`` over kohya's own
BFL/SAI modules (``library/flux_models.py``: ``txt_in``, ``vector_in.in_layer``;
``library/sd3_models.py``: ``context_embedder``, ``y_embedder.mlp.0``); musubi-tuner's Wan network
(``networks/lora_wan.py``) does the same over ``WanAttentionBlock`` (``blocks.{i}.cross_attn.k``).
"""

from __future__ import annotations

import pytest
from erasec.ir import VerifyError
from erasec.ir.dit_naming import (
    comfy_weight_key,
    dit_diffusers_path,
    is_dit_site,
    native_module_path,
    native_weight_name,
)
from erasec.ir.naming import kohya_module_name, peft_adapter_config, peft_module_name

# (family, diffusers module path, native path, kohya module name)
TABLE = [
    ("flux", "context_embedder", "txt_in", "lora_unet_txt_in"),
    ("flux", "time_text_embed.text_embedder.linear_1", "vector_in.in_layer", "lora_unet_vector_in_in_layer"),
    ("chroma", "context_embedder", "txt_in", "lora_unet_txt_in"),
    ("sd3", "context_embedder", "context_embedder", "lora_unet_context_embedder"),
    ("sd3", "time_text_embed.text_embedder.linear_1", "y_embedder.mlp.0", "lora_unet_y_embedder_mlp_0"),
    ("wan", "blocks.0.attn2.to_k", "blocks.0.cross_attn.k", "lora_unet_blocks_0_cross_attn_k"),
    ("wan", "blocks.29.attn2.to_v", "blocks.29.cross_attn.v", "lora_unet_blocks_29_cross_attn_v"),
]


@pytest.mark.parametrize(("family", "diffusers", "native", "kohya"), TABLE)
def test_every_layout_name(family, diffusers, native, kohya):
    assert native_module_path(diffusers, family) == native
    assert dit_diffusers_path(native, family) == diffusers
    assert kohya_module_name(diffusers, family) == kohya
    assert peft_module_name(diffusers, family) == f"transformer.{diffusers}"
    assert comfy_weight_key(diffusers, family) == f"diffusion_model.{native}.weight"
    assert native_weight_name(diffusers, family) == f"{native}.weight"
    assert native_weight_name(diffusers, family, "model.diffusion_model.") == f"model.diffusion_model.{native}.weight"


def test_sd_names_unchanged():
    assert peft_module_name("mid_block.attentions.0.transformer_blocks.0.attn2.to_k", "sdxl").startswith("unet.")
    assert peft_adapter_config("sd1", 2, ["b", "a"]) == {"unet.r": 2, "unet.lora_alpha": 2, "unet.target_modules": ["a", "b"]}
    assert peft_adapter_config("wan", 2, ["b"]) == {
        "transformer.r": 2, "transformer.lora_alpha": 2, "transformer.target_modules": ["b"]
    }


@pytest.mark.parametrize(
    ("family", "path", "message"),
    [
        ("chroma", "time_text_embed.text_embedder.linear_1",
         "site time_text_embed.text_embedder.linear_1: not a chroma site erasec edits (context_embedder)"),
        ("flux", "transformer_blocks.0.attn.add_k_proj",
         ("site transformer_blocks.0.attn.add_k_proj: not a flux site erasec edits "
          "(context_embedder or time_text_embed.text_embedder.linear_1)")),
        ("wan", "blocks.0.attn1.to_k", "site blocks.0.attn1.to_k: not a wan site erasec edits (blocks.{i}.attn2.to_k/to_v)"),
        ("sd1", "context_embedder", "family 'sd1' is not a diffusion transformer (flux, chroma, sd3, wan)"),
    ],
)
def test_refuses_a_site_the_family_does_not_edit(family, path, message):
    with pytest.raises(VerifyError) as caught:
        native_module_path(path, family)
    assert str(caught.value) == message
    assert not is_dit_site(path, family) or family == "sd1"


def test_refuses_an_unknown_single_file_prefix():
    with pytest.raises(VerifyError, match=r"single-file prefix 'diffusion_model\.' is not one of"):
        native_weight_name("context_embedder", "flux", "diffusion_model.")
