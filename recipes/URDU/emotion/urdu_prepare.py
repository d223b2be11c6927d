"""Data preparation for the URDU emotional speech corpus, emotion recognition.

Layout: ``<root>/Angry/``, ``Happy/``, ``Neutral/``, ``Sad/`` (folder names in any case; the
root may also be one folder above them) holding files like ``SM5_F12_A045.wav``: speaker
``SM5``, file ``F12``, emotion letter ``A`` (A angry, H happy, N neutral, S sad) and number.
The label comes from the letter; a file whose letter disagrees with its folder is skipped.
Protocol: 5 speaker-independent folds ``fold1`` .. ``fold5``: whole speakers are dealt to folds
by scikit-learn's ``GroupKFold`` (largest speaker first into the smallest fold), which balances
the fold sizes and is deterministic.

Usage::

    python urdu_prepare.py --data_folder=/path/to/URDU --summary
    python urdu_prepare.py --data_folder=/path/to/URDU --save_folder=out --test_fold=1

Authors
 * qieemo contributors 2025
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path

from qieemo_lobes.manifests import prepare_manifests, run_cli
from qieemo_lobes.manifests_folds import balanced_group_folds
from qieemo_lobes.manifests_scan import CorpusScan, LayoutError, existing_folder, list_audio_files

LAYOUT = "URDU: <root>/{Angry,Happy,Neutral,Sad}/SM5_F12_A045.wav (speaker_file_emotion+number)"
FOLDERS = {"angry": "A", "happy": "H", "neutral": "N", "sad": "S"}
EMOTIONS = {"A": "angry", "H": "happy", "N": "neutral", "S": "sad"}
NAME = re.compile(r"^(?P<spk>[A-Za-z]+\d+)_(?P<file>[A-Za-z]*\d+)_(?P<emo>[A-Za-z])(?P<num>\d+)$")
N_FOLDS = 5


def _emotion_folders(folder: Path) -> dict[str, Path]:
    def find(base: Path) -> dict[str, Path]:
        subdirs = [p for p in base.iterdir() if p.is_dir()] if base.is_dir() else []
        return {p.name.lower(): p for p in subdirs if p.name.lower() in FOLDERS}

    found = find(folder)
    if not found:  # one folder above the emotion folders, e.g. <root>/URDU-Dataset/
        for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
            found = find(sub)
            if found:
                break
    return found


def list_utterances(data_folder: str | Path, classes: Sequence[str] | None = None) -> CorpusScan:
    """Scan an URDU root; returns the :class:`CorpusScan` (records, skipped, summary()).

    Example
    -------
    >>> list_utterances("/path/to/URDU").summary()["classes"]  # doctest: +SKIP
    {'angry': 100, 'happy': 100, 'neutral': 100, 'sad': 100}
    """
    folder = existing_folder(data_folder, LAYOUT)
    emotion_dirs = _emotion_folders(folder)
    if not emotion_dirs:
        raise LayoutError(
            f"urdu: no Angry/Happy/Neutral/Sad folders in {folder}; expected {LAYOUT}"
        )
    scan = CorpusScan(
        "urdu",
        folder,
        LAYOUT,
        fold_rule=f"{N_FOLDS} speaker-grouped folds balanced by size (sklearn GroupKFold)",
    )
    for name in sorted(emotion_dirs):
        files, ignored = list_audio_files(emotion_dirs[name])
        scan.ignored_resource_files += ignored
        for path in files:
            match = NAME.match(path.stem)
            letter = match["emo"].upper() if match else ""
            if match is None:
                scan.skip(path, "file name is not URDU's SM5_F12_A045 pattern")
            elif letter not in EMOTIONS:
                scan.skip(path, f"unknown URDU emotion letter {letter!r}")
            elif letter != FOLDERS[name]:
                scan.skip(path, f"emotion letter {letter} disagrees with folder {path.parent.name}")
            else:
                scan.add(path.stem, path, EMOTIONS[letter], match["spk"].upper())
    # Folds from every parsed file, before the class filter, so they never depend on `classes`.
    scan.assign_folds(balanced_group_folds([c.speaker for c in scan.candidates], N_FOLDS))
    return scan.finalize(classes)


def prepare_urdu(
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
    """Write URDU train/valid/test JSON manifests for one test fold of speakers.

    Arguments
    ---------
    data_folder : str
        URDU root holding ``Angry/ Happy/ Neutral/ Sad/``.
    save_json_train, save_json_valid, save_json_test : str
        Where the manifests go.
    test_fold : int or str
        ``"fold3"`` or 1-based index (1..5).
    valid_split : str
        ``"speaker"`` (whole training speakers) or ``"utterance"`` (stratified random).
    valid_ratio : float
        Share of the training utterances used for validation.
    classes : list of str, optional
        Labels to keep; default all four.
    seed : int
        Seed of the validation draw.

    Returns
    -------
    dict
        The corpus summary with the split sizes.

    Example
    -------
    >>> prepare_urdu("/data/URDU", "tr.json", "va.json", "te.json", 1)  # doctest: +SKIP
    """
    return prepare_manifests(
        "urdu",
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
    sys.exit(run_cli("urdu", list_utterances, prepare_urdu))
