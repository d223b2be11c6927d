"""The plain settings of a recipe run, read without building anything, and how two runs differ.

A recipe's HyperPyYAML file mixes plain settings (``lr: 0.001``, ``classes: [...]``) with
objects (``!new:``, ``!name:``, ``!apply:``). :func:`resolved_settings` applies the command-line
overrides, resolves every ``!ref`` (HyperPyYAML's ``resolve_references``) and keeps the plain
top-level settings only, so no encoder is loaded and no seed is set: a run can be compared with
the settings a previous run recorded (:func:`settings_difference`) before anything is built.
:func:`check_overrides` refuses an override that names no setting of the file, or whose value
does not fit the setting's type, in one line.

Example
-------
>>> hparams = getfixture("tmp_path") / "hparams.yaml"
>>> _ = hparams.write_text(
...     "lr: 0.001\\n"
...     "epochs: 4\\n"
...     "output_folder: !ref results/lr_<lr>\\n"
...     "opt: !name:torch.optim.Adam\\n"
...     "    lr: !ref <lr>\\n"
... )
>>> old = resolved_settings(hparams, None)
>>> old
{'lr': 0.001, 'epochs': 4}
>>> new = resolved_settings(hparams, ["--lr=0.01", "--epochs=4"])
>>> settings_difference(old, new)
['lr: 0.001 -> 0.01']
>>> check_overrides(hparams, ["--lrr=0.1"])
Traceback (most recent call last):
    ...
ValueError: unknown override --lrr (did you mean --lr?)
"""

from __future__ import annotations

import difflib
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ruamel.yaml
from hyperpyyaml import resolve_references
from ruamel.yaml.constructor import DuplicateKeyError

__all__ = [
    "RECIPE_FLAGS",
    "WRITE_LOCATIONS",
    "check_overrides",
    "overrides_to_dict",
    "read_settings_file",
    "resolved_settings",
    "settings_difference",
    "training_speeds",
]

# Command-line flags of the recipe itself, not settings of the YAML file.
RECIPE_FLAGS = ("--overwrite",)
# Settings that only say where a run writes: they do not change what is trained.
WRITE_LOCATIONS = frozenset({"output_folder", "save_folder", "train_log", "feature_cache"})
_PLAIN = (str, int, float, bool, type(None))
# Settings that must be positive, or at least zero, whatever the recipe (when present).
_POSITIVE = ("number_of_epochs", "batch_size", "lr", "encoder_lr", "d_model", "d_ffn", "nhead")
_NOT_NEGATIVE = (
    "final_lr",
    "unfreeze_top",
    "tune_blocks",
    "cma_layers",
    "valid_ratio",
    "augment_copies",
)
# Settings added after runs were recorded without them, with the value that changes nothing:
# a recorded run that lacks one is the same as a run with that value (it resumes). A setting
# mapped to a (setting, value) pair does not matter while that setting has that value.
_ADDED_LATER: dict[str, Any] = {
    "augment_copies": 0,
    "augment_corruptions": ("augment_copies", 0),
    "balanced_sampling": "none",
    "norm_group": ("speaker_norm", False),
}


def _yaml() -> ruamel.yaml.YAML:
    return ruamel.yaml.YAML()  # round trip: keeps the tags, so objects can be told apart


