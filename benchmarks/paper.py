#!/usr/bin/env python3
"""The paper study (issue 15): which of the Qieemo paper's claims hold on the corpora here.

    python benchmarks/paper.py --corpora emodb,ravdess,nemo,emovo,turev \\
        [--data ../shared/data] [--work results/paper] [--cache WORK/feature_cache] \\
        [--out benchmarks/results/paper_report.md] [--seeds 1986,1987,1988] \\
        [--sections probe,ablations,scratch,ppg,verdicts] [--block-sets "2,3,4;1,2,3,4,5,6"] \\
        [--systems full,no_cma,...] [--max-folds N] [--scratch-trained] [--device cuda:0] \
        [--report-only]

plans every run, runs what is missing (resumable), analyses and writes ``--out`` (the report),
``paper_results.json`` beside it (every number of the report; ``--json`` moves it) and two PNGs
(``<out stem>_probe.png``: probe UA of every block with 95 % confidence intervals;
``<out stem>_ablations.png``: every system's UA with its interval). The analysis and the report
are in ``benchmarks/paper_report.py``.

Sections (``--sections`` chooses what runs; the report always covers every section, listing what
is missing as "not run"):

1. ``probe``: where emotion lives. Standardise + logistic regression (C=0.1) on the time-mean of
   every whisper-base block (fit window) and of its final output, leave-one-fold-out over the
   recipe's folds; UA of the pooled predictions with a 95 % speaker-bootstrap interval.
   Features come from the feature cache (clips missing from it are encoded first). The block
   used by ``best_block`` is chosen by an inner leave-one-fold-out CV on the training folds of
   each outer fold (:class:`baselines.InnerCVBlockProbe`, encoder blocks only); the block most
   folds choose is then used in every fold (ties: the lower block).
2. ``ablations``: every system is one run of ``recipes/<corpus>/emotion/cross_validate.py
   hparams/qieemo.yaml`` per seed, in ``WORK/<corpus>/<system>_seed<seed>/``, with one uniform
   protocol on every corpus (:data:`PROTOCOL`: frozen encoder read from the feature cache, no
   retrained block, no speed copies, 15 epochs) and ``--seed=<seed>``. The systems
   (:func:`system_overrides`): ``full`` (MMF over the recipe's fusion blocks + CMA, the paper's
   system), ``no_cma``, ``no_mmf`` (the paper's "without MMF": the last encoder block alone,
   with CMA), ``best_block`` (MMF over the single best probe block, no CMA: the simplest strong
   system, the qieemo counterpart of the probe) and ``mmf_<blocks>`` (MMF over other block sets,
   with CMA).
3. ``scratch``: ``from_scratch``: the full system on the same encoder architecture with random
   weights (:class:`qieemo_lobes.scratch_encoder.ScratchWhisperBlocks`, seed 0, frozen); with
   ``--scratch-trained`` also ``from_scratch_trained``: that encoder trained with the head (live
   encoder, no cache), first seed only, ``--scratch-epochs`` epochs: the small budget.
4. ``ppg``: what the PPG carries. A controlled espeak-ng corpus whose words alone carry the
   emotion (``benchmarks/lexical_corpus.py``, in ``WORK/lexical/corpus``) is learnt by
   ``recipes/custom/emotion/train.py`` (train/test folds of the corpus: unseen voices, templates
   and feeling words) with PPG only (``--use_mmf=False --use_cma=False``: the last block, which
   is the PPG before Whisper's final layer norm), blocks only (no CMA) and the full system;
   with nEMO among the corpora, a text-only classifier on nEMO's transcripts (leave one speaker
   out) checks that its sentences carry no label.
5. ``verdicts``: analysis only.

Cost: measured on the 2-core development CPU under a load of 3-5 (one EmoDB fold, 448
training clips of 2 s, 15 epochs): 71 s with CMA, 34 s without; encoding EmoDB's 535 clips 42 s;
EmoDB's probe with its inner CV 75 s. Scaled by each corpus' clips, folds and durations, the five
corpora with 7 systems and 3 seeds take about 28 hours (nEMO half of it), the lexical corpus
about half an hour; ``--scratch-trained`` (a live whisper-base encoder trained on CPU) would add
days and about 9 GB of checkpoints: use it on a GPU (``--device cuda:0``).

Finished work is reused: a run whose recorded settings are the ones planned and whose folds are
finished is not launched again; an unfinished one is resumed by ``cross_validate.py`` itself
(finished folds kept). Each finished cross-validation is also kept, compact, in ``--archive``
(:mod:`paper_archive`; committed beside the report): a run the archive holds with the planned
settings is not launched again, and the report reads it there when its folder is gone (a fresh
checkout). A run is archived when this command finds it finished with the planned settings (not
with ``--report-only``, and not ``--max-folds`` runs). ``--report-only`` trains and encodes nothing: it rebuilds the report from
the finished runs and the cached features. ``--max-folds N`` runs only folds 1..N of each corpus
(quick runs; the report says so). ``--systems`` runs only the systems it names (the report
still covers every planned one): two commands with disjoint systems share the work folder, the
feature cache and the archive, so they can run side by side. Progress goes to stdout; bad arguments are one line on stderr
(exit status 2); a failed run is reported at the end (exit status 1) after the others ran;
Ctrl-C stops the running fold and exits with status 130.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "benchmarks"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import baselines  # noqa: E402
import lexical_corpus  # noqa: E402
import paper_report  # noqa: E402
from accuracy import CORPORA  # noqa: E402  (corpus -> recipe folder, folder under --data)
from paper_archive import archive_path, load_run, probe_archive_path, save_run  # noqa: E402
from paper_args import (  # noqa: E402, F401
    DEFAULT_BLOCK_SETS,
    SECTIONS,
    SEEDS,
    PaperError,
    parse_arguments,
    parse_block_sets,
)

# The study's parts, re-exported: ``paper.X`` stays the name of each (tests patch ``launch`` and
# ``make_lexical_corpus`` here, which is where :func:`execute` and :func:`_main` look them up).
from paper_plan import (  # noqa: E402, F401
    ABLATIONS,
    LEXICAL_CLASSES,
    LEXICAL_SYSTEMS,
    PROTOCOL,
    SCRATCH_ENCODER_LR,
    SCRATCH_SEED,
    SCRATCH_SOURCE,
    _last_line,
    archived_finished,
    block_set_name,
    cached_json,
    cv_finished,
    failed,
    launch,
    lexical_arguments,
    make_lexical_corpus,
    recipe_fusion_blocks,
    recipe_hparams,
    render,
    run_arguments,
    run_folder,
    section_of,
    seeds_of,
    single_run_finished,
    system_overrides,
    systems_of,
)
from paper_probe import (  # noqa: E402, F401
    PROBE_C,
    PROBE_ENCODER,
    _probe_digest,
    block_means,
    corpus_probe,
    probe_encoder_identity,
)
from paper_runs import (  # noqa: E402, F401
    cma_gates,
    mmf_weights,
    read_fold,
    read_predictions,
    read_run,
    read_single_run,
)

from qieemo_lobes.errors import one_line, os_error_line  # noqa: E402
from qieemo_lobes.files import terminate_as_interrupt  # noqa: E402

# The doctests of the moved functions run with this module's (``doctest.testmod(paper)``).
__test__ = {"system_overrides": system_overrides, "mmf_weights": mmf_weights}

INTERRUPTED = "interrupted; rerun the same command to resume"


# --------------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------------


def execute(
    label: str,
    script: Path,
    arguments: list[str],
    out: Path,
    log: Path,
    finished: Callable[[], bool],
    failures: list[dict],
) -> None:
    """Run one planned run unless ``finished()``; a failure is recorded (and printed), not
    raised."""
    if finished():
        print(f"paper: {label}: finished earlier, kept", flush=True)
        return
    print(f"paper: {label}: running ({log}) ...", flush=True)
    start = time.time()
    code = launch(script, arguments, log)
    if code == 130:
        raise KeyboardInterrupt
    if code != 0 or not finished():
        problem = _last_line(log) or f"exit status {code}"
        failed(failures, label, out, f"exit status {code}: {problem}")
        return
    print(f"paper: {label}: done ({time.time() - start:.0f} s)", flush=True)


def run_or_archived(folder: Path, kept: Path, folds: list[int]) -> dict:
    """The run in ``folder`` (:func:`read_run`); when the folder holds no finished run, its
    archived copy at ``kept`` if there is one."""
    run = read_run(folder, folds)
    if run["status"] == "done":
        return run
    return load_run(kept, folds) or run


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------


def load_items(corpus: str, data: Path, required: bool) -> list[dict] | None:
    """The recipe's utterances and folds of ``corpus``; None when its data are missing and not
    ``required`` (``--report-only``)."""
    folder = data / CORPORA[corpus][1]
    try:
        return baselines.corpus_items(corpus, folder)
    except (ValueError, OSError) as err:
        if required:
            raise PaperError(f"{corpus}: {folder}: {one_line(err)}") from None
        return None


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        with terminate_as_interrupt():
            return _main(argv)
    except KeyboardInterrupt:
        print(f"paper: {INTERRUPTED}", file=sys.stderr, flush=True)
        return 130
    except PaperError as err:
        print(f"paper: error: {err}", file=sys.stderr, flush=True)
        return 2
    except OSError as err:
        print(f"paper: error: {os_error_line(err)}", file=sys.stderr, flush=True)
        return 2


@dataclass
class Study:
    """One invocation: its arguments, resolved paths, corpora and the failures met so far."""

    args: argparse.Namespace
    work: Path  # absolute: every run records its paths in its settings
    cache: Path
    data: Path
    archive: Path
    items: dict[str, list[dict] | None]  # None: --report-only without the corpus' data
    n_folds: dict[str, int]
    failures: list[dict] = field(default_factory=list)

    @property
    def running(self) -> bool:
        return not self.args.report_only

    @property
    def wanted(self) -> dict[str, list[int]]:
        """The folds of each corpus the study runs and reports (``--max-folds``)."""
        cut = self.args.max_folds
        return {c: list(range(1, min(n, cut or n) + 1)) for c, n in self.n_folds.items()}


def prepare(args: argparse.Namespace) -> Study:
    """Resolve the paths and read every corpus' utterances and folds."""
    work, data = Path(args.work).resolve(), Path(args.data).resolve()
    items = {c: load_items(c, data, required=not args.report_only) for c in args.corpora}
    n_folds = {}
    for corpus, listed in items.items():
        if listed is not None:
            n_folds[corpus] = len({item["fold"] for item in listed})
        else:  # --report-only without the data: the folds the runs hold
            found = [
                int(p.name[5:]) for p in (work / corpus).glob("*/fold_*") if p.name[5:].isdigit()
            ]
            n_folds[corpus] = max(found, default=0)
    if not args.report_only:
        work.mkdir(parents=True, exist_ok=True)
    return Study(
        args=args,
        work=work,
        cache=Path(args.cache).resolve() if args.cache else work / "feature_cache",
        data=data,
        archive=Path(args.archive),
        items=items,
        n_folds=n_folds,
    )


