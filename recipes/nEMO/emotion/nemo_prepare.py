"""Data preparation for nEMO (Polish emotional speech), emotion recognition.

Layout: ``<root>/data.tsv`` and ``<root>/samples/`` (the root may also be one folder above
them, e.g. a clone's ``nEMO/``). ``data.tsv`` is tab separated with the header ``file_id,
emotion, raw_text, normalized_text, speaker_id, gender, age``; ``file_id`` names the original
24 kHz WAV (``SB0_anger_12.wav``: speaker, emotion, sentence number) and ``speaker_id`` carries
leading spaces. Each row is resolved to whichever of ``samples/<stem>.wav`` and
``samples/<stem>.flac`` exists (the name the table gives first), so the original release (4481
rows, WAV) and a FLAC copy whose table was filtered to the files present both read as they
are. Labels and speakers come from the table: anger angry, fear fearful, happiness happy,
neutral neutral, sadness sad, surprised surprised. A row whose audio is missing, whose emotion
is unknown or whose file name contradicts its speaker or emotion columns is skipped with the
reason, and so is an audio file no row names. Protocol: leave-one-speaker-out, one fold per
speaker named by its id (9 folds).

Each utterance's transcript (``raw_text``) is kept in :attr:`NemoScan.transcripts`
(``{utt_id: text}``) for text experiments; the manifests do not carry it.

Usage::

    python nemo_prepare.py --data_folder=/path/to/nEMO --summary
    python nemo_prepare.py --data_folder=/path/to/nEMO --save_folder=results/nemo --test_fold=1

Authors
 * qieemo contributors 2025
"""

from __future__ import annotations

import csv
import re
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qieemo_lobes.manifests import prepare_manifests, run_cli
from qieemo_lobes.manifests_scan import (
    AUDIO_EXTENSIONS,
    CorpusScan,
    LayoutError,
    existing_folder,
    list_audio_files,
)

LAYOUT = (
    "nEMO: <root>/data.tsv (tab separated: file_id, emotion, raw_text, normalized_text, "
    "speaker_id, gender, age) and <root>/samples/<speaker>_<emotion>_<n>.wav|.flac"
)
TABLE = "data.tsv"
AUDIO_DIR = "samples"
REQUIRED_COLUMNS = ("file_id", "emotion", "speaker_id")
EMOTIONS = {
    "anger": "angry",
    "fear": "fearful",
    "happiness": "happy",
    "neutral": "neutral",
    "sadness": "sad",
    "surprised": "surprised",
}
NAME = re.compile(r"^(?P<spk>[A-Za-z]+\d+)_(?P<emo>[A-Za-z]+)_(?P<sentence>\d+)$")


class NemoScan(CorpusScan):
    """A :class:`CorpusScan` that also keeps the transcript of every kept utterance.

    Example
    -------
    >>> scan = NemoScan("nemo", "/data/nEMO", LAYOUT, fold_rule="one fold per speaker")
    >>> scan.transcripts
    {}
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.transcripts: dict[str, str] = {}


def find_root(folder: Path) -> Path | None:
    """The folder holding ``data.tsv``: ``folder`` itself or one of its subfolders, else None."""
    if not folder.is_dir():
        return None
    if (folder / TABLE).is_file():
        return folder
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and p.name != "__MACOSX"):
        if (sub / TABLE).is_file():
            return sub
    return None


def audio_candidates(samples: Path, file_id: str) -> list[Path]:
    """Where the audio of a ``file_id`` may be: the named extension first, then the others.

    Example
    -------
    >>> [p.name for p in audio_candidates(Path("samples"), "SB0_anger_12.wav")]
    ['SB0_anger_12.wav', 'SB0_anger_12.flac']
    >>> [p.name for p in audio_candidates(Path("samples"), "SB0_anger_12")]
    ['SB0_anger_12.wav', 'SB0_anger_12.flac']
    """
    name = Path(file_id)
    suffix = name.suffix.lower()
    if suffix in AUDIO_EXTENSIONS:
        stem, order = name.stem, (suffix, *(e for e in AUDIO_EXTENSIONS if e != suffix))
    else:
        stem, order = name.name, AUDIO_EXTENSIONS
    return [samples / f"{stem}{ext}" for ext in order]


def read_table(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and the ``(line number, fields)`` rows of ``data.tsv`` (blank lines left out).

    Fields are split on tabs only (quotes are text, as in the release) and stripped; trailing
    empty fields are dropped. A table that cannot be read raises :class:`LayoutError` naming
    the file.
    """
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            lines = list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    except UnicodeDecodeError as exc:
        raise LayoutError(
            f"nemo: {path}: not UTF-8 text ({exc.reason}); expected {LAYOUT}"
        ) from exc
    except OSError as exc:
        raise LayoutError(
            f"nemo: {path}: cannot be read ({exc.strerror}); expected {LAYOUT}"
        ) from exc
    if not lines:
        raise LayoutError(f"nemo: {path} is empty; expected {LAYOUT}")
    header = [h.strip().lower() for h in lines[0]]
    rows = []
    for n, fields in enumerate(lines[1:], start=2):
        stripped = [f.strip() for f in fields]
        while stripped and not stripped[-1]:
            stripped.pop()
        if stripped:
            rows.append((n, stripped))
    return header, rows


