"""The ONNX backend's rules on small hand-built graphs (milliseconds; no torch export).

Each graph mimics one exporter's spelling of two cross-attention sites (research/ecosystem.md §4.3):
legacy names (``/unet/…/attn2/to_k/MatMul`` over a folded ``Wᵀ``; optimum's without ``/unet``), dynamo metadata
(``pkg.torch.onnx.name_scopes``) over an anonymous ``val_*``, and unfolded ``Transpose(W)`` of a
named initializer. A self-attention MatMul beside them must never match. Outputs are compared in
ONNX Runtime (CPU) with tolerances stated per test.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from erasec.backends.errors import BackendError
from erasec.backends.onnx import (
    OnnxOptions,
    PatchDeltas,
    SiteDelta,
    load_graph,
    locate_sites,
    patch_graph,
    write_graph,
)
from erasec.backends.onnx import files as onnx_files
from erasec.patches.pin import base_pin

D, OUT, RANK = 6, 4, 2
K = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
V = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v"
SELF = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k"


def _weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {path: rng.standard_normal((OUT, D)).astype(np.float32) for path in (K, V, SELF)}


def _graph(style: str, weights: dict[str, np.ndarray], *, share_self: bool = False) -> ir.Model:
    """``out_k, out_v, out_self`` = three Linear layers on ``x`` [B, S, D], spelled as ``style``."""
    nodes, inits = [], []
    for index, (path, out) in enumerate(((K, "out_k"), (V, "out_v"), (SELF, "out_self"))):
        w = weights[path]
        legacy = ("/" if style == "optimum" else "/unet/") + "/".join(_legacy_parts(path)) + "/MatMul"
        if style in ("legacy", "optimum"):  # optimum exports the UNet itself: no wrapper scope
            name = f"onnx::MatMul_{100 + index}" if not (share_self and path == SELF) else "onnx::MatMul_100"
            if not (share_self and path == SELF):
                inits.append(numpy_helper.from_array(w.T.copy(), name))
            nodes.append(helper.make_node("MatMul", ["x", name], [out], name=legacy))
        elif style == "dynamo":
            name = f"val_{index}"
            inits.append(numpy_helper.from_array(w.T.copy(), name))
            node = helper.make_node("MatMul", ["x", name], [out], name=f"node_linear_{index}")
            scopes = ["", "unet"] + [f"unet.{path}", f"linear_{index}"]
            helper.set_metadata_props(node, {"pkg.torch.onnx.name_scopes": repr(scopes)})
            nodes.append(node)
        elif style == "transposed":
            name = f"unet.{path}.weight"
            inits.append(numpy_helper.from_array(w, name))
            nodes.append(helper.make_node("Transpose", [name], [f"{name}_T"], perm=[1, 0], name=f"Transpose_{index}"))
            nodes.append(helper.make_node("MatMul", ["x", f"{name}_T"], [out], name=f"anonymous_{index}"))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", D])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, ["batch", "seq", OUT]) for o in ("out_k", "out_v", "out_self")],
        inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    return ir.serde.deserialize_model(proto)


def _legacy_parts(path: str) -> list[str]:
    """``down_blocks.0.attentions.0.…`` → ``["down_blocks.0", "attentions.0", …]`` (legacy node names)."""
    parts, out = path.split("."), []
    for part in parts:
        if part.isdigit():
            out[-1] += f".{part}"
        else:
            out.append(part)
    return out


def _deltas(weights, *, pin: bool = True, seed: int = 1) -> PatchDeltas:
    rng = np.random.default_rng(seed)
    down = rng.standard_normal((RANK, D))  # one shared down, as a shared-map patch has
    sites = tuple(SiteDelta(module_path=p, up=rng.standard_normal((OUT, RANK)), down=down) for p in (K, V))
    recorded = base_pin({f"{p}.weight": weights[p] for p in (K, V)}, dtype="fp32") if pin else None
    return PatchDeltas(source="test.safetensors", sites=sites, base_pin=recorded)


def _run(model: ir.Model, tmp_path, feeds, *, name="g.onnx", run_options=None) -> list[np.ndarray]:
    path = tmp_path / name
    ir.save(model, path)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds, run_options=run_options)


def _x(seed: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((2, 5, D)).astype(np.float32)


def _unpatched(style: str, tmp_path):
    """(weights, graph, deltas, the graph's outputs, its node count) before a rewrite."""
    weights = _weights()
    model = _graph(style, weights)
    return weights, model, _deltas(weights), _run(model, tmp_path, {"x": _x()}, name="before.onnx"), len(list(model.graph))


@pytest.mark.parametrize(
    ("style", "found_by", "transposed"),
    [
        ("legacy", "node name", False),
        ("optimum", "node name", False),
        ("dynamo", "name_scopes", False),
        ("transposed", "initializer name", True),
    ],
)
def test_locate_finds_each_exporters_spelling_and_not_self_attention(style, found_by, transposed):
    model = _graph(style, _weights())
    matches = locate_sites(model.graph, {K: (OUT, D), V: (OUT, D)}, where="g.onnx")
    assert sorted(matches) == [K, V]
    assert {m.found_by for m in matches.values()} == {found_by}
    assert {m.transposed for m in matches.values()} == {transposed}
    assert matches[K].output.name == "out_k"


@pytest.mark.parametrize("style", ["legacy", "dynamo", "transposed"])
def test_bake_adds_delta_transpose_aware_without_new_nodes(style, tmp_path):
    weights, model, deltas, before, nodes = _unpatched(style, tmp_path)
    result = patch_graph(model, deltas, OnnxOptions(mode="bake"))
    assert result.confirmed_by == "base pin"
    assert len(list(model.graph)) == nodes
    k, v, self_out = _run(model, tmp_path, {"x": _x()})
    x = _x().astype(np.float64)
    for path, got in ((K, k), (V, v)):
        want = x @ (weights[path].astype(np.float64) + deltas.site(path).delta()).T
        assert np.max(np.abs(got - want)) < 1e-5  # fp32 weights and MatMul
    assert np.array_equal(self_out, before[2])  # attn1 untouched


def test_bake_copies_an_initializer_shared_with_another_node(tmp_path):
    weights = _weights()
    weights[SELF] = weights[K].copy()  # the legacy exporter may share one folded tensor
    model = _graph("legacy", weights, share_self=True)
    patch_graph(model, _deltas(weights), OnnxOptions(mode="bake"))
    k, _, self_out = _run(model, tmp_path, {"x": _x()})
    assert np.max(np.abs(self_out - _x().astype(np.float64) @ weights[SELF].T)) < 1e-5  # still W0
    assert np.max(np.abs(k - self_out)) > 1e-3


@pytest.mark.parametrize("style", ["legacy", "dynamo", "transposed"])
def test_switchable_branch_shares_one_projection_and_switches(style, tmp_path):
    weights, model, deltas, base, nodes = _unpatched(style, tmp_path)
    patch_graph(model, deltas, OnnxOptions(mode="switchable"))
    # one MatMul(x, downᵀ) for both sites, then MatMul(·, upᵀ) → Mul(erase_scale) → Add per site
    assert len(list(model.graph)) == nodes + 1 + 2 * 3
    assert [v.name for v in model.graph.inputs] == ["x", "erase_scale"]
    off = _run(model, tmp_path, {"x": _x(), "erase_scale": np.array([0.0], np.float32)})
    for got, want in zip(off, base):
        assert np.array_equal(got, want)  # Add(Y, 0·branch) is exactly Y
    k, v, _ = _run(model, tmp_path, {"x": _x()})  # default erase_scale = [1.0]
    x = _x().astype(np.float64)
    for path, got in ((K, k), (V, v)):
        assert np.max(np.abs(got - x @ (weights[path] + deltas.site(path).delta()).T)) < 1e-5


def test_adapter_graph_is_the_base_until_the_adapter_is_active(tmp_path):
    weights = _weights()
    model = _graph("dynamo", weights)
    deltas = _deltas(weights)
    base = _run(model, tmp_path, {"x": _x()}, name="base.onnx")
    result = patch_graph(model, deltas, OnnxOptions(mode="adapter"))
    assert sorted(result.adapter) == sorted([f"erasec.{K}.down_T", f"erasec.{K}.up_T", f"erasec.{V}.up_T"])
    written = write_graph(model, tmp_path / "unet.onnx", adapter=result.adapter)
    assert [p.name for p in written] == ["unet.onnx", "unet.onnx_adapter"]
    assert ort.AdapterFormat.read_adapter(str(written[1])).get_format_version() == 1
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(written[0]), options, providers=["CPUExecutionProvider"])
    off = session.run(None, {"x": _x()})
    assert all(np.array_equal(a, b) for a, b in zip(off, base))  # rank-0 defaults: no delta
    adapter = ort.LoraAdapter()
    adapter.Load(str(written[1]))
    run_options = ort.RunOptions()
    run_options.add_active_adapter(adapter)
    k, v, _ = session.run(None, {"x": _x()}, run_options=run_options)
    x = _x().astype(np.float64)
    assert np.max(np.abs(k - x @ (weights[K] + deltas.site(K).delta()).T)) < 1e-5
    assert np.max(np.abs(v - x @ (weights[V] + deltas.site(V).delta()).T)) < 1e-5


