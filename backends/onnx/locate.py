"""Finding the ONNX initializer that holds a site's weight: two pattern / check rules.

PyTorch's ``Linear`` computes ``y = x Wᵀ``; exporters emit ``MatMul(x, B)`` with either
``B = Wᵀ`` stored (``[in, out]``: legacy export with constant folding — the diffusers and optimum
default — and dynamo with its optimizer on), or ``B = Transpose(W)`` of a named initializer
(``[out, in]``: legacy without folding, dynamo ``optimize=False``). research/ecosystem.md §4.3.
A Linear on 2-D rows — SDXL's ``add_embedding.linear_1``, the ``options.pooled`` site — is a
``Gemm(x, W, b, transB=1)`` over ``W [out, in]`` in both exporters' graphs (seen on tiny-sdxl).
A diffusion transformer's sites are the same two shapes (seen on tiny-flux, -chroma, -sd3, -wan):
``context_embedder`` and Wan's ``attn2.to_k/to_v`` read 3-D rows, a ``MatMul`` (then ``Add`` of the
bias, which is never touched); the pooled ``time_text_embed.text_embedder.linear_1`` a ``Gemm``.

The module path is read, never guessed, from one of:

- ``pkg.torch.onnx.name_scopes`` metadata of the MatMul (dynamo): element ``[-2]``;
- the node name (legacy): ``/unet/down_blocks.0/…/attn2/to_k/MatMul`` → ``unet.down_blocks.0.….to_k``;
- the initializer name ``<path>.weight`` (exports without folding).

A wrapper prefix (``unet.``) is allowed: a scope matches a patch site when one of its dot-boundary
suffixes *equals* the site's diffusers module path. Confirmation by value (the tensor,
transposed back, against the base weight or the patch's base pin) is in ``rewrite.py``.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import ClassVar, Iterable

import onnx_ir as ir

from ..errors import BackendError

# com.microsoft ops that ORT's transformer optimizer makes when it fuses attention (§4.5).
FUSED_ATTENTION_OPS = ("Attention", "MultiHeadAttention", "PackedAttention", "PackedMultiHeadAttention")
PATCH_BEFORE_OPTIMISATION = (
    "patch the graph as exported, before ONNX Runtime's transformer optimizer "
    "(or optimise with --disable_packed_kv --disable_packed_qkv)"
)


@dataclass(frozen=True, slots=True, eq=False)
class SiteMatch:
    """Where one site's weight lives in a graph."""

    module_path: str  # the site's diffusers path (the scope as found, wrapper prefix stripped)
    matmul: ir.Node  # the MatMul (or Gemm) computing the Linear's product
    weight: ir.Value  # the initializer
    transposed: bool  # True: the initializer holds W [out, in] (behind a Transpose, or Gemm transB=1); False: Wᵀ [in, out]
    found_by: str  # "name_scopes" | "node name" | "initializer name"
    reader: ir.Node  # the node reading the initializer: the MatMul/Gemm, or the Transpose before it

    @property
    def activation(self) -> ir.Value:
        """The MatMul's left input: the rows this Linear reads (e.g. encoder_hidden_states)."""
        return self.matmul.inputs[0]

    @property
    def output(self) -> ir.Value:
        return self.matmul.outputs[0]


def _constant_initializer(value: ir.Value | None) -> bool:
    return (
        value is not None
        and value.is_initializer()
        and value.const_value is not None
        and not value.is_graph_input()
        and len(value.const_value.shape) == 2
    )


def _scopes(matmul: ir.Node, named: Iterable[ir.Node | ir.Value]) -> list[tuple[str, str]]:
    """Candidate dotted module paths for a MatMul, with how each was found."""
    found: list[tuple[str, str]] = []
    scopes = matmul.metadata_props.get("pkg.torch.onnx.name_scopes")
    if scopes:
        try:
            parts = ast.literal_eval(scopes)
        except (ValueError, SyntaxError):
            parts = None
        if isinstance(parts, list) and len(parts) >= 2 and isinstance(parts[-2], str):
            found.append((parts[-2], "name_scopes"))
    for item in named:
        name = item.name or ""
        if isinstance(item, ir.Node) and name.startswith("/") and "/" in name[1:]:
            found.append((".".join(name[1:].split("/")[:-1]), "node name"))
        elif isinstance(item, ir.Value) and name.endswith(".weight"):
            found.append((name.removesuffix(".weight"), "initializer name"))
    return found


def _resolve(scope: str, wanted: frozenset[str]) -> str | None:
    """The wanted module path that is a dot-boundary suffix of ``scope`` (the longest), if any."""
    parts = scope.split(".")
    for start in range(len(parts)):
        suffix = ".".join(parts[start:])
        if suffix in wanted:
            return suffix
    return None


