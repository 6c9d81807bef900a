"""The three ONNX outputs, each a rewrite of the located sites (research/ecosystem.md §4.4).

- ``bake``: the initializer becomes ``W0 + ΔW`` (``Wᵀ + ΔWᵀ`` when it holds the transpose); no new
  nodes, so the graph runs, fuses and refits exactly like the export (TensorRT rebuilds its engine).
- ``switchable``: ``Y = MatMul(X, B)`` becomes ``Add(Y, Mul(MatMul(MatMul(X, downᵀ), upᵀ), erase_scale))``
  — the shape ORT's LoRA-aware attention fusion recognises (§4.5). ``erase_scale`` is an input of
  shape [1] with default [1.0] (erased); feed [0.0] for the base model. Sites that read the same
  rows through the same ``down`` share one ``MatMul(X, downᵀ)``: for a shared-map patch
  (ΔW_l = W0_l (T − I), DESIGN.md §4) that is one small MatMul on ``encoder_hidden_states``.
- ``adapter``: the switchable graph with its factors turned into inputs whose defaults have rank
  0 (the base model), plus the factors as parameters of an ONNX Runtime ``.onnx_adapter`` (§4.4 (c)).

Before any rewrite the located tensors are confirmed by value: against the base weights when
the caller has them, else against the patch's base pin (``erasec.base``, DESIGN.md §7). SDXL's
``add_embedding.linear_1`` (``options.pooled``) was compiled and pinned on its pooled columns
only — the leading ``text_embeds``-wide block it reads (``LinearSite.full_in_features``) — so
those columns are what is compared; the graph's ``text_embeds`` input says how many.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping

import numpy as np
import onnx_ir as ir

from erasec.patches.pin import base_pin, pin_difference

from ..errors import BackendError
from .factors import PatchDeltas, SiteDelta
from .locate import SiteMatch, locate_sites

Mode = Literal["bake", "switchable", "adapter"]
MODES: tuple[str, ...] = ("bake", "switchable", "adapter")
SCALE_INPUT = "erase_scale"
RANK_DIM = "erasec_rank"
POOLED_SITE = "add_embedding.linear_1"  # reads [text_embeds ; time embeddings] in an SDXL UNet
POOLED_INPUT = "text_embeds"  # the SDXL UNet graph input (optimum's name)
_FLOATS = {ir.DataType.FLOAT: np.float32, ir.DataType.FLOAT16: np.float16, ir.DataType.DOUBLE: np.float64}
_PIN_DTYPES = {ir.DataType.FLOAT: "fp32", ir.DataType.FLOAT16: "fp16", ir.DataType.DOUBLE: "fp64"}
# Relative tolerance of the by-value confirmation, by stored dtype: a few units in the last place.
_CONFIRM_RTOL = {ir.DataType.FLOAT: 1e-6, ir.DataType.FLOAT16: 2e-3, ir.DataType.DOUBLE: 1e-12}


@dataclass(frozen=True, slots=True, kw_only=True)
class OnnxOptions:
    mode: Mode = "bake"
    erase_scale: float = 1.0  # the default of the erase_scale input (switchable, adapter)
    verify_base: bool = True  # confirm the located tensors are the base weights before rewriting

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise BackendError(f"onnx: mode {self.mode!r} is not one of {', '.join(MODES)}")
        if not np.isfinite(self.erase_scale):
            raise BackendError(f"onnx: erase_scale {self.erase_scale} is not finite")


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class OnnxPatchResult:
    model: ir.Model
    mode: Mode
    sites: tuple[SiteMatch, ...]
    adapter: Mapping[str, np.ndarray] | None  # adapter mode: parameter name → array
    confirmed_by: str  # "base weights" | "base pin" | "not checked"


def _stored_weight(match: SiteMatch, columns: int | None = None) -> np.ndarray:
    """The located tensor as W [out, in], float64; ``columns``: only the leading ones."""
    array = match.weight.const_value.numpy().astype(np.float64)
    weight = array if match.transposed else array.T
    return weight if columns is None else weight[:, :columns]


def pinned_columns(graph: ir.Graph, sites, *, where: str) -> dict[str, int]:
    """module path → the leading columns its base was compiled on, for sites compiled on fewer
    than the weight has: the pooled site, on the ``text_embeds`` columns (module docstring)."""
    if POOLED_SITE not in sites:
        return {}
    width = next((value.shape[-1] for value in graph.inputs if value.name == POOLED_INPUT and value.shape), None)
    if not isinstance(width, int):
        raise BackendError(
            f"{where}: site {POOLED_SITE} (options.pooled) needs the graph's {POOLED_INPUT} input with a fixed width "
            "to tell its pooled columns; patch an SDXL UNet as erasec export-onnx or optimum export it"
        )
    return {POOLED_SITE: width}


def _dtype(match: SiteMatch) -> ir.DataType:
    dtype = match.weight.const_value.dtype
    if dtype not in _FLOATS:
        raise BackendError(f"onnx: site {match.module_path}: weight {match.weight.name!r} has dtype {dtype}, not a float")
    return dtype


def confirm_base(
    matches: Mapping[str, SiteMatch],
    deltas: PatchDeltas,
    base_weights: Mapping[str, np.ndarray] | None,
    *,
    where: str,
    columns: Mapping[str, int] | None = None,
) -> str:
    """Check that the located tensors are the base the patch was compiled against; say how.
    ``columns``: sites compared on their leading columns only (``pinned_columns``)."""
    columns = columns or {}
    if base_weights is not None:
        for name, match in sorted(matches.items()):
            if match.module_path not in base_weights:
                raise BackendError(f"{where}: no base weight for {match.module_path} to compare with")
            want = np.asarray(base_weights[match.module_path], dtype=np.float64)
            have = _stored_weight(match, columns.get(match.module_path))
            rtol = _CONFIRM_RTOL[_dtype(match)]
            if have.shape != want.shape or np.max(np.abs(have - want)) > rtol * max(np.max(np.abs(want)), 1e-30):
                raise BackendError(
                    f"{where}: {match.weight.name!r} (node {match.matmul.name!r}) is not the base weight of "
                    f"{match.module_path}; the graph is from another model or was already patched"
                )
        return "base weights"
    if not deltas.base_pin:
        raise BackendError(
            f"{where}: {deltas.source} carries no base pin (erasec.base) to confirm the located weights; "
            "give the base model, or turn the check off"
        )
    weights = {f"{m.module_path}.weight": _stored_weight(m, columns.get(m.module_path)) for m in matches.values()}
    kinds = {_PIN_DTYPES.get(_dtype(m)) for m in matches.values()}
    differ = pin_difference(deltas.base_pin, base_pin(weights, dtype=kinds.pop() if len(kinds) == 1 else None))
    if differ:
        first = differ[0].removesuffix(".weight")
        raise BackendError(
            f"{where}: {len(differ)} of the {len(weights)} located weights differ from the patch's base pin "
            f"(first {first}); "
            "the graph was exported from another model, or was already patched"
        )
    return "base pin"


def _initializer(graph: ir.Graph, name: str, array: np.ndarray, dtype: ir.DataType) -> ir.Value:
    if name in graph.initializers:
        raise BackendError(f"onnx: the graph already has an initializer {name!r}; was it patched before?")
    tensor = ir.tensor(np.ascontiguousarray(array.astype(_FLOATS[dtype])), name=name)
    value = ir.Value(name=name, shape=ir.Shape(tensor.shape), type=ir.TensorType(dtype), const_value=tensor)
    graph.register_initializer(value)
    return value


def bake(graph: ir.Graph, matches: Mapping[str, SiteMatch], deltas: PatchDeltas) -> None:
    """``B ← B + ΔWᵀ`` (or ``W ← W + ΔW`` behind a Transpose), summed in float64, cast once."""
    for match in matches.values():
        dtype = _dtype(match)
        delta = deltas.site(match.module_path).delta()
        stored = match.weight.const_value.numpy().astype(np.float64)
        new = stored + (delta if match.transposed else delta.T)
        with np.errstate(over="ignore"):  # an fp16 overflow is refused just below, not warned about
            cast = np.ascontiguousarray(new.astype(_FLOATS[dtype]))
        if not np.isfinite(cast).all():
            raise BackendError(f"onnx: site {match.module_path}: W0 + ΔW overflows the graph's {dtype.name} weights")
        tensor = ir.tensor(cast, name=match.weight.name)
        users = {node for node, _ in match.weight.uses()}
        if users == {match.reader}:
            match.weight.const_value = tensor  # keeps the name: TensorRT refit matches by it (§4.6)
        else:  # shared with another node: give this site its own copy
            copy = _initializer(graph, f"{match.weight.name}.erasec.{match.module_path}", new, dtype)
            index = next(i for i, value in enumerate(match.reader.inputs) if value is match.weight)
            match.reader.replace_input_with(index, copy)


def _node(op_type: str, inputs: list, name: str, attributes: dict | None = None) -> ir.Node:
    """A node whose one output is named after it (``erasec/<site>/<step>``: never a site scope)."""
    return ir.node(op_type, inputs, attributes, name=name, outputs=[ir.Value(name=f"{name}:0")])


def _scale_value(graph: ir.Graph, options: OnnxOptions) -> ir.Value:
    value = ir.Value(
        name=SCALE_INPUT,
        shape=ir.Shape([1]),
        type=ir.TensorType(ir.DataType.FLOAT),
        const_value=ir.tensor(np.array([options.erase_scale], dtype=np.float32), name=SCALE_INPUT),
    )
    graph.inputs.append(value)
    graph.register_initializer(value)
    return value


def _factor(graph: ir.Graph, name: str, array: np.ndarray, dtype: ir.DataType, *, as_input: bool, rank: tuple):
    """A factor initializer; ``as_input``: also a graph input whose default has rank 0 (adapter mode),
    its rank axis ``rank = (axis, symbolic name)`` shared by the factors of one branch."""
    rank_axis, rank_dim = rank
    if not as_input:
        return _initializer(graph, name, array, dtype)
    shape = list(array.shape)
    shape[rank_axis] = 0
    value = _initializer(graph, name, np.zeros(shape), dtype)
    dims = list(array.shape)
    dims[rank_axis] = rank_dim
    value.shape = ir.Shape(dims)
    graph.inputs.append(value)
    return value


def branch(
    graph: ir.Graph, matches: Mapping[str, SiteMatch], deltas: PatchDeltas, options: OnnxOptions
) -> dict[str, np.ndarray]:
    """Add the low-rank branch to every site; returns the factor arrays by initializer name."""
    as_input = options.mode == "adapter"
    scale = _scale_value(graph, options)
    scales: dict[ir.DataType, ir.Value] = {ir.DataType.FLOAT: scale}
    shared: dict[tuple[int, bytes], tuple[ir.Value, str]] = {}
    params: dict[str, np.ndarray] = {}
    for match in matches.values():  # graph order (locate_sites walks the nodes in order)
        dtype = _dtype(match)
        site: SiteDelta = deltas.site(match.module_path)
        if site.rank == 0:
            continue
        if dtype not in scales:
            cast = _node("Cast", [scale], f"erasec/{SCALE_INPUT}/Cast", attributes={"to": dtype})
            graph.insert_after(match.matmul, cast)
            scales[dtype] = cast.outputs[0]
        activation = match.activation
        key = (id(activation), site.down.astype(_FLOATS[dtype]).tobytes())
        anchor = match.matmul
        if key not in shared:
            down_name = f"erasec.{match.module_path}.down_T"
            rank_dim = f"{RANK_DIM}_{len(shared)}"
            down = _factor(graph, down_name, site.down.T, dtype, as_input=as_input, rank=(1, rank_dim))
            params[down_name] = site.down.T.astype(_FLOATS[dtype])
            project = _node("MatMul", [activation, down], f"erasec/{match.module_path}/down")
            graph.insert_after(anchor, project)
            anchor = project
            shared[key] = (project.outputs[0], rank_dim)
        projected, rank_dim = shared[key]
        up_name = f"erasec.{match.module_path}.up_T"
        up = _factor(graph, up_name, site.up.T, dtype, as_input=as_input, rank=(0, rank_dim))
        params[up_name] = site.up.T.astype(_FLOATS[dtype])
        lift = _node("MatMul", [projected, up], f"erasec/{match.module_path}/up")
        scaled = _node("Mul", [lift.outputs[0], scales[dtype]], f"erasec/{match.module_path}/scale")
        base_output = match.output
        add = _node("Add", [base_output, scaled.outputs[0]], f"erasec/{match.module_path}/add")
        graph.insert_after(anchor, (lift, scaled, add))
        out = add.outputs[0]
        out.shape, out.type = base_output.shape, base_output.type
        for user, index in list(base_output.uses()):
            if user is not add:
                user.replace_input_with(index, out)
        for index, value in enumerate(graph.outputs):
            if value is base_output:
                graph.outputs[index] = out
    graph.sort()  # the shared projection and the Cast must precede every site that reads them
    return params


def patch_graph(
    model: ir.Model,
    deltas: PatchDeltas,
    options: OnnxOptions = OnnxOptions(),
    *,
    base_weights: Mapping[str, np.ndarray] | None = None,
    where: str = "onnx",
) -> OnnxPatchResult:
    """Rewrite ``model`` (in place) to apply ``deltas``; locate → confirm → rewrite, all or nothing.

    Locating and confirming happen before the first change, so a refusal leaves the model as it was.
    """
    graph = model.graph
    if "erasec.onnx.mode" in model.metadata_props or SCALE_INPUT in {value.name for value in graph.inputs}:
        done = model.metadata_props.get("erasec.onnx.mode", "switchable")
        name = model.metadata_props.get("erasec.name", "a patch")
        raise BackendError(f"{where}: already patched ({name}, {done}); patch the unpatched export")
    wanted: dict[str, tuple[int, int] | None] = {site.module_path: site.shape for site in deltas.sites}
    if options.verify_base and base_weights is None and deltas.base_pin:
        # the pin covers every tensor the patch was compiled against (e.g. to_k too when only to_v is edited)
        for name in (deltas.base_pin.get("per_tensor") or {}):
            wanted.setdefault(name.removesuffix(".weight"), None)
    located = locate_sites(graph, wanted, where=where)
    for match in located.values():  # before any arithmetic on them could warn or spread (issue 16 item 13)
        if not np.isfinite(match.weight.const_value.numpy()).all():
            raise BackendError(
                f"{where}: {match.weight.name!r} (node {match.matmul.name!r}) holds NaN or infinity; the graph is damaged"
            )
    confirmed_by = "not checked"
    if options.verify_base:
        columns = pinned_columns(graph, located, where=where)
        confirmed_by = confirm_base(located, deltas, base_weights, where=where, columns=columns)
    matches = {path: match for path, match in located.items() if wanted[path] is not None}
    params = None
    if options.mode == "bake":
        bake(graph, matches, deltas)
    else:
        factors = branch(graph, matches, deltas, options)
        params = factors if options.mode == "adapter" else None
    model.metadata_props.update(dict(deltas.metadata or {}))
    model.metadata_props["erasec.onnx.mode"] = options.mode
    model.metadata_props["erasec.onnx.sites"] = str(len(matches))
    ordered = tuple(sorted(matches.values(), key=lambda m: m.module_path))
    return OnnxPatchResult(model=model, mode=options.mode, sites=ordered, adapter=params, confirmed_by=confirmed_by)
