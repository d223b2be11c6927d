"""Frozen-encoder feature cache: run the encoder once per utterance, not once per epoch.

When the encoder is frozen its outputs never change, so stage 2 reads them from disk. Each
utterance's every block and PPG are stored as one fp16 file, named by a key that hashes

- the encoder's identity (weights and window, ``encoder.identity``),
- the audio file's bytes (and the segment, when the utterance is part of a file),

so a changed file, other weights or another window can never pick up a stale entry. Entries are
written whole or not at all (:func:`qieemo_lobes.files.save_torch_atomic`), so an interrupted run
leaves no half-written entry and simply resumes where it stopped.

An entry damaged afterwards (a full disk, a copy cut short, a bad sector) is not trusted:
:meth:`FeatureCache.precompute` recomputes an entry that is not a complete ``torch.save`` file
(a zip archive, checked without reading it), and :meth:`FeatureCache.read_entry` and
:meth:`FeatureCache.load` recompute one that is missing or cannot be read from the audio it was
made from, with one warning line naming the entry and the audio file. What cannot be fixed
raises :class:`FeatureCacheError`, whose ``str()`` is one line: an entry whose audio is unknown or
unreadable, encoder outputs that are not finite (never stored: they would make a model NaN), a
cache folder that cannot be written.

Speed-perturbed copies (SpeechBrain's ``SpeedPerturb``: resampling, so tempo and pitch change
together, as from another voice) are cached beside the original under ``speed`` (percent): a
recipe encodes each training clip once per speed and reads one of them at random each epoch,
which augments training without running the encoder per epoch.

Other copies of a clip (the corrupted copies of :mod:`qieemo_lobes.augmentation`) are cached the
same way under ``copy``: any callable ``copy(wav) -> wav`` on the 16 kHz waveform with a
``suffix`` attribute that names everything its output depends on besides the audio itself (the
entry is ``<key><suffix>.pt``; the same suffix must always mean the same transform). It is
applied to the clip as read (before a speed change, if any).

Example
-------
>>> import torch, tempfile
>>> class ToyEncoder(torch.nn.Module):  # any encoder with the (blocks, ppg) convention
...     identity = "toy"
...     def forward(self, wavs, wav_lens):
...         frames = wavs.unfold(1, 320, 320)[..., :4]  # (B, T, 4)
...         return torch.stack([frames, 2 * frames]), frames.sum(-1, keepdim=True)
>>> import soundfile, numpy as np
>>> folder = tempfile.mkdtemp()
>>> soundfile.write(f"{folder}/a.wav", np.random.rand(16000).astype("float32"), 16000)
>>> cache = FeatureCache(ToyEncoder(), folder + "/cache")
>>> paths = cache.precompute({"a": {"wav": f"{folder}/a.wav"}}, progress=False)
>>> blocks, ppg = cache.load(f"{folder}/a.wav")
>>> blocks.shape, ppg.shape, blocks.dtype
(torch.Size([2, 50, 4]), torch.Size([50, 1]), torch.float16)
>>> cache.load(f"{folder}/a.wav", speed=90)[0].shape  # played at 90 %: 1.11 s
torch.Size([2, 55, 4])
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch
import torchaudio
from speechbrain.augment.time_domain import SpeedPerturb
from tqdm import tqdm

from qieemo_lobes.audio import audio_info, read_segment, remove_dc
from qieemo_lobes.errors import one_line
from qieemo_lobes.files import save_torch_atomic

SAMPLE_RATE = 16000
# Part of the cache folder's name: what the encoder was given. Entries computed before the input's
# DC offset was removed (read_audio) sit in the folder without it and are never read.
INPUT_VERSION = ".dc-removed"

logger = logging.getLogger(__name__)


class FeatureCacheError(RuntimeError):
    """A cache entry that is unusable and cannot be recomputed, non-finite encoder outputs, or
    a cache folder that cannot be written; ``str()`` is one line naming the file concerned."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def looks_complete(path: str | os.PathLike) -> bool:
    """Whether ``path`` can be a whole ``torch.save`` file: not empty, and a zip archive whose
    central directory (at its end) is intact. Reads only the end of the file.

    Example
    -------
    >>> import torch
    >>> path = getfixture("tmp_path") / "entry.pt"
    >>> torch.save({"a": torch.zeros(3)}, path)
    >>> looks_complete(path)
    True
    >>> _ = path.write_bytes(path.read_bytes()[:-30])  # cut short
    >>> looks_complete(path), looks_complete(path.with_name("missing.pt"))
    (False, False)
    """
    try:
        return os.path.getsize(path) > 0 and zipfile.is_zipfile(path)
    except OSError:
        return False


