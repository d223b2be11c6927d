"""Data preparation shared by the emotion recipes: utterance records, folds, splits, manifests.

Every ``recipes/<CORPUS>/emotion/<corpus>_prepare.py`` turns a corpus root into a
:class:`CorpusScan` (utterance records plus every file it skipped and why) and hands it to the
helpers here, which

- assign protocol folds (:func:`contiguous_group_folds`, :func:`balanced_group_folds`,
  :func:`stratified_folds`),
- pick one test fold (a fold name or a 1-based index into the naturally sorted fold list) and draw
  a validation set from the training folds only (:func:`split_for_test_fold`),
- write SpeechBrain JSON manifests ``{utt_id: {"wav", "emo", "spk_id", "fold", "duration"}}``
  (plus ``"start"``/``"stop"`` seconds for segments of a longer file) with :func:`write_manifests`,
- skip work already done, like the ``skip()`` of SpeechBrain's prepare scripts, but only when a
  saved options file next to the manifests matches the current options (:func:`prepare_manifests`),
- and give every prepare script the same command line (:func:`run_cli`)::

      python emodb_prepare.py --data_folder=DIR --summary
      python emodb_prepare.py --data_folder=DIR --save_folder=OUT --test_fold=3

A wrong root, or one that yields no utterances, raises :class:`LayoutError` with one line naming
the expected layout; the command line prints that line and exits with status 2.

Example
-------
>>> recs = [
...     Utterance(f"u{i}", f"/d/u{i}.wav", lab, spk, fold, 1.0)
...     for i, (lab, spk, fold) in enumerate(
...         [("sad", "a", "f1"), ("sad", "b", "f1"), ("happy", "c", "f2"), ("happy", "d", "f2"),
...          ("sad", "e", "f3"), ("happy", "f", "f3")]
...     )
... ]
>>> splits = split_for_test_fold(recs, 2, valid_split="speaker", valid_ratio=0.25, seed=1)
>>> sorted(r.speaker for r in splits["test"])
['c', 'd']
>>> len(splits["train"]) + len(splits["valid"]), len(splits["valid"])
(4, 1)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import random
import re
import sys
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from qieemo_lobes.files import write_json_atomic

# Plain stdlib logging (SpeechBrain's get_logger wraps the same thing) so that the prepare
# scripts' command line does not pay for importing torch and SpeechBrain.
logger = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac")
OPTIONS_FILE = "prepare_options.json"
SPLITS = ("train", "valid", "test")
VALID_SPLITS = ("speaker", "utterance")
# Folds are part of the protocol: they must not move when the training seed changes, so the
# random fold assignments (stratified folds of a CSV without speakers) use this fixed seed.
FOLD_SEED = 1986
_FORMAT_VERSION = 1


class LayoutError(ValueError):
    """A corpus root that is missing, has the wrong layout, or yields no utterances."""


@dataclasses.dataclass(frozen=True)
class Utterance:
    """One labelled utterance.

    Arguments
    ---------
    utt_id : str
        Unique id, the manifest key.
    wav : str
        Path of the audio file.
    label : str
        Lower-case English emotion name (``angry``, ``happy``, ``neutral``, ...).
    speaker : str
        Speaker id.
    fold : str
        Protocol fold the utterance belongs to.
    duration : float
        Seconds of audio used (``stop - start`` for a segment).
    start, stop : float, optional
        Segment bounds in seconds inside ``wav``; ``None`` means the whole file.

    Example
    -------
    >>> Utterance("03a01Fa", "/emodb/03a01Fa.wav", "happy", "03", "03", 2.0).to_json()
    {'wav': '/emodb/03a01Fa.wav', 'emo': 'happy', 'spk_id': '03', 'fold': '03', 'duration': 2.0}
    """

    utt_id: str
    wav: str
    label: str
    speaker: str
    fold: str
    duration: float
    start: float | None = None
    stop: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The SpeechBrain manifest entry of this utterance."""
        entry: dict[str, Any] = {
            "wav": self.wav,
            "emo": self.label,
            "spk_id": self.speaker,
            "fold": self.fold,
            "duration": self.duration,
        }
        if self.start is not None:
            entry["start"] = self.start
        if self.stop is not None:
            entry["stop"] = self.stop
        return entry