def list_utterances(data_folder: str | Path, classes: Sequence[str] | None = None) -> NemoScan:
    """Scan an nEMO root; returns the :class:`NemoScan` (records, skipped, transcripts, summary()).

    Example
    -------
    >>> scan = list_utterances("/path/to/nEMO")  # doctest: +SKIP
    >>> scan.summary()["n_utterances"], len(scan.summary()["folds"])  # doctest: +SKIP
    (4481, 9)
    """
    folder = existing_folder(data_folder, LAYOUT)
    root = find_root(folder)
    if root is None:
        raise LayoutError(f"nemo: no {TABLE} in {folder} or its subfolders; expected {LAYOUT}")
    table, samples = root / TABLE, root / AUDIO_DIR
    if not samples.is_dir():
        raise LayoutError(f"nemo: no {AUDIO_DIR}/ folder beside {table}; expected {LAYOUT}")
    header, rows = read_table(table)
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise LayoutError(
            f"nemo: {table}: header {','.join(header)} lacks {','.join(missing)}; expected {LAYOUT}"
        )
    col = {name: header.index(name) for name in header}
    scan = NemoScan("nemo", root, LAYOUT, fold_rule="leave-one-speaker-out: one fold per speaker")
    files, scan.ignored_resource_files = list_audio_files(samples)
    on_disk = set(files)
    used: dict[Path, Path] = {}  # every candidate path of a row -> the file used for it
    texts: dict[str, str] = {}
    for line, fields in rows:
        where = f"{TABLE}:{line}"
        fields += [""] * (len(header) - len(fields))  # empty trailing fields were dropped
        file_id = fields[col["file_id"]]
        if not file_id:
            scan.skip(table, f"empty file_id ({where})")
            continue
        candidates = audio_candidates(samples, file_id)
        audio = next((p for p in candidates if p in on_disk), None)
        if audio is None:
            scan.skip(candidates[0], f"audio file not found ({looked_for(candidates)})")
            continue
        used.update(dict.fromkeys(candidates, audio))
        emotion, speaker = fields[col["emotion"]].lower(), fields[col["speaker_id"]]
        match = NAME.match(audio.stem)
        if len(fields) != len(header):
            scan.skip(audio, f"{len(fields)} fields, expected {len(header)} ({where})")
        elif not speaker:
            scan.skip(audio, f"empty speaker_id ({where})")
        elif emotion not in EMOTIONS:
            scan.skip(audio, f"unknown nEMO emotion {emotion!r} ({where})")
        elif match and (match["spk"], match["emo"].lower()) != (speaker, emotion):
            scan.skip(
                audio,
                f"file name says speaker {match['spk']}, emotion {match['emo']}; "
                f"{where} says speaker {speaker}, emotion {emotion}",
            )
        else:
            scan.add(audio.stem, audio, EMOTIONS[emotion], speaker, fold=speaker)
            if "raw_text" in col:
                texts.setdefault(audio.stem, fields[col["raw_text"]])
    for path in files:
        if path not in used:
            scan.skip(path, f"not listed in {TABLE} (no label)")
        elif used[path] != path:
            scan.skip(path, f"same utterance as {used[path].name}, which is used")
    scan.finalize(classes)
    scan.transcripts = {r.utt_id: texts[r.utt_id] for r in scan.records if r.utt_id in texts}
    scan.extra["n_sentences"] = len(set(scan.transcripts.values()))
    scan.extra["audio_formats"] = dict(
        sorted(Counter(Path(r.wav).suffix for r in scan.records).items())
    )
    return scan


def looked_for(candidates: Sequence[Path]) -> str:
    """``"no X.wav or X.flac"``: the names looked for, for a skip reason.

    Example
    -------
    >>> looked_for([Path("s/a.wav"), Path("s/a.flac")])
    'no a.wav or a.flac'
    """
    return "no " + " or ".join(p.name for p in candidates)


def prepare_nemo(
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
    """Write nEMO train/valid/test JSON manifests for one test speaker.

    Arguments
    ---------
    data_folder : str
        nEMO root holding ``data.tsv`` and ``samples/``.
    save_json_train, save_json_valid, save_json_test : str
        Where the manifests go.
    test_fold : int or str
        Speaker id (``"SB0"``) or 1-based index into the sorted speaker folds (1..9).
    valid_split : str
        ``"speaker"`` (whole training speakers) or ``"utterance"`` (stratified random).
    valid_ratio : float
        Share of the training utterances used for validation.
    classes : list of str, optional
        Labels to keep (e.g. ``["angry", "happy", "neutral", "sad"]``); default all six.
    seed : int
        Seed of the validation draw.

    Returns
    -------
    dict
        The corpus summary with the split sizes.

    Example
    -------
    >>> prepare_nemo("/path/to/nEMO", "train.json", "valid.json", "test.json", 1)  # doctest: +SKIP
    """
    return prepare_manifests(
        "nemo",
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
    sys.exit(run_cli("nemo", list_utterances, prepare_nemo))