def test_a_missing_site_is_a_clear_error_naming_the_fix():
    weights = _weights()
    model = _graph("legacy", weights)
    other = "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"
    deltas = PatchDeltas(source="p", sites=(SiteDelta(module_path=other, up=np.ones((OUT, 1)), down=np.ones((1, D))),))
    with pytest.raises(BackendError) as error:
        patch_graph(model, deltas, OnnxOptions(verify_base=False), where="unet.onnx")
    assert str(error.value) == (
        f"unet.onnx: site not found, first {other} (no MatMul with that module path in its node name, "
        "name_scopes metadata or initializer name); patch the graph as exported, before ONNX Runtime's "
        "transformer optimizer (or optimise with --disable_packed_kv --disable_packed_qkv)"
    )


def test_a_fused_graph_is_refused_saying_to_patch_before_optimisation():
    weights = _weights()
    model = _graph("legacy", weights)
    # what ORT's optimizer leaves: K and V packed into one [D, 2·OUT] MatMul feeding MultiHeadAttention
    graph = model.graph
    for node in list(graph):
        if "attn2" in node.name:
            graph.remove(node, safe=False)
    packed = ir.Value(name="MatMul_KV", const_value=ir.tensor(np.zeros((D, 2 * OUT), np.float32), name="MatMul_KV"))
    graph.register_initializer(packed)
    kv = ir.node("MatMul", [graph.inputs[0], packed], name="/unet/down_blocks.0/attentions.0/transformer_blocks.0/attn2/MatMul_KV")
    mha = ir.node("MultiHeadAttention", [kv.outputs[0]], domain="com.microsoft", name="Attention_0")
    graph.extend([kv, mha])
    with pytest.raises(BackendError, match=r"2 of 2 sites not found, first .*attn2\.to_k \(the graph has fused "
                       r"attention \(MultiHeadAttention\), which packs K and V\); patch the graph as exported, before"):
        patch_graph(model, _deltas(weights), OnnxOptions(), where="unet.onnx")


