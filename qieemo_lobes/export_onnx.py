"""Export a model folder to ONNX, for inference without torch: ``python -m qieemo_lobes.export_onnx``.

::

    python -m qieemo_lobes.export_onnx MODEL_DIR OUT_DIR [--opset N] [--force]

``MODEL_DIR`` is a model folder (``python -m qieemo_lobes.export``, or the built-in
``qieemo_lobes/default_model``), checked and loaded as
:class:`~qieemo_lobes.interfaces.EmotionRecognizer` loads it. ``OUT_DIR`` receives an ONNX model
folder (:mod:`qieemo_lobes.onnx_inference` describes it and runs it): ``encoder.onnx`` (Whisper's
encoder truncated to the highest block the head reads; the PPG only for a head with cross-modal
attention), ``head.onnx``, both with a dynamic batch and time axis
(:mod:`qieemo_lobes.onnx_graphs`), ``mel_filters.npy``, ``labels.json``, ``config.json``, the
Silero VAD as ONNX (``silero_vad.onnx``, copied from the installed ``silero-vad`` package when it
is there) and the source's ``MODEL_CARD.md``. The log-mel front end stays outside the graphs, in
numpy (:mod:`qieemo_lobes.onnx_frontend`).

- Exporter: ``torch.onnx.export(..., dynamo=True)`` (torch's ``torch.export``-based exporter;
  needs ``onnx`` and ``onnxscript``). The TorchScript exporter (``dynamo=False``) traces the
  head's shape arithmetic into constants: its graph ran only at the batch size it was traced
  with.
- Opset: by default the newest that the installed ``onnx`` defines, capped at what the exporter
  writes and onnxruntime runs (:func:`default_opset`: 22 with onnx 1.23 and torch 2.11);
  ``--opset`` 18 to 22 (18 for older runtimes). Not 23: there the exporter writes attention as
  ONNX's new ``Attention`` operator, and onnxruntime 1.32's kernel refuses the broadcast
  padding mask ``(B, 1, 1, T)`` that Whisper's and the cross-modal attention's masks are.
- Both graphs are checked with onnxruntime on random input against the torch modules (and the
  head graph against the head itself) before anything is written; the folder is built under a
  temporary name and renamed into place (whole or absent). ``OUT_DIR`` must not exist or be
  empty; ``--force`` replaces an earlier ONNX export, never another folder.

Problems are one line on stderr and exit code 2: a model folder that does not load, an encoder
other than Whisper's, missing ``onnx``/``onnxscript``/``onnxruntime``, a refused ``OUT_DIR``.

Example
-------
>>> main([str(getfixture("tmp_path") / "nothing"), str(getfixture("tmp_path") / "out")])
2
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from qieemo_lobes.files import atomic_open, replace_folder, write_json_atomic
from qieemo_lobes.onnx_inference import (
    CONFIG_FILE,
    ENCODER_FILE,
    FILTERS_FILE,
    FORMAT,
    FORMAT_VERSION,
    HEAD_FILE,
    LABELS_FILE,
    source_fingerprint,
)
from qieemo_lobes.onnx_vad import VAD_FILE, packaged_vad

__all__ = ["EXPORTED_BY", "ExportOnnxError", "default_opset", "export_onnx", "main"]

EXPORTED_BY = "qieemo_lobes.export_onnx"
MIN_OPSET = 18
MAX_OPSET = 22  # see the module docstring: not 23 (onnxruntime's Attention kernel)
_TOLERANCE = 1e-3  # graph against module on random input (max abs difference, scaled)


class ExportOnnxError(Exception):
    """The model cannot be exported or the destination cannot be written (one line)."""


def _requirements() -> None:
    """torch, onnx, onnxscript and onnxruntime are importable, or one line saying what to install."""
    missing = []
    for name in ("torch", "onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ExportOnnxError(
            f"the ONNX export needs {', '.join(missing)} (pip install onnx onnxscript "
            "onnxruntime, in an environment with qieemo-lobes and torch)"
        )


def default_opset() -> int:
    """The newest opset the installed ``onnx`` defines, torch's exporter writes and
    onnxruntime runs here (:data:`MAX_OPSET`)."""
    import onnx
    from torch.onnx import _constants

    return min(onnx.defs.onnx_opset_version(), _constants.ONNX_MAX_OPSET, MAX_OPSET)


def _check_destination(out: Path, force: bool) -> None:
    """Refuse a file, a non-empty folder without ``force``, and a foreign folder even with it."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ExportOnnxError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        try:
            previous = json.loads((out / CONFIG_FILE).read_text())
        except (OSError, ValueError):
            previous = None
        if not isinstance(previous, dict) or previous.get("exported_by") != EXPORTED_BY:
            raise ExportOnnxError(
                f"{out}: exists, is not empty and is not an ONNX export (never replaced, even "
                "with --force); choose another folder"
            )
        if not force:
            raise ExportOnnxError(
                f"{out}: exists and is not empty (an earlier ONNX export); pass --force to "
                "replace it"
            )