def overrides_to_dict(overrides: list[str] | str | Mapping | None) -> dict:
    """Overrides as a dict, from ``["--name=value", ...]``, a YAML string or a mapping.

    The list form is what ``train.py`` receives after the hparams file: SpeechBrain's run options
    (``--device``, ...) and the recipe's own flags (:data:`RECIPE_FLAGS`) are not settings and
    are left out. Values are parsed as YAML (``--lr=abc`` is the string ``"abc"``, ``--lr=`` is
    ``None``).

    Example
    -------
    >>> overrides_to_dict(["--lr=0.1", "--classes=[sad,happy]", "--device=cpu", "--overwrite"])
    {'lr': 0.1, 'classes': ['sad', 'happy']}
    >>> overrides_to_dict("lr: 0.1"), overrides_to_dict(None)
    ({'lr': 0.1}, {})
    """
    if overrides is None:
        return {}
    if isinstance(overrides, Mapping):
        return _plain(overrides)
    if not isinstance(overrides, str):
        from speechbrain.utils.run_opts import RunOptions

        args = [a for a in overrides if a.split("=", 1)[0] not in RECIPE_FLAGS]
        _, _, overrides = RunOptions.from_command_line_args(["hparams.yaml", *args])
    try:
        loaded = _yaml().load(overrides) if overrides.strip() else None
    except DuplicateKeyError as err:
        raise ValueError(f"an override is given twice: {err.problem}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, Mapping):
        raise ValueError(f"overrides must be name: value pairs, not {overrides!r}")
    return _plain(loaded)


def _is_tagged(node: Any) -> bool:
    tag = getattr(node, "tag", None)
    return getattr(tag, "value", None) is not None


def _plain(node: Any) -> Any:
    """ruamel's round-trip node as plain Python (CommentedMap -> dict, ScalarFloat -> float)."""
    if isinstance(node, bool):
        return bool(node)
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, str):
        return str(node)
    if isinstance(node, Mapping):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [_plain(v) for v in node]
    return node


def _is_plain_setting(node: Any) -> bool:
    if _is_tagged(node):
        return False
    if isinstance(node, _PLAIN):
        return True
    if isinstance(node, Mapping):
        return all(isinstance(k, str) and _is_plain_setting(v) for k, v in node.items())
    if isinstance(node, (list, tuple)):
        return all(_is_plain_setting(v) for v in node)
    return False


_UNSET = "\x00unset placeholder"


def _top_level(hparams_file: str | os.PathLike, overrides: dict) -> Mapping:
    """The resolved top-level tree; a ``!PLACEHOLDER`` not overridden becomes :data:`_UNSET`."""
    with open(hparams_file, encoding="utf-8") as fin:
        raw = _yaml().load(fin)
    raw = raw if isinstance(raw, Mapping) else {}
    unset = {
        str(k): _UNSET
        for k, v in raw.items()
        if getattr(getattr(v, "tag", None), "value", None) == "!PLACEHOLDER" and k not in overrides
    }
    with open(hparams_file, encoding="utf-8") as fin:
        resolved = resolve_references(fin, {**overrides, **unset} or None)
    tree = _yaml().load(resolved)
    return tree if isinstance(tree, Mapping) else {}


def _mentions_unset(node: Any) -> bool:
    if isinstance(node, str):
        return _UNSET in node
    if isinstance(node, Mapping):
        return any(_mentions_unset(v) for v in node.values())
    if isinstance(node, (list, tuple)):
        return any(_mentions_unset(v) for v in node)
    return False


def resolved_settings(
    hparams_file: str | os.PathLike,
    overrides: list[str] | str | Mapping | None,
    include_locations: bool = False,
) -> dict:
    """The plain top-level settings of ``hparams_file`` with ``overrides`` applied.

    Plain means ``str``, ``int``, ``float``, ``bool``, ``None`` and lists or dicts of them;
    objects (``!new:``, ``!name:``, ``!apply:``) and a ``!PLACEHOLDER`` left unset are left out,
    and so are the settings that only say where the run writes (:data:`WRITE_LOCATIONS` and
    every ``*_annotation``). ``!ref`` is resolved; nothing is constructed.

    Arguments
    ---------
    hparams_file : str or os.PathLike
        The recipe's HyperPyYAML file.
    overrides : list of str, str, dict or None
        ``["--name=value", ...]`` as given to ``train.py`` (run options such as ``--device``
        and :data:`RECIPE_FLAGS` are ignored), or SpeechBrain's YAML string or dict.
    include_locations : bool
        Keep the settings that say where the run writes too (``output_folder``, ...).

    Returns
    -------
    dict
        ``{name: value}`` in the file's order.

    Example
    -------
    >>> path = getfixture("tmp_path") / "h.yaml"
    >>> _ = path.write_text(
    ...     "rate: 1\\ntwice: !ref <rate> * 2\\nnames: !PLACEHOLDER\\ntrain_annotation: t.json\\n"
    ... )
    >>> resolved_settings(path, "rate: 2")
    {'rate': 2, 'twice': 4}
    >>> resolved_settings(path, ["--names=[x, y]"])
    {'rate': 1, 'twice': 2, 'names': ['x', 'y']}
    """
    tree = _top_level(hparams_file, overrides_to_dict(overrides))
    return {
        str(key): _plain(value)
        for key, value in tree.items()
        if (include_locations or not _is_location(str(key)))
        and _is_plain_setting(value)
        and not _mentions_unset(value)
    }


