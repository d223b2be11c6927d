"""Silero VAD as ONNX, run by onnxruntime: the segmenter's detector on the torch-free path.

The ``silero-vad`` package ships its network both as TorchScript (``silero_vad.jit``, what the
torch path runs) and as ONNX; ``python -m qieemo_lobes.export_onnx`` copies the 16 kHz ONNX file
(``silero_vad_16k_op15.onnx``, MIT licence) into the ONNX model folder as :data:`VAD_FILE`, so
that inference needs neither torch nor the package. :class:`SileroOnnx` feeds it as the package's
own ``OnnxWrapper`` does (512-sample frames, each with the previous frame's last 64 samples as
context, the recurrent state carried over), without torch. On the 46 s example conversation its
frame probabilities are within 4e-5 of the TorchScript model's and no frame changes side of the
thresholds; the segments are the same.

An ONNX model folder without the file (exported where ``silero-vad`` was not installed) segments
with the energy detector (:func:`qieemo_lobes.segmentation.energy_scores`), as the torch path
does where Silero is unavailable.
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["CONTEXT_SAMPLES", "FRAME_SAMPLES", "VAD_FILE", "SileroOnnx", "packaged_vad"]

VAD_FILE = "silero_vad.onnx"  # in an ONNX model folder
FRAME_SAMPLES = 512  # 32 ms at 16 kHz
CONTEXT_SAMPLES = 64  # samples of the previous frame prepended to each frame
_STATE_SHAPE = (2, 1, 128)


def packaged_vad() -> str | None:
    """The 16 kHz ONNX file of the installed ``silero-vad`` package, or None.

    The package is not imported (its ``__init__`` imports torch): its folder is found from the
    import system's spec alone.
    """
    import importlib.util

    try:
        spec = importlib.util.find_spec("silero_vad")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = os.path.join(folder, "data", "silero_vad_16k_op15.onnx")
        if os.path.isfile(path):
            return path
    return None


class SileroOnnx:
    """Speech probabilities of consecutive 512-sample frames (16 kHz) with onnxruntime.

    Stateful, as the TorchScript model: :meth:`reset_states` before a new recording, then the
    frames in order. One thread: each frame is a handful of tiny operations.

    Arguments
    ---------
    path : str or os.PathLike
        The Silero ONNX file.
    """

    def __init__(self, path: str | os.PathLike):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        self.session = ort.InferenceSession(
            os.fspath(path), options, providers=["CPUExecutionProvider"]
        )
        self._rate = np.array(16000, dtype=np.int64)
        self.reset_states()

    def reset_states(self) -> None:
        """Forget the previous recording."""
        self._state = np.zeros(_STATE_SHAPE, dtype=np.float32)
        self._context = np.zeros((1, CONTEXT_SAMPLES), dtype=np.float32)

    def __call__(self, frames: np.ndarray) -> list[float]:
        """Probabilities of ``frames`` ``(n, 512)``, continuing from the previous call."""
        probs = []
        for frame in np.asarray(frames, dtype=np.float32):
            x = np.concatenate([self._context, frame[None]], axis=1)
            out, self._state = self.session.run(
                None, {"input": x, "state": self._state, "sr": self._rate}
            )
            self._context = x[:, -CONTEXT_SAMPLES:]
            probs.append(float(out.reshape(-1)[0]))
        return probs
