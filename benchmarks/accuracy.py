"""Accuracy side by side, on the same speaker-independent folds: qieemo against two baselines.

Corpora, from ``../shared/data``, read by the recipes' own prepare scripts (same utterances and
folds as their cross-validation): EmoDB (leave-one-speaker-out, 10 folds, 7 classes), RAVDESS
(6 folds of 4 actors, 8 classes), nEMO (subset, leave-one-speaker-out, 9 folds, 6 classes),
EMOVO (6 folds, 7 classes) and TurEV-DB (6 folds, 4 classes). Systems, all with whisper-base (fit window; on the corpora
named by ``--window-toggled`` also with Whisper's 30-second window) where an encoder is used:

- (a) qieemo: ``recipes/<corpus>/emotion/cross_validate.py hparams/qieemo.yaml`` (the
  recipe's default: on EmoDB and RAVDESS speed-perturbed training copies, frozen encoder on
  EmoDB, encoder block 3 retrained on RAVDESS), the same with
  per-speaker feature normalisation (transductive: it uses the test speaker's unlabelled
  utterances) and, on the corpora named by ``--tune-toggled``, ``--ablations`` and
  ``--ablations-no-mmf``, with the other encoder setting (frozen / block 3 retrained), with CMA
  toggled and without MMF (the last block alone), and with the 30-second window (frozen, no speed
  copies); on the corpora named by ``--augmented``, trained with corrupted copies of the
  training clips, one run per ``--augment-settings`` name (:data:`AUGMENTED`; their clean cost
  over seeds: ``benchmarks/augmentation_seeds.py``);
- (b) probe: standardise + logistic regression (C=0.1) on the time-mean of one block, the block
  chosen per test fold by an inner cross-validation on the training folds (honest), and the same
  on per-speaker-normalised means, and on the 30-second window's means;
- (c) openSMILE ComParE_2016 functionals + linear SVM (C chosen by inner cross-validation).

    python benchmarks/accuracy.py --fresh-cache

prints one table (WA, UA, WF1 as mean +- std over folds, and wall times) and writes it with the
command to ``benchmarks/results/accuracy.md`` (``--out``), and every number to ``accuracy.json``
beside it (per corpus: its size and each system's WA, UA and WF1 mean and std over folds, wall
time and note). ``--fresh-cache`` starts the qieemo run from an
empty feature cache, so its wall time includes feature extraction. Finished folds are not rerun:
a second call with the same ``--work`` reuses them (and their wall times).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import baselines  # noqa: E402

from qieemo_lobes import augmentation  # noqa: E402
from qieemo_lobes.files import write_json_atomic, write_text_atomic  # noqa: E402

# corpus -> (recipe folder under recipes/, folder under --data)
CORPORA = {
    "emodb": ("EmoDB", "emodb"),
    "ravdess": ("RAVDESS", "ravdess"),
    "nemo": ("nEMO", "nemo"),
    "emovo": ("EMOVO", "emovo"),
    "turev": ("TurEV-DB", "turev"),
}


# The two encoder settings compared by --tune-toggled (each recipe YAML picks one).
TUNED = ["--tune_blocks=1", "--number_of_epochs=8", "--encoder_lr=0.00003"]  # as RAVDESS
FROZEN = ["--tune_blocks=0", "--number_of_epochs=15"]
# --window-toggled: Whisper's 30-second window instead of the fit window, frozen encoder (the
# retrained blocks recompute from the clip's frames only, refused with this window) and no speed
# copies (the 30 s window costs about 15x the fit window per clip; copies would triple it).
WINDOW_30S = ["--window=30s", *FROZEN, "--speed_perturb=[100]"]


def cross_validate_command(
    corpus: str, data: Path, out: Path, cache: Path, overrides: Sequence[str]
) -> tuple[list[str], Path]:
    """``(command, folder to run it in)`` of the corpus recipe's ``cross_validate.py
    hparams/qieemo.yaml`` into ``out`` with the feature cache ``cache`` and ``overrides``."""
    recipe = REPO / "recipes" / CORPORA[corpus][0] / "emotion"
    command = [
        sys.executable,
        "cross_validate.py",
        "hparams/qieemo.yaml",
        f"--data_folder={data}",
        f"--output_folder={out}",
        f"--feature_cache={cache}",
        *overrides,
    ]
    return command, recipe


def run_qieemo(
    corpus: str, data: Path, out: Path, cache: Path, *overrides: str
) -> tuple[dict, float]:
    command, recipe = cross_validate_command(corpus, data, out, cache, overrides)
    print(f"[{corpus}] qieemo {' '.join(overrides) or '(default)'} ...", flush=True)
    code = subprocess.call(command, cwd=recipe)
    if code != 0:
        raise SystemExit(f"{corpus}: cross_validate.py failed with exit code {code}")
    summary = json.loads((out / "summary.json").read_text())
    # Folds finished by an earlier call are kept, not rerun: report the folds' own wall time.
    return summary, summary["wall_time_s"]


def block_means(
    items: list[dict], cache: Path, speaker_norm: bool, window: str = "fit"
) -> np.ndarray:
    """``(n_blocks + 1, N, D)``: time-mean of every block and of the PPG, from the feature cache
    of whisper-base with the given window."""
    from qieemo_lobes.encoders import WhisperBlocks
    from qieemo_lobes.features import FeatureCache, normalize_speaker, speaker_statistics

    identity = WhisperBlocks.identity_for("whisper-base", window)
    reader = FeatureCache(SimpleNamespace(identity=identity), cache)
    entries = {str(i): reader.entry(item["path"]) for i, item in enumerate(items)}
    stats = None
    if speaker_norm:
        stats = speaker_statistics(
            entries, {str(i): item["speaker"] for i, item in enumerate(items)}
        )
    means = []
    for i, item in enumerate(items):
        stored = torch.load(entries[str(i)], map_location="cpu", weights_only=True)
        blocks, ppg = stored["blocks"].float(), stored["ppg"].float()
        if stats is not None:
            blocks, ppg = normalize_speaker(blocks, ppg, stats[item["speaker"]])
        means.append(torch.cat([blocks.mean(1), ppg.mean(0, keepdim=True)]).numpy())
    return np.stack(means, axis=1)


def qieemo_name(hparams: dict) -> str:
    """The row name of a qieemo run, from the hyperparameters it ran with.

    >>> mild = {"use_mmf": False, "use_cma": True, "augment_copies": 1, "augment_corruptions": MILD}
    >>> qieemo_name(mild).partition(": ")[2]
    'last block, CMA, 1 corrupted copy per training clip of mild severity (SNR >= 10 dB, RT60 <= 0.6 s, MP3 >= 16 kbps, Opus 12)'
    >>> qieemo_name({**mild, "augment_corruptions": ["white:20", "gain"]}).partition(": ")[2]
    'last block, CMA, 1 corrupted copy per training clip (white:20, gain)'
    """
    parts = [f"MMF blocks {hparams['fusion_blocks']}" if hparams["use_mmf"] else "last block"]
    parts.append("CMA" if hparams["use_cma"] else "no CMA")
    if hparams.get("speaker_norm"):
        parts.append("per-speaker normalisation")
    speeds = hparams.get("speed_perturb") or [100]
    if list(speeds) != [100]:
        parts.append(f"speed perturbation {'/'.join(str(s) for s in speeds)} %")
    if int(hparams.get("augment_copies", 0)):
        copies = int(hparams["augment_copies"])
        parts.append(f"{copies} corrupted cop{'y' if copies == 1 else 'ies'} per training clip")
        corruptions = list(hparams.get("augment_corruptions") or SUITE)
        if corruptions == MILD:
            parts[-1] += " of mild severity (SNR >= 10 dB, RT60 <= 0.6 s, MP3 >= 16 kbps, Opus 12)"
        elif corruptions != SUITE:
            parts[-1] += f" ({', '.join(corruptions)})"
    encoder = "whisper-base" + ("" if hparams.get("window", "fit") == "fit" else " (30 s window)")
    tuned = int(hparams.get("tune_blocks", 0))
    if tuned:
        first = int(hparams["tune_first_block"])
        ids = ", ".join(str(b) for b in range(first, first + tuned))
        return f"(a) qieemo, {encoder}, block {ids} retrained: {', '.join(parts)}"
    return f"(a) qieemo, {encoder} frozen: {', '.join(parts)}"


def system(key: str, name: str, mean: dict, std: dict, wall: float | None, note: str = "") -> dict:
    """One row of a corpus' table: ``mean`` and ``std`` hold ``wa``, ``ua`` and ``wf1``.

    >>> system("opensmile", "(c) x", {"wa": 1, "ua": 2, "wf1": 3}, {"wa": 0, "ua": 0, "wf1": 0}, 4.0)["key"]
    'opensmile'
    """
    return {"key": key, "name": name, "mean": mean, "std": std, "wall_time_s": wall, "note": note}


def row(entry: dict) -> str:
    """A markdown table row of :func:`system`'s record.

    >>> row(system("a", "(a) qieemo", {"wa": 90, "ua": 89.1, "wf1": 89.4},
    ...     {"wa": 4.6, "ua": 6.0, "wf1": 5.1}, 616.2, "cached"))
    '| (a) qieemo | 90.0 +- 4.6 | 89.1 +- 6.0 | 89.4 +- 5.1 | 616 | cached |'
    """
    mean, std, wall = entry["mean"], entry["std"], entry["wall_time_s"]
    cells = " | ".join(f"{mean[m]:.1f} +- {std[m]:.1f}" for m in ("wa", "ua", "wf1"))
    return (
        f"| {entry['name']} | {cells} | {'' if wall is None else f'{wall:.0f}'} | {entry['note']} |"
    )


def probe_result(
    items: list[dict], y, folds, cache: Path, speaker_norm: bool, work: Path, window: str = "fit"
) -> dict:
    """The probe baseline (b), computed once per work folder like the qieemo folds: kept in
    ``work/probe[_30s][_spknorm].json`` and reused by later calls (it depends only on the cached
    features)."""
    name = (
        "probe" + ("" if window == "fit" else f"_{window}") + ("_spknorm" if speaker_norm else "")
    )
    path = work / f"{name}.json"
    if path.is_file():
        return json.loads(path.read_text())
    start = time.time()
    means = block_means(items, cache, speaker_norm, window)
    probe = baselines.best_block_probe(means, y, folds, C=0.1, select="inner")
    result = {
        "mean": probe["result"]["mean"],
        "std": probe["result"]["std"],
        "chosen": sorted({int(b) + 1 for b in probe["best_block"]}),  # 1-based block ids
        "n_blocks": int(means.shape[0]),
        "per_block": ", ".join(
            f"{k + 1}: {r['mean']['UA']:.1f}" for k, r in enumerate(probe["per_block"])
        ),
        "wall_time_s": time.time() - start,
    }
    work.mkdir(parents=True, exist_ok=True)
    write_json_atomic(result, path)
    return result


def from_baseline(result: dict) -> tuple[dict, dict]:
    mean, std = result["mean"], result["std"]
    return (
        {"wa": mean["WA"], "ua": mean["UA"], "wf1": mean["WF1"]},
        {"wa": std["WA"], "ua": std["UA"], "wf1": std["WF1"]},
    )


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", default="emodb,ravdess")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--work", default=str(REPO / "results" / "benchmarks"))
    parser.add_argument(
        "--fresh-cache", action="store_true", help="start from an empty feature cache"
    )
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "accuracy.md"))
    parser.add_argument(
        "--speaker-norm",
        default="emodb,ravdess",
        help="comma-separated corpora on which qieemo also runs with per-speaker normalisation",
    )
    parser.add_argument(
        "--ablations",
        default="",
        help="comma-separated corpora on which qieemo also runs with CMA toggled",
    )
    parser.add_argument(
        "--baselines-only", action="store_true", help="compute and print (b) and (c) only"
    )
    parser.add_argument(
        "--tune-toggled",
        default="",
        help="comma-separated corpora on which qieemo also runs with the other encoder setting "
        "than the recipe's: block 3 retrained (8 epochs) or frozen (15 epochs)",
    )
    parser.add_argument(
        "--ablations-no-mmf",
        default="",
        help="comma-separated corpora on which qieemo also runs without MMF (the last block alone)",
    )
    parser.add_argument(
        "--window-toggled",
        default="",
        help="comma-separated corpora on which qieemo (frozen, no speed copies) and the probe also "
        "run on whisper-base with the 30-second window",
    )
    parser.add_argument(
        "--augmented",
        default="",
        help="comma-separated corpora on which qieemo also trains with corrupted copies of its "
        "training clips, one run per --augment-settings (the robustness trade-off: "
        "benchmarks/robustness.py --systems qieemo,qieemo_aug)",
    )
    parser.add_argument(
        "--augment-settings",
        default="qieemo_aug",
        help="comma-separated augmented runs made on the --augmented corpora: "
        + "; ".join(f"{name}: {note}" for name, (_, note) in AUGMENTED.items()),
    )
    args = parser.parse_args(argv)
    unknown = [n for n in args.augment_settings.split(",") if n not in AUGMENTED]
    if unknown:
        parser.error(
            f"--augment-settings: unknown {', '.join(unknown)}; known: {', '.join(AUGMENTED)}"
        )
    return args


# The augmented runs: corrupted copies of every training clip, encoded once into the cache. The
# recipes' suite draws every severity (white and babble noise, reverb, telephone, MP3, Opus, gain);
# the mild one leaves out the severities that destroy most of the signal (SNR 5 and 0 dB, RT60
# 1 s, MP3 8 kbps, Opus 6 kbps).
SUITE = ["white", "babble", "reverb", "telephone", "mp3", "opus", "gain"]
MILD = list(augmentation.MILD)
AUGMENTED: dict[str, tuple[list[str], str]] = {
    "qieemo_aug": (["--augment_copies=2"], "2 corrupted copies of every training clip"),
    "qieemo_aug1": (["--augment_copies=1"], "1 corrupted copy of every training clip"),
    "qieemo_aug_mild": (
        ["--augment_copies=2", f"--augment_corruptions=[{','.join(MILD)}]"],
        "2 corrupted copies of every training clip, mild severities only",
    ),
}


def qieemo_runs(corpus: str, args: argparse.Namespace) -> list[tuple[str, list[str] | None, str]]:
    """The qieemo runs of one corpus: ``(name, overrides, note)``; ``None``: decided from the
    default run's hyperparameters (see :func:`run_overrides`).

    >>> args = parse_arguments(["--augmented", "emodb", "--augment-settings", "qieemo_aug_mild"])
    >>> [name for name, _, _ in qieemo_runs("emodb", args)]
    ['qieemo', 'qieemo_spknorm', 'qieemo_aug_mild']
    >>> " ".join(qieemo_runs("emodb", args)[-1][1])[:50]
    '--augment_copies=2 --augment_corruptions=[white:20'
    >>> [name for name, _, _ in qieemo_runs("emovo", args)]
    ['qieemo']
    """
    if args.baselines_only:
        return []
    runs: list[tuple[str, list[str] | None, str]] = [("qieemo", [], "")]
    if corpus in args.speaker_norm.split(","):
        runs.append(("qieemo_spknorm", None, "transductive (test speakers' audio)"))
    if corpus in args.ablations.split(","):
        runs.append(("qieemo_cma_toggled", None, "ablation"))
    if corpus in args.tune_toggled.split(","):
        runs.append(("qieemo_tune_toggled", None, "other encoder setting"))
    if corpus in args.ablations_no_mmf.split(","):
        runs.append(("qieemo_no_mmf", ["--use_mmf=False"], "ablation"))
    if corpus in args.window_toggled.split(","):
        runs.append(("qieemo_30s_frozen", WINDOW_30S, ""))
    if corpus in args.augmented.split(","):
        runs.extend((name, *AUGMENTED[name]) for name in args.augment_settings.split(","))
    return runs


def run_overrides(name: str, overrides: list[str] | None, default_hparams: dict) -> list[str]:
    """The overrides of a qieemo run, those set by the recipe's default run resolved.

    >>> run_overrides("qieemo_cma_toggled", None, {"use_cma": False})
    ['--use_cma=True']
    >>> run_overrides("qieemo_spknorm", None, {"tune_blocks": 1})[:2]
    ['--speaker_norm=True', '--tune_blocks=0']
    """
    if name == "qieemo_spknorm":  # on the frozen encoder (the recipe refuses both)
        tuned = int(default_hparams.get("tune_blocks", 0))
        return ["--speaker_norm=True", *(FROZEN if tuned else [])]
    if name == "qieemo_cma_toggled":  # the other CMA setting than the recipe's default
        return [f"--use_cma={not default_hparams.get('use_cma', True)}"]
    if name == "qieemo_tune_toggled":
        return FROZEN if int(default_hparams.get("tune_blocks", 0)) else TUNED
    return list(overrides or [])


def measure_qieemo(
    corpus: str, data: Path, items: list[dict], args: argparse.Namespace, readers: dict
) -> list[dict]:
    """(a): every qieemo run of the corpus (finished folds reused), one :func:`system` each."""
    work = Path(args.work).resolve()
    cache = work / "feature_cache"
    systems: list[dict] = []
    default_hparams: dict = {}
    for name, overrides, note in qieemo_runs(corpus, args):
        overrides = run_overrides(name, overrides, default_hparams)
        marker = work / corpus / name / "started_with_empty_cache"
        reader = readers["30s" if name == "qieemo_30s_frozen" else "fit"]
        first = name in ("qieemo", "qieemo_30s_frozen")  # the first run of its window
        if first and not any(reader.entry(i["path"]).exists() for i in items):
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()  # this run's wall time includes the corpus' feature extraction
        summary, wall = run_qieemo(corpus, data, work / corpus / name, cache, *overrides)
        default_hparams = default_hparams or summary["hparams"]
        if first:
            note = "feature extraction included" if marker.exists() else "features cached"
        label = qieemo_name(summary["hparams"])
        systems.append(system(name, label, summary["mean"], summary["std"], wall, note))
    return systems


def measure_baselines(corpus: str, items: list[dict], args: argparse.Namespace) -> list[dict]:
    """(b) the probe (plain, per-speaker normalised, 30 s window when asked) and (c) openSMILE."""
    work = Path(args.work).resolve()
    y = np.array([item["label"] for item in items])
    folds = np.array([item["fold"] for item in items])
    probes = [("fit", False), ("fit", True)]  # (window, per-speaker normalisation)
    if corpus in args.window_toggled.split(","):
        probes.append(("30s", False))
    systems = []
    cache = work / "feature_cache"
    for window, speaker_norm in probes:
        probe = probe_result(items, y, folds, cache, speaker_norm, work / corpus, window)
        key = "probe" + ("_spknorm" if speaker_norm else "") + ("" if window == "fit" else "_30s")
        name = (
            "(b) probe, best block by inner CV"
            + (" + per-speaker normalisation" if speaker_norm else "")
            + ("" if window == "fit" else ", 30 s window")
        )
        note = (
            f"blocks chosen per fold: {probe['chosen']} ({probe['n_blocks']} = final "
            f"output); UA of each block's probe: {probe['per_block']}"
        )
        systems.append(system(key, name, *from_baseline(probe), probe["wall_time_s"], note))
    start = time.time()
    paths, cache_file = [item["path"] for item in items], work / f"opensmile_{corpus}.npz"
    cached = baselines.opensmile_cached(paths, cache_file)
    features = baselines.opensmile_features(paths, cache_file)
    svm = baselines.svm_baseline(features, y, folds)
    note = "features cached" if cached else "feature extraction included"
    name = "(c) openSMILE ComParE_2016 + linear SVM"
    systems.append(system("opensmile", name, *from_baseline(svm), time.time() - start, note))
    return systems


def corpus_table(corpus: str, record: dict) -> list[str]:
    """The markdown table of one corpus' :func:`system` records."""
    return [
        f"### {CORPORA[corpus][0]} ({record['n_utterances']} utterances, {record['n_folds']} "
        f"folds, {record['n_classes']} classes)",
        "",
        "| system | WA | UA | WF1 | wall time (s) | note |",
        "|---|---|---|---|---|---|",
        *(row(entry) for entry in record["systems"]),
    ]


