"""Opening a diffusion-transformer folder (``families/dit.py``) as a ``dit.DiTModel``: its family from
``transformer/config.json``, its edited sites from the transformer's safetensors header, the key width
from the text encoders' configs. ``open.open_model`` calls it for a folder with ``transformer/``."""

from __future__ import annotations

import json
import re
from pathlib import Path

from erasec.ir import KeySpace, LinearSite, ModelTarget

from ..errors import ModelError
from . import bert
from .dit import DiTModel, tokenizer_folder
from .dit_inputs import TextInputs, needed_components, resolve_sources
from .families import FAMILIES, Family
from .families.dit import TRANSFORMER_CLASSES, transformer_class
from .tensor_files import TensorFile, read_json

CONTEXT_MODULE = "context_embedder"
POOLED_MODULE = "time_text_embed.text_embedder.linear_1"
POOLED_SPACE = "pooled"
MAX_SEQUENCE_LENGTH = 4096  # beyond any pipeline's max_sequence_length (T5's own limit is 512)
_WEIGHTS = "diffusion_pytorch_model.safetensors"
_KV = re.compile(r"^(?P<path>blocks\.(?P<block>\d+)\.attn2\.to_(?P<role>[kv]))\.weight$")


def open_dit_folder(
    path: Path, location: str, *, family: str | None, pooled: bool, sequence_length: int | None,
    inputs: TextInputs | None = None, component: str | None = None,
) -> DiTModel:
    """The ``DiTModel`` of the diffusers folder at ``path`` (a ``transformer/`` folder). ``inputs``:
    text encoders and tokenizers given apart (``dit_inputs.py``), used instead of the folder's; a
    folder that lacks one it needs is refused naming where it was looked for. ``component``: which
    of the folder's transformers is edited (None: ``transformer``; Wan 2.2 also ``transformer_2``)."""
    name = TRANSFORMER_CLASSES.get(transformer_class(path) or "")
    if name is None:
        found = transformer_class(path)
        known = ", ".join(sorted(TRANSFORMER_CLASSES))
        raise ModelError(f"{path / 'transformer' / 'config.json'}: transformer class {found!r} is not one of {known}")
    if family is not None and family != name:
        raise ModelError(f"{location}: the spec says family {family!r} but the folder's transformer is {name!r}; "
                         "remove family: or give the right model")
    facts = FAMILIES[name]
    component = _checked_component(path, location, facts, component)
    length = facts.sequence_length if sequence_length is None else sequence_length
    if not isinstance(length, int) or not 1 <= length <= MAX_SEQUENCE_LENGTH:
        raise ModelError(f"{location}: sequence_length {length!r} is not an integer in 1..{MAX_SEQUENCE_LENGTH}")
    sources = None
    inputs = inputs or TextInputs()
    if inputs or _lacks_components(path, facts, pooled):
        optional = (facts.encoders[-1].component,) if len(facts.encoders) > 1 else ()  # SD3's T5
        sources = resolve_sources(facts, needed_components(facts, pooled), inputs, location, folder=path,
                                  optional=optional)
    else:
        _check_components(path, facts)
    weights_file = _weights_file(path / component, facts)
    tensors = TensorFile(weights_file, pickled=False)
    dim = _key_width(path, facts, tensors, weights_file)
    if sources is not None:
        _check_width(sources, facts, tensors, dim, weights_file)
    sites = _sites(tensors, facts, dim, weights_file)
    space_name = facts.key_space
    last = path / facts.encoders[-1].component / "config.json"
    if last.is_file() and bert.is_bert(read_json(last)):
        space_name = "minilm"  # the semantic test bed's pretrained encoder in the T5 slot
    encoder = "+".join(encoder.component for encoder in facts.encoders)
    spaces = [KeySpace(name=space_name, dim=dim, encoder=encoder, sites=sites)]
    if pooled:
        spaces.append(_pooled_space(path, facts, tensors, weights_file, location))
    target = ModelTarget(family=name, name=location, spaces=tuple(spaces))
    others = tuple(c for c in facts.denoisers if c != component and (path / c).is_dir())
    return DiTModel(location=location, path=path, layout="diffusers", target=target,
                    unet_weights_file=weights_file, _file=tensors, sequence_length=length, inputs=sources,
                    component=component, other_experts=others)


def _checked_component(path: Path, location: str, facts: Family, component: str | None) -> str:
    """The transformer folder to edit: ``transformer`` unless asked for another of the family's
    (Wan 2.2's ``transformer_2``), which the folder must hold."""
    if component is None or component == facts.denoiser:
        return facts.denoiser
    if component not in facts.experts:
        held = ", ".join(f"{c}/" for c in facts.denoisers)
        raise ModelError(f"{location}: a {facts.pipeline} folder has no transformer {component!r} (only {held})")
    if not (path / component).is_dir():
        raise ModelError(f"{location}: has no {component}/ folder, only {facts.denoiser}/ (as a Wan 2.1 folder)")
    return component


def _lacks_components(path: Path, facts: Family, pooled: bool) -> bool:
    """Whether an encoder folder the build reads is missing (SD3's T5 may be: zero T5 rows)."""
    optional = facts.encoders[-1].component if len(facts.encoders) > 1 else None
    return any(not (path / c).is_dir() for c in needed_components(facts, pooled) if c != optional)


def _check_width(sources, facts: Family, tensors: TensorFile, dim: int, where: Path) -> None:
    """A separately given T5 encoder has the width the transformer reads."""
    t5 = facts.encoders[-1].component
    width = sources.encoder_width(t5)
    reads = tensors.shapes[f"{facts.text_projection}.linear_1.weight"][1] if facts.text_projection else dim
    if width is not None and width != reads:
        raise ModelError(f"{where}: the transformer reads {reads}-wide text rows but the {t5} encoder "
                         f"({sources.encoders[t5].path}) gives {width}; the files do not belong together")


