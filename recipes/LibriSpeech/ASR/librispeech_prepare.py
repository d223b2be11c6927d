#!/usr/bin/env python3
"""LibriSpeech data preparation: one CSV manifest per split (ID, duration, wav, spk_id, wrd).

Reads the corpus layout of http://www.openslr.org/12 (or the synthetic corpus of
``tools/make_synthetic_librispeech.py``, which has the same layout)::

    <data_folder>/<split>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac
    <data_folder>/<split>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt

and writes ``<save_folder>/<split>.csv`` for every split, plus ``<save_folder>/<merge_name>`` with
the training splits merged. ``wav`` holds absolute paths, ``duration`` seconds, ``spk_id`` the
LibriSpeech speaker number, ``wrd`` the upper-case transcript.

Utterances that cannot be used are skipped and reported, one line each (missing audio: a transcript
line without its FLAC file; missing transcript: a FLAC file without a transcript line; unreadable:
a FLAC file that libsndfile cannot open or that is empty). Preparation already done with the same
options is skipped (``prepare_options.json`` beside the manifests records them). Every file is
written through a temporary file and a rename.

As a script::

    python librispeech_prepare.py /path/to/LibriSpeech OUT_DIR \
        --train train-clean-100 --dev dev-clean --test test-clean

prints the skipped utterances and exits with status 1 if a split folder is missing or empty.

Authors
 * qieemo contributors 2026 (after SpeechBrain's recipes/LibriSpeech/librispeech_prepare.py)
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import soundfile as sf
from speechbrain.utils.logger import get_logger

from qieemo_lobes.files import atomic_open, write_text_atomic

logger = get_logger(__name__)
OPT_FILE = "prepare_options.json"
HEADER = ["ID", "duration", "wav", "spk_id", "wrd"]


class PreparationError(RuntimeError):
    """The corpus cannot be prepared at all (e.g. a split folder is missing)."""


@dataclass
class PrepareReport:
    """What ``prepare_librispeech`` did: utterances written per split and what it skipped."""

    counts: dict[str, int] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    reused: bool = False


def prepare_librispeech(
    data_folder: str,
    save_folder: str,
    tr_splits: Sequence[str] = (),
    dev_splits: Sequence[str] = (),
    te_splits: Sequence[str] = (),
    merge_lst: Sequence[str] | None = None,
    merge_name: str | None = "train.csv",
    skip_prep: bool = False,
) -> PrepareReport:
    """Write one CSV manifest per split, and the merged training manifest.

    Arguments
    ---------
    data_folder : str
        The ``LibriSpeech`` folder (it holds the split folders).
    save_folder : str
        Where the CSV files go.
    tr_splits, dev_splits, te_splits : sequence of str
        Split folder names, e.g. ``["train-clean-100"]``, ``["dev-clean"]``, ``["test-clean"]``.
    merge_lst : sequence of str, optional
        Splits merged into ``merge_name`` (default: the training splits).
    merge_name : str, optional
        File name of the merged manifest (``None``: no merged file).
    skip_prep : bool
        If True, do nothing.

    Returns
    -------
    PrepareReport
        Counts per split and one line per skipped utterance.

    Raises
    ------
    PreparationError
        If a split folder is missing or holds no usable utterance.

    Example
    -------
    >>> report = prepare_librispeech("/nonexistent", "/tmp/out", skip_prep=True)
    >>> report.counts
    {}
    """
    report = PrepareReport()
    if skip_prep:
        return report
    splits = list(dict.fromkeys([*tr_splits, *dev_splits, *te_splits]))
    merge_lst = list(tr_splits if merge_lst is None else merge_lst)
    save = Path(save_folder)
    save.mkdir(parents=True, exist_ok=True)
    conf = {
        "data_folder": str(Path(data_folder).resolve()),
        "splits": splits,
        "merge_lst": merge_lst,
        "merge_name": merge_name,
    }
    if _already_done(save, splits, merge_lst, merge_name, conf):
        logger.info("Skipping preparation, completed in a previous run (%s).", save / OPT_FILE)
        report.reused = True
        return report

    for split in splits:
        split_dir = Path(data_folder) / split
        if not split_dir.is_dir():
            raise PreparationError(f"{split_dir}: split folder not found")
        rows = _split_rows(split_dir, report.skipped)
        if not rows:
            raise PreparationError(f"{split_dir}: no usable utterance (see the lines above)")
        _write_csv(save / f"{split}.csv", rows)
        report.counts[split] = len(rows)
        logger.info("%s: %d utterances -> %s", split, len(rows), save / f"{split}.csv")

    if merge_name and merge_lst:
        merged = []
        for split in merge_lst:
            merged += _read_rows(save / f"{split}.csv")
        _write_csv(save / merge_name, merged)

    for line in report.skipped:
        logger.warning("skipped %s", line)
    write_text_atomic(json.dumps(conf, indent=2) + "\n", save / OPT_FILE)
    return report


def _split_rows(split_dir: Path, skipped: list[str]) -> list[list[str]]:
    """Manifest rows of one split, sorted by ID; problems are appended to ``skipped``."""
    texts: dict[str, str] = {}
    for trans in sorted(split_dir.glob("*/*/*.trans.txt")):
        try:
            lines = trans.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            skipped.append(f"{trans}: unreadable transcript file ({err})")
            continue
        for line in lines:
            if not line.strip():
                continue
            utt_id, _, words = line.strip().partition(" ")
            texts[utt_id] = " ".join(words.split())
    audio = {p.stem: p for p in split_dir.glob("*/*/*.flac")}

    rows = []
    for utt_id in sorted(set(texts) | set(audio)):
        path = audio.get(utt_id)
        if path is None:
            skipped.append(f"{utt_id}: missing audio (transcript line in {split_dir})")
            continue
        if not texts.get(utt_id):
            skipped.append(f"{path}: missing transcript")
            continue
        try:
            info = sf.info(str(path))
            duration = info.frames / info.samplerate
        except (RuntimeError, sf.LibsndfileError, OSError) as err:
            skipped.append(f"{path}: unreadable audio ({str(err).strip()})")
            continue
        if info.frames <= 0:
            skipped.append(f"{path}: unreadable audio (empty)")
            continue
        spk_id = utt_id.split("-")[0]
        rows.append([utt_id, f"{duration:.4f}", str(path.resolve()), spk_id, texts[utt_id]])
    return rows


def _already_done(save: Path, splits, merge_lst, merge_name, conf) -> bool:
    """True when every manifest exists and the recorded options equal ``conf``."""
    wanted = [save / f"{s}.csv" for s in splits]
    if merge_name and merge_lst:
        wanted.append(save / merge_name)
    opt = save / OPT_FILE
    if not all(p.is_file() for p in wanted) or not opt.is_file():
        return False
    try:
        return json.loads(opt.read_text()) == conf
    except (OSError, ValueError):
        return False


def _read_rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))[1:]


def _write_csv(path: Path, rows: list[list[str]]) -> None:
    with atomic_open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        writer.writerows(rows)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description="Prepare LibriSpeech CSV manifests.")
    parser.add_argument("data_folder", help="the LibriSpeech folder (holding the split folders)")
    parser.add_argument("save_folder")
    parser.add_argument("--train", nargs="*", default=["train-clean-100"])
    parser.add_argument("--dev", nargs="*", default=["dev-clean"])
    parser.add_argument("--test", nargs="*", default=["test-clean"])
    args = parser.parse_args(argv)
    try:
        report = prepare_librispeech(
            args.data_folder, args.save_folder, args.train, args.dev, args.test
        )
    except PreparationError as err:
        print(f"librispeech_prepare: {err}", file=sys.stderr)
        return 1
    if report.reused:
        print(f"already prepared in {args.save_folder}")
    for split, n in report.counts.items():
        print(f"{split}: {n} utterances")
    for line in report.skipped:
        print(f"skipped {line}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