def run_probes(study: Study, kind: str) -> dict[str, dict | None]:
    """The block probe of every corpus: ``pretrained`` (section 1, and the block of
    ``best_block``; missing clips encoded when running the probe or the ablations) or
    ``scratch`` (the random encoder's blocks, when its features are cached). A failure (features,
    audio, weights, a damaged entry) is recorded and the other corpora go on."""
    pretrained = kind == "pretrained"
    encode = (
        pretrained and study.running and bool({"probe", "ablations"} & set(study.args.sections))
    )
    probes: dict[str, dict | None] = {}
    for corpus in study.args.corpora:
        probes[corpus] = None
        if study.items[corpus] is None:
            continue
        if encode:
            print(f"paper: [{corpus}] probe of every block ...", flush=True)
        try:
            probes[corpus] = corpus_probe(
                study.items[corpus],
                study.cache,
                study.work / corpus / ("probe.json" if pretrained else f"probe_{kind}.json"),
                kind,
                encode,
                inner=pretrained,
                archive=probe_archive_path(study.archive, corpus, kind),
            )
        except Exception as err:  # reported; the other corpora go on
            what = "probe" if pretrained else "probe of the random encoder"
            failed(study.failures, f"[{corpus}] {what}", study.work / corpus, one_line(err))
    return probes


