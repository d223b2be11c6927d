"""Data preparation for IEMOCAP (speech only), emotion recognition.

Layout: ``IEMOCAP_full_release/Session1`` .. ``Session5`` (pass that folder or its parent):

- labels: ``SessionN/dialog/EmoEvaluation/<dialog>.txt``, top level of that folder only (the
  ``Categorical/``, ``Attribute/`` and ``Self-evaluation/`` subfolders hold per-annotator files and
  are not read). Each utterance's summary line starts with ``[`` and is tab separated:
  ``[6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[2.5000, 2.5000, 2.5000]``; the ``%``
  header and the individual annotation lines that follow are ignored.
- audio: ``SessionN/sentences/wav/<dialog>/<utterance>.wav`` (one file per utterance, so no
  start/stop is written).

macOS ``._*`` files are ignored everywhere (counted in ``ignored_resource_files``). The speaker is
the session plus the gender letter of the utterance id's last part
(``Ses01F_impro01_M012`` -> ``Ses01M``). Labels: neu neutral, hap and exc happy, ang angry,
sad sad, fea fearful, sur surprised, dis disgust, fru frustrated, oth other; ``xxx`` (no majority)
is never kept. By default only the standard 4 classes are kept (5531 utterances); the others are
counted in the summary's ``excluded``. Protocol: leave-one-session-out, folds ``Session1`` ..
``Session5``.

Usage::

    python iemocap_prepare.py --data_folder=/path/to/IEMOCAP_full_release --summary
    python iemocap_prepare.py --data_folder=/path/to/IEMOCAP_full_release --save_folder=out \
        --test_fold=5

Authors
 * qieemo contributors 2025
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path

from qieemo_lobes.manifests import prepare_manifests, run_cli
from qieemo_lobes.manifests_scan import CorpusScan, LayoutError, existing_folder, is_resource_fork

LAYOUT = (
    "IEMOCAP: IEMOCAP_full_release/Session1..Session5/dialog/EmoEvaluation/<dialog>.txt and "
    "SessionN/sentences/wav/<dialog>/<utterance>.wav (pass IEMOCAP_full_release or its parent)"
)
LABELS = {
    "neu": "neutral",
    "hap": "happy",
    "exc": "happy",
    "ang": "angry",
    "sad": "sad",
    "fea": "fearful",
    "sur": "surprised",
    "dis": "disgust",
    "fru": "frustrated",
    "oth": "other",
}
DEFAULT_CLASSES = ("angry", "happy", "neutral", "sad")
SUMMARY_LINE = re.compile(
    r"^\[\s*(?P<start>[\d.]+)\s*-\s*(?P<stop>[\d.]+)\s*\]\s+(?P<utt>\S+)\s+(?P<code>\S+)"
)
UTTERANCE = re.compile(r"^Ses(?P<session>\d{2})[FM]_.+_(?P<gender>[FM])\d+$")


def find_root(data_folder: str | Path) -> Path:
    """``IEMOCAP_full_release`` given itself or its parent; :class:`LayoutError` otherwise."""
    folder = existing_folder(data_folder, LAYOUT)
    for root in (folder / "IEMOCAP_full_release", folder):
        if any((root / f"Session{n}").is_dir() for n in range(1, 6)):
            return root
    raise LayoutError(f"iemocap: no Session1..Session5 folders in {folder}; expected {LAYOUT}")


def list_utterances(data_folder: str | Path, classes: Sequence[str] | None = None) -> CorpusScan:
    """Scan an IEMOCAP root; returns the :class:`CorpusScan` (records, skipped, summary()).

    ``classes`` defaults to the standard four (angry, happy, neutral, sad).

    Example
    -------
    >>> list_utterances("/path/to/IEMOCAP_full_release").summary()["classes"]  # doctest: +SKIP
    {'angry': 1103, 'happy': 1636, 'neutral': 1708, 'sad': 1084}
    """
    root = find_root(data_folder)
    scan = CorpusScan("iemocap", root, LAYOUT, fold_rule="leave-one-session-out (Session1..5)")
    sessions = [n for n in range(1, 6) if (root / f"Session{n}").is_dir()]
    scan.extra["sessions_missing"] = [f"Session{n}" for n in range(1, 6) if n not in sessions]
    for n in sessions:
        session = root / f"Session{n}"
        emo_dir = session / "dialog" / "EmoEvaluation"
        if not emo_dir.is_dir():
            scan.skip(emo_dir, "missing label folder dialog/EmoEvaluation")
            continue
        label_files = []
        for path in sorted(emo_dir.glob("*.txt")):
            if is_resource_fork(path):
                scan.ignored_resource_files += 1
            elif path.is_file():
                label_files.append(path)
        if not label_files:
            scan.skip(emo_dir, "no <dialog>.txt label files")
        for path in label_files:
            _read_label_file(path, session, n, scan)
    return scan.finalize(DEFAULT_CLASSES if classes is None else classes)


def _read_label_file(path: Path, session: Path, n: int, scan: CorpusScan) -> None:
    text = path.read_text(encoding="utf-8", errors="replace")
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.startswith("["):  # '%' header, blank lines, per-annotator lines
            continue
        match = SUMMARY_LINE.match(line)
        if match is None:
            scan.skip(f"{path}:{lineno}", "unparsable summary line")
            continue
        utt, code = match["utt"], match["code"].lower()
        if code not in LABELS:
            scan.exclude(code)
            continue
        spk = UTTERANCE.match(utt)
        if spk is None:
            scan.skip(f"{path}:{lineno}", f"unparsable utterance id {utt!r}")
            continue
        if int(spk["session"]) != n:
            scan.skip(f"{path}:{lineno}", f"utterance {utt} is not from Session{n}")
            continue
        dialog = utt.rsplit("_", 1)[0]
        wav = session / "sentences" / "wav" / dialog / f"{utt}.wav"
        speaker = f"Ses{spk['session']}{spk['gender']}"
        scan.add(utt, wav, LABELS[code], speaker, fold=f"Session{n}")


def prepare_iemocap(
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
    """Write IEMOCAP train/valid/test JSON manifests for one test session.

    Arguments
    ---------
    data_folder : str
        ``IEMOCAP_full_release`` or its parent.
    save_json_train, save_json_valid, save_json_test : str
        Where the manifests go.
    test_fold : int or str
        ``"Session3"`` or 1-based index (1..5).
    valid_split : str
        ``"speaker"`` (whole training speakers) or ``"utterance"`` (stratified random).
    valid_ratio : float
        Share of the training utterances used for validation.
    classes : list of str, optional
        Labels to keep; default the standard four (angry, happy, neutral, sad).
    seed : int
        Seed of the validation draw.

    Returns
    -------
    dict
        The corpus summary with the split sizes.

    Example
    -------
    >>> prepare_iemocap("/data/IEMOCAP", "tr.json", "va.json", "te.json", 5)  # doctest: +SKIP
    """
    return prepare_manifests(
        "iemocap",
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
    sys.exit(run_cli("iemocap", list_utterances, prepare_iemocap))
