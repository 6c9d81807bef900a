"""Opening a diffusion transformer's single-file checkpoint (BFL's FLUX.1 and Chroma, SAI's SD3/SD3.5,
Wan's release, or any of them as ComfyUI saves them) as a ``dit.DiTModel``.

The family and the prefix come from the native tensor names (``families/dit.native_family``); the
edited sites keep their diffusers module paths in the IR and are read under their native names
(``ir/dit_naming.py``: ``txt_in``, ``vector_in.in_layer``, ``context_embedder``,
``y_embedder.mlp.0``, ``blocks.N.cross_attn.k/v``). The text encoders are found by
``dit_inputs.resolve_sources``: separate files the user gives, else inside the file (ComfyUI's and
SAI's all-in-one checkpoints). ``open.open_model`` calls ``open_dit_file`` for a safetensors file
that ``native_family`` claims, or when the spec's ``family:`` names a diffusion transformer.
"""

from __future__ import annotations

import re
from pathlib import Path

from erasec.ir import KeySpace, LinearSite, ModelTarget
from erasec.ir.dit_naming import native_module_path

from ..errors import ModelError
from .dit import DiTModel
from .dit_inputs import TextInputs, TextSources, needed_components, resolve_sources
from .dit_open import CONTEXT_MODULE, MAX_SEQUENCE_LENGTH, POOLED_MODULE, POOLED_SPACE
from .families import FAMILIES, Family
from .families.dit import native_family
from .tensor_files import TensorFile

_WAN_KV = re.compile(r"^blocks\.(?P<block>\d+)\.cross_attn\.(?P<role>[kv])\.weight$")


def _described(name: str) -> str:
    facts = FAMILIES[name]
    return f"a {facts.pipeline.removesuffix('Pipeline')} transformer ({facts.native_marks})"


def dit_file(tensors: TensorFile, family: str | None, location: str) -> tuple[str, str] | None:
    """(family, prefix) when the file is a diffusion transformer this opens; None for another file
    (the SD reader takes it). A spec ``family:`` that the names contradict is refused here."""
    found = native_family(set(tensors.shapes))
    wanted = FAMILIES.get(family)
    if found is None:
        if wanted is not None and wanted.transformer:
            raise ModelError(f"{location}: the spec says family {family!r} but the file is not {_described(family)}; "
                             "remove family: or give the right model")
        return None
    if family is not None and family != found[0]:
        raise ModelError(f"{location}: the spec says family {family!r} but the file is {_described(found[0])}; "
                         "remove family: or give the right model")
    return found


def open_dit_file(
    tensors: TensorFile, location: str, name: str, prefix: str, *, pooled: bool, sequence_length: int | None,
    inputs: TextInputs, need_text: bool = True,
) -> DiTModel:
    """The ``DiTModel`` of the single file ``tensors`` (family ``name``, native names under ``prefix``).
    ``need_text=False``: a missing encoder is not an error until text is asked for (``DiTModel.text_missing``)."""
    facts = FAMILIES[name]
    where = tensors.path
    length = facts.sequence_length if sequence_length is None else sequence_length
    if not isinstance(length, int) or not 1 <= length <= MAX_SEQUENCE_LENGTH:
        raise ModelError(f"{location}: sequence_length {length!r} is not an integer in 1..{MAX_SEQUENCE_LENGTH}")
    missing = None
    try:
        sources = resolve_sources(facts, needed_components(facts, pooled), inputs, location, single_file=tensors)
    except ModelError as error:
        if need_text:
            raise
        sources, missing = TextSources(encoders={}, tokenizers={}, pads={}), str(error)
    dim = _key_width(tensors, facts, prefix, sources, where)
    sites = _sites(tensors, facts, prefix, dim, where)
    encoder = "+".join(encoder.component for encoder in facts.encoders)
    spaces = [KeySpace(name=facts.key_space, dim=dim, encoder=encoder, sites=sites)]
    if pooled:
        spaces.append(_pooled_space(tensors, facts, prefix, location))
    target = ModelTarget(family=name, name=location, spaces=tuple(spaces))
    return DiTModel(location=location, path=tensors.path, layout="single-file", target=target,
                    unet_weights_file=tensors.path, _file=tensors, sequence_length=length, native_prefix=prefix,
                    inputs=sources, text_missing=missing)


def _native_shape(tensors: TensorFile, prefix: str, module: str, facts: Family, where: Path) -> tuple:
    name = f"{prefix}{native_module_path(module, facts.name)}.weight"
    shape = tensors.shapes.get(name)
    if shape is None or len(shape) != 2:
        raise ModelError(f"{where}: no 2-D {name}; not {_described(facts.name)}")
    return shape


def _key_width(tensors: TensorFile, facts: Family, prefix: str, sources: TextSources, where: Path) -> int:
    """The context embedder's input width (Wan: its text embedder's output), checked against the
    T5 encoder's width."""
    t5 = facts.encoders[-1].component
    width = sources.encoder_width(t5)
    if facts.text_projection is not None:
        first = tensors.shapes.get(f"{prefix}text_embedding.0.weight")
        second = tensors.shapes.get(f"{prefix}text_embedding.2.weight")
        if first is None or second is None or len(first) != 2 or len(second) != 2:
            raise ModelError(f"{where}: no 2-D {prefix}text_embedding.0/2 weights; not {_described(facts.name)}")
        reads, dim = first[1], second[0]
    else:
        reads = dim = _native_shape(tensors, prefix, CONTEXT_MODULE, facts, where)[1]
    if width is not None and width != reads:
        raise ModelError(f"{where}: the transformer reads {reads}-wide text rows but the {t5} encoder "
                         f"({sources.encoders[t5].path}) gives {width}; the files do not belong together")
    return dim


def _sites(tensors: TensorFile, facts: Family, prefix: str, dim: int, where: Path) -> tuple[LinearSite, ...]:
    if facts.text_projection is None:
        out = _native_shape(tensors, prefix, CONTEXT_MODULE, facts, where)[0]
        return (LinearSite(module_path=CONTEXT_MODULE, out_features=out, in_features=dim, role="context"),)
    sites = []
    for name, shape in tensors.shapes.items():
        match = _WAN_KV.match(name.removeprefix(prefix)) if name.startswith(prefix) else None
        if match is None:
            continue
        if len(shape) != 2 or shape[1] != dim:
            raise ModelError(f"{where}: {name} has shape {tuple(shape)}, expected ({shape[0]}, {dim})")
        module = f"blocks.{int(match['block'])}.attn2.to_{match['role']}"
        sites.append((int(match["block"]), match["role"], module, shape[0]))
    return tuple(LinearSite(module_path=p, out_features=o, in_features=dim, role=r) for _, r, p, o in sorted(sites))


def _pooled_space(tensors: TensorFile, facts: Family, prefix: str, location: str) -> KeySpace:
    """As ``dit_open._pooled_space``, read under the native name (``vector_in.in_layer``, ``y_embedder.mlp.0``)."""
    if facts.pooled_encoder is None:
        raise ModelError(f"{location}: options.pooled: {facts.pipeline} has no pooled text path")
    shape = _native_shape(tensors, prefix, POOLED_MODULE, facts, tensors.path)
    site = LinearSite(module_path=POOLED_MODULE, out_features=shape[0], in_features=shape[1], role="pooled")
    return KeySpace(name=POOLED_SPACE, dim=shape[1], encoder=f"{facts.pooled_encoder}.pooled", sites=(site,))
