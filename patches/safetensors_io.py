"""Deterministic, atomic safetensors writing.

The data section comes from ``safetensors`` itself (tensors sorted by dtype alignment, then name:
research/ecosystem.md §2.1). Its header, however, is serialised from a Rust ``HashMap`` whose
order changes from process to process (measured: three runs, three different headers), which
would break byte-identical builds. So the header is re-serialised here with sorted keys — the
format allows any key order — and the file is checked by reading it back before it is renamed
into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Mapping

from .atomic import write_file
from .errors import PatchError

MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit (MAX_HEADER_SIZE)


def encode(tensors: Mapping[str, "object"]) -> tuple[dict, memoryview]:
    """(tensor entries of the header, data section) as ``safetensors`` lays out torch ``tensors``."""
    from safetensors.torch import save

    raw = save(dict(tensors))
    (length,) = struct.unpack("<Q", raw[:8])
    entries = json.loads(raw[8 : 8 + length])
    entries.pop("__metadata__", None)
    return entries, memoryview(raw)[8 + length :]


def header_bytes(entries: Mapping[str, dict], metadata: Mapping[str, str]) -> bytes:
    """The length prefix and canonical header (sorted keys, padded to 8 bytes) for ``entries`` and
    ``str → str`` metadata: the bytes before a data section from ``encode``."""
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise PatchError(f"metadata {key!r}: safetensors metadata is str → str, got {type(value).__name__}")
    ordered: dict = {"__metadata__": dict(sorted(metadata.items()))}  # as safetensors writes it, even if empty
    ordered.update(sorted(entries.items()))
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def serialize(tensors: Mapping[str, "object"], metadata: Mapping[str, str]) -> bytes:
    """The file bytes for torch ``tensors`` and ``str → str`` metadata, with a canonical header."""
    entries, data = encode(tensors)
    return header_bytes(entries, metadata) + data


def data_sha256(raw: bytes) -> str:
    """sha256 of the bytes after the header: kohya's ``sshs_model_hash`` (the "addnet" hash)."""
    (length,) = struct.unpack("<Q", raw[:8])
    return hashlib.sha256(memoryview(raw)[8 + length :]).hexdigest()


def atomic_write(path: Path, raw: bytes | tuple) -> None:
    """Write ``raw`` (bytes, or a tuple of byte buffers written one after another) to ``path``
    through the one writer (``patches/atomic.py``: temporary file beside it, fsync, normal mode,
    rename), refusing it first if it does not parse: a reader never sees a partial file."""
    path = Path(path)

    def write(stream) -> None:
        for part in raw if isinstance(raw, tuple) else (raw,):
            stream.write(part)

    def check(temporary: Path) -> None:
        try:
            read_header(temporary)
        except PatchError as error:
            reason = str(error).split(": ", 1)[1]
            raise PatchError(f"{path}: refusing to write an invalid safetensors file ({reason})") from None

    write_file(path, write, check=check)


def read_header(path: Path) -> tuple[dict, dict[str, str]]:
    """(tensor entries, metadata) of a safetensors file, size-checked, never executing anything."""
    path = Path(path)
    try:
        with open(path, "rb") as stream:
            prefix = stream.read(8)
            if len(prefix) < 8:
                raise PatchError(f"{path}: truncated safetensors file (no header length)")
            (length,) = struct.unpack("<Q", prefix)
            if length > MAX_HEADER_BYTES:
                raise PatchError(
                    f"{path}: not a safetensors file (a header of {length} bytes exceeds safetensors' limit "
                    f"of {MAX_HEADER_BYTES})"
                )
            text = stream.read(length)
            size = os.fstat(stream.fileno()).st_size
    except OSError as error:
        raise PatchError(f"{path}: cannot read ({error.strerror})") from None
    if len(text) < length:
        raise PatchError(f"{path}: truncated safetensors header")
    try:
        header = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise PatchError(f"{path}: the safetensors header is not valid JSON") from None
    if not isinstance(header, dict):
        raise PatchError(f"{path}: the safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", {}) or {}
    try:
        end = max((int(entry["data_offsets"][1]) for entry in header.values()), default=0)
    except (KeyError, TypeError, IndexError, ValueError):
        raise PatchError(f"{path}: a tensor entry of the safetensors header has no valid data_offsets") from None
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise PatchError(f"{path}: the safetensors metadata is not a str → str map")
    if 8 + length + end != size:
        raise PatchError(f"{path}: truncated or padded file ({size} bytes, header says {8 + length + end})")
    return header, metadata
