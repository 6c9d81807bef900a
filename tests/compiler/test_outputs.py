"""Nothing is lost: the one atomic writer (patches/atomic.py) and the output-path policy
(patches/outputs.py, compiler/outputs.py), driven through the real ``erasec`` CLI on builtin:tiny-sd1
(issue 16 items 2, 3, 5, 11, 13; issue 12 items 2 and 9)."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from pathlib import Path

import pytest

from cli_helpers import fails, run, spec_text
from erasec.patches import atomic
from erasec.patches.errors import PatchError

SPEC = spec_text()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp"))


@pytest.fixture()
def spec(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC)
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A patch of SPEC, built once (a shared-form patch: retarget and apply take it)."""
    folder = tmp_path_factory.mktemp("built")
    (folder / "spec.yaml").write_text(SPEC)
    result = run("build", folder / "spec.yaml", "-o", folder / "patch.safetensors")
    assert result.exit_code == 0, result.output
    return folder / "patch.safetensors"


@pytest.fixture()
def no_work(monkeypatch):
    """Any model opening or evaluation fails the test: refusals must come before the work."""

    def forbidden(*args, **kwargs):
        raise AssertionError("the command started its work before refusing the output path")

    import erasec.compiler.eval.run as evaluation
    import erasec.compiler.models.open as model_open

    monkeypatch.setattr(model_open, "open_model", forbidden)
    monkeypatch.setattr(evaluation, "evaluate_patch", forbidden)


# --- the writer -------------------------------------------------------------------------------


@pytest.mark.parametrize("mask, file_mode, folder_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_written_files_and_folders_get_the_umask_mode(tmp_path, mask, file_mode, folder_mode):
    previous = os.umask(mask)
    try:
        atomic.write_file(tmp_path / "a" / "one.bin", lambda stream: stream.write(b"x"))

        def write(staging: Path) -> None:
            (staging / "tree").mkdir(mode=0o700)
            (staging / "tree" / "inner.bin").write_bytes(b"y")
            os.chmod(staging / "tree" / "inner.bin", 0o600)

        atomic.write_files_atomically([tmp_path / "tree"], write)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(tmp_path / "a" / "one.bin").st_mode) == file_mode  # mkstemp alone gives 0600
    assert stat.S_IMODE(os.stat(tmp_path / "tree").st_mode) == folder_mode
    assert stat.S_IMODE(os.stat(tmp_path / "tree" / "inner.bin").st_mode) == file_mode