def test_a_packed_weight_under_the_sites_name_is_refused_by_shape():
    weights = _weights()
    weights[K] = np.zeros((2 * OUT, D), np.float32)  # K and V interleaved into one tensor
    model = _graph("legacy", weights)
    with pytest.raises(BackendError, match=r"holds 'onnx::MatMul_100' of shape \[6, 8\], not \[6, 4\]: another model's graph, or K and V packed"):
        patch_graph(model, _deltas(_weights(), pin=False), OnnxOptions(verify_base=False), where="unet.onnx")


def test_weights_that_are_not_the_patch_base_are_refused_before_any_change():
    weights = _weights()
    model = _graph("dynamo", _weights(seed=7))  # another model
    nodes = [(n.name, tuple(v.name for v in n.inputs)) for n in model.graph]
    with pytest.raises(BackendError, match=r"2 of the 2 located weights differ from the patch's base pin \(first "):
        patch_graph(model, _deltas(weights), OnnxOptions(mode="switchable"), where="unet.onnx")
    assert [(n.name, tuple(v.name for v in n.inputs)) for n in model.graph] == nodes
    assert "erase_scale" not in [v.name for v in model.graph.inputs]
    with pytest.raises(BackendError, match=r"carries no base pin \(erasec.base\)"):
        patch_graph(model, _deltas(weights, pin=False), OnnxOptions(), where="unet.onnx")
    with pytest.raises(BackendError, match=r"is not the base weight of down_blocks"):
        patch_graph(model, _deltas(weights, pin=False), OnnxOptions(), base_weights=weights, where="unet.onnx")


