"""qieemo on the cross-corpus matrix (``benchmarks/cross_corpus.py``): one run of the custom
recipe (``recipes/custom/emotion/train.py hparams/qieemo.yaml``) per split.

- :func:`manifest_text`, :func:`write_manifest`: the recipe's CSV of the split's corpora (fold =
  corpus), one file per content;
- :func:`qieemo_arguments`: the run's arguments (test fold, classes, feature cache, overrides);
- :func:`finished_run`: the metrics of a run finished with the same settings (reused);
- :func:`launch`: runs ``train.py`` (tests replace it here: ``cross_corpus_qieemo.launch``);
- :func:`run_qieemo`: one split's run and its record.

``cross_corpus.py`` re-exports these names.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from corpora_classes import Split
from cross_corpus_data import split_data

from qieemo_lobes.files import write_json_atomic, write_text_atomic

# A JSON object from a file, or None when it is missing, unreadable or not an object.
from qieemo_lobes.run_settings import read_settings_file as read_json_object

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "custom" / "emotion"
HPARAMS = RECIPE / "hparams" / "qieemo.yaml"


def manifest_text(utterances: dict[str, list[dict]], corpora: Sequence[str]) -> str:
    """The custom recipe's CSV (``path,label,speaker,fold``; fold = corpus) of ``corpora``.

    Example
    -------
    >>> u = {"emodb": [{"path": "/d/a,b.wav", "label": "sad", "speaker": "emodb_03"}]}
    >>> print(manifest_text(u, ["emodb"]), end="")
    path,label,speaker,fold
    "/d/a,b.wav",sad,emodb_03,emodb
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "label", "speaker", "fold"])
    for corpus in corpora:
        for u in utterances[corpus]:
            writer.writerow([u["path"], u["label"], u["speaker"], corpus])
    return buffer.getvalue()


def write_manifest(
    utterances: dict[str, list[dict]], split: Split, turev_calm: str, folder: Path
) -> Path:
    """The CSV of the split's corpora under ``folder``, named by its corpora, the TurEV-DB mode
    (when TurEV-DB is in it) and its content: another content is another file, so a run never
    resumes on a manifest that changed (its recorded ``data_folder`` differs)."""
    text = manifest_text(utterances, split.corpora)
    digest = hashlib.sha1(text.encode()).hexdigest()[:10]
    mode = f"_turev-calm-{turev_calm}" if "turev" in split.corpora else ""
    path = folder / f"{'+'.join(split.corpora)}{mode}.{digest}.csv"
    if not path.is_file():
        write_text_atomic(text, path)
    return path


def qieemo_arguments(
    manifest: Path,
    out: Path,
    split: Split,
    classes: Sequence[str],
    cache: Path,
    overrides: Sequence[str],
) -> list[str]:
    """The arguments of ``train.py hparams/qieemo.yaml`` for one split.

    Example
    -------
    >>> qieemo_arguments(Path("/m.csv"), Path("/o"), Split(("emodb",), "nemo"), ["sad"],
    ...                  Path("/c"), ["--use_cma=False"])  # doctest: +NORMALIZE_WHITESPACE
    ['--data_folder=/m.csv', '--output_folder=/o', '--test_fold=nemo', '--classes=["sad"]',
     '--n_classes=1', '--feature_cache=/c', '--speed_perturb=[100]', '--use_cma=False']
    """
    arguments = [
        f"--data_folder={manifest}",
        f"--output_folder={out}",
        f"--test_fold={split.test}",
        f"--classes={json.dumps(list(classes))}",
        f"--n_classes={len(classes)}",
        f"--feature_cache={cache}",
    ]
    if not any(o.startswith("--speed_perturb=") for o in overrides):
        arguments.append("--speed_perturb=[100]")
    return arguments + list(overrides)


def finished_run(out: Path, arguments: Sequence[str]) -> dict | None:
    """The test metrics of a finished run in ``out`` made with these arguments' settings, else
    None (not finished, or made with other settings: ``train.py`` then says which)."""
    from qieemo_lobes.run_settings import resolved_settings, settings_difference

    metrics = read_json_object(out / "test_metrics.json")
    if metrics is None or not all(
        key in metrics for key in ("wa", "ua", "wf1", "confusion", "classes", "n_test")
    ):
        return None
    recorded = read_json_object(out / "run_settings.json")
    if recorded is None or settings_difference(recorded, resolved_settings(HPARAMS, arguments)):
        return None
    return metrics


def launch(arguments: Sequence[str], log: Path) -> int:
    """Run ``train.py hparams/qieemo.yaml ARGUMENTS`` (output in ``log``); its exit status.

    The run stops with this process, however it ends (Ctrl-C, SIGTERM, even SIGKILL), through
    the cross-validation's child handling.
    """
    from qieemo_lobes.fold_runs import run_child

    command = [sys.executable, str(RECIPE / "train.py"), str(HPARAMS), *arguments]
    with open(log, "w") as fh:
        return run_child(command, fh)


def _last_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines()]
    except OSError:
        return ""
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or [line for line in lines if line] or [""])[-1]


def run_qieemo(
    split: Split,
    turev_calm: str,
    utterances: dict[str, list[dict]],
    work: Path,
    cache: Path,
    overrides: Sequence[str],
    train: Callable[[Sequence[str], Path], int] | None = None,
) -> dict:
    """One split's qieemo run (reused when finished with the same settings); its record.

    ``train(arguments, log)`` runs ``train.py`` and returns its exit status (default
    :func:`launch`).
    """
    train = train or launch
    name = split.name(turev_calm)
    _, _, classes = split_data(split, utterances)
    manifest = write_manifest(utterances, split, turev_calm, work / "manifests")
    out = work / "qieemo" / name
    arguments = qieemo_arguments(manifest, out, split, classes, cache, overrides)
    record = {
        "system": "qieemo",
        "train": list(split.train),
        "test": split.test,
        "folder": str(out),
    }
    metrics = finished_run(out, arguments)
    reused = metrics is not None
    if reused:
        print(f"qieemo {name}: finished earlier, kept", flush=True)
    else:
        out.mkdir(parents=True, exist_ok=True)
        print(f"qieemo {name}: training ({out / 'stdout.log'}) ...", flush=True)
        start = time.time()
        code = train(arguments, out / "stdout.log")
        metrics = finished_run(out, arguments)
        if code != 0 or metrics is None:
            problem = _last_line(out / "stdout.log") or f"exit status {code}"
            print(f"qieemo {name}: FAILED: {problem}", file=sys.stderr, flush=True)
            return {**record, "failed": f"exit status {code}: {problem}"}
        write_json_atomic({"wall_time_s": time.time() - start}, out / "wall_time.json")
    wall = (read_json_object(out / "wall_time.json") or {}).get("wall_time_s")
    record.update(
        {
            key: metrics.get(key)
            for key in ("classes", "n_train", "n_valid", "n_test", "wa", "ua", "wf1", "macro_f1")
        }
    )
    record.update({"confusion": metrics["confusion"], "wall_time_s": wall, "reused": reused})
    if not reused:
        print(f"qieemo {name}: UA {record['ua']:.1f} ({wall:.0f} s)", flush=True)
    return record
