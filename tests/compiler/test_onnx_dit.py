"""The ONNX path for diffusion transformers (issue 14 deliverable 5) on the tiny built-ins (CPU, fp32):
export the transformer, patch its text-entry sites, run it in ONNX Runtime.

Parity, as the UNet's (test_onnx_parity.py): the patched graph against the pipeline's own LoRA path
(``load_lora_weights`` + ``fuse_lora(1.0)``, i.e. the transformer with W0 + ΔW) on the same inputs, max
abs difference ≤ 1e-4, for bake, switchable and adapter; switched off, the unpatched graph bit for bit.
FLUX's and SD3's patches edit ``context_embedder`` (MatMul + Add) and the pooled
``time_text_embed.text_embedder.linear_1`` (Gemm); Chroma's the ``context_embedder``; Wan's the
``blocks.{i}.attn2.to_k/to_v`` (4 sites in tiny-wan). Measured here: 4e-7 to 1.2e-6 (Wan 3e-6) in
every case; ``-s`` prints them (the table in docs/onnx.md). FLUX and SD3's legacy graph run by default; SD3's, Chroma's and Wan's dynamo exports (15-45 s
each on 2 cores) are marked slow. The graphs, patches and references are session fixtures
(tests/compiler/conftest.py).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from cli_helpers import run
from onnx_helpers import DIT_MODELS, dit_parity_spec, onnx_output
from erasec.backends.errors import BackendError
from erasec.backends.onnx import load_graph
from erasec.backends.onnx.apply import apply_onnx
from erasec.backends.onnx.runtime import open_session, run_step
from erasec.compiler.errors import BuildError
from erasec.compiler.onnx_graphs.export import ExportOptions
from erasec.compiler.onnx_graphs.export_model import export_onnx
from erasec.patches.read import read_patch
from erasec.patches.solution import patch_solution

PARITY = 1e-4  # as the UNet's bound on max |ONNX − PyTorch fused|
CONTEXT, POOLED = "context_embedder", "time_text_embed.text_embedder.linear_1"
SITES = {
    "flux": [CONTEXT, POOLED],
    "sd3": [CONTEXT, POOLED],
    "chroma": [CONTEXT],
    "wan": [f"blocks.{i}.attn2.to_{kv}" for i in range(2) for kv in "kv"],
}
GRAPHS = [
    ("flux", "dynamo"),
    ("sd3", "legacy"),
    pytest.param("sd3", "dynamo", marks=pytest.mark.slow),
    pytest.param("chroma", "dynamo", marks=pytest.mark.slow),
    pytest.param("wan", "dynamo", marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("family", "exporter"), GRAPHS)
def test_exported_transformer_matches_pytorch(dit_reference, family, exporter):
    _, base, _, unpatched = dit_reference(family, exporter)
    difference = np.max(np.abs(unpatched - base))
    print(f"parity {family} {exporter} unpatched: {difference:.1e}")  # docs/onnx.md quotes these (pytest -s)
    assert difference <= PARITY


@pytest.mark.parametrize("mode", ["bake", "switchable", "adapter"])
@pytest.mark.parametrize(("family", "exporter"), GRAPHS)
def test_patched_transformer_matches_the_pipelines_fused_lora(
    transformer_graphs, dit_onnx_patch, dit_reference, tmp_path, family, exporter, mode
):
    feeds, _, fused, unpatched = dit_reference(family, exporter)
    result = apply_onnx(dit_onnx_patch(family), transformer_graphs(family, exporter), tmp_path / "t.onnx", mode=mode)
    assert result["sites"] == len(SITES[family]) and result["confirmed_by"] == "base pin"
    assert result["found_by"] == (["node name"] if exporter == "legacy" else ["name_scopes"])
    session = open_session(result["files"][0], ["CPUExecutionProvider"])
    adapter = result["files"][1] if mode == "adapter" else None
    difference = np.max(np.abs(run_step(session, feeds, adapter=adapter)[0] - fused))
    print(f"parity {family} {exporter} {mode}: {difference:.1e}")
    assert difference <= PARITY
    if mode != "bake":  # switched off (erase_scale 0, or no adapter): the unpatched graph, bit for bit
        off = run_step(session, feeds, erase_scale=0.0 if mode == "switchable" else None)[0]
        assert np.array_equal(off, unpatched)


def _initializers(path) -> dict[str, np.ndarray]:
    return {name: value.const_value.numpy().copy() for name, value in load_graph(path).graph.initializers.items()}


def test_bake_adds_delta_to_the_weights_only(transformer_graphs, dit_onnx_patch, tmp_path):
    """Bake: each site's initializer becomes W0 + ΔW (stored transposed behind the folded MatMul, as
    W [out, in] in the pooled Gemm); the biases and every other tensor are the export's, unchanged."""
    graph, patch = transformer_graphs("flux"), dit_onnx_patch("flux")
    result = apply_onnx(patch, graph, tmp_path / "baked.onnx", mode="bake")
    before, after = _initializers(graph), _initializers(result["files"][0])
    assert sorted(before) == sorted(after)
    changed = sorted(name for name in before if not np.array_equal(before[name], after[name]))
    assert len(changed) == 2
    deltas = {layer.module_path: layer.up @ layer.down for space in patch_solution(read_patch(patch), 1.0).spaces
              for layer in space.layers}
    assert sorted(deltas) == SITES["flux"]
    for name in changed:
        stored = after[name].astype(np.float64) - before[name].astype(np.float64)
        site = POOLED if name == f"transformer.{POOLED}.weight" else CONTEXT  # the Gemm keeps the module's name
        delta = deltas[site] if site == POOLED else deltas[site].T  # MatMul: Wᵀ [in, out]
        assert np.max(np.abs(stored - delta)) <= 1e-6 * max(1.0, np.max(np.abs(delta)))
    biases = [name for name in before if name.endswith(("context_embedder.bias", f"{POOLED}.bias"))]
    assert len(biases) == 2 and not set(biases) & set(changed)