@pytest.mark.parametrize("first", ["bake", "switchable", "adapter"])
def test_a_patched_graph_is_refused_whatever_the_second_mode(first):
    weights = _weights()
    model = _graph("legacy", weights)
    patch_graph(model, _deltas(weights), OnnxOptions(mode=first))
    for second in ("bake", "switchable"):  # a switchable graph still holds W0: only the record tells
        with pytest.raises(BackendError, match=rf"^g.onnx: already patched \(a patch, {first}\); patch the unpatched export$"):
            patch_graph(model, _deltas(weights), OnnxOptions(mode=second), where="g.onnx")
    del model.metadata_props["erasec.onnx.mode"]  # metadata stripped: the erase_scale input still tells
    if first != "bake":
        with pytest.raises(BackendError, match=r"already patched \(a patch, switchable\)"):
            patch_graph(model, _deltas(weights), OnnxOptions(mode="bake"))


def test_unknown_mode_is_refused():
    with pytest.raises(BackendError, match="onnx: mode 'merge' is not one of bake, switchable, adapter"):
        OnnxOptions(mode="merge")


def test_external_data_is_written_beside_the_graph_and_loads(tmp_path, monkeypatch):
    weights = _weights()
    model = _graph("legacy", weights)
    base = _run(model, tmp_path, {"x": _x()}, name="base.onnx")
    monkeypatch.setattr(onnx_files, "EXTERNAL_DATA_BYTES", 0)  # as if the tensors passed 2 GB
    monkeypatch.setattr(onnx_files, "_SIZE_THRESHOLD", 16)
    written = write_graph(model, tmp_path / "out" / "unet.onnx")
    assert [p.name for p in written] == ["unet.onnx", "unet.onnx.data"]
    proto = onnx.load(str(written[0]), load_external_data=False)
    assert any(t.data_location == TensorProto.EXTERNAL for t in proto.graph.initializer)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(written[0]), options, providers=["CPUExecutionProvider"])
    assert all(np.array_equal(a, b) for a, b in zip(session.run(None, {"x": _x()}), base))
    assert len(load_graph(written[0]).graph.initializers) == 3
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["unet.onnx", "unet.onnx.data"]  # no temp left


def test_adapter_file_holds_every_parameter_exactly_even_when_not_c_contiguous(tmp_path):
    """The factors ``branch`` makes are transposes (Fortran order); an OrtValue borrows its array's
    buffer, so the contiguous copies must live until the file is written (43 of these 50 came back
    as garbage when they did not)."""
    rng = np.random.default_rng(0)
    parameters = {f"erasec.site{i:02d}.up_T": rng.standard_normal((2, 64)).astype(np.float32).T for i in range(50)}
    onnx_files._write_adapter(tmp_path / "unet.onnx_adapter", parameters)
    back = ort.AdapterFormat.read_adapter(str(tmp_path / "unet.onnx_adapter")).get_parameters()
    assert sorted(back) == sorted(parameters)
    assert all(np.array_equal(back[name].numpy(), array) for name, array in parameters.items())


def _gemm_graph(weights: dict[str, np.ndarray], pooled: int) -> ir.Model:
    """SDXL's add_embedding.linear_1 as both exporters spell it: ``Gemm(x, W, b, transB=1)`` on
    ``x = [text_embeds ; time]`` [B, D]; the graph input ``text_embeds`` is ``pooled`` wide."""
    w = weights[K]
    inits = [numpy_helper.from_array(w, "unet.add_embedding.linear_1.weight"),
             numpy_helper.from_array(np.arange(OUT, dtype=np.float32), "unet.add_embedding.linear_1.bias")]
    nodes = [
        helper.make_node("Concat", ["text_embeds", "time"], ["x"], axis=-1, name="/unet/Concat"),
        helper.make_node("Gemm", ["x", *(i.name for i in inits)], ["out"], transB=1, name="/unet/add_embedding/linear_1/Gemm"),
    ]
    graph = helper.make_graph(
        nodes, "pooled",
        [helper.make_tensor_value_info("text_embeds", TensorProto.FLOAT, ["B", pooled]),
         helper.make_tensor_value_info("time", TensorProto.FLOAT, ["B", D - pooled])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["B", OUT])],
        inits,
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