@contextlib.contextmanager
def _quiet() -> Iterator[io.StringIO]:
    """The exporter's progress lines, warnings and log records, kept out of the terminal."""
    captured = io.StringIO()
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(captured),
            contextlib.redirect_stderr(captured),
        ):
            warnings.simplefilter("ignore")
            yield captured
    finally:
        logger.setLevel(level)


def _load(model_dir: Path) -> Any:
    """The model folder as an ``EmotionRecognizer`` (checked first, as ``classify`` does)."""
    from qieemo_lobes.interfaces import EmotionRecognizer

    try:
        return EmotionRecognizer.from_hparams(source=str(model_dir))
    except Exception as err:  # ModelFolderError names its file; anything else: one line
        message = " ".join(str(err).split()) or type(err).__name__
        if str(model_dir) in message:
            raise ExportOnnxError(message) from None
        raise ExportOnnxError(f"{model_dir}: cannot load the model ({message})") from None


def _whisper(recognizer: Any, model_dir: Path) -> Any:
    """The model's Whisper encoder as ``TorchWhisperBlocks`` (a ``WhisperBlocks`` is rebuilt)."""
    from qieemo_lobes.whisper_torch import TorchWhisperBlocks

    encoder = recognizer.mods.encoder
    if isinstance(encoder, TorchWhisperBlocks):
        return encoder
    source, window = getattr(encoder, "source", None), getattr(encoder, "window", None)
    if type(encoder).__name__ == "WhisperBlocks" and window in ("30s", "fit"):
        try:
            return TorchWhisperBlocks(source, window=window)
        except Exception as err:
            message = " ".join(str(err).split())
            raise ExportOnnxError(
                f"{model_dir}: cannot load Whisper {source!r} ({message})"
            ) from None
    raise ExportOnnxError(
        f"{model_dir}: only Whisper encoders are exported to ONNX, not {type(encoder).__name__}"
    )


def _export(module: Any, args: tuple, path: Path, names: dict, shapes: dict, opset: int) -> None:
    """One graph to ``path`` (weights inside the file), the exporter's chatter captured."""
    import torch

    with _quiet() as captured:
        try:
            program = torch.onnx.export(
                module,
                args,
                dynamo=True,
                input_names=names["inputs"],
                output_names=names["outputs"],
                dynamic_shapes=shapes,
                opset_version=opset,
            )
            program.save(str(path), external_data=False)
        except Exception as err:
            detail = " ".join(str(err).split())[:300] or captured.getvalue().strip()[-300:]
            raise ExportOnnxError(f"{path.name}: the ONNX export failed ({detail})") from None


def _compare(name: str, got: np.ndarray, expected: np.ndarray) -> None:
    scale = max(1.0, float(np.abs(expected).max()))
    diff = float(np.abs(got - expected).max()) / scale
    if not diff <= _TOLERANCE:
        raise ExportOnnxError(f"{name}: onnxruntime differs from torch by {diff:.2g} (scaled)")


