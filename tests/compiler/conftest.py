"""Session fixtures of the compiler tests: the ONNX graphs, patches and PyTorch references the ONNX
tests share, each built once per session on first use (a UNet export takes seconds to half a minute
on 2 cores). Imports are inside the fixtures, so collecting a test that needs none loads no onnx."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_helpers import DIT_MODELS, dit_parity_spec, onnx_output, parity_spec, transformer_output, unet_output


@pytest.fixture(scope="session")
def unet_graphs(tmp_path_factory, erasec_cache_dir):
    """(model, exporter) → the model's UNet graph, exported on first use (``tiny-sd1.safetensors``:
    the single-file copy, UNet config from its header)."""
    from erasec.compiler.onnx_graphs.export import ExportOptions
    from erasec.compiler.onnx_graphs.export_model import export_onnx

    folder = tmp_path_factory.mktemp("onnx-export")
    graphs = {}

    def graph(model: str, exporter: str):
        if (model, exporter) not in graphs:
            options = ExportOptions(exporter=exporter, dynamic=exporter == "legacy", components=("unet",))
            graphs[model, exporter] = export_onnx(f"builtin:{model}", folder / model / exporter, options).files["unet"]
        return graphs[model, exporter]

    return graph


@pytest.fixture(scope="session")
def onnx_patch(tmp_path_factory, erasec_cache_dir):
    """model → its parity patch (kohya), built on first use."""
    from erasec.compiler.build import build

    patches = {}

    def patch(model: str = "tiny-sd1"):
        if model not in patches:
            folder = tmp_path_factory.mktemp(f"onnx-patch-{model}")
            (folder / "spec.yaml").write_text(parity_spec(model))
            build(folder / "spec.yaml", folder / "patch.safetensors")
            patches[model] = folder / "patch.safetensors"
        return patches[model]

    return patch


@pytest.fixture(scope="session")
def reference(onnx_patch):
    """model → inputs (batch 2, 16×16 latents, 77 tokens; SDXL: text_embeds and the time_ids of a
    32×32 image) and the PyTorch UNet's output before and after diffusers fuses the patch at 1.0."""
    import torch
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from erasec.backends.onnx.runtime import sdxl_time_ids
    from erasec.compiler.models.builtin import builtin_model_path

    references = {}

    def outputs(model: str = "tiny-sd1"):
        if model in references:
            return references[model]
        sdxl = model == "tiny-sdxl"
        generator = torch.Generator().manual_seed(1)
        feeds = {
            "sample": torch.randn(2, 4, 16, 16, generator=generator),
            "timestep": torch.tensor([500.0]),
            "encoder_hidden_states": torch.randn(2, 77, 192 if sdxl else 32, generator=generator),
        }
        if sdxl:
            feeds["text_embeds"] = torch.randn(2, 32, generator=generator)
            feeds["time_ids"] = torch.tensor(np.tile(sdxl_time_ids(32, 32, 6), (2, 1)), dtype=torch.float32)
            pipe = StableDiffusionXLPipeline.from_pretrained(builtin_model_path(model), local_files_only=True)
        else:
            pipe = StableDiffusionPipeline.from_pretrained(
                builtin_model_path(model), safety_checker=None, requires_safety_checker=False, local_files_only=True
            )
        patch = onnx_patch(model)
        with torch.no_grad():
            base = unet_output(pipe.unet, feeds)
            pipe.load_lora_weights(str(patch.parent), weight_name=patch.name)
            pipe.fuse_lora(lora_scale=1.0)
            fused = unet_output(pipe.unet, feeds)
        assert np.max(np.abs(fused - base)) > 1e-2, "the patch must change the output for parity to mean anything"
        references[model] = ({name: value.numpy() for name, value in feeds.items()}, base, fused)
        return references[model]

    return outputs


@pytest.fixture(scope="session")
def unpatched(unet_graphs, reference):
    """(model, exporter) → the exported graph's output on the reference inputs."""
    outputs = {}

    def output(model: str, exporter: str):
        if (model, exporter) not in outputs:
            outputs[model, exporter] = onnx_output(unet_graphs(model, exporter), reference(model)[0])
        return outputs[model, exporter]

    return output


