"""Selective erasure, held out: does an erasure move a concept's paraphrases more than its neighbours?

    python benchmarks/selective.py --split tune --out /tmp/tune.md          # every preset, N = 1, 10, 100
    python benchmarks/selective.py --split test --out /tmp/test.md --choose-from /tmp/tune.json
    python benchmarks/selective.py --split tune --sizes 10 --variant erasec:max_drift=0.05 --variant uce:lambda=0.1
    python benchmarks/selective.py --write-test-neighbours

Model: builtin:minilm-sd1 (a pretrained MiniLM text encoder feeding an SD1-shaped UNet's K/V, so a
paraphrase really is near its concept). Data: benchmarks/data/selective/concepts.yaml (114 concepts
of seven kinds; per split, paraphrases that carry the concept without naming it and prompts about
neighbours; README there). The spec of a build names only the bare concepts, each with its kind's
anchor (``ANCHORS``), and preserves nothing itself: no paraphrase and no neighbour is in any spec,
so every number below is held out from the build; the method's own prior and mined neighbours apply.

Measures (all exact text-pathway quantities over every K/V site, W0 and ΔW of the built patch):

* movement of a prompt  m(p) = sqrt(Σ_l Σ_rows ‖ΔW_l c‖² / Σ_l Σ_rows ‖W0_l c‖²) over its 77 padded rows;
* C  = mean m of the bare erased names; U = mean m of their paraphrases; N = mean m of their
  neighbours' prompts (also split into neighbours the built-in mining vocabulary holds and ones it
  does not); F = mean m of 100 COCO captions (compiler/data/suites/coco.csv, every 5th);
* efficacy = compiler/eval/metrics.efficacy on the bare names' last subject rows against their
  anchors' (1 − ‖W'k − W0 g‖ / ‖W0 k − W0 g‖, summed over names and sites);
* U/C and U/N are ratios of the means; N = 1 is the mean over ``--singles`` one-concept builds.

The bound (docs/results.md, "Selective erasure"): with D = Σ_l ΔW_lᵀΔW_l ⪰ 0 and the pooled second
moments Â, B̂, F̂ of the paraphrase, neighbour and COCO rows, each scaled so that tr(S·) = 1 with
S = Σ_l W0_lᵀW0_l, the pooled squared movements are tr(DÂ), tr(DB̂), tr(DF̂). The least neighbour
movement any ΔW can have while its paraphrases move by u and COCO by at most f is the SDP
min tr(DB̂) s.t. tr(DÂ) ≥ u², tr(DF̂) ≤ f², D ⪰ 0, whose dual is one-dimensional:
N²min = max_{β ≥ 0} u² / λmax(Â, B̂ + βF̂) − β f². So pooled U/N ≤ u / N_min for every ΔW of any
rank (an optimal D has rank 1: two constraints). It ignores efficacy, so it is an upper bound.

The default-choice rule (``choose``) runs on the tuning split; ``--choose-from`` marks the chosen
variant in a test-split run.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "benchmarks" / "data" / "selective"
COCO = ROOT / "compiler" / "data" / "suites" / "coco.csv"
MODEL = "builtin:minilm-sd1"
SPLITS = ("tune", "test")
# what each kind of concept should read as once erased; "" is the method's blank guide (the empty prompt)
ANCHORS = {
    "artist": "art",
    "public figure": "a person",
    "fictional character": "a character",
    "brand": "a product",
    "place": "a place",
    "object": "an object",
    "unsafe": "",
}
# issue 15's targets (test split) per N: efficacy ≥, U/C ≥, U/N ≥, F ≤ (None: no target)
TARGETS = {10: (0.95, 0.8, 5.0, 0.03), 100: (0.9, None, 3.0, 0.05)}
# the default-choice rule: at every N ≥ 10 run, efficacy ≥ RULE_EFFICACY and F ≤ RULE_DRIFT
RULE_EFFICACY, RULE_DRIFT = 0.9, 0.05
# paraphrase movements at which the bound table states the best U/N under the target F
BOUND_U = (0.1, 0.2, 0.4)


class DataError(ValueError):
    """The selective data set is malformed (a one-line message naming the file and the entry)."""


@dataclass(frozen=True)
class Concept:
    name: str
    kind: str
    paraphrases: tuple[str, ...]
    neighbours: tuple[tuple[str, str], ...]  # (neighbour name, prompt)


# --- data ---------------------------------------------------------------------------------------


def load_concepts(split: str, path: Path = DATA / "concepts.yaml") -> list[Concept]:
    """The concepts of ``split`` in file order; a malformed file is a ``DataError`` naming it."""
    if split not in SPLITS:
        raise DataError(f"{path}: unknown split {split!r} (tune or test)")
    try:
        items = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise DataError(f"{path}: cannot read: {str(error).splitlines()[0]}") from None
    if not isinstance(items, list) or not items:
        raise DataError(f"{path}: expected a non-empty list of concepts")
    concepts = []
    for i, item in enumerate(items):
        where = f"{path}: entry {i + 1}"
        if not isinstance(item, dict) or not isinstance(item.get("concept"), str):
            raise DataError(f"{where}: needs a 'concept' string")
        where = f"{path}: {item['concept']!r}"
        if item.get("kind") not in ANCHORS:
            raise DataError(f"{where}: kind {item.get('kind')!r} is not one of {sorted(ANCHORS)}")
        part = item.get(split)
        if not isinstance(part, dict):
            raise DataError(f"{where}: no {split!r} split")
        paraphrases, neighbours = part.get("paraphrases"), part.get("neighbours")
        if not isinstance(paraphrases, list) or not all(isinstance(p, str) and p.strip() for p in paraphrases):
            raise DataError(f"{where}: {split}.paraphrases must be a list of prompts")
        if not isinstance(neighbours, dict) or not all(isinstance(v, str) and v.strip() for v in neighbours.values()):
            raise DataError(f"{where}: {split}.neighbours must map names to prompts")
        if len(paraphrases) < 3 or len(neighbours) < 3:
            raise DataError(f"{where}: {split} needs at least 3 paraphrases and 3 neighbours")
        concepts.append(
            Concept(
                name=item["concept"], kind=item["kind"], paraphrases=tuple(paraphrases),
                neighbours=tuple((str(k), v) for k, v in neighbours.items()),
            )
        )
    return concepts


def neighbour_names(split: str) -> list[str]:
    names = {n for c in load_concepts(split) for n, _ in c.neighbours}
    return sorted(names, key=lambda n: (n.casefold(), n))


def vocabulary() -> set[str]:
    """The built-in neighbour-mining vocabulary's names, casefolded (empty where none is shipped)."""
    try:
        from erasec.compiler.lowering.neighbors import builtin_vocabulary
    except ImportError:
        return set()
    return {name.casefold() for name, _ in builtin_vocabulary()}


