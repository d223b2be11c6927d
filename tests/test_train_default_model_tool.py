"""Tests for tools/train_default_model.py (issue 13): the five-corpus manifest, the choice of
head on leave-one-corpus-out UA, the final run with the chosen head, and the model card.

The recipes' runs are replaced by fakes that write what they leave behind (settings, metrics,
calibration), and the export by one that keeps the card: no model is trained here (the
recipes' own tests train tiny ones).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.test_cross_corpus import FakeTrain, cross_corpus_qieemo, make_corpora

sys.path.insert(0, str(REPO_ROOT / "tools"))
import train_default_model as tool  # noqa: E402

CORPORA = ["emodb", "ravdess", "turev"]
# Made-up UA per (candidate, held-out corpus): "small_all_blocks" has the best mean.
UA = {
    "small": {"emodb": 60.0, "ravdess": 50.0, "turev": 40.0},
    "small_all_blocks": {"emodb": 70.0, "ravdess": 55.0, "turev": 45.0},
    "baseline": {"emodb": 80.0, "ravdess": 30.0, "turev": 30.0},
}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_corpora(tmp_path_factory.mktemp("corpora"))


class FakeLoco(FakeTrain):
    """``train.py`` of a leave-one-corpus-out run: a finished run with the UA of :data:`UA`
    for its candidate (the work subfolder) and held-out corpus, and its calibration."""

    def __call__(self, arguments, log: Path) -> int:
        code = super().__call__(arguments, log)
        args = dict(a[2:].split("=", 1) for a in arguments)
        out = Path(args["output_folder"])
        metrics = json.loads((out / "test_metrics.json").read_text())
        ua = UA[out.parents[1].name][args["test_fold"]]
        metrics.update(wa=ua, ua=ua, wf1=ua)
        (out / "test_metrics.json").write_text(json.dumps(metrics))
        # The recipe's temperature (its validation speakers) makes a new corpus worse, as
        # measured on the real corpora.
        calibration = {"temperature": 0.8, "ece_test_before": 20.0, "ece_test_after": 25.0}
        (out / "calibration.json").write_text(json.dumps(calibration))
        (out / "predictions.csv").write_text(overconfident_predictions(ua))
        return code


def overconfident_predictions(ua: float, n: int = 100) -> str:
    """``predictions.csv`` of ``n`` test clips, ``ua`` % of them right, every one predicted with
    probability 0.97: overconfident, so the temperature fitted on them is above 1."""
    lines = ["utterance,true,predicted," + ",".join(tool.CLASSES)]
    for i in range(n):
        true = tool.CLASSES[i % 4]
        predicted = true if i < n * ua / 100 else tool.CLASSES[(i + 1) % 4]
        probabilities = [0.97 if c == predicted else 0.01 for c in tool.CLASSES]
        lines.append(f"u{i},{true},{predicted}," + ",".join(f"{p:.6f}" for p in probabilities))
    return "\n".join(lines) + "\n"


def fake_final_training(commands: list):
    """Stands for ``tool.run`` (the final ``train.py --test_fold=none``)."""

    def run(command: list[str]) -> None:
        commands.append(command)
        options = dict(a[2:].split("=", 1) for a in command if a.startswith("--") and "=" in a)
        out = Path(options["output_folder"])
        out.mkdir(parents=True, exist_ok=True)
        (out / "test_metrics.json").write_text(json.dumps({"n_train": 90, "n_valid": 10}))
        hparams = {"fusion_blocks": [1, 2, 3, 4, 5, 6], "use_cma": False, "pooling": "mean"}
        (out / "run_info.json").write_text(json.dumps({"hparams": hparams}))
        (out / "calibration.json").write_text(json.dumps({"temperature": 1.25}))

    return run


def test_builds_chooses_on_loco_and_writes_the_card(data, tmp_path, monkeypatch):
    fake, finals, exported = FakeLoco(), [], {}

    def fake_export(run, out, force, extra_files, calibration):
        exported.update(
            run=Path(run),
            out=Path(out),
            force=force,
            card=extra_files["MODEL_CARD.md"],
            calibration=calibration,
        )

    monkeypatch.setattr(cross_corpus_qieemo, "launch", fake)
    monkeypatch.setattr(tool, "run", fake_final_training(finals))
    monkeypatch.setattr(tool, "export_model", fake_export)
    work, out = tmp_path / "work", tmp_path / "model"
    args = ["--data", str(data), "--corpora", "turev,emodb,ravdess", "--work", str(work)]
    args += ["--out", str(out), "--candidates", "small,small_all_blocks,baseline"]
    assert tool.main([*args, "--seed=7"]) == 0

    # Every candidate: one run per held-out corpus, with its own overrides and the user's.
    assert len(fake.calls) == 9
    for call in fake.calls:
        candidate = Path(call["output_folder"]).parents[1].name
        assert call["seed"] == "7" and call["n_classes"] == "4"
        assert ("fusion_blocks" in call) == (candidate == "small_all_blocks")
        assert Path(call["data_folder"]).name.startswith("emodb+ravdess+turev")
    manifest = Path(fake.calls[0]["data_folder"]).read_text().splitlines()
    rows = [line.split(",") for line in manifest[1:]]
    assert {r[1] for r in rows} == set(tool.CLASSES) and {r[3] for r in rows} == set(CORPORA)
    turev = [r for r in rows if r[3] == "turev"]
    assert len(turev) == 24 and sum(r[1] == "neutral" for r in turev) == 6  # calm -> neutral

    # The best mean UA, trained on every corpus and exported with its card.
    (final,) = finals
    assert final[1] == "train.py" and "--test_fold=none" in final and "--seed=7" in final
    assert "--fusion_blocks=[1,2,3,4,5,6]" in final and "--speed_perturb=[100]" in final
    assert exported["run"] == work / "final_small_all_blocks" and exported["force"]
    card = exported["card"]
    assert "small head, MMF over all six blocks (shipped)" in card
    turev = next(line for line in card.splitlines() if line.startswith("| TurEV-DB"))
    assert turev.startswith(
        "| TurEV-DB (Turkish) | 24 | 45.0 | 45.0 | 45.0 | 20.0 | 25.0 (T = 0.80) |"
    )
    assert "| **mean** | | 56.7 | **56.7** | 56.7 | 20.0 | 25.0 |" in card
    assert "CC BY-NC-ND 4.0" in card and "neutral = Calm (sk)" in card
    # The shipped temperature: of none (mean ECE 20), the recipe's (25) and the one fitted on
    # the held-out corpora's predictions (overconfident: T > 1), the lowest mean ECE: the last,
    # not the final run's validation speakers' T = 1.25.
    cross = exported["calibration"]
    assert cross["temperature"] > 1.5 and cross["n_valid"] == 300
    assert f"T = {cross['temperature']:.2f}" in card and "T = 1.25" not in card
    assert "(none 20.0, recipe 25.0, cross " in " ".join(card.split())
    for corpus, numbers in cross["per_corpus"].items():
        assert numbers["ece_after"] < numbers["ece_before"], corpus
        assert f"{numbers['ece_after']:.1f} (T = {numbers['temperature']:.2f}) |" in card
    assert "Languages seen: English, German, Turkish" in card
    chosen = json.loads((work / "loco_metrics.json").read_text())
    assert chosen["chosen"] == "small_all_blocks"
    assert chosen["baseline"]["ua"] == pytest.approx(140 / 3)

    # A second call reuses every finished run.
    fake.calls.clear()
    assert tool.main([*args, "--seed=7"]) == 0 and fake.calls == []


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--corpora", "emodb,iemocap"], "unknown corpus 'iemocap'"),
        (["--corpora", "emodb"], "at least two corpora"),
        (["--candidates", "huge"], "unknown candidate 'huge'"),
        (["--candidates", "corpus_norm"], "corpus_norm is transductive"),
        (["--test_fold=2"], "--test_fold is set"),
        (["--no_such_hparam=1"], "no_such_hparam"),
    ],
)
def test_bad_arguments_are_one_line(args, expected, capsys):
    with pytest.raises(SystemExit) as exit_info:
        tool.main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert expected in err[-1] and "Traceback" not in "\n".join(err)


def test_missing_corpus_folder_is_one_line(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        tool.main(["--data", str(tmp_path), "--corpora", "emodb,ravdess"])
    assert str(exit_info.value).startswith("error: ") and "\n" not in str(exit_info.value)