def _verify(folder: Path, example: dict) -> None:
    """Run both graphs with onnxruntime on random input of another batch size and length."""
    import onnxruntime as ort
    import torch

    for name, (graph, feed, reference) in example.items():
        session = ort.InferenceSession(str(folder / name), providers=["CPUExecutionProvider"])
        got = session.run(None, {k: v.numpy() for k, v in feed.items()})
        with torch.inference_mode():
            expected = graph(*feed.values())
        expected = expected if isinstance(expected, tuple) else (expected,)
        for g, e in zip(got, expected, strict=True):
            _compare(name, g, e.numpy())
        if reference is not None:  # the head graph against the head itself
            _compare(f"{name} (against the head)", got[0], reference.numpy())


def _examples(whisper: Any, head: Any, reads: list[int], ppg: bool, graphs: dict) -> dict:
    """Random verification inputs (batch 3, lengths unlike the export's) and the head's output."""
    import torch

    gen = torch.Generator().manual_seed(0)
    n_mels, dim = whisper.encoder.conv1.in_channels, whisper.block_dim
    mels = torch.randn(3, n_mels, 250, generator=gen)
    encoder_feed = {"mels": mels, "mel_frames": torch.tensor([250, 200, 61])}
    every = torch.randn(whisper.n_blocks, 3, 40, dim, generator=gen)
    ppg_in = torch.randn(3, 40, dim, generator=gen)
    lengths = torch.tensor([1.0, 0.7, 0.3])
    head_feed = {"blocks": every[[b - 1 for b in reads]], "lengths": lengths}
    if ppg:
        head_feed["ppg"] = ppg_in
    with torch.inference_mode():
        reference = head(every, ppg_in, lengths)
    return {
        ENCODER_FILE: (graphs["encoder"], encoder_feed, None),
        HEAD_FILE: (graphs["head"], head_feed, reference),
    }