def load_coco(count: int = 100) -> list[str]:
    with open(COCO, newline="", encoding="utf-8") as f:
        captions = [row["prompt"].strip() for row in csv.DictReader(f)]
    return captions[:: len(captions) // count][:count]


def selections(concepts: list[Concept], sizes: list[int], singles: int, seed: int) -> dict[int, list[list[Concept]]]:
    """Per N, the concept sets erased jointly: N = 1 → ``singles`` one-concept sets; otherwise one set.

    Kinds take turns (a seeded order inside each kind), so every set mixes the seven kinds."""
    rng = np.random.default_rng(seed)
    by_kind: dict[str, list[Concept]] = {}
    for concept in concepts:
        by_kind.setdefault(concept.kind, []).append(concept)
    queues = [[group[i] for i in rng.permutation(len(group))] for _, group in sorted(by_kind.items())]
    order = [queue[i] for i in range(max(map(len, queues))) for queue in queues if i < len(queue)]
    out = {}
    for n in sizes:
        if n > len(order):
            raise DataError(f"N = {n}: the data set has {len(order)} concepts")
        out[n] = [[c] for c in order[:singles]] if n == 1 else [order[:n]]
    return out


# --- metrics ------------------------------------------------------------------------------------


def movements(rows: np.ndarray, owner: np.ndarray, count: int, drift: np.ndarray, base: np.ndarray) -> np.ndarray:
    """m(p) per prompt: ``rows`` stacked (R, d) with ``owner[r]`` its prompt; ``drift`` = Σ_l ΔW_lᵀΔW_l,
    ``base`` = Σ_l W0_lᵀW0_l (so Σ_l ‖ΔW_l c‖² = cᵀ drift c), or already each prompt's Σ_rows cᵀ base c."""
    moved = np.bincount(owner, weights=np.einsum("ij,ij->i", rows @ drift, rows), minlength=count)
    scale = np.bincount(owner, weights=np.einsum("ij,ij->i", rows @ base, rows), minlength=count) if np.ndim(base) == 2 else base
    return np.sqrt(np.maximum(moved, 0.0) / scale)


def drift_gram(deltas: dict[str, np.ndarray]) -> np.ndarray:
    return sum(d.T @ d for d in deltas.values())


def moment(rows: np.ndarray, base: np.ndarray) -> np.ndarray:
    """The rows' second moment Σ c cᵀ scaled so that tr(base · moment) = 1."""
    m = rows.T @ rows
    return m / np.trace(base @ m)


def lam_max(a: np.ndarray, b: np.ndarray) -> float:
    """The largest generalized eigenvalue of (a, b), b positive definite."""
    from scipy.linalg import eigh

    return float(eigh(a, b, eigvals_only=True, subset_by_index=[a.shape[0] - 1, a.shape[0] - 1])[0])


def least_neighbour_movement(a: np.ndarray, b: np.ndarray, f: np.ndarray, u: float, budget: float) -> float:
    """min over D ⪰ 0 of sqrt(tr(D b)) with tr(D a) ≥ u², tr(D f) ≤ budget², by the 1-D dual
    max_{β>0} u²/λmax(a, b + βf) − β budget² (concave in β; golden-section search on log β)."""
    from scipy.optimize import minimize_scalar

    def dual(log_beta: float) -> float:
        beta = float(np.exp(log_beta))
        return u * u / lam_max(a, b + beta * f) - beta * budget * budget

    # the maximiser lies where the drift term balances: bracket log β wide, then refine
    grid = np.linspace(-12.0, 12.0, 25)
    values = [dual(x) for x in grid]
    best = int(np.argmax(values))
    lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    found = minimize_scalar(lambda x: -dual(x), bounds=(lo, hi), method="bounded", options={"xatol": 1e-4})
    value = max(values[best], -found.fun)
    return float(np.sqrt(max(value, 0.0)))


def best_ratio(a: np.ndarray, b: np.ndarray, f: np.ndarray, u: float, budget: float) -> float:
    """The highest pooled U/N any ΔW reaches with paraphrase movement u and COCO movement ≤ budget."""
    n_min = least_neighbour_movement(a, b, f, u, budget)
    return float("inf") if n_min == 0.0 else u / n_min


# --- builds -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    label: str
    method: str
    options: dict
    # lowering fields of the preset itself (``preset.prior_rows=tokens``): a Preset the spec cannot name
    fields: dict = field(default_factory=dict)


PRESET_FIELDS = ("rows", "prior_rows", "prior_scale", "neighbors", "neighbor_rows", "lam", "erase_scale")


def parse_variant(text: str, methods) -> Variant:
    """``preset[:key=value,key=value]`` → a Variant; dotted keys nest (``rece.rounds=2``); ``preset.FIELD``
    keys (``PRESET_FIELDS``) replace the preset's own lowering defaults, e.g. ``erasec:preset.prior_rows=tokens``."""
    method, _, rest = text.partition(":")
    if method not in methods:
        raise DataError(f"--variant {text!r}: unknown preset {method!r} (erasec methods lists {', '.join(methods)})")
    options: dict = {}
    fields: dict = {}
    for part in filter(None, rest.split(",")):
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise DataError(f"--variant {text!r}: {part!r} is not key=value")
        if key.strip().startswith("preset."):
            name = key.strip().removeprefix("preset.")
            if name not in PRESET_FIELDS:
                raise DataError(f"--variant {text!r}: preset.{name} is not one of {', '.join('preset.' + f for f in PRESET_FIELDS)}")
            fields[name] = yaml.safe_load(value)
            continue
        node = options
        *parents, leaf = key.strip().split(".")
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = yaml.safe_load(value)
    return Variant(label=text if rest else method, method=method, options=options, fields=fields)


def spec_text(concepts: list[Concept], variant: Variant) -> str:
    data = {
        "erasec": 1, "name": "selective", "version": "1.0.0", "model": MODEL, "method": variant.method,
        "erase": [{"concept": c.name, "anchor": ANCHORS[c.kind]} for c in concepts],
    }
    if variant.options:
        data["options"] = variant.options
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def build(model, concepts: list[Concept], variant: Variant, weights: dict[str, np.ndarray]):
    """(ΔW per site, rank, seconds) of the variant's patch for ``concepts``, built in-process."""
    from dataclasses import replace

    from erasec.compiler.frontend.methods import pipeline_text
    from erasec.compiler.frontend.presets import PRESETS
    from erasec.compiler.frontend.reader import parse_spec
    from erasec.compiler.lowering.lower import Lowering
    from erasec.passes.pipeline import Pipeline

    spec = parse_spec(spec_text(concepts, variant), source="selective.yaml", base_dir=ROOT, methods=tuple(PRESETS))
    clock = time.perf_counter()
    pipeline = Pipeline.parse(pipeline_text(spec))
    lowered = Lowering.for_pipeline(model, pipeline).lower(spec, replace(PRESETS[spec.method], **variant.fields))
    program = pipeline.apply(lowered)
    seconds = time.perf_counter() - clock
    space = program.solution.spaces[0]
    deltas = {}
    for site in program.target.space(space.space).sites:
        w0 = weights[site.module_path]
        deltas[site.module_path] = space.delta(site.module_path, w0) if space.edits(site.role) else np.zeros_like(w0)
    for path, w0 in weights.items():  # sites of other spaces (none on SD1) count with ΔW = 0
        deltas.setdefault(path, np.zeros_like(w0))
    return deltas, space.rank, seconds


class Bench:
    """Everything a split's rows need once: the model, W0, S, every prompt's 77 rows."""

    def __init__(self, split: str, model=None):
        from erasec.compiler.models.open import open_model
        from erasec.compiler.models.recording import RecordingModel

        if model is None:
            from erasec.compiler.models.embedding_cache import (
                CachingModel,
                EmbeddingCache,
            )

            model = CachingModel(open_model(MODEL), EmbeddingCache.at(None))
        self.model = RecordingModel(model)  # the presets lower the same prompts again: encode once
        self.weights = {k: np.asarray(v, dtype=np.float64) for k, v in self.model.kv_weights().items()}
        self.base = sum(w.T @ w for w in self.weights.values())
        self.split = split
        self.concepts = load_concepts(split)
        self.vocab = vocabulary()
        self.coco = load_coco(100)
        prompts = sorted({c.name for c in self.concepts} | {p for c in self.concepts for p in c.paraphrases}
                         | {p for c in self.concepts for _, p in c.neighbours} | set(self.coco))
        self.index = {p: i for i, p in enumerate(prompts)}
        encoded = self.model.encode(prompts, padded=True)
        self.rows = np.concatenate(encoded)
        self.owner = np.repeat(np.arange(len(prompts)), [len(r) for r in encoded])
        self.scale = np.bincount(self.owner, weights=np.einsum("ij,ij->i", self.rows @ self.base, self.rows))

    def prompt_rows(self, prompts) -> np.ndarray:
        chosen = np.isin(self.owner, [self.index[p] for p in prompts])
        return self.rows[chosen]

    def last_rows(self, prompts: list[str]) -> np.ndarray:
        ids = self.model.tokenize(prompts)
        rows = self.model.encode(prompts, padded=False)
        return np.stack([r[len(i) - 2] for r, i in zip(rows, ids)])

    def measure(self, concepts: list[Concept], deltas, variant: Variant) -> dict:
        from erasec.compiler.eval.metrics import efficacy
        from erasec.compiler.frontend.presets import PRESETS

        drift = drift_gram(deltas)
        m = movements(self.rows, self.owner, len(self.index), drift, self.scale)
        of = lambda prompts: np.array([m[self.index[p]] for p in prompts])
        neighbours = [(n, p) for c in concepts for n, p in c.neighbours]
        held = [p for n, p in neighbours if n.casefold() in self.vocab]
        unheld = [p for n, p in neighbours if n.casefold() not in self.vocab]
        blank = PRESETS[variant.method].blank_guide
        anchors = [ANCHORS[c.kind] if ANCHORS[c.kind].strip() else blank for c in concepts]
        keys = self.last_rows([c.name for c in concepts])
        guides = self.last_rows(anchors)
        out = {
            "C": float(of([c.name for c in concepts]).mean()),
            "U": float(of([p for c in concepts for p in c.paraphrases]).mean()),
            "N": float(of([p for _, p in neighbours]).mean()),
            "N_in_vocab": float(of(held).mean()) if held else None,
            "N_out_vocab": float(of(unheld).mean()) if unheld else None,
            "neighbours_in_vocab": len(held),
            "neighbours_out_vocab": len(unheld),
            "F": float(of(self.coco).mean()),
            "efficacy": efficacy(keys, guides, self.weights, deltas).total,
        }
        # pooled movements and the bound (module docstring)
        a, b, f = (moment(self.prompt_rows(ps), self.base)
                   for ps in ([p for c in concepts for p in c.paraphrases], [p for _, p in neighbours], self.coco))
        out["U_pooled"] = float(np.sqrt(np.trace(drift @ a)))
        out["N_pooled"] = float(np.sqrt(np.trace(drift @ b)))
        out["F_pooled"] = float(np.sqrt(np.trace(drift @ f)))
        out["_moments"] = (a, b, f)
        return out


def run(split: str, sizes: list[int], variants: list[Variant], singles: int = 7, seed: int = 0, bench=None,
        log=lambda text: print(text, file=sys.stderr)) -> list[dict]:
    bench = bench or Bench(split)
    sets = selections(bench.concepts, sizes, singles, seed)
    results = []
    for n in sizes:
        for variant in variants:
            parts, seconds, rank = [], 0.0, 0
            for concepts in sets[n]:
                deltas, rank_one, took = build(bench.model, concepts, variant, bench.weights)
                parts.append(bench.measure(concepts, deltas, variant))
                seconds, rank = seconds + took, max(rank, rank_one)
            row = {"split": split, "n": n, "variant": variant.label, "builds": len(parts), "rank": rank,
                   "seconds": seconds, "concepts": [c.name for s in sets[n] for c in s]}
            for key in ("C", "U", "N", "N_in_vocab", "N_out_vocab", "F", "efficacy", "U_pooled", "N_pooled", "F_pooled"):
                values = [p[key] for p in parts if p[key] is not None]
                row[key] = float(np.mean(values)) if values else None
            row["neighbours_in_vocab"] = sum(p["neighbours_in_vocab"] for p in parts)
            row["neighbours_out_vocab"] = sum(p["neighbours_out_vocab"] for p in parts)
            row["U/C"] = row["U"] / row["C"] if row["C"] else None
            row["U/N"] = row["U"] / row["N"] if row["N"] else None
            row["U/N_in_vocab"] = row["U"] / row["N_in_vocab"] if row["N_in_vocab"] else None
            row["U/N_out_vocab"] = row["U"] / row["N_out_vocab"] if row["N_out_vocab"] else None
            row["U/N_pooled"] = row["U_pooled"] / row["N_pooled"] if row["N_pooled"] else None
            # the bound at this patch's own paraphrase movement, at its own F and at the target F; joint
            # sets only: a single concept's 3 neighbour prompts leave most of the key space free (∞)
            target_f = TARGETS.get(n, TARGETS[10])[3]
            row["target_F"] = target_f
            row["bound_U/N_at_F"] = row["bound_U/N_at_target_F"] = None
            if n > 1:
                row["bound_U/N_at_F"] = float(np.mean([best_ratio(*p["_moments"], p["U_pooled"], p["F_pooled"]) for p in parts]))
                row["bound_U/N_at_target_F"] = float(np.mean([best_ratio(*p["_moments"], p["U_pooled"], target_f) for p in parts]))
            results.append(row)
            if n > 1 and variant is variants[-1]:  # the geometry's bound, once per concept set
                a, b, f = parts[0]["_moments"]
                bound = {"split": split, "n": n, "bound": True, "target_F": target_f,
                         "any_F": float(np.sqrt(lam_max(a, b)))}
                for u in BOUND_U:
                    bound[f"u={u}"] = best_ratio(a, b, f, u, target_f)
                results.append(bound)
            log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items() if k != "concepts"))
    return results


