"""train.py under bad input, interruptions, full disks, NaN and reruns (issue 12).

Every case runs the EmoDB recipe's ``train.py`` as a user would. Refusals happen before any
encoder is built (the feature cache they are given stays uncreated); the cases that need a
trained run share one tiny run (whisper-tiny.en, one epoch) on 24 real EmoDB clips plus one
broken file, and copy its folder when they change it.
"""

from __future__ import annotations

import csv
import ctypes
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from qieemo_lobes.files import FolderLock
from qieemo_lobes.run_settings import resolved_settings, settings_difference
from tests.test_emotion_recipe import RECIPE, SPEAKERS, train_fold

HPARAMS = RECIPE / "hparams" / "qieemo.yaml"
BROKEN = "09b99Wa.wav"  # named like an EmoDB clip, but not audio
CLIPS_PER_SPEAKER = 8
# tests.test_emotion_recipe's tiny model, one epoch, no speed-perturbed copies.
MICRO = [
    "--encoder_source=whisper-tiny.en",
    "--n_encoder_blocks=4",
    "--encoder_dim=384",
    "--fusion_blocks=[1,2]",
    "--d_model=64",
    "--d_ffn=128",
    "--batch_size=8",
    "--valid_split=utterance",
    "--valid_ratio=0.25",
    "--speed_perturb=[100]",
    "--test_fold=1",
]


def micro_args(cache: Path, epochs: int = 1) -> list[str]:
    return [f"--feature_cache={cache}", *MICRO, f"--number_of_epochs={epochs}"]


@pytest.fixture(scope="module")
def micro(tmp_path_factory, emodb_dir) -> Path:
    """Eight clips of each of three EmoDB speakers (linked) and one broken file."""
    root = tmp_path_factory.mktemp("emodb_micro")
    for speaker in SPEAKERS:
        for wav in sorted(emodb_dir.glob(f"{speaker}*.wav"))[:CLIPS_PER_SPEAKER]:
            os.symlink(wav, root / wav.name)
    (root / BROKEN).write_bytes(b"this is not a wav file\n" * 10)
    return root


@pytest.fixture(scope="module")
def micro_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("micro_features")


@pytest.fixture(scope="module")
def finished(tmp_path_factory, micro, micro_cache):
    """One finished tiny run: ``(output folder, completed process)``. Tests copy it to change it."""
    out = tmp_path_factory.mktemp("finished") / "run"
    result = train_fold(micro, out, *micro_args(micro_cache))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, result