def natural_key(text: str) -> list:
    """Sort key that orders embedded numbers numerically (``fold2`` before ``fold10``).

    Example
    -------
    >>> sorted(["fold10", "fold2", "Session1"], key=natural_key)
    ['fold2', 'fold10', 'Session1']
    """
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def normalize_classes(classes: str | Iterable[str] | None) -> list[str] | None:
    """Lower-case, de-duplicated, sorted class list; a comma-separated string is accepted.

    Example
    -------
    >>> normalize_classes("Sad, angry,sad")
    ['angry', 'sad']
    >>> normalize_classes(None) is None
    True
    """
    if classes is None:
        return None
    if isinstance(classes, str):
        classes = classes.split(",")
    out = sorted({str(c).strip().lower() for c in classes if str(c).strip()})
    if not out:
        raise ValueError("classes is empty; pass None to keep every label")
    return out


def is_resource_fork(path: str | os.PathLike) -> bool:
    """True for macOS ``._*`` AppleDouble files, which are never audio or labels."""
    return Path(path).name.startswith("._")


def list_audio_files(folder: Path) -> tuple[list[Path], int]:
    """The ``.wav``/``.flac`` files directly inside ``folder``, sorted.

    Returns ``(files, n_ignored)`` where ``n_ignored`` counts macOS ``._*`` files left out.
    """
    files, ignored = [], 0
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix.lower() not in AUDIO_EXTENSIONS:
            continue
        if is_resource_fork(path):
            ignored += 1
            continue
        files.append(path)
    return files, ignored


def probe_audio(
    path: str | os.PathLike,
    start: float | None = None,
    stop: float | None = None,
    decoded: dict[str, tuple[Any, int]] | None = None,
) -> tuple[float | None, str | None]:
    """Seconds of usable audio in a file (or its segment), or ``(None, reason)`` if refused.

    A file is refused for every problem for which ``classify`` refuses it
    (:func:`qieemo_lobes.audio.check_audio`: unreadable, empty, zero length, corrupt or
    truncated, NaN or infinite samples, too short, silence only); the whole file is decoded,
    since a header can lie about what follows. With ``start`` and/or ``stop`` (seconds) only the
    file-level problems concern the whole file: length, NaN/inf and silence are checked on the
    segment's own samples, so one silent turn of a dialogue does not refuse the others.

    Arguments
    ---------
    path : str or os.PathLike
        The audio file.
    start, stop : float, optional
        Segment bounds in seconds; ``None``: the start or the end of the file.
    decoded : dict, optional
        ``{path: (mono, rate)}`` of the last file decoded for a segment; passing the same dict
        again decodes a file with many segments once (only the last file is kept).

    Returns
    -------
    tuple
        ``(duration in seconds, None)``, or ``(None, reason)`` with the one-line reason
        (``AudioError.problem``).

    Example
    -------
    >>> import numpy as np, soundfile as sf
    >>> tmp = getfixture("tmp_path")
    >>> tone = 0.1 * np.sin(np.arange(3200) / 5)
    >>> sf.write(tmp / "a.wav", np.concatenate([tone, np.zeros(3200)]), 16000)
    >>> probe_audio(tmp / "a.wav")
    (0.4, None)
    >>> probe_audio(tmp / "a.wav", 0.2, 0.4)
    (None, 'segment 0.2-0.4 s: silence only (no speech to classify)')
    >>> sf.write(tmp / "click.wav", tone[:200], 16000)
    >>> probe_audio(tmp / "click.wav")
    (None, 'too short (0.013 s; at least 0.1 s of audio needed)')
    >>> (tmp / "b.wav").write_bytes(b"not audio")
    9
    >>> probe_audio(tmp / "b.wav")
    (None, 'not an audio file (text content)')
    """
    # Imported here, not at module load: the prepare command line does not pay for torch until
    # it checks audio.
    from qieemo_lobes.audio import AudioError, check_audio, check_samples, decode_mono

    path = os.fspath(path)
    try:
        if start is None and stop is None:
            return check_audio(path), None
        if decoded is not None and path in decoded:
            mono, rate = decoded[path]
        else:
            mono, rate = decode_mono(path)
            if decoded is not None:
                decoded.clear()
                decoded[path] = (mono, rate)
    except AudioError as err:
        return None, err.problem
    except (OSError, RuntimeError, ValueError) as err:  # anything audio.py did not foresee
        message = " ".join(str(err).split()) or type(err).__name__
        return None, f"cannot read audio ({message})"
    duration = len(mono) / rate
    first = 0.0 if start is None else start
    last = duration if stop is None else stop
    if not 0 <= first < last <= duration + 1e-3:
        return None, f"segment {first}-{last} s outside audio of {duration} s"
    # The samples read_audio (qieemo_lobes.features) reads for this segment.
    segment = mono[int(round(first * rate)) : int(round(last * rate))]
    try:
        check_samples(path, segment, rate)
    except AudioError as err:
        return None, f"segment {first}-{last} s: {err.problem}"
    return last - first, None


