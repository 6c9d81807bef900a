"""What a DiT patch built for one T5 padding does under another (issue 14 deliverable 2).

FLUX runs T5 without an attention mask, so every padding row carries the prompt and the rows of one
prompt differ with the padding: a patch is solved for the rows of its ``options.sequence_length``
(recorded in the patch, ``erasec.base.sequence_length``). Runtimes pad differently — diffusers'
FLUX-dev 512, FLUX-schnell and SD3 256, ComfyUI at least 256 (so 256 for any prompt under 256
tokens). This builds one spec at each padding and measures every patch at every padding with
``erasec eval``'s own code (``evaluate_patch``, ``EvalOptions.sequence_length`` = ``erasec eval
--sequence-length``), on the text pathway: efficacy of the erased concepts on every row the runtime
feeds, generality on held-out paraphrases, and how far unrelated COCO captions move (1 − specificity).

Models: ``builtin:minilm-flux`` (pretrained MiniLM rows in FLUX's T5 slot: meaning, but MiniLM was
trained with masks, so long padding drowns the prompt — docs/models.md) and ``builtin:tiny-flux``
(random T5: structure only, no meaning).

    python benchmarks/dit_padding.py                      # markdown table (docs/models.md)
    python benchmarks/dit_padding.py --json out.json      # and the numbers
    python benchmarks/dit_padding.py --models builtin:tiny-flux --paddings 256 512
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

CONCEPTS = (("Van Gogh", "a painter"), ("Claude Monet", "a painter"), ("Greg Rutkowski", "an artist"))


def _spec(model: str, padding: int, method: str) -> dict:
    return {
        "erasec": 1, "name": f"padding-{padding}", "version": "1.0.0", "model": model, "method": method,
        "erase": [{"concept": concept, "anchor": anchor} for concept, anchor in CONCEPTS],
        "preserve": ["a photo of a cat", "a bowl of fruit on a table"],
        "options": {"sequence_length": padding},
        "output": {"format": "peft"},
    }


def measure(models: list[str], paddings: list[int], method: str, max_unrelated: int) -> list[dict]:
    from erasec.compiler.build import BuildOptions, build_spec
    from erasec.compiler.eval.results import EvalOptions
    from erasec.compiler.eval.run import evaluate_patch
    from erasec.compiler.frontend.from_patch import spec_from_dict

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for model in models:
            for built in paddings:
                patch = Path(folder) / f"{model.replace(':', '_')}-{built}.safetensors"
                clock = time.perf_counter()
                build_spec(spec_from_dict(_spec(model, built, method), source="dit_padding"), patch, BuildOptions())
                seconds = time.perf_counter() - clock
                for measured in paddings:
                    options = EvalOptions(suites=("artists", "coco"), max_unrelated=max_unrelated, interference_max=0,
                                          sequence_length=measured)
                    result = evaluate_patch(str(patch), model, options)
                    concepts = result.concepts
                    general = [c.generality.total for c in concepts if c.generality is not None]
                    kept = dict((group, score.total) for group, score in result.specificity)
                    rows.append({
                        "model": model, "built_at": built, "measured_at": measured, "build_seconds": round(seconds, 1),
                        "efficacy": round(sum(c.efficacy.total for c in concepts) / len(concepts), 4),
                        "generality": round(sum(general) / len(general), 4) if general else None,
                        "coco_moved": round(1.0 - kept["coco"], 4),
                    })
    return rows


def table(rows: list[dict], method: str) -> str:
    lines = [
        f"| model | built at | measured at | efficacy | generality | COCO moved |  (method {method}, "
        f"{len(CONCEPTS)} artists)",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        same = " (own)" if row["built_at"] == row["measured_at"] else ""
        general = "—" if row["generality"] is None else f"{row['generality']:.3f}"
        lines.append(
            f"| `{row['model']}` | {row['built_at']} | {row['measured_at']}{same} | {row['efficacy']:.3f} | "
            f"{general} | {row['coco_moved']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["builtin:minilm-flux", "builtin:tiny-flux"])
    parser.add_argument("--paddings", nargs="+", type=int, default=[77, 256, 512])
    parser.add_argument("--method", default="erasec")
    parser.add_argument("--max-unrelated", type=int, default=100)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows = measure(args.models, args.paddings, args.method, args.max_unrelated)
    print(table(rows, args.method))
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
