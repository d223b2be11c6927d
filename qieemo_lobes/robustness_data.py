"""Test sets and babble pools for :mod:`qieemo_lobes.robustness`.

A test set is a list of :class:`Clip` (an utterance: id, audio file or segment, label, speaker)
read from a recipe run's SpeechBrain manifest (``test.json``, ``train.json``:
:func:`read_manifest`) or from a CSV ``path,label[,speaker][,start,stop]`` like the custom
recipe's (:func:`read_csv`; relative paths resolve against the CSV's folder). :func:`load_clip`
decodes a clip as the model hears it (16 kHz mono, the checks of
:func:`qieemo_lobes.audio.load_audio`); :func:`babble_pool` turns clips into the
``(speaker, waveform)`` pool that :func:`qieemo_lobes.corruptions.corrupt` draws babble from,
each waveform decoded only when a babble draw first uses it.

Every problem with a file is a :class:`TestSetError` whose ``str()`` is one line naming the file.

Example
-------
>>> tmp = getfixture("tmp_path")
>>> _ = (tmp / "test.csv").write_text("path,label,speaker\\na.wav,Angry,s1\\n")
>>> clip = read_csv(tmp / "test.csv")[0]
>>> clip.id, clip.label, clip.speaker, clip.path == str(tmp / "a.wav")
('a', 'angry', 's1', True)
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchaudio.functional as AF

from qieemo_lobes.audio import audio_info, check_samples, decode_mono, load_audio, read_segment

__all__ = [
    "SAMPLE_RATE",
    "Clip",
    "TestSetError",
    "babble_pool",
    "clips_digest",
    "load_clip",
    "read_csv",
    "read_manifest",
]

SAMPLE_RATE = 16000


class TestSetError(ValueError):
    """A test set or pool file that cannot be used; ``str()`` is one line naming the file."""

    __test__ = False  # not a pytest test class


@dataclass(frozen=True)
class Clip:
    """One test utterance: ``id`` seeds its corruptions, ``start``/``stop`` (seconds) cut a
    segment of ``path`` (``None``: the whole file)."""

    id: str
    path: str
    label: str
    speaker: str | None = None
    start: float | None = None
    stop: float | None = None
    duration: float | None = None


def read_manifest(path: str | os.PathLike) -> list[Clip]:
    """The utterances of a SpeechBrain JSON manifest (``{id: {wav, emo, spk_id, ...}}``)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as err:
        raise TestSetError(f"{path}: cannot read ({err.strerror or err})") from None
    except ValueError as err:
        raise TestSetError(f"{path}: not a JSON manifest ({err})") from None
    if not isinstance(data, dict) or not all(
        isinstance(v, dict) and {"wav", "emo"} <= set(v) for v in data.values()
    ):
        raise TestSetError(f"{path}: not a recipe manifest ({{id: {{wav, emo, ...}}}} expected)")
    return [
        Clip(
            str(utt_id),
            str(entry["wav"]),
            str(entry["emo"]),
            None if entry.get("spk_id") is None else str(entry["spk_id"]),
            entry.get("start"),
            entry.get("stop"),
            entry.get("duration"),
        )
        for utt_id, entry in data.items()
    ]