class CorpusScan:
    """What one corpus root holds: candidate utterances, skipped files, excluded labels.

    A prepare script adds every parsed utterance with :meth:`add` (label already mapped to the
    English name, fold possibly assigned later with :meth:`assign_folds`) and every file it cannot
    use with :meth:`skip`, then calls :meth:`finalize`, which keeps the requested classes
    (counting the others in ``excluded``), drops duplicate ids, and checks each kept file's audio.

    Arguments
    ---------
    corpus : str
        Corpus name (``emodb``, ``ravdess``, ...).
    root : str or Path
        The corpus root that was scanned.
    layout : str
        One line describing the expected layout; used in every :class:`LayoutError`.
    fold_rule : str
        How folds are formed, shown in the summary.
    speaker_independent : bool
        Whether no speaker is in two folds.

    Example
    -------
    >>> import numpy as np, soundfile as sf
    >>> tmp = getfixture("tmp_path")
    >>> for name in ("a1", "a2", "b1"):
    ...     sf.write(tmp / f"{name}.wav", 0.1 * np.sin(np.arange(1600) / 5), 16000)
    >>> scan = CorpusScan("toy", tmp, layout="<root>/<spk><n>.wav", fold_rule="one per speaker")
    >>> scan.add("a1", tmp / "a1.wav", "sad", "a", "a")
    >>> scan.add("a2", tmp / "a2.wav", "calm", "a", "a")
    >>> scan.add("b1", tmp / "b1.wav", "sad", "b", "b")
    >>> scan.skip(tmp / "junk.wav", "unparsable file name")
    >>> scan = scan.finalize(["sad"])
    >>> [r.utt_id for r in scan.records], dict(scan.excluded)
    (['a1', 'b1'], {'calm': 1})
    >>> summary = scan.summary()
    >>> summary["n_utterances"], summary["folds"], summary["skipped"][0]["reason"]
    (2, {'a': 1, 'b': 1}, 'unparsable file name')
    """

    def __init__(
        self,
        corpus: str,
        root: str | os.PathLike,
        layout: str,
        fold_rule: str,
        speaker_independent: bool = True,
    ) -> None:
        self.corpus = corpus
        self.root = os.path.abspath(root)
        self.layout = layout
        self.fold_rule = fold_rule
        self.speaker_independent = speaker_independent
        self.candidates: list[Utterance] = []
        self.records: list[Utterance] = []
        self.skipped: list[dict[str, str]] = []
        self.excluded: Counter[str] = Counter()
        self.ignored_resource_files = 0
        self.classes: list[str] | None = None
        self.extra: dict[str, Any] = {}  # corpus-specific summary keys

    def add(
        self,
        utt_id: str,
        wav: str | os.PathLike,
        label: str,
        speaker: str,
        fold: str = "",
        start: float | None = None,
        stop: float | None = None,
    ) -> None:
        """Add a parsed utterance (its audio is checked later, by :meth:`finalize`)."""
        self.candidates.append(
            Utterance(utt_id, os.path.abspath(wav), label, speaker, fold, 0.0, start, stop)
        )

    def skip(self, path: str | os.PathLike, reason: str) -> None:
        """Record a file (or label line) that cannot be used, and why."""
        self.skipped.append({"path": str(path), "reason": reason})

    def exclude(self, label: str) -> None:
        """Count an utterance whose label is not a usable class (e.g. IEMOCAP ``xxx``)."""
        self.excluded[label] += 1

    def assign_folds(self, folds: dict[str, str] | Sequence[str]) -> None:
        """Set the candidates' folds: ``{speaker: fold}``, or one fold per candidate in order."""
        if isinstance(folds, dict):
            folds = [folds[c.speaker] for c in self.candidates]
        if len(folds) != len(self.candidates):
            raise ValueError(f"{len(folds)} folds for {len(self.candidates)} utterances")
        self.candidates = [
            dataclasses.replace(c, fold=f) for c, f in zip(self.candidates, folds, strict=True)
        ]

    def finalize(self, classes: Sequence[str] | None = None) -> CorpusScan:
        """Keep ``classes`` (all labels if ``None``), drop duplicates, check audio; returns self.

        Every file (or segment) is checked as ``classify`` checks it (:func:`probe_audio`): one
        that it would refuse (NaN samples, too short, truncated, silence only, ...) is listed
        in ``skipped`` with the reason and lands in no split.

        Raises :class:`LayoutError` if nothing usable was found and :class:`ValueError` if every
        utterance was excluded by ``classes``.
        """
        self.classes = normalize_classes(classes)
        keep = set(self.classes) if self.classes is not None else None
        seen: set[str] = set()
        records = []
        n_in_classes = 0
        decoded: dict[str, tuple[Any, int]] = {}  # segments of one file: decoded once
        for cand in self.candidates:
            if keep is not None and cand.label not in keep:
                self.excluded[cand.label] += 1
                continue
            n_in_classes += 1
            if cand.utt_id in seen:
                self.skip(cand.wav, f"duplicate utterance id {cand.utt_id!r}")
                continue
            seen.add(cand.utt_id)
            if not os.path.isfile(cand.wav):
                self.skip(cand.wav, "audio file not found")
                continue
            duration, reason = probe_audio(cand.wav, cand.start, cand.stop, decoded)
            if reason is not None:
                self.skip(cand.wav, reason)
                continue
            records.append(dataclasses.replace(cand, duration=duration))
        self.records = records
        if not records:
            if self.candidates and n_in_classes == 0:
                found = dict(sorted(Counter(c.label for c in self.candidates).items()))
                raise ValueError(
                    f"{self.corpus}: no utterance of classes {self.classes} under {self.root} "
                    f"(labels found: {found})"
                )
            detail = f"; {len(self.skipped)} files skipped" if self.skipped else ""
            if self.skipped:
                detail += f", e.g. {self.skipped[0]['path']}: {self.skipped[0]['reason']}"
            raise LayoutError(
                f"{self.corpus}: no usable utterances under {self.root}{detail}; "
                f"expected {self.layout}"
            )
        for label in self.classes or []:
            if label not in {r.label for r in records}:
                logger.warning("%s: requested class %r has no utterance", self.corpus, label)
        return self

    def summary(self) -> dict[str, Any]:
        """Counts of the kept utterances, plus every skipped file and every excluded label."""
        return summarize(
            self.records,
            self.skipped,
            excluded=self.excluded,
            corpus=self.corpus,
            data_folder=self.root,
            fold_rule=self.fold_rule,
            speaker_independent=self.speaker_independent,
            ignored_resource_files=self.ignored_resource_files,
            classes_kept=self.classes,
            **self.extra,
        )


