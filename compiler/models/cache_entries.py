"""The embedding cache's store (``EmbeddingCache``) and entry formats: every entry carries its key and a SHA-256 of what it holds,
so a damaged entry (zero bytes, truncated, a flipped bit, a folder where a file should be) and an
entry that sits under another key's name (swapped or copied files) read as a miss (issue 16 items
5 and 10). The digest protects against accidents, not against a writer: anyone who can write the
cache folder can write a valid entry (docs/scaling.md, "What the cache trusts").

An array entry is one file::

    erasec-cache-entry 1\\n
    {"dtype": "<f4", "key": "…", "kind": "rows", "sha256": "…", "shape": [5, 768]}\\n
    <the array's bytes, little-endian, C order>

``sha256`` is the digest of the header line without it (sorted-key JSON, the same fields) followed
by the array's bytes. A JSON memo (a pin) is ``{"key", "sha256", "value"}`` with ``sha256`` over the
sorted-key JSON of ``[key, value]``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cache_dir import cache_root

logger = logging.getLogger(__name__)

MAGIC = b"erasec-cache-entry 1\n"
FOLDER = "embeddings"
SUFFIX = ".entry"
_DTYPES = ("<f4", "<f8")
_MAX_HEADER = 4096  # bytes; a longer first line is not a header this module wrote


class DamagedEntry(ValueError):
    """The bytes are not a valid entry for the key asked for; the message says why (for the log)."""


def _digest(header: dict, data: bytes) -> str:
    digest = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
    digest.update(b"\n")
    digest.update(data)
    return digest.hexdigest()


def pack_array(key: str, kind: str, array: np.ndarray) -> bytes:
    """The entry's bytes: ``array`` in float32 when that is exact (the encoders compute in float32),
    else float64."""
    array = np.asarray(array, dtype=np.float64)
    narrow = array.astype("<f4")
    value = narrow if np.array_equal(narrow.astype(np.float64), array) else array.astype("<f8")
    data = np.ascontiguousarray(value).tobytes()
    header = {"dtype": value.dtype.str, "key": key, "kind": kind, "shape": list(value.shape)}
    header["sha256"] = _digest(header, data)
    return MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n" + data


def unpack_array(blob: bytes, key: str, kind: str) -> np.ndarray:
    """The float64 array an entry holds, read-only; ``DamagedEntry`` unless it is whole, unaltered,
    finite and stored under ``key`` and ``kind``."""
    if not blob.startswith(MAGIC):
        raise DamagedEntry("no entry header" if blob else "empty file")
    end = blob.find(b"\n", len(MAGIC), len(MAGIC) + _MAX_HEADER)
    if end < 0:
        raise DamagedEntry("truncated header")
    try:
        header = json.loads(blob[len(MAGIC) : end])
    except ValueError:
        raise DamagedEntry("unreadable header") from None
    if not isinstance(header, dict) or sorted(header) != ["dtype", "key", "kind", "sha256", "shape"]:
        raise DamagedEntry("unexpected header fields")
    shape = header["shape"]
    if header["dtype"] not in _DTYPES or not isinstance(shape, list):
        raise DamagedEntry(f"dtype {header['dtype']!r} or shape {shape!r} is not an entry's")
    if not all(type(n) is int and 0 <= n < 2**31 for n in shape):
        raise DamagedEntry(f"shape {shape!r} is not an entry's")
    if header["key"] != key or header["kind"] != kind:
        raise DamagedEntry("stored under another key")  # a swapped or copied file
    data = blob[end + 1 :]
    if len(data) != np.dtype(header["dtype"]).itemsize * int(np.prod(shape, dtype=np.int64)):
        raise DamagedEntry(f"{len(data)} data bytes for shape {shape} {header['dtype']}")
    stored = header.pop("sha256")
    if _digest(header, data) != stored:
        raise DamagedEntry("checksum mismatch")
    array = np.frombuffer(data, dtype=header["dtype"]).reshape(shape).astype(np.float64)
    if not np.all(np.isfinite(array)):
        raise DamagedEntry("not finite")
    array.flags.writeable = False
    return array


def pack_json(key: str, value) -> bytes:
    digest = hashlib.sha256(json.dumps([key, value], sort_keys=True).encode()).hexdigest()
    return json.dumps({"key": key, "sha256": digest, "value": value}, sort_keys=True).encode()


def unpack_json(blob: bytes, key: str):
    """The value of a JSON memo; ``DamagedEntry`` unless it is whole, unaltered and under ``key``."""
    try:
        memo = json.loads(blob)
    except ValueError:
        raise DamagedEntry("unreadable JSON") from None
    if not isinstance(memo, dict) or sorted(memo) != ["key", "sha256", "value"] or memo["key"] != key:
        raise DamagedEntry("not a memo of this key")
    if hashlib.sha256(json.dumps([key, memo["value"]], sort_keys=True).encode()).hexdigest() != memo["sha256"]:
        raise DamagedEntry("checksum mismatch")
    return memo["value"]


@dataclass(frozen=True, slots=True)
class CacheInfo:
    root: Path
    entries: int
    bytes: int

    def as_dict(self) -> dict:
        return {"root": str(self.root), "entries": self.entries, "bytes": self.bytes}


class EmbeddingCache:
    """Entries under ``<erasec cache dir>/embeddings/<kind>/<key[:2]>/<key>.entry``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._writable = True  # until a write fails: then one warning, and no more tries

    @classmethod
    def at(cls, cache_dir: Path | None = None) -> EmbeddingCache:
        return cls(cache_root(cache_dir) / FOLDER)

    def _path(self, key: str, kind: str) -> Path:
        return self.root / kind / key[:2] / f"{key}{SUFFIX}"

    def _read(self, path: Path) -> bytes | None:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as error:  # a folder, unreadable: damaged
            self._discard(path, str(error))
            return None

    def _discard(self, path: Path, why: str) -> None:
        """Remove a damaged entry so the next build stores a good one (issue 16 item 5)."""
        logger.debug("embedding cache: %s is damaged (%s); encoding again", path, why)
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()

    def get(self, key: str, kind: str = "rows", shape: tuple[int, ...] | None = None) -> np.ndarray | None:
        """The float64 array stored under ``key`` (``kind``: ``rows``, ``pooled``, or ``grams`` for
        site Grams), or None when there is none, or none intact of ``shape``."""
        path = self._path(key, kind)
        blob = self._read(path)
        if blob is None:
            return None
        try:
            array = unpack_array(blob, key, kind)
            if shape is not None and array.shape != tuple(shape):
                raise DamagedEntry(f"shape {array.shape}, expected {tuple(shape)}")
        except (DamagedEntry, RecursionError) as error:
            self._discard(path, str(error))
            return None
        return array

    def put(self, key: str, array: np.ndarray, kind: str = "rows") -> None:
        blob = pack_array(key, kind, array)
        self._write(self._path(key, kind), blob)

    def memo(self, key: str) -> dict | None:
        """A JSON memo (a pin) stored by ``put_memo``, or None."""
        path = self.root / "pins" / f"{key}.json"
        blob = self._read(path)
        if blob is None:
            return None
        try:
            value = unpack_json(blob, key)
            if not isinstance(value, dict):
                raise DamagedEntry("not an object")
        except (DamagedEntry, RecursionError) as error:
            self._discard(path, str(error))
            return None
        return value

    def put_memo(self, key: str, value: dict) -> None:
        self._write(self.root / "pins" / f"{key}.json", pack_json(key, value))

    def _write(self, path: Path, blob: bytes) -> None:
        """Through the one writer (``patches/atomic.py``: fsync of file and folder, normal mode). A
        cache that cannot be written (read-only, full) is a warning, not a failed build: the build
        computes what it needs either way (issue 16 item 11)."""
        from erasec.patches.atomic import write_file
        from erasec.patches.errors import PatchError

        if not self._writable:
            return
        try:
            write_file(path, lambda stream: stream.write(blob))
        except PatchError as error:
            self._writable = False
            reason = str(error).split(": ", 1)[-1]
            logger.warning("erasec: warning: %s: cannot write the embedding cache (%s); building without storing", self.root, reason)

    def info(self) -> CacheInfo:
        files = list((self.root / "rows").glob(f"*/*{SUFFIX}")) if self.root.is_dir() else []
        return CacheInfo(root=self.root, entries=len(files), bytes=sum(f.stat().st_size for f in files))

    def clear(self) -> CacheInfo:
        """Remove every entry; returns what was there."""
        before = self.info()
        if self.root.is_dir():
            shutil.rmtree(self.root)
        return before
