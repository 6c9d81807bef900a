"""The ONNX path end to end on ``builtin:tiny-sd1`` (CPU, fp32): export, patch, run.

Parity (issue 6): the patched ONNX UNet against diffusers' own LoRA path — ``load_lora_weights``
then ``fuse_lora(1.0)`` — on the same inputs, max abs difference ≤ 1e-4, for bake, switchable and
adapter, on graphs from both exporters (legacy TorchScript with dynamic axes; dynamo with static
shapes, which exports faster). Measured here: about 1e-6 in every case. Each graph is exported
once per session.
"""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir
import pytest
import torch
from click.testing import CliRunner

from erasec.backends.errors import BackendError
from erasec.backends.onnx import load_graph
from erasec.compiler.build import build
from erasec.compiler.cli import cli
from erasec.compiler.errors import BuildError
from erasec.compiler.onnx_apply import apply_onnx
from erasec.compiler.onnx_export import ExportOptions, export_onnx
from erasec.compiler.onnx_runtime import choose_providers, open_session, run_step, unet_inputs

PARITY = 1e-4  # issue 6's bound on max |ONNX − PyTorch fused|
SPEC = """\
erasec: 1
name: onnx-parity
version: 1.0.0
model: builtin:tiny-sd1
method: uce
erase:
  - {concept: Van Gogh, anchor: art}
  - {concept: Kelly McKernan}
preserve: [Claude Monet]
"""


@pytest.fixture(scope="session")
def unet_graphs(tmp_path_factory, tiny_sd1_path):
    """exporter → UNet graph of builtin:tiny-sd1, exported once."""
    folder = tmp_path_factory.mktemp("onnx-export")
    legacy = export_onnx("builtin:tiny-sd1", folder / "legacy", ExportOptions(exporter="legacy", components=("unet",)))
    dynamo = export_onnx(
        "builtin:tiny-sd1", folder / "dynamo", ExportOptions(exporter="dynamo", dynamic=False, components=("unet",))
    )
    return {"legacy": legacy.files["unet"], "dynamo": dynamo.files["unet"]}


@pytest.fixture(scope="session")
def onnx_patch(tmp_path_factory, tiny_sd1_path):
    folder = tmp_path_factory.mktemp("onnx-patch")
    (folder / "spec.yaml").write_text(SPEC)
    build(folder / "spec.yaml", folder / "patch.safetensors")
    return folder / "patch.safetensors"


@pytest.fixture(scope="session")
def reference(tiny_sd1_path, onnx_patch):
    """Inputs (batch 2, 16×16 latents, 77 tokens) and the PyTorch UNet's output before and after
    diffusers fuses the patch at scale 1.0."""
    from diffusers import StableDiffusionPipeline

    generator = torch.Generator().manual_seed(1)
    feeds = {
        "sample": torch.randn(2, 4, 16, 16, generator=generator),
        "timestep": torch.tensor([500.0]),
        "encoder_hidden_states": torch.randn(2, 77, 32, generator=generator),
    }
    pipe = StableDiffusionPipeline.from_pretrained(
        tiny_sd1_path, safety_checker=None, requires_safety_checker=False, local_files_only=True
    )
    with torch.no_grad():
        base = pipe.unet(*feeds.values()).sample.numpy()
        pipe.load_lora_weights(str(onnx_patch.parent), weight_name=onnx_patch.name)
        pipe.fuse_lora(lora_scale=1.0)
        fused = pipe.unet(*feeds.values()).sample.numpy()
    assert np.max(np.abs(fused - base)) > 1e-2, "the patch must change the output for parity to mean anything"
    return {name: value.numpy() for name, value in feeds.items()}, base, fused


def _run(path, feeds, **kwargs) -> np.ndarray:
    session = open_session(path, ["CPUExecutionProvider"])
    return run_step(session, feeds, **kwargs)[0]


@pytest.fixture(scope="session")
def unpatched(unet_graphs, reference):
    """exporter → the exported graph's output on the reference inputs."""
    return {exporter: _run(path, reference[0]) for exporter, path in unet_graphs.items()}


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_exported_unet_matches_pytorch(unpatched, reference, exporter):
    _, base, _ = reference
    assert np.max(np.abs(unpatched[exporter] - base)) <= PARITY