def read_entry_file(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor]:
    """``(blocks, ppg)`` of a cache entry, checked: two tensors of finite values.

    Raises
    ------
    FeatureCacheError
        One line naming the entry and the problem (missing, unreadable, not an entry, not
        finite). :meth:`FeatureCache.read_entry` recomputes such an entry instead.
    """
    path = Path(path)
    if not path.exists():
        raise FeatureCacheError(f"{path}: feature cache entry missing")
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
        blocks, ppg = stored["blocks"], stored["ppg"]
    except Exception as err:  # torch.load fails on damaged data with many exception types
        raise FeatureCacheError(
            f"{path}: unreadable feature cache entry ({one_line(err)})"
        ) from None
    if not isinstance(blocks, torch.Tensor) or not isinstance(ppg, torch.Tensor):
        raise FeatureCacheError(f"{path}: not a feature cache entry (no blocks and ppg tensors)")
    if not (torch.isfinite(blocks).all() and torch.isfinite(ppg).all()):
        raise FeatureCacheError(f"{path}: feature cache entry holds NaN or infinite values")
    return blocks, ppg


def read_audio(path: str, start: float | None = None, stop: float | None = None) -> torch.Tensor:
    """Read a (segment of a) file as 16 kHz mono float32 ``(samples,)``, its DC offset removed.

    This is the model's input in training; inference removes the offset the same way
    (:func:`qieemo_lobes.audio.remove_dc`).
    """
    data, rate = read_segment(path, start, stop)  # soundfile, or ffmpeg as classify decodes
    wav = torch.from_numpy(data).mean(dim=1)
    if rate != SAMPLE_RATE:
        wav = torchaudio.functional.resample(wav, rate, SAMPLE_RATE)
    return remove_dc(wav[None], torch.ones(1))[0]


def _duration(wav: str) -> float:
    """Seconds of audio in ``wav``, from its header."""
    try:
        return audio_info(wav).duration
    except Exception as err:  # libsndfile reports bad files with several exception types
        problem = getattr(err, "problem", None) or one_line(err)  # AudioError: without the path
        raise FeatureCacheError(f"{wav}: cannot read the audio file ({problem})") from None


def content_key(wav: str, start: float | None = None, stop: float | None = None) -> str:
    """The digest that names an audio file's (segment's) entries: :func:`file_digest`, hashed
    once per process while the file's size and mtime stay the same.

    Raises
    ------
    FeatureCacheError
        One line, when the file cannot be read.
    """
    try:
        stat = os.stat(wav)
        return _memo_digest(os.path.abspath(wav), start, stop, stat.st_size, stat.st_mtime_ns)
    except OSError as err:
        raise FeatureCacheError(
            f"{wav}: cannot read the audio file ({err.strerror or one_line(err)})"
        ) from None


def file_digest(path: str, start: float | None = None, stop: float | None = None) -> str:
    """sha1 of a file's bytes (and of the segment bounds, when given)."""
    digest = hashlib.sha1()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    digest.update(f"|{start}|{stop}".encode())
    return digest.hexdigest()


@functools.lru_cache(maxsize=1 << 16)
def _memo_digest(path: str, start, stop, size: int, mtime_ns: int) -> str:
    """:func:`file_digest`, hashed once per process for a file as long as its size and mtime
    stay the same (a run asks for every training clip once per speed and per pass)."""
    return file_digest(path, start, stop)


