"""What every ``erasec`` command shares: the exit-code table, start-up settings, the one-line error,
output helpers and the build summary.

Exit codes: 0 success; 2 anything the user can fix (spec, flags, pipeline, options, model or
output path, a system the numbers refuse); 1 when a checking command answers no. Anything else is
a bug and shows its traceback. The commands live in ``cli/__init__.py`` (the group and build side),
``cli/patch.py`` and ``cli/onnx.py``; only these CLI modules print.
"""

from __future__ import annotations

import json
import os
import sys

import click

from erasec.ir.errors import ErasecError

EXIT_USER_ERROR = 2
EXIT_CHECK_FAILED = 1


def quiet_libraries() -> None:
    """transformers and diffusers draw progress bars on stderr while loading; a compiler's output
    should be its own summary. Set through their environment variables, so neither is imported
    here (a spec error exits before torch loads; docs/performance.md, start-up); a library that is
    already imported is told directly. diffusers reads no variable of its own for its bars
    ("Loading pipeline components", a pipeline's steps), so tqdm's ``TQDM_DISABLE``, read when tqdm
    is first imported, turns off every tqdm bar; erasec's own progress is click's, on a terminal."""
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    for name in ("diffusers.utils.logging", "transformers.utils.logging"):
        module = sys.modules.get(name)
        if module is not None:
            module.disable_progress_bar()
            module.set_verbosity_error()


def use_all_cores() -> None:
    """torch's intra-op threads = the CPUs this process may use (affinity/cgroup aware), set before
    torch is imported; an explicit OMP_NUM_THREADS wins."""
    from ..build_many import cores

    os.environ.setdefault("OMP_NUM_THREADS", str(cores()))
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def return_freed_memory() -> None:
    """Make glibc hand large freed blocks back to the OS.

    glibc raises its mmap threshold as blocks are freed (up to 32 MiB), after which tens-of-MB
    tensors come from the heap, where fragmentation keeps them resident: an SDXL build that reads
    its weights one at a time then holds about 1 GiB more than it uses (measured; docs/performance.md).
    A fixed 1 MiB threshold (``M_MMAP_THRESHOLD`` = -3) keeps the peak at what is live. No-op off glibc.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        if libc is not None and hasattr(libc, "mallopt"):
            libc.mallopt(-3, 1 << 20)
    except OSError:
        pass


def encoder_options(function):
    """``--device``, ``--encoder-dtype``, ``--encode-batch``: where and how the text encoders run
    (compiler/models/placement.py; docs/performance.md, "Builds on a GPU")."""
    from ..models.placement import DEVICES, ENCODER_DTYPES, GPU_BATCH

    for option in reversed((
        click.option("--device", default="auto", show_default=True, type=click.Choice(DEVICES),
                     help="where the text encoders run: auto is cuda when torch sees a GPU, else cpu (one prompt a "
                     "pass, byte-identical at any thread count)"),
        click.option("--encoder-dtype", default="fp32", show_default=True, type=click.Choice(ENCODER_DTYPES),
                     help="the encoders' precision; bf16 is faster on a GPU and moves the patch (docs/performance.md)"),
        click.option("--encode-batch", default=None, type=click.IntRange(min=1),
                     help=f"prompts per encoder pass (default: 1 on cpu, {GPU_BATCH} on cuda); more than 1 on cpu "
                     "runs the batched device path there"),
    )):
        function = option(function)
    return function


def json_option(function):
    return click.option("--json", "as_json", is_flag=True, help="print the result as JSON")(function)


def text_input_options(function):
    """``--text-encoder SLOT=FILE`` and ``--tokenizer SLOT=PATH``: a diffusion transformer's text encoders
    and tokenizers given apart from it (docs/models.md, "Single files and separate encoders")."""
    for option in reversed((
        click.option("--text-encoder", "text_encoders", multiple=True, callback=slot_paths, metavar="SLOT=FILE",
                     help="a diffusion transformer's text encoder given apart (t5, clip_l, clip_g; ComfyUI's files); "
                     "in build it overrides the spec's text_encoders"),
        click.option("--tokenizer", "tokenizers", multiple=True, callback=slot_paths, metavar="SLOT=PATH",
                     help="its tokenizer folder or tokenizer.json (a T5 file needs one); in build it overrides the spec's "
                     "tokenizers"),
    )):
        function = option(function)
    return function


def slot_paths(context, parameter, values) -> tuple[tuple[str, str | None], ...]:
    """``--text-encoder``/``--tokenizer`` values ``SLOT=PATH`` as (slot, path) pairs; a value
    without ``=`` has path None (``Spec.with_text_inputs`` refuses it in one line, as the slots)."""
    return tuple((slot.strip(), path if equals else None) for slot, equals, path in (v.partition("=") for v in values))


def fail(error: ErasecError) -> None:
    click.echo(f"erasec: error: {error}", err=True)
    sys.exit(EXIT_USER_ERROR)


def emit(data: dict, as_json: bool, text: str | None) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) if as_json else text)


def run_command(action, *, loads_models: bool = True):
    """Run ``action()``; a user-fixable ``ErasecError`` is one line on stderr and exit 2."""
    if loads_models:  # commands reading only patch files skip importing diffusers/transformers
        quiet_libraries()
    try:
        return action()
    except ErasecError as error:
        fail(error)


class NoBar:
    """Stands in for ``click.progressbar`` off a terminal and in --json mode."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n: int) -> None:
        pass


def human_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


# docs/models.md, "Which runtimes load a LoRA module on that layer"
POOLED_KOHYA_NOTE = (
    "kohya sd-scripts skips the pooled module (lora_unet_label_emb_0_0): there only the K/V edit applies; "
    "diffusers, ComfyUI and A1111/Forge load both (docs/models.md)"
)