def _check_components(path: Path, facts: Family) -> None:
    """Every encoder and tokenizer folder the family reads is there (SD3's T5 may be left out: the
    pipeline then feeds zero T5 rows)."""
    for index, encoder in enumerate(facts.encoders):
        optional = len(facts.encoders) > 1 and index == len(facts.encoders) - 1
        for folder in (path / encoder.component, path / tokenizer_folder(encoder.component)):
            if not folder.is_dir() and not optional:
                raise ModelError(
                    f"{path}: no {folder.name}/ folder; a diffusers {facts.pipeline} folder has "
                    f"{', '.join(e.component for e in facts.encoders)} and their tokenizers"
                )


def _weights_file(folder: Path, facts: Family) -> Path:
    """The transformer's safetensors file holding the edited sites: the one file, or of a sharded save
    the shard its index names for them (every site in one shard)."""
    single = folder / _WEIGHTS
    if single.is_file():
        return single
    index = folder / (_WEIGHTS + ".index.json")
    if not index.is_file():
        raise ModelError(f"{single}: no such file (nor a sharded {index.name}); erasec reads only safetensors")
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ModelError(f"{index}: not a safetensors shard index ({error})") from None
    wanted = {shard for name, shard in weight_map.items() if _edited_tensor(name, facts)}
    if len(wanted) != 1:
        raise ModelError(
            f"{index}: the edited weights lie in {len(wanted)} shards; erasec reads them from one "
            "(re-save the transformer with a larger max_shard_size)"
        )
    shard = folder / wanted.pop()
    if shard.parent != folder or not shard.is_file():
        raise ModelError(f"{index}: its shard {shard.name} is not a file in {folder}")
    return shard


def _edited_tensor(name: str, facts: Family) -> bool:
    if facts.text_projection is not None:
        return _KV.match(name) is not None or name.startswith(facts.text_projection + ".")
    return name.startswith((CONTEXT_MODULE + ".", POOLED_MODULE + "."))


def _encoder_width(path: Path, component: str) -> int:
    config_file = path / component / "config.json"
    config = read_json(config_file)
    width = config.get("d_model", config.get("hidden_size"))
    if not isinstance(width, int) or width <= 0:
        raise ModelError(f"{config_file}: no positive d_model or hidden_size; not a text encoder config")
    return width


def _key_width(path: Path, facts: Family, tensors: TensorFile, where: Path) -> int:
    """The key rows' width: the context embedder's input (checked against the T5 width), or for Wan
    the text embedder's output (its input checked against umT5's)."""
    t5 = facts.encoders[-1].component
    if facts.text_projection is not None:
        first = tensors.shapes.get(f"{facts.text_projection}.linear_1.weight")
        second = tensors.shapes.get(f"{facts.text_projection}.linear_2.weight")
        if first is None or second is None:
            raise ModelError(f"{where}: no {facts.text_projection}.linear_1/linear_2 weights; not a {facts.pipeline} transformer")
        width = _encoder_width(path, t5)
        if first[1] != width:
            raise ModelError(f"{where}: {facts.text_projection}.linear_1 reads {first[1]} features but "
                             f"{t5} gives {width}; the transformer and text encoder do not belong together")
        return second[0]
    shape = tensors.shapes.get(f"{CONTEXT_MODULE}.weight")
    if shape is None or len(shape) != 2:
        raise ModelError(f"{where}: no 2-D {CONTEXT_MODULE}.weight; not a {facts.pipeline} transformer")
    if (path / t5).is_dir():
        width = _encoder_width(path, t5)
        if width != shape[1]:
            raise ModelError(f"{where}: {CONTEXT_MODULE} reads {shape[1]} features but {t5} gives {width}; "
                             "the transformer and text encoder do not belong together")
    return shape[1]


def _sites(tensors: TensorFile, facts: Family, dim: int, where: Path) -> tuple[LinearSite, ...]:
    if facts.text_projection is None:
        out = tensors.shapes[f"{CONTEXT_MODULE}.weight"][0]
        return (LinearSite(module_path=CONTEXT_MODULE, out_features=out, in_features=dim, role="context"),)
    sites = []
    for name, shape in tensors.shapes.items():
        match = _KV.match(name)
        if match is None:
            continue
        if len(shape) != 2 or shape[1] != dim:
            raise ModelError(f"{where}: {name} has shape {tuple(shape)}, expected ({shape[0]}, {dim})")
        sites.append((int(match["block"]), match["role"], match["path"], shape[0]))
    if not sites:
        raise ModelError(f"{where}: no blocks.N.attn2.to_k/to_v weights; not a {facts.pipeline} transformer")
    return tuple(LinearSite(module_path=p, out_features=o, in_features=dim, role=r) for _, r, p, o in sorted(sites))


def _pooled_space(path: Path, facts: Family, tensors: TensorFile, where: Path, location: str) -> KeySpace:
    """The pooled text vector → ``time_text_embed.text_embedder.linear_1`` (FLUX: CLIP-L's pooler
    output; SD3: both CLIPs' projected outputs)."""
    if facts.pooled_encoder is None:
        raise ModelError(f"{location}: options.pooled: {facts.pipeline} has no pooled text path")
    shape = tensors.shapes.get(f"{POOLED_MODULE}.weight")
    if shape is None or len(shape) != 2:
        raise ModelError(f"{where}: options.pooled: no 2-D {POOLED_MODULE}.weight")
    site = LinearSite(module_path=POOLED_MODULE, out_features=shape[0], in_features=shape[1], role="pooled")
    return KeySpace(name=POOLED_SPACE, dim=shape[1], encoder=f"{facts.pooled_encoder}.pooled", sites=(site,))