def copy_run(finished_run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy


def last_line(result: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in result.stderr + result.stdout, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert lines, result.stdout[-2000:]
    return lines[-1]


def checkpoints(out: Path) -> list[Path]:
    return sorted(p for p in (out / "save").glob("CKPT+*") if p.is_dir())


# A driver that runs train.py in-process after a test's patch, like `python train.py ...`.
DRIVER = """
import runpy, sys
{patch}
sys.argv = ["train.py", *sys.argv[1:]]
runpy.run_path("train.py", run_name="__main__")
"""


def train_patched(patch: str, subset: Path, out: Path, *extra: str, timeout: int = 600):
    """``train.py`` on ``subset`` into ``out`` with ``patch`` (Python code) applied first."""
    command = [
        sys.executable,
        "-c",
        DRIVER.format(patch=patch),
        "hparams/qieemo.yaml",
        f"--data_folder={subset}",
        f"--output_folder={out}",
        *extra,
    ]
    return subprocess.run(command, cwd=RECIPE, capture_output=True, text=True, timeout=timeout)


# ----------------------------------------------------------------------------------------------
# Settings: resolved without building anything
# ----------------------------------------------------------------------------------------------


def test_resolved_settings_are_the_plain_settings_load_hyperpyyaml_would_use():
    settings = resolved_settings(HPARAMS, ["--data_folder=/data", "--lr=0.01", "--test_fold=3"])
    assert settings["lr"] == 0.01 and settings["test_fold"] == 3
    assert settings["data_folder"] == "/data"
    assert settings["train_dataloader_opts"] == {"batch_size": 16, "num_workers": 0}
    # Objects and the places the run writes to are left out.
    for key in ("encoder", "head", "checkpointer", "output_folder", "save_folder", "train_log"):
        assert key not in settings
    assert not any(k.endswith("_annotation") for k in settings) and "feature_cache" not in settings
    with_locations = resolved_settings(HPARAMS, "test_fold: 3", include_locations=True)
    assert with_locations["output_folder"] == "results/EmoDB/qieemo/fold_3"
    assert settings_difference(resolved_settings(HPARAMS, None), settings) == [
        "data_folder: (unset) -> /data",
        "lr: 0.001 -> 0.01",
        "test_fold: 1 -> 3",
    ]


# ----------------------------------------------------------------------------------------------
# 11. Refusals: one line, exit status 2, before any encoder is built
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, named",
    [
        (["--test_fold=0"], "--test_fold=0: test_fold takes a fold name, a 1-based fold index"),
        (["--test_fold=99"], "test_fold 99 is out of range: 1..3"),
        (["--test_fold=abc"], "test_fold 'abc' is not one of the folds"),
        (["--test_fold=1.5"], "--test_fold=1.5: test_fold takes a fold name"),
        (["--test_fold="], "--test_fold is empty"),
        (["MISSING_DATA"], "no such file or folder"),
        (["--use_cmaa=True"], "unknown override --use_cmaa (did you mean --use_cma"),
        (["--lr=abc"], "--lr=abc: lr takes a number"),
        (["--batch_size=x"], "--batch_size=x: batch_size takes an integer"),
        (["--number_of_epochs=-1"], "--number_of_epochs=-1: number_of_epochs must be positive"),
    ],
)
def test_bad_input_is_refused_in_one_line_before_anything_is_built(tmp_path, micro, extra, named):
    cache, out = tmp_path / "cache", tmp_path / "run"
    data = micro
    if extra == ["MISSING_DATA"]:
        data, extra = tmp_path / "missing", []
        named = f"--data_folder={data}: {named}"
    # The option under test comes last: it replaces MICRO's value of the same setting.
    base = [a for a in micro_args(cache) if a.split("=")[0] not in {e.split("=")[0] for e in extra}]
    result = train_fold(data, out, *base, *extra, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    line = last_line(result)
    assert result.stderr.strip().splitlines() == [line]  # nothing else on stderr
    assert line.startswith("error: ") and named in line, line
    assert not cache.exists()  # refused before any feature was computed
    assert not checkpoints(out)


def _drop_file_permission_override() -> None:
    """In the child: lose root's right to write anywhere (CAP_DAC_OVERRIDE, _READ_SEARCH)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) refused")


def test_read_only_feature_cache_is_one_line(tmp_path, micro):
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
    preexec = _drop_file_permission_override if os.geteuid() == 0 else None
    probe = subprocess.run(
        [sys.executable, "-c", f"open({str(cache / 'probe')!r}, 'w')"],
        capture_output=True,
        preexec_fn=preexec,
    )
    if probe.returncode == 0:
        pytest.skip("cannot make a folder read-only for a child process here")
    command = [
        sys.executable,
        "train.py",
        "hparams/qieemo.yaml",
        f"--data_folder={micro}",
        f"--output_folder={tmp_path / 'run'}",
        *micro_args(cache),
    ]
    try:
        result = subprocess.run(
            command,
            cwd=RECIPE,
            capture_output=True,
            text=True,
            timeout=300,
            preexec_fn=preexec,
        )
    finally:
        cache.chmod(0o755)
    assert result.returncode == 2, result.stderr[-3000:]
    line = last_line(result)
    assert line.startswith(f"error: --feature_cache={cache}: the feature cache folder cannot be")
    assert "Permission denied" in line
    assert list(cache.iterdir()) == []


# ----------------------------------------------------------------------------------------------
# 8. One run per output folder
# ----------------------------------------------------------------------------------------------


def test_a_second_run_into_the_same_output_folder_is_refused(tmp_path, micro):
    out = tmp_path / "run"
    with FolderLock(out):  # as a first run would hold it
        result = train_fold(micro, out, *micro_args(tmp_path / "cache"), timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    line = last_line(result)
    assert line.startswith(f"error: {out}: in use by another run (pid {os.getpid()})"), line
    assert not (out / "run_settings.json").exists() and not (tmp_path / "cache").exists()


# ----------------------------------------------------------------------------------------------
# 6. and 12. What a finished run leaves
# ----------------------------------------------------------------------------------------------


def test_files_skipped_by_preparation_are_listed_on_the_console_and_in_the_log(finished, micro):
    out, result = finished
    listed = out / "skipped_files.csv"
    message = f"preparation skipped 1 files (list: {listed})"
    assert message in result.stdout
    assert message in (out / "log.txt").read_text()
    with open(listed, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [Path(r["path"]).name for r in rows] == [BROKEN] and rows[0]["reason"]


def test_predictions_csv_gets_the_permissions_of_a_new_file(finished):
    out, _ = finished
    umask = os.umask(0)
    os.umask(umask)
    mode = stat.S_IMODE((out / "predictions.csv").stat().st_mode)
    assert mode == 0o666 & ~umask
    assert mode == stat.S_IMODE((out / "test_metrics.json").stat().st_mode)


# ----------------------------------------------------------------------------------------------
# 7. Reruns into a folder that holds a run
# ----------------------------------------------------------------------------------------------


def test_rerun_with_other_settings_is_refused_and_overwrite_starts_over(
    tmp_path, finished, micro, micro_cache
):
    out = copy_run(finished[0], tmp_path)
    metrics = (out / "test_metrics.json").read_text()
    old_checkpoints = checkpoints(out)
    refused = train_fold(micro, out, *micro_args(micro_cache), "--lr=0.01", "--dropout=0.1")
    assert refused.returncode == 2, refused.stderr[-3000:]
    line = last_line(refused)
    assert f"error: {out}: holds a previous run with other settings" in line
    assert "(dropout: 0.3 -> 0.1; lr: 0.001 -> 0.01)" in line
    assert "use --overwrite to start over" in line
    assert (out / "test_metrics.json").read_text() == metrics
    assert json.loads((out / "run_settings.json").read_text())["lr"] == 0.001

    fresh = train_fold(micro, out, *micro_args(micro_cache), "--lr=0.01", "--overwrite")
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert "--overwrite: removed the previous run's checkpoints and results" in fresh.stdout
    assert not any(p.exists() for p in old_checkpoints) and len(checkpoints(out)) == 1
    assert json.loads((out / "run_settings.json").read_text())["lr"] == 0.01
    info = json.loads((out / "run_info.json").read_text())
    assert info["hparams"]["lr"] == 0.01
    assert "Epoch loaded: 1" in (out / "train_log.txt").read_text()


def test_previous_run_without_recorded_settings_is_refused(tmp_path, finished, micro, micro_cache):
    """A folder written by an older version (no run_settings.json): its settings are unknown."""
    out = copy_run(finished[0], tmp_path)
    (out / "run_settings.json").unlink(missing_ok=True)  # absent before this version
    result = train_fold(micro, out, *micro_args(micro_cache), timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    line = last_line(result)
    assert "holds a previous run whose settings are unknown (no run_settings.json" in line
    assert "use --overwrite to start over" in line


# ----------------------------------------------------------------------------------------------
# 3. Checkpoints: whole or not at all
# ----------------------------------------------------------------------------------------------


def test_truncated_newest_checkpoint_is_removed_and_the_run_resumes_from_the_previous(
    tmp_path, finished, micro, micro_cache
):
    out = copy_run(finished[0], tmp_path)
    (newest,) = checkpoints(out)
    # An older good checkpoint (as a longer run keeps one) ...
    older = newest.with_name("CKPT+2000-01-01+00-00-00+00")
    shutil.copytree(newest, older)
    meta = yaml.safe_load((older / "CKPT.yaml").read_text())
    meta["unixtime"] -= 100
    (older / "CKPT.yaml").write_text(yaml.dump(meta))
    # ... and the newest one cut short, as by a full disk.
    head = newest / "head.ckpt"
    head.write_bytes(head.read_bytes()[: head.stat().st_size // 2])
    (out / "test_metrics.json").unlink()
    result = train_fold(micro, out, *micro_args(micro_cache))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    warnings = [line for line in result.stdout.splitlines() if str(head) in line]
    assert len(warnings) == 1, result.stdout[-3000:]
    assert f"removed the broken checkpoint {newest.name}" in warnings[0]
    assert str(head) in (out / "log.txt").read_text()
    assert not newest.exists()
    assert f"Loading a checkpoint from {older}" in result.stdout
    assert (out / "test_metrics.json").exists()


ENOSPC_ON_SECOND_HEAD_SAVE = """
import errno, torch
_save, _calls = torch.save, []
def _full_disk(obj, f, *args, **kwargs):
    name = str(getattr(f, "name", f))
    if name.endswith("head.ckpt"):
        _calls.append(name)
        if len(_calls) == 2:  # the second epoch's checkpoint: half written, then the disk is full
            if hasattr(f, "write"):
                f.write(b"PK\\x03\\x04 half a checkpoint")
            else:
                open(name, "wb").write(b"PK\\x03\\x04 half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
    return _save(obj, f, *args, **kwargs)
torch.save = _full_disk
"""


def test_failed_checkpoint_save_leaves_no_checkpoint_and_the_rerun_resumes(
    tmp_path, micro, micro_cache
):
    out = tmp_path / "run"
    args = micro_args(micro_cache, epochs=2)
    result = train_patched(ENOSPC_ON_SECOND_HEAD_SAVE, micro, out, *args)
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    line = last_line(result)
    assert line.startswith(f"error: {out / 'save'}/CKPT+") and "/head.ckpt: " in line, line
    assert "No space left on device" in line
    assert line.endswith("rerun the same command to resume")
    # Only the first epoch's checkpoint is left, whole; nothing of the second.
    (kept,) = (p for p in (out / "save").iterdir() if p.is_dir())
    assert (kept / "CKPT.yaml").exists()
    assert yaml.safe_load((kept / "CKPT.yaml").read_text())["end-of-epoch"] is True
    assert (kept / "counter.ckpt").read_text() == "1"
    assert not (out / "test_metrics.json").exists()

    again = train_fold(micro, out, *args)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"Loading a checkpoint from {kept}" in again.stdout
    assert "epoch: 2" in (out / "train_log.txt").read_text()


# A SIGTERM that lands while torch.save writes the second epoch's head: torch reports it as a
# RuntimeError ("enforce fail ...") whose __context__ is the interrupt.
SIGTERM_INSIDE_SECOND_HEAD_SAVE = """
import io, os, signal, time, torch
_save, _calls = torch.save, []
class _TermOnWrite(io.RawIOBase):
    writes = 0
    def writable(self):
        return True
    def write(self, data):
        _TermOnWrite.writes += 1
        if _TermOnWrite.writes == 3:  # mid-file (on the first write torch re-raises it as is)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises KeyboardInterrupt here
        return len(data)
def _interrupted(obj, f, *args, **kwargs):
    if str(getattr(f, "name", f)).endswith("head.ckpt"):
        _calls.append(f)
        if len(_calls) == 2:
            return _save(obj, _TermOnWrite(), *args, **kwargs)
    return _save(obj, f, *args, **kwargs)
torch.save = _interrupted
"""


def test_interrupt_inside_a_checkpoint_save_is_an_interrupt_not_a_save_error(
    tmp_path, micro, micro_cache
):
    out = tmp_path / "run"
    result = train_patched(
        SIGTERM_INSIDE_SECOND_HEAD_SAVE, micro, out, *micro_args(micro_cache, epochs=2)
    )
    assert result.returncode == 130, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "interrupted; rerun the same command to resume"
    # The interrupted save left nothing: only the first epoch's whole checkpoint remains.
    (kept,) = (p for p in (out / "save").iterdir() if p.is_dir())
    assert (kept / "CKPT.yaml").exists() and (kept / "counter.ckpt").read_text() == "1"


# ----------------------------------------------------------------------------------------------
# 4. Non-finite losses and predictions
# ----------------------------------------------------------------------------------------------


# NaN features for every utterance of one speaker (the cache itself refuses to store NaN).
NAN_FEATURES = """
import torch
from qieemo_lobes.features import FeatureCache
SPEAKER = {speaker!r}
_precompute, _read_entry, _poisoned = FeatureCache.precompute, FeatureCache.read_entry, set()
def _precompute_and_mark(self, utterances, *args, **kwargs):
    paths = _precompute(self, utterances, *args, **kwargs)
    _poisoned.update(str(p) for u, p in paths.items() if u.startswith(SPEAKER))
    return paths
def _read_nan(self, path):
    blocks, ppg = _read_entry(self, path)
    if str(path) in _poisoned:
        blocks = torch.full_like(blocks, float("nan"))
    return blocks, ppg
FeatureCache.precompute, FeatureCache.read_entry = _precompute_and_mark, _read_nan
"""


def test_non_finite_training_loss_stops_with_one_line_and_writes_nothing(
    tmp_path, micro, micro_cache
):
    out = tmp_path / "run"
    result = train_patched(NAN_FEATURES.format(speaker="08"), micro, out, *micro_args(micro_cache))
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    line = last_line(result)
    assert line.startswith("error: the training loss is nan in epoch 1, batch "), line
    named = line.split("(utterances ", 1)[1].split(")", 1)[0].split(", ")
    assert any(u.startswith("08") for u in named), line
    assert not (out / "test_metrics.json").exists() and not (out / "predictions.csv").exists()
    assert not checkpoints(out)


def test_non_finite_test_predictions_are_never_written(tmp_path, finished, micro, micro_cache):
    out = copy_run(finished[0], tmp_path)
    (out / "test_metrics.json").unlink()
    (out / "predictions.csv").unlink()
    # Speaker 03 is the test fold: training (already finished) is unaffected, the test is NaN.
    result = train_patched(NAN_FEATURES.format(speaker="03"), micro, out, *micro_args(micro_cache))
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    line = last_line(result)
    assert line.startswith("error: non-finite test predictions for utterances 03"), line
    assert not (out / "test_metrics.json").exists() and not (out / "predictions.csv").exists()


# ----------------------------------------------------------------------------------------------
# 11. Interrupted: Ctrl-C or SIGTERM
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_run_says_how_to_resume(tmp_path, micro, micro_cache, signum):
    out = tmp_path / "run"
    command = [
        sys.executable,
        "train.py",
        "hparams/qieemo.yaml",
        f"--data_folder={micro}",
        f"--output_folder={out}",
        *micro_args(micro_cache, epochs=200),
    ]
    child = subprocess.Popen(
        command, cwd=RECIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 300
        while not (out / "train_log.txt").exists():  # training has begun
            assert child.poll() is None, child.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "training never started"
            time.sleep(0.2)
        child.send_signal(signum)
        stdout, stderr = child.communicate(timeout=300)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == "interrupted; rerun the same command to resume"


def test_interrupt_message_starts_its_own_line_after_a_half_drawn_progress_bar(capfd):
    # What CI once saw: SIGINT arrived while tqdm was drawing, before the bar's newline.
    from qieemo_lobes.recipe import _errors_as_exit, _Progress

    with pytest.raises(SystemExit) as stopped, _errors_as_exit(_Progress()):
        sys.stderr.write("100%|##########| 2/2 [00:00<00:00, 33.76it/s, train_loss=1.85]")
        raise KeyboardInterrupt
    assert stopped.value.code == 130
    lines = capfd.readouterr().err.splitlines()
    assert lines[-1] == "interrupted; rerun the same command to resume"
    assert lines[0].endswith("train_loss=1.85]")