def test_a_patch_for_another_model_is_refused(transformer_graphs, dit_onnx_patch, tmp_path):
    """A FLUX patch on SD3's graph: both have a context_embedder, of other shapes."""
    with pytest.raises(BackendError) as error:
        apply_onnx(dit_onnx_patch("flux"), transformer_graphs("sd3", "legacy"), tmp_path / "x.onnx", mode="bake")
    assert "not found, first context_embedder (node '/transformer/context_embedder/MatMul' holds" in str(error.value)
    assert "of shape [128, 32], not [32, 32]: another model's graph, or K and V packed by attention fusion)" in str(
        error.value
    )
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("given", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_build_output_format_onnx_on_tiny_flux(transformer_graphs, dit_reference, tmp_path, given):
    """``output.format: onnx`` with ``graph:`` (the session's export, outside the spec's folder: the
    caller opts in), and without: ``erasec build`` exports the transformer first (20-30 s), then patches it."""
    feeds, base, fused, _ = dit_reference("flux", "dynamo")
    spec = tmp_path / "spec.yaml"
    graph = f", graph: {transformer_graphs('flux')}" if given else ""
    spec.write_text(dit_parity_spec(DIT_MODELS["flux"]) + f"output: {{format: onnx, mode: switchable{graph}}}\n")
    out = tmp_path / "erased.onnx"
    result = run("build", spec, "-o", out, *(["--allow-outside-spec"] if given else []))
    assert result.exit_code == 0, result.output
    graph = load_graph(out)
    assert graph.metadata_props["erasec.onnx.sites"] == "2"
    assert json.loads(graph.metadata_props["erasec.spec"])["output"]["mode"] == "switchable"
    assert [value.name for value in graph.graph.outputs] == ["out_hidden_states"]
    assert np.max(np.abs(onnx_output(out, feeds) - fused)) <= PARITY  # float64 solution vs the fp32 patch file
    assert np.max(np.abs(onnx_output(out, feeds, erase_scale=0.0) - base)) <= PARITY


def test_cli_apply_onnx_then_run_onnx_on_a_transformer(transformer_graphs, dit_onnx_patch, tmp_path):
    out = tmp_path / "transformer.onnx"
    applied = run("apply", dit_onnx_patch("flux"), "--onnx", transformer_graphs("flux"), "--mode", "switchable", "-o", out)
    assert applied.exit_code == 0, applied.output
    assert applied.output.startswith(f"wrote {out} (switchable, 2 sites, confirmed by base pin)")
    ran = run("run-onnx", out, "--size", "8", "--erase-scale", "0", "--json")
    assert ran.exit_code == 0, ran.output
    data = json.loads(ran.output)
    assert data["output"] == "out_hidden_states" and data["output_shape"] == [1, 16, 4] and data["finite"]
    assert data["provider"] == "CPUExecutionProvider"


def test_exported_transformer_inputs(transformer_graphs):
    """The pipeline's argument names, with one name for the dimensions that must agree."""
    session = open_session(transformer_graphs("flux"), ["CPUExecutionProvider"]).session
    assert {i.name: i.shape for i in session.get_inputs()} == {
        "hidden_states": ["batch", "image_tokens", 4], "encoder_hidden_states": ["batch", "sequence", 32],
        "pooled_projections": ["batch", 32], "timestep": ["batch"], "img_ids": ["image_tokens", 3],
        "txt_ids": ["sequence", 3],
    }
    assert [(o.name, o.shape) for o in session.get_outputs()] == [("out_hidden_states", ["batch", "image_tokens", 4])]


def test_export_refusals(tmp_path):
    legacy = run("export-onnx", "--model", "builtin:tiny-flux", "-o", tmp_path / "a", "--exporter", "legacy")
    assert legacy.exit_code == 2
    assert legacy.output.strip().splitlines()[-1].endswith(
        "export-onnx: the legacy exporter cannot export this model (Exporting the operator 'aten::rms_norm' to "
        "ONNX opset version 17 is not supported); use --exporter dynamo"
    )
    assert "Traceback" not in legacy.output and not (tmp_path / "a" / "transformer" / "model.onnx").exists()
    with pytest.raises(BuildError) as error:
        export_onnx("builtin:tiny-flux", tmp_path / "b", ExportOptions(components=("text_encoder",)))
    assert str(error.value) == "builtin:tiny-flux: export-onnx exports a flux model's transformer, not its text_encoder"
    with pytest.raises(BuildError) as error:
        export_onnx("builtin:tiny-sd1", tmp_path / "c", ExportOptions(components=("transformer",)))
    assert str(error.value) == "builtin:tiny-sd1: a sd1 model has no transformer; components are unet, text_encoder"


@pytest.mark.slow  # a third Wan export, about 30 s on 2 cores
def test_wan_22_second_expert_exports(tmp_path):
    """tiny-wan is Wan 2.2: ``transformer_2/`` exports beside ``transformer/``; its to_k/to_v sites are
    located by name and hold the second expert's own weights."""
    from safetensors.numpy import load_file

    from erasec.backends.onnx.locate import locate_sites
    from erasec.compiler.models.builtin import builtin_model_path

    result = export_onnx("builtin:tiny-wan", tmp_path, ExportOptions(components=("transformer_2",), dynamic=False))
    assert sorted(result.files) == ["transformer_2"]
    matches = locate_sites(load_graph(result.files["transformer_2"]).graph, dict.fromkeys(SITES["wan"]), where="t2")
    folder = builtin_model_path("tiny-wan")
    second = load_file(str(folder / "transformer_2" / "diffusion_pytorch_model.safetensors"))
    first = load_file(str(folder / "transformer" / "diffusion_pytorch_model.safetensors"))
    for site, match in matches.items():
        stored = match.weight.const_value.numpy()
        weight = stored if match.transposed else stored.T
        assert np.array_equal(weight, second[f"{site}.weight"]) and not np.array_equal(weight, first[f"{site}.weight"])
