"""``erasec build-many``: compile every spec in a folder, in parallel processes or on a Ray cluster.

Each spec is one independent ``build`` (docs/scaling.md): a worker process opens its model, lowers,
solves and writes ``<out>/<spec stem>.safetensors``. Workers share the embedding cache on disk
(compiler/models/embedding_cache.py), so specs over one text encoder encode each prompt once between them
(its writes are atomic renames). A failing spec is reported and does not stop the others.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .errors import BuildError
from .extras import require_extra

SPEC_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True, slots=True, kw_only=True)
class ManyResult:
    spec: str
    output: str
    ok: bool
    seconds: float
    error: str | None = None
    summary: dict | None = None

    def as_dict(self) -> dict:
        return {"spec": self.spec, "output": self.output, "ok": self.ok, "seconds": round(self.seconds, 3),
                "error": self.error, "summary": self.summary}


def find_specs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise BuildError(f"{folder}: not a folder of specs; give a folder holding *.yaml files")
    specs = sorted(p for p in folder.iterdir() if p.suffix in SPEC_SUFFIXES and p.is_file())
    if not specs:
        raise BuildError(f"{folder}: holds no *.yaml or *.yml specs")
    return specs


def cores() -> int:
    """The CPUs this process may run on (cgroup/affinity aware where the OS says)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


Encode = tuple[str, str, "int | None"]  # --device, --encoder-dtype, --encode-batch (models/placement.py)
_ENCODE_DEFAULT: Encode = ("auto", "fp32", None)


def build_one(
    spec: str, output: str, model: str | None, cache: bool, threads: int, force: bool = False, allow_outside_spec: bool = False,
    encode: Encode = _ENCODE_DEFAULT,
) -> ManyResult:
    """One build in this process; an ``ErasecError`` becomes a failed result, not an exception."""
    from erasec.ir.errors import ErasecError

    from .build import BuildOptions, build

    clock = time.perf_counter()
    if threads:
        import torch

        torch.set_num_threads(threads)
    try:
        device, dtype, batch = encode
        options = BuildOptions(model=model, cache=cache, force=force, allow_outside_spec=allow_outside_spec,
                               device=device, encoder_dtype=dtype, encode_batch=batch)
        result = build(spec, output, options)
    except ErasecError as error:
        return ManyResult(spec=spec, output=output, ok=False, seconds=time.perf_counter() - clock, error=str(error))
    summary = result.as_dict()
    summary.pop("scores", None), summary.pop("pooled_scores", None)
    for expert in summary.get("experts", ()):  # Wan 2.2: transformer_2's patch beside the spec's
        expert.pop("scores", None), expert.pop("pooled_scores", None)
    return ManyResult(spec=spec, output=output, ok=True, seconds=time.perf_counter() - clock, summary=summary)


def build_many(
    folder: Path,
    out: Path,
    *,
    jobs: int | None = None,
    model: str | None = None,
    cache: bool = True,
    ray_address: str | None = None,
    force: bool = False,
    allow_outside_spec: bool = False,
    encode: Encode = _ENCODE_DEFAULT,
) -> list[ManyResult]:
    """Build every spec in ``folder`` into ``out``; results in the specs' (sorted) order.

    Checked before any build: ``jobs``, the output folder (patches/outputs.py) and that no two specs
    share an output name; each spec's own output is checked by its build, before its work.
    ``encode``: where the encoders run; on CUDA the builds share one GPU, so without ``jobs`` they
    run one after another in this process (each worker would hold its own copy of the encoders),
    and with ``jobs`` in spawned processes (CUDA does not survive a fork)."""
    from erasec.patches.outputs import check_output_folder

    if jobs is not None and jobs < 1:
        raise BuildError(f"-j/--jobs: {jobs} is not a number of processes; give 1 or more (or leave it out)")
    specs = find_specs(Path(folder))
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BuildError(f"{out}: is a file; give a folder for the patches")
    check_output_folder(out)
    by_output: dict[str, Path] = {}
    for spec in specs:
        other = by_output.setdefault(spec.stem, spec)
        if other != spec:
            raise BuildError(
                f"{other} and {spec}: both would write {out / (spec.stem + '.safetensors')}; rename one of them"
            )
    from .models.placement import EncodeOptions

    device, dtype, batch = encode
    kind = EncodeOptions(device=device, dtype=dtype, batch=batch).resolve().kind  # refuses cuda without a GPU
    tasks = [(str(spec), str(out / f"{spec.stem}.safetensors"), model, cache) for spec in specs]
    if ray_address is not None:
        return _on_ray(tasks, ray_address, force, allow_outside_spec, encode)
    workers = max(1, min(jobs or (1 if kind == "cuda" else cores()), len(tasks)))
    threads = max(1, cores() // workers)
    if workers == 1:
        return [build_one(*task, threads, force, allow_outside_spec, encode) for task in tasks]
    context = multiprocessing.get_context("spawn") if kind == "cuda" else None
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = [pool.submit(build_one, *task, threads, force, allow_outside_spec, encode) for task in tasks]
        return [future.result() for future in futures]


def _on_ray(
    tasks: list[tuple], address: str, force: bool = False, allow_outside_spec: bool = False, encode: Encode = _ENCODE_DEFAULT
) -> list[ManyResult]:
    """The same builds as Ray tasks (one CPU each by default); ``address`` as ``ray.init`` takes it
    (``auto``, ``ray://host:10001``, or ``local`` for a cluster started in this process)."""
    require_extra("cluster", "--ray")
    import ray

    ray.init(address=None if address == "local" else address, ignore_reinit_error=True)
    remote = ray.remote(build_one)
    return ray.get([remote.remote(*task, 0, force, allow_outside_spec, encode) for task in tasks])
