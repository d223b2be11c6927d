"""``python -m qieemo_lobes.classify`` under hostile conditions (issue 12, the classify parts).

Where the results go (``--out`` on an input file, a symlink, a FIFO, a character device, a socket,
a full disk, a 254-character name), interruptions (SIGINT, SIGTERM, SIGKILL), a batch the model
fails on, non-finite model output, a timeline plot that cannot be written, DC offsets, special
input files, unsearchable folders and ``--trust-model``.

Most tests run the command in-process (:func:`classify.main`) with the tiny whisper-tiny.en model
of :func:`tests.test_interfaces.tiny_run`, loaded once per module; the signal and resource-limit
tests need a real process and run the command as a subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from qieemo_lobes import audio, classify, classify_engine, segmentation
from tests.conftest import REPO_ROOT
from tests.test_interfaces import tiny_run

CLIPS = ("03a01Fa.wav", "03a01Wa.wav", "03a02Fc.wav", "03a02Wb.wav")  # 2 s EmoDB clips, 22.05 kHz
RATE = 22050


@pytest.fixture(scope="module")
def model(tmp_path_factory, emodb_dir) -> Path:
    return tiny_run(tmp_path_factory, emodb_dir)[1]


@pytest.fixture(scope="module")
def recognizer(model):
    from qieemo_lobes.interfaces import EmotionRecognizer

    return EmotionRecognizer.from_hparams(source=str(model))


@pytest.fixture(scope="module")
def speech(emodb_dir) -> list[np.ndarray]:
    """The EmoDB clips of :data:`CLIPS`, float32 at 22.05 kHz."""
    clips = [sf.read(emodb_dir / name, dtype="float32") for name in CLIPS]
    assert all(rate == RATE for _, rate in clips)
    return [x for x, _ in clips]


@pytest.fixture(scope="module")
def long_recording(tmp_path_factory, speech) -> Path:
    """A 34-second recording (over the 30 s limit, so segmented): four clips, 6 s apart."""
    gap = np.zeros(6 * RATE, dtype=np.float32)
    path = tmp_path_factory.mktemp("long") / "long.flac"
    sf.write(path, np.concatenate([gap] + [x for clip in speech for x in (clip, gap)]), RATE)
    return path


@pytest.fixture
def run(monkeypatch, capfd, recognizer, model):
    """``run(*argv) -> (exit code, stdout, stderr)``: the command in-process, the module's model.

    ``run.loads`` lists the ``trust_code`` of every model load (none when the command stopped
    before loading the model).
    """
    loads: list[bool] = []

    def load(model_dir, device, trust_code=False):
        loads.append(trust_code)
        return recognizer

    monkeypatch.setattr(classify, "_load_model", load)

    def run_main(*argv) -> tuple[int, str, str]:
        code = classify.main([*map(str, argv), "--model", str(model)], configure_process=False)
        out, err = capfd.readouterr()
        return code, out, err

    run_main.loads = loads
    return run_main


def write_clip(path: Path, x: np.ndarray, subtype: str = "FLOAT") -> Path:
    sf.write(path, x, RATE, subtype=subtype)
    return path


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file of ``folder`` (hidden ones too) and its content."""
    return {p.name: p.read_bytes() for p in folder.iterdir()}


# ------------------------------------------------------------------------------------------------
# 1. --out: input files, symlinks, FIFOs, character devices, sockets


@pytest.mark.parametrize("how", ["named", "in_folder", "by_glob", "symlink", "hard_link"])
def test_out_never_overwrites_an_input_file(run, speech, tmp_path, how):
    folder = tmp_path / "audio"
    folder.mkdir()
    clip = write_clip(folder / "a.wav", speech[0])
    original = clip.read_bytes()
    out = clip
    if how == "symlink":
        out = tmp_path / "link.txt"
        out.symlink_to(clip)
    elif how == "hard_link":
        out = tmp_path / "results.txt"
        os.link(clip, out)
    inputs = {"in_folder": folder, "by_glob": folder / "*.wav"}.get(how, clip)
    code, _, err = run(inputs, "--out", out)
    assert code == 2
    assert one_line(err).startswith(f"classify: {out}: is one of the input files")
    assert clip.read_bytes() == original and run.loads == []  # refused before classifying


