"""What a model family is to the compiler: its key space, its text encoders and how its files show it.

A family is a ``Family`` value registered in ``registry.FAMILIES``; ``models/open.py`` detects and
opens a model by asking each registered family, never by testing family names. A new family (FLUX,
SD3, …) joins by adding one module beside ``sd.py`` that defines its ``Family`` values, and one line
in ``registry.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

HiddenState = Literal["last", "penultimate"]


class SingleFileEncoder(NamedTuple):
    """Where one text encoder lies in a single-file checkpoint (research/ecosystem.md §3.1): its
    component, its tensor-name prefix, whether it is stored in OpenCLIP's layout (fused ``in_proj``,
    ``text_projection`` as a matrix) rather than HF CLIP's, and whether that OpenCLIP tower holds one
    more block than the diffusers encoder runs (SD2's penultimate-block encoder)."""

    component: str
    prefix: str
    open_clip: bool
    extra_block: bool = False


class EncoderSlot(NamedTuple):
    """A diffusion transformer's text encoder as a separate input (docs/models.md, "Single files and
    separate encoders"): the ``slot`` a user names it by (``text_encoders: {t5: …}``,
    ``--text-encoder t5=…``), the ``component`` it stands for, the transformers ``model_class`` its
    HF-named tensors load as, and the prefix its tensors carry inside an all-in-one checkpoint that
    ComfyUI or SAI saved (``text_encoders.t5xxl.transformer.`` …; ``comfy/supported_models.py``)."""

    slot: str
    component: str
    model_class: str
    embedded_prefix: str


class Encoder(NamedTuple):
    """One text encoder of a family: its component folder, the hidden state its key rows come from,
    and the pad token its tokenizer pads with (the rows of a padded prompt depend on it). A tuple:
    the embedding cache's key records it as ``[component, hidden, pad]``."""

    component: str
    hidden: HiddenState
    pad_token: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Family:
    """A registered family. The detection functions are exclusive between the families of one module
    (that module decides their precedence); ``open_model`` takes the one family that claims the files.

    ``in_folder(path)``: the diffusers folder at ``path`` is this family (the layout itself — ``unet/``,
    ``text_encoder/``, ``tokenizer/`` — is checked before). ``in_single_file(keys)``: a single file with
    these tensor names is. ``text_width(shapes, location)``: a single file's key-row width, summed over
    its encoders, read from its token embeddings (raises ``ModelError`` when the file lacks one).
    ``single_file``: where each encoder lies in a single file. ``pooled_encoder``: the component whose
    projected EoT state is the pooled text embedding (None: no pooled path). ``unet_name`` and
    ``unet_config``: the family's UNet (``UNet2DConditionModel`` keyword arguments), which a single
    file without a recorded config is read as (``models/unet_configs.py``).

    A diffusion transformer (``families/dit.py``) names its ``denoiser`` folder (``transformer``) and
    the ``sequence_length`` its pipeline pads the T5 rows to by default; its rows follow the runtime's
    own rule (``models/dit.py``). The UNet and single-file fields do not apply to it.
    """

    name: str
    key_space: str  # the KeySpace name of the K/V rows
    encoders: tuple[Encoder, ...]
    pipeline: str  # the diffusers pipeline class ``erasec eval --images`` generates with
    pooled_encoder: str | None
    in_folder: Callable[[Path], bool]
    in_single_file: Callable[[set[str]], bool]
    text_width: Callable[[Mapping[str, tuple], str], int] | None = None
    single_file: tuple[SingleFileEncoder, ...] = ()
    unet_name: str = ""
    unet_config: Mapping[str, object] | None = None
    denoiser: str = "unet"  # the folder of the edited network: unet, or transformer for a DiT
    sequence_length: int | None = None  # a DiT's default padded T5 length (diffusers' max_sequence_length)
    # a DiT's T5 rows (models/dit.py): "unmasked" (FLUX, SD3: every padding row carries the prompt),
    # "one_pad" (Chroma: masked, the tokens and one padding row seen), "zero_filled" (Wan: masked, cut at
    # the prompt's length, zeros after)
    text_rows: Literal["unmasked", "one_pad", "zero_filled"] | None = None
    text_projection: str | None = None  # a transformer module the rows pass before the sites (Wan's text embedder)
    clean_prompts: bool = False  # the pipeline cleans prompt text first (WanPipeline's prompt_clean)
    # a DiT's text encoders as separate inputs, and where an all-in-one single file holds them
    encoder_slots: tuple[EncoderSlot, ...] = ()
    native_marks: str = ""  # a DiT single file's telling names, in words (refusals): "txt_in, vector_in"
    # a DiT's diffusers state dict → its native single-file names (models/dit_layout.py; None: not written)
    to_native: Callable[[Mapping], dict] | None = None
    # further denoiser folders a DiT folder may hold beside ``denoiser``, each reading the same text through
    # its own weights, so each edited by a patch of its own (Wan 2.2's low-noise expert ``transformer_2``)
    experts: tuple[str, ...] = ()

    @property
    def transformer(self) -> bool:
        """Whether the family is a diffusion transformer (``families/dit.py``)."""
        return self.denoiser != "unet"

    @property
    def pooled(self) -> bool:
        """Whether the family has a pooled text path (``options.pooled``)."""
        return self.pooled_encoder is not None

    @property
    def denoisers(self) -> tuple[str, ...]:
        """Every denoiser folder a folder of this family may hold: ``denoiser`` first, then ``experts``."""
        return (self.denoiser, *self.experts)

    def encoder_slot(self, component: str) -> EncoderSlot:
        """The separate-input slot of ``component`` (a DiT family's)."""
        return next(slot for slot in self.encoder_slots if slot.component == component)

    def single_file_encoder(self, component: str) -> SingleFileEncoder:
        """Where ``component`` lies in a single file of this family."""
        return next(encoder for encoder in self.single_file if encoder.component == component)