@pytest.mark.parametrize("mode", ["bake", "switchable", "adapter"])
@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_patched_graph_matches_diffusers_fused_lora(
    unet_graphs, unpatched, onnx_patch, reference, tmp_path, exporter, mode
):
    feeds, _, fused = reference
    result = apply_onnx(onnx_patch, unet_graphs[exporter], tmp_path / "unet.onnx", mode=mode)
    assert result["sites"] == 32 and result["confirmed_by"] == "base pin"
    assert result["found_by"] == (["node name"] if exporter == "legacy" else ["name_scopes"])
    session = open_session(result["files"][0], ["CPUExecutionProvider"])
    adapter = result["files"][1] if mode == "adapter" else None
    patched = run_step(session, feeds, adapter=adapter)[0]
    assert np.max(np.abs(patched - fused)) <= PARITY
    if mode != "bake":  # switched off (erase_scale 0, or no adapter): the unpatched graph, bit for bit
        off = run_step(session, feeds, erase_scale=0.0 if mode == "switchable" else None)[0]
        assert np.array_equal(off, unpatched[exporter])


def test_switchable_graph_has_one_projection_for_a_shared_map_patch(unet_graphs, onnx_patch, tmp_path):
    result = apply_onnx(onnx_patch, unet_graphs["legacy"], tmp_path / "unet.onnx", mode="switchable")
    model = load_graph(result["files"][0])
    steps = sorted(node.name.rsplit("/", 1)[-1] for node in model.graph if (node.name or "").startswith("erasec/"))
    assert steps.count("down") == 1  # MatMul(encoder_hidden_states, Rᵀ) serves all 32 sites
    assert steps.count("up") == steps.count("scale") == steps.count("add") == 32
    assert model.metadata_props["erasec.onnx.mode"] == "switchable"
    assert model.metadata_props["erasec.name"] == "onnx-parity"


def test_legacy_export_has_dynamic_batch_and_size(unet_graphs):
    session = open_session(unet_graphs["legacy"], ["CPUExecutionProvider"])
    assert run_step(session, unet_inputs(session, batch=1, size=24))[0].shape == (1, 4, 24, 24)


