"""Data preparation for any other corpus described by a CSV manifest, emotion recognition.

Layout: a CSV file (pass the file, or a folder holding exactly one ``.csv``) with a header and
the columns ``path,label`` plus, optionally, ``speaker``, ``fold``, and ``start``/``stop``
(segment bounds in seconds inside the file). Relative paths resolve against the CSV's folder.
Labels are lower-cased and common spellings are mapped to the shared names (``anger`` ->
``angry``, ``happiness`` -> ``happy``, ``fear`` -> ``fearful``, ...; see ``LABEL_ALIASES``).
Utterance ids are the file names without extension; rows sharing a name get ``_r<row>``.

Folds:

- a ``fold`` column: used as given (``speaker_independent`` in the summary is true only when
  a ``speaker`` column shows no speaker in two folds);
- else a ``speaker`` column: 5 speaker-independent folds ``fold1`` .. ``fold5`` dealt by
  scikit-learn's ``GroupKFold`` (balanced sizes, deterministic);
- else 5 class-stratified random folds ``fold1`` .. ``fold5`` (fixed seed). These are NOT speaker
  independent, the summary says so (``speaker_independent: false``), every speaker is
  ``unknown``, and the validation set must then be drawn with ``valid_split="utterance"``.

Usage::

    python custom_prepare.py --data_folder=/path/to/corpus.csv --summary
    python custom_prepare.py --data_folder=/path/to/corpus.csv --save_folder=out --test_fold=1

Authors
 * qieemo contributors 2025
"""

from __future__ import annotations

import csv
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from qieemo_lobes.manifests import prepare_manifests, run_cli
from qieemo_lobes.manifests_folds import FOLD_SEED, balanced_group_folds, stratified_folds
from qieemo_lobes.manifests_scan import CorpusScan, LayoutError, existing_folder, is_resource_fork

LAYOUT = (
    "custom: a CSV (or a folder with exactly one .csv) with header path,label"
    "[,speaker][,fold][,start,stop]; relative paths resolve against the CSV's folder"
)
LABEL_ALIASES = {
    "anger": "angry",
    "ang": "angry",
    "happiness": "happy",
    "hap": "happy",
    "sadness": "sad",
    "neu": "neutral",
    "fear": "fearful",
    "fea": "fearful",
    "disgusted": "disgust",
    "dis": "disgust",
    "surprise": "surprised",
    "sur": "surprised",
    "boredom": "bored",
}
N_FOLDS = 5
UNKNOWN_SPEAKER = "unknown"


def find_csv(data_folder: str | Path) -> Path:
    """The CSV file: ``data_folder`` itself, or the only ``.csv`` inside it."""
    path = Path(data_folder)
    if path.is_file():
        return path
    folder = existing_folder(path, LAYOUT)
    found = sorted(p for p in folder.glob("*.csv") if p.is_file() and not is_resource_fork(p))
    if len(found) != 1:
        held = f"{len(found)} .csv files {[p.name for p in found]}" if found else "no .csv file"
        raise LayoutError(f"custom: {folder} holds {held}, not one; expected {LAYOUT}")
    return found[0]


def _optional_float(value: str | None) -> float | None:
    return float(value) if value not in (None, "") else None


