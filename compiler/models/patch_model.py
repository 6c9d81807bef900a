"""The model a patch command (verify, apply, eval, compose, retarget) opens for a patch: as the patch
was built against it — its pooled site opened when the patch edits one, a diffusion transformer at
the T5 padding the patch records (``erasec.base.sequence_length``, docs/patch-format.md)."""

from __future__ import annotations

from erasec.ir.dit_naming import POOLED_SITE
from erasec.patches.manifest_checks import POOLED_LAYER
from erasec.patches.read import PatchFile

from ..errors import ModelError
from .families import FAMILIES
from .protocol import TextModel


def open_patch_model(
    patch: PatchFile, location: str, *, allow_pickle: bool = False, sequence_length: int | None = None,
    need_text: bool = True, text_inputs=None,
) -> TextModel:
    """The model opened as the patch was built against it: with the key spaces the patch edits
    (SDXL's ``add_embedding.linear_1`` or a DiT's pooled ``time_text_embed.text_embedder.linear_1``
    when the patch carries it, so its sites, pin and ΔW are checked like the others) and, for a
    diffusion transformer, at the T5 padding the patch records (``erasec.base.sequence_length``):
    the rows differ with the padding. ``sequence_length`` opens it at another padding instead (``erasec
    eval --sequence-length``, which reports the difference); a model that is no DiT is opened as
    it is, and the family check that follows names the mismatch. A Wan 2.2 patch opens the expert it
    records (``erasec.base.component``: ``transformer_2``, the low-noise expert, has its own weights
    and text embedder); a folder without it is refused in one line naming both. ``need_text=False``: a DiT
single file without its text encoders opens for what needs only its weights (``open_model``);
``text_inputs``: its encoders given apart (``dit_inputs.TextInputs``, verify's ``--text-encoder``)."""
    from .open import open_model  # torch and transformers load here

    layers = patch.layers()
    pooled = POOLED_LAYER in layers or POOLED_SITE in layers
    component = patch.base.get("component")
    try:
        model = open_model(location, allow_pickle=allow_pickle, pooled=pooled, component=component,  # headers only
                           need_text=need_text, text_inputs=text_inputs)
    except ModelError as error:
        if component is None:
            raise
        default = FAMILIES[patch.base["family"]].denoiser
        raise ModelError(f"{patch.path}: is a patch of {component}/, not {default}/; {error}") from None
    length = patch.sequence_length if sequence_length is None else sequence_length
    if length is None or model.sequence_length in (None, length):
        return model
    return open_model(location, allow_pickle=allow_pickle, pooled=pooled, sequence_length=length, component=component,
                      need_text=need_text, text_inputs=text_inputs)
