"""Data preparation for TurEV-DB (Turkish emotional speech, single words), emotion recognition.

Layout: one folder per emotion, ``<root>/Angry/``, ``Calm/``, ``Happy/``, ``Sad/`` (names in any
case; the root may also be up to two folders above them, e.g. the release's
``TurEV-DB/Sound Source/``), holding ``<speaker>_<code>_<word>.wav`` (the original 44.1 kHz
release) or ``.flac``, e.g. ``1157_kz_acik.wav``. Emotion codes: kz angry, sk calm, mt happy,
hl sad; calm is its own class, not neutral. The label comes from the code; a file whose code
disagrees with its folder, whose code is unknown or whose name does not parse is skipped with
the reason. A word may carry a take number (the release has ``Sad/7895_hl_ogul1``, the only
take of ``ogul`` by 7895 in Sad): it is kept, and listed in the summary's ``numbered_words``.
Protocol: leave-one-speaker-out, one fold per speaker named by its id (``1157`` ... ``7895``,
6 folds); speaker 1157 recorded only Angry and Sad.

Usage::

    python turev_prepare.py --data_folder=/path/to/TurEV-DB --summary
    python turev_prepare.py --data_folder=/path/to/TurEV-DB --save_folder=results/turev --test_fold=1

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
    "TurEV-DB: <root>/{Angry,Calm,Happy,Sad}/<speaker>_<code>_<word>.wav|.flac "
    "(codes kz sk mt hl, e.g. Angry/1157_kz_acik.wav)"
)
CODES = {"kz": "angry", "sk": "calm", "mt": "happy", "hl": "sad"}
FOLDERS = {label: code for code, label in CODES.items()}  # folder name (lower case) -> code
NAME = re.compile(r"^(?P<spk>\d+)_(?P<code>[A-Za-z]+)_(?P<word>[^\W\d_]+)(?P<take>\d*)$")
SEARCH_DEPTH = 2  # emotion folders may sit this many folders below the root


def parse_name(stem: str) -> tuple[str, str, str, str] | None:
    """``(speaker, code, word, take)`` of a TurEV-DB file name (code lower-cased), or None.

    Example
    -------
    >>> parse_name("1157_kz_acik"), parse_name("7895_HL_ogul1"), parse_name("1157-kz-acik")
    (('1157', 'kz', 'acik', ''), ('7895', 'hl', 'ogul', '1'), None)
    """
    match = NAME.match(stem)
    if match is None:
        return None
    return match["spk"], match["code"].lower(), match["word"], match["take"]


def emotion_folders(folder: Path) -> dict[str, Path]:
    """``{label: folder}`` of the emotion folders in ``folder`` or up to two folders below it."""
    level = [folder]
    for _ in range(SEARCH_DEPTH + 1):
        for base in level:
            found = {p.name.lower(): p for p in sorted(base.iterdir()) if p.is_dir()}
            found = {name: path for name, path in found.items() if name in FOLDERS}
            if found:
                return found
        level = [
            sub
            for base in level
            for sub in sorted(base.iterdir())
            if sub.is_dir() and not sub.name.startswith((".", "__MACOSX"))
        ]
    return {}


def list_utterances(data_folder: str | Path, classes: Sequence[str] | None = None) -> CorpusScan:
    """Scan a TurEV-DB root; returns the :class:`CorpusScan` (records, skipped, summary()).

    Example
    -------
    >>> list_utterances("/path/to/TurEV-DB").summary()["classes"]  # doctest: +SKIP
    {'angry': 487, 'calm': 408, 'happy': 357, 'sad': 483}
    """
    folder = existing_folder(data_folder, LAYOUT)
    emotion_dirs = emotion_folders(folder)
    if not emotion_dirs:
        raise LayoutError(
            f"turev: no Angry/Calm/Happy/Sad folders in {folder} or below it; expected {LAYOUT}"
        )
    root = next(iter(emotion_dirs.values())).parent
    scan = CorpusScan(
        "turev", root, LAYOUT, fold_rule="leave-one-speaker-out: one fold per speaker"
    )
    numbered: dict[str, str] = {}
    for label in sorted(emotion_dirs):
        files, ignored = list_audio_files(emotion_dirs[label])
        scan.ignored_resource_files += ignored
        for path in files:
            parsed = parse_name(path.stem)
            if parsed is None:
                scan.skip(path, "file name is not TurEV-DB's <speaker>_<code>_<word> pattern")
                continue
            speaker, code, word, take = parsed
            if code not in CODES:
                scan.skip(path, f"unknown TurEV-DB emotion code {code!r}")
            elif code != FOLDERS[label]:
                scan.skip(
                    path,
                    f"emotion code {code} ({CODES[code]}) disagrees with folder {path.parent.name}",
                )
            else:
                scan.add(path.stem, path, CODES[code], speaker, fold=speaker)
                if take:
                    numbered[path.stem] = word
    scan.finalize(classes)
    kept = {r.utt_id for r in scan.records}
    scan.extra["n_words"] = len({parse_name(u)[2].lower() for u in kept})
    scan.extra["numbered_words"] = {u: w for u, w in sorted(numbered.items()) if u in kept}
    scan.extra["audio_formats"] = dict(
        sorted(Counter(Path(r.wav).suffix for r in scan.records).items())
    )
    return scan


def prepare_turev(
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
    """Write TurEV-DB train/valid/test JSON manifests for one test speaker.

    Arguments
    ---------
    data_folder : str
        TurEV-DB root holding ``Angry/ Calm/ Happy/ Sad/``.
    save_json_train, save_json_valid, save_json_test : str
        Where the manifests go.
    test_fold : int or str
        1-based index into the sorted speaker folds (1..6: 1157, 1234, 1358, 1984, 6783, 7895);
        a speaker id works as a fold name from Python (``"1358"``), but the command line and
        the YAML read digits as an index.
    valid_split : str
        ``"speaker"`` (whole training speakers) or ``"utterance"`` (stratified random).
    valid_ratio : float
        Share of the training utterances used for validation.
    classes : list of str, optional
        Labels to keep; default all four (angry, calm, happy, sad).
    seed : int
        Seed of the validation draw.

    Returns
    -------
    dict
        The corpus summary with the split sizes.

    Example
    -------
    >>> prepare_turev("/path/to/TurEV-DB", "train.json", "valid.json", "test.json", 1)  # doctest: +SKIP
    """
    return prepare_manifests(
        "turev",
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
    sys.exit(run_cli("turev", list_utterances, prepare_turev))