@dataclass(frozen=True, slots=True)
class LinearWeightRule:
    """``MatMul(x, B)`` with ``B = Wᵀ`` a constant ``[in, out]`` initializer."""

    name: ClassVar[str] = "matmul-weight"
    transposed: ClassVar[bool] = False

    def pattern(self, node: ir.Node) -> tuple[ir.Value, tuple, ir.Node] | None:
        """(the initializer, the items naming the site, the node reading the initializer), or None."""
        if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
            return None
        weight = node.inputs[1]
        if not _constant_initializer(weight):
            return None
        return weight, (node, weight), node


@dataclass(frozen=True, slots=True)
class TransposedLinearWeightRule:
    """``MatMul(x, Transpose(W, perm=[1, 0]))`` with ``W`` a constant ``[out, in]`` initializer."""

    name: ClassVar[str] = "matmul-transposed-weight"
    transposed: ClassVar[bool] = True

    def pattern(self, node: ir.Node) -> tuple[ir.Value, tuple, ir.Node] | None:
        if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
            return None
        transpose = node.inputs[1].producer() if node.inputs[1] is not None else None
        if transpose is None or transpose.op_type != "Transpose" or len(transpose.inputs) != 1:
            return None
        perm = transpose.attributes.get("perm")
        if perm is None or list(perm.as_ints()) != [1, 0]:
            return None
        weight = transpose.inputs[0]
        if not _constant_initializer(weight):
            return None
        return weight, (node, transpose, weight), transpose


def _attribute(node: ir.Node, name: str, default):
    attribute = node.attributes.get(name)
    return default if attribute is None else attribute.value


@dataclass(frozen=True, slots=True)
class GemmWeightRule:
    """``Gemm(x, W, b, transB=1)`` with ``W`` a constant ``[out, in]`` initializer (``alpha = 1``,
    ``transA = 0``: the product is exactly ``x Wᵀ``; the bias is left alone). ``transB = 0``
    (``Wᵀ`` stored) is refused here, so ``transposed`` holds for every match of this rule."""

    name: ClassVar[str] = "gemm-weight"
    transposed: ClassVar[bool] = True

    def pattern(self, node: ir.Node) -> tuple[ir.Value, tuple, ir.Node] | None:
        if node.op_type != "Gemm" or node.domain not in ("", "ai.onnx") or len(node.inputs) < 2:
            return None
        if _attribute(node, "transA", 0) != 0 or _attribute(node, "transB", 0) != 1 or _attribute(node, "alpha", 1.0) != 1.0:
            return None
        weight = node.inputs[1]
        if not _constant_initializer(weight):
            return None
        return weight, (node, weight), node


LOCATE_RULES = (LinearWeightRule(), TransposedLinearWeightRule(), GemmWeightRule())


def locate_sites(graph: ir.Graph, sites: dict[str, tuple[int, int] | None], *, where: str) -> dict[str, SiteMatch]:
    """Every wanted site (module path → (out, in), or None: any shape) matched to exactly one MatMul,
    in graph order; else a clear error.

    The check step refuses a match whose initializer shape is not the site's (``[in, out]``, or
    ``[out, in]`` behind the Transpose): packed K/V after attention fusion shows up that way.
    """
    wanted = frozenset(sites)
    matches: dict[str, SiteMatch] = {}
    refused: dict[str, str] = {}
    for node in graph.all_nodes():
        for rule in LOCATE_RULES:
            hit = rule.pattern(node)
            if hit is None:
                continue
            weight, named, reader = hit
            for scope, how in _scopes(node, named):
                name = _resolve(scope, wanted)
                if name is None:
                    continue
                transposed = rule.transposed
                shape = tuple(weight.const_value.shape)
                expected = shape
                if sites[name] is not None:
                    out_features, in_features = sites[name]
                    expected = (out_features, in_features) if transposed else (in_features, out_features)
                if shape != expected:
                    refused[name] = (
                        f"node {node.name!r} holds {weight.name!r} of shape {list(shape)}, "
                        f"not {list(expected)}: another model's graph, or K and V packed by attention fusion"
                    )
                    break
                if name in matches and matches[name].matmul is not node:
                    raise BackendError(
                        f"{where}: site {name} matches two MatMul nodes, {matches[name].matmul.name!r} and {node.name!r}"
                    )
                matches[name] = SiteMatch(
                    module_path=name, matmul=node, weight=weight, transposed=transposed, found_by=how, reader=reader
                )
                break
    missing = sorted(wanted - set(matches))
    if missing:
        name = missing[0]
        fused = sorted({node.op_type for node in graph.all_nodes() if node.op_type in FUSED_ATTENTION_OPS})
        count = f"{len(missing)} of {len(wanted)} sites" if len(missing) > 1 else "site"
        if name in refused:
            reason = refused[name]
        elif fused:
            reason = f"the graph has fused attention ({', '.join(fused)}), which packs K and V"
        else:
            reason = "no MatMul with that module path in its node name, name_scopes metadata or initializer name"
        raise BackendError(f"{where}: {count} not found, first {name} ({reason}); {PATCH_BEFORE_OPTIMISATION}")
    return matches
