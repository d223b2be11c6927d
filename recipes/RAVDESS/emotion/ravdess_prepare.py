"""Data preparation for RAVDESS (speech part), emotion recognition.

Layout: ``<root>/Actor_01/`` .. ``Actor_24/`` (or one folder below the root, e.g.
``Audio_Speech_Actors_01-24/Actor_01``), files ``MM-VV-EE-II-SS-RR-AA.wav`` (original 48 kHz
release) or ``.flac``: modality, vocal channel, emotion, intensity, statement, repetition,
actor. Only audio-only speech (``03-01-*``) is used; other modality/channel files are skipped
with a reason. Emotions: 01 neutral, 02 calm, 03 happy, 04 sad, 05 angry, 06 fearful,
07 disgust, 08 surprised. Protocol: speaker independent, 6 folds of 4 actors by actor number
(``actors01-04``, ``actors05-08``, ..., ``actors21-24``).

Usage::

    python ravdess_prepare.py --data_folder=/path/to/ravdess --summary
    python ravdess_prepare.py --data_folder=/path/to/ravdess --save_folder=out --test_fold=1

Authors
 * qieemo contributors 2025
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path

from qieemo_lobes.manifests import prepare_manifests, run_cli
from qieemo_lobes.manifests_scan import CorpusScan, LayoutError, existing_folder, list_audio_files

LAYOUT = (
    "RAVDESS: <root>/Actor_01..Actor_24/03-01-EE-II-SS-RR-AA.wav|.flac "
    "(modality-channel-emotion-intensity-statement-repetition-actor)"
)
EMOTIONS = {
    "01": "neutral",
    "02": "calm",
    "03": "happy",
    "04": "sad",
    "05": "angry",
    "06": "fearful",
    "07": "disgust",
    "08": "surprised",
}
NAME = re.compile(r"^(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})$")
ACTORS_PER_FOLD = 4


def actor_fold(actor: int) -> str:
    """Fold of an actor: 4 consecutive actor numbers per fold.

    Example
    -------
    >>> actor_fold(1), actor_fold(8), actor_fold(24)
    ('actors01-04', 'actors05-08', 'actors21-24')
    """
    first = (actor - 1) // ACTORS_PER_FOLD * ACTORS_PER_FOLD + 1
    return f"actors{first:02d}-{first + ACTORS_PER_FOLD - 1:02d}"


def _actor_folders(root: Path) -> list[Path]:
    found = sorted(p for p in root.glob("Actor_*") if p.is_dir())
    if not found:  # the zip's own top folder, e.g. Audio_Speech_Actors_01-24/
        found = sorted(p for p in root.glob("*/Actor_*") if p.is_dir())
    return found


def list_utterances(data_folder: str | Path, classes: Sequence[str] | None = None) -> CorpusScan:
    """Scan a RAVDESS root; returns the :class:`CorpusScan` (records, skipped, summary()).

    Example
    -------
    >>> list_utterances("/path/to/ravdess").summary()["n_utterances"]  # doctest: +SKIP
    1434
    """
    root = existing_folder(data_folder, LAYOUT)
    actor_dirs = _actor_folders(root)
    if not actor_dirs:
        raise LayoutError(f"ravdess: no Actor_* folders in {root}; expected {LAYOUT}")
    scan = CorpusScan(
        "ravdess", root, LAYOUT, fold_rule="6 folds of 4 actors by actor number (1-4, ..., 21-24)"
    )
    for folder in actor_dirs:
        files, ignored = list_audio_files(folder)
        scan.ignored_resource_files += ignored
        for path in files:
            match = NAME.match(path.stem)
            if match is None:
                scan.skip(path, "file name is not RAVDESS's MM-VV-EE-II-SS-RR-AA pattern")
                continue
            modality, channel, emotion, _, _, _, actor = match.groups()
            if (modality, channel) != ("03", "01"):
                scan.skip(
                    path, f"not audio-only speech (modality {modality}, vocal channel {channel})"
                )
            elif emotion not in EMOTIONS:
                scan.skip(path, f"unknown RAVDESS emotion code {emotion}")
            elif int(actor) < 1:
                scan.skip(path, f"invalid actor number {actor}")
            else:
                scan.add(path.stem, path, EMOTIONS[emotion], actor, actor_fold(int(actor)))
    return scan.finalize(classes)


def prepare_ravdess(
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
    """Write RAVDESS train/valid/test JSON manifests for one test fold of 4 actors.

    Arguments
    ---------
    data_folder : str
        RAVDESS root holding ``Actor_01`` ... ``Actor_24``.
    save_json_train, save_json_valid, save_json_test : str
        Where the manifests go.
    test_fold : int or str
        Fold name (``"actors05-08"``) or 1-based index (1..6).
    valid_split : str
        ``"speaker"`` (whole training actors) or ``"utterance"`` (stratified random).
    valid_ratio : float
        Share of the training utterances used for validation.
    classes : list of str, optional
        Labels to keep; default all eight.
    seed : int
        Seed of the validation draw.

    Returns
    -------
    dict
        The corpus summary with the split sizes.

    Example
    -------
    >>> prepare_ravdess("/path/to/ravdess", "tr.json", "va.json", "te.json", 1)  # doctest: +SKIP
    """
    return prepare_manifests(
        "ravdess",
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
    sys.exit(run_cli("ravdess", list_utterances, prepare_ravdess))
