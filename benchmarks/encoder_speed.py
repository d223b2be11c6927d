"""Seconds per clip of the Whisper encoder: WhisperBlocks (fit, 30s) against CTranslate2.

All three run in one process, on the same EmoDB clips, one clip at a time, with the same number
of threads. CTranslate2 encodes the 30-second log-mel of transformers' feature extractor in
float32 (its CPU backend widens the fp16 weights), the reference the equivalence test uses.

Targets (2-core CPU): ``fit`` at least 10x faster per clip than CTranslate2; ``30s`` within 1.5x.

    python benchmarks/encoder_speed.py --model whisper-base --clips 20 --threads 2
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def per_clip_seconds(fn, clips, repeats: int) -> list[float]:
    fn(clips[0])  # warm-up
    times = []
    for clip in clips:
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            fn(clip)
            best = min(best, time.perf_counter() - start)
        times.append(best)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="whisper-base", choices=["whisper-base", "whisper-tiny.en"]
    )
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "emodb"))
    parser.add_argument("--clips", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)

    import ctranslate2
    from transformers import WhisperFeatureExtractor

    from qieemo_lobes.ct2_whisper import ct2_model_dir
    from qieemo_lobes.encoders import WhisperBlocks
    from qieemo_lobes.features import read_audio

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    files = sorted(Path(args.data).glob("*.wav"))[: args.clips]
    if not files:
        print(f"{args.data}: no .wav files", file=sys.stderr)
        return 2
    clips = [read_audio(str(f)) for f in files]

    fit = WhisperBlocks(args.model, window="fit")
    full = WhisperBlocks(args.model, window="30s")
    extractor = WhisperFeatureExtractor(feature_size=fit.whisper._mel_filters.shape[0])
    ct2 = ctranslate2.models.Whisper(
        str(ct2_model_dir(args.model)),
        device="cpu",
        compute_type="float32",
        intra_threads=args.threads,
    )

    def run_ct2(wav: torch.Tensor) -> None:
        mel = extractor(wav.numpy(), sampling_rate=16000, return_tensors="np").input_features
        ct2.encode(ctranslate2.StorageView.from_array(mel.astype(np.float32)), to_cpu=True)

    def run_blocks(encoder):
        return lambda wav: encoder(wav[None], torch.ones(1))

    results = {
        "CTranslate2 encode (30 s window, fp32)": per_clip_seconds(run_ct2, clips, args.repeats),
        "WhisperBlocks window=30s": per_clip_seconds(run_blocks(full), clips, args.repeats),
        "WhisperBlocks window=fit": per_clip_seconds(run_blocks(fit), clips, args.repeats),
    }
    reference = statistics.mean(results["CTranslate2 encode (30 s window, fp32)"])
    duration = statistics.mean(len(c) / 16000 for c in clips)
    print(
        f"model {args.model}; {len(clips)} EmoDB clips of {duration:.2f} s; {args.threads} threads; "
        f"torch {torch.__version__}, ctranslate2 {ctranslate2.__version__}; {platform.processor() or platform.machine()}"
    )
    print(
        f"1-minute load average: {load_before:.1f} before, {os.getloadavg()[0]:.1f} after "
        f"(other processes on the {os.cpu_count()} cores distort the absolute times)"
    )
    print()
    print("| encoder | s/clip (mean) | s/clip (median) | speed-up vs CTranslate2 |")
    print("|---|---|---|---|")
    for name, times in results.items():
        mean = statistics.mean(times)
        print(f"| {name} | {mean:.4f} | {statistics.median(times):.4f} | {reference / mean:.2f}x |")
    fit_gain = reference / statistics.mean(results["WhisperBlocks window=fit"])
    full_ratio = statistics.mean(results["WhisperBlocks window=30s"]) / reference
    print()
    print(
        f"target fit >= 10x faster than CTranslate2: {fit_gain:.1f}x -> {'PASS' if fit_gain >= 10 else 'FAIL'}"
    )
    print(
        f"target 30s <= 1.5x CTranslate2's time: {full_ratio:.2f}x -> {'PASS' if full_ratio <= 1.5 else 'FAIL'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
