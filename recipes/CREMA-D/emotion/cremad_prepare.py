"""Data preparation for CREMA-D, emotion recognition.

Layout: ``<root>/AudioWAV/1001_DFA_ANG_XX.wav`` (or the ``AudioWAV`` folder itself; ``.flac``
copies are read too): actor ``1001`` .. ``1091``, sentence code, emotion ANG angry, DIS disgust,
FEA fearful, HAP happy, NEU neutral, SAD sad, intensity LO/MD/HI/XX. Unreadable or empty clips are
skipped with a reason. Protocol: speaker independent, 5 folds grouped by actor: the sorted actor
ids are cut into 5 contiguous runs whose sizes differ by at most one actor (91 actors:
19, 18, 18, 18, 18), each fold named ``actors<first>-<last>`` (``actors1001-1019``, ...).

Usage::

    python cremad_prepare.py --data_folder=/path/to/CREMA-D --summary
    python cremad_prepare.py --data_folder=/path/to/CREMA-D --save_folder=out --test_fold=1

Authors
 * qieemo contributors 2025
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path

from qieemo_lobes.manifests import prepare_manifests, run_cli
from qieemo_lobes.manifests_folds import contiguous_group_folds
from qieemo_lobes.manifests_scan import CorpusScan, LayoutError, existing_folder, list_audio_files

LAYOUT = "CREMA-D: <root>/AudioWAV/1001_DFA_ANG_XX.wav (actor_sentence_emotion_intensity)"
EMOTIONS = {
    "ANG": "angry",
    "DIS": "disgust",
    "FEA": "fearful",
    "HAP": "happy",
    "NEU": "neutral",
    "SAD": "sad",
}
NAME = re.compile(r"^(?P<actor>\d{4})_(?P<sentence>[A-Z]{3})_(?P<emo>[A-Z]{3})_(?P<level>[A-Z]+)$")
N_FOLDS = 5


def list_utterances(data_folder: str | Path, classes: Sequence[str] | None = None) -> CorpusScan:
    """Scan a CREMA-D root; returns the :class:`CorpusScan` (records, skipped, summary()).

    Example
    -------
    >>> len(list_utterances("/path/to/CREMA-D").summary()["folds"])  # doctest: +SKIP
    5
    """
    folder = existing_folder(data_folder, LAYOUT)
    audio_dir = folder / "AudioWAV" if (folder / "AudioWAV").is_dir() else folder
    files, ignored = list_audio_files(audio_dir)
    if not files:
        raise LayoutError(f"cremad: no audio files in {audio_dir}; expected {LAYOUT}")
    scan = CorpusScan(
        "cremad",
        folder,
        LAYOUT,
        fold_rule=f"{N_FOLDS} folds: sorted actor ids cut into {N_FOLDS} contiguous runs",
    )
    scan.ignored_resource_files = ignored
    for path in files:
        match = NAME.match(path.stem)
        if match is None:
            scan.skip(path, "file name is not CREMA-D's 1001_DFA_ANG_XX pattern")
        elif match["emo"] not in EMOTIONS:
            scan.skip(path, f"unknown CREMA-D emotion code {match['emo']}")
        else:
            scan.add(path.stem, path, EMOTIONS[match["emo"]], match["actor"])
    # Folds from every parsed clip, before the class filter, so they never depend on `classes`.
    scan.assign_folds(
        contiguous_group_folds((c.speaker for c in scan.candidates), N_FOLDS, "actors")
    )
    return scan.finalize(classes)


def prepare_cremad(
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
    """Write CREMA-D train/valid/test JSON manifests for one test fold of actors.

    Arguments
    ---------
    data_folder : str
        CREMA-D root holding ``AudioWAV/`` (or that folder).
    save_json_train, save_json_valid, save_json_test : str
        Where the manifests go.
    test_fold : int or str
        Fold name (``"actors1001-1019"``) or 1-based index (1..5).
    valid_split : str
        ``"speaker"`` (whole training actors) or ``"utterance"`` (stratified random).
    valid_ratio : float
        Share of the training utterances used for validation.
    classes : list of str, optional
        Labels to keep; default all six.
    seed : int
        Seed of the validation draw.

    Returns
    -------
    dict
        The corpus summary with the split sizes.

    Example
    -------
    >>> prepare_cremad("/data/CREMA-D", "tr.json", "va.json", "te.json", 1)  # doctest: +SKIP
    """
    return prepare_manifests(
        "cremad",
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
    sys.exit(run_cli("cremad", list_utterances, prepare_cremad))
