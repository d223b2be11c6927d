"""Data preparation for EmoDB (Berlin Database of Emotional Speech), emotion recognition.

Layout: the wavs at the root, or in a ``wav/`` subfolder (the original release), named like
``03a01Fa.wav``: speaker ``03``, text ``a01``, emotion letter (6th character) ``F``, version
``a``. Labels come from that letter only: W angry, L bored, E disgust, A fearful, F happy,
T sad, N neutral. Protocol: leave-one-speaker-out, one fold per speaker named by its id
(``03``, ``08``, ..., 10 folds).

Usage::

    python emodb_prepare.py --data_folder=/path/to/emodb --summary
    python emodb_prepare.py --data_folder=/path/to/emodb --save_folder=results/emodb --test_fold=1

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
    "EmoDB: <root>/03a01Fa.wav or <root>/wav/03a01Fa.wav (speaker, text, emotion letter, version)"
)
EMOTIONS = {
    "W": "angry",
    "L": "bored",
    "E": "disgust",
    "A": "fearful",
    "F": "happy",
    "T": "sad",
    "N": "neutral",
}
NAME = re.compile(r"^(?P<spk>\d{2})(?P<text>[a-z]\d{2})(?P<emo>[A-Z])(?P<version>[a-z])$")


def list_utterances(data_folder: str | Path, classes: Sequence[str] | None = None) -> CorpusScan:
    """Scan an EmoDB root; returns the :class:`CorpusScan` (records, skipped, summary()).

    Example
    -------
    >>> scan = list_utterances("/path/to/emodb")  # doctest: +SKIP
    >>> scan.summary()["n_utterances"]  # doctest: +SKIP
    535
    """
    root = existing_folder(data_folder, LAYOUT)
    audio_dir = root / "wav" if (root / "wav").is_dir() else root
    files, ignored = list_audio_files(audio_dir)
    if not files:
        raise LayoutError(f"emodb: no .wav files in {audio_dir}; expected {LAYOUT}")
    scan = CorpusScan(
        "emodb", root, LAYOUT, fold_rule="leave-one-speaker-out: one fold per speaker id"
    )
    scan.ignored_resource_files = ignored
    for path in files:
        match = NAME.match(path.stem)
        if match is None:
            scan.skip(path, "file name is not EmoDB's 03a01Fa pattern")
        elif match["emo"] not in EMOTIONS:
            scan.skip(path, f"unknown EmoDB emotion letter {match['emo']!r}")
        else:
            spk = match["spk"]
            scan.add(path.stem, path, EMOTIONS[match["emo"]], spk, fold=spk)
    return scan.finalize(classes)


def prepare_emodb(
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
    """Write EmoDB train/valid/test JSON manifests for one test speaker.

    Arguments
    ---------
    data_folder : str
        EmoDB root (wavs at the root or in ``wav/``).
    save_json_train, save_json_valid, save_json_test : str
        Where the manifests go.
    test_fold : int or str
        Speaker id (``"03"``) or 1-based index into the sorted speaker folds.
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
    >>> prepare_emodb("/path/to/emodb", "train.json", "valid.json", "test.json", 1)  # doctest: +SKIP
    """
    return prepare_manifests(
        "emodb",
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
    sys.exit(run_cli("emodb", list_utterances, prepare_emodb))
