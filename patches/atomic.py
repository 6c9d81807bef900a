"""All-or-nothing writing of artifacts made of several files (an ONNX graph, its external data,
its adapter): they are written into a temporary folder beside the target, checked, then renamed
into place one by one, so a failed write leaves any previous files untouched."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Sequence

from .errors import PatchError


def write_files_atomically(paths: Sequence[Path], write: Callable[[Path], None]) -> None:
    """``write(folder)`` must create every ``folder / path.name``; then each is renamed to ``path``.

    All paths must share one folder (renames are atomic only within a file system).
    """
    paths = [Path(p) for p in paths]
    folder = paths[0].parent if str(paths[0].parent) else Path(".")
    if any(p.parent != paths[0].parent for p in paths):
        raise PatchError(f"{paths[0]}: the files of one artifact must share a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{paths[0].name}.", suffix=".tmp", dir=folder))
    except OSError as error:
        raise PatchError(f"{paths[0]}: cannot write here ({error.strerror})") from None
    try:
        write(staging)
        for path in paths:
            if not (staging / path.name).exists():  # a file, or a folder (a merged diffusers model)
                raise PatchError(f"{path}: was not written")
        for path in paths:
            os.replace(staging / path.name, path)
    except OSError as error:
        raise PatchError(f"{paths[0]}: cannot write ({error.strerror})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
