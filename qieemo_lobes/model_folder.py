"""Check a model folder before it is loaded: only what ``python -m qieemo_lobes.export`` writes.

**A model folder is code.** Its ``hyperparams.yaml`` is HyperPyYAML, and loading it (SpeechBrain's
``Pretrained.from_hparams``, hence :class:`~qieemo_lobes.interfaces.EmotionRecognizer` and
``python -m qieemo_lobes.classify --model``) constructs whatever the file names:
``!new:``, ``!name:`` and ``!apply:`` import and call any function (``!apply:os.system``),
so does YAML's ``!!python/object/apply:``, and HyperPyYAML even parses a string such as
``"(...)"`` as a tuple with PyYAML's unsafe loader. Loading a folder from someone else is running
their program.

The model folders qieemo writes need none of that, so they can be checked without constructing
anything. :func:`check_hyperparams` reads the file with ruamel.yaml's composer (a tree of nodes
with their tags and line numbers; nothing is built or called) and accepts only the structure the
export writes:

- the keys ``sample_rate``, ``classes``, ``n_classes`` (plain values), ``encoder``, ``head``,
  ``label_encoder``, ``modules`` and ``pretrainer``, and optionally ``temperature`` (the
  calibration temperature: a plain positive decimal number, nothing else);
- ``!new:`` only where the export puts it and only for its classes (:data:`ALLOWED_CLASSES`):
  the encoder (``TorchWhisperBlocks`` or ``WhisperBlocks``), the head (``QieemoHead``, with an
  optional ``block_tuner: !new:...WhisperBlockTuner``), ``CategoricalEncoder`` and ``Pretrainer``
  (``loadables`` only, so it reads ``head.ckpt`` and ``label_encoder.ckpt`` of this folder);
- ``!ref <key>`` only as the export writes it (``modules`` and the pretrainer's ``loadables``),
  never an expression;
- plain YAML values (strings, numbers, booleans, null, lists, mappings) everywhere else: no other
  tag, no anchor or alias, no string HyperPyYAML would take for a tuple.

Anything else is refused with :class:`ModelFolderError`, one line naming the file, the line and
the tag. :func:`load_head_state` and :func:`load_labels` check the two weight files
(``torch.load(..., weights_only=True)``, finite tensors; SpeechBrain's literal label format).
:func:`check_model_folder` runs all three.

Example
-------
>>> folder = getfixture("tmp_path")
>>> _ = (folder / "hyperparams.yaml").write_text("encoder: !apply:os.system [echo hi]\\n")
>>> try:
...     check_hyperparams(folder / "hyperparams.yaml")
... except ModelFolderError as err:
...     print(str(err).replace(str(folder), "DIR").split(" (")[0])
DIR/hyperparams.yaml:1: tag !apply:os.system is not allowed in a qieemo model folder
"""

from __future__ import annotations

import math
import os
import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from qieemo_lobes.errors import one_line

__all__ = [
    "ALLOWED_CLASSES",
    "ModelFolderError",
    "check_hyperparams",
    "check_model_folder",
    "load_head_state",
    "load_labels",
    "load_state_strictly",
]

ENCODER_CLASSES = (
    "qieemo_lobes.whisper_torch.TorchWhisperBlocks",
    "qieemo_lobes.encoders.WhisperBlocks",
)
HEAD_CLASS = "qieemo_lobes.qieemo.QieemoHead"
TUNER_CLASS = "qieemo_lobes.whisper_torch.WhisperBlockTuner"
LABEL_ENCODER_CLASS = "speechbrain.dataio.encoder.CategoricalEncoder"
PRETRAINER_CLASS = "speechbrain.utils.parameter_transfer.Pretrainer"
# Every class a qieemo model folder may construct (each in its own place, see the docstring).
ALLOWED_CLASSES = frozenset(
    [*ENCODER_CLASSES, HEAD_CLASS, TUNER_CLASS, LABEL_ENCODER_CLASS, PRETRAINER_CLASS]
)
# Top-level keys of an exported hyperparams.yaml: plain values, then the constructed objects.
PLAIN_KEYS = ("sample_rate", "classes", "n_classes")
# Optional top-level keys of an exported hyperparams.yaml, each a plain positive number.
NUMBER_KEYS = ("temperature",)
OBJECT_KEYS = ("encoder", "head", "label_encoder", "modules", "pretrainer")
# The files the pretrainer of an exported folder loads (its loadables, by SpeechBrain's naming).
HEAD_FILE = "head.ckpt"
LABELS_FILE = "label_encoder.ckpt"