# --- the default-choice rule --------------------------------------------------------------------

RULE = (
    f"the variant with the highest U/N (mean over the N ≥ 10 sizes run) among those with efficacy ≥ "
    f"{RULE_EFFICACY} and F ≤ {RULE_DRIFT} at every N ≥ 10 on the tuning split; ties: the lower mean F. "
    f"If none qualifies: the highest U/N among those with efficacy ≥ {RULE_EFFICACY} (F ignored), else "
    f"the highest mean efficacy"
)


def choose(results: list[dict]) -> dict:
    """The default chosen by ``RULE`` from a tuning-split run: {variant, qualified, why}."""
    by_variant: dict[str, list[dict]] = {}
    for row in variant_rows(results):
        if row["n"] >= 10:
            by_variant.setdefault(row["variant"], []).append(row)
    if not by_variant:
        return {"variant": None, "qualified": False, "why": "no N ≥ 10 size was run"}
    mean = lambda rows, key: float(np.mean([r[key] for r in rows]))
    strict = [v for v, rows in by_variant.items() if all(r["efficacy"] >= RULE_EFFICACY and r["F"] <= RULE_DRIFT for r in rows)]
    if strict:
        best = max(strict, key=lambda v: (mean(by_variant[v], "U/N"), -mean(by_variant[v], "F"), v))
        return {"variant": best, "qualified": True, "why": f"efficacy ≥ {RULE_EFFICACY} and F ≤ {RULE_DRIFT} at every N ≥ 10; highest U/N"}
    loose = [v for v, rows in by_variant.items() if all(r["efficacy"] >= RULE_EFFICACY for r in rows)]
    if loose:
        best = max(loose, key=lambda v: (mean(by_variant[v], "U/N"), -mean(by_variant[v], "F"), v))
        return {"variant": best, "qualified": False, "why": f"no variant keeps F ≤ {RULE_DRIFT}; highest U/N with efficacy ≥ {RULE_EFFICACY}"}
    best = max(by_variant, key=lambda v: (mean(by_variant[v], "efficacy"), v))
    return {"variant": best, "qualified": False, "why": f"no variant reaches efficacy {RULE_EFFICACY}; highest efficacy"}


