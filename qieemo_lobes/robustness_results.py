"""The result file and table of :mod:`qieemo_lobes.robustness`.

:class:`Results` is the ``--out`` JSON: the identity of what was measured (model, test set,
seed, with digests of their contents) and one record per condition, rewritten whole after each
condition so that an interrupted run resumes; :func:`table` prints the records for people.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from qieemo_lobes.corruptions import Corruption
from qieemo_lobes.errors import one_line
from qieemo_lobes.files import write_json_atomic

__all__ = ["IDENTITY", "Results", "RobustnessError", "condition_key", "table"]

IDENTITY = ("model", "model_digest", "test", "test_digest", "seed")
# Identity keys added later, with the value files written before them stand for.
OPTIONAL_IDENTITY = {"adapted": False}
RECORD = {"corruption", "severity", "label", "ua", "n"}


class RobustnessError(Exception):
    """Nothing can run: a bad option, model, test set or ``--out`` (``str()``: one line)."""


def condition_key(condition: Corruption | None) -> tuple[str, object]:
    return ("clean", None) if condition is None else (condition.name, condition.severity)


class Results:
    """The ``--out`` file: identity (model, test set, seed) and one record per condition.

    ``replace=True`` starts over when the file was made for another identity (instead of
    raising :class:`RobustnessError`).
    """

    def __init__(self, path, identity: dict, replace: bool = False) -> None:
        self.path = None if path is None else Path(path)
        self.identity = dict(identity)
        self.records: list[dict] = []
        self.replaced = False  # an existing file for another identity was set aside
        if self.path is None or not self.path.exists():
            return
        try:
            data = json.loads(self.path.read_text())
            old = {k: data[k] for k in IDENTITY}
            old |= {k: data.get(k, default) for k, default in OPTIONAL_IDENTITY.items()}
            records = list(data["conditions"])
            if not all(isinstance(r, dict) and RECORD <= r.keys() for r in records):
                raise ValueError("a condition without corruption, severity, label, ua, n")
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise RobustnessError(
                f"{self.path}: not a robustness result file ({one_line(err)}); choose another --out"
            ) from None
        new = {k: self.identity.get(k, default) for k, default in OPTIONAL_IDENTITY.items()}
        new |= {k: self.identity[k] for k in IDENTITY}
        differences = [f"{k} {old[k]!r} -> {new[k]!r}" for k in old if old[k] != new[k]]
        if differences and not replace:
            raise RobustnessError(
                f"{self.path}: holds results for another run ({'; '.join(differences)}); "
                "choose another --out or delete it"
            )
        self.records = [] if differences else records
        self.replaced = bool(differences)

    def kept(self, condition: Corruption | None, source: str | None) -> dict | None:
        """The stored record of ``condition`` made from the same ``source`` (babble pool,
        noise or RIR file), if any."""
        for record in self.records:
            if (record["corruption"], record["severity"]) == condition_key(condition):
                return record if record.get("source") == source else None
        return None

    def add(self, record: dict) -> None:
        key = (record["corruption"], record["severity"])
        self.records = [r for r in self.records if (r["corruption"], r["severity"]) != key]
        self.records.append(record)
        if self.path is not None:
            write_json_atomic({**self.identity, "conditions": self.records}, self.path)


def table(records: Sequence[dict]) -> str:
    """UA per condition: a row per corruption, its severities (mild to harsh) as columns.

    Example
    -------
    >>> print(table([{"corruption": "clean", "label": "clean", "ua": 80.0},
    ...              {"corruption": "white", "label": "white 20 dB", "ua": 70.04},
    ...              {"corruption": "white", "label": "white 0 dB", "ua": 41.26}]))
    corruption  UA % by severity (mild -> harsh)
    clean       80.0
    white       20 dB: 70.0   0 dB: 41.3
    """
    rows: dict[str, list[str]] = {}
    for r in records:
        severity = r["label"][len(r["corruption"]) :].strip()
        cell = f"{severity}: {r['ua']:.1f}" if severity else f"{r['ua']:.1f}"
        rows.setdefault(r["corruption"], []).append(cell)
    width = max([len("corruption"), *map(len, rows)]) + 2
    lines = [f"{'corruption':<{width}}UA % by severity (mild -> harsh)"]
    lines += [f"{name:<{width}}{'   '.join(cells)}" for name, cells in rows.items()]
    return "\n".join(lines)
