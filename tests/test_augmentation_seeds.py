"""benchmarks/augmentation_seeds.py: the clean-accuracy cost of augmentation over seeds, reported
from finished runs (fold folders as the recipes' cross_validate.py writes them)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import augmentation_seeds  # noqa: E402

from qieemo_lobes.recipe_results import write_predictions  # noqa: E402

CLASSES = ["angry", "sad"]


def write_run(folder: Path, wrong: dict[int, int]) -> None:
    """Two folds of 20 clips (two speakers each, both classes); fold k gets ``wrong[k]`` clips
    wrong (the first ones of class angry)."""
    for k in (1, 2):
        fold = folder / f"fold_{k}"
        fold.mkdir(parents=True)
        rows, test = [], {}
        for i in range(20):
            true = CLASSES[i % 2]
            predicted = "sad" if (true == "angry" and i // 2 < wrong[k]) else true
            probs = [0.9, 0.1] if predicted == "angry" else [0.1, 0.9]
            utt = f"f{k}_u{i}"
            rows.append((utt, true, predicted, probs))
            test[utt] = {"spk_id": f"s{k}{i % 4 // 2}"}
        write_predictions(rows, CLASSES, fold / "predictions.csv")
        (fold / "test.json").write_text(json.dumps(test))
        ua = 100 * (1 - wrong[k] / 10) / 2 + 50  # angry recall and sad recall 1, averaged
        metrics = {
            "wa": 0.0,
            "ua": ua,
            "wf1": 0.0,
            "macro_f1": 0.0,
            "confusion": [],
            "classes": CLASSES,
        }
        (fold / "test_metrics.json").write_text(json.dumps(metrics))  # as cross_validate writes
    (folder / "summary.json").write_text("{}")


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """qieemo and two settings over seeds 1986 and 1987: the default perfect; qieemo_aug1 one
    angry clip wrong per fold (-5 UA a fold); qieemo_aug 8 per fold in seed 1986 only."""
    root = tmp_path / "work"
    for seed in (1986, 1987):
        write_run(augmentation_seeds.run_folder(root, "emodb", "qieemo", seed), {1: 0, 2: 0})
        write_run(augmentation_seeds.run_folder(root, "emodb", "qieemo_aug1", seed), {1: 1, 2: 1})
    write_run(augmentation_seeds.run_folder(root, "emodb", "qieemo_aug", 1986), {1: 8, 2: 8})
    return root


def test_report_pairs_seeds_and_applies_the_bar(work, tmp_path, capsys):
    out = tmp_path / "seeds.md"
    argv = ["--corpus", "emodb", "--settings", "qieemo_aug,qieemo_aug1", "--seeds", "1986,1987"]
    argv += ["--work", str(work), "--out", str(out), "--report-only"]
    assert augmentation_seeds.main(argv) == 0
    text = out.read_text()
    assert "| qieemo (recipe default) | 100.0 | 100.0 | 100.0 +- 0.0 |" in text
    assert "| 95.0 | 95.0 | 95.0 +- 0.0 | -5.0 [" in text
    assert "fails (-5.0)" in text
    assert "| 60.0 | not run | 60.0 +- 0.0 | -40.0 [" in text  # paired on seed 1986 only
    record = json.loads(out.with_suffix(".json").read_text())
    aug1 = record["settings"]["qieemo_aug1"]["vs_qieemo"]
    assert aug1["seeds"] == [1986, 1987] and aug1["bar_holds"] is False
    assert aug1["mcnemar"] == {"b": 4, "c": 0, "statistic": 0, "p_value": 0.125}
    assert record["settings"]["qieemo_aug"]["vs_qieemo"]["mcnemar"]["b"] == 16
    assert record["settings"]["qieemo_aug"]["vs_qieemo"]["pooled"]["p_value"] < 0.05


def test_bar_holds_for_an_equal_setting(work, tmp_path):
    for seed in (1986, 1987):
        folder = augmentation_seeds.run_folder(work, "emodb", "qieemo_aug_mild", seed)
        write_run(folder, {1: 0, 2: 0})
    out = tmp_path / "seeds.md"
    argv = ["--settings", "qieemo_aug_mild", "--seeds", "1986,1987", "--work", str(work)]
    assert augmentation_seeds.main([*argv, "--out", str(out), "--report-only"]) == 0
    result = json.loads(out.with_suffix(".json").read_text())["settings"]["qieemo_aug_mild"]
    assert result["vs_qieemo"]["bar_holds"] and result["vs_qieemo"]["pooled"]["delta_ua"] == 0
    assert "holds (+0.0)" in out.read_text()


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--settings", "qieemo_agu"], "--settings: unknown qieemo_agu; known: qieemo_aug,"),
        (["--seeds", "1987,x"], "--seeds takes comma-separated integers, not '1987,x'"),
    ],
)
def test_bad_arguments_are_one_line(option, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        augmentation_seeds.parse_arguments(option)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


def test_failed_runs_are_reported_at_the_end(tmp_path, capsys):
    """Runs that cannot start (no corpus at --data) are listed after the others ran, exit 1,
    and the report is still written with what is missing."""
    out = tmp_path / "seeds.md"
    argv = ["--settings", "qieemo_aug1", "--seeds", "1987", "--work", str(tmp_path / "work")]
    argv += ["--data", str(tmp_path / "no_data"), "--out", str(out)]
    assert augmentation_seeds.main(argv) == 1
    err = capsys.readouterr().err.splitlines()
    assert "failed: qieemo seed 1987 (its log is in the run's folder)" in err
    assert "failed: qieemo_aug1 seed 1987 (its log is in the run's folder)" in err
    assert "| qieemo_aug1 (1 corrupted copy of every training clip) | not run |" in out.read_text()
