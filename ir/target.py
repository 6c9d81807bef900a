"""What a model exposes to erasure: its key spaces and the linear sites each one feeds.

A *key space* is a text-embedding row space (SD1.x: CLIP-L final hidden state, d=768) and the
cross-attention ``to_k``/``to_v`` matrices that read it (DESIGN.md §4, research/methods.md §0.3).
Sites are named by their diffusers module path; backends map that name to a file key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .errors import VerifyError

Family = Literal["sd1", "sd2", "sdxl", "flux", "chroma", "sd3", "wan"]
# k/v: a cross-attention to_k/to_v (SD's UNets, Wan's transformer); pooled: SDXL's
# add_embedding.linear_1 or a DiT's time_text_embed.text_embedder.linear_1, read by the pooled text
# embedding (research/methods.md §7); context: a diffusion transformer's static text-entry Linear
# (FLUX/Chroma/SD3 ``context_embedder``), the one map every text row passes before the blocks mix it
# with image tokens. Sites with a bias keep it: an edit changes the weight only (docs/models.md).
Role = Literal["k", "v", "pooled", "context"]
ROLES: tuple[str, ...] = ("k", "v", "pooled", "context")


@dataclass(frozen=True, slots=True, kw_only=True)
class LinearSite:
    """One ``Linear(in_features -> out_features)`` whose input is a key-space row; its bias, if any, is
    never edited."""

    module_path: str  # diffusers path, e.g. "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
    out_features: int
    in_features: int
    role: Role
    # the weight's real width when the site reads only its first in_features columns (SDXL's
    # add_embedding.linear_1: pooled embedding, then the size/crop time embeddings); None = in_features
    full_in_features: int | None = None

    def __post_init__(self) -> None:
        if self.out_features <= 0 or self.in_features <= 0:
            raise VerifyError(f"site {self.module_path}: shape ({self.out_features}, {self.in_features}) is empty")
        if self.role not in ROLES:
            raise VerifyError(f"site {self.module_path}: role {self.role!r} is not one of {', '.join(ROLES)}")
        if self.full_in_features is not None and self.full_in_features < self.in_features:
            raise VerifyError(
                f"site {self.module_path}: full width {self.full_in_features} is below its {self.in_features} columns"
            )

    @property
    def weight_name(self) -> str:
        """The tensor name in a diffusers UNet state dict."""
        return f"{self.module_path}.weight"


@dataclass(frozen=True, slots=True, kw_only=True)
class KeySpace:
    name: str  # e.g. "clip-l"
    dim: int
    encoder: str  # the component that produces the rows, e.g. "text_encoder"
    sites: tuple[LinearSite, ...]

    def __post_init__(self) -> None:
        if self.dim <= 0:
            raise VerifyError(f"key space {self.name}: dimension {self.dim} is not positive")
        seen = set()
        for site in self.sites:
            if site.in_features != self.dim:
                raise VerifyError(
                    f"key space {self.name}: site {site.module_path} reads {site.in_features} features, "
                    f"the space has {self.dim}"
                )
            if site.module_path in seen:
                raise VerifyError(f"key space {self.name}: site {site.module_path} listed twice")
            seen.add(site.module_path)

    def site(self, module_path: str) -> LinearSite:
        for site in self.sites:
            if site.module_path == module_path:
                return site
        raise KeyError(module_path)


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelTarget:
    """The description of one base model that a program edits."""

    family: Family
    name: str  # where it came from: a path or builtin:NAME (informational)
    spaces: tuple[KeySpace, ...]

    def space(self, name: str) -> KeySpace:
        for space in self.spaces:
            if space.name == name:
                return space
        raise KeyError(name)

    @property
    def sites(self) -> tuple[LinearSite, ...]:
        return tuple(site for space in self.spaces for site in space.sites)