def test_out_through_a_symlink_writes_its_target_and_keeps_the_link(run, speech, tmp_path):
    clip = write_clip(tmp_path / "a.wav", speech[0])
    (tmp_path / "real.csv").write_text("old\n")
    (tmp_path / "link.csv").symlink_to("real.csv")
    (tmp_path / "dangling.csv").symlink_to("new.csv")
    for link, target in (("link.csv", "real.csv"), ("dangling.csv", "new.csv")):
        code, out, err = run(clip, "--format", "csv", "--out", tmp_path / link)
        assert (code, out, err) == (0, "", "")
        assert (tmp_path / link).is_symlink() and os.readlink(tmp_path / link) == target
        assert (tmp_path / target).read_text().startswith("path,segment,")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "a.wav",
        "dangling.csv",
        "link.csv",
        "new.csv",
        "real.csv",
    ]


def test_out_fifo_receives_the_results_directly(run, speech, tmp_path):
    clip = write_clip(tmp_path / "a.wav", speech[0])
    fifo = tmp_path / "results.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # so the command's open does not block
    try:
        code, out, err = run(clip, "--format", "json", "--out", fifo)
        received = b""
        while chunk := os.read(reader, 65536):  # no writer left: the data, then end of file
            received += chunk
    finally:
        os.close(reader)
    assert (code, out, err) == (0, "", "")
    record = json.loads(received.decode())
    assert record["path"] == str(clip) and record["label"] in record["probabilities"]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)  # still the FIFO, not a regular file


def test_out_dev_stdout_is_stdout(run, speech, tmp_path):
    clip = write_clip(tmp_path / "a.wav", speech[0])
    code, out, err = run(clip, "--format", "json", "--out", "/dev/stdout")
    assert (code, err) == (0, "")
    assert json.loads(out)["path"] == str(clip)
    assert os.path.islink("/dev/stdout")


def test_out_dev_stdout_reaches_the_pipe(tmp_path):
    """``--out /dev/stdout`` with stdout a pipe: the results go down the pipe (no model is needed
    for an input that matches nothing, which keeps this subprocess quick)."""
    empty = tmp_path / "empty"
    empty.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "qieemo_lobes.classify", str(empty), "--format", "json",
         "--out", "/dev/stdout"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert json.loads(result.stdout) == {"path": str(empty), "error": "no audio files in directory"}
    assert os.path.islink("/dev/stdout")


def character_device(path: Path, minor: int) -> Path:
    """A private copy of /dev/null (minor 3) or /dev/full (minor 7) at ``path``.

    The test then cannot damage the machine's own device nodes, even if the code under test
    replaced the file at ``--out``.
    """
    if os.geteuid() != 0:
        pytest.skip("creating a device node needs root")
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, minor))
        with open(path, "w"):
            pass
    except OSError as err:
        pytest.skip(f"cannot create and open a device node here ({err})")
    return path


def test_out_dev_null_is_written_and_stays_a_device(run, speech, tmp_path):
    clip = write_clip(tmp_path / "a.wav", speech[0])
    null = character_device(tmp_path / "null", 3)
    assert run(clip, "--out", null) == (0, "", "")
    assert stat.S_ISCHR(os.lstat(null).st_mode)


@pytest.mark.parametrize("fmt", ["json", "table"])
def test_out_dev_full_is_one_line_and_stays_a_device(run, speech, tmp_path, fmt):
    clip = write_clip(tmp_path / "a.wav", speech[0])
    full = character_device(tmp_path / "full", 7)
    code, out, err = run(clip, "--format", fmt, "--out", full)
    assert code == 1 and out == ""
    assert one_line(err) == f"classify: {full}: cannot write the results (no space left on device)"
    assert stat.S_ISCHR(os.lstat(full).st_mode)


def test_out_socket_is_refused(run, speech, tmp_path):
    clip = write_clip(tmp_path / "a.wav", speech[0])
    sock_path = tmp_path / "s.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(sock_path))
        code, _, err = run(clip, "--out", sock_path)
    assert code == 2 and "is a socket" in one_line(err) and run.loads == []
    assert stat.S_ISSOCK(os.lstat(sock_path).st_mode)


# ------------------------------------------------------------------------------------------------
# 12. A legal 254-character --out name


def test_out_file_name_of_254_characters(run, speech, tmp_path):
    clip = write_clip(tmp_path / "a.wav", speech[0])
    out = tmp_path / ("r" * 250 + ".csv")
    assert len(out.name) == 254
    assert run(clip, "--format", "csv", "--out", out) == (0, "", "")
    assert out.read_text().startswith("path,segment,")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["a.wav", out.name])


# ------------------------------------------------------------------------------------------------
# 11/12. A full disk, interruptions and kills: one line, nothing left in the --out folder


