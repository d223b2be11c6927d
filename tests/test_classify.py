"""``python -m qieemo_lobes.classify`` end to end: real EmoDB clips, every kind of bad input.

The model is the whisper-tiny.en recipe run exported once per session by
:func:`tests.test_interfaces.tiny_run`. The command runs as a subprocess, once on a folder that
mixes good clips, every bad input of the issue and a 3-minute recording (JSON Lines, ``--out``,
``--plot``), then once per other format.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from tests.conftest import REPO_ROOT
from tests.test_interfaces import tiny_run

CLIP = "03a01Fa.wav"  # a 2 s EmoDB clip at 22.05 kHz
OTHER_CLIP = "03a01Wa.wav"  # the same sentence, angry: the stereo file's right channel
LONG_CLIPS = 20  # the long recording: 20 clips, 7 s of silence after each (180 s)
LONG_GAP_S = 7.0

# name -> (how the file is made, the problem the command must report)
BAD_INPUTS = {
    "missing.wav": (None, "no such file or directory"),
    "empty.wav": ("empty", "empty file (0 bytes)"),
    "zero_length.wav": ("zero_length", "no audio samples (zero length)"),
    "silence.wav": ("silence", "silence only"),
    "corrupt.wav": ("corrupt", "not a readable audio file"),
    "truncated.wav": ("truncated", "truncated audio file"),
    "text.wav": ("text", "not an audio file (text content)"),
    "nan.wav": ("nan", "contains NaN or infinite samples"),
    "inf.wav": ("inf", "contains NaN or infinite samples"),
}
GOOD_INPUTS = (
    "clip.wav",
    "clip_8k.wav",
    "clip_96k.wav",
    "clip_stereo.wav",
    "clip_mix.wav",
    "long.flac",
)


def run_classify(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "qieemo_lobes.classify", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def make_inputs(folder: Path, emodb_dir: Path) -> None:
    """Write every good and bad input of the test into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    clip, rate = sf.read(emodb_dir / CLIP, dtype="float32")
    wav = torch.from_numpy(clip)
    sf.write(folder / "clip.wav", clip, rate)
    sf.write(folder / "clip_8k.wav", torchaudio.functional.resample(wav, rate, 8000).numpy(), 8000)
    sf.write(
        folder / "clip_96k.wav", torchaudio.functional.resample(wav, rate, 96000).numpy(), 96000
    )
    other, _ = sf.read(emodb_dir / OTHER_CLIP, dtype="float32")
    sf.write(folder / "clip_stereo.wav", np.stack([clip, other], axis=1), rate, subtype="FLOAT")
    sf.write(folder / "clip_mix.wav", (clip + other) / 2, rate, subtype="FLOAT")

    (folder / "empty.wav").write_bytes(b"")
    sf.write(folder / "zero_length.wav", np.zeros(0, dtype=np.float32), 16000)
    sf.write(folder / "silence.wav", np.zeros(3 * 16000, dtype=np.float32), 16000)
    (folder / "corrupt.wav").write_bytes(np.random.default_rng(0).bytes(6000))
    whole = (emodb_dir / CLIP).read_bytes()
    (folder / "truncated.wav").write_bytes(whole[: len(whole) // 2])
    (folder / "text.wav").write_text("this is a text file, not audio\n" * 20)
    bad = clip.copy()
    bad[1000] = np.nan
    sf.write(folder / "nan.wav", bad, rate, subtype="FLOAT")
    bad[1000] = np.inf
    sf.write(folder / "inf.wav", bad, rate, subtype="FLOAT")

    clips = sorted(emodb_dir.glob("*.wav"))[:LONG_CLIPS]
    with sf.SoundFile(folder / "long.flac", "w", rate, 1) as out:
        for path in clips:
            out.write(sf.read(path, dtype="float32")[0])
            out.write(np.zeros(int(LONG_GAP_S * rate), dtype=np.float32))


@pytest.fixture(scope="module")
def model(tmp_path_factory, emodb_dir) -> Path:
    return tiny_run(tmp_path_factory, emodb_dir)[1]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, emodb_dir) -> Path:
    folder = tmp_path_factory.mktemp("inputs") / "audio"
    make_inputs(folder, emodb_dir)
    return folder


@pytest.fixture(scope="module")
def json_run(model, inputs, tmp_path_factory):
    """One run over the folder (recursive) plus a missing path: JSON Lines, --out, --plot."""
    out_dir = tmp_path_factory.mktemp("json_out")
    result = run_classify(
        str(inputs),
        str(inputs / "missing.wav"),
        "--model",
        str(model),
        "--format",
        "json",
        "--out",
        str(out_dir / "results.jsonl"),
        "--plot",
        str(out_dir / "plots"),
        "--batch-size",
        "3",
    )
    lines = (out_dir / "results.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    return result, {Path(r["path"]).name: r for r in records}, records, out_dir


def test_exit_code_and_every_input_reported_once(json_run, inputs):
    result, by_name, records, out_dir = json_run
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""  # --out: nothing on stdout
    expected = set(BAD_INPUTS) | set(GOOD_INPUTS)
    assert sorted(by_name) == sorted(expected) and len(records) == len(expected)
    # input order: the missing path (an argument that gave nothing) ... then the folder, sorted
    files = [r["path"] for r in records if Path(r["path"]).name != "missing.wav"]
    assert files == sorted(files)
    stderr = result.stderr.strip().splitlines()
    assert stderr[-1] == f"classify: {len(BAD_INPUTS)} of {len(expected)} inputs failed"
    assert len(stderr) == len(BAD_INPUTS) + 1
    assert [p.name for p in out_dir.iterdir() if p.name.startswith(".")] == []  # no temp left
    mode = stat.S_IMODE((out_dir / "results.jsonl").stat().st_mode)
    assert mode & stat.S_IRGRP  # a normal file, not the 0600 of a temporary file


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_gets_one_line_naming_file_and_problem(json_run, name):
    result, by_name, _, _ = json_run
    problem = BAD_INPUTS[name][1]
    record = by_name[name]
    assert set(record) == {"path", "error"} and problem in record["error"]
    lines = [line for line in result.stderr.splitlines() if Path(line.split(": ")[0]).name == name]
    assert len(lines) == 1 and problem in lines[0]
    assert lines[0].startswith(record["path"] + ": ")


def _probabilities(record: dict) -> np.ndarray:
    return np.array(list(record["probabilities"].values()))


@pytest.mark.parametrize("name", [n for n in GOOD_INPUTS if n.startswith("clip")])
def test_good_clips_get_label_confidence_and_every_probability(json_run, model, name):
    _, by_name, _, _ = json_run
    record = by_name[name]
    classes = json.loads((model / "metadata.json").read_text())["classes"]
    assert set(record) == {"path", "label", "confidence", "probabilities", "duration_s", "segments"}
    assert list(record["probabilities"]) == classes
    probs = _probabilities(record)
    assert abs(probs.sum() - 1) < 1e-3 and (probs >= 0).all()
    assert record["label"] == max(record["probabilities"], key=record["probabilities"].get)
    assert record["confidence"] == record["probabilities"][record["label"]]
    assert record["duration_s"] == pytest.approx(2.0, abs=1e-3)
    assert record["segments"] == []


def test_resampled_copies_match_the_original(json_run):
    """96 kHz holds the whole 16 kHz band: it scores as the original. 8 kHz loses the top half
    of the band, so it only has to be close."""
    _, by_name, _, _ = json_run
    original = _probabilities(by_name["clip.wav"])
    assert np.abs(_probabilities(by_name["clip_96k.wav"]) - original).max() < 0.02
    assert np.abs(_probabilities(by_name["clip_8k.wav"]) - original).max() < 0.25


def test_stereo_is_averaged_to_mono(json_run):
    """A stereo file of two different clips scores as the mono mean of its channels."""
    _, by_name, _, _ = json_run
    stereo, mix = by_name["clip_stereo.wav"], by_name["clip_mix.wav"]
    assert np.abs(_probabilities(stereo) - _probabilities(mix)).max() < 1e-3
    assert stereo["label"] == mix["label"]


def test_long_recording_is_segmented_and_aggregated(json_run):
    _, by_name, _, out_dir = json_run
    record = by_name["long.flac"]
    duration = LONG_CLIPS * (2.0 + LONG_GAP_S)
    assert record["duration_s"] == pytest.approx(duration, abs=0.01)
    segments = record["segments"]
    # One segment per clip (a clip may split at a long internal pause, never merge with another).
    assert LONG_CLIPS <= len(segments) <= 2 * LONG_CLIPS
    for seg in segments:
        assert set(seg) == {"start_s", "end_s", "label", "confidence", "probabilities"}
        assert (
            0 <= seg["start_s"] < seg["end_s"] <= duration and seg["end_s"] - seg["start_s"] <= 30
        )
        period = 2.0 + LONG_GAP_S
        clip = int((seg["start_s"] + 1.0) // period)  # each segment lies around one clip
        assert seg["end_s"] <= clip * period + 2.0 + 1.0
        assert seg["label"] == max(seg["probabilities"], key=seg["probabilities"].get)
    starts = [seg["start_s"] for seg in segments]
    assert starts == sorted(starts)
    # Overall: duration-weighted mean of the segment probabilities.
    weights = np.array([seg["end_s"] - seg["start_s"] for seg in segments])
    stacked = np.array([_probabilities(seg) for seg in segments])
    overall = (weights[:, None] * stacked).sum(0) / weights.sum()
    assert np.abs(_probabilities(record) - overall).max() < 1e-3
    assert record["label"] == list(record["probabilities"])[int(overall.argmax())]
    plot = out_dir / "plots" / "long.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 5000
    assert sorted(p.name for p in (out_dir / "plots").iterdir()) == ["long.png"]  # long ones only


def test_csv_format(model, inputs, emodb_dir, tmp_path):
    # A recording just over the 30 s limit: 4 clips, 6 s apart, 2 s of silence at the end.
    rate = 22050
    speech = [sf.read(p, dtype="float32")[0] for p in sorted(emodb_dir.glob("*.wav"))[:4]]
    gap = np.zeros(6 * rate, dtype=np.float32)
    long_audio = np.concatenate([gap] + [x for clip in speech for x in (clip, gap)])
    sf.write(tmp_path / "long.flac", long_audio, rate)
    result = run_classify(
        str(inputs / "clip.wav"),
        str(inputs / "silence.wav"),
        str(tmp_path / "long.flac"),
        "--model",
        str(model),
        "--format",
        "csv",
    )
    assert result.returncode == 1
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    classes = json.loads((model / "metadata.json").read_text())["classes"]
    assert list(rows[0]) == [
        "path",
        "segment",
        "start_s",
        "end_s",
        "duration_s",
        "label",
        "confidence",
        *classes,
        "error",
    ]
    clip, silence, long_file, *segments = rows
    assert clip["segment"] == "" and clip["error"] == "" and float(clip["duration_s"]) == 2.0
    assert sum(float(clip[c]) for c in classes) == pytest.approx(1.0, abs=1e-3)
    assert silence["label"] == "" and "silence only" in silence["error"]
    assert long_file["path"].endswith("long.flac") and long_file["segment"] == ""
    assert [int(s["segment"]) for s in segments] == list(range(1, len(segments) + 1))
    assert float(long_file["duration_s"]) == pytest.approx(len(long_audio) / rate, abs=1e-3)
    assert 4 <= len(segments) <= 8 and all(s["path"] == long_file["path"] for s in segments)
    for seg in segments:
        assert seg["duration_s"] == "" and float(seg["start_s"]) < float(seg["end_s"])
        assert sum(float(seg[c]) for c in classes) == pytest.approx(1.0, abs=1e-3)
    assert (
        result.stderr.strip().splitlines()[0]
        == f"{inputs / 'silence.wav'}: silence only (no speech to classify)"
    )


def test_table_format_with_globs_and_directories(model, inputs, tmp_path):
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    os.symlink(inputs / "clip_8k.wav", nested / "deep.wav")
    (nested / "notes.txt").write_text("not audio, skipped in folders")
    result = run_classify(
        str(inputs / "clip_9*.wav"),  # glob
        str(inputs / "clip.wav"),
        str(tmp_path / "a"),  # folder, searched recursively
        "--model",
        str(model),
        "--format",
        "table",
        "--device",
        "cpu",
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0].split()[:4] == ["path", "seconds", "label", "conf"]
    paths = [line.split()[0] for line in lines[1:]]
    assert paths == [
        str(inputs / "clip_96k.wav"),
        str(inputs / "clip.wav"),
        str(nested / "deep.wav"),
    ]
    for line in lines[1:]:
        cells = line.split()
        probabilities = [float(x) for x in cells[4:]]
        assert cells[1] == "2.00" and float(cells[3]) == max(probabilities)


def test_missing_default_model_is_one_line_exit_2(monkeypatch, capsys, tmp_path):
    from qieemo_lobes import classify

    monkeypatch.setattr(classify, "DEFAULT_MODEL_DIR", tmp_path / "default_model")
    assert classify.main([str(tmp_path)], configure_process=False) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "default model not found" in err[0] and "default_model" in err[0]


def test_refusals_exit_2(capsys, tmp_path, model):
    from qieemo_lobes import classify

    cases = [
        (["x.wav", "--model", str(tmp_path / "nope")], "model folder not found"),
        (["x.wav", "--model", str(tmp_path)], "not a model folder"),
        (
            ["x.wav", "--model", str(model), "--out", str(tmp_path / "no" / "r.json")],
            "does not exist",
        ),
        (["x.wav", "--model", str(model), "--batch-size", "0"], "--batch-size"),
    ]
    for argv, problem in cases:
        assert classify.main(argv, configure_process=False) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and problem in err[0], (argv, err)


def test_inputs_without_audio_fail_without_loading_the_model(capsys, tmp_path, model):
    from qieemo_lobes import classify

    empty = tmp_path / "empty_dir"
    empty.mkdir()
    argv = [str(empty), str(tmp_path / "*.flac"), "--model", str(model)]
    assert classify.main(argv, configure_process=False) == 1
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert lines[0] == f"{empty}: no audio files in directory"
    assert lines[1] == f"{tmp_path / '*.flac'}: no audio files match this pattern"
    assert lines[2] == "classify: 2 of 2 inputs failed"
    assert "ERROR" not in out and "error: no audio files in directory" in out


# Run the command in-process, then report which heavy libraries it imported.
IMPORTS_PROBE = """
import json, runpy, sys
sys.argv = ["qieemo_lobes.classify", *sys.argv[1:]]
try:
    runpy.run_module("qieemo_lobes.classify", run_name="__main__")
except SystemExit as exit:
    code = exit.code
heavy = ("transformers", "matplotlib", "silero_vad", "sklearn", "speechbrain.integrations")
loaded = sorted(m for m in sys.modules if m.startswith(heavy))
print(json.dumps({"code": code, "loaded": loaded}), file=sys.stderr)
"""


def test_classifying_a_clip_imports_no_heavy_library(model, inputs):
    """The exported model's encoder is TorchWhisperBlocks: classifying a short clip imports
    neither transformers nor SpeechBrain's Whisper integration (seconds of start-up), nor
    matplotlib (only with --plot) or Silero VAD (only for recordings over 30 s)."""
    assert "TorchWhisperBlocks" in (model / "hyperparams.yaml").read_text()
    result = subprocess.run(
        [sys.executable, "-c", IMPORTS_PROBE, str(inputs / "clip.wav"), "--model", str(model)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = json.loads(result.stderr.strip().splitlines()[-1])
    assert report == {"code": 0, "loaded": []}, result.stderr
    assert result.stdout.splitlines()[1].split()[0] == str(inputs / "clip.wav")


def _just_over_30s(emodb_dir: Path, path: Path) -> None:
    """A recording just over the 30 s limit (segmented): 4 clips, 6 s apart."""
    rate = 22050
    speech = [sf.read(p, dtype="float32")[0] for p in sorted(emodb_dir.glob("*.wav"))[:4]]
    gap = np.zeros(6 * rate, dtype=np.float32)
    sf.write(path, np.concatenate([gap] + [x for clip in speech for x in (clip, gap)]), rate)


def _check_top(entry: dict, k: int) -> None:
    """``top``: k distinct labels, the entry's label first, probabilities as in the entry."""
    top = entry["top"]
    assert len(top) == k and len({t["label"] for t in top}) == k
    assert all(set(t) == {"label", "probability"} for t in top)
    assert top[0]["label"] == entry["label"] and top[0]["probability"] == entry["confidence"]
    probabilities = [t["probability"] for t in top]
    assert probabilities == sorted(probabilities, reverse=True)
    assert all(entry["probabilities"][t["label"]] == t["probability"] for t in top)


def test_top_k_json_for_files_and_segments(model, inputs, emodb_dir, tmp_path):
    classes = json.loads((model / "metadata.json").read_text())["classes"]
    _just_over_30s(emodb_dir, tmp_path / "long.flac")
    k = len(classes)  # the largest K accepted: every class, ranked
    result = run_classify(
        str(inputs / "clip.wav"),
        str(tmp_path / "long.flac"),
        "--model",
        str(model),
        "--format",
        "json",
        "--top-k",
        str(k),
    )
    assert result.returncode == 0, result.stderr
    clip, long_file = (json.loads(line) for line in result.stdout.splitlines())
    fields = ["path", "label", "confidence", "probabilities", "top", "duration_s", "segments"]
    assert list(clip) == list(long_file) == fields
    _check_top(clip, k)
    _check_top(long_file, k)
    assert len(long_file["segments"]) >= 4
    for segment in long_file["segments"]:
        _check_top(segment, k)


def test_top_k_csv_and_table(model, inputs):
    classes = json.loads((model / "metadata.json").read_text())["classes"]
    common = [str(inputs / "clip.wav"), str(inputs / "silence.wav"), "--model", str(model)]
    result = run_classify(*common, "--format", "csv", "--top-k", "2")
    assert result.returncode == 1  # the silent file
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert list(rows[0])[7:] == [*classes, "top1", "top1_p", "top2", "top2_p", "error"]
    clip, silence = rows
    assert clip["top1"] == clip["label"] and clip["top1_p"] == clip["confidence"]
    assert clip["top2"] != clip["top1"] and clip[clip["top2"]] == clip["top2_p"]
    assert float(clip["top2_p"]) <= float(clip["top1_p"])
    assert [silence[c] for c in ("top1", "top1_p", "top2", "top2_p")] == ["", "", "", ""]
    assert "silence only" in silence["error"]

    result = run_classify(*common, "--top-k", "2")
    assert result.returncode == 1
    header, clip_line, silence_line = result.stdout.splitlines()
    assert header.split()[:5] == ["path", "seconds", "label", "conf", "top"]
    assert header.split()[5:] == classes
    label, conf = clip_line.split()[2:4]
    top = re.search(r"  (\w+) \((\d\.\d\d)\), (\w+) \((\d\.\d\d)\)  ", clip_line)
    assert top is not None, clip_line
    assert top[1] == label and top[2] == conf and top[3] != label
    assert float(top[4]) <= float(conf)
    assert "error: silence only" in silence_line


@pytest.mark.parametrize("k", ["0", "-1", "8"])
def test_top_k_outside_the_classes_is_refused(capsys, model, k):
    from qieemo_lobes import classify

    argv = ["x.wav", "--model", str(model), "--top-k", k]
    assert classify.main(argv, configure_process=False) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.strip().splitlines() == [
        f"classify: --top-k must be between 1 and 7 (the model's classes), got {k}"
    ]


def _adapt_inputs(emodb_dir: Path, folder: Path, n: int) -> list[Path]:
    """``n`` EmoDB clips, 20 dB quieter and high-passed: one recording set-up unlike training."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for source in sorted(emodb_dir.glob("*.wav"))[:n]:
        clip, rate = sf.read(source, dtype="float32")
        quiet = torchaudio.functional.highpass_biquad(torch.from_numpy(clip) * 0.1, rate, 300.0)
        sf.write(folder / source.name, quiet.numpy(), rate)
        paths.append(folder / source.name)
    return paths


def test_adapt_classifies_with_the_inputs_statistics(model, emodb_dir, tmp_path):
    """--adapt gives what EmotionRecognizer.domain_statistics + adapted give in-process, which
    differs from the unadapted result."""
    from qieemo_lobes.classify import ADAPT_MIN_CLIPS
    from qieemo_lobes.interfaces import EmotionRecognizer

    paths = _adapt_inputs(emodb_dir, tmp_path / "audio", ADAPT_MIN_CLIPS + 2)
    adapted_run = run_classify(
        str(tmp_path / "audio"), "--model", str(model), "--format", "json", "--adapt"
    )
    plain_run = run_classify(str(tmp_path / "audio"), "--model", str(model), "--format", "json")
    assert adapted_run.returncode == 0 and plain_run.returncode == 0, adapted_run.stderr
    assert adapted_run.stderr.strip().splitlines() == [
        f"classify: adapted to the inputs (input statistics of {len(paths)} clips); "
        "each result depends on the other inputs"
    ]
    adapted_probs = {
        Path(r["path"]).name: _probabilities(r)
        for r in map(json.loads, adapted_run.stdout.splitlines())
    }
    plain_probs = {
        Path(r["path"]).name: _probabilities(r)
        for r in map(json.loads, plain_run.stdout.splitlines())
    }

    recognizer = EmotionRecognizer.from_hparams(source=model)
    stats = recognizer.domain_statistics(recognizer.load_audio(p) for p in paths)
    assert stats.n_clips == len(paths)
    with recognizer.adapted(stats):
        expected = {p.name: recognizer.classify_file(p)[0].exp()[0].numpy() for p in paths}
    for name, probs in expected.items():
        assert np.abs(adapted_probs[name] - probs).max() < 2e-4, name
    # The adaptation changed the results (the tiny test model's probabilities are all close to
    # uniform: 0.006 here, 30 times the tolerance above).
    change = max(np.abs(adapted_probs[n] - plain_probs[n]).max() for n in expected)
    assert change > 2e-3


def test_adapt_measures_a_long_recording_by_its_speech_segments(model, inputs):
    result = run_classify(str(inputs / "long.flac"), "--model", str(model), "--adapt")
    assert result.returncode == 0, result.stderr
    n_clips = int(re.search(r"input statistics of (\d+) clips", result.stderr).group(1))
    assert LONG_CLIPS - 2 <= n_clips <= LONG_CLIPS + 2  # its 20 clips, as speech segments


def test_adapt_refusals_exit_2(capsys, model, emodb_dir, tmp_path):
    from qieemo_lobes import classify

    few = _adapt_inputs(emodb_dir, tmp_path / "few", classify.ADAPT_MIN_CLIPS - 1)
    cases = [
        (
            [str(tmp_path / "few"), "--model", str(model), "--adapt"],
            f"--adapt: needs at least {classify.ADAPT_MIN_CLIPS} readable clips of one domain "
            f"(files, or speech segments of long recordings); the inputs gave {len(few)}",
        ),
        (
            [str(few[0]), "--adapt", "--backend", "onnx"],
            "--adapt cannot be combined with --backend onnx",
        ),
        (
            [str(few[0]), "--adapt", "--shard", "1/2", "--out", str(tmp_path / "r.json")],
            "--adapt cannot be combined with --shard",
        ),
    ]
    for argv, problem in cases:
        assert classify.main(argv, configure_process=False) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"classify: {problem}"], (argv, err)


def test_adapt_folder_adapts_each_folder_to_its_own_files(model, emodb_dir, tmp_path):
    from qieemo_lobes.classify import ADAPT_MIN_CLIPS

    quiet = _adapt_inputs(emodb_dir, tmp_path / "audio" / "quiet", ADAPT_MIN_CLIPS)
    plain = tmp_path / "audio" / "plain"
    plain.mkdir()
    for source in sorted(emodb_dir.glob("*.wav"))[ADAPT_MIN_CLIPS : 2 * ADAPT_MIN_CLIPS]:
        (plain / source.name).write_bytes(source.read_bytes())
    both = run_classify(
        str(tmp_path / "audio"), "--model", str(model), "--format", "json", "--adapt", "folder"
    )
    alone = run_classify(str(quiet[0].parent), "--model", str(model), "--format", "json", "--adapt")
    assert both.returncode == 0 and alone.returncode == 0, both.stderr
    assert sorted(both.stderr.strip().splitlines()) == [
        f"classify: adapted to folder {tmp_path / 'audio' / name} (input statistics of "
        f"{ADAPT_MIN_CLIPS} clips); each result depends on the other inputs"
        for name in ("plain", "quiet")
    ]
    by_folder = {r["path"]: _probabilities(r) for r in map(json.loads, both.stdout.splitlines())}
    for record in map(json.loads, alone.stdout.splitlines()):
        assert np.abs(by_folder[record["path"]] - _probabilities(record)).max() < 2e-4

    (plain / sorted(p.name for p in plain.iterdir())[0]).unlink()  # one clip too few
    refused = run_classify(str(tmp_path / "audio"), "--model", str(model), "--adapt", "folder")
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.strip().splitlines()[-1] == (
        f"classify: --adapt: folder {plain}: needs at least {ADAPT_MIN_CLIPS} readable clips of one "
        f"domain (files, or speech segments of long recordings); the inputs gave {ADAPT_MIN_CLIPS - 1}"
    )
