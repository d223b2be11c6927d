"""The speech of the lexical corpus (``benchmarks/lexical_corpus.py``): voices, espeak-ng, manifest.

Every sentence of :mod:`lexical_sentences` is spoken by every espeak-ng voice (:data:`VOICES`) of
its split with the same fixed prosody (:data:`SPEED`, :data:`PITCH`, :data:`AMPLITUDE`) and
resampled to 16 kHz (:func:`synthesize`); :func:`plan_corpus` lists the utterances (the manifest
rows, :data:`COLUMNS`) and :func:`make_corpus` writes the WAVs, ``manifest.csv`` and
``synthesis.json``, keeping the valid WAVs of an earlier run. ``lexical_corpus.py`` re-exports
every name.

Example
-------
>>> espeak_args("en-us", "hello")
['espeak-ng', '-v', 'en-us', '-s', '150', '-p', '50', '-a', '100', '--stdout', 'hello']
>>> rows = plan_corpus(n_sentences=4, n_voices=3, seed=0)
>>> len(rows), rows[0]["path"].startswith("wavs/v01_angry_tr000_")
(28, True)
"""

from __future__ import annotations

import csv
import hashlib
import io
import shutil
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from lexical_sentences import (
    CLASSES,
    CorpusError,
    held_out_feel_words,
    make_sentences,
    split_templates,
)

from qieemo_lobes.files import atomic_open, write_json_atomic, write_text_atomic

SAMPLE_RATE = 16000
ESPEAK_RATE = 22050
# The fixed prosody: identical for every utterance of every class and voice.
SPEED, PITCH, AMPLITUDE = 150, 50, 100  # espeak-ng -s (words per minute), -p (0-99), -a (0-200)
MANIFEST = "manifest.csv"
SETTINGS = "synthesis.json"
COLUMNS = (
    "path,label,speaker,fold,text,voice,speed,pitch,amplitude,template,feel_word,desc_word,"
    "unseen_words"
).split(",")
# Speakers: espeak-ng voices (language + variant), in the order they are taken; the last
# ``n_test_voices`` of the first ``n_voices`` are the test speakers.
VOICES: tuple[str, ...] = (
    "en-us",
    "en-gb+f3",
    "en-us+m3",
    "en+f2",
    "en-gb-x-rp+m1",
    "en-us+f4",
    "en+m4",
    "en-gb-scotland+f1",
    "en-us+m7",
    "en-029+f5",
    "en-gb-x-rp+m2",
    "en-us-nyc+f2",
)


# ----------------------------------------------------------------------------------- speech


def espeak_args(voice: str, text: str, espeak: str = "espeak-ng") -> list[str]:
    """The espeak-ng command of one utterance: the fixed prosody, the voice, the text."""
    return [espeak, "-v", voice, "-s", str(SPEED), "-p", str(PITCH), "-a", str(AMPLITUDE)] + [
        "--stdout",
        text,
    ]


def synthesize(text: str, voice: str, espeak: str = "espeak-ng") -> np.ndarray:
    """``text`` spoken by ``voice`` with the fixed prosody: float32 samples at 16 kHz.

    Raises
    ------
    CorpusError
        espeak-ng failed (e.g. an unknown voice): one line with its message.
    """
    from scipy.signal import resample_poly

    proc = subprocess.run(espeak_args(voice, text, espeak), capture_output=True, timeout=60)
    if proc.returncode != 0 or not proc.stdout:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise CorpusError(f"espeak-ng failed (voice {voice}): {err[-1] if err else 'no output'}")
    wav, rate = sf.read(io.BytesIO(proc.stdout), dtype="float32")
    if wav.ndim > 1:
        wav = wav.mean(axis=1)
    if rate != ESPEAK_RATE:
        raise CorpusError(f"espeak-ng wrote {rate} Hz, expected {ESPEAK_RATE}")
    # 22050 -> 16000 Hz is 320/441.
    return np.clip(resample_poly(wav, 320, 441), -1.0, 1.0).astype(np.float32)


def _valid_wav(path: Path) -> bool:
    """An existing, readable 16 kHz mono WAV with samples (else it is written again)."""
    try:
        info = sf.info(str(path))
    except (RuntimeError, OSError, sf.LibsndfileError):
        return False
    return info.samplerate == SAMPLE_RATE and info.channels == 1 and info.frames > 0


