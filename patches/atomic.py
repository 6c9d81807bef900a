"""The one way erasec writes a file or folder: all or nothing, durable, with a normal mode.

Every output — patches, merged checkpoints, single files, ONNX graphs and adapters, published
files, eval reports, the built-in model cache, the embedding cache, the tokenizer memo — goes
through this module:

1. the content is written under a temporary name *beside* the target (renames are atomic only
   within one file system), in missing folders made for it;
2. each written file is flushed and ``fsync``-ed, then given the mode a plain ``open()`` or
   ``mkdir`` would have given it (``0666 & ~umask``, folders ``0777 & ~umask``): ``mkstemp`` and
   ``mkdtemp`` make 0600/0700, which another user's loader (a ComfyUI service, a container) cannot
   read (issue 12 item 2);
3. it is renamed over the target and the folder is ``fsync``-ed, so after a power loss the target
   is either the old file or the whole new one (issue 16 item 5);
4. on any failure the temporary file or folder is removed, and so is every folder made in step 1
   that is still empty: a failed write leaves nothing behind and the previous target untouched.

A target that is a symbolic link or not a regular file (a device, FIFO or socket) is never
replaced: ``os.replace`` would swap the link or the device node itself for a regular file. The
commands refuse such outputs before any work (``patches/outputs.py``); this is the last guard.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Sequence

from .errors import PatchError


def current_umask() -> int:
    """The process umask, read without changing it where the OS tells it (Linux ≥ 4.7)."""
    try:
        with open("/proc/self/status", encoding="ascii") as stream:
            for line in stream:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_mode(*, folder: bool = False) -> int:
    """What ``open(path, "w")`` (or ``mkdir``) would give a new file (folder) now."""
    return (0o777 if folder else 0o666) & ~current_umask()


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable; file systems that cannot fsync a folder are skipped."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(handle)


def _make_folders(folder: Path) -> list[Path]:
    """Make ``folder`` and its missing parents; returns those made, deepest first."""
    made = []
    probe = folder
    while not probe.exists() and probe != probe.parent:
        made.append(probe)
        probe = probe.parent
    done: list[Path] = []
    for path in reversed(made):
        try:
            path.mkdir()
        except FileExistsError:  # made meanwhile by another writer: not ours to remove
            continue
        except OSError:
            _remove_empty(done[::-1])
            raise
        done.append(path)
    return done[::-1]


def _remove_empty(made: list[Path]) -> None:
    for path in made:  # deepest first
        try:
            path.rmdir()
        except OSError:  # not empty (another writer uses it), or gone
            return


def _guard_target(path: Path) -> None:
    """Refuse to replace a symbolic link or a non-regular file (see the module docstring)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as error:
        raise PatchError(f"{path}: cannot write ({error.strerror})") from None
    if stat.S_ISLNK(info.st_mode):
        raise PatchError(f"{path}: is a symbolic link; erasec does not replace links")
    if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
        raise PatchError(f"{path}: is not a regular file; erasec never replaces it")


def _settle(path: Path) -> None:
    """Give ``path`` (a file, or a folder and everything in it) the default modes and fsync it."""
    file_mode, folder_mode = default_mode(), default_mode(folder=True)
    if not path.is_dir():
        os.chmod(path, file_mode)
        with open(path, "rb") as stream:
            os.fsync(stream.fileno())
        return
    for root, folders, files in os.walk(path):
        os.chmod(root, folder_mode)
        for name in files:
            file = Path(root) / name
            if not file.is_symlink():
                os.chmod(file, file_mode)
                with open(file, "rb") as stream:
                    os.fsync(stream.fileno())
        _fsync_folder(Path(root))


def commit(staged: Path, target: Path) -> None:
    """Settle ``staged`` (a file or folder beside ``target``) and rename it over ``target``, durably."""
    _settle(staged)
    _guard_target(target)
    os.replace(staged, target)
    _fsync_folder(target.parent)


@contextlib.contextmanager
def staging_folder(target: Path) -> Iterator[Path]:
    """A new temporary folder beside ``target`` (missing parents made); on exit it is removed with
    what is left in it, and on failure so are the parents it made, if empty."""
    target = Path(target)
    folder = target.parent
    try:
        made = _make_folders(folder)
    except OSError as error:
        raise PatchError(f"{target}: cannot write here ({error.strerror})") from None
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder))
    except OSError as error:
        _remove_empty(made)
        raise PatchError(f"{target}: cannot write here ({error.strerror})") from None
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        _remove_empty(made)
        raise
    shutil.rmtree(staging, ignore_errors=True)


def write_file(path: Path, write: Callable[[BinaryIO], None], *, check: Callable[[Path], None] | None = None) -> None:
    """Write one file: ``write(stream)`` fills a temporary file beside ``path``, ``check(temporary)``
    may refuse it (raising), then it is renamed over ``path``. ``PatchError`` names ``path``."""
    path = Path(path)
    folder = path.parent
    made: list[Path] = []
    try:
        made = _make_folders(folder)
        handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as error:
        _remove_empty(made)
        raise PatchError(f"{path}: cannot write here ({error.strerror})") from None
    temporary = Path(name)
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, default_mode())
        if check is not None:
            check(temporary)
        _guard_target(path)
        os.replace(temporary, path)
        _fsync_folder(folder)
    except OSError as error:
        _cleanup(temporary, made)
        raise PatchError(f"{path}: cannot write ({error.strerror})") from None
    except BaseException:
        _cleanup(temporary, made)
        raise


def _cleanup(temporary: Path, made: list[Path]) -> None:
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    _remove_empty(made)


def write_files_atomically(paths: Sequence[Path], write: Callable[[Path], None]) -> None:
    """``write(folder)`` must create every ``folder / path.name`` (a file, or a folder such as a
    merged diffusers model); then each is settled and renamed to ``path``.

    All paths must share one folder (renames are atomic only within a file system).
    """
    paths = [Path(p) for p in paths]
    if any(p.parent != paths[0].parent for p in paths):
        raise PatchError(f"{paths[0]}: the files of one artifact must share a folder")
    with staging_folder(paths[0]) as staging:
        try:
            write(staging)
            for path in paths:
                if not (staging / path.name).exists():
                    raise PatchError(f"{path}: was not written")
            for path in paths:
                commit(staging / path.name, path)
        except OSError as error:
            raise PatchError(f"{paths[0]}: cannot write ({error.strerror})") from None