def summarize(
    records: Sequence[Utterance],
    skipped: Sequence[dict[str, str]] = (),
    excluded: dict[str, int] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The summary dict printed by ``--summary``.

    Keys ``n_utterances``, ``classes`` ({label: n}), ``speakers`` ({id: n}), ``folds``
    ({fold: n}) and ``skipped`` ([{"path", "reason"}]) are always there; ``excluded``
    ({label: n}) counts utterances whose label was not kept (not errors); ``extra`` adds keys.

    Example
    -------
    >>> s = summarize([Utterance("a", "/a.wav", "sad", "s1", "f1", 1.5)], excluded={"calm": 2})
    >>> s["n_utterances"], s["classes"], s["speakers"], s["folds"], s["n_excluded"]
    (1, {'sad': 1}, {'s1': 1}, {'f1': 1}, 2)
    """

    def counts(values: Iterable[str]) -> dict[str, int]:
        counter = Counter(values)
        return {k: counter[k] for k in sorted(counter, key=natural_key)}

    excluded = dict(excluded or {})
    summary: dict[str, Any] = {
        "n_utterances": len(records),
        "classes": counts(r.label for r in records),
        "speakers": counts(r.speaker for r in records),
        "folds": counts(r.fold for r in records),
        "skipped": list(skipped),
        "n_skipped": len(skipped),
        "excluded": {k: excluded[k] for k in sorted(excluded)},
        "n_excluded": sum(excluded.values()),
        "duration_s": round(sum(r.duration for r in records), 3),
    }
    summary.update(extra)
    return summary


# ---------------------------------------------------------------------------------------------
# Folds
# ---------------------------------------------------------------------------------------------


def contiguous_group_folds(
    groups: Iterable[str], n_folds: int, prefix: str = "fold"
) -> dict[str, str]:
    """Split the naturally sorted distinct groups into ``n_folds`` contiguous runs.

    Run sizes differ by at most one group (the first runs take the extra ones); each fold is
    named ``<prefix><first>-<last>`` (``<prefix><first>`` for a run of one group).

    Example
    -------
    >>> contiguous_group_folds(["1003", "1001", "1002", "1004", "1005"], 2, "actors")
    {'1001': 'actors1001-1003', '1002': 'actors1001-1003', '1003': 'actors1001-1003', \
'1004': 'actors1004-1005', '1005': 'actors1004-1005'}
    """
    distinct = sorted(set(groups), key=natural_key)
    n_folds = max(1, min(n_folds, len(distinct)))
    base, extra = divmod(len(distinct), n_folds)
    mapping, start = {}, 0
    for k in range(n_folds):
        run = distinct[start : start + base + (k < extra)]
        start += len(run)
        name = f"{prefix}{run[0]}" if len(run) == 1 else f"{prefix}{run[0]}-{run[-1]}"
        mapping.update(dict.fromkeys(run, name))
    return mapping


def balanced_group_folds(groups: Sequence[str], n_folds: int = 5) -> dict[str, str]:
    """Assign whole groups (speakers) to ``n_folds`` folds of balanced size, ``fold1``...

    Uses scikit-learn's ``GroupKFold`` (largest group first into the smallest fold), which is
    deterministic; ``groups`` has one entry per utterance.

    Example
    -------
    >>> balanced_group_folds(["a"] * 4 + ["b"] * 2 + ["c"] * 2, 2)
    {'a': 'fold1', 'b': 'fold2', 'c': 'fold2'}
    """
    from sklearn.model_selection import GroupKFold  # imported here: slow, few scripts need it

    distinct = sorted(set(groups), key=natural_key)
    n_folds = min(n_folds, len(distinct))
    if n_folds < 2:
        return dict.fromkeys(distinct, "fold1")
    mapping: dict[str, str] = {}
    for k, (_, test) in enumerate(GroupKFold(n_splits=n_folds).split(groups, groups=groups)):
        mapping.update({groups[i]: f"fold{k + 1}" for i in test})
    return dict(sorted(mapping.items(), key=lambda kv: natural_key(kv[0])))


def stratified_folds(labels: Sequence[str], n_folds: int = 5, seed: int = FOLD_SEED) -> list[str]:
    """Per-utterance fold names ``fold1``... from scikit-learn's shuffled ``StratifiedKFold``.

    Not speaker independent. Each fold needs a member of some class, so when even the largest
    class has fewer than ``n_folds`` utterances, only that many folds are made.

    Example
    -------
    >>> folds = stratified_folds(["sad"] * 4 + ["happy"] * 4, 2, seed=0)
    >>> sorted(Counter(zip(folds, ["sad"] * 4 + ["happy"] * 4)).values())
    [2, 2, 2, 2]
    """
    from sklearn.model_selection import StratifiedKFold

    largest_class = max(Counter(labels).values(), default=0)
    n_folds = min(n_folds, largest_class)
    if n_folds < 2:
        return ["fold1"] * len(labels)
    folds = [""] * len(labels)
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # "least populated class has only N members": expected here
        warnings.simplefilter("ignore", UserWarning)
        for k, (_, test) in enumerate(splitter.split(list(labels), list(labels))):
            for i in test:
                folds[i] = f"fold{k + 1}"
    return folds


# ---------------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------------


NO_TEST_FOLD = "none"  # test_fold value that trains on every fold and tests on nothing


def fold_names(records: Iterable[Utterance]) -> list[str]:
    """The distinct folds in natural order; ``test_fold=K`` picks the K-th (1-based)."""
    return sorted({r.fold for r in records}, key=natural_key)


def resolve_test_fold(folds: Sequence[str], test_fold: int | str) -> str:
    """Turn ``test_fold`` (a fold name, or a 1-based index into ``folds``) into a fold name.

    An ``int`` is always an index; a string is a fold name, or an index when it is all digits and
    no fold has that name; ``"none"`` (:data:`NO_TEST_FOLD`) stays ``"none"``: no test fold.

    Example
    -------
    >>> resolve_test_fold(["03", "08", "10"], 2), resolve_test_fold(["03", "08", "10"], "10")
    ('08', '10')
    """
    if isinstance(test_fold, bool):
        raise ValueError(f"test_fold must be a fold name or a 1-based index, not {test_fold!r}")
    if isinstance(test_fold, str):
        name = test_fold.strip()
        if name in folds or name == NO_TEST_FOLD:
            return name
        if not name.isdigit():
            raise ValueError(f"test_fold {name!r} is not one of the folds {list(folds)}")
        test_fold = int(name)
    if not 1 <= int(test_fold) <= len(folds):
        hint = (
            f" (a fold named '{test_fold}' is picked by name only)"
            if str(test_fold) in folds
            else ""
        )
        raise ValueError(
            f"test_fold {test_fold} is out of range: 1..{len(folds)} for folds {list(folds)}{hint}"
        )
    return folds[int(test_fold) - 1]


def _valid_by_speaker(train: list[Utterance], ratio: float, rng: random.Random) -> set[str]:
    counts = Counter(r.speaker for r in train)
    speakers = sorted(counts, key=natural_key)
    if len(speakers) < 2:
        raise ValueError(
            f"valid_split='speaker' needs at least 2 training speakers, found {speakers}; "
            "use valid_split='utterance'"
        )
    rng.shuffle(speakers)
    target = ratio * len(train)
    chosen: set[str] = set()
    total = 0
    # Greedy in seeded random order: take a speaker when it brings the total closer to the
    # target; always at least one speaker, and never every training speaker.
    for spk in speakers:
        if len(chosen) == len(speakers) - 1:
            break
        if not chosen or abs(total + counts[spk] - target) < abs(total - target):
            chosen.add(spk)
            total += counts[spk]
    return chosen


def _valid_by_utterance(train: list[Utterance], ratio: float, rng: random.Random) -> set[str]:
    # Own per-class draw rather than sklearn's train_test_split(stratify=...), which refuses
    # classes with a single member; largest remainders make the total round(ratio * n).
    by_label: dict[str, list[str]] = {}
    for r in sorted(train, key=lambda r: natural_key(r.utt_id)):
        by_label.setdefault(r.label, []).append(r.utt_id)
    n_valid = min(max(1, round(ratio * len(train))), len(train) - 1)
    exact = {lab: ratio * len(ids) for lab, ids in by_label.items()}
    take = {lab: int(x) for lab, x in exact.items()}
    order = sorted(exact, key=lambda lab: (-(exact[lab] - take[lab]), lab))
    for lab in order[: max(0, n_valid - sum(take.values()))]:
        take[lab] += 1
    chosen: set[str] = set()
    for lab in sorted(by_label):
        ids = by_label[lab]
        rng.shuffle(ids)
        chosen.update(ids[: take[lab]])
    return chosen


def split_for_test_fold(
    records: Sequence[Utterance],
    test_fold: int | str,
    valid_split: str = "speaker",
    valid_ratio: float = 0.1,
    seed: int = 1986,
) -> dict[str, list[Utterance]]:
    """Train/valid/test for one test fold; valid comes from the training folds only.

    Arguments
    ---------
    records : sequence of Utterance
        All utterances of the corpus.
    test_fold : int or str
        Fold name, or 1-based index into :func:`fold_names`; ``"none"`` tests on nothing and
        trains on every fold (a final model, once the folds have been cross-validated).
    valid_split : str
        ``"speaker"``: hold out whole training speakers, about ``valid_ratio`` of the training
        utterances, at least one speaker. ``"utterance"``: a class-stratified random
        ``valid_ratio`` of the training utterances.
    valid_ratio : float
        In ``[0, 1)``; 0 gives an empty validation set.
    seed : int
        Seed of the validation draw (the folds do not depend on it).

    Returns
    -------
    dict
        ``{"train": [...], "valid": [...], "test": [...]}``, each sorted by id.

    Example
    -------
    >>> recs = [Utterance(f"u{i}", "/x.wav", "sad", f"s{i % 3}", f"f{i % 3}", 1.0)
    ...         for i in range(9)]
    >>> {k: len(v) for k, v in split_for_test_fold(recs, "f0").items()}
    {'train': 3, 'valid': 3, 'test': 3}
    """
    if valid_split not in VALID_SPLITS:
        raise ValueError(f"valid_split must be one of {VALID_SPLITS}, not {valid_split!r}")
    if not 0 <= float(valid_ratio) < 1:
        raise ValueError(f"valid_ratio must be in [0, 1), not {valid_ratio!r}")
    test_name = resolve_test_fold(fold_names(records), test_fold)
    test = [r for r in records if r.fold == test_name]
    train = [r for r in records if r.fold != test_name]
    if not train:
        raise ValueError(f"test fold {test_name!r} holds every utterance; nothing left to train")
    rng = random.Random(seed)
    if valid_ratio == 0:
        valid_ids: set[str] = set()
    elif valid_split == "speaker":
        held_out = _valid_by_speaker(train, float(valid_ratio), rng)
        valid_ids = {r.utt_id for r in train if r.speaker in held_out}
    else:
        if len(train) < 2:
            raise ValueError("valid_split='utterance' needs at least 2 training utterances")
        valid_ids = _valid_by_utterance(train, float(valid_ratio), rng)

    def by_id(items: Iterable[Utterance]) -> list[Utterance]:
        return sorted(items, key=lambda r: natural_key(r.utt_id))

    return {
        "train": by_id(r for r in train if r.utt_id not in valid_ids),
        "valid": by_id(r for r in train if r.utt_id in valid_ids),
        "test": by_id(test),
    }


# ---------------------------------------------------------------------------------------------
# Writing and skipping
# ---------------------------------------------------------------------------------------------


def write_manifests(
    splits: dict[str, Sequence[Utterance]],
    save_json_train: str | os.PathLike,
    save_json_valid: str | os.PathLike,
    save_json_test: str | os.PathLike,
) -> None:
    """Write the three SpeechBrain JSON manifests (each to a temp file, then renamed).

    Example
    -------
    >>> out = getfixture("tmp_path")
    >>> u = Utterance("a", "/a.wav", "sad", "s1", "f1", 1.5)
    >>> write_manifests({"train": [u], "valid": [], "test": []},
    ...                 out / "train.json", out / "valid.json", out / "test.json")
    >>> json.loads((out / "train.json").read_text())["a"]["emo"]
    'sad'
    """
    for split, path in zip(SPLITS, (save_json_train, save_json_valid, save_json_test), strict=True):
        write_json_atomic({r.utt_id: r.to_json() for r in splits[split]}, path)
        logger.info("%s: %d utterances", path, len(splits[split]))


def options_path(save_json_train: str | os.PathLike) -> Path:
    """The saved-options file, next to the train manifest."""
    return Path(save_json_train).parent / OPTIONS_FILE


def skip(
    save_json_train: str | os.PathLike,
    save_json_valid: str | os.PathLike,
    save_json_test: str | os.PathLike,
    options: dict[str, Any],
) -> bool:
    """True when the three manifests exist and the saved options equal ``options``.

    Example
    -------
    >>> out = getfixture("tmp_path")
    >>> paths = [out / f"{s}.json" for s in SPLITS]
    >>> skip(*paths, {"seed": 1})
    False
    """
    if not all(os.path.isfile(p) for p in (save_json_train, save_json_valid, save_json_test)):
        return False
    try:
        saved = json.loads(options_path(save_json_train).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(saved, dict) and saved.get("options") == options


ScanFunction = Callable[..., CorpusScan]


def prepare_manifests(
    corpus: str,
    scan_fn: ScanFunction,
    data_folder: str | os.PathLike,
    save_json_train: str | os.PathLike,
    save_json_valid: str | os.PathLike,
    save_json_test: str | os.PathLike,
    test_fold: int | str,
    valid_split: str = "speaker",
    valid_ratio: float = 0.1,
    classes: str | Sequence[str] | None = None,
    seed: int = 1986,
) -> dict[str, Any]:
    """The body of every ``prepare_<corpus>``: scan, split, write, remember the options.

    Does nothing when :func:`skip` says the same preparation is already on disk.

    Returns
    -------
    dict
        The corpus summary plus ``test_fold`` (the resolved name) and ``splits`` ({split: n}).
    """
    options = {
        "format": _FORMAT_VERSION,
        "corpus": corpus,
        "data_folder": os.path.abspath(data_folder),
        "save_json": [
            os.path.abspath(p) for p in (save_json_train, save_json_valid, save_json_test)
        ],
        "test_fold": test_fold,
        "valid_split": valid_split,
        "valid_ratio": float(valid_ratio),
        "classes": normalize_classes(classes),
        "seed": int(seed),
    }
    if skip(save_json_train, save_json_valid, save_json_test, options):
        logger.info("%s: preparation already done with the same options, skipping", corpus)
        saved = json.loads(options_path(save_json_train).read_text(encoding="utf-8"))
        return {**saved["summary"], "skipped_preparation": True}
    scan = scan_fn(data_folder, classes=classes)
    splits = split_for_test_fold(scan.records, test_fold, valid_split, valid_ratio, seed)
    summary = scan.summary()
    summary["test_fold"] = resolve_test_fold(fold_names(scan.records), test_fold)
    summary["splits"] = {k: len(v) for k, v in splits.items()}
    write_manifests(splits, save_json_train, save_json_valid, save_json_test)
    # Written last: an interrupted run leaves no matching options file, so it is redone.
    write_json_atomic({"options": options, "summary": summary}, options_path(save_json_train))
    return summary


def existing_folder(data_folder: str | os.PathLike, layout: str) -> Path:
    """``data_folder`` as a Path, or :class:`LayoutError` naming ``layout`` if it is no folder."""
    path = Path(data_folder)
    if not path.is_dir():
        raise LayoutError(
            f"data folder {path} does not exist or is not a folder; expected {layout}"
        )
    return path


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def run_cli(
    corpus: str,
    scan_fn: ScanFunction,
    prepare_fn: Callable[..., dict[str, Any]],
    argv: Sequence[str] | None = None,
) -> int:
    """The command line shared by every prepare script; returns the exit status.

    ``--summary`` prints the summary JSON; ``--save_folder`` with ``--test_fold`` writes
    ``train.json``, ``valid.json`` and ``test.json`` there. A wrong data folder prints one line
    to stderr and returns 2.
    """
    parser = argparse.ArgumentParser(
        prog=f"{corpus}_prepare.py",
        description=f"Prepare {corpus} manifests for emotion recognition.",
    )
    parser.add_argument("--data_folder", required=True, help="corpus root")
    parser.add_argument("--summary", action="store_true", help="print the corpus summary (JSON)")
    parser.add_argument("--save_folder", help="where train/valid/test.json are written")
    parser.add_argument(
        "--test_fold", help="fold name, or 1-based index K into the sorted fold list"
    )
    parser.add_argument("--valid_split", choices=VALID_SPLITS, default="speaker")
    parser.add_argument("--valid_ratio", type=float, default=0.1)
    parser.add_argument("--classes", help="comma-separated labels to keep (default: corpus')")
    parser.add_argument("--seed", type=int, default=1986)
    args = parser.parse_args(argv)
    if not args.summary and not args.save_folder:
        parser.error("give --summary and/or --save_folder with --test_fold")
    if args.save_folder and args.test_fold is None:
        parser.error("--save_folder needs --test_fold")
    classes = normalize_classes(args.classes) if args.classes else None
    try:
        if args.summary:
            print(json.dumps(scan_fn(args.data_folder, classes=classes).summary(), indent=2))
        if args.save_folder:
            # Digits are an index, like train.py's HyperPyYAML override --test_fold=K.
            test_fold = int(args.test_fold) if args.test_fold.isdigit() else args.test_fold
            out = Path(args.save_folder)
            result = prepare_fn(
                args.data_folder,
                out / "train.json",
                out / "valid.json",
                out / "test.json",
                test_fold=test_fold,
                valid_split=args.valid_split,
                valid_ratio=args.valid_ratio,
                classes=classes,
                seed=args.seed,
            )
            state = "unchanged" if result.get("skipped_preparation") else "written"
            sizes = ", ".join(f"{k} {v}" for k, v in result["splits"].items())
            print(f"{corpus}: test fold {result['test_fold']}: {sizes} ({state} in {out})")
    except (ValueError, OSError) as exc:  # LayoutError is a ValueError
        print(f"{corpus}_prepare.py: error: {exc}", file=sys.stderr)
        return 2
    return 0
