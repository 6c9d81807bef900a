"""What ``--encoder-dtype bf16`` does to a patch: the same spec built with the text encoder in fp32
and in bf16 (on the CPU, one prompt a pass), both scored by ``erasec eval`` with fp32 rows.

    python benchmarks/encoder_dtype.py                       # the quickstart on minilm-sd1, tiny-sd1, tiny-flux
    python benchmarks/encoder_dtype.py --models builtin:minilm-sd1

Prints, per model: ΔW's relative difference (Frobenius, worst edited layer) and the patch's
efficacy, generality and specificity (docs/evaluation.md) measured on fp32 rows, for each dtype —
what a user who builds in bf16 on a GPU gets, measured where the rows' only difference is the
encoder's precision. Nothing is written to the docs: copy the lines, with the machine, by hand.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
MODELS = ("builtin:minilm-sd1", "builtin:tiny-sd1", "builtin:tiny-flux")


def _delta_difference(first: Path, second: Path) -> float:
    import numpy as np

    from erasec.patches.read import read_patch

    a, b = read_patch(first), read_patch(second)
    return max(
        float(np.linalg.norm(b.layer_delta(layer) - a.layer_delta(layer)) / np.linalg.norm(a.layer_delta(layer)))
        for layer in a.layers()
    )


def _scores(patch: Path, model: str) -> dict:
    from erasec.compiler.eval.results import EvalOptions
    from erasec.compiler.eval.run import evaluate_patch

    result = evaluate_patch(str(patch), model, EvalOptions(device="cpu", interference_max=0)).as_dict()
    concept = result["concepts"][0]
    return {
        "efficacy": concept["efficacy"]["total"],
        "generality": concept["generality"]["total"] if concept.get("generality") else float("nan"),
        **{f"specificity {group}": value["total"] for group, value in sorted(result["specificity"].items())},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=ROOT / "examples" / "quickstart.yaml")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    args = parser.parse_args()

    from erasec.compiler.build import BuildOptions, build

    with tempfile.TemporaryDirectory() as scratch:
        for model in args.models:
            patches, lines = {}, []
            for dtype in ("fp32", "bf16"):
                out = Path(scratch) / f"{model.replace(':', '_')}-{dtype}.safetensors"
                options = BuildOptions(model=model, device="cpu", encoder_dtype=dtype, cache=False)
                build(args.spec, out, options)
                patches[dtype] = out
                scores = _scores(out, model)
                lines.append(f"  {dtype}: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
            print(f"{model} ({args.spec.name}): ΔW bf16 vs fp32 {_delta_difference(patches['fp32'], patches['bf16']):.2e} "
                  "relative (worst layer); scored on fp32 rows:")
            print("\n".join(lines))


if __name__ == "__main__":
    main()
