#!/usr/bin/env python3
"""Synthetic LibriSpeech-format corpus spoken by espeak-ng, for tests and small ASR proofs.

The layout and transcript format are LibriSpeech's, so ``librispeech_prepare.py`` reads it like the
real corpus::

    <out>/LibriSpeech/<split>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac   (16 kHz, 16 bit)
    <out>/LibriSpeech/<split>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt    ("ID TEXT", upper case)
    <out>/LibriSpeech/SPEAKERS.TXT                                                (voice of each speaker)

Sentences are generated deterministically from word lists and templates (``make_sentences``); each
split draws from its own disjoint sentence pool. A speaker is one espeak-ng voice (language + variant,
e.g. ``en-us+m3``) with its own pitch and rate; dev and test speakers use voices that no training
speaker uses. Every utterance gets a seeded random leading silence and a faint noise floor (about
45 dB SNR) so that no two recordings are sample-identical.

Work already done is skipped (existing FLAC files and transcripts are kept), so rerunning is cheap.
Failures (espeak-ng errors) are reported one line each at the end, with a non-zero exit status.

Requires the ``espeak-ng`` program (Debian: ``apt-get install espeak-ng``).

Usage::

    python tools/make_synthetic_librispeech.py OUT_DIR --preset proof
    python tools/make_synthetic_librispeech.py OUT_DIR --preset ci

Example
-------
>>> sentences = make_sentences(5, seed=0)
>>> len(sentences), len(set(sentences))
(5, 5)
>>> all(s == s.upper() for s in sentences)
True
"""

from __future__ import annotations

import argparse
import io
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

from qieemo_lobes.files import write_text_atomic

SAMPLE_RATE = 16000

# ---------------------------------------------------------------------------------------------
# Text: word lists and templates. Hand-written (no corpus is reachable offline); chosen to cover
# many phonemes, numbers, names, and function words, with 4 to 10 words per sentence.
# ---------------------------------------------------------------------------------------------
WORDS: dict[str, list[str]] = {
    "adj": (
        "small big old young quiet loud bright dark warm cold happy tired gentle heavy light "
        "quick slow clever brave calm busy empty famous fresh honest lucky narrow proud rich "
        "sharp simple smooth strange sweet wild wooden yellow green purple silver golden"
    ).split(),
    "noun": (
        "dog cat horse bird fish farmer teacher doctor sailor baker garden river mountain "
        "window kitchen table letter basket bottle candle castle forest island market "
        "village station bridge engine pencil blanket hammer ladder mirror pocket rabbit "
        "shadow ticket wagon jacket kettle lantern meadow orchard parcel puzzle violin "
        "statue harbor camera cottage machine"
    ).split(),
    "plural": (
        "dogs cats horses birds children farmers teachers sailors apples stones flowers "
        "letters baskets bottles candles windows wagons rabbits tickets boxes coins keys "
        "books chairs"
    ).split(),
    "verb_past": (
        "found carried painted watched cleaned opened followed moved dropped lifted pushed "
        "pulled fixed washed counted visited noticed borrowed hid sold bought built broke "
        "caught chose drew kept left met sent took threw"
    ).split(),
    "verb": (
        "find carry paint watch clean open follow move lift push pull fix wash count visit "
        "notice borrow hide sell buy build catch choose draw keep meet send take throw"
    ).split(),
    "prep": "near under behind beside inside above below across beyond toward".split(),
    "name": (
        "anna peter maria john lucy david emma thomas sarah george alice henry clara oliver "
        "julia samuel rose victor helen martin"
    ).split(),
    "place": (
        "school church office beach theater library hospital museum airport bakery "
        "farm park city harbor valley"
    ).split(),
    "adverb": (
        "slowly quickly quietly carefully early later again today yesterday tomorrow "
        "suddenly gladly"
    ).split(),
    "number": (
        "two three four five six seven eight nine ten eleven twelve twenty thirty forty "
        "fifty hundred"
    ).split(),
    "color": "red blue green black white brown grey orange pink yellow".split(),
    "time": "morning evening night afternoon winter summer spring autumn monday friday".split(),
}

