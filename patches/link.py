"""What a patch carries beyond its LoRA so that it can be re-solved or re-lowered without the text.

Two header keys, both ``packed`` strings (``patches/packed.py``):

* ``erasec.shared`` — per key space of the shared form, the factors of ``T − I = L Rᵀ``
  (DESIGN.md §4). T depends only on text embeddings, so on any model with the same text encoder
  ``ΔW_l = W0_l L Rᵀ`` is exact: this is what ``retarget`` re-lowers and what ``verify`` checks
  the stored LoRA against. d×r numbers per space (SD1: 768·r), so it is written whenever it fits
  ``SHARED_LIMIT``.
* ``erasec.link`` — every text-encoder output the build's lowering asked for, keyed by prompt and
  padding, written when the spec sets ``output.link: true``. ``compose`` lowers the union of two
  patches' specs from these recorded rows instead of running the text encoder, so its result is
  what building the union spec gives, whatever the lowering and the passes do with the rows.
  Encoder outputs are float32, so they are stored losslessly as float32 (``packed`` checks).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from erasec.ir import Solution, SolveReport, SpaceSolution, VerifyError

from .errors import PatchError
from .packed import pack_arrays, unpack_arrays

SHARED_LIMIT = 8_000_000  # characters; a patch whose factors are larger carries none (no retarget)
LINK_LIMIT = 90_000_000  # characters; leaves room in the 100 MB header for everything else


def encode_shared(solution: Solution) -> str | None:
    """``erasec.shared`` for a solution whose every space has the shared form, else ``None``."""
    if any(space.form != "shared" for space in solution.spaces):
        return None
    arrays, spaces = {}, []
    for space in solution.spaces:
        arrays[f"{space.space}/left"] = space.left
        arrays[f"{space.space}/right"] = space.right
        report = space.report
        spaces.append(
            {
                "space": space.space,
                "rank": space.rank,
                "condition": report.condition,
                "residual": report.residual,
                "hard_rank": report.hard_rank,
            }
        )
    text = pack_arrays(arrays, {"spaces": spaces})
    return text if len(text) <= SHARED_LIMIT else None


def decode_shared(text: str, *, where: str = "erasec.shared") -> Solution:
    """The ``Solution`` an ``erasec.shared`` string records; ``where`` names it in errors (file and key)."""
    arrays, meta = unpack_arrays(text, where)
    spaces = []
    try:
        for entry in meta["spaces"]:
            name = entry["space"]
            spaces.append(
                SpaceSolution(
                    space=name,
                    form="shared",
                    rank=int(entry["rank"]),
                    left=arrays[f"{name}/left"],
                    right=arrays[f"{name}/right"],
                    report=SolveReport(
                        condition=float(entry["condition"]),
                        residual=float(entry["residual"]),
                        hard_rank=int(entry["hard_rank"]),
                    ),
                )
            )
    except (KeyError, TypeError, ValueError) as error:
        raise PatchError(f"{where}: incomplete record ({error!r}); the file is damaged") from None
    except VerifyError as error:
        raise PatchError(f"{where}: {error}; the file is damaged") from None
    return Solution(spaces=tuple(spaces))


def encode_encodings(encodings: Mapping[tuple[str, bool], np.ndarray]) -> str:
    """``erasec.link`` for the text encoder's outputs, keyed by (prompt, padded)."""
    order = sorted(encodings)
    arrays = {f"e/{i}": encodings[key] for i, key in enumerate(order)}
    text = pack_arrays(arrays, {"prompts": [[prompt, padded] for prompt, padded in order]})
    if len(text) > LINK_LIMIT:
        raise PatchError(
            f"output.link: the recorded encodings take {len(text) / 1e6:.0f} MB, over what a safetensors "
            "header can hold (100 MB); remove output.link or preserve fewer prompts"
        )
    return text


def decode_encodings(text: str, *, where: str = "erasec.link") -> dict[tuple[str, bool], np.ndarray]:
    """The encoder outputs an ``erasec.link`` string records; ``where`` names it in errors (file and key)."""
    arrays, meta = unpack_arrays(text, where)
    try:
        return {(str(prompt), bool(padded)): arrays[f"e/{i}"] for i, (prompt, padded) in enumerate(meta["prompts"])}
    except (KeyError, TypeError, ValueError) as error:
        raise PatchError(f"{where}: incomplete record ({error!r}); the file is damaged") from None