def run_cross_validations(
    study: Study, probes: dict[str, dict | None]
) -> dict[str, dict[str, dict[int, Path]]]:
    """Plan every system of every corpus and run what is missing (sections 2-3), seed by seed
    so that early seeds give whole comparisons; returns ``{corpus: {system: {seed: folder}}}``.
    A run is archived as soon as it is found finished: an interrupted study loses none."""
    args, wanted = study.args, study.wanted
    planned: dict[str, dict[str, dict[int, Path]]] = {c: {} for c in args.corpora}
    for seed in args.seeds:
        for corpus in args.corpora:
            for system in systems_of(args, corpus):
                if seed not in seeds_of(args, system):
                    continue
                folder = run_folder(study.work, corpus, system, seed)
                planned[corpus].setdefault(system, {})[seed] = folder
                if not study.running or section_of(system) not in args.sections:
                    continue
                if args.systems is not None and system not in args.systems:
                    continue
                label = f"[{corpus}] {system} seed {seed}"
                kept = archive_path(study.archive, corpus, system, seed)
                probe = probes.get(corpus)
                block = probe.get("chosen_block") if probe else None
                overrides = system_overrides(system, block, args.scratch_epochs)
                if overrides is None:
                    failed(study.failures, label, folder, "no probe, so no best block")
                    continue
                arguments = run_arguments(
                    corpus,
                    overrides,
                    seed,
                    study.data / CORPORA[corpus][1],
                    folder,
                    study.cache,
                    wanted[corpus] if args.max_folds else None,
                    args.device,
                )
                script = REPO / "recipes" / CORPORA[corpus][0] / "emotion" / "cross_validate.py"
                execute(
                    label,
                    script,
                    arguments,
                    folder,
                    folder.with_suffix(".log"),
                    lambda f=folder, a=arguments, c=corpus, k=kept: (
                        cv_finished(f, a, wanted[c]) or archived_finished(k, a, wanted[c])
                    ),
                    study.failures,
                )
                if not args.max_folds and cv_finished(folder, arguments, wanted[corpus]):
                    save_run(kept, read_run(folder, wanted[corpus]))
    return planned


