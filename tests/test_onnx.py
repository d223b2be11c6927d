"""ONNX export and torch-free inference: ``export_onnx``, ``classify --backend onnx``.

The built-in default model is exported once per module (about half a minute); every comparison
is against the torch path (:class:`~qieemo_lobes.interfaces.EmotionRecognizer`) on real EmoDB
(22.05 kHz, resampled) and RAVDESS (16 kHz) clips.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install onnxruntime)")
pytest.importorskip("onnx", reason="onnx is not installed (the exporter needs it)")
pytest.importorskip("onnxscript", reason="onnxscript is not installed (the exporter needs it)")

import torch  # noqa: E402

from qieemo_lobes import classify  # noqa: E402
from qieemo_lobes.audio import load_audio  # noqa: E402
from qieemo_lobes.classify import DEFAULT_MODEL_DIR  # noqa: E402
from qieemo_lobes.export_onnx import default_opset, export_onnx  # noqa: E402
from qieemo_lobes.export_onnx import main as export_main  # noqa: E402
from qieemo_lobes.onnx_inference import OnnxRecognizer  # noqa: E402
from tests.conftest import REPO_ROOT  # noqa: E402

PROB_TOL = 1e-3
BLOCKED = ("torch", "torchaudio", "speechbrain", "transformers")


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory) -> Path:
    return export_onnx(DEFAULT_MODEL_DIR, tmp_path_factory.mktemp("onnx") / "default_onnx")


@pytest.fixture(scope="module")
def torch_model():
    from qieemo_lobes.interfaces import EmotionRecognizer

    return EmotionRecognizer.from_hparams(source=str(DEFAULT_MODEL_DIR))


@pytest.fixture(scope="module")
def onnx_recognizer(onnx_model) -> OnnxRecognizer:
    return OnnxRecognizer(onnx_model, threads=1)


@pytest.fixture(scope="module")
def clips(emodb_dir, ravdess_dir) -> list[Path]:
    """Four EmoDB clips (22.05 kHz, 2 s) and four RAVDESS clips (16 kHz, 3-4 s)."""
    return (
        sorted(emodb_dir.glob("*.wav"))[::97][:4]
        + sorted((ravdess_dir / "Actor_01").glob("*.flac"))[::13][:4]
    )


def torch_probabilities(model, wavs: list[torch.Tensor]) -> np.ndarray:
    from speechbrain.utils.data_utils import batch_pad_right

    padded, lens = batch_pad_right(wavs)
    return model.classify_batch(padded, lens)[0].exp().numpy()


def test_the_folder_holds_the_truncated_encoder_the_head_and_the_front_end(onnx_model):
    config = json.loads((onnx_model / "config.json").read_text())
    names = {p.name for p in onnx_model.iterdir()}
    assert {"encoder.onnx", "head.onnx", "labels.json", "mel_filters.npy", "MODEL_CARD.md"} <= names
    assert json.loads((onnx_model / "labels.json").read_text()) == [
        "angry",
        "happy",
        "neutral",
        "sad",
    ]
    # The shipped head fuses all six blocks without CMA: all six run, no PPG.
    assert config["encoder"]["blocks"] == [1, 2, 3, 4, 5, 6]
    assert config["encoder"]["blocks_run"] == 6
    assert config["encoder"]["ppg"] is False and config["window"] == "fit"
    assert config["opset"] == default_opset() and config["temperature"] == 1.0
    assert np.load(onnx_model / "mel_filters.npy").shape == (80, 201)


def test_log_mel_matches_whisper_front_end(clips):
    """``encoders.log_mel`` in float64 is matched to 1e-5 (measured: 6e-8, float32 output);
    its float32 run, what the torch path uses, differs from those exact values by its own
    rounding (measured up to 2.9e-5 on 60 EmoDB and RAVDESS clips, mean 1e-7)."""
    from qieemo_lobes.encoders import log_mel as torch_log_mel
    from qieemo_lobes.onnx_frontend import log_mel
    from qieemo_lobes.whisper_torch import mel_filters

    filters, window = mel_filters(80), torch.hann_window(400)
    window64 = torch.hann_window(400, dtype=torch.float64)
    worst, worst32, mean32 = 0.0, 0.0, []
    for clip in clips:
        wav = load_audio(clip)
        got = log_mel(wav.numpy(), filters.numpy())
        exact = torch_log_mel(wav.double(), len(wav), filters.double(), window64).numpy()
        float32 = torch_log_mel(wav, len(wav), filters, window).numpy()
        assert got.shape == exact.shape == float32.shape
        worst = max(worst, float(np.abs(got - exact).max()))
        worst32 = max(worst32, float(np.abs(got - float32).max()))
        mean32.append(float(np.abs(got - float32).mean()))
    assert worst < 1e-5, worst
    assert worst32 < 5e-5 and np.mean(mean32) < 1e-6, (worst32, np.mean(mean32))


def test_numpy_resampler_is_torchaudios(clips):
    import torchaudio

    from qieemo_lobes.onnx_audio import SincResampler
    from qieemo_lobes.onnx_audio import load_audio as load_numpy

    for orig, new in [(22050, 16000), (44100, 16000), (48000, 16000), (8000, 16000)]:
        ours, theirs = SincResampler(orig, new), torchaudio.transforms.Resample(orig, new)
        np.testing.assert_array_equal(ours.kernel.T[:, None, :], theirs.kernel.numpy())
    for clip in clips[:2]:  # EmoDB: 22.05 kHz
        np.testing.assert_allclose(load_numpy(clip), load_audio(clip).numpy(), atol=1e-6)


def test_probabilities_match_torch_one_by_one_and_padded(clips, torch_model, onnx_recognizer):
    wavs = [load_audio(c) for c in clips]
    singles = np.concatenate([torch_probabilities(torch_model, [w]) for w in wavs])
    numpy_wavs = [onnx_recognizer.load(c) for c in clips]
    got = np.concatenate([onnx_recognizer.classify_batch([w]) for w in numpy_wavs])
    assert np.abs(got - singles).max() < PROB_TOL
    # One padded batch of clips of different lengths (2 s and 3-4 s).
    padded = torch_probabilities(torch_model, wavs)
    got_batch = onnx_recognizer.classify_batch(numpy_wavs)
    assert np.abs(got_batch - padded).max() < PROB_TOL
    assert np.abs(got_batch - got).max() < PROB_TOL  # padding changes nothing


def test_a_clip_over_30_s_is_encoded_in_windows(clips, torch_model, onnx_recognizer):
    wavs = [load_audio(c) for c in clips]
    long = torch.cat(wavs * 2)  # about 42 s: two 30 s windows
    assert len(long) > 30 * 16000
    expected = torch_probabilities(torch_model, [long, wavs[0]])
    got = onnx_recognizer.classify_batch([long.numpy(), wavs[0].numpy()])
    assert np.abs(got - expected).max() < PROB_TOL


@pytest.fixture(scope="module")
def long_recording(tmp_path_factory, clips) -> Path:
    """A 22.05 kHz recording over 30 s: the EmoDB clips, 3 s of silence between them, twice."""
    rate = 22050
    gap = np.zeros(3 * rate, dtype=np.float32)
    parts = []
    for clip in clips[:4] * 2:
        parts += [sf.read(clip, dtype="float32")[0], gap]
    path = tmp_path_factory.mktemp("long") / "long.wav"
    sf.write(path, np.concatenate(parts), rate)
    assert sf.info(path).duration > 30
    return path


def run_main(capfd, *argv) -> tuple[int, list[dict], str]:
    code = classify.main([*map(str, argv), "--format", "json"], configure_process=False)
    out, err = capfd.readouterr()
    return code, [json.loads(line) for line in out.splitlines()], err


def test_classify_backend_onnx_gives_the_torch_records(
    capfd, monkeypatch, clips, long_recording, torch_model, onnx_model
):
    inputs = [clips[0], clips[5], long_recording, clips[0].parent / "missing.wav"]
    monkeypatch.setattr(classify, "_load_model", lambda *args, **kwargs: torch_model)
    code_t, torch_records, err_t = run_main(capfd, *inputs)
    code_o, onnx_records, err_o = run_main(
        capfd, *inputs, "--backend", "onnx", "--model", onnx_model
    )
    assert (code_o, err_o) == (code_t, err_t) == (1, err_t)  # the same error lines
    assert [set(r) for r in onnx_records] == [set(r) for r in torch_records]
    for ours, theirs in zip(onnx_records, torch_records, strict=True):
        assert ours.get("label") == theirs.get("label") and ours.get("error") == theirs.get("error")
        for key, p in theirs.get("probabilities", {}).items():
            assert abs(ours["probabilities"][key] - p) <= PROB_TOL
        assert len(ours.get("segments", [])) == len(theirs.get("segments", []))
        for seg_o, seg_t in zip(ours.get("segments", []), theirs.get("segments", []), strict=True):
            assert (seg_o["start_s"], seg_o["end_s"]) == (seg_t["start_s"], seg_t["end_s"])
            for key, p in seg_t["probabilities"].items():
                assert abs(seg_o["probabilities"][key] - p) <= PROB_TOL
    long = next(r for r in onnx_records if r["path"] == str(long_recording))
    assert len(long["segments"]) == 8  # one segment per clip


NO_TORCH = """
import json, sys
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError("blocked by the test: " + name)
sys.meta_path.insert(0, Refuse())
from qieemo_lobes import classify
code = classify.main(sys.argv[1:])
print(json.dumps({{"exit": code, "loaded": sorted(m for m in {blocked!r} if m in sys.modules)}}))
"""


def test_classify_onnx_never_imports_torch(onnx_model, clips):
    script = NO_TORCH.format(blocked=BLOCKED)
    argv = [clips[0], clips[5], "--backend", "onnx", "--model", onnx_model, "--format", "json"]
    proc = subprocess.run(
        [sys.executable, "-c", script, *map(str, argv)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    *records, summary = [json.loads(line) for line in proc.stdout.splitlines()]
    assert json.loads(json.dumps(summary)) == {"exit": 0, "loaded": []}
    assert [r["path"] for r in records] == [str(clips[0]), str(clips[5])]
    assert all(r["label"] in ("angry", "happy", "neutral", "sad") for r in records)


def test_export_refuses_a_non_empty_folder_without_force(tmp_path, onnx_model, capsys):
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    assert export_main([str(DEFAULT_MODEL_DIR), str(foreign), "--force"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not an ONNX export" in err
    assert (foreign / "keep.txt").read_text() == "mine"
    assert export_main([str(DEFAULT_MODEL_DIR), str(onnx_model)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pass --force" in err


def test_a_damaged_onnx_file_is_one_line(tmp_path, onnx_model, clips, capfd):
    damaged = tmp_path / "damaged"
    shutil.copytree(onnx_model, damaged)
    data = (damaged / "encoder.onnx").read_bytes()
    (damaged / "encoder.onnx").write_bytes(data[: len(data) // 3])  # cut short
    code = classify.main(
        [str(clips[0]), "--backend", "onnx", "--model", str(damaged)], configure_process=False
    )
    out, err = capfd.readouterr()
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"classify: {damaged / 'encoder.onnx'}: ")


def test_head_graph_with_cma_attentive_pooling_input_norm_and_a_tuner(tmp_path):
    """Every head option the default model does not use, exported and run by onnxruntime."""
    import onnxruntime as ort

    from qieemo_lobes.export_onnx import _export
    from qieemo_lobes.onnx_graphs import HeadGraph, head_reads
    from qieemo_lobes.qieemo import QieemoHead
    from qieemo_lobes.whisper_torch import WhisperBlockTuner

    torch.manual_seed(0)
    head = QieemoHead(
        input_dim=384,
        ppg_dim=384,
        n_classes=3,
        blocks=[2, 3, 4],
        n_encoder_blocks=4,
        d_model=16,
        nhead=2,
        d_ffn=32,
        use_cma=True,
        pooling="attentive",
        attention_channels=8,
        input_norm=True,
        frame_stride=2,
        block_tuner=WhisperBlockTuner("whisper-tiny.en", first_block=4),
    )
    for norm in (head.block_norm, head.ppg_norm):  # statistics as after training
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.5, 2)
    head.eval()
    reads, ppg = head_reads(head)
    assert (reads, ppg) == ([2, 3], True)  # block 4 is recomputed from block 3
    graph = HeadGraph(head, reads)
    dims = {"blocks": {1: torch.export.Dim("b"), 2: torch.export.Dim("t", min=2)}}
    dims["lengths"] = {0: dims["blocks"][1]}
    dims["ppg"] = {0: dims["blocks"][1], 1: dims["blocks"][2]}
    args = (torch.randn(2, 2, 30, 384), torch.tensor([1.0, 0.6]), torch.randn(2, 30, 384))
    names = {"inputs": ["blocks", "lengths", "ppg"], "outputs": ["logits"]}
    _export(graph, args, tmp_path / "head.onnx", names, dims, default_opset())
    session = ort.InferenceSession(str(tmp_path / "head.onnx"), providers=["CPUExecutionProvider"])
    every, ppg_in = torch.randn(4, 3, 41, 384), torch.randn(3, 41, 384)
    lengths = torch.tensor([1.0, 0.55, 0.2])
    with torch.inference_mode():
        expected = head(every, ppg_in, lengths).numpy()
    feed = {"blocks": every[1:3].numpy(), "lengths": lengths.numpy(), "ppg": ppg_in.numpy()}
    got = session.run(None, feed)[0]
    np.testing.assert_allclose(got, expected, atol=1e-4)