_CORE = "tag:yaml.org,2002:"
_PLAIN_SCALAR_TAGS = {f"{_CORE}{t}" for t in ("str", "int", "float", "bool", "null")}
_REF = re.compile(r"<([A-Za-z_][A-Za-z0-9_]*)>")
_DECIMAL = re.compile(r"\+?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?")
_TRUST_HINT = (
    "a model folder is code: load it with trust_code=True (classify: --trust-model) only if you "
    "trust its author"
)


class ModelFolderError(ValueError):
    """A model folder is not one qieemo wrote, or one of its files is damaged; ``str()`` is one
    line naming the file (and, for ``hyperparams.yaml``, the line)."""


def _tag(node: Node) -> str:
    tag = node.tag
    return str(getattr(tag, "value", tag) or "")


def _shown(tag: str) -> str:
    return "!!" + tag[len(_CORE) :] if tag.startswith(_CORE) else tag


class _Checker:
    """Walks the composed node tree of one file; every refusal names the file and the line."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, node: Node, problem: str, hint: bool = True) -> ModelFolderError:
        where = f"{self.path}:{node.start_mark.line + 1}"
        return ModelFolderError(f"{where}: {problem}" + (f" ({_TRUST_HINT})" if hint else ""))

    # -- pass 1: tags, anchors and tuple-like strings, anywhere in the file
    def tags(self, node: Node) -> None:
        tag = _tag(node)
        if getattr(node, "anchor", None):
            raise self.fail(
                node, "YAML anchors and aliases are not allowed in a qieemo model folder"
            )
        if tag.startswith("!new:"):
            if tag[len("!new:") :] not in ALLOWED_CLASSES:
                raise self.fail(node, f"tag {tag} is not allowed in a qieemo model folder")
        elif tag == "!ref":
            if not isinstance(node, ScalarNode) or not _REF.fullmatch(str(node.value).strip()):
                raise self.fail(node, f"!ref {_describe(node)} is not a plain reference <key>")
        elif isinstance(node, ScalarNode):
            if tag not in _PLAIN_SCALAR_TAGS:
                raise self.fail(node, f"tag {_shown(tag)} is not allowed in a qieemo model folder")
            if tag == f"{_CORE}str" and str(node.value).lstrip().startswith("("):
                # HyperPyYAML's implicit !tuple parses "(...)" with PyYAML's unsafe loader.
                raise self.fail(
                    node, f"string {_describe(node)} would be read as a HyperPyYAML tuple"
                )
        elif isinstance(node, SequenceNode):
            if tag != f"{_CORE}seq":
                raise self.fail(node, f"tag {_shown(tag)} is not allowed in a qieemo model folder")
        elif isinstance(node, MappingNode):
            if tag != f"{_CORE}map":
                raise self.fail(node, f"tag {_shown(tag)} is not allowed in a qieemo model folder")
        if isinstance(node, SequenceNode):
            for child in node.value:
                self.tags(child)
        elif isinstance(node, MappingNode):
            seen = set()
            for key, value in node.value:
                self.tags(key)
                if not isinstance(key, ScalarNode) or _tag(key) != f"{_CORE}str":
                    raise self.fail(key, "mapping keys must be plain strings")
                if key.value in seen:
                    raise self.fail(key, f"duplicate key '{key.value}'", hint=False)
                seen.add(key.value)
                self.tags(value)

    # -- pass 2: the structure the export writes
    def plain(self, node: Node) -> None:
        """Plain values only (pass 1 already refused every other tag): no !new:, no !ref."""
        tag = _tag(node)
        if tag.startswith("!"):
            raise self.fail(node, f"{tag} is not expected here (only plain values)")
        if isinstance(node, SequenceNode):
            for child in node.value:
                self.plain(child)
        elif isinstance(node, MappingNode):
            for _, value in node.value:
                self.plain(value)

    def positive_number(self, node: Node, what: str) -> None:
        """A plain int or float scalar, written as a decimal, finite and above zero."""
        tag = _tag(node)
        text = str(node.value).strip() if isinstance(node, ScalarNode) else ""
        if (
            tag not in (f"{_CORE}int", f"{_CORE}float")
            or not _DECIMAL.fullmatch(text)
            or not 0.0 < float(text) < math.inf
        ):
            shown = _describe(node) if not tag.startswith("!") else f"{tag} {_describe(node)}"
            raise self.fail(node, f"{what} must be a positive number, not {shown}", hint=False)

    def new(self, node: Node, classes: tuple[str, ...], what: str) -> None:
        tag = _tag(node)
        if tag[len("!new:") :] not in classes or not tag.startswith("!new:"):
            expected = " or ".join(f"!new:{c}" for c in classes)
            raise self.fail(node, f"{what} must be {expected}, not {_shown(tag) or 'untagged'}")

    def arguments(self, node: Node, what: str, nested: dict | None = None) -> None:
        """The arguments of a constructed object: a mapping of plain values (an empty scalar:
        no arguments); ``nested`` names the arguments that hold an object of their own."""
        if isinstance(node, ScalarNode):
            if str(node.value).strip():
                raise self.fail(node, f"{what} takes a mapping of arguments", hint=False)
            return
        if not isinstance(node, MappingNode):
            raise self.fail(node, f"{what} takes a mapping of arguments", hint=False)
        for key, value in node.value:
            if nested and key.value in nested:
                classes = nested[key.value]
                self.new(value, classes, f"{what}.{key.value}")
                self.arguments(value, f"{what}.{key.value}")
            else:
                self.plain(value)

    def references(self, node: Node, what: str, keys: tuple[str, ...]) -> None:
        """A mapping ``{key: !ref <key>}`` for exactly ``keys``."""
        if not isinstance(node, MappingNode):
            raise self.fail(node, f"{what} must map {', '.join(keys)} to !ref <key>", hint=False)
        found = {}
        for key, value in node.value:
            if key.value not in keys:
                raise self.fail(key, f"unexpected key '{key.value}' in {what}")
            if _tag(value) != "!ref" or str(value.value).strip() != f"<{key.value}>":
                raise self.fail(value, f"{what}.{key.value} must be !ref <{key.value}>")
            found[key.value] = value
        missing = [k for k in keys if k not in found]
        if missing:
            raise self.fail(node, f"{what} lacks {', '.join(missing)}", hint=False)

    def structure(self, root: Node) -> None:
        if not isinstance(root, MappingNode):
            raise self.fail(root, "not a mapping of hyperparameters", hint=False)
        top = {key.value: (key, value) for key, value in root.value}
        for name, (key, _) in top.items():
            if name not in PLAIN_KEYS + NUMBER_KEYS + OBJECT_KEYS:
                raise self.fail(
                    key, f"unexpected key '{name}' (not written by qieemo_lobes.export)"
                )
        missing = [k for k in OBJECT_KEYS if k not in top]
        if missing:
            raise self.fail(root, f"no {', '.join(missing)} defined", hint=False)
        for name in PLAIN_KEYS:
            if name in top:
                self.plain(top[name][1])
        for name in NUMBER_KEYS:
            if name in top:
                self.positive_number(top[name][1], name)
        encoder, head = top["encoder"][1], top["head"][1]
        self.new(encoder, ENCODER_CLASSES, "encoder")
        self.arguments(encoder, "encoder")
        self.new(head, (HEAD_CLASS,), "head")
        self.arguments(head, "head", nested={"block_tuner": (TUNER_CLASS,)})
        labels = top["label_encoder"][1]
        self.new(labels, (LABEL_ENCODER_CLASS,), "label_encoder")
        self.arguments(labels, "label_encoder")
        self.references(top["modules"][1], "modules", ("encoder", "head"))
        pretrainer = top["pretrainer"][1]
        self.new(pretrainer, (PRETRAINER_CLASS,), "pretrainer")
        if not isinstance(pretrainer, MappingNode):
            raise self.fail(pretrainer, "pretrainer must define loadables", hint=False)
        for key, value in pretrainer.value:
            if key.value != "loadables":
                raise self.fail(key, f"unexpected pretrainer argument '{key.value}'")
            self.references(value, "pretrainer.loadables", ("head", "label_encoder"))
        if not any(key.value == "loadables" for key, _ in pretrainer.value):
            raise self.fail(pretrainer, "pretrainer must define loadables", hint=False)


def _describe(node: Node) -> str:
    if isinstance(node, ScalarNode):
        text = str(node.value)
        return repr(text if len(text) <= 40 else text[:40] + "...")
    return f"({type(node).__name__.replace('Node', '').lower()})"


def check_hyperparams(path: str | os.PathLike) -> None:
    """Refuse a ``hyperparams.yaml`` that is not the structure ``qieemo_lobes.export`` writes.

    Nothing in the file is constructed, imported or called: it is only composed (parsed into
    nodes). See the module docstring for what is accepted.

    Arguments
    ---------
    path : str or os.PathLike
        The inference hyperparameters file.

    Raises
    ------
    ModelFolderError
        One line: ``PATH:LINE: problem``, e.g. a tag other than the export's ``!new:`` classes
        and ``!ref <key>``.

    Example
    -------
    >>> shipped = Path(__file__).parent / "default_model"  # the built-in default model
    >>> check_hyperparams(shipped / "hyperparams.yaml")
    """
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as fh, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ruamel's ReusedAnchorWarning: refused below anyway
            root = YAML().compose(fh)
    except FileNotFoundError:
        raise ModelFolderError(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ModelFolderError(f"{path}: unreadable ({one_line(err, limit=160)})") from None
    except MarkedYAMLError as err:  # ruamel's scanner, parser and composer errors
        mark = err.problem_mark or err.context_mark
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = err.problem or err.context or type(err).__name__
        raise ModelFolderError(
            f"{where}: not valid YAML ({one_line(problem, limit=160)})"
        ) from None
    except Exception as err:  # anything else the parser raises: not YAML either
        raise ModelFolderError(f"{path}: not valid YAML ({one_line(err, limit=160)})") from None
    if root is None:
        raise ModelFolderError(f"{path}: empty")
    checker = _Checker(path)
    checker.tags(root)
    checker.structure(root)


def load_head_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read ``head.ckpt`` safely (``weights_only=True``) and check every tensor is finite.

    Arguments
    ---------
    path : str or os.PathLike
        The head's checkpoint (a ``state_dict`` saved with ``torch.save``).

    Returns
    -------
    dict of str to torch.Tensor
        The state dict, on the CPU.

    Raises
    ------
    ModelFolderError
        One line naming the file: missing, truncated or corrupt, holding Python objects other
        than tensors, or holding NaN or infinite weights (a diverged training run).

    Example
    -------
    >>> path = getfixture("tmp_path") / "head.ckpt"
    >>> torch.save({"w": torch.tensor([1.0, float("nan")])}, path)
    >>> try:
    ...     load_head_state(path)
    ... except ModelFolderError as err:
    ...     print(str(err).split("/")[-1])
    head.ckpt holds NaN or infinite weights (training diverged)
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelFolderError(f"{path}: missing") from None
    except pickle.UnpicklingError as err:
        if "weights only load failed" in str(err).lower():
            raise ModelFolderError(
                f"{path}: holds Python objects, not only tensors (refused: unpickling them could "
                "run code)"
            ) from None
        raise ModelFolderError(
            f"{path}: truncated or corrupt checkpoint ({one_line(err, limit=160)})"
        ) from None
    except Exception as err:  # EOFError, OSError (EINVAL), RuntimeError (zip reader), ...
        raise ModelFolderError(
            f"{path}: truncated or corrupt checkpoint ({one_line(err, limit=160)})"
        ) from None
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ModelFolderError(f"{path}: not a state dict of tensors")
    if not all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point()):
        raise ModelFolderError(f"{path} holds NaN or infinite weights (training diverged)")
    return dict(state)


def load_state_strictly(
    module: torch.nn.Module, state: Mapping[str, torch.Tensor], path: str | os.PathLike, what: str
) -> None:
    """``module.load_state_dict(state, strict=True)``, its failure told in one line.

    Arguments
    ---------
    module : torch.nn.Module
        The module to load into (the head).
    state : Mapping of str to torch.Tensor
        Its state dict, as :func:`load_head_state` returns it.
    path : str or os.PathLike
        The checkpoint ``state`` came from, for the message.
    what : str
        Where the module was defined, for the message (e.g. ``"the head in hyperparams.yaml"``).

    Raises
    ------
    ModelFolderError
        ``PATH: does not fit WHAT (first problem)`` when a weight is missing, unexpected or of
        another shape.

    Example
    -------
    >>> try:
    ...     load_state_strictly(torch.nn.Linear(2, 3), {"weight": torch.zeros(3, 2)}, "h.ckpt", "it")
    ... except ModelFolderError as err:
    ...     print(err)
    h.ckpt: does not fit it (Missing key(s) in state_dict: "bias".)
    """
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ModelFolderError(f"{path}: does not fit {what} ({state_dict_problem(err)})") from None


def state_dict_problem(err: BaseException) -> str:
    """The first problem of a ``load_state_dict`` error (``Missing key(s)...``, ``size
    mismatch...``) on one line, without the module name and its header."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    details = lines[1:] or lines or [type(err).__name__]
    text = " ".join(details[0].split())
    return text if len(text) <= 200 else text[:200] + "..."


