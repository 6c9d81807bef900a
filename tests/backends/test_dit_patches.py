"""DiT patches through erasec's own writers, loaded by each runtime's real key mapping.

For each diffusion-transformer family (FLUX.1, Chroma, SD3, Wan) a tiny transformer is built in code
at diffusers' own test shapes, a known random ΔW = W0·(T − I) (the shared form every erasec edit
has) is written by ``backends/peft.py`` / ``backends/kohya.py`` through ``patches.manifest.write_patch``
(which runs the reader's checks), read back with ``read_patch``, and:

* diffusers 0.42.1: the family's pipeline (built from components, no download) ``load_lora_weights``
  + ``fuse_lora(lora_scale=1.0)``: every edited weight equals W0 + ΔW to 1e-5 relative, every other
  tensor is bit-identical (PEFT names); the kohya names' measured outcome is pinned too (FLUX and
  Chroma: loaded without an error and silently dropped; SD3: ignored; Wan: refused);
* ComfyUI: the names resolve through ComfyUI's key map and LoRA adapter rules, pinned as data below
  from Comfy-Org/ComfyUI@a125cd84b054a57729b5eecab930ca9408719832 (``comfy/lora.py``
  ``model_lora_keys_unet`` and ``load_lora``, ``comfy/utils.py`` ``flux_to_diffusers`` /
  ``MMDIT_MAP_BASIC``, ``comfy/weight_adapter/lora.py`` ``LoRAAdapter.load``; ComfyUI is not on PyPI),
  and applying them by ComfyUI's rule (``W += strength · alpha/r · up @ down``, alpha absent → 1)
  gives W0 + ΔW.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from erasec.backends.kohya import KohyaOptions, build_kohya
from erasec.backends.peft import PeftOptions, build_peft
from erasec.ir import (
    KeySpace,
    LinearSite,
    ModelTarget,
    Solution,
    SolveReport,
    SpaceSolution,
)
from erasec.ir.dit_naming import CONTEXT_SITE, POOLED_SITE, dit_diffusers_path
from erasec.patches.manifest import Manifest, write_patch
from erasec.patches.pin import base_pin
from erasec.patches.read import read_patch

REL_TOL = 1e-5  # fp32 W0 + B·A formed by PEFT against the float64 W0 + ΔW
RANK = 3


def _flux():
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
    )


def _chroma():
    from diffusers import ChromaTransformer2DModel

    return ChromaTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=[4, 4, 8], approximator_hidden_dim=32,
        approximator_layers=1, approximator_num_channels=16,
    )


def _sd3():
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(
        sample_size=32, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=4,
        caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=64, out_channels=4,
    )


def _wan():
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
        text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
    )


def _pipeline(family: str, transformer):
    """The family's diffusers pipeline around ``transformer``; no other component is needed to load
    and fuse a transformer LoRA."""
    import diffusers

    scheduler = diffusers.FlowMatchEulerDiscreteScheduler()
    if family == "flux":
        return diffusers.FluxPipeline(
            scheduler=scheduler, vae=None, text_encoder=None, tokenizer=None, text_encoder_2=None,
            tokenizer_2=None, transformer=transformer,
        )
    if family == "chroma":
        return diffusers.ChromaPipeline(
            scheduler=scheduler, vae=None, text_encoder=None, tokenizer=None, transformer=transformer
        )
    if family == "sd3":
        return diffusers.StableDiffusion3Pipeline(
            transformer=transformer, scheduler=scheduler, vae=None, text_encoder=None, tokenizer=None,
            text_encoder_2=None, tokenizer_2=None, text_encoder_3=None, tokenizer_3=None,
        )
    return diffusers.WanPipeline(tokenizer=None, text_encoder=None, vae=None, scheduler=scheduler, transformer=transformer)


WAN_SITES = [(f"blocks.{i}.attn2.to_{kind}", kind) for i in range(2) for kind in "kv"]
# family: (transformer factory, [(space, [(site, role)])])
FAMILIES = {
    "flux": (_flux, [("t5", [(CONTEXT_SITE, "context")]), ("pooled", [(POOLED_SITE, "pooled")])]),
    "chroma": (_chroma, [("t5", [(CONTEXT_SITE, "context")])]),
    "sd3": (_sd3, [("clip+t5", [(CONTEXT_SITE, "context")]), ("pooled", [(POOLED_SITE, "pooled")])]),
    "wan": (_wan, [("umt5", WAN_SITES)]),
}

# ComfyUI's key map for these sites, pinned from Comfy-Org/ComfyUI@a125cd8 comfy/lora.py
# model_lora_keys_unet: every model weight "diffusion_model.<k>.weight" gets the LoRA names
# "lora_unet_<k with . → _>" and "diffusion_model.<k>"; a Flux model (Chroma subclasses it) adds
# "transformer.<diffusers path>" through comfy/utils.py flux_to_diffusers ("txt_in.weight" ↔
# "context_embedder.weight", "vector_in.in_layer.weight" ↔ "time_text_embed.text_embedder.linear_1.weight"),
# an SD3 model the same through mmdit_to_diffusers / MMDIT_MAP_BASIC ("y_embedder.mlp.0.weight" ↔
# "time_text_embed.text_embedder.linear_1.weight"); a WAN21 model adds nothing.
COMFY_KEY_MAP = {
    "flux": {
        "lora_unet_txt_in": "diffusion_model.txt_in.weight",
        "diffusion_model.txt_in": "diffusion_model.txt_in.weight",
        "transformer.context_embedder": "diffusion_model.txt_in.weight",
        "lora_unet_vector_in_in_layer": "diffusion_model.vector_in.in_layer.weight",
        "diffusion_model.vector_in.in_layer": "diffusion_model.vector_in.in_layer.weight",
        "transformer.time_text_embed.text_embedder.linear_1": "diffusion_model.vector_in.in_layer.weight",
    },
    "chroma": {
        "lora_unet_txt_in": "diffusion_model.txt_in.weight",
        "diffusion_model.txt_in": "diffusion_model.txt_in.weight",
        "transformer.context_embedder": "diffusion_model.txt_in.weight",
    },
    "sd3": {
        "lora_unet_context_embedder": "diffusion_model.context_embedder.weight",
        "diffusion_model.context_embedder": "diffusion_model.context_embedder.weight",
        "transformer.context_embedder": "diffusion_model.context_embedder.weight",
        "lora_unet_y_embedder_mlp_0": "diffusion_model.y_embedder.mlp.0.weight",
        "diffusion_model.y_embedder.mlp.0": "diffusion_model.y_embedder.mlp.0.weight",
        "transformer.time_text_embed.text_embedder.linear_1": "diffusion_model.y_embedder.mlp.0.weight",
    },
    "wan": {
        **{f"lora_unet_blocks_{i}_cross_attn_{c}": f"diffusion_model.blocks.{i}.cross_attn.{c}.weight"
           for i in range(2) for c in "kv"},
        **{f"diffusion_model.blocks.{i}.cross_attn.{c}": f"diffusion_model.blocks.{i}.cross_attn.{c}.weight"
           for i in range(2) for c in "kv"},
    },
}
# comfy/weight_adapter/lora.py LoRAAdapter.load: (up suffix, down suffix) pairs, in the order tried
COMFY_LORA_SUFFIXES = (
    (".lora_up.weight", ".lora_down.weight"), ("_lora.up.weight", "_lora.down.weight"),
    (".lora_B.weight", ".lora_A.weight"), (".lora.up.weight", ".lora.down.weight"),
)


def comfy_apply(tensors: dict, family: str, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """ComfyUI's load_lora + calculate_weight on a transformer's weights (by diffusers path), strength
    1: one patch per model weight (``patch_dict[to_load[x]]``), ``alpha`` = ``<x>.alpha`` / rank or 1.
    Raises if a tensor is not consumed (ComfyUI logs "lora key not loaded" and applies nothing of it)."""
    patched, consumed = dict(weights), set()
    for name, weight_key in COMFY_KEY_MAP[family].items():
        for up_suffix, down_suffix in COMFY_LORA_SUFFIXES:
            if name + up_suffix in tensors:
                up, down = (tensors[name + s].double().numpy() for s in (up_suffix, down_suffix))
                alpha = tensors[name + ".alpha"].item() / down.shape[0] if name + ".alpha" in tensors else 1.0
                consumed |= {name + up_suffix, name + down_suffix, name + ".alpha"}
                path = dit_diffusers_path(weight_key.removeprefix("diffusion_model.").removesuffix(".weight"), family)
                patched[path] = weights[path] + alpha * up @ down
                break
    left = sorted(set(tensors) - consumed)
    assert not left, f"ComfyUI would not load {left}"
    return patched


def _target_and_solution(family: str, weights: dict[str, np.ndarray]):
    rng = np.random.default_rng(7)
    spaces, solved = [], []
    for space, sites in FAMILIES[family][1]:
        dim = weights[sites[0][0]].shape[1]
        spaces.append(KeySpace(name=space, dim=dim, encoder="text_encoder", sites=tuple(
            LinearSite(module_path=path, out_features=weights[path].shape[0], in_features=dim, role=role)
            for path, role in sites
        )))
        solved.append(SpaceSolution(
            space=space, form="shared", rank=RANK, left=rng.standard_normal((dim, RANK)) / dim,
            right=rng.standard_normal((dim, RANK)), report=SolveReport(condition=1.0, residual=0.0, hard_rank=0),
            roles=tuple(sorted({role for _, role in sites})),
        ))
    return ModelTarget(family=family, name="tiny", spaces=tuple(spaces)), Solution(spaces=tuple(solved))


def _write(tmp_path: Path, family: str, layout: str, weights: dict[str, np.ndarray]):
    """The patch file erasec writes for a known ΔW per site, and those ΔW (float64)."""
    target, solution = _target_and_solution(family, weights)
    if layout == "peft":
        tensors, rank, header = build_peft(solution, target, weights, PeftOptions())
    else:
        (tensors, rank), header = build_kohya(solution, target, weights, KohyaOptions()), {}
    spec = {
        "erasec": 1, "name": "dit", "version": "1.0.0", "model": None, "method": "uce",
        "erase": [{"concept": "x", "anchor": "", "synonyms": [], "templates": [], "strength": 1.0}],
        "preserve": [], "options": {}, "output": {"format": layout, "dtype": "fp32", "rank": "auto"},
    }
    layers = {space.name: [site.module_path for site in space.sites] for space in target.spaces}
    manifest = Manifest(
        name="dit", version="1.0.0", compiler="0.1.0", family=family, model="tiny",
        spec_json=json.dumps(spec, sort_keys=True), pipeline="canonicalize,solve", rank=rank,
        spaces=tuple({"space": s, "form": "shared", "rank": RANK, "layers": ls, "condition": 1.0} for s, ls in layers.items()),
        report={"efficacy": {"x": 1.0}, "specificity": 1.0},
        base_pin=base_pin({f"{p}.weight": weights[p] for ls in layers.values() for p in ls}, dtype="fp32"),
        layout=layout,
        sequence_length=512,  # a DiT patch records the T5 padding it was built at
    )
    path = tmp_path / f"{family}-{layout}.safetensors"
    write_patch(path, tensors, {**manifest.metadata(), **header})
    deltas = {site.module_path: solution.space(space.name).delta(site.module_path, weights[site.module_path])
              for space in target.spaces for site in space.sites}
    return path, deltas


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def tiny(request):
    torch.manual_seed(0)
    transformer = FAMILIES[request.param][0]()
    return request.param, transformer


def _weights(transformer) -> dict[str, np.ndarray]:
    return {name.removesuffix(".weight"): value.double().numpy() for name, value in transformer.state_dict().items()
            if name.endswith(".weight") and value.ndim == 2}


def _fuse(family: str, path: Path):
    """(state before, state after) of a fresh copy of the family's tiny transformer."""
    torch.manual_seed(0)
    transformer = FAMILIES[family][0]()
    before = {k: v.detach().clone() for k, v in transformer.state_dict().items()}
    pipe = _pipeline(family, transformer)
    pipe.load_lora_weights(str(path), adapter_name="erase")
    pipe.fuse_lora(lora_scale=1.0, components=["transformer"])
    pipe.unload_lora_weights()
    return before, transformer.state_dict()


