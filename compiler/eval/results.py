"""What ``erasec eval`` is asked (``EvalOptions``) and what it finds (``EvalResult``, one
``ConceptResult`` per erased concept); ``run.py`` computes them, ``report.py`` and ``html.py`` show them."""

from __future__ import annotations

from dataclasses import dataclass

from erasec.ir.dit_naming import MAX_SEQUENCE_LENGTH

from ..errors import EvalError
from .drift_curve import DriftCurve
from .metrics import LayerScore

ATTACK_LAMBDA = 0.1  # the adversarial pass's default (passes/adversarial.py), so the two attacks agree


@dataclass(frozen=True, slots=True, kw_only=True)
class EvalOptions:
    suites: tuple[str, ...] = ("artists", "coco")
    prompts: str | None = None  # a user's prompt file (.txt or .csv)
    attack_lambda: float = ATTACK_LAMBDA
    interference_max: int = 12  # re-solve each concept alone only up to this many concepts
    max_unrelated: int = 200  # unrelated prompts kept per suite or file, evenly spaced (0: all)
    allow_pickle: bool = False
    device: str = "auto"  # where the text encoders run (compiler/models/placement.py; --device)
    encoder_dtype: str = "fp32"
    encode_batch: int | None = None
    # a DiT patch measured at another T5 padding than the one it records (another runtime's): the
    # result says both (None: the patch's own)
    sequence_length: int | None = None

    def __post_init__(self) -> None:
        if not self.attack_lambda > 0:  # λ > 0 keeps λI + ΣW'ᵀW' positive definite (a zeroed W' has none)
            raise EvalError(f"--attack-lambda {self.attack_lambda}: must be > 0")
        for option, value in (("--interference-max", self.interference_max), ("--max-unrelated", self.max_unrelated)):
            if value < 0:
                raise EvalError(f"{option} {value}: must be ≥ 0")
        length = self.sequence_length
        if length is not None and not 1 <= length <= MAX_SEQUENCE_LENGTH:
            raise EvalError(f"--sequence-length {length}: must be in 1..{MAX_SEQUENCE_LENGTH}")


@dataclass(frozen=True, slots=True, kw_only=True)
class ConceptResult:
    concept: str
    anchor: str
    efficacy: LayerScore
    generality: LayerScore | None  # None: no held-out paraphrase of it in the suites/prompts
    targets: LayerScore | None  # specificity on its unpaired prompts (I2P): 1 − how far they moved
    recoverability: LayerScore
    examples: tuple[str, ...]  # a few of its generality prompts
    prompts: tuple[str, ...]  # its own prompts, as the build lowered them (concept, synonyms, templates)

    def as_dict(self) -> dict:
        def part(score):
            return None if score is None else score.as_dict()

        return {
            "concept": self.concept,
            "anchor": self.anchor,
            "efficacy": self.efficacy.as_dict(),
            "generality": part(self.generality),
            "target_specificity": part(self.targets),
            "recoverability": self.recoverability.as_dict(),
            "generality_examples": list(self.examples),
            "prompts": list(self.prompts),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class EvalResult:
    patch: str
    name: str
    version: str
    model: str
    method: str
    layers: int  # K/V sites measured (all of the key space's, edited or not)
    edited_layers: int
    concepts: tuple[ConceptResult, ...]
    specificity: tuple[tuple[str, LayerScore], ...]  # group ("preserved", a suite, a file) -> score
    least_kept: tuple[tuple[str, float], ...]  # the unrelated/preserved prompts that moved most
    interference: tuple[tuple[float, ...], ...] | None  # [i][j]: erasing concept i alone moved j
    interference_note: str
    attack_lambda: float
    # the same matrix for each K/V site on its own: (module path, matrix), in site order
    interference_layers: tuple[tuple[str, tuple[tuple[float, ...], ...]], ...] | None = None
    drift_curve: DriftCurve | None = None  # efficacy against drift of the patch's spec (drift_curve.py)
    drift_note: str = ""  # why there is no curve
    # a DiT's T5 padding the rows were measured at, and the one the patch was built at (None: SD)
    sequence_length: int | None = None
    built_sequence_length: int | None = None
    layer_kind: str = "K/V"  # what the measured sites are: "K/V", or a DiT's "text-entry" (context_embedder)

    @property
    def padding_note(self) -> str | None:
        """A DiT's padding line: measured at the patch's own, or — said plainly — at another one."""
        if self.sequence_length is None:
            return None
        if self.sequence_length == self.built_sequence_length:
            return f"T5 padding {self.sequence_length} rows, as the patch was built"
        return (f"T5 padding {self.sequence_length} rows (--sequence-length), NOT the {self.built_sequence_length} the "
                "patch was built at: these numbers are what it does under that runtime's padding")

    def as_dict(self) -> dict:
        return {
            "patch": self.patch,
            "name": self.name,
            "version": self.version,
            "model": self.model,
            "method": self.method,
            "layers": self.layers,
            "edited_layers": self.edited_layers,
            "concepts": [c.as_dict() for c in self.concepts],
            "specificity": {group: score.as_dict() for group, score in self.specificity},
            "least_kept": [{"prompt": p, "specificity": round(v, 6)} for p, v in self.least_kept],
            "interference": None
            if self.interference is None
            else {
                "concepts": [c.concept for c in self.concepts],
                "matrix": [[round(v, 6) for v in row] for row in self.interference],
                "per_layer": {
                    path: [[round(v, 6) for v in row] for row in matrix]
                    for path, matrix in (self.interference_layers or ())
                },
            },
            "interference_note": self.interference_note,
            "attack_lambda": self.attack_lambda,
            "drift_curve": None if self.drift_curve is None else self.drift_curve.as_dict(),
            **({"drift_note": self.drift_note} if self.drift_note else {}),
            **({"sequence_length": self.sequence_length, "built_sequence_length": self.built_sequence_length}
               if self.sequence_length is not None else {}),  # absent for SD
        }