def test_the_writer_fsyncs_the_file_and_then_its_folder(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def record(handle):
        synced.append("folder" if stat.S_ISDIR(os.fstat(handle).st_mode) else "file")
        real(handle)

    monkeypatch.setattr(atomic.os, "fsync", record)
    atomic.write_file(tmp_path / "x.bin", lambda stream: stream.write(b"data"))
    assert synced == ["file", "folder"]


def test_a_failed_write_leaves_no_temporary_file_and_no_folder_it_made(tmp_path):
    def full(stream):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    target = tmp_path / "new" / "sub" / "x.bin"
    with pytest.raises(PatchError, match=rf"^{target}: cannot write \(No space left on device\)$"):
        atomic.write_file(target, full)
    assert list(tmp_path.iterdir()) == []

    def half(staging: Path) -> None:
        (staging / "x.bin").write_bytes(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(PatchError, match="No space left on device"):
        atomic.write_files_atomically([target], half)
    assert list(tmp_path.iterdir()) == []


def test_the_writer_never_replaces_a_link_or_a_device(tmp_path):
    (tmp_path / "real").write_bytes(b"keep")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(PatchError, match="is a symbolic link"):
        atomic.write_file(tmp_path / "link", lambda stream: stream.write(b"new"))
    assert (tmp_path / "link").is_symlink() and (tmp_path / "real").read_bytes() == b"keep"
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(PatchError, match="not a regular file"):
        atomic.write_file(tmp_path / "fifo", lambda stream: stream.write(b"new"))
    assert stat.S_ISFIFO(os.lstat(tmp_path / "fifo").st_mode)
    assert _leftovers(tmp_path) == []


def test_outputs_of_every_kind_are_readable_by_other_users(built, tiny_sd1_path, tmp_path):
    """Issue 12 item 2: patch, merged checkpoint, single file, built-in cache: the umask's mode."""
    mask = atomic.current_umask()
    file_mode, folder_mode = 0o666 & ~mask, 0o777 & ~mask
    assert stat.S_IMODE(built.stat().st_mode) == file_mode
    assert stat.S_IMODE(tiny_sd1_path.stat().st_mode) == folder_mode  # mkdtemp alone gives 0700
    assert stat.S_IMODE((tiny_sd1_path / "unet").stat().st_mode) == folder_mode
    single = tmp_path / "single.safetensors"
    assert run("export-single-file", "builtin:tiny-sd1", "-o", single).exit_code == 0
    merged = tmp_path / "merged"
    assert run("apply", built, "--model", "builtin:tiny-sd1", "-o", merged).exit_code == 0
    for path in (single, merged / "unet" / "diffusion_pytorch_model.safetensors", merged / "model_index.json"):
        assert stat.S_IMODE(path.stat().st_mode) == file_mode, path
    assert stat.S_IMODE(merged.stat().st_mode) == folder_mode


# --- refused before the work (issue 12 item 9) --------------------------------------------------


def test_an_unwritable_output_folder_is_refused_before_the_build(spec, no_work):
    fails(["build", spec, "-o", "/proc/x.safetensors"], "/proc/x.safetensors: cannot write in /proc")


def test_eval_into_an_unwritable_folder_is_refused_before_the_evaluation(built, no_work):
    fails(["eval", built, "--model", "builtin:tiny-sd1", "-o", "/proc/erasec-report"], "/proc/erasec-report")
    assert not Path("/proc/erasec-report").exists()


def test_eval_on_a_full_disk_is_one_line_and_leaves_nothing(built, tmp_path, monkeypatch):
    """A full disk simulated by an fsync that fails with ENOSPC (the writer fsyncs every file)."""

    def full(handle):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic.os, "fsync", full)
    report = tmp_path / "report"
    args = ["eval", built, "--model", "builtin:tiny-sd1", "-o", report, "--suite", "artists",
            "--max-unrelated", "4", "--interference-max", "0"]
    fails(args, "cannot write (No space left on device)")
    assert list(tmp_path.iterdir()) == []


# --- what -o may name (issue 16 items 2, 3, 13) -------------------------------------------------


def test_a_device_or_fifo_is_never_replaced(spec, tmp_path, no_work):
    fails(["build", spec, "-o", "/dev/null", "--force"], "/dev/null: is a character device, not a regular file")
    assert stat.S_ISCHR(os.lstat("/dev/null").st_mode)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    fails(["build", spec, "-o", fifo, "--force"], f"{fifo}: is a FIFO")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_a_trailing_slash_or_a_folder_is_not_a_file_name(spec, tmp_path, no_work):
    fails(["build", spec, "-o", f"{tmp_path / 'newdir'}/"], f"{tmp_path / 'newdir'}: is a folder; give a file name")
    assert not (tmp_path / "newdir").exists()
    fails(["build", spec, "-o", tmp_path], "is a folder")


def test_a_symbolic_link_is_refused_not_replaced(spec, built, tmp_path, no_work):
    link = tmp_path / "link.safetensors"
    link.symlink_to(built)
    before = _digest(built)
    fails(["build", spec, "-o", link, "--force"], f"{link}: is a symbolic link")
    assert link.is_symlink() and _digest(built) == before


def test_an_input_is_never_an_output_even_with_force(spec, built, tiny_sd1_path, tmp_path, no_work):
    before = spec.read_text()
    fails(["build", spec, "-o", spec, "--force"], f"{spec}: is an input of this command")
    assert spec.read_text() == before
    unet = tiny_sd1_path / "unet" / "diffusion_pytorch_model.safetensors"
    model_digest = _digest(unet)
    fails(["build", spec, "-o", unet, "--force"], f"{unet}: is a file of the input {tiny_sd1_path}")
    fails(["apply", built, "--model", "builtin:tiny-sd1", "-o", built, "--force"], f"{built}: is an input")
    fails(["retarget", built, "--model", "builtin:tiny-sd1", "-o", built, "--force"], f"{built}: is an input")
    fails(["compose", built, built, "-o", built, "--force"], f"{built}: is an input")
    fails(["export-single-file", "builtin:tiny-sd1", "-o", unet, "--force"], "is a file of the input")
    fails(["export-onnx", "--model", tiny_sd1_path, "-o", tiny_sd1_path], f"{tiny_sd1_path}: is an input")
    fails(["eval", built, "--model", "builtin:tiny-sd1", "-o", tiny_sd1_path], "is an input")
    assert _digest(unet) == model_digest


def test_a_single_file_model_is_not_replaced_by_its_patch(spec, tmp_path):
    model = tmp_path / "m.safetensors"
    assert run("export-single-file", "builtin:tiny-sd1", "-o", model).exit_code == 0
    before = _digest(model)
    fails(["build", spec, "--model", model, "-o", model, "--force"], f"{model}: is an input of this command")
    fails(["build", spec, "--model", model, "-o", model], f"{model}: is an input of this command")
    assert _digest(model) == before
    # a rerun replaces erasec's own single file; a foreign file needs --force
    assert run("export-single-file", "builtin:tiny-sd1", "-o", model).exit_code == 0
    foreign = tmp_path / "notes.safetensors"
    foreign.write_bytes(b"mine")
    fails(["export-single-file", "builtin:tiny-sd1", "-o", foreign], f"{foreign}: exists and is not a single file")
    assert foreign.read_bytes() == b"mine"


def test_an_onnx_graph_and_its_external_data_are_inputs(built, tmp_path):
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((64, 64), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 64])], [weight],
    )
    path = tmp_path / "g.onnx"
    onnx.save_model(helper.make_model(graph), str(path), save_as_external_data=True, location="weights.bin",
                    size_threshold=0)
    data = tmp_path / "weights.bin"
    before = _digest(data)
    fails(["apply", built, "--onnx", path, "-o", data, "--force"], f"{data}: is an input of this command")
    fails(["apply", built, "--onnx", path, "-o", data], f"{data}: exists; pass --force to replace it")
    assert _digest(data) == before


