"""The ``erasec`` command as a user runs it: summaries, JSON, determinism, and clean failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

from cli_helpers import KELLY, PRESERVE, VAN_GOGH, fails, run, spec_text

ROOT = Path(__file__).resolve().parents[2]

SPEC = spec_text(version="1.2.0", erase=(VAN_GOGH, KELLY), preserve=PRESERVE)


@pytest.fixture()
def spec(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC)
    return path


def test_build_prints_a_summary_and_writes_a_kohya_lora(spec, tmp_path):
    out = tmp_path / "patch.safetensors"
    result = run("build", spec, "-o", out)
    assert result.exit_code == 0, result.output
    text = result.output
    assert f"built {out}" in text and "model    builtin:tiny-sd1 (sd1)" in text
    assert "rank     2 in each of 32 layers" in text
    assert "Van Gogh" in text and "Kelly McKernan" in text and "specificity" in text
    with safe_open(str(out), "np") as f:
        keys = set(f.keys())
        meta = f.metadata()
    assert len(keys) == 96 and all(k.startswith("lora_unet_") for k in keys)
    assert meta["erasec.name"] == "no-van-gogh" and meta["erasec.version"] == "1.2.0"
    assert meta["ss_network_dim"] == meta["ss_network_alpha"] == "2"
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert meta["erasec.pipeline"] == "canonicalize{eps=1e-09},solve{max-condition=1e+12},compress{dtype=fp32 max-rank=0 max-error=0}"
    assert [e["concept"] for e in json.loads(meta["erasec.spec"])["erase"]] == ["Kelly McKernan", "Van Gogh"]  # sorted


def test_json_summary(spec, tmp_path):
    result = run("build", spec, "-o", tmp_path / "p.safetensors", "--json")
    assert result.exit_code == 0
    summary = json.loads(result.output)
    assert summary["rank"] == 2 and summary["layers"] == 32 and summary["method"] == "uce"
    assert summary["rows"] == {"erase": 2, "preserve": 2, "hard": 0}
    efficacy = summary["scores"]["efficacy"]
    assert set(efficacy) == {"Van Gogh", "Kelly McKernan"}
    assert all(0.5 < v <= 1.0 for v in efficacy.values())
    assert 0.0 < summary["scores"]["specificity"] < 1.0
    assert set(summary["seconds"]) >= {"load", "encode", "solve", "emit", "total"}


def test_two_builds_are_byte_identical(spec, tmp_path):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    assert run("build", spec, "-o", a).exit_code == 0
    assert run("build", spec, "-o", b).exit_code == 0
    assert a.read_bytes() == b.read_bytes()


def test_print_ir_after_all(spec, tmp_path):
    result = run("build", spec, "-o", tmp_path / "p.safetensors", "--print-ir-after=all", "--verify-each")
    assert result.exit_code == 0
    err = result.stderr
    assert err.count("// ----- IR after") == 3
    assert "// ----- IR after solve{max-condition=1e+12} ----- //" in err
    assert "solution clip-l form=shared rank=2" in err


def test_bad_spec_is_one_line_exit_2_and_no_output(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(SPEC.replace("  - {concept: Kelly McKernan}\n", "  - {concept: Kelly McKernan, strength: -1}\n"))
    out = tmp_path / "p.safetensors"
    fails(["build", bad, "-o", out], f"{bad}:8: erase[1].strength: -1")
    assert not out.exists()


def test_missing_model_folder(spec, tmp_path):
    out = tmp_path / "p.safetensors"
    fails(["build", spec, "-o", out, "--model", tmp_path / "nowhere"], str(tmp_path / "nowhere"))
    assert not out.exists()


def test_unwritable_output_paths(spec, tmp_path):
    (tmp_path / "file").write_text("")
    fails(["build", spec, "-o", tmp_path / "file" / "sub" / "p.safetensors"], f"{tmp_path / 'file'} is a file")
    fails(["build", spec, "-o", tmp_path], "is a folder")
    assert not (tmp_path / "file" / "sub").exists()


def test_model_and_solve_errors_name_the_spec_file_and_line(tmp_path):
    """A model the spec names, or a system its rows make, is refused with the spec's file (and the
    model's line); a --model from the command line is named as given."""
    missing = tmp_path / "missing.yaml"
    missing.write_text(SPEC.replace("model: builtin:tiny-sd1", "model: ./nomodel"))
    line = 1 + SPEC.splitlines().index("model: builtin:tiny-sd1")
    fails(["build", missing, "-o", tmp_path / "p.safetensors"], f"{missing}:{line}: model: {tmp_path / 'nomodel'}: no such")
    flag = fails(["build", missing, "-o", tmp_path / "p.safetensors", "--model", tmp_path / "other"], "no such")
    assert flag.startswith(f"erasec: error: {tmp_path / 'other'}: no such file or folder")
    singular = tmp_path / "singular.yaml"
    singular.write_text(SPEC + "options: {lambda: 0}\n")
    fails(["build", singular, "-o", tmp_path / "p.safetensors"], f"{singular}: solve: key space clip-l: the system")