@pytest.mark.parametrize("mode", ["bake", "switchable"])
def test_the_pooled_gemm_site_is_confirmed_on_its_pooled_columns_and_patched(mode, tmp_path):
    pooled, site = 4, "add_embedding.linear_1"
    weights = _weights()
    rng = np.random.default_rng(3)
    down = np.hstack([rng.standard_normal((RANK, pooled)), np.zeros((RANK, D - pooled))])  # [ΔW | 0]
    delta = SiteDelta(module_path=site, up=rng.standard_normal((OUT, RANK)), down=down)
    pin = base_pin({f"{site}.weight": weights[K][:, :pooled]})  # compiled on the pooled columns only
    deltas = PatchDeltas(source="patch", sites=(delta,), base_pin=pin)
    feeds = {"text_embeds": rng.standard_normal((3, pooled)).astype(np.float32),
             "time": rng.standard_normal((3, D - pooled)).astype(np.float32)}
    base = _run(_gemm_graph(weights, pooled), tmp_path, feeds, name="base.onnx")[0]
    result = patch_graph(_gemm_graph(weights, pooled), deltas, OnnxOptions(mode=mode))
    assert result.confirmed_by == "base pin" and result.sites[0].found_by == "node name"
    patched = _run(result.model, tmp_path, feeds)[0]
    x = np.hstack([feeds["text_embeds"], feeds["time"]]).astype(np.float64)
    assert np.max(np.abs(patched - (base + x @ delta.delta().T))) <= 1e-5  # fp32 graph, O(1) values
    with pytest.raises(BackendError, match=r"needs the graph's text_embeds input with a fixed width"):
        graph = _gemm_graph(weights, pooled)
        graph.graph.inputs[0].shape = ir.Shape(["B", "P"])
        patch_graph(graph, deltas, OnnxOptions(mode=mode))


def test_load_graph_refuses_what_is_not_onnx(tmp_path):
    bad = tmp_path / "unet.onnx"
    bad.write_bytes(b"not a protobuf \xff\xff")
    with pytest.raises(BackendError, match=r"unet.onnx: not a readable ONNX model"):
        load_graph(bad)
    with pytest.raises(BackendError, match=r"missing.onnx: no such ONNX file"):
        load_graph(tmp_path / "missing.onnx")


def test_fp16_graphs_get_fp16_factors_and_one_cast_of_erase_scale(tmp_path):
    weights = _weights()
    model = _graph("legacy", weights)
    for value in model.graph.initializers.values():  # an fp16 export: the same graph, half weights
        value.const_value = ir.tensor(value.const_value.numpy().astype(np.float16), name=value.name)
        value.dtype = ir.DataType.FLOAT16
    for value in (*model.graph.inputs, *model.graph.outputs):
        value.dtype = ir.DataType.FLOAT16
    deltas = _deltas({p: w.astype(np.float16) for p, w in weights.items()})  # pinned on the fp16 base
    patch_graph(model, deltas, OnnxOptions(mode="switchable"))
    casts = [node for node in model.graph if node.op_type == "Cast"]
    assert len(casts) == 1 and casts[0].inputs[0].name == "erase_scale"
    assert {model.graph.initializers[f"erasec.{p}.up_T"].const_value.dtype for p in (K, V)} == {ir.DataType.FLOAT16}
    k, v, _ = _run(model, tmp_path, {"x": _x().astype(np.float16)})
    x = _x().astype(np.float16).astype(np.float64)
    want = x @ (weights[K].astype(np.float16) + deltas.site(K).delta()).T
    assert np.max(np.abs(k - want)) < 2e-2 * np.max(np.abs(want))  # fp16 storage and arithmetic