def export_onnx(
    model_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    opset: int | None = None,
    force: bool = False,
) -> Path:
    """Export the model folder ``model_dir`` as an ONNX model folder ``out_dir``.

    Arguments
    ---------
    model_dir : str or os.PathLike
        A model folder (``python -m qieemo_lobes.export``; Whisper encoder).
    out_dir : str or os.PathLike
        The ONNX model folder to write; it must not exist or be empty, unless ``force``.
    opset : int, optional
        ONNX opset (default :func:`default_opset`).
    force : bool
        Replace ``out_dir`` when it is an earlier ONNX export (never another folder).

    Returns
    -------
    pathlib.Path
        ``out_dir``.

    Raises
    ------
    ExportOnnxError
        One line; nothing is written then.
    """
    model_dir, out = Path(model_dir).absolute(), Path(out_dir).absolute()
    if not (model_dir / "hyperparams.yaml").is_file():
        what = "no such directory" if not model_dir.is_dir() else "no hyperparams.yaml"
        raise ExportOnnxError(f"{model_dir}: not a model folder ({what})")
    _check_destination(out, force)
    _requirements()
    from qieemo_lobes.onnx_graphs import EncoderGraph, HeadGraph, head_reads

    opset = opset or default_opset()
    if not MIN_OPSET <= opset <= default_opset():
        raise ExportOnnxError(f"--opset must be between {MIN_OPSET} and {default_opset()}")
    recognizer = _load(model_dir)
    whisper = _whisper(recognizer, model_dir)
    head = recognizer.mods.head.eval()
    reads, ppg = head_reads(head)
    graphs = {
        "encoder": EncoderGraph(whisper.encoder, reads, ppg).eval(),
        "head": HeadGraph(head, reads).eval(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        _export_graphs(tmp, graphs, whisper, ppg, opset, len(reads))
        _verify(tmp, _examples(whisper, head, reads, ppg, graphs))
        _write_files(tmp, model_dir, recognizer, whisper, reads, ppg, opset)
        os.chmod(tmp, 0o755)
        replace_folder(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _export_graphs(tmp: Path, graphs: dict, whisper: Any, ppg: bool, opset: int, n_read: int):
    import torch

    dim, n_mels = whisper.block_dim, whisper.encoder.conv1.in_channels
    batch = torch.export.Dim("batch", min=1, max=4096)
    frames = torch.export.Dim("frames", min=4, max=2 * whisper.max_frames)
    time_ = torch.export.Dim("time", min=2, max=10**7)
    outputs = ["blocks", "ppg"] if ppg else ["blocks"]
    mels = (torch.randn(2, n_mels, 300), torch.tensor([300, 180]))
    _export(
        graphs["encoder"],
        mels,
        tmp / ENCODER_FILE,
        {"inputs": ["mels", "mel_frames"], "outputs": outputs},
        {"mels": {0: batch, 2: frames}, "mel_frames": {0: batch}},
        opset,
    )
    head_args = (torch.randn(n_read, 2, 50, dim), torch.tensor([1.0, 0.6]))
    shapes: dict = {"blocks": {1: batch, 2: time_}, "lengths": {0: batch}}
    if ppg:
        head_args += (torch.randn(2, 50, dim),)
        shapes["ppg"] = {0: batch, 1: time_}
    _export(
        graphs["head"],
        head_args,
        tmp / HEAD_FILE,
        {"inputs": list(shapes), "outputs": ["logits"]},
        shapes,
        opset,
    )


def _write_files(
    tmp: Path, model_dir: Path, recognizer: Any, whisper: Any, reads: list[int], ppg: bool, opset
) -> None:
    """labels.json, mel_filters.npy, the VAD, the model card and config.json (last)."""
    import onnx
    import torch

    labels = list(recognizer.labels)
    write_json_atomic(labels, tmp / LABELS_FILE)
    with atomic_open(tmp / FILTERS_FILE, "wb") as fh:
        np.save(fh, whisper.mel_filters.cpu().numpy().astype(np.float32), allow_pickle=False)
    vad = packaged_vad()
    if vad is not None:
        shutil.copyfile(vad, tmp / VAD_FILE)
    for name in ("MODEL_CARD.md", "README.md"):
        if (model_dir / name).is_file():
            shutil.copyfile(
                model_dir / name, tmp / ("SOURCE_README.md" if name == "README.md" else name)
            )
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "exported_by": EXPORTED_BY,
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "source_model": str(model_dir),
        "source_fingerprint": source_fingerprint(model_dir),
        "sample_rate": int(recognizer.sample_rate),
        "n_mels": int(whisper.encoder.conv1.in_channels),
        "n_fft": 400,
        "hop": 160,
        "mel_filters": FILTERS_FILE,
        "log_mel": "whisper: log10(max(power, 1e-10)), floored at max - 8 per utterance, (x + 4) / 4",
        "window": whisper.window,
        "max_window_s": 30,
        "remove_dc": True,
        "temperature": float(recognizer.temperature),
        "n_classes": len(labels),
        "labels": LABELS_FILE,
        "encoder": {
            "file": ENCODER_FILE,
            "source": str(whisper.source),
            "blocks": reads,
            "blocks_run": len(whisper.encoder.blocks) if ppg else max(reads),
            "n_blocks": int(whisper.n_blocks),
            "ppg": ppg,
        },
        "head": {"file": HEAD_FILE, "inputs": ["blocks", "lengths", *(["ppg"] if ppg else [])]},
        "vad": VAD_FILE if vad is not None else None,
        "opset": int(opset),
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__},
    }
    write_json_atomic(config, tmp / CONFIG_FILE)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit code (0 done, 2 refused)."""
    parser = argparse.ArgumentParser(
        prog="python -m qieemo_lobes.export_onnx",
        description="Export a model folder (encoder and head) to ONNX, for "
        "python -m qieemo_lobes.classify --backend onnx (onnxruntime, no torch).",
    )
    parser.add_argument("model_dir", help="a model folder (python -m qieemo_lobes.export)")
    parser.add_argument("out_dir", help="the ONNX model folder to write (new or empty)")
    parser.add_argument("--opset", type=int, help="ONNX opset (default: the newest available)")
    parser.add_argument(
        "--force", action="store_true", help="replace OUT_DIR when it is an earlier ONNX export"
    )
    args = parser.parse_args(argv)
    try:
        out = export_onnx(args.model_dir, args.out_dir, opset=args.opset, force=args.force)
    except ExportOnnxError as err:
        print(f"export_onnx: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"export_onnx: {args.out_dir}: cannot write ({err.strerror or err})", file=sys.stderr)
        return 2
    config = json.loads((out / CONFIG_FILE).read_text())
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"exported {args.model_dir} -> {out} ({size / 1e6:.1f} MB, opset {config['opset']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
