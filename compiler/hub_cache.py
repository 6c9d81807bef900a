"""Hugging Face hub ids (``org/name[@revision]``) read from the local Hugging Face cache; erasec never downloads.

A user's models are often already in that cache (diffusers' ``from_pretrained``, ``hf download``).
The snapshot folder is found by huggingface_hub's own cache API (``snapshot_download`` with
``local_files_only=True``: no network, ``refs/<branch>`` or a commit hash, ``HF_HOME`` /
``HF_HUB_CACHE`` as huggingface_hub reads them), so erasec follows that library's layout
(``models--org--name/snapshots/<commit>/``) rather than its own copy of it.

Which reading wins: ``builtin:NAME`` is built in; an existing path is a path, even when it also
looks like ``org/name``; otherwise a location shaped like a hub id is one. ``hf:org/name`` forces
the hub reading and ``./org/name`` the path reading (docs/models.md).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import ModelError

HUB_PREFIX = "hf:"
# huggingface_hub's repo-id characters (validate_repo_id), one namespace; a revision is a branch, tag or commit
_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*)(?:@(?P<revision>[A-Za-z0-9._/-]+))?$")


def hub_id(location: str, base_dir: str | os.PathLike = ".") -> tuple[str, str | None] | None:
    """``(repo_id, revision)`` when ``location`` is read as a hub id, else None (a path, or builtin:);
    ``base_dir``: where a relative path would be (a spec's folder)."""
    forced = location.startswith(HUB_PREFIX)
    match = _HUB_ID.match(location.removeprefix(HUB_PREFIX))
    if forced and match is None:
        raise ModelError(f"{location}: not a hub id; write hf:ORG/NAME or hf:ORG/NAME@REVISION")
    if match is None or (not forced and os.path.lexists(os.path.join(base_dir, os.path.expanduser(location)))):
        return None  # an existing path wins
    return match["repo"], match["revision"]


def snapshot_folder(location: str) -> Path:
    """The cached snapshot of hub id ``location``; one line with the download command when it is not there."""
    repo, revision = hub_id(location)
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo, revision=revision, local_files_only=True))
    except LocalEntryNotFoundError:
        at = f" at revision {revision}" if revision else ""
        command = f"hf download {repo}" + (f" --revision {revision}" if revision else "")
        path_hint = "" if location.startswith(HUB_PREFIX) else f"; for a folder of that name write ./{location}"
        raise ModelError(
            f"{location}: no such file or folder, and not in the Hugging Face cache{at} ({constants.HF_HUB_CACHE}); "
            f"erasec never downloads: run {command}{path_hint}"
        ) from None