def test_peft_patch_fuses_to_w0_plus_delta_in_diffusers(tmp_path, tiny):
    family, transformer = tiny
    path, deltas = _write(tmp_path, family, "peft", _weights(transformer))
    assert read_patch(path).layers() == sorted(deltas)
    before, after = _fuse(family, path)
    assert sorted(after) == sorted(before)
    for key, value in after.items():
        path_ = key.removesuffix(".weight")
        if path_ in deltas:
            want = before[key].double().numpy() + deltas[path_]
            error = np.linalg.norm(value.double().numpy() - want) / np.linalg.norm(want)
            assert error < REL_TOL, f"{family} {key}: relative error {error:.2e}"
            assert np.linalg.norm(deltas[path_]) > 1e-2 * np.linalg.norm(want), "the edit is not trivial"
        else:
            assert torch.equal(value, before[key]), f"{family} {key} changed"


# diffusers 0.42.1 on kohya-named DiT files, measured: FluxLoraLoaderMixin's sd-scripts converter
# (lora_conversion_utils._convert_kohya_flux_lora_to_diffusers) maps lora_unet_txt_in to
# "context_embedder" without the "transformer." prefix, which load_lora_adapter then skips;
# SD3LoraLoaderMixin converts nothing and keeps only "transformer."-keys; WanLoraLoaderMixin sends
# lora_unet_* to the musubi converter, which needs every block module and raises KeyError.
KOHYA_IN_DIFFUSERS = {"flux": "ignored", "chroma": "ignored", "sd3": "ignored", "wan": KeyError}