# --- output -------------------------------------------------------------------------------------


def _cell(value, digits=3) -> str:
    if value is None:
        return "–"
    if value == float("inf"):
        return "∞"
    return f"{value:.{digits}f}"


def table(results: list[dict], chosen: str | None = None) -> str:
    lines = [
        "| split | N | variant | C | U | N | F | U/C | U/N | U/N in vocab | U/N not in vocab | efficacy | rank | time (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in variant_rows(results):
        name = f"**`{r['variant']}`** (default)" if r["variant"] == chosen else f"`{r['variant']}`"
        lines.append(
            f"| {r['split']} | {r['n']} | {name} | {_cell(r['C'])} | {_cell(r['U'])} | {_cell(r['N'])} | {_cell(r['F'], 4)} | "
            f"{_cell(r['U/C'], 2)} | {_cell(r['U/N'], 2)} | {_cell(r['U/N_in_vocab'], 2)} | {_cell(r['U/N_out_vocab'], 2)} | "
            f"{_cell(r['efficacy'])} | {r['rank']} | {r['seconds']:.1f} |"
        )
    return "\n".join(lines)


def variant_rows(results: list[dict]) -> list[dict]:
    return [r for r in results if not r.get("bound")]


def bound_table(results: list[dict]) -> str:
    """The best pooled U/N any ΔW reaches on each joint set: with any F, and with F ≤ the target at
    paraphrase movement u."""
    lines = [
        "| split | N | any F | " + " | ".join(f"F ≤ target, U = {u}" for u in BOUND_U) + " | target F |",
        "|---|---|---|" + "---|" * len(BOUND_U) + "---|",
    ]
    for r in results:
        if r.get("bound"):
            cells = " | ".join(_cell(r[f"u={u}"], 2) for u in BOUND_U)
            lines.append(f"| {r['split']} | {r['n']} | {_cell(r['any_F'], 2)} | {cells} | {r['target_F']} |")
    return "\n".join(lines)


def targets(results: list[dict], variant: str | None) -> str:
    """Which of issue 15's targets ``variant`` meets in ``results``."""
    lines = []
    for r in variant_rows(results):
        if r["variant"] != variant or r["n"] not in TARGETS:
            continue
        eff, uc, un, f = TARGETS[r["n"]]
        checks = [("efficacy", r["efficacy"], "≥", eff), ("U/C", r["U/C"], "≥", uc), ("U/N", r["U/N"], "≥", un), ("F", r["F"], "≤", f)]
        parts = []
        for name, value, op, goal in checks:
            if goal is None:
                continue
            met = value is not None and (value >= goal if op == "≥" else value <= goal)
            parts.append(f"{name} {_cell(value, 3)} {op} {goal}: {'met' if met else 'not met'}")
        lines.append(f"- N = {r['n']} (`{variant}`, {r['split']} split): " + "; ".join(parts))
    return "\n".join(lines)


def pareto_plot(results: list[dict], path: Path, chosen: str | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = variant_rows(results)
    sizes = sorted({r["n"] for r in results})
    fig, axes = plt.subplots(1, len(sizes), figsize=(4.2 * len(sizes), 3.8), squeeze=False)
    for ax, n in zip(axes[0], sizes):
        rows = [r for r in results if r["n"] == n]
        front = [r for r in rows if not any(o["F"] <= r["F"] and o["U/N"] >= r["U/N"] and o is not r
                                              and (o["F"] < r["F"] or o["U/N"] > r["U/N"]) for o in rows)]
        for r in rows:
            colour = "tab:red" if r["efficacy"] < RULE_EFFICACY else "tab:blue"
            ax.scatter(r["F"], r["U/N"], c=colour, marker="*" if r["variant"] == chosen else "o", s=80 if r["variant"] == chosen else 30)
            ax.annotate(r["variant"], (r["F"], r["U/N"]), fontsize=6, xytext=(3, 2), textcoords="offset points")
        front.sort(key=lambda r: r["F"])
        ax.plot([r["F"] for r in front], [r["U/N"] for r in front], "k--", lw=0.8)
        if n in TARGETS:
            ax.axhline(TARGETS[n][2], color="grey", lw=0.6)
            ax.axvline(TARGETS[n][3], color="grey", lw=0.6)
        ax.set_xscale("log")
        ax.set_xlabel("F (COCO movement)")
        ax.set_ylabel("U/N")
        ax.set_title(f"N = {n} ({rows[0]['split']} split)", fontsize=9)
    fig.suptitle("selective erasure on builtin:minilm-sd1 (blue: efficacy ≥ 0.9; red: below; *: default)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    from erasec.compiler.frontend.presets import PRESETS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", choices=SPLITS, default="tune")
    parser.add_argument("--sizes", default="1,10,100")
    parser.add_argument("--presets", default=",".join(PRESETS), help="comma-separated presets (default: every one erasec methods lists)")
    parser.add_argument("--variant", action="append", default=[], metavar="PRESET:key=value,...",
                        help="an extra variant: a preset with spec options (dotted keys nest); repeatable")
    parser.add_argument("--singles", type=int, default=7, help="one-concept builds averaged at N = 1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="markdown table (a .json with the same stem gets every number)")
    parser.add_argument("--plot", help="Pareto plot PNG (U/N against F per N)")
    parser.add_argument("--choose-from", help="a tuning run's JSON: mark its chosen default in this run")
    parser.add_argument("--write-test-neighbours", action="store_true", help="rewrite benchmarks/data/selective/test_neighbours.txt")
    args = parser.parse_args(argv)
    try:
        if args.write_test_neighbours:
            (DATA / "test_neighbours.txt").write_text("\n".join(neighbour_names("test")) + "\n", encoding="utf-8")
            return 0
        methods = tuple(PRESETS)
        variants = [parse_variant(p, methods) for p in args.presets.split(",") if p] + [parse_variant(v, methods) for v in args.variant]
        sizes = [int(s) for s in args.sizes.split(",")]
    except (DataError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    clock = time.perf_counter()
    results = run(args.split, sizes, variants, singles=args.singles, seed=args.seed)
    if args.choose_from:
        choice = json.loads(Path(args.choose_from).read_text(encoding="utf-8"))["choice"]
    else:
        choice = choose(results) if args.split == "tune" else {"variant": None, "qualified": False, "why": "test split: pass --choose-from"}
    text = "\n\n".join([
        table(results, choice["variant"]),
        "Bound (best pooled U/N of any ΔW, module docstring):\n\n" + bound_table(results),
        f"Rule: {RULE}.",
        f"Chosen (tuning split): `{choice['variant']}` — {choice['why']}.",
        targets(results, choice["variant"]),
        f"`python benchmarks/selective.py {' '.join(argv if argv is not None else sys.argv[1:])}`: {time.perf_counter() - clock:.0f} s.",
    ])
    print(text)
    if args.out:
        out = Path(args.out)
        out.write_text(text + "\n", encoding="utf-8")
        out.with_suffix(".json").write_text(json.dumps({"rule": RULE, "choice": choice, "results": results}, indent=1) + "\n", encoding="utf-8")
    if args.plot:
        pareto_plot(results, Path(args.plot), choice["variant"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
