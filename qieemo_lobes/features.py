"""Frozen-encoder feature cache: run the encoder once per utterance, not once per epoch.

When the encoder is frozen its outputs never change, so stage 2 reads them from disk. Each
utterance's every block and PPG are stored as one fp16 file, named by a key that hashes

- the encoder's identity (weights and window, ``encoder.identity``),
- the audio file's bytes (and the segment, when the utterance is part of a file),

so a changed file, other weights or another window can never pick up a stale entry. Files are
written to a temporary name and renamed, so an interrupted run leaves no half-written entry and
simply resumes where it stopped.

Speed-perturbed copies (SpeechBrain's ``SpeedPerturb``: resampling, so tempo and pitch change
together, as from another voice) are cached beside the original under ``speed`` (percent): a
recipe encodes each training clip once per speed and reads one of them at random each epoch,
which augments training without running the encoder per epoch.

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
import os
import tempfile
from pathlib import Path

import soundfile
import torch
import torchaudio
from speechbrain.augment.time_domain import SpeedPerturb
from tqdm import tqdm

SAMPLE_RATE = 16000


def read_audio(path: str, start: float | None = None, stop: float | None = None) -> torch.Tensor:
    """Read a (segment of a) file as 16 kHz mono float32 ``(samples,)``."""
    info = soundfile.info(path)
    first = int(round((start or 0.0) * info.samplerate))
    last = int(round(stop * info.samplerate)) if stop is not None else -1
    data, rate = soundfile.read(
        path, start=first, stop=None if last < 0 else last, dtype="float32", always_2d=True
    )
    wav = torch.from_numpy(data).mean(dim=1)
    if rate != SAMPLE_RATE:
        wav = torchaudio.functional.resample(wav, rate, SAMPLE_RATE)
    return wav


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
        Cache root; entries go to ``folder/<encoder.identity>/``.
    dtype : torch.dtype
        Storage type (fp16 halves the disk and read cost; the head computes in fp32).
    """

    def __init__(self, encoder: torch.nn.Module, folder: str, dtype: torch.dtype = torch.float16):
        self.encoder = encoder
        self.folder = Path(folder) / encoder.identity
        self.dtype = dtype

    def entry(
        self, wav: str, start: float | None = None, stop: float | None = None, speed: int = 100
    ) -> Path:
        """Where the features of this audio (segment), played at ``speed`` percent, are stored."""
        stat = os.stat(wav)
        key = _memo_digest(os.path.abspath(wav), start, stop, stat.st_size, stat.st_mtime_ns)
        suffix = "" if speed == 100 else f"_speed{speed}"
        return self.folder / key[:2] / f"{key}{suffix}.pt"

    def load(
        self, wav: str, start: float | None = None, stop: float | None = None, speed: int = 100
    ):
        """``(blocks (n_blocks, T, D), ppg (T, P))`` of one utterance; computed if missing."""
        path = self.entry(wav, start, stop, speed)
        if not path.exists():
            self._compute([(path, wav, start, stop)], speed)
        stored = torch.load(path, map_location="cpu")
        return stored["blocks"], stored["ppg"]

    def read_entry(self, path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor]:
        """``(blocks, ppg)`` stored in the cache entry ``path`` (as returned by :meth:`entry`)."""
        stored = torch.load(path, map_location="cpu", weights_only=True)
        return stored["blocks"], stored["ppg"]

    def precompute(
        self,
        utterances: dict[str, dict],
        batch_seconds: float = 60.0,
        progress: bool = True,
        speed: int = 100,
    ) -> dict[str, Path]:
        """Compute every missing entry; returns ``{utterance_id: entry path}``.

        ``utterances`` maps ids to manifest records with ``wav`` (and optional ``start`` and
        ``stop`` seconds). Missing entries are encoded in batches of similar length, up to about
        ``batch_seconds`` of audio each. Already cached entries are skipped, so an interrupted
        run resumes. ``speed`` (percent, 100: unchanged) encodes speed-perturbed copies.
        """
        todo, paths = [], {}
        for utt_id, record in utterances.items():
            start, stop = record.get("start"), record.get("stop")
            path = self.entry(record["wav"], start, stop, speed)
            paths[utt_id] = path
            if not path.exists():
                duration = record.get("duration") or soundfile.info(record["wav"]).duration
                todo.append((duration * 100 / speed, path, record["wav"], start, stop))
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
        bar = tqdm(total=len(todo), desc=desc, disable=not progress)
        for batch in batches:
            self._compute(batch, speed)
            bar.update(len(batch))
        bar.close()
        return paths

    @torch.no_grad()
    def _compute(self, batch: list[tuple], speed: int = 100) -> None:
        wavs = [read_audio(wav, start, stop) for _, wav, start, stop in batch]
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
        for i, (path, *_) in enumerate(batch):
            frames = max(1, int(round(float(lengths[i]) / float(lengths.max()) * n_frames)))
            entry = {
                "blocks": blocks[:, i, :frames].to("cpu", self.dtype).clone(),
                "ppg": ppg[i, :frames].to("cpu", self.dtype).clone(),
            }
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as tmp:
                torch.save(entry, tmp)
            os.replace(tmp.name, path)


def speaker_statistics(entries: dict[str, Path], speaker_of: dict[str, str]) -> dict[str, dict]:
    """Per-speaker mean and std of every block and of the PPG, over all of a speaker's frames.

    Used for per-speaker feature normalisation, which is transductive: it needs several
    (unlabelled) utterances of each test speaker. No label is read. Keep it off where a single
    file is classified, and report results with and without it.

    Returns ``{speaker: {"blocks": (mean, std) of shape (n_blocks, 1, D), "ppg": (mean, std)
    of shape (1, P)}}``.
    """
    sums: dict[str, list] = {}
    for utt, path in entries.items():
        stored = torch.load(path, map_location="cpu")
        blocks, ppg = stored["blocks"].double(), stored["ppg"].double()
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