@pytest.fixture(scope="session")
def reference_parts(tiny_sd1_path):
    """builtin:tiny-sd1 as the reference scripts load it: transformers' tokenizer and text encoder and
    diffusers' UNet, with every attn2 to_k/to_v weight in float64 (test_reference, test_referees)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tiny_sd1_path / "tokenizer", local_files_only=True)
    encoder = CLIPTextModel.from_pretrained(tiny_sd1_path / "text_encoder", local_files_only=True).eval()
    unet = UNet2DConditionModel.from_pretrained(tiny_sd1_path / "unet", local_files_only=True)
    layers = {
        name: module.weight.detach().double()
        for name, module in unet.named_modules()
        if "attn2" in name and (name.endswith("to_k") or name.endswith("to_v"))
    }
    return tokenizer, encoder, layers


@pytest.fixture(scope="session")
def transformer_graphs(tmp_path_factory, erasec_cache_dir):
    """(family, exporter) → its tiny built-in's transformer graph, exported on first use (dynamic shapes:
    the parity feeds are smaller than the export's example)."""
    from erasec.compiler.onnx_graphs.export import ExportOptions
    from erasec.compiler.onnx_graphs.export_model import export_onnx

    folder = tmp_path_factory.mktemp("onnx-dit-export")
    graphs = {}

    def graph(family: str, exporter: str = "dynamo"):
        if (family, exporter) not in graphs:
            options = ExportOptions(exporter=exporter, components=("transformer",))
            result = export_onnx(f"builtin:{DIT_MODELS[family]}", folder / family / exporter, options)
            graphs[family, exporter] = result.files["transformer"]
        return graphs[family, exporter]

    return graph


@pytest.fixture(scope="session")
def dit_onnx_patch(tmp_path_factory, erasec_cache_dir):
    """family → its DiT parity patch (PEFT), built on first use (Wan 2.2: the first expert's)."""
    from erasec.compiler.build import build

    patches = {}

    def patch(family: str = "flux"):
        if family not in patches:
            folder = tmp_path_factory.mktemp(f"onnx-dit-patch-{family}")
            (folder / "spec.yaml").write_text(dit_parity_spec(DIT_MODELS[family]) + "output: {format: peft}\n")
            build(folder / "spec.yaml", folder / "patch.safetensors")
            patches[family] = folder / "patch.safetensors"
        return patches[family]

    return patch


@pytest.fixture(scope="session")
def dit_reference(transformer_graphs, dit_onnx_patch):
    """(family, exporter) → example inputs (``transformer_inputs`` on its graph: batch 2, Chroma's 1;
    8 × 8 latents, 77 text rows), the PyTorch transformer's output before and after diffusers fuses the
    patch at 1.0 (the pipeline's own ``load_lora_weights`` + ``fuse_lora``), and the unpatched graph's."""
    from diffusers import DiffusionPipeline

    from erasec.backends.onnx.runtime import open_session, transformer_inputs
    from erasec.compiler.models.builtin import builtin_model_path

    references = {}

    def outputs(family: str = "flux", exporter: str = "dynamo"):
        if (family, exporter) in references:
            return references[family, exporter]
        graph = transformer_graphs(family, exporter)
        feeds = transformer_inputs(open_session(graph, ["CPUExecutionProvider"]), batch=2, size=8, seed=1)
        pipe = DiffusionPipeline.from_pretrained(builtin_model_path(DIT_MODELS[family]), local_files_only=True)
        base = transformer_output(pipe.transformer, feeds)
        patch = dit_onnx_patch(family)
        pipe.load_lora_weights(str(patch.parent), weight_name=patch.name)
        pipe.fuse_lora(lora_scale=1.0)
        fused = transformer_output(pipe.transformer, feeds)
        assert np.max(np.abs(fused - base)) > 1e-3, "the patch must change the output for parity to mean anything"
        references[family, exporter] = (feeds, base, fused, onnx_output(graph, feeds))
        return references[family, exporter]

    return outputs
