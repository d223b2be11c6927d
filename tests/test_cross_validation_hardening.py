"""Cross-validation refusals, resumption with matching settings only, locking, signals, modes.

A fake ``train.py`` (a few lines of Python) stands in for the recipe's, writing what a finished
fold writes, or its pid and then sleeping, so that what is tested is
:func:`qieemo_lobes.cross_validation.run_cross_validation` itself. One test trains a real fold
(the tiny settings of ``tests/test_emotion_recipe.py``, one epoch) to check that the settings the
recipe records for a fold are the ones the cross-validation compares.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from qieemo_lobes.cross_validation import CV_SETTINGS, INTERRUPTED, run_cross_validation
from qieemo_lobes.files import FolderLock
from tests.test_emotion_recipe import RECIPE, feature_cache, subset, tiny  # noqa: F401 (fixtures)

HPARAMS = """\
data_folder: !PLACEHOLDER
output_folder: !ref results/fold_<test_fold>
test_fold: 1
lr: 0.001
number_of_epochs: 2
classes: [happy, sad]
model: !new:collections.OrderedDict
"""

# Stands in for a recipe's train.py. FAKE_TRAIN=finish: writes a finished fold (test metrics,
# run info, predictions and run_settings.json, as qieemo_lobes.recipe does); FAKE_TRAIN=sleep:
# writes its pid and sleeps. Every start is appended to FAKE_TRAIN_LOG.
FAKE_TRAIN = """\
import json, os, sys, time
from pathlib import Path
from qieemo_lobes.run_settings import resolved_settings

hparams, args = sys.argv[1], dict(a[2:].split("=", 1) for a in sys.argv[2:])
out = Path(args.pop("output_folder"))
with open(os.environ["FAKE_TRAIN_LOG"], "a") as log:
    log.write(f"{out.name}\\n")
if os.environ["FAKE_TRAIN"] == "sleep":
    (out / "pid").write_text(str(os.getpid()))
    time.sleep(120)
    sys.exit(0)
settings = resolved_settings(hparams, "\\n".join(f"{k}: {v}" for k, v in args.items()))
(out / "run_settings.json").write_text(json.dumps(settings))
(out / "predictions.csv").write_text("utterance,true,predicted,happy,sad\\nu1,sad,sad,0.1,0.9\\n")
info = {"dataset": "toy", "backbone": "none", "hparams": settings}
(out / "run_info.json").write_text(json.dumps(info))
metrics = {"fold": f"f{args['test_fold']}", "n_train": 3, "n_valid": 1, "n_test": 1,
           "classes": ["happy", "sad"], "wa": 100.0, "ua": 100.0, "wf1": 100.0,
           "macro_f1": 100.0, "confusion": [[0, 0], [0, 1]]}
(out / "test_metrics.json").write_text(json.dumps(metrics))
"""

# Runs run_cross_validation in a process of its own (for the signal tests).
DRIVER = """\
import sys
from types import SimpleNamespace
from qieemo_lobes.cross_validation import run_cross_validation

summary = {"folds": {"f1": 2, "f2": 2}, "classes": {"happy": 2, "sad": 2}}
scan = SimpleNamespace(summary=lambda: summary)
sys.exit(run_cross_validation(sys.argv[1], lambda folder: scan, sys.argv[2:]))
"""


def list_utterances(data_folder: str) -> SimpleNamespace:
    """A corpus of two folds, as a prepare script's scan summarises it."""
    summary = {"folds": {"f1": 2, "f2": 2}, "classes": {"happy": 2, "sad": 2}}
    return SimpleNamespace(summary=lambda: summary)


@pytest.fixture()
def recipe(tmp_path, monkeypatch) -> SimpleNamespace:
    """The fake recipe's files, and where its train.py logs every start."""
    (tmp_path / "data").mkdir()
    (tmp_path / "hparams.yaml").write_text(HPARAMS)
    (tmp_path / "train.py").write_text(FAKE_TRAIN)
    log = tmp_path / "trained.log"
    log.touch()
    monkeypatch.setenv("FAKE_TRAIN_LOG", str(log))
    monkeypatch.setenv("FAKE_TRAIN", "finish")
    return SimpleNamespace(
        root=tmp_path, train=tmp_path / "train.py", out=tmp_path / "cv", started=log
    )