def _is_location(key: str) -> bool:
    return key in WRITE_LOCATIONS or key.endswith("_annotation")


def settings_difference(old: Mapping, new: Mapping) -> list[str]:
    """``"key: old -> new"`` for every setting that differs, sorted by key.

    A setting present on one side only shows ``(unset)`` on the other.

    Example
    -------
    >>> settings_difference({"lr": 0.001, "seed": 1}, {"lr": 0.01, "seed": 1, "pooling": "mean"})
    ['lr: 0.001 -> 0.01', 'pooling: (unset) -> mean']
    >>> settings_difference({"a": [1, 2]}, {"a": [1, 2]})
    []
    """
    unset = object()
    lines = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key, unset), new.get(key, unset)
        if _inert_addition(key, old, new) or _inert_addition(key, new, old):
            continue
        if before != after or type(before) is not type(after):
            if before is not unset and after is not unset and _same_number(before, after):
                continue
            lines.append(f"{key}: {_show(before, unset)} -> {_show(after, unset)}")
    return lines


def _inert_addition(key: str, without: Mapping, having: Mapping) -> bool:
    """Whether ``key``, absent from ``without``, is a setting added later whose value in
    ``having`` changes nothing (:data:`_ADDED_LATER`): an older run's record is the same run.

    Example
    -------
    >>> _inert_addition("augment_copies", {"lr": 0.1}, {"lr": 0.1, "augment_copies": 0})
    True
    >>> _inert_addition("augment_corruptions", {}, {"augment_copies": 2, "augment_corruptions": []})
    False
    """
    if key in without or key not in _ADDED_LATER or key not in having:
        return False
    inert = _ADDED_LATER[key]
    if isinstance(inert, tuple):  # irrelevant while another setting has a value
        other, value = inert
        return having.get(other, value) == value and without.get(other, value) == value
    return having[key] == inert


def _same_number(a: Any, b: Any) -> bool:
    # 1 and 1.0 are the same learning rate; True and 1 are not the same setting.
    numbers = (int, float)
    return (
        isinstance(a, numbers)
        and isinstance(b, numbers)
        and not isinstance(a, bool)
        and not isinstance(b, bool)
        and a == b
    )


def _show(value: Any, unset: object = None) -> str:
    """A value as it would be typed on the command line (``[90, 100]``, ``True``, ``null``)."""
    if value is unset and unset is not None:
        return "(unset)"
    if isinstance(value, str):
        return value if value else "''"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in value.items()) + "}"
    return str(value)


_KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
_PLURALS = {bool: "true/false values", int: "integers", float: "numbers", str: "strings"}


def _scalar_type(value: Any) -> type | None:
    for kind in (bool, int, float, str):  # bool before int: True is an int too
        if isinstance(value, kind):
            return kind
    return None


def _element_type(items: Any) -> type | None:
    """The one scalar type of every item of a non-empty list, else None."""
    if not isinstance(items, (list, tuple)) or not items:
        return None
    kinds = {_scalar_type(item) for item in items}
    return kinds.pop() if len(kinds) == 1 else None


def _kind(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        element = _element_type(value)
        return f"a list of {_PLURALS[element]}" if element else "a list, e.g. [a, b]"
    if isinstance(value, Mapping):
        return "a mapping"
    return _KINDS.get(_scalar_type(value), "a string")


def _fits(default: Any, value: Any) -> bool:
    """Whether ``value`` may replace a setting whose YAML default is ``default``.

    A list must hold items of the default's item type when all the default's items share one.
    """
    if default is None or _is_tagged(default):  # unset, !PLACEHOLDER or an object: no rule
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, str) and value != ""
    if isinstance(default, (list, tuple)):
        if not isinstance(value, (list, tuple)):
            return False
        if _element_type(default) is None:
            return True
        return all(_fits(default[0], item) for item in value)
    if isinstance(default, Mapping):
        return isinstance(value, Mapping)
    return True