def list_utterances(data_folder: str | Path, classes: Sequence[str] | None = None) -> CorpusScan:
    """Read a CSV manifest; returns the :class:`CorpusScan` (records, skipped, summary()).

    Example
    -------
    >>> import numpy as np, soundfile as sf
    >>> tmp = getfixture("tmp_path")
    >>> for i in range(4):
    ...     sf.write(tmp / f"c{i}.wav", np.zeros(1600, dtype="float32"), 16000)
    >>> _ = (tmp / "corpus.csv").write_text(
    ...     "path,label,speaker\\nc0.wav,Anger,a\\nc1.wav,sad,a\\nc2.wav,sad,b\\nc3.wav,sad,c\\n")
    >>> s = list_utterances(tmp).summary()
    >>> s["classes"], len(s["folds"]), s["speaker_independent"]
    ({'angry': 1, 'sad': 3}, 3, True)
    """
    csv_path = find_csv(data_folder)
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [h.strip().lower() for h in next(reader, [])]
            rows = [(reader.line_num, row) for row in reader]
    except (UnicodeDecodeError, csv.Error) as exc:
        msg = f"custom: {csv_path} is not a UTF-8 CSV ({exc}); expected {LAYOUT}"
        raise LayoutError(msg) from exc
    if not {"path", "label"} <= set(header):
        raise LayoutError(f"custom: {csv_path} has columns {header}; expected {LAYOUT}")
    has_speaker, has_fold = "speaker" in header, "fold" in header
    if has_fold:
        rule = "the CSV's fold column"
    elif has_speaker:
        rule = f"{N_FOLDS} speaker-grouped folds balanced by size (sklearn GroupKFold)"
    else:
        rule = (
            f"{N_FOLDS} class-stratified random folds, NOT speaker independent (no speaker column)"
        )
    scan = CorpusScan("custom", csv_path, LAYOUT, fold_rule=rule, speaker_independent=False)

    entries = []
    for line, row in rows:
        where = f"{csv_path}:{line}"
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            scan.skip(where, f"row has {len(row)} fields, the header {len(header)}")
            continue
        cells = {k: v.strip() for k, v in zip(header, row, strict=True)}
        empty = [col for col in ("path", "label", "speaker", "fold") if cells.get(col) == ""]
        if empty:
            scan.skip(where, f"empty {empty[0]}")
            continue
        try:
            start, stop = _optional_float(cells.get("start")), _optional_float(cells.get("stop"))
        except ValueError:
            scan.skip(
                where, f"start/stop are not numbers: {cells.get('start')}, {cells.get('stop')}"
            )
            continue
        wav = Path(cells["path"])
        wav = wav if wav.is_absolute() else csv_path.parent / wav
        label = LABEL_ALIASES.get(cells["label"].lower(), cells["label"].lower())
        speaker = cells.get("speaker", UNKNOWN_SPEAKER)
        entries.append((line, wav, label, speaker, cells.get("fold", ""), start, stop))

    stems = Counter(wav.stem for _, wav, *_ in entries)
    for line, wav, label, speaker, fold, start, stop in entries:
        utt_id = wav.stem if stems[wav.stem] == 1 else f"{wav.stem}_r{line}"
        scan.add(utt_id, wav, label, speaker, fold, start, stop)
    # Folds from every parsed row, before the class filter, so they never depend on `classes`.
    if not has_fold and has_speaker:
        scan.assign_folds(balanced_group_folds([c.speaker for c in scan.candidates], N_FOLDS))
    elif not has_fold:
        scan.assign_folds(stratified_folds([c.label for c in scan.candidates], N_FOLDS, FOLD_SEED))
    scan.finalize(classes)
    if has_speaker:
        folds_of: dict[str, set[str]] = {}
        for r in scan.records:
            folds_of.setdefault(r.speaker, set()).add(r.fold)
        scan.speaker_independent = all(len(f) == 1 for f in folds_of.values())
    return scan


def prepare_custom(
    data_folder: str | Path,
    save_json_train: str | Path,
    save_json_valid: str | Path,
    save_json_test: str | Path,
    test_fold: int | str,
    valid_split: str = "speaker",
    valid_ratio: float = 0.1,
    classes: Sequence[str] | None = None,
    seed: int = 1986,
) -> dict:
    """Write train/valid/test JSON manifests of a CSV-described corpus for one test fold.

    Arguments
    ---------
    data_folder : str
        The CSV file, or a folder holding exactly one ``.csv``.
    save_json_train, save_json_valid, save_json_test : str
        Where the manifests go.
    test_fold : int or str
        Fold name or 1-based index into the sorted fold list.
    valid_split : str
        ``"speaker"`` (whole training speakers; needs a ``speaker`` column) or ``"utterance"``.
    valid_ratio : float
        Share of the training utterances used for validation.
    classes : list of str, optional
        Labels to keep; default all.
    seed : int
        Seed of the validation draw.

    Returns
    -------
    dict
        The corpus summary with the split sizes.

    Example
    -------
    >>> prepare_custom("corpus.csv", "tr.json", "va.json", "te.json", 1)  # doctest: +SKIP
    """
    return prepare_manifests(
        "custom",
        list_utterances,
        data_folder,
        save_json_train,
        save_json_valid,
        save_json_test,
        test_fold,
        valid_split,
        valid_ratio,
        classes,
        seed,
    )


if __name__ == "__main__":
    sys.exit(run_cli("custom", list_utterances, prepare_custom))