class FeatureCache:
    """Per-utterance encoder outputs ``(blocks, ppg)`` on disk, in fp16.

    Arguments
    ---------
    encoder : torch.nn.Module
        A frozen encoder following the ``(blocks, ppg) = encoder(wavs, wav_lens)`` convention,
        with an ``identity`` string that names its weights and settings.
    folder : str
        Cache root; entries go to ``folder/<encoder.identity>.dc-removed/``.
    dtype : torch.dtype
        Storage type (fp16 halves the disk and read cost; the head computes in fp32).
    """

    def __init__(self, encoder: torch.nn.Module, folder: str, dtype: torch.dtype = torch.float16):
        self.encoder = encoder
        self.root = Path(folder)
        self.folder = self.root / f"{encoder.identity}{INPUT_VERSION}"
        self.dtype = dtype
        # entry path -> (wav, start, stop, speed, copy) it is computed from, for every entry
        # asked for through entry(), precompute() or load(): what read_entry() recomputes a
        # damaged one from.
        self.sources: dict[Path, tuple] = {}

    def entry(
        self,
        wav: str,
        start: float | None = None,
        stop: float | None = None,
        speed: int = 100,
        copy: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> Path:
        """Where the features of this audio (segment), played at ``speed`` percent, are stored;
        with ``copy``, those of that copy of it (see the module docstring).

        The entry is remembered with its audio, so that :meth:`read_entry` can recompute it.
        """
        key = content_key(wav, start, stop)
        suffix = "" if speed == 100 else f"_speed{speed}"
        if copy is not None:
            suffix += copy.suffix
        path = self.folder / key[:2] / f"{key}{suffix}.pt"
        self.sources[path] = (os.fspath(wav), start, stop, speed, copy)
        return path

    def load(
        self,
        wav: str,
        start: float | None = None,
        stop: float | None = None,
        speed: int = 100,
        copy: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(blocks (n_blocks, T, D), ppg (T, P))`` of one utterance (or of its ``copy``);
        computed if missing, recomputed (with a warning) if damaged."""
        path = self.entry(wav, start, stop, speed, copy)
        if not path.exists():
            self._compute([(path, os.fspath(wav), start, stop, copy)], speed)
        return self.read_entry(path)

    def read_entry(self, path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor]:
        """``(blocks, ppg)`` stored in the cache entry ``path`` (as returned by :meth:`entry`).

        An entry that is missing or cannot be read (or holds non-finite values) is recomputed
        from the audio it was made from, with one warning line naming the entry and the audio.

        Raises
        ------
        FeatureCacheError
            One line, when the entry is unusable and cannot be recomputed: its audio is unknown
            to this cache (the entry was never asked for through :meth:`entry`,
            :meth:`precompute` or :meth:`load`), or the audio cannot be read any more.
        """
        path = Path(path)
        try:
            return read_entry_file(path)
        except FeatureCacheError as err:
            problem = str(err)
        source = self.sources.get(path)
        if source is None:
            raise FeatureCacheError(
                f"{problem}; it cannot be recomputed: its audio file is unknown here"
            )
        wav, start, stop, speed, copy = source
        segment = "" if start is None and stop is None else f" ({start}-{stop} s)"
        logger.warning("%s; recomputing it from %s%s", problem, wav, segment)
        self._compute([(path, wav, start, stop, copy)], speed)
        return read_entry_file(path)

    def precompute(
        self,
        utterances: dict[str, dict],
        batch_seconds: float = 60.0,
        progress: bool = True,
        speed: int = 100,
        copies: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
    ) -> dict[str, Path]:
        """Compute every missing entry; returns ``{utterance_id: entry path}``.

        ``utterances`` maps ids to manifest records with ``wav`` (and optional ``start`` and
        ``stop`` seconds). Missing entries are encoded in batches of similar length, up to about
        ``batch_seconds`` of audio each. Already cached entries are skipped, so an interrupted
        run resumes. ``speed`` (percent, 100: unchanged) encodes speed-perturbed copies;
        ``copies`` (``{utterance_id: copy}``, see the module docstring) encodes those copies of
        the utterances instead of the utterances themselves.
        """
        todo, paths = [], {}
        for utt_id, record in utterances.items():
            start, stop = record.get("start"), record.get("stop")
            copy = copies[utt_id] if copies is not None else None
            path = self.entry(record["wav"], start, stop, speed, copy)
            paths[utt_id] = path
            if path.exists() and looks_complete(path):
                continue
            if path.exists():  # cut short or overwritten: not an entry any more
                logger.warning(
                    "%s: damaged feature cache entry; recomputing it from %s", path, record["wav"]
                )
            duration = record.get("duration") or _duration(record["wav"])
            todo.append((duration * 100 / speed, path, record["wav"], start, stop, copy))
        if todo:
            self._check_writable()
        todo.sort(key=lambda item: item[0])
        batches, current, seconds = [], [], 0.0
        for duration, *item in todo:
            if current and seconds + duration > batch_seconds:
                batches.append(current)
                current, seconds = [], 0.0
            current.append(tuple(item))
            seconds += duration
        if current:
            batches.append(current)
        desc = f"features {self.encoder.identity}" + ("" if speed == 100 else f" speed {speed}%")
        if copies is not None:
            desc += " corrupted copies"
        bar = tqdm(total=len(todo), desc=desc, disable=not progress)
        for batch in batches:
            self._compute(batch, speed)
            bar.update(len(batch))
        bar.close()
        return paths

    def _cannot_write(self, err: OSError) -> FeatureCacheError:
        return FeatureCacheError(
            f"{self.root}: cannot write the feature cache ({err.strerror or one_line(err)})"
        )

    def _check_writable(self) -> None:
        """Refuse a cache folder that cannot be written before anything is encoded."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.folder):
                pass
        except OSError as err:
            raise self._cannot_write(err) from None

    @torch.no_grad()
    def _compute(self, batch: list[tuple], speed: int = 100) -> None:
        """Encode ``[(entry path, wav, start, stop, copy)]`` and store every entry.

        Entries with non-finite outputs are not stored: the finite ones of the batch are, then
        :class:`FeatureCacheError` names the audio files concerned.
        """
        wavs = []
        for _, wav, start, stop, copy in batch:
            try:
                samples = read_audio(wav, start, stop)
            except Exception as err:  # soundfile and resampling fail with several types
                problem = getattr(err, "problem", None) or one_line(err)
                raise FeatureCacheError(
                    f"{wav}: cannot read the audio to encode it ({problem})"
                ) from None
            if copy is not None:
                try:
                    samples = copy(samples)
                except ValueError as err:  # e.g. CorruptionError: ffmpeg failed
                    raise FeatureCacheError(
                        f"{wav}: cannot make its copy {copy.suffix} ({one_line(err)})"
                    ) from None
            wavs.append(samples)
        if speed != 100:
            perturb = SpeedPerturb(orig_freq=SAMPLE_RATE, speeds=[speed])
            wavs = [perturb(wav[None])[0] for wav in wavs]
        lengths = torch.tensor([len(w) for w in wavs])
        padded = torch.zeros(len(wavs), int(lengths.max()))
        for i, wav in enumerate(wavs):
            padded[i, : len(wav)] = wav
        device = next(iter(self.encoder.parameters()), torch.empty(0)).device
        blocks, ppg = self.encoder(padded.to(device), (lengths / lengths.max()).to(device))
        n_frames = blocks.shape[2]
        not_finite = []
        for i, (path, wav, start, stop, _) in enumerate(batch):
            frames = max(1, int(round(float(lengths[i]) / float(lengths.max()) * n_frames)))
            entry = {
                "blocks": blocks[:, i, :frames].to("cpu", self.dtype).clone(),
                "ppg": ppg[i, :frames].to("cpu", self.dtype).clone(),
            }
            # Checked as stored: values beyond fp16's range would become infinities.
            if not (torch.isfinite(entry["blocks"]).all() and torch.isfinite(entry["ppg"]).all()):
                segment = "" if start is None and stop is None else f" ({start}-{stop} s)"
                not_finite.append(f"{wav}{segment}")
                continue
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                save_torch_atomic(entry, path)
            except OSError as err:
                raise self._cannot_write(err) from None
        if not_finite:
            more = f" (and {len(not_finite) - 1} more in its batch)" if len(not_finite) > 1 else ""
            raise FeatureCacheError(
                f"{not_finite[0]}{more}: the encoder's outputs hold NaN or infinite values "
                f"(in {self.dtype}); not cached"
            )


def speaker_statistics(
    entries: dict[str, Path],
    speaker_of: dict[str, str],
    read: Callable[[Path], tuple[torch.Tensor, torch.Tensor]] = read_entry_file,
) -> dict[str, dict]:
    """Per-speaker mean and std of every block and of the PPG, over all of a speaker's frames.

    Used for per-speaker feature normalisation, which is transductive: it needs several
    (unlabelled) utterances of each test speaker. No label is read. Keep it off where a single
    file is classified, and report results with and without it.

    ``read`` reads an entry: :func:`read_entry_file` (a damaged entry raises
    :class:`FeatureCacheError`), or a cache's :meth:`FeatureCache.read_entry`, which recomputes it.

    Returns ``{speaker: {"blocks": (mean, std) of shape (n_blocks, 1, D), "ppg": (mean, std)
    of shape (1, P)}}``.
    """
    sums: dict[str, list] = {}
    for utt, path in entries.items():
        blocks, ppg = read(path)
        blocks, ppg = blocks.double(), ppg.double()
        acc = sums.setdefault(speaker_of[utt], [0, 0.0, 0.0, 0.0, 0.0])
        acc[0] += blocks.shape[1]
        acc[1] = acc[1] + blocks.sum(1, keepdim=True)
        acc[2] = acc[2] + (blocks**2).sum(1, keepdim=True)
        acc[3] = acc[3] + ppg.sum(0, keepdim=True)
        acc[4] = acc[4] + (ppg**2).sum(0, keepdim=True)
    stats = {}
    for speaker, (n, b1, b2, p1, p2) in sums.items():
        b_mean, p_mean = b1 / n, p1 / n
        b_std = (b2 / n - b_mean**2).clamp(min=0).sqrt().clamp(min=1e-5)
        p_std = (p2 / n - p_mean**2).clamp(min=0).sqrt().clamp(min=1e-5)
        stats[speaker] = {
            "blocks": (b_mean.float(), b_std.float()),
            "ppg": (p_mean.float(), p_std.float()),
        }
    return stats


def normalize_speaker(blocks: torch.Tensor, ppg: torch.Tensor, stats: dict):
    """Standardise one utterance's ``blocks`` and ``ppg`` with its speaker's ``stats``."""
    (b_mean, b_std), (p_mean, p_std) = stats["blocks"], stats["ppg"]
    return (blocks.float() - b_mean) / b_std, (ppg.float() - p_mean) / p_std
