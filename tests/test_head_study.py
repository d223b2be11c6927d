"""Tests for benchmarks/head_study.py (issue 13): one cross-validation per corpus and head
variant under one protocol, reuse of finished ones, the table; a fake cross-validation writes
what a finished one leaves (no model is trained)."""

from __future__ import annotations

import doctest
import json
import sys

from tests.conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import head_study  # noqa: E402

UA = {("emodb", "recipe"): 80.0, ("emodb", "small"): 85.0, ("emovo", "recipe"): 50.0}


def test_module_docstring_examples():
    assert doctest.testmod(head_study).failed == 0


def test_runs_every_cell_once_and_writes_the_table(tmp_path, capsys):
    calls = []

    def fake(corpus, data, out, cache, overrides):
        calls.append((corpus, out.name, overrides))
        if (corpus, out.name) == ("emovo", "small"):
            return 1  # a failed cross-validation: reported, the others run
        ua = UA[(corpus, out.name)]
        out.mkdir(parents=True, exist_ok=True)
        summary = {"mean": {"ua": ua}, "folds": [{"ua": ua - 1}, {"ua": ua + 1}], "wall_time_s": 3}
        (out / "summary.json").write_text(json.dumps(summary))
        return 0

    out = tmp_path / "study.md"
    argv = ["--variants", "recipe,small", "--corpora", "emodb,emovo", "--data", str(tmp_path)]
    argv += ["--work", str(tmp_path / "w"), "--out", str(out)]
    assert head_study.main(argv, run=fake) == 1
    assert "FAILED: emovo small" in capsys.readouterr().err
    assert len(calls) == 4
    for _, _, overrides in calls:
        assert overrides[: len(head_study.PROTOCOL)] == head_study.PROTOCOL
    assert calls[1][2][len(head_study.PROTOCOL) :] == head_study.VARIANTS["small"][1]
    text = out.read_text()
    assert "(`recipe`) | 80.0 | 50.0 | 65.0 | 50.0 | (reference) |" in text
    assert "(`small`) | 85.0 |  |  |  | 1 of 1 |" in text
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["runs"]["recipe"]["emodb"]["ua_folds"] == [79.0, 81.0]

    # A rerun trains only the failed cell; --report-only trains nothing.
    calls.clear()
    head_study.main(argv, run=fake)
    assert [(c, n) for c, n, _ in calls] == [("emovo", "small")]
    calls.clear()
    assert head_study.main([*argv, "--report-only"], run=fake) == 0 and calls == []