def _pack_kv(source, target) -> None:
    """What ORT's transformer optimizer does to a cross-attention (research/ecosystem.md §4.5):
    K and V become one MatMul over a packed initializer, split afterwards."""
    model = load_graph(source)
    graph = model.graph
    prefix = "/unet/down_blocks.0/attentions.0/transformer_blocks.0/attn2/"
    k, v = (next(n for n in graph if n.name == f"{prefix}{r}/MatMul") for r in ("to_k", "to_v"))
    packed = np.concatenate([k.inputs[1].const_value.numpy(), v.inputs[1].const_value.numpy()], axis=1)
    weight = ir.Value(name="MatMul_KV_weight", const_value=ir.tensor(packed, name="MatMul_KV_weight"))
    graph.register_initializer(weight)
    kv = ir.node("MatMul", [k.inputs[0], weight], name=f"{prefix}MatMul_KV")
    sizes = ir.Value(name="split_sizes", const_value=ir.tensor(np.array([packed.shape[1] // 2] * 2), name="split_sizes"))
    graph.register_initializer(sizes)
    split = ir.node("Split", [kv.outputs[0], sizes], attributes={"axis": -1}, num_outputs=2, name="split_kv")
    graph.insert_before(k, [kv, split])
    for old, new in ((k, split.outputs[0]), (v, split.outputs[1])):
        old.outputs[0].replace_all_uses_with(new)
        graph.remove(old, safe=True)
    ir.save(model, target)


def test_a_fused_graph_is_refused_with_the_fix(unet_graphs, onnx_patch, tmp_path):
    packed = tmp_path / "optimized.onnx"
    _pack_kv(unet_graphs["legacy"], packed)
    with pytest.raises(BackendError) as error:
        apply_onnx(onnx_patch, packed, tmp_path / "out.onnx", mode="bake")
    assert str(error.value) == (
        f"{packed}: 2 of 32 sites not found, first down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k "
        "(no MatMul with that module path in its node name, name_scopes metadata or initializer name); "
        "patch the graph as exported, before ONNX Runtime's transformer optimizer "
        "(or optimise with --disable_packed_kv --disable_packed_qkv)"
    )
    assert not (tmp_path / "out.onnx").exists()


def test_a_patched_graph_does_not_take_the_patch_again(unet_graphs, onnx_patch, tmp_path):
    once = apply_onnx(onnx_patch, unet_graphs["dynamo"], tmp_path / "once.onnx", mode="bake")
    with pytest.raises(BackendError, match=r"once.onnx: already patched \(onnx-parity, bake\); patch the unpatched export"):
        apply_onnx(onnx_patch, once["files"][0], tmp_path / "twice.onnx", mode="switchable")
    stripped = load_graph(once["files"][0])
    stripped.metadata_props.clear()  # no record left: the base pin still tells
    ir.save(stripped, tmp_path / "stripped.onnx")
    with pytest.raises(BackendError, match=r"32 of the 32 located K/V weights differ from the patch's base pin"):
        apply_onnx(onnx_patch, tmp_path / "stripped.onnx", tmp_path / "twice.onnx", mode="bake")
    with pytest.raises(BuildError, match=r"is the input graph; write the patched graph to a new path"):
        apply_onnx(onnx_patch, once["files"][0], once["files"][0])


def test_build_with_output_format_onnx(unet_graphs, reference, tmp_path):
    spec = SPEC + f"output: {{format: onnx, mode: switchable, graph: {unet_graphs['dynamo']}}}\n"
    (tmp_path / "spec.yaml").write_text(spec)
    result = build(tmp_path / "spec.yaml", tmp_path / "erased.onnx")
    assert result.format == "onnx"
    feeds, base, fused = reference
    graph = tmp_path / "erased.onnx"
    assert np.max(np.abs(_run(graph, feeds) - fused)) <= PARITY  # float64 solution vs the fp32 patch file
    assert np.max(np.abs(_run(graph, feeds, erase_scale=0.0) - base)) <= PARITY
    assert json.loads(load_graph(graph).metadata_props["erasec.spec"])["output"]["mode"] == "switchable"


def test_cli_apply_onnx_then_run_onnx(unet_graphs, onnx_patch, tmp_path):
    runner = CliRunner()
    out = tmp_path / "unet.onnx"
    applied = runner.invoke(
        cli, ["apply", str(onnx_patch), "--onnx", str(unet_graphs["legacy"]), "--mode", "adapter", "-o", str(out)]
    )
    assert applied.exit_code == 0, applied.output
    assert applied.output.startswith(f"wrote {out}, {tmp_path / 'unet.onnx_adapter'} (adapter, 32 sites, confirmed by base pin)")
    adapter = str(tmp_path / "unet.onnx_adapter")
    ran = runner.invoke(cli, ["run-onnx", str(out), "--adapter", adapter, "--size", "16", "--json"])
    assert ran.exit_code == 0, ran.output
    data = json.loads(ran.output)
    assert data["provider"] == "CPUExecutionProvider" and data["finite"] and data["output_shape"] == [2, 4, 16, 16]
    refused = runner.invoke(cli, ["run-onnx", str(unet_graphs["legacy"]), "--erase-scale", "0"])
    assert refused.exit_code == 2
    assert "the graph has no erase_scale input; patch it with --mode switchable" in refused.output
    neither = runner.invoke(cli, ["apply", str(onnx_patch), "-o", str(tmp_path / "x.onnx")])
    assert neither.exit_code == 2 and "give --model (a merged checkpoint) or --onnx" in neither.output


def test_cli_export_onnx_text_encoder(tiny_sd1_path, tmp_path):
    from transformers import CLIPTextModel

    out = tmp_path / "export"
    result = CliRunner().invoke(
        cli, ["export-onnx", "--model", "builtin:tiny-sd1", "-o", str(out), "--exporter", "legacy",
              "--components", "text_encoder", "--json"],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["files"] == {"text_encoder": str(out / "text_encoder" / "model.onnx")}
    assert (out / "tokenizer" / "vocab.json").is_file()
    ids = np.array([[49406, 320, 1929, 49407] + [49407] * 73], dtype=np.int32)
    session = open_session(out / "text_encoder" / "model.onnx", ["CPUExecutionProvider"]).session
    hidden = session.run(["last_hidden_state"], {"input_ids": ids})[0]
    encoder = CLIPTextModel.from_pretrained(str(tiny_sd1_path / "text_encoder"), local_files_only=True).eval()
    with torch.no_grad():
        want = encoder(input_ids=torch.tensor(ids, dtype=torch.long)).last_hidden_state.numpy()
    assert np.max(np.abs(hidden - want)) <= 1e-4


def test_export_refuses_bad_options(tmp_path):
    with pytest.raises(BuildError, match=r"export-onnx: components vae must be some of unet, text_encoder"):
        ExportOptions(components=("vae",))
    result = CliRunner().invoke(cli, ["export-onnx", "--model", str(tmp_path / "nothing"), "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and "nothing" in result.output


def test_providers_are_preferred_tensorrt_cuda_cpu():
    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(gpu) == gpu
    assert choose_providers(["CUDAExecutionProvider", "CPUExecutionProvider"]) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(["AzureExecutionProvider", "CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    with pytest.raises(BuildError, match=r"--provider: CUDAExecutionProvider is not available here; available: CPU"):
        choose_providers(["CPUExecutionProvider"], ["CUDAExecutionProvider"])


@pytest.mark.slow  # a dynamic-shape dynamo export of the tiny UNet takes about 50 s on 2 cores
def test_dynamo_export_with_dynamic_shapes(tmp_path, tiny_sd1_path):
    result = export_onnx("builtin:tiny-sd1", tmp_path, ExportOptions(exporter="dynamo", components=("unet",)))
    session = open_session(result.files["unet"], ["CPUExecutionProvider"])
    assert run_step(session, unet_inputs(session, batch=1, size=24))[0].shape == (1, 4, 24, 24)