def read_csv(path: str | os.PathLike, required: Sequence[str] = ("path", "label")) -> list[Clip]:
    """Clips of a CSV with a header holding ``required`` columns (and optionally ``label``,
    ``speaker``, ``start``, ``stop``); labels are lower-cased, ids are the file names' stems
    (with ``_r<line>`` added where two rows share a stem)."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = [h.strip().lower() for h in next(reader, [])]
            rows = [(reader.line_num, row) for row in reader if any(c.strip() for c in row)]
    except OSError as err:
        raise TestSetError(f"{path}: cannot read ({err.strerror or err})") from None
    except (UnicodeDecodeError, csv.Error) as err:
        raise TestSetError(f"{path}: not a UTF-8 CSV ({err})") from None
    missing = [c for c in required if c not in header]
    if missing:
        raise TestSetError(
            f"{path}: no {', '.join(missing)} column (header {','.join(header) or 'empty'}; "
            f"expected {','.join(required)}[,speaker][,start,stop])"
        )
    entries = []
    for line, row in rows:
        if len(row) != len(header):
            raise TestSetError(f"{path}:{line}: {len(row)} fields, the header has {len(header)}")
        cells = {k: v.strip() for k, v in zip(header, row, strict=True)}
        try:
            start, stop = (float(cells[k]) if cells.get(k) else None for k in ("start", "stop"))
        except ValueError:
            raise TestSetError(f"{path}:{line}: start/stop are not numbers") from None
        wav = Path(cells["path"])
        entries.append((line, wav if wav.is_absolute() else path.parent / wav, cells, start, stop))
    stems = Counter(wav.stem for _, wav, *_ in entries)
    return [
        Clip(
            wav.stem if stems[wav.stem] == 1 else f"{wav.stem}_r{line}",
            str(wav),
            cells.get("label", "").lower(),
            cells.get("speaker") or None,
            start,
            stop,
        )
        for line, wav, cells, start, stop in entries
    ]


def _segment(path: str, start: float | None, stop: float | None) -> np.ndarray:
    """Mono float32 samples of a file (segment) at :data:`SAMPLE_RATE`, no checks."""
    if start is None and stop is None:
        samples, rate = decode_mono(path)
    else:
        data, rate = read_segment(path, start, stop)
        samples = np.ascontiguousarray(data.mean(axis=1), dtype=np.float32)
    if rate != SAMPLE_RATE:
        samples = AF.resample(torch.from_numpy(samples), rate, SAMPLE_RATE).numpy()
    return samples


def load_clip(clip: Clip) -> torch.Tensor:
    """``(samples,)`` float32 at 16 kHz, as the recipes and ``classify`` read it.

    Raises :class:`qieemo_lobes.audio.AudioError` (one line) for a file ``classify`` refuses.
    """
    if clip.start is None and clip.stop is None:
        return load_audio(clip.path, target_sr=SAMPLE_RATE)
    samples = _segment(clip.path, clip.start, clip.stop)
    check_samples(clip.path, samples, SAMPLE_RATE)
    return torch.from_numpy(samples)


def clip_seconds(clip: Clip) -> float:
    """The clip's duration from its manifest or file header (0.0 when unknown)."""
    if clip.duration is not None:
        return float(clip.duration)
    if clip.start is not None and clip.stop is not None:
        return clip.stop - clip.start
    try:
        info = audio_info(clip.path)
        return info.frames / info.sample_rate
    except Exception:  # an unreadable file: load_clip reports it
        return 0.0


@functools.lru_cache(maxsize=256)
def _pool_samples(path: str, start: float | None, stop: float | None) -> np.ndarray:
    return _segment(path, start, stop)


class PoolWave:
    """A babble-pool waveform decoded (once, then cached) when numpy first reads it."""

    def __init__(self, clip: Clip) -> None:
        self.clip = clip

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        samples = _pool_samples(self.clip.path, self.clip.start, self.clip.stop)
        return samples if dtype is None else samples.astype(dtype)

    def __repr__(self) -> str:
        return f"PoolWave({self.clip.path!r})"


def babble_pool(clips: Iterable[Clip]) -> list[tuple[str, PoolWave]]:
    """``[(speaker, waveform)]`` of the clips that name their speaker, in a fixed order.

    Example
    -------
    >>> pool = babble_pool([Clip("b", "b.wav", "sad", "s2"), Clip("a", "a.wav", "sad", "s1")])
    >>> [speaker for speaker, _ in pool]
    ['s1', 's2']
    """
    named = sorted((c for c in clips if c.speaker is not None), key=lambda c: (c.id, c.path))
    return [(str(c.speaker), PoolWave(c)) for c in named]


def clips_digest(clips: Iterable[Clip]) -> str:
    """SHA-256 (16 hex digits) of the clips' ids, files, segments, labels and speakers."""
    h = hashlib.sha256()
    for c in clips:
        h.update(repr((c.id, c.path, c.start, c.stop, c.label, c.speaker)).encode())
    return h.hexdigest()[:16]
