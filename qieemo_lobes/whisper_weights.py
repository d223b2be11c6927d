"""The weights of Whisper's encoder for :class:`~qieemo_lobes.whisper_torch.TorchWhisperBlocks`.

:func:`load_encoder_state` returns ``(AudioEncoder state dict, sizes)``. For an offline alias
(``"whisper-base"``, ``"whisper-tiny.en"``): the Hugging Face folder that :func:`~qieemo_lobes.ct2_whisper.resolve_source` converted once into the cache (read with
``safetensors``, ~10 ms); when that folder is missing, the CTranslate2 ``model.bin`` of the weight
package itself (~0.2-0.5 s, identical values). Neither path imports ``transformers``. A converted
folder that is damaged (unreadable, cut short, non-finite weights) is rebuilt once from the weight
package with one warning line (this conversion does import ``transformers``), and a damaged
weight package raises :class:`~qieemo_lobes.ct2_whisper.WeightsCorruptError` naming its file.
A local Hugging Face Whisper folder (``config.json`` + ``model.safetensors``) also loads.

Example
-------
>>> state, sizes = read_package_weights("whisper-tiny.en")
>>> sizes["n_head"], sizes["n_mlp"]
(6, 1536)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from qieemo_lobes.ct2_whisper import (
    OFFLINE_MODELS,
    WeightsCorruptError,
    converted_dir,
    default_cache_dir,
    discard_converted,
    package_file,
    read_alias_weights,
    resolve_source,
)

__all__ = ["load_encoder_state", "read_package_weights"]


def _from_hf(tensors: dict[str, Tensor], n_head: int) -> tuple[dict[str, Tensor], dict]:
    """Hugging Face ``model.encoder.*`` tensors (prefix removed) -> AudioEncoder state, sizes."""
    state = {
        "conv1.weight": tensors["conv1.weight"],
        "conv1.bias": tensors["conv1.bias"],
        "conv2.weight": tensors["conv2.weight"],
        "conv2.bias": tensors["conv2.bias"],
        "positional_embedding": tensors["embed_positions.weight"],
        "ln_post.weight": tensors["layer_norm.weight"],
        "ln_post.bias": tensors["layer_norm.bias"],
    }
    n_layer = 1 + max(int(k.split(".")[1]) for k in tensors if k.startswith("layers."))
    for i in range(n_layer):
        hf, ours = f"layers.{i}.", f"blocks.{i}."
        q_bias = tensors[hf + "self_attn.q_proj.bias"]
        state[ours + "attn.qkv.weight"] = torch.cat(
            [tensors[hf + f"self_attn.{p}_proj.weight"] for p in "qkv"]
        )
        state[ours + "attn.qkv.bias"] = torch.cat(
            [q_bias, torch.zeros_like(q_bias), tensors[hf + "self_attn.v_proj.bias"]]
        )
        for name, hf_name in (
            ("attn.out", "self_attn.out_proj"),
            ("attn_ln", "self_attn_layer_norm"),
            ("mlp.0", "fc1"),
            ("mlp.2", "fc2"),
            ("mlp_ln", "final_layer_norm"),
        ):
            state[f"{ours}{name}.weight"] = tensors[f"{hf}{hf_name}.weight"]
            state[f"{ours}{name}.bias"] = tensors[f"{hf}{hf_name}.bias"]
    return state, _sizes(state, n_head, n_layer)


def _from_ct2(variables: dict[str, np.ndarray]) -> tuple[dict[str, Tensor], dict]:
    """CTranslate2 ``encoder/*`` variables -> AudioEncoder state (float32), sizes."""

    def get(name: str) -> Tensor:
        return torch.from_numpy(np.array(variables[f"encoder/{name}"], dtype=np.float32))

    state = {
        "conv1.weight": get("conv1/weight"),
        "conv1.bias": get("conv1/bias"),
        "conv2.weight": get("conv2/weight"),
        "conv2.bias": get("conv2/bias"),
        "positional_embedding": get("position_encodings/encodings"),
        "ln_post.weight": get("layer_norm/gamma"),
        "ln_post.bias": get("layer_norm/beta"),
    }
    n_layer = sum(1 for k in variables if k.startswith("encoder/") and k.endswith("linear_0/bias"))
    n_layer //= 2  # self_attention/linear_0 and ffn/linear_0
    for i in range(n_layer):
        ct, ours = f"layer_{i}/", f"blocks.{i}."
        for name, ct_name in (
            ("attn.qkv", "self_attention/linear_0"),  # fused q, k (zero bias), v
            ("attn.out", "self_attention/linear_1"),
            ("mlp.0", "ffn/linear_0"),
            ("mlp.2", "ffn/linear_1"),
        ):
            state[f"{ours}{name}.weight"] = get(f"{ct}{ct_name}/weight")
            state[f"{ours}{name}.bias"] = get(f"{ct}{ct_name}/bias")
        for name, ct_name in (
            ("attn_ln", "self_attention/layer_norm"),
            ("mlp_ln", "ffn/layer_norm"),
        ):
            state[f"{ours}{name}.weight"] = get(f"{ct}{ct_name}/gamma")
            state[f"{ours}{name}.bias"] = get(f"{ct}{ct_name}/beta")
    n_head = int(variables.get("encoder/num_heads", state["ln_post.weight"].shape[0] // 64))
    return state, _sizes(state, n_head, n_layer)


def _sizes(state: dict[str, Tensor], n_head: int, n_layer: int) -> dict:
    n_state, n_mels, _ = state["conv1.weight"].shape
    return {
        "n_mels": n_mels,
        "n_ctx": state["positional_embedding"].shape[0],
        "n_state": n_state,
        "n_head": n_head,
        "n_layer": n_layer,
        "n_mlp": state["blocks.0.mlp.0.weight"].shape[0],
    }


def _read_safetensors(folder: Path) -> tuple[dict[str, Tensor], dict]:
    """The encoder of a Hugging Face Whisper folder: only its tensors are read (memory-mapped)."""
    from safetensors import safe_open

    config = json.loads((folder / "config.json").read_text())
    tensors = {}
    with safe_open(str(folder / "model.safetensors"), framework="pt") as fh:
        keys = list(fh.keys())
        prefix = (
            "model.encoder." if any(k.startswith("model.encoder.") for k in keys) else "encoder."
        )
        for key in keys:
            if key.startswith(prefix):
                tensors[key[len(prefix) :]] = fh.get_tensor(key)
    if not tensors:
        raise ValueError(f"{folder}: no Whisper encoder weights in model.safetensors")
    return _from_hf(tensors, int(config["encoder_attention_heads"]))


def read_package_weights(alias: str) -> tuple[dict[str, Tensor], dict]:
    """An offline alias' encoder from its weight package's CTranslate2 file (no conversion)."""
    try:
        return _from_ct2(read_alias_weights(alias))
    except KeyError as err:  # a variable the encoder needs is not in the file
        files = ", ".join(str(package_file(f)) for f in OFFLINE_MODELS[alias]["files"])
        raise WeightsCorruptError(f"{files}: corrupt Whisper weights (no {err})") from None


def _read_converted(folder: Path) -> tuple[dict[str, Tensor], dict]:
    """:func:`_read_safetensors`, raising ``ValueError`` with a short reason on any damage
    (unreadable files, missing tensors, non-finite weights)."""
    try:
        state, sizes = _read_safetensors(folder)
    except Exception as err:  # SafetensorError, OSError, JSON and key errors: a damaged folder
        raise ValueError(" ".join(str(err).split()) or type(err).__name__) from None
    bad = [key for key, value in state.items() if not bool(torch.isfinite(value).all())]
    if bad:
        raise ValueError(f"NaN or infinite weights in model.safetensors ({bad[0]})")
    return state, sizes


def _load_alias(alias: str, cache: Path) -> tuple[dict[str, Tensor], dict]:
    """An offline alias: its converted folder when there is one, else the weight package.

    A converted folder that cannot be read is rebuilt once (one warning line) and read again.
    """
    folder = converted_dir(alias, cache)
    if not folder.exists():
        return read_package_weights(alias)  # never converts here: that would import transformers
    try:
        return _read_converted(folder)
    except ValueError as err:
        discard_converted(alias, folder, str(err))
    resolve_source(alias, cache)
    try:
        return _read_converted(folder)
    except ValueError as err:
        raise WeightsCorruptError(f"{folder}: unreadable even after rebuilding ({err})") from None


def load_encoder_state(source: str, cache: Path | None = None) -> tuple[dict[str, Tensor], dict]:
    """The encoder's weights ``(AudioEncoder state dict, sizes)`` for ``source``.

    ``source``: an offline alias (read from its converted folder in ``cache``, else from the
    weight package's CTranslate2 file) or a local Hugging Face Whisper folder.

    Example
    -------
    >>> state, sizes = load_encoder_state("whisper-tiny.en")
    >>> sizes["n_layer"], sizes["n_state"], tuple(state["blocks.0.attn.qkv.weight"].shape)
    (4, 384, (1152, 384))
    """
    if source in OFFLINE_MODELS:
        return _load_alias(source, cache or default_cache_dir())
    folder = Path(source).expanduser()
    if (folder / "model.safetensors").is_file() and (folder / "config.json").is_file():
        return _read_safetensors(folder)
    raise ValueError(
        f"{source!r}: not an offline alias ({', '.join(OFFLINE_MODELS)}) nor a local Hugging Face "
        "Whisper folder with model.safetensors; use qieemo_lobes.encoders.WhisperBlocks"
    )