TEMPLATES: tuple[str, ...] = (
    "the {adj} {noun} {verb_past} the {noun}",
    "{name} {verb_past} a {adj} {noun} {prep} the {noun}",
    "{number} {adj} {plural} were {prep} the {noun}",
    "did you see the {color} {noun} near the {place}",
    "please put the {noun} {prep} the {color} {noun}",
    "{name} and {name} walked to the {place} {adverb}",
    "we will {verb} the {noun} in the {time}",
    "my {noun} is {prep} the {adj} {noun}",
    "there are {number} {plural} in the {place}",
    "{name} {verb_past} {number} {color} {plural} {adverb}",
    "the {noun} at the {place} was very {adj}",
    "can you {verb} the {adj} {noun} for {name}",
    "every {time} the {noun} {verb_past} a {noun}",
    "{adverb} the {adj} {noun} {verb_past} {prep} the {noun}",
    "i think {name} will {verb} the {color} {noun}",
    "they {verb_past} the {plural} from the {place} in the {time}",
)


def make_sentences(n: int, seed: int = 0) -> list[str]:
    """Return ``n`` different upper-case sentences, the same ones for the same seed.

    Arguments
    ---------
    n : int
        Number of sentences.
    seed : int
        Seed of the template and word draws.

    Returns
    -------
    list of str
        Unique sentences, words separated by single spaces, in LibriSpeech's upper case.

    Example
    -------
    >>> make_sentences(2, seed=1) == make_sentences(2, seed=1)
    True
    """
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[str] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 100 * n + 1000:
            raise RuntimeError(f"could only make {len(out)} different sentences, {n} asked")
        template = rng.choice(TEMPLATES)
        # Fill each slot independently (str.format would reuse one word per repeated slot).
        parts = []
        for chunk in template.split(" "):
            if chunk.startswith("{") and chunk.endswith("}"):
                parts.append(rng.choice(WORDS[chunk[1:-1]]))
            else:
                parts.append(chunk)
        sentence = " ".join(parts).upper()
        if sentence not in seen:
            seen.add(sentence)
            out.append(sentence)
    return out


# ---------------------------------------------------------------------------------------------
# Speakers
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Speaker:
    """One synthetic speaker: an espeak-ng voice with its own pitch (0-99) and rate (words/min)."""

    spk_id: int
    voice: str
    pitch: int
    rate: int

    @property
    def sex(self) -> str:
        """'F' for the female variants (``+f1``...), 'M' otherwise."""
        return "F" if "+f" in self.voice else "M"


# Training voices use variants m1-m4 and f1-f3; dev and test use variants and pitch/rate settings
# that no training speaker has (held-out speakers, same language).
TRAIN_VOICES: tuple[tuple[str, int, int], ...] = (
    ("en-us+m1", 45, 160),
    ("en-us+f1", 55, 150),
    ("en+m2", 40, 170),
    ("en+f2", 60, 155),
    ("en-us+m3", 50, 175),
    ("en-gb-x-rp+f3", 65, 165),
    ("en-us+m4", 35, 150),
    ("en+f1", 50, 180),
    ("en-gb-x-rp+m1", 55, 160),
    ("en-us+f2", 45, 170),
    ("en+m3", 60, 150),
    ("en-us+f3", 40, 175),
    ("en-gb-x-rp+m4", 50, 165),
    ("en+m4", 45, 160),
    ("en-us+m2", 65, 155),
    ("en-gb-x-rp+f2", 35, 170),
)
DEV_VOICES: tuple[tuple[str, int, int], ...] = (
    ("en-us+m5", 48, 162),
    ("en+f4", 58, 158),
    ("en-gb-x-rp+m6", 42, 168),
)
TEST_VOICES: tuple[tuple[str, int, int], ...] = (
    ("en-us+m7", 52, 158),
    ("en+f5", 62, 164),
    ("en-gb-x-rp+m8", 44, 172),
    ("en-us+f4", 50, 166),
)


@dataclass
class SplitSpec:
    """What to generate for one split: speakers, sentences each reads, and the sentence pool size."""

    name: str
    voices: Sequence[tuple[str, int, int]]
    utts_per_speaker: int
    n_sentences: int
    first_spk_id: int
    chapters_per_speaker: int = 1


