"""The ONNX path end to end on ``builtin:tiny-sd1`` and ``builtin:tiny-sdxl`` (CPU, fp32): export, patch, run.

Parity (issue 6): the patched ONNX UNet against diffusers' own LoRA path — ``load_lora_weights``
then ``fuse_lora(1.0)`` — on the same inputs, max abs difference ≤ 1e-4, for bake, switchable and
adapter, on graphs from both exporters (legacy TorchScript with dynamic axes; dynamo with static
shapes, which exports faster). The SDXL patch uses ``options.pooled``, so its 141 sites include
``add_embedding.linear_1`` (a ``Gemm`` in the graph) beside the 140 K/V MatMuls, and its graphs
take ``text_embeds`` and ``time_ids``. Measured here: about 1e-6 in every case. Each graph is
exported once per session, on first use; ``unet_graphs("tiny-sd1.safetensors", …)`` exports the
single-file copy (UNet config from its header, compiler/models/unet_configs.py). The graphs, patches
and references are session fixtures in tests/compiler/conftest.py, shared with any other test.
"""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir
import pytest
import torch

from cli_helpers import run
from onnx_helpers import onnx_output, parity_spec, unet_output
from erasec.backends.errors import BackendError
from erasec.backends.onnx import load_graph
from erasec.compiler.build import BuildOptions, build
from erasec.compiler.errors import BuildError
from erasec.backends.onnx.apply import apply_onnx
from erasec.compiler.onnx_graphs.export import ExportOptions
from erasec.compiler.onnx_graphs.export_model import export_onnx
from erasec.backends.onnx.runtime import (
    choose_providers, open_session, run_onnx, run_step, unet_inputs,
)