def run_lexical(study: Study) -> Path:
    """Section 4: build the lexical corpus and train its systems (with ``ppg`` among the
    sections); returns its manifest's path (which may not exist)."""
    folder = study.work / "lexical"
    manifest = folder / "corpus" / lexical_corpus.MANIFEST
    if not study.running or "ppg" not in study.args.sections:
        return manifest
    try:
        manifest = make_lexical_corpus(folder / "corpus")
    except (lexical_corpus.CorpusError, OSError) as err:
        failed(study.failures, "lexical corpus", folder, one_line(err))
    if not manifest.is_file():
        return manifest
    for seed in study.args.seeds:
        for system in LEXICAL_SYSTEMS:
            out = folder / f"{system}_seed{seed}"
            arguments = lexical_arguments(
                manifest, system, seed, out, study.cache, study.args.device
            )
            execute(
                f"[lexical] {system} seed {seed}",
                REPO / "recipes" / "custom" / "emotion" / "train.py",
                arguments,
                out,
                out.with_suffix(".log"),
                lambda f=out, a=arguments: single_run_finished(f, a),
                study.failures,
            )
    return manifest


def lexical_results(study: Study, manifest: Path) -> dict[str, Any]:
    """The lexical systems' runs, the corpus' sentences and the text-only check."""
    folder = study.work / "lexical"
    runs = {
        system: {
            seed: read_single_run(folder / f"{system}_seed{seed}") for seed in study.args.seeds
        }
        for system in LEXICAL_SYSTEMS
    }
    if not manifest.is_file():
        return {"runs": runs, "text": {}, "text_only": None}

    def text_check() -> dict:
        check = lexical_corpus.corpus_text_check(manifest.parent)
        check.pop("predictions", None)
        return check

    text = {Path(r["path"]).stem: r["text"] for r in lexical_corpus.read_manifest(manifest)}
    return {
        "runs": runs,
        "text": text,
        "text_only": cached_json(folder / "text_only.json", text_check),
    }


