"""``erasec eval``'s efficacy-against-drift curve: what each step of erasure costs the preserved rows.

The patch's spec is lowered again and run through its recorded pipeline up to ``solve`` (or
``drift-budget``), then solved at erase-weight scales from 1/1024 to 16 × the spec's — each point one
d × d solve of the factored system ``passes/drift_budget.py`` forms once — and measured as the
budget measures it: the drift of every preserve row as solved (the method's prior, the spec's
preserve list, mined neighbours), and the efficacy of the spec's own erase rows
(``1 − ‖W'k − W0 g‖ / ‖W0 k − W0 g‖``, all concepts' rows together), both over the edited sites.
The patch's own point is at the scale its budget chose (``erasec.report.drift``), or 1 without one.
"""

from __future__ import annotations

from dataclasses import dataclass

from erasec.ir.errors import ErasecError
from erasec.ir.threads import one_blas_thread
from erasec.passes.drift_budget import DriftProblem
from erasec.passes.pipeline import Pipeline

from ..lowering.lower import Lowering

CURVE_SCALES = tuple(2.0**k for k in range(-10, 5))  # × the spec's erase weights
STOPS = ("drift-budget", "solve")


@dataclass(frozen=True, slots=True, kw_only=True)
class DriftCurve:
    points: tuple[tuple[float, float, float], ...]  # (scale, drift, efficacy), scale ascending
    landed: tuple[float, float, float]  # the patch's own point
    max_drift: float | None  # the spec's budget, if any
    preserve_rows: int
    space: str

    def as_dict(self) -> dict:
        def point(values: tuple[float, float, float]) -> dict:
            return {"scale": values[0], "drift": round(values[1], 6), "efficacy": round(values[2], 6)}

        return {
            "space": self.space,
            "max_drift": self.max_drift,
            "preserve_rows": self.preserve_rows,
            "patch": point(self.landed),
            "points": [point(p) for p in self.points],
        }


@one_blas_thread()  # d × d solves on two threads fight over the cores (0.85 s a point under load, 6 ms on one)
def drift_curve(spec, preset, pipeline_text: str, model, landed_scale: float) -> tuple[DriftCurve | None, str]:
    """(the curve of the K/V key space, "") or (None, why it is not drawn)."""
    pipeline = Pipeline.parse(pipeline_text)
    names = [p.name for p in pipeline.passes]
    stop = next((names.index(name) for name in STOPS if name in names), None)
    if stop is None:
        return None, f"not drawn: method {spec.method}'s pipeline has no solve pass (it solves in rounds of its own)"
    lowered = Lowering.for_pipeline(model, pipeline).lower(spec, preset)
    program = Pipeline(pipeline.passes[:stop]).apply(lowered)
    space = program.spaces[0]
    try:
        problem = DriftProblem.of(space, program.target.space(space.space).dim)
    except ErasecError as error:
        return None, f"not drawn: {error}"
    own = lowered.spaces[0].erase  # the spec's own rows, before any pass mined more
    keys, gaps = own.keys, own.keys - own.guides

    def measure(scale: float) -> tuple[float, float, float]:
        shift = problem.solve(scale)
        return scale, problem.drift(shift), problem.efficacy(shift, keys, gaps)

    curve = DriftCurve(
        points=tuple(measure(scale) for scale in CURVE_SCALES),
        landed=measure(landed_scale),
        max_drift=spec.options.max_drift,
        preserve_rows=problem.preserve_rows,
        space=space.space,
    )
    return curve, ""