def header(argv: list[str] | None) -> list[str]:
    """The report's title, command, date and machine."""
    return [
        "# Accuracy: qieemo against baselines, same folds",
        "",
        f"Command: `python benchmarks/accuracy.py {' '.join(sys.argv[1:] if argv is None else argv)}`",
        f"Date: {time.strftime('%Y-%m-%d')}; machine: {os.cpu_count()} CPU cores, no GPU; torch {torch.__version__}; "
        f"torch threads {torch.get_num_threads()}; 1-minute load average at the end {os.getloadavg()[0]:.1f}.",
        "Metrics in percent, mean +- std over folds. WA accuracy, UA mean per-class recall, WF1 support-weighted F1.",
        "EmoDB here is the altered shared copy (22.05 kHz, every clip cut or padded to 2.000 s) and nEMO",
        "a subset (2243 of 4481 utterances, 45 of 90 sentences): not comparable with published numbers.",
        "",
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    work = Path(args.work).resolve()  # the recipes run in their own folders
    cache = work / "feature_cache"
    if args.fresh_cache:
        shutil.rmtree(cache, ignore_errors=True)
        for corpus in args.corpora.split(","):
            shutil.rmtree(work / corpus, ignore_errors=True)

    from qieemo_lobes.encoders import WhisperBlocks
    from qieemo_lobes.features import FeatureCache

    readers = {
        window: FeatureCache(
            SimpleNamespace(identity=WhisperBlocks.identity_for("whisper-base", window)), cache
        )
        for window in ("fit", "30s")
    }
    lines: list[str] = []
    records: dict[str, dict] = {}
    for corpus in args.corpora.split(","):
        data = Path(args.data) / CORPORA[corpus][1]
        items = baselines.corpus_items(corpus, data)
        record = {
            "name": CORPORA[corpus][0],
            "n_utterances": len(items),
            "n_folds": len({item["fold"] for item in items}),
            "n_classes": len({item["label"] for item in items}),
            "systems": measure_qieemo(corpus, data, items, args, readers)
            + measure_baselines(corpus, items, args),
        }
        records[corpus] = record
        table = corpus_table(corpus, record)
        print("\n".join(table), flush=True)
        lines += table + [""]

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    top = header(argv)
    write_text_atomic("\n".join(top + lines), out)
    command = top[2].removeprefix("Command: `").removesuffix("`")
    write_json_atomic({"command": command, "corpora": records}, out.with_suffix(".json"))
    print(f"written {out} and {out.with_suffix('.json').name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