def check_overrides(
    hparams_file: str | os.PathLike,
    overrides: list[str] | str | Mapping | None,
    flexible: tuple[str, ...] = ("test_fold",),
) -> None:
    """Refuse an override that is unknown, of the wrong type or out of range; one-line errors.

    Every override must name a top-level setting of ``hparams_file`` (close matches are
    suggested); its value must have the type of the file's default (an integer for an integer,
    a number for a float, true/false for a boolean, a list for a list, a non-empty string for a
    string), except for the names in ``flexible``, which the recipe checks itself. Sizes, epochs
    and learning rates must be positive, counts and ratios not negative.

    Raises
    ------
    ValueError
        The first problem, as ``--name=value: ...`` (one line).

    Example
    -------
    >>> path = getfixture("tmp_path") / "h.yaml"
    >>> _ = path.write_text("lr: 0.001\\nbatch_size: 8\\nuse_cma: False\\n")
    >>> check_overrides(path, ["--lr=1e-4", "--batch_size=4", "--use_cma=True"])
    >>> check_overrides(path, ["--batch_size=x"])
    Traceback (most recent call last):
        ...
    ValueError: --batch_size=x: batch_size takes an integer (the default is 8), not 'x'
    >>> check_overrides(path, ["--lr=.nan"])
    Traceback (most recent call last):
        ...
    ValueError: --lr=nan: lr must be a finite number
    >>> check_overrides(path, ["--lr=-1"])
    Traceback (most recent call last):
        ...
    ValueError: --lr=-1: lr must be positive
    >>> _ = path.write_text("blocks: [2, 3]\\n")
    >>> check_overrides(path, ["--blocks=[1, x]"])
    Traceback (most recent call last):
        ...
    ValueError: --blocks=[1, x]: blocks takes a list of integers (the default is [2, 3]), not [1, 'x']
    """
    given = overrides_to_dict(overrides)
    if not given:
        return
    with open(hparams_file, encoding="utf-8") as fin:
        defaults = _yaml().load(fin)
    defaults = defaults if isinstance(defaults, Mapping) else {}
    # The values after !ref resolution, for the types of settings written as references.
    resolved = {k: v for k, v in _top_level(hparams_file, {}).items() if not _mentions_unset(v)}
    known = [str(k) for k in defaults]
    for name, value in given.items():
        shown = f"--{name}={_show(value, None) if value is not None else ''}"
        if name not in defaults:
            close = difflib.get_close_matches(name, known, n=3)
            hint = f" (did you mean {', '.join('--' + c for c in close)}?)" if close else ""
            raise ValueError(f"unknown override --{name}{hint}")
        if name in flexible:
            continue
        default = resolved.get(name, defaults[name])
        if not _fits(default, value):
            raise ValueError(
                f"{shown}: {name} takes {_kind(_plain(default))} "
                f"(the default is {_show(_plain(default), None)}), not {value!r}"
            )
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if is_number and not math.isfinite(value):
            raise ValueError(f"{shown}: {name} must be a finite number")
        if name in _POSITIVE and is_number and not value > 0:
            raise ValueError(f"{shown}: {name} must be positive")
        if name in _NOT_NEGATIVE and is_number and value < 0:
            raise ValueError(f"{shown}: {name} must not be negative")


def read_settings_file(path: str | os.PathLike) -> dict | None:
    """The settings a previous run recorded in ``path`` (JSON), or None if absent or unreadable."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def training_speeds(settings: Mapping) -> list[int]:
    """The training speeds in percent (``speed_perturb``; ``[100]``: no perturbation).

    Raises
    ------
    ValueError
        Not a list, or a speed outside 50..200 percent.

    Example
    -------
    >>> training_speeds({"speed_perturb": [90, 100, 110]}), training_speeds({})
    ([90, 100, 110], [100])
    """
    speeds = settings.get("speed_perturb") or [100]
    if not isinstance(speeds, (list, tuple)):
        raise ValueError(
            f"speed_perturb takes a list of percentages, e.g. [90, 100, 110], not {speeds!r}"
        )
    speeds = [int(s) for s in speeds]
    if any(not 50 <= s <= 200 for s in speeds):
        raise ValueError(f"speed_perturb takes percentages between 50 and 200, not {speeds}")
    return speeds
