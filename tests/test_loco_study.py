"""Tests for benchmarks/loco_study.py (issue 13): the variants' leave-one-corpus-out runs, their
reuse, the rows taken from the cross-corpus matrix and the report; no model is trained (a fake
``train.py`` writes what a finished run leaves)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.test_cross_corpus import FakeTrain, cross_corpus_qieemo, make_corpora

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import loco_study  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_corpora(tmp_path_factory.mktemp("corpora"))


def test_variants_run_leave_one_corpus_out_and_resume(data, tmp_path, monkeypatch, capsys):
    fake = FakeTrain({"train-ravdess+turev_test-emodb_turev-calm-neutral"})
    monkeypatch.setattr(cross_corpus_qieemo, "launch", fake)
    matrix = {"results": {"neutral": {"qieemo": {"pairs": {
        "emodb": {"ravdess": 40.0, "turev": 30.0},
        "ravdess": {"emodb": 60.0, "turev": 50.0},
        "turev": {"emodb": 20.0, "ravdess": None},
    }}}}}  # fmt: skip
    (tmp_path / "cross_corpus.json").write_text(json.dumps(matrix))
    out = tmp_path / "study.md"
    argv = ["--data", str(data), "--corpora", "emodb,ravdess,turev", "--work", str(tmp_path / "w")]
    argv += ["--variants", "baseline,corpus_norm", "--matrix", str(tmp_path / "cross_corpus.json")]
    argv += ["--out", str(out)]
    assert loco_study.main(argv) == 1  # the runs tested on EmoDB failed: reported, others ran
    err = capsys.readouterr().err
    assert "baseline tested on emodb: FAILED" in err and "corpus_norm tested on emodb" in err
    assert len(fake.calls) == 6
    for call in fake.calls:
        variant = Path(call["output_folder"]).parents[1].name
        assert call["use_cma"] == "False" and call["speed_perturb"] == "[100]"
        assert ("norm_group" in call) == (variant == "corpus_norm")
        if variant == "corpus_norm":
            assert call["speaker_norm"] == "True" and call["norm_group"] == "fold"
    text = out.read_text()
    assert "per-corpus feature normalisation (`corpus_norm`) - transductive" in text
    # From the matrix: the mean and the best single training corpus for each held-out corpus.
    assert (
        "| trained on one other corpus (mean), from the cross-corpus matrix | 40.0 | 40.0 | 40.0 |"
        in text
    )
    assert (
        "| trained on one other corpus (best), from the cross-corpus matrix | 60.0 | 40.0 | 50.0 |"
        in text
    )
    study = json.loads(out.with_suffix(".json").read_text())
    assert study["variants"]["baseline"]["ua"]["emodb"] is None
    # No mean over fewer corpora: it would not be comparable with the complete rows'.
    assert study["variants"]["baseline"]["mean_ua"] is None
    (row,) = [line for line in text.splitlines() if "(`baseline`)" in line]
    assert row.split(" | ")[1] == "failed" and row.endswith("| - |  |"), row
    assert study["variants"]["corpus_norm"]["transductive"] is True

    # The rerun trains only the failed runs.
    fake.fail.clear()
    fake.calls.clear()
    assert loco_study.main(argv) == 0
    assert [Path(c["output_folder"]).relative_to(tmp_path / "w").parts[0] for c in fake.calls] == [
        "baseline", "corpus_norm",
    ]  # fmt: skip
    assert {Path(c["output_folder"]).name for c in fake.calls} == {
        "train-ravdess+turev_test-emodb_turev-calm-neutral"
    }
    study = json.loads(out.with_suffix(".json").read_text())
    base = study["variants"]["baseline"]
    assert base["mean_ua"] == pytest.approx(sum(base["ua"].values()) / 3)
    delta = study["variants"]["corpus_norm"]["mean_ua"] - base["mean_ua"]
    assert f"| {delta:+.1f} |" in out.read_text()


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--variants", "nope"], "unknown 'nope'"),
        (["--corpora", "emodb"], "--corpora: at least two"),
        (["--test_fold=1"], "--test_fold is set"),
    ],
)
def test_bad_arguments_are_one_line(argv, expected, capsys):
    assert loco_study.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0]
