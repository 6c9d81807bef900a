"""What a graph must be before erasec reads its weights or renames a written graph into place.

An ONNX file names its external data by a path relative to the graph (research/ecosystem.md §4.2);
a crafted one can name ``../../etc/passwd``, ``/etc/passwd`` or a link out of the folder, and patching
would then read a host file into the graph's weights. The ONNX checker refuses those locations, and
``check_external_data`` (run after it) refuses data shorter than its tensor — before any tensor is
read (issue 16 item 11); it re-checks the folder itself, so no caller depends on the checker's rules.
A graph that ``onnx_ir`` parses may still be invalid (a node reading a value nothing defines): the
checker refuses it on input, and a written graph is checked before it replaces anything (item 13).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import onnx_ir as ir

from ..errors import BackendError


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def check_external_data(model: ir.Model, path: str | Path) -> None:
    """Every external tensor of ``model`` (loaded from ``path``) lies in a regular file inside the
    graph's folder and is as long as its shape says; refused in one line naming the tensor."""
    path = Path(path)
    folder = path.parent.resolve()
    for name, value in sorted(model.graph.initializers.items()):
        tensor = value.const_value
        if not isinstance(tensor, ir.ExternalTensor):
            continue
        location = str(tensor.location)
        where = f"{path}: initializer {name!r} reads external data {location!r}"
        file = folder / location
        if Path(location).is_absolute() or not file.resolve().is_relative_to(folder):
            raise BackendError(f"{where}, outside the graph's folder; external data must lie beside the graph")
        try:
            status = os.stat(file)
        except OSError as error:
            raise BackendError(f"{where}, which cannot be read ({error.strerror})") from None
        if not stat.S_ISREG(status.st_mode):
            raise BackendError(f"{where}, which is not a regular file")
        needed = (tensor.offset or 0) + (tensor.length if tensor.length is not None else tensor.nbytes)
        if tensor.length is not None and tensor.length != tensor.nbytes:
            raise BackendError(f"{where}: {tensor.length} bytes for a tensor of {tensor.nbytes}; the graph is damaged")
        if status.st_size < needed:
            raise BackendError(
                f"{where}: the file has {status.st_size} bytes, the tensor ends at byte {needed}; "
                "the external data is truncated"
            )


def check_graph(path: str | Path, *, written: str | Path | None = None) -> None:
    """The ONNX checker's verdict on the graph file at ``path`` (its external data read beside it);
    ``written``: the output ``path`` is the not yet renamed copy of (named in the message)."""
    import onnx

    try:
        onnx.checker.check_model(str(path))
    except (onnx.checker.ValidationError, OSError, ValueError) as error:
        if written is not None:
            raise BackendError(
                f"{written}: the patched graph does not pass the ONNX checker ({_first_line(error)}); nothing was written"
            ) from None
        raise BackendError(f"{path}: not a valid ONNX graph ({_first_line(error)})") from None
