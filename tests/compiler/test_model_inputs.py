"""Damaged and hostile model and ONNX inputs through the real CLI (issue 16 items 6, 11, 12, 13).

Each case damages a copy of a built-in model (or a small hand-built graph) and asserts the one-line
error ``erasec: error: <file>: <what is wrong>`` with exit 2: no traceback, no hang, nothing written.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from cli_helpers import run, spec_text
from erasec.compiler.models.layout import TEXT_CONFIG_METADATA, UNET_CONFIG_METADATA

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fake_patches import LAYER, write_fake_patch  # noqa: E402

SPEC = spec_text(name="inputs")


def _error(result) -> str:
    """The one line a refusal prints (asserting exit 2 and nothing else printed)."""
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1, result.output
    assert result.output.startswith("erasec: error: ")
    return result.output.removeprefix("erasec: error: ").rstrip("\n")


@pytest.fixture()
def spec(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC)
    return path


def _build(spec, model, *extra):
    return run("build", spec, "-o", spec.parent / "patch.safetensors", "--model", model, "--no-cache", *extra)


@pytest.fixture()
def folder(tmp_path, tiny_sd1_path):
    """A copy of builtin:tiny-sd1 to damage."""
    return Path(shutil.copytree(tiny_sd1_path, tmp_path / "model"))


# --- item 6: --allow-pickle reads .ckpt files, zip and legacy -----------------------------------------


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_a_ckpt_builds_and_verifies_with_allow_pickle(spec, tiny_sd1_single_file, tmp_path, zipped):
    checkpoint = tmp_path / "model.ckpt"
    torch.save({"state_dict": load_file(str(tiny_sd1_single_file))}, str(checkpoint), _use_new_zipfile_serialization=zipped)
    assert _error(_build(spec, checkpoint)) == (
        f"{checkpoint}: a .ckpt pickle can run arbitrary code when loaded, so erasec does not open it; "
        "convert it to .safetensors, or pass --allow-pickle to read it with torch.load(weights_only=True)"
    )
    result = run("build", spec, "-o", tmp_path / "patch.safetensors", "--model", checkpoint, "--allow-pickle")
    assert result.exit_code == 0, result.output  # the embedding cache on, as a user runs it
    patch = tmp_path / "patch.safetensors"
    with safe_open(str(patch), "np") as handle:
        base = json.loads(handle.metadata()["erasec.base"])
    assert base["dtype"] == "fp32" and base["tensors"] == 32  # storage dtype read from the pickle itself
    result = run("verify", patch, "--model", checkpoint, "--allow-pickle")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == f"{patch}: verified against {checkpoint}"
    assert "--allow-pickle" in _error(run("verify", patch, "--model", checkpoint))
    # the same tensors as a single .safetensors file: the base pin and text-encoder pin agree
    result = run("verify", patch, "--model", tiny_sd1_single_file, "--json")
    checks = {check["check"]: check["ok"] for check in json.loads(result.output)["checks"]}
    assert checks["base"] is True
    # a merged checkpoint is written only from safetensors: apply reaches that refusal, not a crash
    merged = tmp_path / "merged.safetensors"
    assert _error(run("apply", patch, "--model", checkpoint, "--allow-pickle", "-o", merged)) == (
        f"checkpoint: {checkpoint} is not a safetensors file; convert the model to .safetensors "
        "to write a merged checkpoint"
    )
    assert not merged.exists()


def test_a_malicious_pickle_is_refused_even_with_the_flag(spec, tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    for zipped in (True, False):
        evil = tmp_path / f"evil-{zipped}.ckpt"
        torch.save({"state_dict": {"x": Evil()}}, str(evil), _use_new_zipfile_serialization=zipped)
        assert _error(_build(spec, evil, "--allow-pickle")).startswith(
            f"{evil}: cannot load this pickle with weights_only=True ("
        )
    assert not (tmp_path / "pwned").exists()


# --- item 11: damaged tokenizer, text encoder, single-file header; symlink loops ----------------------


def test_a_truncated_vocab_json_is_named(spec, folder):
    vocab = folder / "tokenizer" / "vocab.json"
    vocab.write_text(vocab.read_text(encoding="utf-8")[:5000], encoding="utf-8")
    assert _error(_build(spec, folder)).startswith(f"{vocab}: not valid JSON (")


def test_garbage_merges_are_named_with_the_line(spec, folder):
    merges = folder / "tokenizer" / "merges.txt"
    merges.write_text("#version: 0.2\ni n\ngarbage\n", encoding="utf-8")
    assert _error(_build(spec, folder)) == f"{merges}:3: 'garbage' is not a merge of two tokens; re-download the tokenizer"
    merges.write_bytes(b"#version: 0.2\n\xff\xfe\n")
    assert _error(_build(spec, folder)).startswith(f"{merges}: unreadable ('utf-8' codec can't decode")


def test_a_truncated_tokenizer_json_is_named(spec, folder):
    tokenizer = folder / "tokenizer" / "tokenizer.json"
    tokenizer.write_text('{"version": "1.0", "model": {', encoding="utf-8")
    assert _error(_build(spec, folder)).startswith(f"{tokenizer}: not valid JSON (")


@pytest.mark.parametrize("cache", [False, True], ids=["no-cache", "cache"])
def test_truncated_text_encoder_weights_are_named(spec, folder, cache):
    weights = folder / "text_encoder" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    extra = () if cache else ("--no-cache",)
    result = run("build", spec, "-o", spec.parent / "patch.safetensors", "--model", folder, *extra)
    assert _error(result) == (
        f"{weights}: not a readable safetensors file (Error while deserializing header: "
        "incomplete metadata, file not fully covered); re-download or re-save it"
    )


def test_a_contradictory_text_encoder_config_is_named(spec, folder):
    config = folder / "text_encoder" / "config.json"
    data = json.loads(config.read_text())
    config.write_text(json.dumps({**data, "num_attention_heads": 5}))
    assert _error(_build(spec, folder)) == (
        f"{config}: not a usable CLIP text config (ValueError: The hidden size (32) is not a multiple of the "
        "number of attention heads (5).)"
    )


def _with_header(single_file: Path, path: Path, **changes: str) -> Path:
    with safe_open(str(single_file), "np") as handle:
        metadata = dict(handle.metadata())
    save_file(load_file(str(single_file)), str(path), metadata={**metadata, **changes})
    return path


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("{not json", "its erasec.text_encoders header is not JSON (Expecting property name enclosed in double "
                      "quotes: line 1 column 2 (char 1)); re-export the file"),
        ('{"text_encoder": [1]}', "its erasec.text_encoders header is not a JSON object of component → config "
                                  "fields; re-export the file"),
        ('{"text_encoder": {"num_attention_heads": "four"}}',
         "(cond_stage_model.transformer., as its erasec.text_encoders header sets): not a usable CLIP text config "
         "(TypeError: Field 'num_attention_heads' expected int, got str (value: 'four'))"),
        ('{"text_encoder": {"hidden_size": 7}}',
         "(cond_stage_model.transformer., as its erasec.text_encoders header sets): the text encoder's tensors do "
         "not fit its config (size mismatch for embeddings.token_embedding.weight: copying a param with shape "
         "torch.Size([49408, 32]) from checkpoint, the shape in current model is torch.Size([49408, 7]).)"),
    ],
    ids=["not-json", "not-objects", "wrong-type", "contradicts-shapes"],
)
def test_a_damaged_text_encoder_header_is_named(spec, tiny_sd1_single_file, tmp_path, header, message):
    damaged = _with_header(tiny_sd1_single_file, tmp_path / "damaged.safetensors", **{TEXT_CONFIG_METADATA: header})
    error = _error(_build(spec, damaged))
    assert error == f"{damaged}: {message}" or error == f"{damaged} {message}"


@pytest.mark.parametrize("field", ["layers_per_block", "attention_head_dim"])
def test_a_damaged_unet_config_header_is_one_line(tiny_sd1_single_file, tmp_path, field):
    with safe_open(str(tiny_sd1_single_file), "np") as handle:
        config = json.loads(handle.metadata()[UNET_CONFIG_METADATA])
    value = -1 if field == "layers_per_block" else 0  # each divided by zero in diffusers
    damaged = _with_header(tiny_sd1_single_file, tmp_path / "damaged.safetensors",
                           **{UNET_CONFIG_METADATA: json.dumps({**config, field: value})})
    result = run("export-onnx", "--model", damaged, "-o", tmp_path / "out", "--exporter", "legacy", "--static",
                  "--components", "unet")
    error = _error(result)
    assert error.startswith(f"{damaged}: ") and "erasec.unet_config header" in error
    assert "(integer division or modulo by zero)" in error
    assert not (tmp_path / "out").exists()


def test_a_symlink_loop_as_the_model_is_named(spec, tmp_path):
    loop = tmp_path / "loop.safetensors"
    other = tmp_path / "other.safetensors"
    loop.symlink_to(other)
    other.symlink_to(loop)
    assert _error(_build(spec, loop)) == f"{loop}: a symbolic link loop; point it at the model file"


def test_a_symlink_loop_inside_a_model_folder_is_named(spec, folder):
    config = folder / "text_encoder" / "config.json"
    config.unlink()
    config.symlink_to(config)
    assert _error(_build(spec, folder)) == f"{config}: a symbolic link loop; point it at the model file"


# --- item 12: a FIFO is refused before it is opened ---------------------------------------------------


def _build_in_subprocess(spec, model, tmp_path) -> subprocess.CompletedProcess:
    """``erasec build`` in a child with a timeout, so a hang fails the test instead of stalling it."""
    code = "from erasec.compiler.cli import main; main()"
    args = ["build", str(spec), "-o", str(tmp_path / "p.safetensors"), "--model", str(model), "--no-cache"]
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60)


def test_a_fifo_as_the_model_is_refused(spec, tmp_path):
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    result = _build_in_subprocess(spec, fifo, tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr == f"erasec: error: {fifo}: a FIFO, not a regular file; give the model's file itself\n"


@pytest.mark.parametrize("inside", ["text_encoder/config.json", "text_encoder/model.safetensors",
                                    "unet/diffusion_pytorch_model.safetensors", "tokenizer/merges.txt"])
def test_a_fifo_inside_a_model_folder_is_refused(spec, folder, tmp_path, inside):
    path = folder / inside
    path.unlink()
    os.mkfifo(path)
    result = _build_in_subprocess(spec, folder, tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("erasec: error: "), result.stderr
    assert str(path) in result.stderr or "no such file" in result.stderr or "no tokenizer files" in result.stderr


# --- items 11 and 13: ONNX graphs ---------------------------------------------------------------------


def _legacy_name(path: str) -> str:
    parts: list[str] = []
    for part in path.split("."):
        if part.isdigit():
            parts[-1] += f".{part}"
        else:
            parts.append(part)
    return "/unet/" + "/".join(parts) + "/MatMul"


def _graph(folder: Path, *, weight: np.ndarray | None = None, extra=(), external: str | None = None) -> Path:
    """The one-site graph ``fake_patches``' patch fits: ``out = x @ W0ᵀ`` in the legacy exporter's
    spelling (tests/backends/test_onnx_rewrite.py), W0 the patch's pinned base; ``external``: its
    weight in that external-data file."""
    base = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)  # write_fake_patch's base_seed 0
    weight = base if weight is None else weight
    initializer = numpy_helper.from_array(weight.T.copy(), "onnx::MatMul_100")
    node = helper.make_node("MatMul", ["x", "onnx::MatMul_100"], ["out"], name=_legacy_name(LAYER))
    graph = helper.make_graph(
        [node, *extra], "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", "seq", 8])], [initializer],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = folder / "unet.onnx"
    if external is None:
        onnx.save(model, str(path))
        return path
    onnx.save(model, str(path), save_as_external_data=True, location="unet.onnx.data", size_threshold=0)
    proto = onnx.load(str(path), load_external_data=False)
    for entry in proto.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = external
    onnx.save(proto, str(path))
    return path


@pytest.fixture()
def onnx_case(tmp_path):
    folder = tmp_path / "graph"
    folder.mkdir()
    return folder, write_fake_patch(tmp_path / "patch.safetensors"), tmp_path / "out.onnx"


def test_the_hand_built_graph_applies(onnx_case):
    folder, patch, out = onnx_case
    result = run("apply", patch, "--onnx", _graph(folder), "-o", out)
    assert result.exit_code == 0, result.output
    onnx.checker.check_model(str(out))


@pytest.mark.parametrize(
    ("location", "message"),
    [
        ("../../etc/passwd", "not a valid ONNX graph (Data of TensorProto ( tensor name: onnx::MatMul_100) should be "
                             "file inside '{folder}/', but '../../etc/passwd' points outside the directory.)"),
        ("/etc/passwd", "not a valid ONNX graph (Location of external TensorProto ( tensor name: onnx::MatMul_100) "
                        "should be a relative path, but it is an absolute path: /etc/passwd)"),
    ],
    ids=["traversal", "absolute"],
)
def test_external_data_outside_the_graphs_folder_is_refused(onnx_case, location, message):
    folder, patch, out = onnx_case
    graph = _graph(folder, external=location)
    assert _error(run("apply", patch, "--onnx", graph, "-o", out)) == f"{graph}: {message.format(folder=folder)}"
    assert not out.exists()


def test_external_data_through_a_link_out_of_the_folder_is_refused(onnx_case, tmp_path):
    folder, patch, out = onnx_case
    graph = _graph(folder, external="unet.onnx.data")
    outside = tmp_path / "outside.data"
    shutil.move(folder / "unet.onnx.data", outside)
    (folder / "unet.onnx.data").symlink_to(outside)
    assert _error(run("apply", patch, "--onnx", graph, "-o", out)) == (
        f"{graph}: not a valid ONNX graph (Data of TensorProto ( tensor name: onnx::MatMul_100) should be stored in "
        f"{folder / 'unet.onnx.data'}, but it is a symbolic link.)"
    )


def test_external_data_outside_the_folder_is_refused_without_the_checker(tmp_path):
    from erasec.backends.errors import BackendError
    from erasec.backends.onnx import load_graph
    from erasec.backends.onnx.checks import check_external_data

    folder = tmp_path / "graph"
    folder.mkdir()
    graph = _graph(folder, external="../outside.data")
    shutil.move(folder / "unet.onnx.data", tmp_path / "outside.data")
    with pytest.raises(BackendError) as caught:
        check_external_data(load_graph(graph), graph)
    assert str(caught.value) == (
        f"{graph}: initializer 'onnx::MatMul_100' reads external data '../outside.data', outside the graph's "
        "folder; external data must lie beside the graph"
    )


def test_truncated_external_data_is_refused(onnx_case):
    folder, patch, out = onnx_case
    graph = _graph(folder, external="unet.onnx.data")
    with open(folder / "unet.onnx.data", "r+b") as stream:
        stream.truncate(40)
    assert _error(run("apply", patch, "--onnx", graph, "-o", out)) == (
        f"{graph}: initializer 'onnx::MatMul_100' reads external data 'unet.onnx.data': the file has 40 bytes, "
        "the tensor ends at byte 128; the external data is truncated"
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([helper.make_node("Relu", ["missing"], ["r"], name="relu")],
         "not a valid ONNX graph (Nodes in a graph must be topologically sorted, however input 'missing' of node: )"),
        ([helper.make_node("Frobnicate", ["out"], ["r"], name="f")],
         "not a valid ONNX graph (No Op registered for Frobnicate with domain_version of 17)"),
    ],
    ids=["dangling-input", "unknown-op"],
)
@pytest.mark.parametrize("force", [False, True])
def test_a_corrupted_graph_is_refused_not_written(onnx_case, extra, message, force):
    folder, patch, out = onnx_case
    graph = _graph(folder, extra=extra)
    result = run("apply", patch, "--onnx", graph, "-o", out, *(["--force"] if force else []))
    assert _error(result) == f"{graph}: {message}"
    assert not out.exists()


@pytest.mark.parametrize("value", [np.nan, np.inf, 3e38])
def test_damaged_weights_are_one_line_without_numpy_warnings(onnx_case, value):
    folder, patch, out = onnx_case
    graph = _graph(folder, weight=np.full((8, 4), value, np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a RuntimeWarning would fail the run
        result = run("apply", patch, "--onnx", graph, "-o", out)
    error = _error(result)
    if np.isfinite(value):
        assert error.startswith(f"{graph}: 1 of the 1 located weights differ from the patch's base pin")
    else:
        assert error == (
            f"{graph}: 'onnx::MatMul_100' (node '{_legacy_name(LAYER)}') holds NaN or infinity; the graph is damaged"
        )
    assert not out.exists()


def test_a_written_graph_that_fails_the_checker_replaces_nothing(tmp_path):
    import onnx_ir as ir

    from erasec.backends.errors import BackendError
    from erasec.backends.onnx import write_graph

    folder = tmp_path / "graph"
    folder.mkdir()
    model = ir.load(_graph(folder))
    model.graph.append(ir.node("Frobnicate", [model.graph.outputs[0]], name="f"))  # what a bad rewrite could leave
    out = tmp_path / "out.onnx"
    out.write_bytes(b"previous")
    with pytest.raises(BackendError) as caught:
        write_graph(model, out)
    assert str(caught.value) == (
        f"{out}: the patched graph does not pass the ONNX checker (No Op registered for Frobnicate with "
        "domain_version of 17); nothing was written"
    )
    assert out.read_bytes() == b"previous" and sorted(p.name for p in tmp_path.iterdir()) == ["graph", "out.onnx"]
