"""``benchmarks/adapt_study.py`` on a real (tiny) recipe run: it must reproduce the run's own
test predictions before adapting, keep finished runs, and report a failed run in one line."""

from __future__ import annotations

import json
import sys

from tests.conftest import REPO_ROOT
from tests.test_interfaces import tiny_run

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import adapt_study  # noqa: E402


def test_study_reproduces_the_run_then_adapts(tmp_path_factory, emodb_dir, tmp_path, capsys):
    run, _ = tiny_run(tmp_path_factory, emodb_dir)
    loco = tmp_path / "loco.json"
    missing = tmp_path / "no_such_run"
    loco.write_text(
        json.dumps(
            {
                "corpora": ["emodb", "emovo"],
                "variants": {
                    "tiny": {
                        "runs": {"emodb": {"folder": str(run)}, "emovo": {"folder": str(missing)}}
                    }
                },
            }
        )
    )
    within = tmp_path / "bench" / "emodb" / "qieemo"
    within.mkdir(parents=True)
    (within / "fold_1").symlink_to(run)
    argv = [
        "--loco", str(loco), "--variants", "tiny", "--sizes", "3", "--draws", "2",
        "--feature_cache", str(run.parent / "features"), "--work", str(tmp_path / "work"),
        "--within", "emodb", "--within_work", str(tmp_path / "bench"),
        "--out", str(tmp_path / "adapt.md"),
    ]  # fmt: skip
    assert adapt_study.main(argv) == 1  # the missing run
    err = capsys.readouterr().err
    assert f"adapt_study: tiny tested on emovo: {missing}" in err
    study = json.loads((tmp_path / "adapt.json").read_text())
    result = study["variants"]["tiny"]["emodb"]
    metrics = json.loads((run / "test_metrics.json").read_text())
    assert result["agreement_with_run"] == 100.0
    assert abs(result["none"] - metrics["ua"]) < 1e-6
    assert len(result["by_size"]["3"]) == 2
    assert study["within"]["emodb"][0]["none"] == result["none"]
    text = (tmp_path / "adapt.md").read_text()
    assert "| agreement with the run (%) | 100.0 | - | - |" in text
    assert "### Within each corpus" in text and "Failed: tiny tested on emovo" in text

    assert adapt_study.main(argv) == 1
    assert "tiny tested on emodb: finished earlier, kept" in capsys.readouterr().err