def cross_validate(recipe: SimpleNamespace, capsys, *extra: str) -> tuple[int, str, str]:
    """run_cross_validation in this process; returns (exit status, stdout, stderr)."""
    argv = [
        str(recipe.root / "hparams.yaml"),
        f"--data_folder={recipe.root / 'data'}",
        f"--output_folder={recipe.out}",
        *extra,
    ]
    capsys.readouterr()
    code = run_cross_validation(recipe.train, list_utterances, argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def trained(recipe: SimpleNamespace) -> list[str]:
    """The fold folders the fake train.py was started for, in order."""
    return recipe.started.read_text().split()


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ") and "Traceback" not in stderr
    return lines[0]


# ---------------------------------------------------------------------------------------------
# Refusals before anything is trained
# ---------------------------------------------------------------------------------------------


def test_output_folder_naming_a_file_is_one_line(recipe, capsys):
    recipe.out.write_text("not a folder")
    code, _, err = cross_validate(recipe, capsys)
    assert code == 2
    assert f"--output_folder {recipe.out} is a file" in one_error_line(err)
    assert trained(recipe) == []


@pytest.mark.parametrize(
    "folds, problem",
    [
        ("1,1", "--folds 1,1 names fold 1 twice"),
        ("2,1,2", "--folds 2,1,2 names fold 2 twice"),
        ("0,2", "--folds [0] out of range 1..2"),
        ("3", "--folds [3] out of range 1..2"),
        ("1,x", "--folds takes 1-based fold indices"),
    ],
)
def test_bad_folds_are_one_line(recipe, capsys, folds, problem):
    code, _, err = cross_validate(recipe, capsys, "--folds", folds)
    assert code == 2
    assert problem in one_error_line(err)
    assert trained(recipe) == []


def test_unknown_override_is_one_line_before_any_fold(recipe, capsys):
    code, _, err = cross_validate(recipe, capsys, "--lrr=0.1")
    assert code == 2
    assert "unknown override --lrr (did you mean --lr?)" in one_error_line(err)
    assert trained(recipe) == []


# ---------------------------------------------------------------------------------------------
# Finished work is reused only with the same settings
# ---------------------------------------------------------------------------------------------


def test_rerun_with_other_settings_is_refused_in_one_line(recipe, capsys):
    code, _, err = cross_validate(recipe, capsys)
    assert code == 0, err
    assert trained(recipe) == ["fold_1", "fold_2"]
    recorded = json.loads((recipe.out / CV_SETTINGS).read_text())
    assert recorded["settings"]["lr"] == 0.001
    assert recorded["data_folder"] == str(recipe.root / "data")
    # Same settings: both folds kept.
    code, out, _ = cross_validate(recipe, capsys, "--lr=0.001")
    assert code == 0 and out.count("finished earlier, kept") == 2
    # Other settings: one line listing the differences, exit 2, nothing trained.
    before = (recipe.out / "summary.json").read_text()
    code, _, err = cross_validate(recipe, capsys, "--lr=0.01", "--number_of_epochs=3")
    assert code == 2
    line = one_error_line(err)
    assert "lr: 0.001 -> 0.01" in line and "number_of_epochs: 2 -> 3" in line
    assert "use --overwrite to start over" in line
    assert trained(recipe) == ["fold_1", "fold_2"]
    assert (recipe.out / "summary.json").read_text() == before
    # --overwrite removes the previous folds and trains every one again.
    code, out, err = cross_validate(recipe, capsys, "--lr=0.01", "--overwrite")
    assert code == 0, err
    assert trained(recipe) == ["fold_1", "fold_2"] * 2
    assert json.loads((recipe.out / "summary.json").read_text())["hparams"]["lr"] == 0.01
    assert json.loads((recipe.out / CV_SETTINGS).read_text())["settings"]["lr"] == 0.01


def test_folder_whose_cv_settings_differ_trains_nothing(recipe, capsys):
    recipe.out.mkdir()
    settings = {"lr": 0.001, "number_of_epochs": 2, "classes": ["happy", "sad"]}
    recorded = {"data_folder": str(recipe.root / "other"), "settings": settings}
    (recipe.out / CV_SETTINGS).write_text(json.dumps(recorded))
    code, _, err = cross_validate(recipe, capsys, "--classes=[happy,sad,angry]")
    assert code == 2
    line = one_error_line(err)
    assert f"data_folder: {recipe.root / 'other'} -> {recipe.root / 'data'}" in line
    assert "classes: [happy, sad] -> [happy, sad, angry]" in line
    assert trained(recipe) == [] and not list(recipe.out.glob("fold_*"))


@pytest.mark.parametrize("record", ["run_settings.json", "run_info.json"])
def test_a_fold_trained_with_other_settings_is_not_kept(recipe, capsys, record):
    """Without cv_settings.json (a folder from before it existed, or a fold run by hand), a
    finished fold's own record decides: run_settings.json, else run_info.json's hparams."""
    fold = recipe.out / "fold_2"
    fold.mkdir(parents=True)
    settings = {"lr": 0.1, "number_of_epochs": 2, "classes": ["happy", "sad"], "test_fold": 2}
    content = settings if record == "run_settings.json" else {"hparams": settings}
    (fold / record).write_text(json.dumps(content))
    metrics = {"fold": "f2", "classes": ["happy"], "confusion": [[1]]}
    metrics.update({"wa": 100.0, "ua": 100.0, "wf1": 100.0, "macro_f1": 100.0})
    (fold / "test_metrics.json").write_text(json.dumps(metrics))
    code, _, err = cross_validate(recipe, capsys)
    assert code == 2
    line = one_error_line(err)
    assert "fold 2 was trained with other settings (lr: 0.1 -> 0.001)" in line
    assert trained(recipe) == []


# ---------------------------------------------------------------------------------------------
# One cross-validation per output folder
# ---------------------------------------------------------------------------------------------


def test_second_cross_validation_into_a_locked_folder_is_one_line(recipe, capsys):
    with FolderLock(recipe.out, what="another cross-validation"):
        code, _, err = cross_validate(recipe, capsys)
    assert code == 2
    assert "in use by another cross-validation" in one_error_line(err)
    assert trained(recipe) == [] and not (recipe.out / CV_SETTINGS).exists()


# ---------------------------------------------------------------------------------------------
# Output files
# ---------------------------------------------------------------------------------------------


def test_predictions_and_confusion_have_normal_permissions(recipe, capsys):
    code, _, err = cross_validate(recipe, capsys)
    assert code == 0, err
    umask = os.umask(0)
    os.umask(umask)
    names = ("predictions.csv", "confusion.png", "summary.json", "report.md")
    modes = {name: oct((recipe.out / name).stat().st_mode & 0o777) for name in names}
    assert modes == dict.fromkeys(names, oct(0o666 & ~umask))
    assert (recipe.out / "predictions.csv").read_text().splitlines() == [
        "fold,utterance,true,predicted,happy,sad",
        "f1,u1,sad,sad,0.1,0.9",
        "f2,u1,sad,sad,0.1,0.9",
    ]
    assert (recipe.out / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in recipe.out.iterdir() if p.name.startswith(".")) == [".lock"]


# ---------------------------------------------------------------------------------------------
# Signals: the fold's train.py never outlives the cross-validation
# ---------------------------------------------------------------------------------------------


def alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie waiting to be reaped does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


@pytest.fixture()
def sleeping_fold(recipe, monkeypatch):
    """A cross-validation in its own process whose first fold sleeps; yields (process, pid)."""
    monkeypatch.setenv("FAKE_TRAIN", "sleep")
    (recipe.root / "driver.py").write_text(DRIVER)
    command = [
        sys.executable,
        str(recipe.root / "driver.py"),
        str(recipe.train),
        str(recipe.root / "hparams.yaml"),
        f"--data_folder={recipe.root / 'data'}",
        f"--output_folder={recipe.out}",
    ]
    parent = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pid_file = recipe.out / "fold_1" / "pid"
    child = None
    try:
        assert wait_for(lambda: pid_file.exists() and pid_file.read_text(), 120)
        child = int(pid_file.read_text())
        yield parent, child
    finally:
        if parent.poll() is None:
            parent.kill()
        parent.communicate()
        if child is not None and alive(child):
            os.kill(child, signal.SIGKILL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_sigkill_of_the_cross_validation_takes_the_fold_down(sleeping_fold):
    parent, child = sleeping_fold
    assert alive(child)
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=30)
    assert wait_for(lambda: not alive(child), 10), "the fold's train.py outlived its parent"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_or_ctrl_c_stops_the_fold_in_one_line(sleeping_fold, signum):
    parent, child = sleeping_fold
    parent.send_signal(signum)
    _, err = parent.communicate(timeout=60)
    assert parent.returncode == 130
    assert err.strip().splitlines() == [INTERRUPTED]
    assert not alive(child)


# ---------------------------------------------------------------------------------------------
# The real recipe: what a fold records is what the cross-validation compares
# ---------------------------------------------------------------------------------------------


def test_real_fold_is_kept_with_its_settings_and_refused_with_others(
    tmp_path,
    subset,  # noqa: F811
    feature_cache,  # noqa: F811
):
    out = tmp_path / "cv"

    def cross_validate_fold_1(*extra: str) -> subprocess.CompletedProcess:
        command = [
            sys.executable,
            "cross_validate.py",
            "hparams/qieemo.yaml",
            f"--data_folder={subset}",
            f"--output_folder={out}",
            f"--feature_cache={feature_cache}",
            "--folds=1",
            *tiny(1),
            "--speed_perturb=[100]",
            *extra,
        ]
        return subprocess.run(command, cwd=RECIPE, capture_output=True, text=True, timeout=900)

    first = cross_validate_fold_1()
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    metrics = (out / "fold_1" / "test_metrics.json").stat().st_mtime_ns
    # Without cv_settings.json (an older folder), the fold's own run_settings.json decides.
    (out / CV_SETTINGS).unlink()
    again = cross_validate_fold_1()
    assert again.returncode == 0, again.stderr[-2000:]
    assert "finished earlier, kept" in again.stdout
    assert (out / "fold_1" / "test_metrics.json").stat().st_mtime_ns == metrics
    (out / CV_SETTINGS).unlink()
    other = cross_validate_fold_1("--dropout=0.1")
    assert other.returncode == 2
    assert "fold 1 was trained with other settings (dropout: 0.3 -> 0.1)" in one_error_line(
        other.stderr
    )
    assert (out / "fold_1" / "test_metrics.json").stat().st_mtime_ns == metrics