def test_kohya_patch_in_diffusers_is_not_applied(tmp_path, tiny):
    family, transformer = tiny
    path, _ = _write(tmp_path, family, "kohya", _weights(transformer))
    assert read_patch(path).layers()
    outcome = KOHYA_IN_DIFFUSERS[family]
    if outcome == "ignored":
        before, after = _fuse(family, path)
        assert all(torch.equal(after[key], value) for key, value in before.items())
    else:
        with pytest.raises(outcome):
            _fuse(family, path)


@pytest.mark.parametrize("layout", ["peft", "kohya"])
def test_comfyui_key_map_applies_w0_plus_delta(tmp_path, tiny, layout):
    """Every tensor erasec writes resolves through ComfyUI's pinned key map to the right weight and
    gives W0 + ΔW; Wan's PEFT names are the one layout ComfyUI@a125cd8 does not map."""
    from safetensors.torch import load_file

    family, transformer = tiny
    weights = _weights(transformer)
    path, deltas = _write(tmp_path, family, layout, weights)
    tensors = load_file(str(path))
    if family == "wan" and layout == "peft":
        with pytest.raises(AssertionError, match="ComfyUI would not load"):
            comfy_apply(tensors, family, weights)
        return
    patched = comfy_apply(tensors, family, weights)
    for site, delta in deltas.items():
        np.testing.assert_allclose(patched[site], weights[site] + delta, rtol=0, atol=1e-6 * np.abs(delta).max())
    assert all(np.array_equal(patched[k], weights[k]) for k in weights if k not in deltas)