PRESETS: dict[str, list[SplitSpec]] = {
    # For CI: a few minutes of audio.
    "ci": [
        SplitSpec("train-clean-100", TRAIN_VOICES[:6], 30, 120, 1000),
        SplitSpec("dev-clean", DEV_VOICES[:1], 12, 12, 2000),
        SplitSpec("test-clean", TEST_VOICES[:2], 12, 24, 3000),
    ],
    # For the stage-1 proof (benchmarks/stage1_cer.py): about 40 minutes of training audio.
    "proof": [
        SplitSpec("train-clean-100", TRAIN_VOICES, 60, 480, 1000, chapters_per_speaker=2),
        SplitSpec("dev-clean", DEV_VOICES[:2], 30, 60, 2000),
        SplitSpec("test-clean", TEST_VOICES, 30, 120, 3000),
    ],
}


def _espeak_wav(text: str, speaker: Speaker, espeak: str) -> tuple[np.ndarray, int]:
    """Synthesize ``text`` with espeak-ng; return (float32 waveform, sample rate)."""
    proc = subprocess.run(
        [
            espeak,
            "-v",
            speaker.voice,
            "-p",
            str(speaker.pitch),
            "-s",
            str(speaker.rate),
            "--stdout",
            text.lower(),  # lower case: espeak spells out some all-capital words letter by letter
        ],
        capture_output=True,
        check=False,
        timeout=60,
    )
    if proc.returncode != 0 or not proc.stdout:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(f"espeak-ng failed (voice {speaker.voice}): {err[-1] if err else '?'}")
    wav, rate = sf.read(io.BytesIO(proc.stdout), dtype="float32")
    return wav, rate


def _render(text: str, speaker: Speaker, utt_id: str, path: Path, espeak: str) -> float:
    """Synthesize one utterance to ``path`` (16 kHz FLAC); return its duration in seconds."""
    wav, rate = _espeak_wav(text, speaker, espeak)
    sig = torchaudio.functional.resample(torch.from_numpy(wav), rate, SAMPLE_RATE).numpy()
    # Seeded per utterance, so the corpus is the same whatever the order of generation.
    rng = np.random.default_rng(hash_str(utt_id))
    lead = np.zeros(int(rng.uniform(0.02, 0.25) * SAMPLE_RATE), dtype=np.float32)
    sig = np.concatenate([lead, sig]).astype(np.float32)
    peak = float(np.abs(sig).max()) or 1.0
    sig = sig / peak * rng.uniform(0.3, 0.9)
    rms = float(np.sqrt(np.mean(sig**2))) or 1e-3
    sig = sig + rng.normal(0.0, rms * 10 ** (-45 / 20), size=sig.shape).astype(np.float32)
    sig = np.clip(sig, -1.0, 1.0)
    tmp = path.with_suffix(".tmp.flac")
    sf.write(tmp, sig, SAMPLE_RATE, subtype="PCM_16", format="FLAC")
    os.replace(tmp, path)
    return len(sig) / SAMPLE_RATE


def hash_str(text: str) -> int:
    """A stable (process-independent) 63-bit hash of a string (``hash()`` is salted per run)."""
    value = 1469598103934665603
    for byte in text.encode():
        value = ((value ^ byte) * 1099511628211) % (1 << 63)
    return value


