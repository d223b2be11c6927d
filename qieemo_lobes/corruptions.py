"""Corrupted copies of a waveform for robustness benchmarks, computed on the fly.

:func:`corrupt` takes a mono waveform (numpy or torch, float) and a :class:`Corruption` and
returns a corrupted copy of the same length and type, time-aligned with the input. Every random
draw (noise samples, babble talkers and offsets, room, noise or RIR file) comes from a numpy
Generator seeded with a SHA-256 hash of ``(seed, utterance_id, corruption name)``, never from
global state: the same utterance, corruption, severity and seed always give the same samples,
and other utterances get other draws. The severity is left out of the hash on purpose: the
severities of one corruption then differ only in level (same noise draw, same talkers, same
room), which makes severity curves smoother.

=============  ======================  ===================================================
name           severities (mild first)  how
=============  ======================  ===================================================
``white``      20, 10, 5, 0 dB SNR     Gaussian noise, ``torchaudio.functional.add_noise``
``babble``     20, 10, 5, 0 dB SNR     sum of :data:`BABBLE_TALKERS` utterances of other
                                       speakers (``babble_pool``; never ``speaker``)
``reverb``     0.3, 0.6, 1.0 s RT60    pyroomacoustics shoebox room, ISM + ray tracing
``telephone``  ``g711``                8 kHz, 300-3400 Hz, mu-law (torchaudio, scipy)
``gsm``        ``06.10``               GSM full rate, ffmpeg ``libgsm``
``mp3``        32, 16, 8 kbps          ffmpeg ``libmp3lame``
``opus``       12, 6 kbps              ffmpeg ``libopus``
``gain``       -20, +20 dB             ``torchaudio.functional.gain``, clipped to [-1, 1]
``noise``      20, 10, 5, 0 dB SNR     user noise files (``noise_csv``), see below
``rir``        ``file``                user room impulse responses (``rir_csv``)
=============  ======================  ===================================================

``noise`` and ``rir`` (:data:`FILE_CORRUPTIONS`) read SpeechBrain's ``AddNoise``/``AddReverb``
CSV (``ID,duration,wav,wav_format,wav_opts``, as ``speechbrain.augment.preparation.write_csv``
writes it; ``$noise_folder``/``$rir_folder`` and relative paths mean the CSV's folder) or a
folder of audio files. AddNoise and AddReverb themselves are not used: they draw the file
through a shuffling DataLoader and the SNR and start offset from torch's global RNG, so the
draw cannot be tied to an utterance. AddNoise also scales the speech down by
``1 / (1 + 10 ** (-snr / 20))``; here the speech keeps its level and only noise is added.

Example
-------
>>> import numpy as np
>>> wav = 0.1 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000).astype(np.float32)
>>> quiet = corrupt(wav, 16000, Corruption("gain", -20), utterance_id="03a01Fa")
>>> round(float(np.abs(quiet).max() / np.abs(wav).max()), 3), Corruption("mp3", 16).label
(0.1, 'mp3 16 kbps')
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchaudio.functional as AF

from qieemo_lobes.audio import AudioError, decode_mono, find_audio
from qieemo_lobes.corruptions_codecs import (
    CODECS,
    CodecError,
    codec_problems,
    ffmpeg_codec,
    telephone,
)
from qieemo_lobes.corruptions_rooms import reverberate, simulate_rir
from qieemo_lobes.errors import one_line, os_error_line

__all__ = [
    "BABBLE_TALKERS",
    "CORRUPTIONS",
    "FILE_CORRUPTIONS",
    "Corruption",
    "CorruptionError",
    "available_corruptions",
    "choose_babble",
    "corrupt",
    "room_impulse_response",
    "unavailable_corruptions",
]

Severity = float | str
CORRUPTIONS: dict[str, tuple[Severity, ...]] = {
    "white": (20, 10, 5, 0),
    "babble": (20, 10, 5, 0),
    "reverb": (0.3, 0.6, 1.0),
    "telephone": ("g711",),
    "gsm": ("06.10",),
    "mp3": (32, 16, 8),
    "opus": (12, 6),
    "gain": (-20, 20),
}
# Corruptions that need the caller's files (corrupt(noise_csv=...) / corrupt(rir_csv=...)).
FILE_CORRUPTIONS: dict[str, tuple[Severity, ...]] = {"noise": (20, 10, 5, 0), "rir": ("file",)}
UNITS = {
    "white": "dB",
    "babble": "dB",
    "noise": "dB",
    "reverb": "s",
    "mp3": "kbps",
    "opus": "kbps",
    "gain": "dB",
}
BABBLE_TALKERS = 5


class CorruptionError(ValueError):
    """A corruption that cannot be made; ``str()`` is one line naming it and the problem."""


def _number(value: object) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class Corruption:
    """One corruption at one severity, e.g. ``Corruption("white", 10)``.

    The severity is checked against :data:`CORRUPTIONS` / :data:`FILE_CORRUPTIONS` (``"10"``
    and ``10.0`` are taken as ``10``); anything else raises :class:`CorruptionError`.
    """

    name: str
    severity: Severity

    def __post_init__(self) -> None:
        known = {**CORRUPTIONS, **FILE_CORRUPTIONS}
        if self.name not in known:
            raise CorruptionError(f"unknown corruption {self.name!r} (known: {', '.join(known)})")
        for severity in known[self.name]:
            if severity == self.severity or (
                not isinstance(severity, str) and _number(self.severity) == severity
            ):
                object.__setattr__(self, "severity", severity)
                return
        choices = ", ".join(str(s) for s in known[self.name])
        unit = UNITS.get(self.name, "")
        raise CorruptionError(
            f"{self.name}: unknown severity {self.severity!r} (known: {choices} {unit})".strip()
        )

    @property
    def label(self) -> str:
        """Name and severity for tables: ``"white 10 dB"``, ``"gain +20 dB"``, ``"gsm 06.10"``."""
        s = self.severity
        text = s if isinstance(s, str) else f"{s:+g}" if self.name == "gain" else f"{s:g}"
        return f"{self.name} {text} {UNITS.get(self.name, '')}".strip()


def _rng(seed: int, utterance_id: str, name: str) -> np.random.Generator:
    key = f"{seed}\x1f{utterance_id}\x1f{name}".encode()
    return np.random.default_rng(int.from_bytes(hashlib.sha256(key).digest()[:16], "little"))


def _read(path: str | os.PathLike, sample_rate: int) -> np.ndarray:
    samples, rate = decode_mono(path)
    return AF.resample(torch.from_numpy(samples), rate, sample_rate).numpy()


def _pick_file(source: str | os.PathLike, rng: np.random.Generator) -> str:
    """One audio file of a folder or of an AddNoise/AddReverb CSV, drawn with ``rng``."""
    from speechbrain.dataio.dataio import load_data_csv

    source = Path(source)
    if source.is_dir():
        files = find_audio([source])[0]
    else:
        folder = source.parent
        try:
            rows = load_data_csv(source, {"noise_folder": folder, "rir_folder": folder}).values()
        except (KeyError, ValueError) as err:  # no ID column, duplicate id, unknown $variable
            raise CorruptionError(f"{source}: {err.args[0] if err.args else err}") from err
        if any("wav" not in row for row in rows):
            raise CorruptionError(f"{source}: no 'wav' column (ID,duration,wav,... expected)")
        files = [str(folder / row["wav"]) for row in rows]
    if not files:
        raise CorruptionError(f"{source}: no audio files")
    return files[int(rng.integers(len(files)))]


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def _loop(clip: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``clip`` repeated to ``n`` samples from a random start."""
    return np.resize(np.roll(clip, -int(rng.integers(len(clip)))), n)


