"""Which rows of an encoded prompt and its guide pair up (a preset's row rule, ``lower.py``'s
docstring), and the order prompts are encoded in."""

from __future__ import annotations

import numpy as np

from .prompts import time_alignment


def length_batches(items: list, width, size: int) -> list[list[int]]:
    """Indices of ``items`` in batches of ``size``, ordered by ``width(item)`` (the token length a batch
    pads to), then by position: short prompts are encoded together, as ``SDModel.encode`` orders
    them, and the order depends only on the items."""
    order = sorted(range(len(items)), key=lambda i: (width(items[i]), i))
    return [order[start : start + size] for start in range(0, len(order), size)]


class RowRule:
    """A preset's row rule (module docstring): which rows of a prompt and its guide pair up."""

    def __init__(self, rule: str, ids: dict[str, list[int]], last: dict[str, int]) -> None:
        self.rule, self.ids, self.last = rule, ids, last

    def count(self, prompt: str, guide: str) -> int:
        if self.rule == "legacy_span":
            return 77 - max(self.last[prompt], self.last[guide])
        if self.rule == "eot_pad":
            return 77 - (self.last[prompt] + 1)
        return 77 if self.rule == "time_aligned" else 1

    def select(self, prompt: str, guide: str, old: np.ndarray, new: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(prompt rows, their guide rows, their token positions) from the two encodings."""
        if self.rule == "legacy_span":
            i, j = self.last[prompt], self.last[guide]
            f = max(i, j)
            old, new = old[i : 77 - (f - i)], new[j : 77 - (f - j)]
            return old, new, np.arange(i, i + old.shape[0])
        if self.rule == "time_aligned":
            return old, new[time_alignment(self.ids[prompt], self.ids[guide], old.shape[0])], np.arange(old.shape[0])
        if self.rule == "eot_pad":
            # the first end-of-text row and the padding after it, offset t from each EoT paired, clipped
            # at the guide's last row (TIME's rule for the rows after EoT)
            i, j = self.last[prompt] + 1, self.last[guide] + 1
            offsets = np.arange(old.shape[0] - i)
            return old[i:], new[np.minimum(j + offsets, new.shape[0] - 1)], i + offsets
        i, j = self.last[prompt], self.last[guide]
        return old[i][None], new[j][None], np.arange(i, i + 1)

    def width(self, *prompts: str) -> int:
        """The unpadded token length the longest of ``prompts`` encodes at."""
        return max(len(self.ids[prompt]) for prompt in prompts)

    first_token = 1  # the first row a prompt's own tokens give (row 0 is CLIP's BOS, the same for all)

    def visible(self, prompt: str, rows: int) -> int:
        """How many of a padded prompt's ``rows`` the denoiser sees: all of them (SD's cross-attention)."""
        return rows

    def subject(self, prompt: str, tokens: np.ndarray) -> np.ndarray:
        """A mask over ``tokens``: the prompt's subject (last-token) row, or the first row if it has none."""
        mask = tokens == self.last[prompt]
        if not mask.any():
            mask[0] = True
        return mask


class TriggerRows(RowRule):
    """The erase pairs' rule: ``names`` (the method's) for every pair except implicit entries' trigger
    pairs (prompt, counterpart), which take ``trigger`` (``Preset.implicit_rows`` or
    ``options.implicit_rows``)."""

    def __init__(self, names: RowRule, trigger: RowRule, triggers) -> None:
        super().__init__(names.rule, names.ids, names.last)
        self.names, self.trigger, self.triggers = names, trigger, frozenset(triggers)

    def _rule(self, prompt: str, guide: str) -> RowRule:
        return self.trigger if (prompt, guide) in self.triggers else self.names

    def count(self, prompt: str, guide: str) -> int:
        return self._rule(prompt, guide).count(prompt, guide)

    def select(self, prompt: str, guide: str, old: np.ndarray, new: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self._rule(prompt, guide).select(prompt, guide, old, new)


class RuntimeRows(RowRule):
    """A diffusion transformer's rule (``runtime``): every row its pipeline feeds the transformer
    (``models/dit.py``: all padded T5 rows for FLUX and SD3, the tokens and one padding row for Chroma,
    the tokens for Wan), row r of a prompt paired with row r of its guide, both padded as the runtime
    pads them. ``seen(n)`` is the model's ``seen_rows``; T5 has no BOS, so a prompt's first token row
    counts."""

    first_token = 0

    def __init__(self, ids: dict[str, list[int]], last: dict[str, int], seen) -> None:
        super().__init__("runtime", ids, last)
        self.seen = seen

    def count(self, prompt: str, guide: str) -> int:
        return self.seen(len(self.ids[prompt]))

    def select(self, prompt: str, guide: str, old: np.ndarray, new: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        count = self.visible(prompt, old.shape[0])
        return old[:count], new[:count], np.arange(count)

    def visible(self, prompt: str, rows: int) -> int:
        return min(self.seen(len(self.ids[prompt])), rows)