def _split_jobs(spec: SplitSpec, pool: list[str], seed: int):
    """Yield (speaker, chapter, utt_index, text) for one split."""
    rng = random.Random(f"{seed}-{spec.name}")
    for k, (voice, pitch, rate) in enumerate(spec.voices):
        speaker = Speaker(spec.first_spk_id + k, voice, pitch, rate)
        # Each speaker reads a random subset of the split's pool (several speakers share sentences).
        texts = rng.sample(pool, min(spec.utts_per_speaker, len(pool)))
        per_chapter = -(-len(texts) // spec.chapters_per_speaker)
        for c in range(spec.chapters_per_speaker):
            chapter = 100 * speaker.spk_id + c
            for u, text in enumerate(texts[c * per_chapter : (c + 1) * per_chapter]):
                yield speaker, chapter, u, text


def make_corpus(
    out_dir: str | Path,
    preset: str | list[SplitSpec] = "ci",
    seed: int = 1234,
    espeak: str = "espeak-ng",
    workers: int = 2,
) -> dict[str, int]:
    """Write the corpus under ``out_dir/LibriSpeech``; return the number of utterances per split.

    Arguments
    ---------
    out_dir : str or Path
        Parent folder; the corpus goes to ``out_dir/LibriSpeech/<split>/...``.
    preset : str or list of SplitSpec
        ``"ci"`` or ``"proof"`` (see ``PRESETS``), or explicit split specifications.
    seed : int
        Seed of the sentence pools and of the speaker/sentence assignment.
    espeak : str
        The espeak-ng executable.
    workers : int
        Parallel synthesis threads (each runs one espeak-ng process at a time).

    Returns
    -------
    dict
        Split name -> number of utterances present after the run.

    Raises
    ------
    RuntimeError
        If espeak-ng is missing or some utterances could not be synthesized (all failures are
        listed, one per line, in the message).
    """
    if shutil.which(espeak) is None:
        raise RuntimeError(f"{espeak}: program not found (Debian: apt-get install espeak-ng)")
    specs = PRESETS[preset] if isinstance(preset, str) else preset
    root = Path(out_dir) / "LibriSpeech"
    # Disjoint sentence pools, one per split, cut from one deterministic list.
    all_sentences = make_sentences(sum(s.n_sentences for s in specs), seed=seed)
    pools, start = {}, 0
    for spec in specs:
        pools[spec.name] = all_sentences[start : start + spec.n_sentences]
        start += spec.n_sentences

    counts: dict[str, int] = {}
    failures: list[str] = []
    speakers: dict[int, tuple[Speaker, str]] = {}
    for spec in specs:
        chapters: dict[Path, list[tuple[str, str]]] = {}
        todo = []
        for speaker, chapter, u, text in _split_jobs(spec, pools[spec.name], seed):
            speakers[speaker.spk_id] = (speaker, spec.name)
            folder = root / spec.name / str(speaker.spk_id) / str(chapter)
            utt_id = f"{speaker.spk_id}-{chapter}-{u:04d}"
            chapters.setdefault(folder, []).append((utt_id, text))
            path = folder / f"{utt_id}.flac"
            if not path.is_file():
                todo.append((text, speaker, utt_id, path))
        for folder in chapters:
            folder.mkdir(parents=True, exist_ok=True)

        def job(item):
            text, speaker, utt_id, path = item
            try:
                _render(text, speaker, utt_id, path, espeak)
                return None
            except (RuntimeError, OSError, subprocess.SubprocessError) as err:
                return f"{path}: {err}"

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            failures += [msg for msg in pool.map(job, todo) if msg]

        n_ok = 0
        for folder, utts in chapters.items():
            spk, chap = folder.parent.name, folder.name
            lines = [f"{utt_id} {text}\n" for utt_id, text in utts]
            n_ok += sum((folder / f"{utt_id}.flac").is_file() for utt_id, _ in utts)
            trans = folder / f"{spk}-{chap}.trans.txt"
            write_text_atomic("".join(lines), trans)
        counts[spec.name] = n_ok

    table = [
        "; Synthetic LibriSpeech-format corpus (espeak-ng). ID | SEX | SUBSET | VOICE | PITCH | RATE\n"
    ]
    for spk_id in sorted(speakers):
        speaker, split = speakers[spk_id]
        table.append(
            f"{spk_id:<5}| {speaker.sex} | {split:<16}| {speaker.voice:<15}| "
            f"{speaker.pitch:<3}| {speaker.rate}\n"
        )
    write_text_atomic("".join(table), root / "SPEAKERS.TXT")
    if failures:
        raise RuntimeError(
            f"{len(failures)} utterance(s) could not be synthesized:\n" + "\n".join(failures)
        )
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", help="parent folder of the LibriSpeech/ corpus folder")
    parser.add_argument("--preset", default="proof", choices=sorted(PRESETS))
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--espeak", default="espeak-ng")
    args = parser.parse_args(argv)
    try:
        counts = make_corpus(args.out_dir, args.preset, args.seed, args.espeak, args.workers)
    except RuntimeError as err:
        print(f"make_synthetic_librispeech: {err}", file=sys.stderr)
        return 1
    for split, n in counts.items():
        print(f"{split}: {n} utterances")
    return 0


if __name__ == "__main__":
    sys.exit(main())