PARITY = 1e-4  # issue 6's bound on max |ONNX − PyTorch fused|
SITES = {"tiny-sd1": 32, "tiny-sdxl": 141}  # tiny-sdxl: 140 K/V + add_embedding.linear_1 (pooled)
# (model, exporter) pairs; tiny-sdxl's dynamo export takes about 30 s on 2 cores
GRAPHS = [
    ("tiny-sd1", "legacy"),
    ("tiny-sd1", "dynamo"),
    ("tiny-sdxl", "legacy"),
    pytest.param("tiny-sdxl", "dynamo", marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("model", "exporter"), GRAPHS)
def test_exported_unet_matches_pytorch(unpatched, reference, model, exporter):
    _, base, _ = reference(model)
    assert np.max(np.abs(unpatched(model, exporter) - base)) <= PARITY


@pytest.mark.parametrize("mode", ["bake", "switchable", "adapter"])
@pytest.mark.parametrize(("model", "exporter"), GRAPHS)
def test_patched_graph_matches_diffusers_fused_lora(
    unet_graphs, unpatched, onnx_patch, reference, tmp_path, model, exporter, mode
):
    feeds, _, fused = reference(model)
    result = apply_onnx(onnx_patch(model), unet_graphs(model, exporter), tmp_path / "unet.onnx", mode=mode)
    assert result["sites"] == SITES[model] and result["confirmed_by"] == "base pin"
    assert result["found_by"] == (["node name"] if exporter == "legacy" else ["name_scopes"])
    session = open_session(result["files"][0], ["CPUExecutionProvider"])
    adapter = result["files"][1] if mode == "adapter" else None
    patched = run_step(session, feeds, adapter=adapter)[0]
    assert np.max(np.abs(patched - fused)) <= PARITY
    if mode != "bake":  # switched off (erase_scale 0, or no adapter): the unpatched graph, bit for bit
        off = run_step(session, feeds, erase_scale=0.0 if mode == "switchable" else None)[0]
        assert np.array_equal(off, unpatched(model, exporter))


def test_switchable_graph_has_one_projection_for_a_shared_map_patch(unet_graphs, onnx_patch, tmp_path):
    result = apply_onnx(onnx_patch(), unet_graphs("tiny-sd1", "legacy"), tmp_path / "unet.onnx", mode="switchable")
    model = load_graph(result["files"][0])
    steps = sorted(node.name.rsplit("/", 1)[-1] for node in model.graph if (node.name or "").startswith("erasec/"))
    assert steps.count("down") == 1  # MatMul(encoder_hidden_states, Rᵀ) serves all 32 sites
    assert steps.count("up") == steps.count("scale") == steps.count("add") == 32
    assert model.metadata_props["erasec.onnx.mode"] == "switchable"
    assert model.metadata_props["erasec.name"] == "onnx-parity"


@pytest.mark.parametrize("model", ["tiny-sd1", "tiny-sdxl"])
def test_legacy_export_has_dynamic_batch_and_size(unet_graphs, model):
    session = open_session(unet_graphs(model, "legacy"), ["CPUExecutionProvider"])
    inputs = {i.name: i.shape for i in session.session.get_inputs()}
    if model == "tiny-sdxl":  # optimum's names and shapes (research/ecosystem.md §4.1)
        assert inputs == {
            "sample": ["batch", 4, "height", "width"], "timestep": [1], "encoder_hidden_states": ["batch", "sequence", 192],
            "text_embeds": ["batch", 32], "time_ids": ["batch", 6],
        }
    assert [o.name for o in session.session.get_outputs()] == ["out_sample"]
    feeds = unet_inputs(session, batch=1, size=24)
    assert sorted(feeds) == sorted(inputs)
    if model == "tiny-sdxl":  # what run-onnx feeds: an uncropped image of 8 × the latent size
        assert feeds["text_embeds"].shape == (1, 32) and feeds["time_ids"].tolist() == [[192, 192, 0, 0, 192, 192]]
    assert run_step(session, feeds)[0].shape == (1, 4, 24, 24)


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
    _pack_kv(unet_graphs("tiny-sd1", "legacy"), packed)
    with pytest.raises(BackendError) as error:
        apply_onnx(onnx_patch(), packed, tmp_path / "out.onnx", mode="bake")
    assert str(error.value) == (
        f"{packed}: 2 of 32 sites not found, first down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k "
        "(no MatMul with that module path in its node name, name_scopes metadata or initializer name); "
        "patch the graph as exported, before ONNX Runtime's transformer optimizer "
        "(or optimise with --disable_packed_kv --disable_packed_qkv)"
    )
    assert not (tmp_path / "out.onnx").exists()


def test_a_patched_graph_does_not_take_the_patch_again(unet_graphs, onnx_patch, tmp_path):
    once = apply_onnx(onnx_patch(), unet_graphs("tiny-sd1", "dynamo"), tmp_path / "once.onnx", mode="bake")
    with pytest.raises(BackendError, match=r"once.onnx: already patched \(onnx-parity, bake\); patch the unpatched export"):
        apply_onnx(onnx_patch(), once["files"][0], tmp_path / "twice.onnx", mode="switchable")
    stripped = load_graph(once["files"][0])
    stripped.metadata_props.clear()  # no record left: the base pin still tells
    ir.save(stripped, tmp_path / "stripped.onnx")
    with pytest.raises(BackendError, match=r"32 of the 32 located weights differ from the patch's base pin"):
        apply_onnx(onnx_patch(), tmp_path / "stripped.onnx", tmp_path / "twice.onnx", mode="bake")
    with pytest.raises(BackendError, match=r"is the input graph; write the patched graph to a new path"):
        apply_onnx(onnx_patch(), once["files"][0], once["files"][0])


@pytest.mark.parametrize(("model", "exporter"), [("tiny-sd1", "dynamo"), ("tiny-sdxl", "legacy")])
def test_build_with_output_format_onnx(unet_graphs, reference, tmp_path, model, exporter):
    spec = parity_spec(model) + f"output: {{format: onnx, mode: switchable, graph: {unet_graphs(model, exporter)}}}\n"
    (tmp_path / "spec.yaml").write_text(spec)
    # the exported graph sits in a session folder outside the spec's: the caller opts in
    result = build(tmp_path / "spec.yaml", tmp_path / "erased.onnx", options=BuildOptions(allow_outside_spec=True))
    assert result.format == "onnx"
    assert load_graph(tmp_path / "erased.onnx").metadata_props["erasec.onnx.sites"] == str(SITES[model])
    feeds, base, fused = reference(model)
    graph = tmp_path / "erased.onnx"
    assert np.max(np.abs(onnx_output(graph, feeds) - fused)) <= PARITY  # float64 solution vs the fp32 patch file
    assert np.max(np.abs(onnx_output(graph, feeds, erase_scale=0.0) - base)) <= PARITY
    assert json.loads(load_graph(graph).metadata_props["erasec.spec"])["output"]["mode"] == "switchable"


def test_cli_apply_onnx_then_run_onnx(unet_graphs, onnx_patch, tmp_path):
    out = tmp_path / "unet.onnx"
    applied = run("apply", onnx_patch(), "--onnx", unet_graphs("tiny-sd1", "legacy"), "--mode", "adapter", "-o", out)
    assert applied.exit_code == 0, applied.output
    assert applied.output.startswith(f"wrote {out}, {tmp_path / 'unet.onnx_adapter'} (adapter, 32 sites, confirmed by base pin)")
    adapter = str(tmp_path / "unet.onnx_adapter")
    ran = run("run-onnx", out, "--adapter", adapter, "--size", "16", "--json")
    assert ran.exit_code == 0, ran.output
    data = json.loads(ran.output)
    assert data["provider"] == "CPUExecutionProvider" and data["finite"] and data["output_shape"] == [2, 4, 16, 16]
    refused = run("run-onnx", unet_graphs("tiny-sd1", "legacy"), "--erase-scale", "0")
    assert refused.exit_code == 2
    assert "the graph has no erase_scale input; patch it with --mode switchable" in refused.output
    neither = run("apply", onnx_patch(), "-o", tmp_path / "x.onnx")
    assert neither.exit_code == 2 and "give --model (a merged checkpoint) or --onnx" in neither.output


# model → text encoder → the outputs compared with transformers' encoder; SDXL's pipeline reads the
# penultimate hidden states (2-layer tiny encoders: hidden_states.1) and text_encoder_2's text_embeds.
ENCODER_OUTPUTS = {
    "tiny-sd1": {"text_encoder": ("last_hidden_state",)},
    "tiny-sd2": {"text_encoder": ("last_hidden_state",)},
    "tiny-sdxl": {"text_encoder": ("hidden_states.1",), "text_encoder_2": ("text_embeds", "hidden_states.1")},
}


# a single file's encoders (SD2: OpenCLIP with its skipped last block) against the folder's
@pytest.mark.parametrize("model", ["tiny-sd1", "tiny-sdxl", "tiny-sd2.safetensors", "tiny-sdxl.safetensors"])
def test_cli_export_onnx_text_encoders(erasec_cache_dir, tmp_path, model):
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from erasec.compiler.models.builtin import builtin_model_path

    out = tmp_path / "export"
    folder_model = model.removesuffix(".safetensors")
    components = ENCODER_OUTPUTS[folder_model]
    result = run("export-onnx", "--model", f"builtin:{model}", "-o", out, "--exporter", "legacy",
                 "--components", ",".join(components), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["files"] == {c: str(out / c / "model.onnx") for c in components}
    tokenizers = ["tokenizer", "tokenizer_2"][: len(components)]
    assert [t for t in tokenizers if (out / t / "vocab.json").is_file()] == tokenizers
    ids = np.array([[49406, 320, 1929, 49407] + [49407] * 73], dtype=np.int32)
    for component, names in components.items():
        session = open_session(out / component / "model.onnx", ["CPUExecutionProvider"]).session
        got = dict(zip(names, session.run(list(names), {"input_ids": ids})))
        kind = CLIPTextModelWithProjection if component == "text_encoder_2" else CLIPTextModel
        encoder = kind.from_pretrained(str(builtin_model_path(folder_model) / component), local_files_only=True).eval()
        with torch.no_grad():
            output = encoder(input_ids=torch.tensor(ids, dtype=torch.long), output_hidden_states=True)
        for name in names:
            want = output.hidden_states[int(name.split(".")[1])] if name.startswith("hidden_states.") else output[name]
            assert np.max(np.abs(got[name] - want.numpy())) <= 1e-4, (component, name)


def test_export_refuses_bad_options(tmp_path):
    with pytest.raises(BuildError, match=r"export-onnx: components vae must be some of unet, text_encoder"):
        ExportOptions(components=("vae",))
    result = run("export-onnx", "--model", tmp_path / "nothing", "-o", tmp_path / "o")
    assert result.exit_code == 2 and "nothing" in result.output
    with pytest.raises(BuildError) as error:
        export_onnx("builtin:tiny-sd1", tmp_path / "o", ExportOptions(components=("text_encoder_2",)))
    assert str(error.value) == "builtin:tiny-sd1: a sd1 model has no text_encoder_2; components are unet, text_encoder"
    with pytest.raises(BuildError) as error:
        export_onnx("builtin:tiny-sd1.safetensors", tmp_path / "o", ExportOptions(components=("text_encoder_2",)))
    assert str(error.value) == (
        "builtin:tiny-sd1.safetensors: a sd1 model has no text_encoder_2; components are unet, text_encoder"
    )


# tiny-sdxl's export takes about 15 s; its single-file UNet is checked tensor by tensor in test_unet_configs.py
@pytest.mark.parametrize("model", ["tiny-sd1", "tiny-sd2", pytest.param("tiny-sdxl", marks=pytest.mark.slow)])
def test_single_file_exports_the_folders_unet(unet_graphs, model):
    """``builtin:NAME.safetensors`` (LDM/SGM names; UNet config from its header, weights renamed by
    diffusers' converter) gives the graph of the folder's UNet. Measured: about 1e-6."""
    from diffusers import UNet2DConditionModel

    from erasec.compiler.models.builtin import builtin_model_path

    session = open_session(unet_graphs(f"{model}.safetensors", "legacy"), ["CPUExecutionProvider"])
    feeds = unet_inputs(session, batch=2, size=16)
    unet = UNet2DConditionModel.from_pretrained(str(builtin_model_path(model) / "unet")).eval()
    with torch.no_grad():
        want = unet_output(unet, {name: torch.from_numpy(value) for name, value in feeds.items()})
    assert np.max(np.abs(run_step(session, feeds)[0] - want)) <= 1e-5


def test_a_single_file_graph_takes_the_patch(unet_graphs, onnx_patch, reference, tmp_path):
    feeds, _, fused = reference("tiny-sd1")  # the patch is built on the folder: same weights, same base pin
    graph = unet_graphs("tiny-sd1.safetensors", "legacy")
    result = apply_onnx(onnx_patch(), graph, tmp_path / "unet.onnx", mode="switchable")
    assert result["sites"] == SITES["tiny-sd1"] and result["confirmed_by"] == "base pin"
    assert np.max(np.abs(onnx_output(result["files"][0], feeds) - fused)) <= PARITY


def test_run_onnx_feeds_a_scalar_timestep_where_the_graph_declares_one(tmp_path):
    """optimum's UNet export takes ``timestep`` as a scalar (shape ``[]``, seen on a real optimum-onnx
    0.1.0 export of tiny-sd1); its graph unsqueezes it, so a ``[1]`` feed breaks the shapes there.
    This stand-in does the same: ``[1]`` would give a rank-5 output."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["axes"], value=helper.make_tensor("axes", TensorProto.INT64, [4], [0, 1, 2, 3])),
            helper.make_node("Unsqueeze", ["timestep", "axes"], ["t"]),
            helper.make_node("ReduceMean", ["encoder_hidden_states"], ["m"], keepdims=0),
            helper.make_node("Mul", ["sample", "t"], ["st"]),
            helper.make_node("Add", ["st", "m"], ["out_sample"]),
        ],
        "scalar_timestep",
        [
            helper.make_tensor_value_info("sample", TensorProto.FLOAT, ["batch_size", 4, "height", "width"]),
            helper.make_tensor_value_info("timestep", TensorProto.FLOAT, []),
            helper.make_tensor_value_info("encoder_hidden_states", TensorProto.FLOAT, ["batch_size", "sequence_length", 32]),
        ],
        [helper.make_tensor_value_info("out_sample", TensorProto.FLOAT, None)],
    )
    path = tmp_path / "unet.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString())
    assert unet_inputs(open_session(path, ["CPUExecutionProvider"]), size=8)["timestep"].shape == ()
    assert run_onnx(path, providers=["CPUExecutionProvider"], size=8)["output_shape"] == [2, 4, 8, 8]


def test_providers_are_preferred_tensorrt_cuda_cpu():
    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(gpu) == gpu
    assert choose_providers(["CUDAExecutionProvider", "CPUExecutionProvider"]) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(["AzureExecutionProvider", "CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    with pytest.raises(BackendError, match=r"--provider: CUDAExecutionProvider is not available here; available: CPU"):
        choose_providers(["CPUExecutionProvider"], ["CUDAExecutionProvider"])


# a dynamic-shape dynamo export of the tiny UNet takes about 50 s on 2 cores, tiny-sdxl's about 70 s; SDXL's
# text_embeds and time_ids reach the wrapper as *added, whose dynamic shapes torch.export wants nested
@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny-sd1", "tiny-sdxl"])
def test_dynamo_export_with_dynamic_shapes(tmp_path, erasec_cache_dir, model):
    result = export_onnx(f"builtin:{model}", tmp_path, ExportOptions(exporter="dynamo", components=("unet",)))
    session = open_session(result.files["unet"], ["CPUExecutionProvider"])
    assert session.session.get_inputs()[0].shape == ["batch", 4, "height", "width"]
    assert run_step(session, unet_inputs(session, batch=1, size=24))[0].shape == (1, 4, 24, 24)
