"""benchmarks/default_robustness.py on fake leave-one-corpus-out runs of a few EmoDB clips.

The runs hold the built-in default model's head (tests/test_robustness.py's ``fake_run``), laid
out as ``tools/train_default_model.py`` leaves its candidates' runs.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.test_robustness import clips, emodb4, fake_run, stderr_lines  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def benchmark():
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    path = REPO_ROOT / "benchmarks" / "default_robustness.py"
    spec = importlib.util.spec_from_file_location("default_robustness", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def work(emodb4, tmp_path) -> Path:  # noqa: F811 (the imported fixture)
    """One finished leave-one-corpus-out run holding EmoDB out (speakers 03 and 08 tested)."""
    run = tmp_path / "work" / "all_blocks" / "qieemo" / "train-x+y_test-emodb_turev-calm-neutral"
    fake_run(run, clips(emodb4, ("03", "08")), clips(emodb4, ("09",)))
    return tmp_path / "work"


def test_plain_and_adapted_tables_json_and_resume(benchmark, work, tmp_path, capsys):
    out = tmp_path / "results" / "default_robustness.md"
    args = ["--work", str(work), "--candidate", "all_blocks", "--corpora", "emodb", "--clips", "12"]
    args += ["--corruptions", "white:0,gain:-20", "--out", str(out)]
    assert benchmark.main(args) == 0
    results = json.loads(out.with_suffix(".json").read_text())
    emodb = results["corpora"]["emodb"]
    assert set(emodb) == {"plain", "adapted"}
    for system in emodb.values():
        assert system["n_clips"] == 12
        labels = [c["label"] for c in system["conditions"]]
        assert labels == ["clean", "white 0 dB", "gain -20 dB"]
        uas = {c["corruption"]: c["ua"] for c in system["conditions"]}
        assert system["summary"] == {**uas, "corrupted": (uas["white"] + uas["gain"]) / 2}
    stored = work / "all_blocks" / "robustness"
    plain, adapted = (
        json.loads((stored / f"emodb_12{s}.json").read_text()) for s in ("", "_adapted")
    )
    assert (plain["adapted"], adapted["adapted"]) == (False, True)
    assert len(plain["conditions"][0]["predictions"]) == 12
    table = out.read_text()
    summary = emodb["plain"]["summary"], emodb["adapted"]["summary"]
    row = f"| white | {summary[0]['white']:.1f} / {summary[1]['white']:.1f} |"
    assert row in table and "| **mean of the corrupted conditions** |" in table

    capsys.readouterr()
    assert benchmark.main(args) == 0  # resumed: every condition kept, nothing classified
    kept = [line for line in stderr_lines(capsys) if ": kept (UA" in line]
    assert len(kept) == 6
    assert json.loads(out.with_suffix(".json").read_text())["corpora"] == results["corpora"]


def test_missing_run_and_bad_options_are_one_line(benchmark, work, tmp_path, capsys):
    out = str(tmp_path / "r.md")
    assert benchmark.main(["--work", str(work), "--corpora", "ravdess", "--out", out]) == 2
    err = stderr_lines(capsys)
    assert len(err) == 1 and "0 finished runs holding ravdess out" in err[0], err
    bad = ["--work", str(work), "--corpora", "emodb", "--corruptions", "hail", "--out", out]
    assert benchmark.main(bad) == 2
    err = stderr_lines(capsys)
    assert len(err) == 1 and "unknown corruption 'hail'" in err[0], err
    with pytest.raises(SystemExit) as exit_info:
        benchmark.main(["--work", str(work), "--clips", "5"])
    assert exit_info.value.code == 2
    assert "--clips must be at least 10" in capsys.readouterr().err


def test_compare_evaluates_the_other_head_on_the_same_clips(benchmark, work, tmp_path):
    # The same head under a second candidate's name: same clips, so the same numbers.
    shutil.copytree(work / "all_blocks", work / "all_blocks_mild")
    out = tmp_path / "default_robustness.md"
    args = ["--work", str(work), "--candidate", "all_blocks_mild", "--compare", "all_blocks"]
    args += ["--corpora", "emodb", "--clips", "12", "--corruptions", "white:0", "--out", str(out)]
    assert benchmark.main(args) == 0
    results = json.loads(out.with_suffix(".json").read_text())
    shipped = results["corpora"]["emodb"]["plain"]["summary"]
    other = results["compared"]["all_blocks"]["emodb"]["plain"]["summary"]
    assert other == shipped and set(shipped) == {"clean", "white", "corrupted"}
    assert (work / "all_blocks" / "robustness" / "emodb_12.json").is_file()
    cell = f"{shipped['clean']:.1f} / {shipped['corrupted']:.1f}"
    table = out.read_text()
    assert "## Against other heads" in table
    assert f"| `all_blocks` | {cell} | {cell} |" in table
    assert f"| `all_blocks_mild` | {cell} | {cell} |" in table


def test_a_missing_compared_head_is_refused_before_anything_is_evaluated(
    benchmark, work, tmp_path, capsys
):
    out = tmp_path / "default_robustness.md"
    args = ["--work", str(work), "--candidate", "all_blocks", "--compare", "nosuch"]
    args += ["--corpora", "emodb", "--clips", "12", "--corruptions", "white:0", "--out", str(out)]
    assert benchmark.main(args) == 2
    err = stderr_lines(capsys)
    assert len(err) == 1 and "nosuch/qieemo: 0 finished runs holding emodb out" in err[0], err
    assert not (work / "all_blocks" / "robustness").exists() and not out.exists()