def nemo_text_check(study: Study) -> dict | None:
    """Section 4 on nEMO: a text-only classifier on its transcripts (when nEMO is studied)."""
    kept = study.work / "nemo" / "text_only.json"
    if "nemo" not in study.args.corpora or (study.items.get("nemo") is None and not kept.is_file()):
        return None
    try:
        return cached_json(
            kept, lambda: lexical_corpus.nemo_text_check(study.data / CORPORA["nemo"][1])
        )
    except (ValueError, OSError) as err:
        failed(study.failures, "[nemo] text-only check", study.work / "nemo", one_line(err))
        return None


def collect_runs(
    study: Study, planned: dict[str, dict[str, dict[int, Path]]]
) -> dict[str, dict[str, dict[int, dict]]]:
    """Every planned run, read from its folder or else from the archive."""
    return {
        corpus: {
            system: {
                seed: run_or_archived(
                    folder, archive_path(study.archive, corpus, system, seed), study.wanted[corpus]
                )
                for seed, folder in by_seed.items()
            }
            for system, by_seed in systems.items()
        }
        for corpus, systems in planned.items()
    }


def study_meta(study: Study, argv: list[str]) -> dict[str, Any]:
    """What the report says about how it was made."""
    args = study.args
    return {
        "command": "python benchmarks/paper.py "
        + " ".join(a for a in argv if a != "--report-only"),
        "corpora": args.corpora,
        "seeds": args.seeds,
        "max_folds": args.max_folds,
        "n_folds": study.n_folds,
        "block_sets": [list(s) for s in args.block_sets],
        "protocol": render(PROTOCOL),
        "scratch": {
            "source": SCRATCH_SOURCE,
            "seed": SCRATCH_SEED,
            "trained_epochs": args.scratch_epochs if args.scratch_trained else None,
            "trained_encoder_lr": SCRATCH_ENCODER_LR,
        },
        "machine": f"{os.cpu_count()} CPU cores"
        + (f", runs on {args.device}" if args.device else ""),
        "n_boot": args.n_boot,
        "recipe_fusion_blocks": {c: list(recipe_fusion_blocks(c)) for c in args.corpora},
        "failures": study.failures,
    }


def _main(argv: list[str]) -> int:
    args = parse_arguments(argv)
    started = time.time()
    out = Path(args.out)
    json_path = Path(args.json) if args.json else out.with_name("paper_results.json")
    study = prepare(args)
    probes = run_probes(study, "pretrained")  # 1 (also what best_block needs)
    planned = run_cross_validations(study, probes)  # 2-3
    scratch_probes = run_probes(study, "scratch")
    manifest = run_lexical(study)  # 4
    results = paper_report.analyse(
        collect_runs(study, planned),
        probes,
        scratch_probes,
        lexical_results(study, manifest),
        nemo_text_check(study),
        study_meta(study, argv),
    )
    paper_report.write_outputs(results, out, json_path)
    print(f"paper: written {out} and {json_path} ({time.time() - started:.0f} s)", flush=True)
    if study.failures:
        print(f"paper: {len(study.failures)} run(s) failed:", file=sys.stderr)
        for failure in study.failures:
            print(f"paper:   {failure['run']}: {failure['problem']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