def test_an_existing_file_is_replaced_only_when_it_is_the_same_artifact(spec, built, tmp_path):
    foreign = tmp_path / "notes.safetensors"
    foreign.write_bytes(b"my notes")
    fails(["build", spec, "-o", foreign], f"{foreign}: exists and is not an erasec patch named 'no-van-gogh'; "
                                           "pass --force to replace it")
    assert foreign.read_bytes() == b"my notes"
    other = tmp_path / "other.yaml"
    other.write_text(SPEC.replace("name: no-van-gogh", "name: another"))
    fails(["build", other, "-o", built], "is not an erasec patch named 'another'")
    # a rebuild replaces the patch of the same name; --force replaces a foreign file
    assert run("build", spec, "-o", built).exit_code == 0
    assert run("build", spec, "-o", foreign, "--force").exit_code == 0
    assert foreign.read_bytes()[:8] != b"my notes"
    merged = tmp_path / "merged.safetensors"
    merged.write_bytes(b"a model of mine")
    fails(["apply", built, "--model", "builtin:tiny-sd1.safetensors", "-o", merged], f"{merged}: exists; pass --force")
    fails(["apply", built, "--model", "builtin:tiny-sd1", "-o", tmp_path], "a merged folder is written to a new path")
    assert merged.read_bytes() == b"a model of mine"
    assert _leftovers(tmp_path) == []


def test_a_failed_write_leaves_no_empty_folder_it_made(spec, tmp_path, monkeypatch):
    def full(handle):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic.os, "fsync", full)
    out = tmp_path / "new" / "sub" / "p.safetensors"
    fails(["build", spec, "-o", out, "--no-cache"], f"{out}: cannot write (No space left on device)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]


# --- build-many (issue 16 item 13) --------------------------------------------------------------


def test_build_many_refuses_two_specs_with_one_output_before_building(tmp_path, no_work):
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "a.yaml").write_text(SPEC)
    (specs / "a.yml").write_text(SPEC.replace("Van Gogh", "Monet"))
    out = tmp_path / "out"
    fails(["build-many", specs, "-o", out], f"{specs / 'a.yaml'} and {specs / 'a.yml'}: both would write "
                                             f"{out / 'a.safetensors'}")
    assert not out.exists()


@pytest.mark.parametrize("jobs", ["0", "-3"])
def test_build_many_refuses_a_job_count_below_one(tmp_path, jobs, no_work):
    (tmp_path / "a.yaml").write_text(SPEC)
    fails(["build-many", tmp_path, "-o", tmp_path / "out", "-j", jobs], f"-j/--jobs: {jobs} is not a number")
    assert not (tmp_path / "out").exists()


# --- the built-in model cache (issue 16 item 11) -------------------------------------------------


def test_an_unwritable_builtin_cache_is_one_line(spec, tmp_path, monkeypatch):
    monkeypatch.setenv("ERASEC_CACHE_DIR", "/proc/erasec-cache")
    fails(["build", spec, "-o", tmp_path / "p.safetensors"], "/proc/erasec-cache/models/tiny-sd1-v1: cannot write here")
    assert not (tmp_path / "p.safetensors").exists()

