"""Where a command may write: the output-path policy every writing command applies *before* its work.

Checked for a file output (``-o`` of build, build-many, apply, compose, retarget,
export-single-file, and of ``apply --onnx``, with each file it adds beside the graph):

* ``-o newdir/`` (a trailing slash) or an existing folder names a folder, not a file: refused.
* a symbolic link is refused, never replaced nor written through: a link may point anywhere
  (another user's model, a hub folder), so the user names the real path or removes the link.
* an existing path that is not a regular file (a device such as ``/dev/null``, a FIFO, a socket)
  is refused: renaming over it would replace the node itself.
* the output may not be any input of the command (the same file by device and inode: the spec,
  the model file, a patch, an ONNX graph or its external data), nor an existing file inside an input
  folder (a file of a diffusers model): refused even with ``--force``.
* an existing regular file is replaced only when it is *the same artifact* — for a patch, an
  erasec patch of the same ``erasec.name`` (a rebuild); for a single file, one erasec wrote (its
  header has ``erasec.unet_config``) — or with ``--force``. A merged checkpoint or ONNX graph
  carries no mark that tells it from the user's own model (its header is the base's, byte for
  byte), so replacing one always needs ``--force``.
* the folder must exist or be creatable, and be writable: tried by creating and removing a
  temporary file in the nearest existing folder, so nothing is left when the check fails.

A folder output (``export-onnx -o``, ``eval -o``, a merged diffusers folder) may not be an
existing file nor any input folder; whether it may already exist is the command's own rule.
Every refusal is one ``PatchError`` line naming the path; the CLI exits 2.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import Callable, Iterable

from .errors import PatchError

_NODE_KINDS = (
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
    (stat.S_ISFIFO, "FIFO"),
    (stat.S_ISSOCK, "socket"),
)


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):  # a file on the way is named by _check_writable
        return None
    except OSError as error:
        raise PatchError(f"{path}: cannot use it as an output ({error.strerror})") from None


def _check_writable(output: Path) -> None:
    """The nearest existing folder above ``output`` is a folder and a temporary file can be made
    in it (``os.access`` says yes to root on /proc and on read-only mounts, so try it)."""
    folder = output.parent if str(output.parent) else Path(".")
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise PatchError(f"{output}: cannot create folder {folder}: {existing} is a file")
    try:
        handle, probe = tempfile.mkstemp(prefix=".erasec-probe.", suffix=".tmp", dir=existing)
    except OSError as error:
        raise PatchError(f"{output}: cannot write in {existing} ({error.strerror})") from None
    os.close(handle)
    os.unlink(probe)


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _check_not_input(output: Path, inputs: Iterable) -> None:
    """Refuse ``output`` when it is an input, or an existing file inside an input folder."""
    mine = _lstat(output)
    for given in inputs:
        if given is None:
            continue
        source = Path(given)
        try:
            theirs = os.stat(source)
        except OSError:
            continue
        if mine is not None and _same(mine, theirs):
            raise PatchError(f"{output}: is an input of this command ({source}); write to a new path")
        if mine is not None and stat.S_ISDIR(theirs.st_mode):
            parent = output.resolve().parent
            for folder in (parent, *parent.parents):
                try:
                    if _same(os.stat(folder), theirs):
                        raise PatchError(f"{output}: is a file of the input {source}; write outside it")
                except OSError:
                    break


def _refuse_odd(raw: str, output: Path, info: os.stat_result | None, example: str) -> None:
    if raw.endswith(("/", os.sep)) or (info is not None and stat.S_ISDIR(info.st_mode)):
        raise PatchError(f"{output}: is a folder; give a file name such as {output / example}")
    if info is None:
        return
    if stat.S_ISLNK(info.st_mode):
        raise PatchError(
            f"{output}: is a symbolic link (to {os.readlink(output)}); erasec does not replace or follow links: "
            "give the real path, or remove the link"
        )
    for test, kind in _NODE_KINDS:
        if test(info.st_mode):
            raise PatchError(f"{output}: is a {kind}, not a regular file; erasec never replaces one")


def check_output(
    output: str | os.PathLike,
    *,
    inputs: Iterable = (),
    force: bool = False,
    same_artifact: Callable[[Path], str | None] | None = None,
    example: str = "patch.safetensors",
) -> Path:
    """Check a file output before any work (the rules in the module docstring); returns it as a Path.

    ``same_artifact(existing)`` returns None when the existing file may be replaced, else what the
    new file is (for the message: "an erasec patch named 'x'"); None means nothing is replaced
    without ``force``. ``example`` is the file name suggested when a folder is given.
    """
    raw = os.fspath(output)
    path = Path(raw)
    info = _lstat(path)
    _refuse_odd(raw, path, info, example)
    _check_not_input(path, inputs)
    if info is not None and not force:
        if same_artifact is None:
            raise PatchError(f"{path}: exists; pass --force to replace it")
        wanted = same_artifact(path)
        if wanted is not None:
            raise PatchError(f"{path}: exists and is not {wanted}; pass --force to replace it")
    _check_writable(path)
    return path


def check_output_folder(
    output: str | os.PathLike, *, inputs: Iterable = (), exist_ok: bool = True, exists_hint: str = "give a new folder"
) -> Path:
    """Check a folder output before any work: not a file, link or device, not an input folder,
    not existing unless ``exist_ok``, and creatable in a writable folder."""
    path = Path(output)
    info = _lstat(path)
    for given in inputs:
        if given is not None and info is not None and Path(given).exists() and path.samefile(given):
            raise PatchError(f"{path}: is an input of this command ({given}); give another folder")
    if info is not None and stat.S_ISLNK(info.st_mode) and not path.is_dir():
        raise PatchError(f"{path}: is a symbolic link to no folder; give a folder")
    if info is not None and not path.is_dir():
        raise PatchError(f"{path}: is a file; give a folder")
    if info is not None and not exist_ok:
        raise PatchError(f"{path}: exists; {exists_hint}")
    if path.is_dir():
        _check_writable(path / "report")
    else:
        _check_writable(path)
    return path


def erasec_patch_named(name: str) -> Callable[[Path], str | None]:
    """``same_artifact`` for a patch: an existing erasec patch with ``erasec.name`` == ``name``."""
    from .safetensors_io import read_header

    def check(existing: Path) -> str | None:
        try:
            _, metadata = read_header(existing)
        except PatchError:
            metadata = {}
        return None if metadata.get("erasec.name") == name else f"an erasec patch named {name!r}"

    return check


def erasec_single_file(existing: Path) -> str | None:
    """``same_artifact`` for ``export-single-file``: a single file erasec wrote (``erasec.unet_config``,
    or a diffusion transformer's ``erasec.transformer_config``)."""
    from .safetensors_io import read_header

    try:
        _, metadata = read_header(existing)
    except PatchError:
        metadata = {}
    written = "erasec.unet_config" in metadata or "erasec.transformer_config" in metadata
    return None if written else "a single file erasec wrote"