# The command with RLIMIT_FSIZE (the largest file it may write) set first, from its first argument.
LIMITED_COMMAND = """
import resource, runpy, sys
limit = int(sys.argv.pop(1))
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
runpy.run_module("qieemo_lobes.classify", run_name="__main__", alter_sys=True)
"""


def command(*argv: str, fsize: int | None = None) -> subprocess.Popen:
    """The command as a subprocess; ``fsize``: the largest file it may write (RLIMIT_FSIZE)."""
    head = ["-m", "qieemo_lobes.classify"] if fsize is None else ["-c", LIMITED_COMMAND, str(fsize)]
    return subprocess.Popen(
        [sys.executable, *head, *argv],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def test_out_write_error_is_one_line_and_leaves_the_old_file(model, speech, tmp_path):
    """A disk that fills up while the results are written (simulated with RLIMIT_FSIZE: the
    write fails with EFBIG as it would with ENOSPC): one line, exit 1, the old file intact, no
    temporary file."""
    clip = write_clip(tmp_path / "a.wav", speech[0])
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "results.jsonl").write_text("old\n")
    before = snapshot(out_dir)
    proc = command(
        str(clip), "--model", str(model), "--format", "json", "--out", str(out_dir / "results.jsonl"),
        fsize=64,
    )  # fmt: skip
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"classify: {out_dir / 'results.jsonl'}: cannot write the results (file too large)"
    )
    assert snapshot(out_dir) == before


@pytest.fixture(scope="module")
def many_clips(tmp_path_factory, emodb_dir) -> Path:
    """120 EmoDB clips (links), one per batch: a run still busy well after its first record."""
    folder = tmp_path_factory.mktemp("many")
    for path in sorted(emodb_dir.glob("*.wav"))[:120]:
        (folder / path.name).symlink_to(path)
    return folder


def wait_until_writing(proc: subprocess.Popen, folder: Path, timeout: float = 300.0) -> None:
    """Wait until ``proc`` has written a record to a file it holds open in ``folder``."""
    deadline = time.monotonic() + timeout
    fds = Path(f"/proc/{proc.pid}/fd")
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the command ended first: {proc.communicate()[1]}")
        try:
            for fd in fds.iterdir():
                with_name = os.readlink(fd)
                if with_name.startswith(f"{folder}/") and fd.stat().st_size > 0:
                    return
        except OSError:  # a descriptor closed while looking
            pass
        time.sleep(0.05)
    proc.kill()
    pytest.fail("the command never started writing its results")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_interrupted_run_leaves_the_out_folder_as_it_was(model, many_clips, tmp_path, sig):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "results.jsonl").write_text("old\n")
    (out_dir / "notes.txt").write_text("mine\n")
    before = snapshot(out_dir)
    proc = command(
        str(many_clips), "--model", str(model), "--format", "json", "--batch-size", "1",
        "--out", str(out_dir / "results.jsonl"),
    )  # fmt: skip
    wait_until_writing(proc, out_dir)  # mid-run: records are being written
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == 130, err
        assert out == "" and one_line(err) == "classify: interrupted"
    assert snapshot(out_dir) == before  # no partial result, no temporary file


# ------------------------------------------------------------------------------------------------
# 5. A file the model fails on never takes its batch down; too-short segments are skipped


@pytest.mark.parametrize("stopped_by", ["load_audio", "the_model"])
def test_short_clip_fails_alone(run, speech, tmp_path, monkeypatch, stopped_by):
    """A 200-sample clip batched with a real clip: the clip is classified, the short one fails.

    ``load_audio`` refuses it as too short; without that check (``MIN_SECONDS = 0``) the model
    itself raises on it, which made the whole batch fail: now the batch is retried file by file.
    """
    if stopped_by == "the_model":
        monkeypatch.setattr(audio, "MIN_SECONDS", 0.0)
    good = write_clip(tmp_path / "good.wav", speech[0])
    loudest = int(np.abs(speech[0]).argmax())
    short = write_clip(tmp_path / "short.wav", speech[0][loudest - 100 : loudest + 100])
    code, out, err = run(good, short, "--format", "json", "--batch-size", "8")
    assert code == 1
    records = {Path(r["path"]).name: r for r in map(json.loads, out.splitlines())}
    assert records["good.wav"]["label"] in records["good.wav"]["probabilities"]
    expected = "too short" if stopped_by == "load_audio" else "cannot classify (RuntimeError"
    assert records["short.wav"]["error"].startswith(expected)
    assert err.splitlines()[0].startswith(f"{short}: {expected}")