def plan_corpus(
    n_sentences: int = 60,
    n_voices: int = 6,
    n_test_voices: int | None = None,
    seed: int = 0,
    held_out_words: int = 5,
) -> list[dict[str, Any]]:
    """The manifest rows (``COLUMNS``) of a corpus, without writing anything.

    Every sentence of a split is spoken by every voice of that split; speakers are ``v01`` ...
    (the index in :data:`VOICES`), the test voices the last ``n_test_voices`` (default a third,
    at least one) of the first ``n_voices``.
    """
    if n_test_voices is None:
        n_test_voices = max(1, n_voices // 3)
    if not 2 <= n_voices <= len(VOICES):
        raise CorpusError(f"n_voices must be 2..{len(VOICES)}, not {n_voices}")
    if not 1 <= n_test_voices < n_voices:
        raise CorpusError(f"n_test_voices must be 1..{n_voices - 1}, not {n_test_voices}")
    n_train_voices = n_voices - n_test_voices
    voices = {
        "train": list(enumerate(VOICES[:n_train_voices], start=1)),
        "test": list(enumerate(VOICES[n_train_voices:n_voices], start=n_train_voices + 1)),
    }
    rows = []
    for sentence in make_sentences(n_sentences, seed, held_out_words=held_out_words):
        for number, voice in voices[sentence["fold"]]:
            speaker = f"v{number:02d}"
            digest = hashlib.sha1(
                "|".join(espeak_args(voice, sentence["text"]) + [str(SAMPLE_RATE)]).encode()
            ).hexdigest()[:8]
            name = f"{speaker}_{sentence['label']}_{sentence['fold'][:2]}{sentence['index']:03d}"
            rows.append(
                {
                    "path": f"wavs/{name}_{digest}.wav",
                    "label": sentence["label"],
                    "speaker": speaker,
                    "fold": sentence["fold"],
                    "text": sentence["text"],
                    "voice": voice,
                    "speed": SPEED,
                    "pitch": PITCH,
                    "amplitude": AMPLITUDE,
                    "template": sentence["template"],
                    "feel_word": sentence["feel_word"],
                    "desc_word": sentence["desc_word"],
                    "unseen_words": sentence["unseen_words"],
                }
            )
    return rows


def _espeak_version(espeak: str) -> str:
    out = subprocess.run([espeak, "--version"], capture_output=True, text=True, timeout=30)
    return out.stdout.split("Data at")[0].strip()


def make_corpus(
    out: str | Path,
    n_sentences: int = 60,
    n_voices: int = 6,
    n_test_voices: int | None = None,
    seed: int = 0,
    held_out_words: int = 5,
    espeak: str = "espeak-ng",
    workers: int = 2,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the corpus into ``out``: WAVs, ``manifest.csv`` and ``synthesis.json``.

    Valid WAVs already there are kept; new ones are written whole (through a temporary file).
    The manifest is written last, and only when every utterance exists.

    Returns
    -------
    dict
        ``manifest`` (its path), ``n_utterances``, ``synthesised``, ``kept``, counts per fold
        and label, the voices of each fold.

    Raises
    ------
    CorpusError
        espeak-ng missing, bad sizes, or utterances that could not be synthesised (one line each).
    """
    if shutil.which(espeak) is None:
        raise CorpusError(f"{espeak}: program not found (Debian: apt-get install espeak-ng)")
    out = Path(out)
    rows = plan_corpus(n_sentences, n_voices, n_test_voices, seed, held_out_words)
    (out / "wavs").mkdir(parents=True, exist_ok=True)
    todo = [r for r in rows if not _valid_wav(out / r["path"])]
    if progress:
        print(f"lexical_corpus: {len(rows)} utterances, {len(todo)} to synthesise", file=sys.stderr)

    def job(row: dict[str, Any]) -> str | None:
        try:
            wav = synthesize(row["text"], row["voice"], espeak)
            with atomic_open(out / row["path"], "wb") as fh:
                sf.write(fh, wav, SAMPLE_RATE, format="WAV", subtype="PCM_16")
        except (CorpusError, OSError, RuntimeError, subprocess.SubprocessError) as err:
            return f"{out / row['path']}: {err}"
        return None

    failures: list[str] = []
    step = max(50, len(todo) // 20)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for done, future in enumerate(as_completed([pool.submit(job, r) for r in todo]), 1):
            if (message := future.result()) is not None:
                failures.append(message)
            if progress and (done % step == 0 or done == len(todo)):
                print(f"lexical_corpus: synthesised {done}/{len(todo)}", file=sys.stderr)
    if failures:
        raise CorpusError(
            f"{len(failures)} utterance(s) could not be synthesised:\n"
            + "\n".join(sorted(failures))
        )

    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(text.getvalue(), out / MANIFEST)
    train_templates, test_templates = split_templates(seed)
    fold_voices = {
        fold: sorted({(r["speaker"], r["voice"]) for r in rows if r["fold"] == fold})
        for fold in ("train", "test")
    }
    settings = {
        "generator": "benchmarks/lexical_corpus.py",
        "seed": seed,
        "n_sentences_per_class": n_sentences,
        "classes": list(CLASSES),
        "sample_rate": SAMPLE_RATE,
        "espeak": {
            "version": _espeak_version(espeak),
            "speed": SPEED,
            "pitch": PITCH,
            "amplitude": AMPLITUDE,
            "command": espeak_args("<voice>", "<text>", espeak),
        },
        "voices": {fold: dict(pairs) for fold, pairs in fold_voices.items()},
        "templates": {"train": train_templates, "test": test_templates},
        "held_out_feel_words": held_out_feel_words(seed, held_out_words),
        "counts": {
            fold: dict(sorted(Counter(r["label"] for r in rows if r["fold"] == fold).items()))
            for fold in ("train", "test")
        },
    }
    write_json_atomic(settings, out / SETTINGS)
    return {
        "manifest": str(out / MANIFEST),
        "n_utterances": len(rows),
        "synthesised": len(todo),
        "kept": len(rows) - len(todo),
        "counts": settings["counts"],
        "voices": settings["voices"],
    }


def read_manifest(path: str | Path) -> list[dict[str, str]]:
    """The rows of a ``manifest.csv`` as dicts of strings."""
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))