def _add_noise(wav: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    if _rms(noise) == 0.0 or _rms(wav) == 0.0:
        raise CorruptionError("silent input or noise: the SNR is undefined")
    x, n = torch.from_numpy(wav)[None], torch.from_numpy(noise.astype(np.float32))[None]
    return AF.add_noise(x, n, torch.tensor([float(snr_db)]))[0].numpy()


def choose_babble(
    pool: Sequence[tuple[object, object]],
    speaker: object,
    *,
    utterance_id: str,
    seed: int = 0,
    talkers: int = BABBLE_TALKERS,
) -> list[int]:
    """Indices into ``pool`` of the babble talkers :func:`corrupt` uses for this utterance.

    Entries whose speaker equals ``speaker`` (compared as strings) are never chosen; distinct
    speakers come first, a speaker's second utterance only when fewer than ``talkers`` other
    speakers exist.
    """
    return _choose(pool, speaker, _rng(seed, utterance_id, "babble"), talkers)


def _choose(pool, speaker, rng: np.random.Generator, talkers: int = BABBLE_TALKERS) -> list[int]:
    if speaker is None:
        raise CorruptionError("needs speaker= (the test speaker, never used in the babble)")
    others = [i for i, (who, _) in enumerate(pool or ()) if str(who) != str(speaker)]
    if not others:
        raise CorruptionError(f"babble_pool has no utterance of a speaker other than {speaker!r}")
    turn: Counter[str] = Counter()
    ranked = []
    for i in rng.permutation(others):
        ranked.append((turn[str(pool[i][0])], int(i)))
        turn[str(pool[i][0])] += 1
    return [i for _, i in sorted(ranked, key=lambda r: r[0])][:talkers]


def _babble(pool, speaker, n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    noise = np.zeros(n)
    for i in _choose(pool, speaker, rng):
        clip = pool[i][1]
        if isinstance(clip, (str, os.PathLike)):
            clip = _read(clip, sample_rate)
        clip = np.asarray(clip.detach().cpu() if torch.is_tensor(clip) else clip, np.float64)
        if clip.ndim != 1 or not len(clip):
            raise CorruptionError(f"babble_pool entry {i} is not a non-empty mono waveform")
        noise += _loop(clip, n, rng) / max(_rms(clip), 1e-12)  # every talker equally loud
    return noise


def room_impulse_response(
    rt60: float, *, utterance_id: str, seed: int = 0, sample_rate: int = 16000
) -> tuple[np.ndarray, int]:
    """The simulated RIR that ``reverb`` at ``rt60`` s uses for this utterance, and the index
    of its direct path (see :func:`qieemo_lobes.corruptions_rooms.simulate_rir`)."""
    return simulate_rir(rt60, _rng(seed, utterance_id, "reverb"), sample_rate)


def corrupt(
    wav: np.ndarray | torch.Tensor,
    sample_rate: int,
    corruption: Corruption | tuple[str, Severity],
    *,
    utterance_id: str,
    seed: int = 0,
    babble_pool: Sequence[tuple[object, object]] | None = None,
    speaker: object = None,
    noise_csv: str | os.PathLike | None = None,
    rir_csv: str | os.PathLike | None = None,
) -> np.ndarray | torch.Tensor:
    """A corrupted copy of ``wav``: same length, same type (numpy or torch), float32.

    Arguments
    ---------
    wav : numpy.ndarray or torch.Tensor
        Mono samples, shape ``(samples,)``, at ``sample_rate`` (16 kHz in this project).
    sample_rate : int
        Sample rate of ``wav`` and of the output.
    corruption : Corruption or (name, severity)
        See the table of the module docstring.
    utterance_id : str
        Seeds the random draws together with ``seed`` (other ids give other draws).
    seed : int
        Benchmark-wide seed.
    babble_pool : sequence of (speaker, path or waveform), optional
        Candidates for ``babble`` (waveforms at ``sample_rate``); entries of ``speaker`` are
        never used.
    speaker : object, optional
        The test utterance's speaker, needed for ``babble``.
    noise_csv, rir_csv : path, optional
        AddNoise/AddReverb CSV or folder of audio files for ``noise`` / ``rir``.

    Raises
    ------
    CorruptionError
        One line ``<label>: <problem>`` (bad input, missing pool or file, ffmpeg missing or
        failing with its last error line).

    Example
    -------
    >>> import numpy as np
    >>> wav = 0.1 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000).astype(np.float32)
    >>> noisy = corrupt(wav, 16000, ("white", 10), utterance_id="a", seed=1)
    >>> noisy.shape, noisy.dtype
    ((16000,), dtype('float32'))
    >>> bool(np.array_equal(noisy, corrupt(wav, 16000, ("white", 10), utterance_id="a", seed=1)))
    True
    >>> bool(np.array_equal(noisy, corrupt(wav, 16000, ("white", 10), utterance_id="b", seed=1)))
    False
    """
    if not isinstance(corruption, Corruption):
        corruption = Corruption(*corruption)
    try:
        if not isinstance(sample_rate, int) or sample_rate <= 0:
            raise CorruptionError(f"sample_rate must be a positive integer, got {sample_rate!r}")
        x = _samples(wav)
        y = _apply(
            x,
            sample_rate,
            corruption,
            utterance_id,
            seed,
            babble_pool,
            speaker,
            {"noise": noise_csv, "rir": rir_csv},
        )
    except CorruptionError as err:
        raise CorruptionError(f"{corruption.label}: {err}") from err
    except (CodecError, AudioError) as err:
        raise CorruptionError(f"{corruption.label}: {one_line(err)}") from err
    except OSError as err:
        raise CorruptionError(f"{corruption.label}: {os_error_line(err)}") from err
    y = np.ascontiguousarray(y, dtype=np.float32)
    return torch.from_numpy(y) if torch.is_tensor(wav) else y


def _samples(wav: np.ndarray | torch.Tensor) -> np.ndarray:
    x = np.asarray(wav.detach().cpu() if torch.is_tensor(wav) else wav, dtype=np.float32)
    if x.ndim != 1 or not len(x):
        raise CorruptionError(f"expected mono samples of shape (samples,), got {x.shape}")
    if not np.isfinite(x).all():
        raise CorruptionError("input contains NaN or infinite samples")
    return x


def _apply(x, sample_rate, c: Corruption, utterance_id, seed, pool, speaker, files):
    rng = _rng(seed, utterance_id, c.name)
    if c.name == "white":
        return _add_noise(x, rng.standard_normal(len(x)), c.severity)
    if c.name == "babble":
        return _add_noise(x, _babble(pool, speaker, len(x), sample_rate, rng), c.severity)
    if c.name in FILE_CORRUPTIONS:
        if files[c.name] is None:
            raise CorruptionError(f"needs {c.name}_csv= (a CSV or folder of audio files)")
        clip = _read(_pick_file(files[c.name], rng), sample_rate)
        if c.name == "rir":
            return reverberate(x, clip, int(np.argmax(np.abs(clip))))
        return _add_noise(x, _loop(clip, len(x), rng), c.severity)
    if c.name == "reverb":
        rir, direct = room_impulse_response(
            c.severity, utterance_id=utterance_id, seed=seed, sample_rate=sample_rate
        )
        return reverberate(x, rir, direct)
    if c.name == "telephone":
        return telephone(x, sample_rate)
    if c.name in CODECS:
        kbps = None if isinstance(c.severity, str) else c.severity
        return ffmpeg_codec(x, sample_rate, c.name, kbps)
    return AF.gain(torch.from_numpy(x), c.severity).clamp(-1.0, 1.0).numpy()  # gain


def unavailable_corruptions(
    noise_csv: str | os.PathLike | None = None, rir_csv: str | os.PathLike | None = None
) -> dict[str, str]:
    """``{name: one-line reason}`` for the corruptions this machine (or call) cannot make.

    Example
    -------
    >>> unavailable_corruptions()["rir"]
    'no rir_csv given'
    """
    reasons = codec_problems()
    if importlib.util.find_spec("pyroomacoustics") is None:
        reasons["reverb"] = "pyroomacoustics not installed (pip install pyroomacoustics)"
    for name, path in (("noise", noise_csv), ("rir", rir_csv)):
        if path is None:
            reasons[name] = f"no {name}_csv given"
    return reasons


def available_corruptions(
    noise_csv: str | os.PathLike | None = None, rir_csv: str | os.PathLike | None = None
) -> list[Corruption]:
    """Every :class:`Corruption` (all severities, registry order) this machine can make."""
    missing = unavailable_corruptions(noise_csv, rir_csv)
    registry = {**CORRUPTIONS, **FILE_CORRUPTIONS}
    return [
        Corruption(name, s)
        for name, levels in registry.items()
        if name not in missing
        for s in levels
    ]
