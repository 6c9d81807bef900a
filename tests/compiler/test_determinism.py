"""A patch's bytes do not depend on the thread count or on what the embedding cache held (issue 16
item 9): ``build`` at 1 and 2 threads, ``build-many -j 2`` (one thread per worker) filling a cache
concurrently, and a 2-thread build reading that cache all write the same file.

Before the fix the quickstart's float64 ``erasec.shared`` factors differed at 1e-14 between 1 and 2
threads (OpenBLAS splits a Cholesky solve's sums by thread), and rows encoded in other company or
at another thread count differed at ~3e-7 (MKL's small GEMMs), so ``publish`` of a rebuild refused
it as "different bytes". The builds run in subprocesses, as a user or a worker runs them, with
``OMP_NUM_THREADS`` set before torch and OpenBLAS load.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
_CLI = "import sys; from erasec.compiler.cli import main; sys.exit(main())"


def _erasec(args: list[str], *, threads: int, cache: Path) -> subprocess.Popen:
    """The CLI in a fresh process with ``threads`` threads and ``cache`` as the erasec cache folder."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), ERASEC_CACHE_DIR=str(cache))
    return subprocess.Popen([sys.executable, "-c", _CLI, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait(*processes: subprocess.Popen) -> list[str]:
    outputs = []
    for process in processes:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-2000:]
        outputs.append(out)
    return outputs


def test_the_bytes_do_not_depend_on_the_thread_count_or_the_cache_history(tmp_path, minilm_sd1_path):
    specs = tmp_path / "specs"
    specs.mkdir()
    shutil.copy(EXAMPLES / "quickstart.yaml", specs / "quickstart.yaml")
    shutil.copy(EXAMPLES / "preserve-artists.txt", specs / "preserve-artists.txt")
    text = (EXAMPLES / "quickstart.yaml").read_text()  # a second spec sharing most prompts, for build-many
    (specs / "monet.yaml").write_text(text.replace("name: no-van-gogh", "name: no-monet").replace("Van Gogh", "Claude Monet", 1))
    spec = str(specs / "quickstart.yaml")
    model = ["--model", str(minilm_sd1_path)]  # the built model, not rebuilt in each fresh cache folder

    _wait(
        _erasec(["build", spec, "-o", str(tmp_path / "one.safetensors"), *model, "--no-cache"], threads=1, cache=tmp_path / "c1"),
        _erasec(["build", spec, "-o", str(tmp_path / "two.safetensors"), *model, "--no-cache"], threads=2, cache=tmp_path / "c2"),
    )
    reference = (tmp_path / "one.safetensors").read_bytes()
    assert (tmp_path / "two.safetensors").read_bytes() == reference

    # build-many -j 2: two workers of one thread fill one cache together; a 2-thread build reads it
    cache = tmp_path / "cache"
    _wait(_erasec(["build-many", str(specs), "-o", str(tmp_path / "many"), "-j", "2", *model], threads=2, cache=cache))
    assert (tmp_path / "many" / "quickstart.safetensors").read_bytes() == reference
    (summary,) = _wait(_erasec(["build", spec, "-o", str(tmp_path / "warm.safetensors"), *model, "--json"], threads=2, cache=cache))
    assert json.loads(summary)["prompts"]["encoded"] == 0  # every row read from the workers' cache
    assert (tmp_path / "warm.safetensors").read_bytes() == reference



def test_a_prompts_rows_do_not_depend_on_its_company_or_the_thread_count(tiny_sd1_path):
    """What a cache holds was encoded in some earlier build's company, at some thread count: a row must
    be the same bits either way. Batched fp32 passes rounded a row differently with the batch's size
    and padded width (35 of 40 COCO captions differed alone vs batched on tiny-sd1) and with the thread
    count (17 of 40 alone at 1 vs 2 threads); a build now encodes each prompt in a pass of its own on
    one torch thread."""
    import numpy as np
    import torch

    from erasec.compiler.models.embedding_cache import CachingModel
    from erasec.compiler.lowering.prompts import prior_prompts
    from erasec.compiler.models.open import open_model

    prompts = prior_prompts("coco")[:40]
    model = CachingModel(open_model(str(tiny_sd1_path)), None)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        together = model.encode(prompts, padded=False)
        torch.set_num_threads(1)
        alone = [model.encode([prompt], padded=False)[0] for prompt in prompts]
        halves = model.encode(prompts[::2], padded=False) + model.encode(prompts[1::2], padded=False)
    finally:
        torch.set_num_threads(threads)
    assert torch.get_num_threads() == threads
    assert all(np.array_equal(a, b) for a, b in zip(together, alone))
    assert all(np.array_equal(a, b) for a, b in zip(together[::2] + together[1::2], halves))


class _InPairs:
    """A model whose ``encode`` calls wait for each other two by two: passes that run at once."""

    def __init__(self, model) -> None:
        import threading

        self._model = model
        self._pair = threading.Barrier(2, timeout=60)  # one worker alone would wait here and fail
        self.threads: set[str] = set()

    def __getattr__(self, name: str):
        return getattr(self._model, name)

    def encode(self, prompts, *, padded: bool):
        import threading

        self.threads.add(threading.current_thread().name)
        self._pair.wait()
        return self._model.encode(prompts, padded=padded)


def test_passes_on_worker_threads_give_the_rows_of_one_thread(tmp_path):
    """Cold encoding runs its one-thread passes on as many Python threads as torch had threads, and
    collects them in order. An fp16 encoder computes in fp32 through a workspace its hooks point each
    running module at: two passes at once must run modules and workspaces of their own, or a pass
    reads the other's weights (issue 16 item 9). Each pair of passes here runs at once."""
    import numpy as np
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from erasec.compiler.models.builtin import builtin_model_path
    from erasec.compiler.models.embedding_cache import CachingModel
    from erasec.compiler.lowering.prompts import prior_prompts
    from erasec.compiler.models.open import open_model

    source = builtin_model_path("tiny-sdxl.safetensors")
    with safe_open(str(source), framework="pt") as handle:
        metadata = handle.metadata()
    half = tmp_path / "half.safetensors"
    save_file({k: v.to(torch.float16) for k, v in load_file(str(source)).items()}, str(half), metadata=metadata)
    prompts = prior_prompts("coco")[:40]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = CachingModel(open_model(str(half)), None).encode(prompts, padded=False)
        torch.set_num_threads(2)
        paired = _InPairs(open_model(str(half)))
        together = CachingModel(paired, None).encode(prompts, padded=False)
    finally:
        torch.set_num_threads(threads)
    assert len(paired.threads) == 2 and "MainThread" not in paired.threads
    assert all(np.array_equal(a, b) for a, b in zip(alone, together))
