"""Reading the text files a spec names (the spec itself, ``file:`` lists) without trusting them.

A spec may be written by someone else (a hub compiles strangers' specs), so a path it names must
not be a way to read the host: only a regular file is read (never a FIFO, socket, device or folder,
which could hang or never end, and never a kernel file such as ``/proc/self/environ``, which stats
as an empty regular file and reads as the process's environment), at most ``MAX_TEXT_BYTES``, as
UTF-8 text without NUL bytes. ``inside`` is the confinement test: a path's real location (``..``
and symlinks resolved) within a folder. Each refusal is a ``ValueError`` whose text is the reason;
the caller names the file and the spec field.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

MAX_TEXT_BYTES = 16 * 1024 * 1024  # a spec or a list file; a 1,000-concept list is ~20 KB

_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _not_regular(mode: int) -> str:
    kind = next((name for test, name in _KINDS if test(mode)), "")
    return f"{kind}, not a regular file" if kind else "not a regular file"


def read_regular(path: Path, *, limit: int = MAX_TEXT_BYTES) -> bytes:
    """The bytes of the regular file at ``path``; ``ValueError`` saying why it is not read."""
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):  # checked before opening: opening a FIFO or a tty can block or act
            raise ValueError(_not_regular(mode))
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise ValueError(e.strerror or type(e).__name__) from None
    try:
        info = os.fstat(fd)  # the file opened, not the one stat saw (it may have been swapped)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(_not_regular(info.st_mode))
        if info.st_size > limit:
            raise ValueError(f"{info.st_size:,} bytes; a spec reads text files of at most {limit:,}")
        chunks, left = [], info.st_size + 1  # one byte more than the size says: a kernel file shows it
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as e:
        raise ValueError(e.strerror or type(e).__name__) from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) != info.st_size:
        raise ValueError("a kernel or changing file: it reads other than its size says; copy it to a plain file")
    return data


def is_safetensors(data: bytes) -> bool:
    """Whether ``data`` starts like a safetensors file (a patch or model): u64 header length, then JSON."""
    if len(data) < 10:
        return False
    size = int.from_bytes(data[:8], "little")
    return 2 <= size <= len(data) - 8 and data[8:9] == b"{"


def decode_text(data: bytes) -> str:
    """UTF-8 ``data`` as text (a BOM dropped); ``ValueError`` naming the line of a NUL or bad byte."""
    if b"\0" in data:
        line = data.count(b"\n", 0, data.index(b"\0")) + 1
        raise ValueError(f"holds a NUL byte on line {line} (binary, not text)")
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ValueError(f"not UTF-8 text: byte 0x{data[e.start]:02x} on line {line}") from None


def read_utf8(path: Path) -> str:
    """The text of a regular UTF-8 file; ``ValueError`` with the reason when it is not one."""
    return decode_text(read_regular(Path(path)))


def inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether ``path``'s real location (``..``, ``~`` and symlinks resolved) is within ``folder``'s."""
    real = os.path.realpath(os.path.expanduser(path))
    root = os.path.realpath(folder)
    return os.path.commonpath([real, root]) == root