def test_segments_shorter_than_min_seconds_are_skipped(
    run, recognizer, long_recording, monkeypatch
):
    class Segmenter:
        def __call__(self, path):
            return [(3.0, 3.05), (5.9, 8.1), (12.0, 12.09)]  # 50 ms, 2.2 s, 90 ms

    seen: list[int] = []
    classify_batch = recognizer.classify_batch

    def spy(wavs, wav_lens):
        seen.extend(round(float(n)) for n in wav_lens * wavs.shape[1])
        return classify_batch(wavs, wav_lens)

    monkeypatch.setattr(segmentation, "SpeechSegmenter", Segmenter)
    monkeypatch.setattr(recognizer, "classify_batch", spy)
    code, out, err = run(long_recording, "--format", "json")
    assert (code, err) == (0, "")
    record = json.loads(out)
    assert [(s["start_s"], s["end_s"]) for s in record["segments"]] == [(5.9, 8.1)]
    assert seen == [round(2.2 * recognizer.sample_rate)]


# ------------------------------------------------------------------------------------------------
# 4. Non-finite probabilities are an error, never a result


def test_non_finite_probabilities_are_an_error(run, recognizer, speech, tmp_path, monkeypatch):
    good = write_clip(tmp_path / "good.wav", speech[0])
    bad = write_clip(tmp_path / "bad.wav", speech[1][: int(1.5 * RATE)])  # 1.5 s: recognisable
    classify_batch = recognizer.classify_batch
    bad_samples = round(1.5 * recognizer.sample_rate)

    def damaged(wavs, wav_lens):  # as a model with a diverged weight would answer for one input
        out_prob, score, index, labels = classify_batch(wavs, wav_lens)
        out_prob = out_prob.clone()  # an inference tensor: changed only as a copy
        for row, n in enumerate(wav_lens * wavs.shape[1]):
            if abs(float(n) - bad_samples) < 2:
                out_prob[row] = float("nan")
        return out_prob, score, index, labels

    monkeypatch.setattr(recognizer, "classify_batch", damaged)
    for fmt in ("json", "csv", "table"):
        code, out, err = run(good, bad, "--format", fmt)
        assert code == 1 and "nan" not in out.lower()
        assert err.splitlines()[0] == f"{bad}: {classify_engine.NON_FINITE_PROBLEM}"
    code, out, _ = run(good, bad, "--format", "json")
    records = [json.loads(line) for line in out.splitlines()]
    assert records[1] == {"path": str(bad), "error": classify_engine.NON_FINITE_PROBLEM}
    assert set(records[0]) >= {"label", "probabilities"}


# ------------------------------------------------------------------------------------------------
# 11. A timeline plot that cannot be written costs the plot, not the results


@pytest.mark.parametrize("failure", ["folder_in_the_way", "matplotlib_error"])
def test_plot_failure_keeps_the_results(run, long_recording, tmp_path, monkeypatch, failure):
    plots = tmp_path / "plots"
    plots.mkdir()
    if failure == "folder_in_the_way":
        (plots / "long.png").mkdir()  # the PNG cannot be renamed into place
        problem = "is a directory"
    else:
        import matplotlib.figure

        def broken(*args, **kwargs):
            raise RuntimeError("renderer\nexploded")

        monkeypatch.setattr(matplotlib.figure.Figure, "savefig", broken)
        problem = "RuntimeError: renderer exploded"
    out_file = tmp_path / "results.jsonl"
    code, out, err = run(long_recording, "--format", "json", "--out", out_file, "--plot", plots)
    assert code == 1 and out == "" and "Traceback" not in err
    assert err.splitlines() == [
        f"{plots / 'long.png'}: cannot write the timeline plot ({problem})",
        "classify: 1 timeline plots not written",
    ]
    record = json.loads(out_file.read_text())
    assert record["path"] == str(long_recording) and len(record["segments"]) >= 4
    assert [p.name for p in plots.iterdir()] == ["long.png"] * (failure == "folder_in_the_way")


# ------------------------------------------------------------------------------------------------
# 9. A DC offset is no speech, and does not change what the model hears


