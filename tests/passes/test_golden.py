"""Golden printed IR for every pass, in the spirit of xDSL's filecheck tests.

Each registered pass has ``golden/<pass>.ir``: per case, the pipeline run, the printed input (built
by hand in tests/programs.py, no model) and the exact printed output — or, for a refusal, the
exact error. The file is compared whole; a change to a pass or to ``ir.printer`` shows up as a text
diff. Regenerate with ``pytest tests/passes/test_golden.py --regen-golden`` (or
``ERASEC_REGEN_GOLDEN=1``) and review the diff; golden/README.md says more.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from erasec.ir import EditProgram, ErasecError
from erasec.ir.printer import print_program
from erasec.passes.pipeline import Pipeline, ir_callback
from erasec.passes.registry import pass_names
from erasec.passes.solve import SolvePass
from programs import (
    as_per_layer,
    base_weights,
    conflicting_program,
    duplicate_rows_program,
    invariant_rows_program,
    named_preserve_program,
    random_program,
    rece_program,
    site_rows_program,
    with_site_gram,
)

GOLDEN = Path(__file__).parent / "golden"


@dataclass(frozen=True)
class Case:
    name: str
    pipeline: str
    build: Callable[[], EditProgram]
    about: str  # one line: what the case shows


def _small(seed: int = 0, **options) -> EditProgram:
    return random_program(np.random.default_rng(seed), **{"dim": 4, "erase": 2, "preserve": 2, **options})


def _gram(seed: int = 0, **options) -> EditProgram:
    rng = np.random.default_rng(seed)
    return with_site_gram(random_program(rng, **{"dim": 4, "erase": 2, "preserve": 2, **options}), rng)[0]


def _solved(seed: int = 0) -> EditProgram:
    return SolvePass().apply(_gram(seed, dim=6, erase=3))


def _filtered(pipeline: str = "influence-filter") -> EditProgram:
    """``site_rows_program`` after ``pipeline``: sites with preserve (and hard) rows of their own."""
    return Pipeline.parse(pipeline).apply(site_rows_program())


def _per_layer(seed: int = 0) -> EditProgram:
    rng = np.random.default_rng(seed)
    program = random_program(rng, dim=4, erase=2, preserve=2)
    return as_per_layer(program, base_weights(program.target, rng))


CASES: dict[str, tuple[Case, ...]] = {
    "adversarial": (
        Case("rounds", "adversarial{rounds=2}", _gram, "each round adds one attack row per erase row present at the start"),
    ),
    "canonicalize": (
        Case(
            "duplicates",
            "canonicalize",
            duplicate_rows_program,
            "the repeated erase row merges into row 0 (weights add), the zero key and the zero-weight preserve "
            "row go, the preserve row equal to row 1 to 1e-12 merges into it",
        ),
    ),
    "check-conflicts": (
        Case("warn", "check-conflicts", conflicting_program, "both kinds of conflict become warnings"),
        Case("error", "check-conflicts{on-conflict=error}", conflicting_program, "the first conflict stops the build"),
    ),
    "compress": (
        Case("rank-cap", "compress{dtype=fp16 max-rank=2 max-error=1}", _solved, "rank 3 capped to 2, its error and fp16's rounding reported"),
        Case("refused", "compress{max-rank=1 max-error=1e-6}", _solved, "a cap beyond the error budget is refused"),
    ),
    "drift-budget": (
        Case(
            "binds",
            "drift-budget{max-drift=0.2},solve",
            lambda: _gram(dim=6, erase=3, preserve=6),
            "drift 0.296 at the spec's weights: the erase weights are scaled until the preserve rows move 0.2",
        ),
        Case("within", "drift-budget{max-drift=0.5}", lambda: _gram(dim=6, erase=3, preserve=6), "within budget: only the record"),
        Case(
            "refused",
            "drift-budget{max-drift=0.05}",
            lambda: _gram(dim=6, erase=3, preserve=6),
            "below the drift at half the spec's efficacy: no erasure meets it",
        ),
    ),
    "directed-augment": (
        Case(
            "copies",
            "directed-augment{count=3 seed=0}",
            site_rows_program,
            "per site, the preserve rows in shuffled order and the copies its plain erase edit moves more than average",
        ),
    ),
    "filter-preserve": (
        Case("named", "filter-preserve", named_preserve_program, "preserve prompts naming 'Van Gogh' or 'Vincent' are dropped, with notes"),
    ),
    "influence-filter": (
        Case("kept", "influence-filter", site_rows_program, "each site keeps the preserve rows its plain erase edit moves more than average"),
        Case("no-weights", "influence-filter", _small, "a program without the sites' base weights is refused"),
    ),
    "invariants": (
        Case("centroids", "invariants{centroids=2}", invariant_rows_program, "BOS, the empty prompt's row and 2 centroids become hard rows"),
    ),
    "mine-neighbors": (
        Case("count", "mine-neighbors{count=2}", lambda: _small(preserve=1), "two seeded neighbours per erase row, same guide"),
    ),
    "orthogonalize": (
        Case("hard", "orthogonalize", lambda: _small(dim=6, preserve=3), "the preserve subspace becomes hard rows"),
        Case(
            "separable",
            "orthogonalize{mode=separable}",
            lambda: _small(dim=6, requests=("x", "y")),
            "the space is marked separable: each request solved on its own",
        ),
        Case("per-site", "orthogonalize{soft=false}", _filtered, "each site's own preserve rows become its own hard rows"),
    ),
    "rece": (
        Case("rounds", "rece{recipe=object rounds=2}", rece_program, "UCE, then two attack rounds: one solution of rank 6"),
    ),
    "solve": (
        Case("shared", "solve", _small, "one shared map T − I of rank 2"),
        Case("per-layer", "solve", _per_layer, "per-site residual targets: factors per layer"),
        Case("refused", "solve", lambda: _small(erase=0), "no erase rows: nothing to solve for"),
        Case(
            "per-site",
            "solve",
            lambda: _filtered("influence-filter,orthogonalize{soft=false}"),
            "sites with hard rows of their own are solved one by one: factors per layer",
        ),
    ),
    "solve-exact": (
        Case("exact", "solve-exact", _small, "each erase row mapped onto its guide exactly (residual 0)"),
        Case("refused", "solve-exact", lambda: _small(erase=5), "more erase rows than the key width: no exact map"),
    ),
}


def _output(case: Case, program: EditProgram) -> str:
    pipeline = Pipeline.parse(case.pipeline, ir_callback(lambda text: None, verify_each=True))
    try:
        return "// OUTPUT:\n" + print_program(pipeline.apply(program))
    except ErasecError as error:
        return f"// ERROR: {type(error).__name__}: {error}\n"


def _perturbed(value, rng: np.random.Generator):
    """``value`` with every float array scaled by ``1 + 1e-12·noise``: BLAS-sized noise."""
    if isinstance(value, np.ndarray) and value.dtype.kind == "f":
        return value * (1 + 1e-12 * rng.standard_normal(value.shape))
    if isinstance(value, tuple):
        return tuple(_perturbed(v, rng) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(
            value, **{f.name: _perturbed(getattr(value, f.name), rng) for f in dataclasses.fields(value) if f.init}
        )
    return value


def render(name: str, noise: np.random.Generator | None = None) -> str:
    parts = [
        f"// Golden printed IR of the {name!r} pass: per case the pipeline, the printed input (built in\n"
        "// tests/passes/test_golden.py) and the exact printed output or error. Regenerate with\n"
        "// `pytest tests/passes/test_golden.py --regen-golden` and review the diff (README.md).\n"
    ]
    for case in CASES[name]:
        program = case.build()
        if noise is not None:
            program = _perturbed(program, noise)
        parts.append(
            f"// -----\n// CASE {case.name}: {case.about}\n// RUN: {Pipeline.parse(case.pipeline)}\n"
            f"// INPUT:\n{print_program(program)}{_output(case, program)}"
        )
    return "".join(parts)


@pytest.fixture
def regen(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--regen-golden", default=False)) or os.environ.get("ERASEC_REGEN_GOLDEN") == "1"


@pytest.mark.parametrize("name", pass_names())
def test_golden(name: str, regen: bool) -> None:
    assert name in CASES, f"pass {name!r} has no golden case; add one to CASES and run with --regen-golden"
    path = GOLDEN / f"{name}.ir"
    text = render(name)
    assert render(name) == text  # the same input prints the same, twice in one process
    if regen:
        path.write_text(text, encoding="utf-8")
        return
    assert path.exists(), f"{path} is missing; run pytest {Path(__file__).name} --regen-golden"
    expected = path.read_text(encoding="utf-8")
    diff = "".join(difflib.unified_diff(expected.splitlines(True), text.splitlines(True), f"golden/{path.name}", "now"))
    assert text == expected, f"printed IR differs from {path.name} (rerun with --regen-golden if intended):\n{diff}"


def test_every_golden_file_belongs_to_a_registered_pass() -> None:
    stale = sorted(p.name for p in GOLDEN.glob("*.ir") if p.stem not in pass_names())
    assert stale == []


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_text_does_not_show_rounding_noise(name: str) -> None:
    """Inputs perturbed at 1e-12 (more than BLAS or thread-count differences cause) print the same,
    before and after the pass: the goldens hold on another machine."""
    assert render(name, np.random.default_rng(7)) == render(name)