_FORMAT_NAMES = {"kohya": "kohya LoRA", "peft": "PEFT/diffusers LoRA", "checkpoint": "merged checkpoint", "onnx": "ONNX graph"}


def _placement_words(device: dict | None) -> str:
    """`` on cuda (fp32, 32 a pass)`` for the device path; nothing for the CPU path (placement.py)."""
    if not device or device == {"kind": "cpu", "dtype": "fp32", "batch": 1}:
        return ""
    return f" on {device['kind']} ({device['dtype']}, {device['batch']} a pass)"


def build_summary(result) -> str:
    """The text ``erasec build`` and ``erasec compose`` print for a ``BuildResult``.

    Two row counts, labelled apart: the ``rows`` line counts the system as solved (after the passes
    merge duplicates, mine neighbours and add hard rows; SDXL's text and pooled key spaces together),
    the scores below count the spec's own rows in one key space each."""
    seconds = result.seconds
    pooled = getattr(result, "pooled_scores", None)
    solved = "as solved" + (" (text and pooled key spaces together)" if pooled is not None else "")
    lines = [
        f"built {result.output} ({human_size(result.size_bytes)}, {_FORMAT_NAMES.get(result.format, result.format)}, "
        f"{result.dtype})",
        f"  model    {result.model} ({result.family})",
        f"  method   {result.method}   pipeline {result.pipeline}",
        f"  rows     {result.erase_rows} erase, {result.preserve_rows} preserve, {result.hard_rows} hard {solved}"
        f"   condition {result.condition:.3g}",
        f"  rank     {result.rank} in each of {result.layers} layers",
        *(
            [(f"  prompts  {result.prompts['encoded']} encoded{_placement_words(getattr(result, 'device', None))}, "
              f"{result.prompts['cached']} from the embedding cache")]
            if any((getattr(result, "prompts", None) or {}).values())
            else []
        ),
        *([f"  paths    {'; '.join(result.paths)}"] if result.paths else []),
        "  time     "
        + ", ".join(f"{k} {seconds[k]:.2f}s" for k in ("load", "encode", "solve", "evaluate", "emit", "total")),
        "",
        "  erased concept                       rows   efficacy",
    ]
    scores = result.scores
    for request in scores.requests:
        lines.append(f"  {request.request[:34]:<34} {request.rows:>6}   {request.efficacy:8.4f}")
    if scores.specificity is None:
        lines.append("  (no preserved prompts: specificity not measured)")
    else:
        lines.append(
            f"  preserved prompts ({scores.preserve_rows} rows)          specificity {scores.specificity:.4f}"
        )
        prompt, value = scores.worst_preserve
        lines.append(f"  least preserved: {prompt!r} {value:.4f}")
    # a DiT's text entry is context_embedder (Wan's sites are K/V, as SD's); its pooled site is its own
    from ..models.families import FAMILIES

    facts = FAMILIES.get(result.family)
    text_entry = facts is not None and facts.transformer and facts.text_projection is None
    layers = "the edited text-entry layer" if text_entry else "all edited K/V layers"
    lines.append(f"  (text pathway, {layers}, on the spec's own rows; 1 = fully erased / fully kept)")
    from erasec.patches.inspect import drift_lines  # erasec inspect prints the same lines

    lines.extend(drift_lines(getattr(result, "drift", None) or {}))
    for diagnostic in result.diagnostics:
        lines.append(f"  {diagnostic}")
    if pooled is not None:
        lines.append(f"  pooled path ({'time_text_embed.text_embedder.linear_1' if text_entry else 'add_embedding.linear_1'}):")
        for request in pooled.requests:
            lines.append(f"  {request.request[:34]:<34} {request.rows:>6}   {request.efficacy:8.4f}")
        if pooled.specificity is not None:
            lines.append(f"  preserved prompts ({pooled.preserve_rows} rows)          specificity {pooled.specificity:.4f}")
        if result.format == "kohya":
            lines.append(f"  note: {POOLED_KOHYA_NOTE}")
    lines.extend(_expert_lines(result))
    return "\n".join(lines)


def _expert_lines(result) -> list[str]:
    """Wan 2.2: the further experts' patches the build wrote beside -o, and how each loads (docs/models.md)."""
    experts = getattr(result, "experts", ())
    if not experts:
        return []
    head = f"  {result.output} edits {result.component}/; Wan 2.2's other expert has its own text embedder, so its own patch:"
    lines = ["", head]
    for expert in experts:
        lines.append(f"built {expert.output} ({human_size(expert.size_bytes)}) for {expert.component}/: rank "
                     f"{expert.rank} in each of {expert.layers} layers, condition {expert.condition:.3g}")
        for request in expert.scores.requests:
            lines.append(f"  {request.request[:34]:<34} {request.rows:>6}   {request.efficacy:8.4f}")
        if expert.scores.specificity is not None:
            lines.append(f"  preserved prompts ({expert.scores.preserve_rows} rows)          "
                         f"specificity {expert.scores.specificity:.4f}")
        lines.extend(f"  {diagnostic}" for diagnostic in expert.diagnostics if diagnostic not in result.diagnostics)
    if result.format == "peft":
        loads = "; ".join(f"pipe.load_lora_weights('{e.output}', load_into_{e.component}=True)" for e in experts)
        lines.append(f"  diffusers: pipe.load_lora_weights('{result.output}'); {loads}")
    else:
        lines.append("  ComfyUI: load each patch with a LoraLoaderModelOnly on its own expert's model "
                     "(high noise: transformer/, low noise: transformer_2/)")
    return lines