def test_dc_offset_is_silence_alone_and_ignored_under_speech(run, recognizer, speech, tmp_path):
    clip = 0.5 * speech[0]
    rng = np.random.default_rng(0)
    files = {
        "clip.wav": clip,
        "clip_dc.wav": clip + 0.3,
        "quiet.wav": 0.01 * speech[0],  # -40 dB: quiet speech is still speech
        "const.wav": np.full(3 * RATE, 0.5),
        "dc_noise.wav": 0.2 + 3e-4 * rng.standard_normal(3 * RATE),  # noise at -70 dBFS
    }
    for name, x in files.items():
        subtype = "PCM_16" if name == "const.wav" else "FLOAT"
        write_clip(tmp_path / name, np.asarray(x, dtype=np.float32), subtype)
    code, out, err = run(*(tmp_path / name for name in files), "--format", "json")
    assert code == 1
    records = {Path(r["path"]).name: r for r in map(json.loads, out.splitlines())}
    for name in ("const.wav", "dc_noise.wav"):
        assert records[name]["error"] == audio.SILENCE_PROBLEM
    probs = {
        name: np.array(list(records[name]["probabilities"].values())) for name in list(files)[:3]
    }
    # A calibration temperature below 1 (the tiny run fits it on 12 validation utterances)
    # sharpens the probabilities: their differences grow by up to 1 / T.
    tolerance = 1e-3 / min(1.0, recognizer.temperature)
    assert np.abs(probs["clip_dc.wav"] - probs["clip.wav"]).max() < tolerance
    assert "label" in records["quiet.wav"]
    assert len(err.splitlines()) == 3  # the two silent files and the summary


# ------------------------------------------------------------------------------------------------
# 12. Special files as input, folders that cannot be searched


def test_fifo_and_device_inputs_are_named_not_read(run, speech, tmp_path):
    clip = write_clip(tmp_path / "a.wav", speech[0])
    fifo = tmp_path / "b.wav"
    os.mkfifo(fifo)  # no writer: reading it would block for ever
    code, out, err = run(clip, fifo, "/dev/zero", "--format", "json")
    assert code == 1
    assert err.splitlines()[:2] == [
        f"{fifo}: not a regular file (FIFO)",
        "/dev/zero: not a regular file (character device)",
    ]
    assert "label" in json.loads(out.splitlines()[0])


def test_unsearchable_folder_is_an_error_line(run, speech, tmp_path, monkeypatch):
    write_clip(tmp_path / "a.wav", speech[0])
    locked = tmp_path / "locked"
    locked.mkdir()
    write_clip(locked / "b.wav", speech[1])
    scandir = os.scandir

    def scandir_as_non_root(path="."):  # root reads any folder: refuse this one as for a user
        if os.fspath(path) == str(locked):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", scandir_as_non_root)
    code, out, err = run(tmp_path, "--format", "json")
    assert code == 1
    assert err.splitlines() == [
        f"{locked}: cannot search this folder (permission denied)",
        "classify: 1 of 2 inputs failed",
    ]
    records = [json.loads(line) for line in out.splitlines()]
    assert records[0] == {
        "path": str(locked),
        "error": "cannot search this folder (permission denied)",
    }
    assert records[1]["path"] == str(tmp_path / "a.wav") and "label" in records[1]


# ------------------------------------------------------------------------------------------------
# 10. --trust-model: a model folder is code


def test_trust_model_is_passed_on(run, speech, tmp_path):
    clip = write_clip(tmp_path / "a.wav", speech[0])
    assert run(clip)[0] == 0
    assert run(clip, "--trust-model")[0] == 0
    assert run.loads == [False, True]


def test_help_says_a_model_folder_is_code(capsys):
    with pytest.raises(SystemExit):
        classify.main(["--help"], configure_process=False)
    text = " ".join(capsys.readouterr().out.split())
    assert "--trust-model" in text and "hyperparams.yaml is code" in text
    assert "only model folders written by python -m qieemo_lobes.export load" in text


def test_model_folder_running_code_loads_only_with_trust_model(model, speech, tmp_path, capsys):
    """End to end through EmotionRecognizer.from_hparams: a hyperparams.yaml that runs a
    command is refused by default (the command never runs) and runs with --trust-model."""
    clip = write_clip(tmp_path / "a.wav", speech[0])
    folder = tmp_path / "model"
    shutil.copytree(model, folder)
    marker = tmp_path / "code_ran"
    with open(folder / "hyperparams.yaml", "a") as fh:
        fh.write(f"\nside_effect: !apply:pathlib.Path.touch [!new:pathlib.Path [{marker}]]\n")
    argv = [str(clip), "--model", str(folder)]
    assert classify.main(argv, configure_process=False) == 2
    assert not marker.exists()
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"classify: {folder}: cannot load the model (") and "!apply" in line
    assert classify.main([*argv, "--trust-model"], configure_process=False) == 0
    assert marker.exists()
