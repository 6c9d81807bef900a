"""Reading and writing ONNX graphs and ORT adapters (research/ecosystem.md §4.2, §4.4 (c)).

A protobuf message is limited to 2 GiB, so a graph whose tensors pass ``EXTERNAL_DATA_BYTES``
is written with its tensors in one external file ``<name>.data`` beside it. Only tensors of at
least 1024 bytes go there: with a threshold of 0, tiny int64 shape tensors were externalised too
and ORT failed to load the graph (§4.2). Loading is lazy (``onnx_ir`` memory-maps external data).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import onnx_ir as ir

from erasec.patches.atomic import write_files_atomically

from ..errors import BackendError
from .checks import check_graph

EXTERNAL_DATA_BYTES = 1_800_000_000  # below protobuf's 2 GiB, leaving room for the graph itself
_SIZE_THRESHOLD = 1024
ADAPTER_SUFFIX = ".onnx_adapter"


def load_graph(path: str | Path) -> ir.Model:
    path = Path(path)
    if not path.is_file():
        raise BackendError(f"{path}: no such ONNX file")
    try:
        return ir.load(path)
    except Exception as error:  # protobuf's DecodeError and friends: add where, keep the type's text
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise BackendError(f"{path}: not a readable ONNX model ({first})") from error


def tensor_bytes(model: ir.Model) -> int:
    return sum(value.const_value.nbytes for value in model.graph.initializers.values() if value.const_value is not None)


def adapter_path(onnx_path: str | Path) -> Path:
    """``unet.onnx`` → ``unet.onnx_adapter``, beside the graph."""
    path = Path(onnx_path)
    return path.with_name(path.stem + ADAPTER_SUFFIX)


def output_files(path: str | Path, *, adapter: bool) -> tuple[Path, ...]:
    """Every file ``write_graph`` may write for ``path``: the graph, its ``.data`` (written when the
    tensors need it) and, with an adapter, the ``.onnx_adapter``; the output-path checks cover all."""
    path = Path(path)
    return (path, path.with_name(path.name + ".data"), *((adapter_path(path),) if adapter else ()))


def external_data_files(path: str | Path) -> tuple[Path, ...]:
    """The external-data files a graph names (read without its tensors), resolved beside it."""
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (OSError, DecodeError):  # not a readable graph: loading it reports that, naming it, later
        return ()
    found = set()
    for tensor in proto.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            for entry in tensor.external_data:
                if entry.key == "location":
                    found.add(path.parent / entry.value)
    return tuple(sorted(found))


def _write_adapter(path: Path, parameters: Mapping[str, np.ndarray]) -> None:
    import onnxruntime as ort

    adapter = ort.AdapterFormat()
    adapter.set_adapter_version(1)
    adapter.set_model_version(1)
    # An OrtValue made from numpy borrows the array's buffer: the contiguous copies must outlive
    # export_adapter. Made inline, they were freed at once and the file held whatever reused the
    # memory (seen on tiny-sdxl: one factor of 141 came out as garbage, for a 1.7 output error).
    arrays = {name: np.ascontiguousarray(array) for name, array in sorted(parameters.items())}
    adapter.set_parameters({name: ort.OrtValue.ortvalue_from_numpy(array) for name, array in arrays.items()})
    adapter.export_adapter(str(path.resolve()))


def write_graph(
    model: ir.Model,
    path: str | Path,
    *,
    adapter: Mapping[str, np.ndarray] | None = None,
    external_data: bool | None = None,
) -> tuple[Path, ...]:
    """Write ``model`` (and its adapter) all or nothing; returns the files written.

    ``external_data``: None = only when the tensors need it (over ``EXTERNAL_DATA_BYTES``).
    """
    path = Path(path)
    if path.is_dir():
        raise BackendError(f"{path}: is a folder; give a file name such as {path / 'model.onnx'}")
    if external_data is None:
        external_data = tensor_bytes(model) > EXTERNAL_DATA_BYTES
    data = path.with_name(path.name + ".data") if external_data else None
    extra = adapter_path(path) if adapter is not None else None
    files = [p for p in (path, data, extra) if p is not None]

    if not external_data:
        ir.external_data.load_to_model(model)  # external tensors of the source become inline

    def write(folder: Path) -> None:
        ir.save(
            model,
            folder / path.name,
            external_data=data.name if data is not None else None,
            size_threshold_bytes=_SIZE_THRESHOLD,
        )
        check_graph(folder / path.name, written=path)  # an unloadable graph never replaces anything (issue 16 item 13)
        if data is not None and not (folder / data.name).is_file():
            (folder / data.name).write_bytes(b"")  # no tensor was large enough: keep the promised layout
        if extra is not None:
            _write_adapter(folder / extra.name, adapter)

    write_files_atomically(files, write)
    return tuple(files)
