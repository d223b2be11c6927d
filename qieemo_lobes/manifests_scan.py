"""Corpus scanning for the emotion recipes: utterance records, audio checks, the corpus summary.

A ``recipes/<CORPUS>/emotion/<corpus>_prepare.py`` finds a corpus's audio files
(:func:`existing_folder`, :func:`list_audio_files`, :func:`is_resource_fork`), adds every parsed
utterance and every file it cannot use to a :class:`CorpusScan`, and calls
:meth:`CorpusScan.finalize`, which keeps the requested classes and checks each file (or segment)
as ``classify`` checks it (:func:`probe_audio`). The kept :class:`Utterance` records go on to
:mod:`qieemo_lobes.manifests_folds` (folds, splits) and :mod:`qieemo_lobes.manifests` (the JSON
manifests); :meth:`CorpusScan.summary` (:func:`summarize`) is what ``--summary`` prints.

A wrong root, or one that yields no utterances, raises :class:`LayoutError` with one line naming
the expected layout.

Example
-------
>>> import numpy as np, soundfile as sf
>>> tmp = getfixture("tmp_path")
>>> sf.write(tmp / "03a01Fa.wav", 0.1 * np.sin(np.arange(1600) / 5), 16000)
>>> files, n_ignored = list_audio_files(existing_folder(tmp, "<root>/*.wav"))
>>> scan = CorpusScan("toy", tmp, layout="<root>/*.wav", fold_rule="one")
>>> for path in files:
...     scan.add(path.stem, path, "happy", path.stem[:2], "f1")
>>> [(r.utt_id, r.duration) for r in scan.finalize().records], n_ignored
([('03a01Fa', 0.1)], 0)
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

# Plain stdlib logging (SpeechBrain's get_logger wraps the same thing) so that the prepare
# scripts' command line does not pay for importing torch and SpeechBrain.
logger = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac")


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


def existing_folder(data_folder: str | os.PathLike, layout: str) -> Path:
    """``data_folder`` as a Path, or :class:`LayoutError` naming ``layout`` if it is no folder."""
    path = Path(data_folder)
    if not path.is_dir():
        raise LayoutError(
            f"data folder {path} does not exist or is not a folder; expected {layout}"
        )
    return path


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
