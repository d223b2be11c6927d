"""Data preparation for EMOVO (Italian emotional speech), emotion recognition.

Layout: one folder per speaker, ``<root>/f1/`` .. ``f3/``, ``m1/`` .. ``m3/`` (folder names in
any case; the root may also be one folder above them, e.g. the release's ``EMOVO/``, whose
``documents/`` folder is ignored), holding ``<emotion>-<speaker>-<sentence>.wav`` (the original
48 kHz release, stereo in places) or ``.flac``, e.g. ``dis-f1-b1.wav``. Labels come from the
emotion code: dis disgust, gio happy, neu neutral, pau fearful, rab angry, sor surprised,
tri sad. A file whose name does not parse, whose emotion code is unknown or whose speaker
differs from its folder is skipped with the reason. Protocol: leave-one-speaker-out, one fold
per speaker named by its id (``f1`` ... ``m3``, 6 folds).

Usage::

    python emovo_prepare.py --data_folder=/path/to/EMOVO --summary
    python emovo_prepare.py --data_folder=/path/to/EMOVO --save_folder=results/emovo --test_fold=1

Authors
 * qieemo contributors 2025
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from qieemo_lobes.manifests import prepare_manifests, run_cli
from qieemo_lobes.manifests_scan import CorpusScan, LayoutError, existing_folder, list_audio_files

LAYOUT = (
    "EMOVO: <root>/{f1,f2,f3,m1,m2,m3}/<emotion>-<speaker>-<sentence>.wav|.flac "
    "(e.g. f1/dis-f1-b1.wav)"
)
EMOTIONS = {
    "dis": "disgust",
    "gio": "happy",
    "neu": "neutral",
    "pau": "fearful",
    "rab": "angry",
    "sor": "surprised",
    "tri": "sad",
}
SPEAKER_FOLDER = re.compile(r"^[fm]\d+$", re.IGNORECASE)
NAME = re.compile(r"^(?P<emo>[a-z]+)-(?P<spk>[fm]\d+)-(?P<sentence>[a-z]+\d+)$", re.IGNORECASE)


def parse_name(stem: str) -> tuple[str, str, str] | None:
    """``(emotion code, speaker, sentence)`` of an EMOVO file name, lower-cased, or None.

    Example
    -------
    >>> parse_name("dis-f1-b1"), parse_name("Rab-M3-n5"), parse_name("dis_f1_b1")
    (('dis', 'f1', 'b1'), ('rab', 'm3', 'n5'), None)
    """
    match = NAME.match(stem)
    if match is None:
        return None
    return match["emo"].lower(), match["spk"].lower(), match["sentence"].lower()


def speaker_folders(folder: Path) -> dict[str, Path]:
    """``{speaker: folder}`` of the speaker folders in ``folder``, or in one of its subfolders."""

    def find(base: Path) -> dict[str, Path]:
        subdirs = sorted(p for p in base.iterdir() if p.is_dir())
        return {p.name.lower(): p for p in subdirs if SPEAKER_FOLDER.match(p.name)}

    found = find(folder)
    if not found:  # one folder above the speaker folders, e.g. <root>/EMOVO/
        for sub in sorted(p for p in folder.iterdir() if p.is_dir() and p.name != "__MACOSX"):
            found = find(sub)
            if found:
                break
    return found


def list_utterances(data_folder: str | Path, classes: Sequence[str] | None = None) -> CorpusScan:
    """Scan an EMOVO root; returns the :class:`CorpusScan` (records, skipped, summary()).

    Example
    -------
    >>> list_utterances("/path/to/EMOVO").summary()["classes"]["angry"]  # doctest: +SKIP
    84
    """
    folder = existing_folder(data_folder, LAYOUT)
    speakers = speaker_folders(folder)
    if not speakers:
        raise LayoutError(f"emovo: no speaker folders (f1 .. m3) in {folder}; expected {LAYOUT}")
    root = next(iter(speakers.values())).parent
    scan = CorpusScan(
        "emovo", root, LAYOUT, fold_rule="leave-one-speaker-out: one fold per speaker"
    )
    for speaker in sorted(speakers):
        files, ignored = list_audio_files(speakers[speaker])
        scan.ignored_resource_files += ignored
        for path in files:
            parsed = parse_name(path.stem)
            if parsed is None:
                scan.skip(path, "file name is not EMOVO's <emotion>-<speaker>-<sentence> pattern")
                continue
            code, spk, sentence = parsed
            if code not in EMOTIONS:
                scan.skip(path, f"unknown EMOVO emotion code {code!r}")
            elif spk != speaker:
                scan.skip(path, f"speaker {spk} in the file name, but in folder {path.parent.name}")
            else:
                scan.add(f"{code}-{spk}-{sentence}", path, EMOTIONS[code], spk, fold=spk)
    scan.finalize(classes)
    scan.extra["n_sentences"] = len({r.utt_id.rsplit("-", 1)[1] for r in scan.records})
    scan.extra["audio_formats"] = dict(
        sorted(Counter(Path(r.wav).suffix for r in scan.records).items())
    )
    return scan


def prepare_emovo(
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
    """Write EMOVO train/valid/test JSON manifests for one test speaker.

    Arguments
    ---------
    data_folder : str
        EMOVO root holding the speaker folders ``f1`` .. ``m3``.
    save_json_train, save_json_valid, save_json_test : str
        Where the manifests go.
    test_fold : int or str
        Speaker id (``"m2"``) or 1-based index into the sorted speaker folds (1..6).
    valid_split : str
        ``"speaker"`` (whole training speakers) or ``"utterance"`` (stratified random).
    valid_ratio : float
        Share of the training utterances used for validation.
    classes : list of str, optional
        Labels to keep (e.g. ``["angry", "happy", "neutral", "sad"]``); default all seven.
    seed : int
        Seed of the validation draw.

    Returns
    -------
    dict
        The corpus summary with the split sizes.

    Example
    -------
    >>> prepare_emovo("/path/to/EMOVO", "train.json", "valid.json", "test.json", 1)  # doctest: +SKIP
    """
    return prepare_manifests(
        "emovo",
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
    sys.exit(run_cli("emovo", list_utterances, prepare_emovo))
