"""erasec's cache folder (``$ERASEC_CACHE_DIR``, else ``~/.cache/erasec``) and the one way an entry
appears in it: written aside, renamed into place. The built-in models, the embedding cache and the
remembered tokenizers live there."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

logger = logging.getLogger(__name__)


def cache_root(cache_dir: Path | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("ERASEC_CACHE_DIR")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "erasec"


def cached(kind: str, name: str, write: Callable[[Path], None], cache_dir: Path | None, *, folder: bool) -> Path:
    """``<cache>/<kind>/<name>``, written by ``write(staging_path)`` on first use and renamed into place,
    so a reader never sees a half-written copy; when two processes race, the loser discards its own."""
    root = cache_root(cache_dir) / kind
    final = root / name
    if final.exists():
        return final
    from erasec.patches.atomic import commit, staging_folder  # the one writer: normal modes, fsync

    with staging_folder(final) as staging:
        target = staging / name
        if folder:
            target.mkdir()
        logger.info("writing %s", final)
        write(target)
        try:
            commit(target, final)
        except OSError:
            if not final.exists():
                raise
            logger.info("%s was written concurrently; using it", final)
    return final
