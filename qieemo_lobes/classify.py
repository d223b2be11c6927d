"""Classify the emotion of audio files: ``python -m qieemo_lobes.classify PATH...``.

::

    python -m qieemo_lobes.classify PATH... [--model DIR] [--trust-model] [--out FILE]
                                    [--format table|json|csv] [--top-k K] [--plot DIR]
                                    [--batch-size N] [--device cpu|cuda]
                                    [--backend torch|onnx] [--shard I/N|auto]
                                    [--adapt [inputs|folder]]

``PATH``: files, directories (searched recursively, audio files only) and glob patterns
(``"calls/**/*.flac"``). ``--model`` is a model folder written by ``python -m qieemo_lobes.export``
(default: :data:`DEFAULT_MODEL_DIR`, the model shipped with the package).

**A model folder's hyperparams.yaml is code**: HyperPyYAML constructs and calls whatever it names
(``!apply:os.system``...). By default only model folders written by
``python -m qieemo_lobes.export`` load: the folder is checked before anything in it is built
(:mod:`qieemo_lobes.model_folder`) and any other structure or tag is refused in one line.
``--trust-model`` loads any SpeechBrain-style folder as written: pass it only for folders you
trust.

``--backend onnx`` runs an ONNX model folder (``python -m qieemo_lobes.export_onnx MODEL_DIR
OUT_DIR``) with onnxruntime (:mod:`qieemo_lobes.onnx_inference`), never importing torch,
torchaudio, SpeechBrain or transformers: the same results within 1e-3, the same outputs and
error lines, a much faster start. Without ``--model`` it uses the built-in default model's ONNX
copy, built on first use into the cache (:mod:`qieemo_lobes.onnx_models`: that once needs
torch). An ONNX folder holds no code, so ``--trust-model`` changes nothing there. Long
recordings are segmented with Silero VAD as ONNX (shipped in the ONNX folder), else the energy
detector.

Per file: the label, its confidence (probability) and every class's probability. A model
exported from a calibrated run divides its logits by the temperature fitted on held-out speakers
(``temperature`` in its ``hyperparams.yaml``; see
:class:`~qieemo_lobes.interfaces.EmotionRecognizer`), so that its confidence can be thresholded.
``--top-k K`` adds the K most probable labels of each file and segment, most probable first (K
from 1 to the model's number of classes, otherwise refused with exit 2).

- Recordings up to :data:`~qieemo_lobes.segmentation.LONG_RECORDING_S` (30 s) are classified
  whole, in batches of files of similar length (at most ``--batch-size`` files and
  :data:`~qieemo_lobes.classify_engine.BATCH_SECONDS` of padded audio per batch). A batch the
  model fails on (out of memory, a file it cannot handle) is retried file by file, so one file
  never takes others down.
- Longer recordings (a conversation, a call) are streamed, split into speech segments
  (:class:`~qieemo_lobes.segmentation.SpeechSegmenter`: Silero VAD, energy detector as fallback)
  and each segment is classified (segments under :data:`~qieemo_lobes.audio.MIN_SECONDS` are
  skipped); the recording's overall probabilities are the mean of the segments' probabilities
  weighted by segment duration, its label their argmax. Memory stays bounded by a block of audio
  and a batch of segments, whatever the length of the file.
  ``--plot DIR`` draws each long recording's emotion timeline as ``DIR/<name>.png``.
- ``--adapt`` (torch backend, not with ``--shard``): the model's input statistics are first
  measured on the inputs themselves (up to :data:`~qieemo_lobes.classify_adapt.ADAPT_MAX_CLIPS`
  clips or speech segments spread over them; at least :data:`ADAPT_MIN_CLIPS`), then every input
  is classified with them (:mod:`qieemo_lobes.adaptation`, AdaBN). Give it recordings of one
  domain (one corpus, one recording set-up): on corpora never seen in training it raised UA
  markedly (``benchmarks/results/adapt_study.md``), but each result then depends on the other
  inputs (transductive), and the inputs are read twice. ``--adapt folder``: the files of each
  folder adapted to their own statistics (a folder per speaker or per session: per-speaker
  statistics did better still in that study); every folder needs the minimum.
- The model sees each clip or segment with its mean (DC offset) removed; see
  :func:`qieemo_lobes.interfaces.remove_dc`.

Output, one record per input: first the arguments that matched nothing (a missing path, an
empty folder, a folder that cannot be searched), then the files in the order given (folders and
globs expanded in sorted order), each written as soon as it and every input before it are done:

- ``json``: JSON Lines, ``{"path", "label", "confidence", "probabilities": {label: p},
  "duration_s", "segments": [{"start_s", "end_s", "label", "confidence", "probabilities"}]}``
  (``segments`` is empty for a recording classified whole) or ``{"path", "error"}``. Numbers are
  always finite (no ``NaN`` in the JSON). ``--top-k``: the file and each segment also get
  ``"top": [{"label", "probability"}, ...]`` (after ``probabilities``).
- ``csv``: ``path, segment, start_s, end_s, duration_s, label, confidence, <one column per
  class>, error``: one row per file (``segment`` empty), then one per segment (1, 2, ...).
  ``--top-k``: the columns ``top1, top1_p, ..., topK, topK_p`` (label and probability of each
  rank) come before ``error``.
- ``table`` (default): aligned columns for people. ``--top-k``: a ``top`` column after
  ``conf``: ``sad (0.75), happy (0.20)``.

Where the output goes (default: stdout):

- ``--out FILE``, a new path or a regular file (through a symlink: the link's target is replaced
  and the link kept): written as an unnamed or hidden temporary file in its folder and renamed
  into place only when the run succeeds (:func:`qieemo_lobes.files.atomic_open`). A failed or
  interrupted run leaves the old file, or none, and no temporary file.
- ``--out`` a pipe, FIFO or character device (``/dev/stdout``, ``/dev/null``, a terminal):
  written directly, record by record, never replaced.
- Refused before anything is classified (exit 2): a directory, a socket or block device, and any
  input file (also one found in a folder or by a glob, or reached through a link).

Problems are one line each on stderr, never a traceback:

===================================  ======================================================  ====
situation                            on stderr                                               exit
===================================  ======================================================  ====
every input classified               nothing                                                 0
bad input file                       ``<path>: <problem>`` after the results (the table of   1
                                     :mod:`qieemo_lobes.audio`: missing, empty, corrupt,
                                     truncated, not audio, NaN/inf samples, too short,
                                     silence or a DC offset only, a FIFO or ``/dev/zero``);
                                     the other files are still classified
a folder that cannot be searched     ``<folder>: cannot search this folder (...)``           1
the model fails on a file            ``<path>: cannot classify (...)``                       1
non-finite model output              ``<path>: the model returned non-finite probabilities   1
                                     (damaged model?)``; never a NaN result
a timeline plot cannot be written    ``<png>: cannot write the timeline plot (...)``; every  1
                                     result is still written
the output cannot be written         ``classify: <out>: cannot write the results (...)``     1
                                     (disk full, ``/dev/full``, a closed pipe); the run
                                     stops, a ``--out`` file is left as it was
Ctrl-C (SIGINT) or SIGTERM           ``classify: interrupted``; as above for ``--out``       130
nothing can run                      ``classify: <problem>`` (no model, model refused, bad   2
                                     option, ``--out`` refused), before classifying
===================================  ======================================================  ====

Silence is reported as silence, never given an emotion.

On CPU the command uses one torch (or onnxruntime) thread per core that is idle when it starts
(set ``OMP_NUM_THREADS`` to choose), and idle threads sleep rather than spin: on a shared 2-core
machine a spinning second thread made classification 3 times slower.

``--shard I/N --out FILE`` (or ``torchrun ... -m qieemo_lobes.classify``) classifies shard I
of N of the inputs (counted from 1) into ``FILE.part-I-of-N``; the last shard to finish merges
the parts into ``FILE``, in input order, and reports the failed inputs once
(:mod:`qieemo_lobes.classify_shards`).

This module is the command (options, checks, process settings, the run);
:mod:`qieemo_lobes.classify_engine` classifies the files and :mod:`qieemo_lobes.classify_output`
writes the results, opens ``--out`` and draws the timeline plots.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from qieemo_lobes import classify_process
from qieemo_lobes.classify_engine import FileResult, classify_planned, plan_inputs
from qieemo_lobes.classify_output import (
    FORMATS,
    OutputError,
    OutputRefused,
    OutputStream,
    ResultWriter,
    TimelinePlots,
    check_output,
    detach_stdout,
    make_plot_dir,
    open_output,
)
from qieemo_lobes.classify_shards import ShardRun, parse_shard, run_shard
from qieemo_lobes.files import terminate_as_interrupt

if TYPE_CHECKING:
    from qieemo_lobes.interfaces import EmotionRecognizer
    from qieemo_lobes.onnx_inference import OnnxRecognizer

__all__ = ["DEFAULT_MODEL_DIR", "main"]

# The default model folder, shipped in the package (written by ``python -m qieemo_lobes.export``).
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"
# --adapt refuses fewer clips: benchmarks/results/adapt_study.md, 10 random clips of a held-out
# corpus already gave most of the gain of the whole corpus.
ADAPT_MIN_CLIPS = 10
INTERRUPTED_EXIT = 130  # 128 + SIGINT, as shells report a command stopped by Ctrl-C
TRUST_HELP = (
    "load a model folder that python -m qieemo_lobes.export did not write: its hyperparams.yaml "
    "is code (HyperPyYAML builds and calls what it names) and then runs as written; by default "
    "only model folders written by python -m qieemo_lobes.export load. Pass --trust-model only "
    "for folders you trust"
)


class _Refused(Exception):
    """Nothing can run (no model, bad option): one line, exit code 2."""


def main(argv: list[str] | None = None, configure_process: bool = True) -> int:
    """Run the command; returns the exit code (see the table in the module docstring).

    0: all classified, 1: some input failed or the output could not be written, 2: refused
    (nothing could run), 130: interrupted (Ctrl-C; ``SIGTERM`` too with ``configure_process``).

    Arguments
    ---------
    argv : list of str, optional
        The arguments (default ``sys.argv[1:]``).
    configure_process : bool
        Apply the process-wide settings of the command (library logging, malloc, OpenMP
        waiting, torch threads, ``SIGTERM`` handled as Ctrl-C). Pass False when calling from a
        program of your own.

    Returns
    -------
    int
    """
    args = _parser().parse_args(argv)
    try:
        with terminate_as_interrupt() if configure_process else contextlib.nullcontext():
            return _main(args, configure_process)
    except (_Refused, OutputRefused) as err:
        print(f"classify: {err}", file=sys.stderr)
        return 2
    except OutputError as err:
        print(f"classify: {err}", file=sys.stderr)
        if args.out is None:
            detach_stdout()
        return 1
    except KeyboardInterrupt:
        print("classify: interrupted", file=sys.stderr)
        return INTERRUPTED_EXIT


def _main(args: argparse.Namespace, configure_process: bool) -> int:
    """The run: every check first (:class:`_Refused`), then classify, write, report."""
    if args.batch_size < 1:
        raise _Refused(f"--batch-size must be at least 1, got {args.batch_size}")
    try:
        shard = parse_shard(args.shard, args.out)
    except ValueError as err:
        raise _Refused(str(err)) from None
    onnx = args.backend == "onnx"
    if args.adapt and (onnx or shard is not None):
        option = "--backend onnx" if onnx else "--shard"
        raise _Refused(f"--adapt cannot be combined with {option}")
    if onnx:  # process settings first: numpy reads them when it is imported
        device = _onnx_device(args.device, configure_process)
        from qieemo_lobes.onnx_models import resolve_onnx_model

        model_dir = _onnx_step(resolve_onnx_model, args.model, DEFAULT_MODEL_DIR)
    else:
        model_dir = _model_dir(args.model)
    _check_top_k(args.top_k, _labels_of(model_dir, onnx))
    plot_dir = make_plot_dir(args.plot)
    if not onnx:
        device = _torch_device(args.device, configure_process)
        if shard is not None and device == "cuda" and os.environ.get("LOCAL_RANK", "").isdigit():
            device = f"cuda:{os.environ['LOCAL_RANK']}"  # torchrun: a GPU per process
    plan = plan_inputs(args.paths)
    output = check_output(
        args.out, [item.path if isinstance(item, FileResult) else item[0] for item in plan]
    )
    if shard is not None:
        try:
            run = ShardRun(shard, plan, output, str(model_dir), args.backend)
        except ValueError as err:
            raise _Refused(str(err)) from None

        def write(stream: OutputStream, share: list, make_writer) -> tuple[list, list[str]]:
            return _write_results(stream, share, args, model_dir, device, plot_dir, make_writer)

        return run_shard(run, write, args.format, args.top_k)
    with open_output(output) as stream:
        failures, plot_failures = _write_results(stream, plan, args, model_dir, device, plot_dir)
    return _report(failures, plot_failures, len(plan))


def _model_dir(model: str | None) -> Path:
    """The ``--model`` folder (default :data:`DEFAULT_MODEL_DIR`), if it has a hyperparams.yaml."""
    model_dir = Path(model).expanduser() if model else DEFAULT_MODEL_DIR
    if not (model_dir / "hyperparams.yaml").is_file():
        if model is None:
            raise _Refused(
                f"default model not found at {model_dir} (not shipped with this checkout); "
                "pass --model DIR"
            )
        if not model_dir.is_dir():
            raise _Refused(f"{model_dir}: model folder not found")
        raise _Refused(f"{model_dir}: not a model folder (no hyperparams.yaml)")
    return model_dir


def _check_top_k(top_k: int | None, labels: list[str]) -> None:
    """Refuse a ``--top-k`` outside 1..number of classes (unknown classes: at least 1)."""
    if top_k is None:
        return
    if labels and not 1 <= top_k <= len(labels):
        raise _Refused(
            f"--top-k must be between 1 and {len(labels)} (the model's classes), got {top_k}"
        )
    if top_k < 1:
        raise _Refused(f"--top-k must be at least 1, got {top_k}")


def _torch_device(requested: str | None, configure_process: bool) -> str:
    """Apply the process settings that torch reads on import, import it; the device to use."""
    if configure_process:
        classify_process.quiet_libraries()
        classify_process.return_freed_memory()
        classify_process.passive_openmp()
    import torch

    if configure_process:
        classify_process.set_threads(torch)

    device = requested or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise _Refused("--device cuda: no CUDA device available")
    return device


def _onnx_device(requested: str | None, configure_process: bool) -> str:
    """The process settings, then onnxruntime checked (its CUDA provider for ``--device cuda``).

    numpy's few matrix products here (resampling, mel filters) run on one OpenBLAS thread: with
    its default pool (a thread per core, spinning), 40 EmoDB clips took 3.1 s instead of 1.2 s
    on a 2-core machine busy with other work.
    """
    if configure_process:
        classify_process.quiet_libraries()
        classify_process.return_freed_memory()
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # read when numpy is imported
    from qieemo_lobes.onnx_models import check_runtime

    return _onnx_step(check_runtime, requested)


def _onnx_step(step, *args):
    """Run a step of :mod:`qieemo_lobes.onnx_models`; its one-line problem refuses the run."""
    from qieemo_lobes.onnx_inference import OnnxModelError

    try:
        return step(*args)
    except OnnxModelError as err:
        raise _Refused(str(err)) from None


def _write_results(
    stream: OutputStream,
    plan: list[FileResult | tuple[str, float]],
    args: argparse.Namespace,
    model_dir: Path,
    device: str,
    plot_dir: Path | None,
    make_writer=ResultWriter,
) -> tuple[list[FileResult], list[str]]:
    """Classify ``plan`` and write each result; the failed inputs and the plots not written.

    The model is loaded only if some input can be classified. ``make_writer``: a shard's part
    writer (:meth:`qieemo_lobes.classify_shards.ShardRun.make_writer`) instead of the output's.
    """
    n_runnable = sum(isinstance(item, tuple) for item in plan)
    onnx = args.backend == "onnx"
    recognizer: EmotionRecognizer | OnnxRecognizer | None = None
    if n_runnable and onnx:
        recognizer = _load_onnx_model(model_dir, device, build=args.model is None)
    elif n_runnable:
        recognizer = _load_model(model_dir, device, trust_code=args.trust_model)
    labels = recognizer.labels if recognizer is not None else _labels_of(model_dir, onnx)
    _check_top_k(args.top_k, labels)  # a --trust-model folder may not list its classes
    writer = make_writer(stream, args.format, labels, top_k=args.top_k)
    plots = TimelinePlots(plot_dir, labels) if plot_dir is not None else None
    results = ((i, item) for i, item in enumerate(plan) if isinstance(item, FileResult))
    if recognizer is not None and args.adapt:
        from qieemo_lobes.adaptation import AdaptationError
        from qieemo_lobes.classify_adapt import adapted_results

        try:  # every group measured before anything is classified
            adapted = adapted_results(
                recognizer, plan, args.adapt, args.batch_size, ADAPT_MIN_CLIPS
            )
        except AdaptationError as err:
            raise _Refused(f"--adapt: {err}") from None
        results = itertools.chain(results, adapted)
    elif recognizer is not None:
        results = itertools.chain(results, classify_planned(plan, recognizer, args.batch_size))
    failures: list[FileResult] = []
    for index, result in results:
        if result.error is not None:
            failures.append(result)
        elif plots is not None:
            plots.add(result)
        writer.add(index, result)
    writer.close()
    return failures, plots.failures if plots is not None else []


def _report(failures: list[FileResult], plot_failures: list[str], n_inputs: int) -> int:
    """One line per failed input and plot on stderr, then the counts; the exit code."""
    for result in failures:
        print(f"{result.path}: {result.error}", file=sys.stderr)
    for line in plot_failures:
        print(line, file=sys.stderr)
    if failures:
        print(f"classify: {len(failures)} of {n_inputs} inputs failed", file=sys.stderr)
    if plot_failures:
        print(f"classify: {len(plot_failures)} timeline plots not written", file=sys.stderr)
    return 1 if failures or plot_failures else 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m qieemo_lobes.classify",
        description="Recognise the emotion in speech recordings (files, directories, globs). "
        "Recordings over 30 s are split into speech segments, each classified.",
        epilog="A model folder's hyperparams.yaml is code: by default only model folders "
        "written by python -m qieemo_lobes.export load; pass --trust-model only for folders "
        "you trust. Exit status: 0 all classified, 1 some input (or the output) failed, "
        "2 nothing could run, 130 interrupted.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="audio files, directories, globs")
    parser.add_argument(
        "--model",
        metavar="DIR",
        help=f"model folder (python -m qieemo_lobes.export); default {DEFAULT_MODEL_DIR}",
    )
    parser.add_argument("--trust-model", action="store_true", help=TRUST_HELP)
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format")
    parser.add_argument(
        "--out",
        metavar="FILE",
        help="write the results to this file (default: stdout); a regular file is replaced "
        "only when the run succeeds, a pipe or device (/dev/stdout) is written directly; "
        "never one of the input files",
    )
    parser.add_argument(
        "--top-k",
        type=int,
        metavar="K",
        help="also give the K most probable labels of each file and segment, with their "
        "probabilities (1 to the model's number of classes)",
    )
    parser.add_argument("--plot", metavar="DIR", help="emotion timeline PNG per long recording")
    parser.add_argument("--batch-size", type=int, default=8, help="files per batch (default 8)")
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        help="default: cuda when available, else cpu (--backend onnx: cpu)",
    )
    parser.add_argument(
        "--backend",
        choices=("torch", "onnx"),
        default="torch",
        help="torch (default): the model folder with PyTorch; onnx: an ONNX model folder "
        "(python -m qieemo_lobes.export_onnx; default: the default model's ONNX copy, built "
        "once on first use) with onnxruntime, without importing torch",
    )
    parser.add_argument(
        "--adapt",
        nargs="?",
        const="inputs",
        choices=("inputs", "folder"),
        help="adapt the model to the inputs first (their input statistics, AdaBN; at least "
        f"{ADAPT_MIN_CLIPS} clips of one domain; torch backend); --adapt folder: each folder's "
        "files to their own (e.g. a folder per speaker); better on speech unlike the "
        "training corpora, but each result depends on the other inputs",
    )
    parser.add_argument(
        "--shard",
        metavar="I/N|auto",
        help="classify shard I of N of the inputs (from 1) into FILE.part-I-of-N (needs --out "
        "FILE); the last shard to finish merges the parts into FILE. auto (the default under "
        "torchrun): RANK+1 of WORLD_SIZE",
    )
    return parser


def _load_model(model_dir: Path, device: str, trust_code: bool = False) -> EmotionRecognizer:
    """The recognizer of ``model_dir`` (:class:`_Refused` if it cannot be built)."""
    from qieemo_lobes.interfaces import EmotionRecognizer

    try:
        return EmotionRecognizer.from_hparams(
            source=str(model_dir), run_opts={"device": device}, trust_code=trust_code
        )
    except Exception as err:  # any failure to build the model: one line, not a traceback
        message = " ".join(str(err).split()) or type(err).__name__
        raise _Refused(f"{model_dir}: cannot load the model ({message})") from None


def _load_onnx_model(model_dir: Path, device: str, build: bool) -> OnnxRecognizer:
    """The ONNX recognizer of ``model_dir``; ``build``: the default model's copy, made if needed."""
    from qieemo_lobes.onnx_models import load_onnx_model

    def say(message: str) -> None:
        print(f"classify: {message}", file=sys.stderr)

    source = DEFAULT_MODEL_DIR if build else None
    return _onnx_step(
        load_onnx_model, model_dir, device, classify_process.onnx_threads(), source, say
    )


def _labels_of(model_dir: Path, onnx: bool = False) -> list[str]:
    """The classes of a model folder (when no input needed the model): its hyperparams.yaml's,
    or an ONNX folder's labels.json (none for the default model's copy not built yet)."""
    import json

    if onnx:
        try:
            labels = json.loads((model_dir / "labels.json").read_text())
            return [str(c) for c in labels] if isinstance(labels, list) else []
        except (OSError, ValueError):
            return []
    try:
        from ruamel.yaml import YAML

        with open(model_dir / "hyperparams.yaml") as fh:
            return [str(c) for c in YAML().load(fh).get("classes", [])]
    except Exception:
        return []


if __name__ == "__main__":
    sys.exit(main())