def test_missing_output_folders_are_made(spec, tmp_path):
    out = tmp_path / "new" / "dir" / "p.safetensors"
    assert run("build", spec, "-o", out).exit_code == 0
    assert out.is_file()


def test_a_failed_build_leaves_no_file_and_keeps_an_old_one(tmp_path):
    singular = tmp_path / "singular.yaml"
    singular.write_text(SPEC + "options: {lambda: 0}\n")
    out = tmp_path / "p.safetensors"
    fails(["build", singular, "-o", out], "solve: key space clip-l: the system is singular or ill-conditioned")
    assert not out.exists()
    out.write_bytes(b"previous patch")  # not an erasec patch of this name: replacing it needs --force
    fails(["build", singular, "-o", out, "--force"], "raise options.lambda (now 0)")
    assert out.read_bytes() == b"previous patch"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_the_real_entry_point_exits_2_without_a_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("erasec: 1\nname: x\n")
    env = dict(os.environ)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bin" / "erasec"), "build", str(bad), "-o", str(tmp_path / "p.safetensors")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"erasec: error: {bad}:")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_the_order_of_the_spec_lists_does_not_change_the_bytes(spec, tmp_path):
    permuted = tmp_path / "permuted.yaml"
    permuted.write_text(
        SPEC.replace("  - {concept: Van Gogh, anchor: art}\n  - {concept: Kelly McKernan}\n",
                     "  - {concept: Kelly McKernan}\n  - {concept: Van Gogh, anchor: art}\n")
        .replace("[Claude Monet, a photo of a cat]", "[a photo of a cat, Claude Monet]")
    )
    assert permuted.read_text() != spec.read_text()
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    assert run("build", spec, "-o", a).exit_code == 0
    assert run("build", permuted, "-o", b).exit_code == 0
    assert a.read_bytes() == b.read_bytes()


def test_on_conflict_error_stops_the_build(tmp_path):
    conflicting = tmp_path / "conflict.yaml"
    conflicting.write_text(
        SPEC.replace("[Claude Monet, a photo of a cat]", "[Van Gogh, a photo of a cat]") + "options: {on_conflict: error}\n"
    )
    out = tmp_path / "p.safetensors"
    line = fails(["build", conflicting, "-o", out], "check-conflicts: key space clip-l: erase 'Van Gogh' (prompt 'Van Gogh') is preserved too")
    assert line.endswith("set options.on_conflict: warn to build anyway")
    assert not out.exists()
    warned = tmp_path / "warn.yaml"
    warned.write_text(conflicting.read_text().replace("on_conflict: error", "on_conflict: warn"))
    result = run("build", warned, "-o", out)
    assert result.exit_code == 0
    assert "warning [check-conflicts]" in result.output or "lies in the preserved span" in result.output


def test_preserving_an_erased_concept_warns_with_the_fix(tmp_path):
    clash = tmp_path / "clash.yaml"
    clash.write_text(SPEC.replace("[Claude Monet, a photo of a cat]", "[van gogh, a photo of a cat]"))
    result = run("build", clash, "-o", tmp_path / "p.safetensors")
    assert result.exit_code == 0
    assert "warning [lowering] preserve prompt 'van gogh' is the erased concept 'Van Gogh'" in result.output


def test_nan_weights_are_refused_naming_the_tensor(tmp_path, tiny_sd1_path):
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_sd1_path, damaged)
    unet = damaged / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(unet))
    name = "mid_block.attentions.0.transformer_blocks.0.attn2.to_v.weight"
    tensors[name][0, 0] = float("nan")
    save_file(tensors, str(unet))
    out = tmp_path / "p.safetensors"
    fails(["build", _spec_file(tmp_path), "-o", out, "--model", damaged],
           f"{name} contains NaN or infinity; the model file is damaged")
    assert not out.exists()


def _spec_file(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(SPEC)
    return path


def _stderr_on_a_terminal(args):
    """Run the real entry point with stderr on a pseudo-terminal; return what the terminal got."""
    import pty

    master, slave = pty.openpty()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bin" / "erasec"), *map(str, args)],
        stdout=subprocess.PIPE, stderr=slave, timeout=600,
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the writer side is closed and drained
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    return proc, b"".join(chunks).decode(errors="replace")


def test_build_shows_a_progress_bar_on_a_terminal_but_not_with_json(spec, tmp_path):
    proc, terminal = _stderr_on_a_terminal(["build", spec, "-o", tmp_path / "a.safetensors"])
    assert proc.returncode == 0
    assert "erasec build" in terminal
    proc, terminal = _stderr_on_a_terminal(["build", spec, "-o", tmp_path / "b.safetensors", "--json"])
    assert proc.returncode == 0 and json.loads(proc.stdout)["rank"] == 2
    assert "erasec build" not in terminal
    # and off a terminal (CliRunner's stderr is a pipe) there is none either
    assert "erasec build" not in run("build", spec, "-o", tmp_path / "c.safetensors").stderr