def load_labels(path: str | os.PathLike) -> list[str]:
    """Read a label encoder file (SpeechBrain's ``CategoricalEncoder`` literal format).

    Arguments
    ---------
    path : str or os.PathLike
        ``label_encoder.ckpt`` of a model folder (or a run's ``label_encoder.txt``).

    Returns
    -------
    list of str
        The labels, by index.

    Raises
    ------
    ModelFolderError
        One line naming the file when it is missing, damaged or holds no labels, or when its
        indices are not ``0..n-1``.

    Example
    -------
    >>> load_labels(Path(__file__).parent / "default_model" / "label_encoder.ckpt")
    ['angry', 'happy', 'neutral', 'sad']
    """
    from speechbrain.dataio.encoder import CategoricalEncoder

    path = Path(path)
    encoder = CategoricalEncoder()
    try:
        encoder.load(path)
    except FileNotFoundError:
        raise ModelFolderError(f"{path}: missing") from None
    except Exception as err:  # ValueError, SyntaxError, UnicodeDecodeError, ...
        raise ModelFolderError(
            f"{path}: truncated or corrupt label encoder ({one_line(err, limit=160)})"
        ) from None
    n = len(encoder.ind2lab)
    if n == 0:
        raise ModelFolderError(f"{path}: truncated or corrupt label encoder (no labels)")
    if sorted(encoder.ind2lab) != list(range(n)) or len(encoder.lab2ind) != n:
        raise ModelFolderError(
            f"{path}: truncated or corrupt label encoder (indices are not 0..{n - 1})"
        )
    return [str(encoder.ind2lab[i]) for i in range(n)]


def check_model_folder(
    folder: str | os.PathLike, hparams_file: str = "hyperparams.yaml"
) -> dict[str, torch.Tensor]:
    """Check a whole model folder: ``hyperparams.yaml``, ``head.ckpt``, ``label_encoder.ckpt``.

    Arguments
    ---------
    folder : str or os.PathLike
        The model folder.
    hparams_file : str
        Name of its inference hyperparameters file.

    Returns
    -------
    dict of str to torch.Tensor
        The head's verified state dict (see :func:`load_head_state`).

    Raises
    ------
    ModelFolderError
        At the first problem, in one line naming the file.

    Example
    -------
    >>> state = check_model_folder(Path(__file__).parent / "default_model")
    >>> all(bool(v.isfinite().all()) for v in state.values())
    True
    """
    folder = Path(folder)
    check_hyperparams(folder / hparams_file)
    state = load_head_state(folder / HEAD_FILE)
    load_labels(folder / LABELS_FILE)
    return state
