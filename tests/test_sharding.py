"""Sharded work: the deal (``qieemo_lobes.sharding.shard``), a feature cache filled by several
processes at once, DDP training whose ranks each encode their share, and ``classify --shard``.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qieemo_lobes.classify_engine import FileResult
from qieemo_lobes.classify_output import ResultWriter, check_output, open_output
from qieemo_lobes.classify_shards import Shard, ShardRun, run_shard
from qieemo_lobes.features import read_entry_file
from qieemo_lobes.sharding import shard
from tests.conftest import REPO_ROOT, TINY_WHISPER

RECIPE = REPO_ROOT / "recipes" / "EmoDB" / "emotion"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def clips(emodb_dir) -> list[Path]:
    """Twelve EmoDB clips (2 s each) of four speakers."""
    return sorted(emodb_dir.glob("*.wav"))[::37][:12]


# ------------------------------------------------------------------------------------------------
# The deal


@pytest.mark.parametrize("world_size", [1, 2, 3, 5])
def test_shard_deals_every_item_once_balanced_and_the_same_everywhere(world_size):
    rng = random.Random(world_size)
    items = [(f"utt{i}", rng.uniform(0.5, 12.0)) for i in range(101)]
    seconds = dict(items).get
    names = [name for name, _ in items]
    shares = [shard(names, rank, world_size, seconds=seconds) for rank in range(world_size)]
    dealt = [name for share in shares for name in share]
    assert sorted(dealt) == sorted(names) and len(dealt) == len(names)  # each exactly once
    for share in shares:  # in list order
        assert share == sorted(share, key=names.index)
    totals = [sum(seconds(name) for name in share) for share in shares]
    assert max(totals) - min(totals) <= max(d for _, d in items)
    assert shares == [shard(names, r, world_size, seconds=seconds) for r in range(world_size)]
    counts = [len(shard(names, r, world_size)) for r in range(world_size)]  # no durations
    assert max(counts) - min(counts) <= 1 and sum(counts) == len(names)


def test_shard_refuses_a_rank_outside_the_world():
    for rank, size in ((2, 2), (-1, 2), (0, 0)):
        with pytest.raises(ValueError):
            shard(["a"], rank, size)


# ------------------------------------------------------------------------------------------------
# The feature cache, filled by several processes


FILL = """
import json, sys
from qieemo_lobes.features import FeatureCache
from qieemo_lobes.whisper_torch import TorchWhisperBlocks
cache = FeatureCache(TorchWhisperBlocks("whisper-tiny.en", window="fit"), sys.argv[1])
cache.precompute({c: {"wav": c} for c in json.loads(sys.argv[2])}, batch_seconds=4.0,
                 progress=False)
"""


def test_processes_filling_one_cache_at_once_leave_every_entry_whole(tmp_path, clips):
    """Two processes fill one cache folder at the same time with overlapping clips (one in
    reverse order, so that both encode and write the six shared entries): every entry is
    whole, there is one per clip, no temporary file is left, and each equals the entry of a
    single process."""
    from qieemo_lobes.features import FeatureCache
    from qieemo_lobes.whisper_torch import TorchWhisperBlocks

    names = [str(c) for c in clips]
    shared = tmp_path / "shared"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", FILL, str(shared), json.dumps(part)],
            cwd=REPO_ROOT,
            env=ENV,
            stderr=subprocess.PIPE,
            text=True,
        )
        for part in (names[:9], names[3:][::-1])
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
    cache = FeatureCache(TorchWhisperBlocks("whisper-tiny.en", window="fit"), tmp_path / "one")
    single = cache.precompute({c: {"wav": c} for c in names}, batch_seconds=4.0, progress=False)
    folder = shared / cache.folder.name
    entries = sorted(folder.rglob("*.pt"))
    assert len(entries) == len(names)
    assert not [p for p in folder.rglob("*") if p.is_file() and p.suffix != ".pt"]
    for path in single.values():
        blocks, ppg = read_entry_file(folder / path.relative_to(cache.folder))
        want_blocks, want_ppg = read_entry_file(path)
        torch.testing.assert_close(blocks.float(), want_blocks.float(), atol=2e-3, rtol=1e-2)
        torch.testing.assert_close(ppg.float(), want_ppg.float(), atol=2e-3, rtol=1e-2)


# ------------------------------------------------------------------------------------------------
# DDP training: every rank encodes its share


def test_ddp_ranks_each_encode_their_share_of_the_cache(tmp_path, emodb_dir):
    """torchrun, 2 CPU processes (gloo), a fresh cache with speed copies and corrupted copies:
    each rank encodes about half of every set (log.txt), nothing twice, and training ends."""
    data = tmp_path / "data"
    data.mkdir()
    for wav in sorted(emodb_dir.glob("*.wav")):
        if wav.name[:2] in ("10", "12"):  # 38 + 35 clips
            os.symlink(wav, data / wav.name)
    out, cache = tmp_path / "out", tmp_path / "cache"
    torchrun = Path(sys.executable).with_name("torchrun")
    ddp = subprocess.run(
        [
            str(torchrun),
            "--standalone",
            "--nproc_per_node=2",
            "train.py",
            "hparams/qieemo.yaml",
            f"--data_folder={data}",
            f"--output_folder={out}",
            f"--feature_cache={cache}",
            "--test_fold=1",
            *TINY_WHISPER,
            "--number_of_epochs=1",
            "--batch_size=8",
            "--valid_split=utterance",
            "--valid_ratio=0.25",
            "--speed_perturb=[100,110]",
            "--augment_copies=1",
            "--augment_corruptions=[gain]",
            "--distributed_backend=gloo",  # the default head: BatchNorm per process on CPU
        ],
        cwd=RECIPE,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ddp.returncode == 0, ddp.stdout[-3000:] + ddp.stderr[-3000:]
    assert (out / "test_metrics.json").is_file()
    log = (out / "log.txt").read_text()
    lines = re.findall(
        r"Feature cache(.*): (\d+) entries, (\d+) encoded by 2 processes: rank 0 (\d+), "
        r"rank 1 (\d+)",
        log,
    )
    assert [what for what, *_ in lines] == ["", " (speed 110 %)", " (corrupted copies)"], log
    n_train = json.loads((out / "test_metrics.json").read_text())["n_train"]
    assert int(lines[1][1]) == int(lines[2][1]) == n_train
    for _, entries, encoded, rank0, rank1 in lines:
        assert int(rank0) + int(rank1) == int(encoded) == int(entries)  # fresh cache: each once
        assert abs(int(rank0) - int(rank1)) <= 1  # 2 s clips: balanced by count
    assert int(lines[0][1]) == 73
    stored = list(cache.rglob("*.pt"))
    assert len(stored) == 73 + 2 * n_train
    for path in stored:
        read_entry_file(path)


# ------------------------------------------------------------------------------------------------
# classify --shard


def _classify(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "qieemo_lobes.classify", *args],
        cwd=REPO_ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _assert_same_records(got: list[dict], want: list[dict], tolerance: float) -> None:
    assert [r["path"] for r in got] == [r["path"] for r in want]
    for a, b in zip(got, want, strict=True):
        assert a.get("error") == b.get("error") and a.get("label") == b.get("label"), (a, b)
        for label, p in b.get("probabilities", {}).items():
            assert abs(a["probabilities"][label] - p) <= tolerance


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, clips) -> Path:
    """The twelve clips and a file that is not audio, in one folder."""
    folder = tmp_path_factory.mktemp("shard_inputs")
    for clip in clips:
        os.symlink(clip, folder / clip.name)
    (folder / "bad.wav").write_text("not audio\n")
    return folder


@pytest.fixture(scope="module")
def single(inputs, tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("single") / "all.jsonl"
    proc = _classify(str(inputs), "--format", "json", "--out", str(out))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1 and err.count("bad.wav") == 1, err
    return _records(out)


def _run_shards(inputs: Path, out: Path, *extra: str) -> list[tuple[int, str]]:
    procs = [
        _classify(str(inputs), "--format", "json", "--out", str(out), "--shard", f"{i}/2", *extra)
        for i in (1, 2)
    ]
    done = []
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        done.append((proc.returncode, err))
    return done


def test_two_shards_merge_into_the_single_process_output(inputs, single, tmp_path):
    """--shard 1/2 and 2/2 at once: one JSON Lines file in input order, the records of one
    process; the bad file reported once (by the merge, exit 1); the other shard exits 0."""
    out = tmp_path / "merged.jsonl"
    done = _run_shards(inputs, out)
    _assert_same_records(_records(out), single, tolerance=1e-4)
    stderr = "".join(err for _, err in done)
    assert stderr.count("bad.wav") == 1, stderr
    assert sorted(code for code, _ in done) == [0, 1], done
    merger = next(err for code, err in done if code == 1)
    assert "merged the 2 parts" in merger and "1 of 13 inputs failed" in merger
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged.jsonl"]  # parts, lock: gone


def test_two_onnx_shards_merge_too(inputs, single, tmp_path):
    """--backend onnx: the same merge, probabilities within 1e-3 of the torch backend's."""
    from qieemo_lobes.classify import DEFAULT_MODEL_DIR
    from qieemo_lobes.export_onnx import export_onnx

    onnx_model = export_onnx(DEFAULT_MODEL_DIR, tmp_path / "onnx_model")
    out = tmp_path / "merged.jsonl"
    done = _run_shards(inputs, out, "--backend", "onnx", "--model", str(onnx_model))
    assert sorted(code for code, _ in done) == [0, 1], done
    _assert_same_records(_records(out), single, tolerance=1e-3)


@pytest.mark.parametrize(
    "argv, problem",
    [
        (["--shard", "3/2", "--out", "r.csv"], "--shard must be I/N"),
        (["--shard", "0/2", "--out", "r.csv"], "--shard must be I/N"),
        (["--shard", "1/0", "--out", "r.csv"], "--shard must be I/N"),
        (["--shard", "one/2", "--out", "r.csv"], "--shard must be I/N"),
        (["--shard", "2", "--out", "r.csv"], "--shard must be I/N"),
        (["--shard", "1/2"], "needs --out FILE"),
        (["--shard", "auto", "--out", "r.csv"], "RANK and WORLD_SIZE are not set"),
        (["--shard", "1/2", "--out", "/dev/null"], "is not a file"),
    ],
)
def test_bad_shard_options_are_one_line_exit_2(capsys, monkeypatch, tmp_path, argv, problem):
    from qieemo_lobes import classify

    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.chdir(tmp_path)
    assert classify.main([str(tmp_path), *argv], configure_process=False) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("classify: ") and problem in err[0], err
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------------
# The merge itself, without a model

LABELS = ["angry", "sad"]
RESULTS = [
    FileResult("a.wav", 2.0, [0.25, 0.75]),
    FileResult("b.wav", error="empty file (0 bytes)"),
    FileResult(
        "c.wav",
        40.0,
        [0.5, 0.5],
        [
            {
                "start_s": 0.0,
                "end_s": 3.0,
                "label": "angry",
                "confidence": 0.5,
                "probabilities": {"angry": 0.5, "sad": 0.5},
            }
        ],
    ),  # fmt: skip
    FileResult("d.wav", 3.5, [0.9, 0.1]),
    FileResult("e.wav", 1.0, [0.3, 0.7]),
]


def _fake_shard(index: int, out: Path, fmt: str, capsys, results=RESULTS) -> tuple[int, str]:
    """Shard ``index`` of 2 over ``results`` (as if classified), through :func:`run_shard`."""
    plan = [r if r.error else (r.path, r.duration_s) for r in results]
    run = ShardRun(Shard(index, 2), plan, check_output(str(out), []), "model", "torch", {})

    def write(stream, share, make_writer):
        writer = make_writer(stream, fmt, LABELS, top_k=2)
        for i, item in enumerate(share):
            writer.add(i, results[plan.index(item)])
        return [], []

    code = run_shard(run, write, fmt, 2)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["csv", "table", "json"])
def test_merged_parts_are_what_one_writer_writes(tmp_path, capsys, fmt):
    out = tmp_path / "out"
    first = _fake_shard(2, out, fmt, capsys)
    assert first[0] == 0 and "waiting for shard 1" in first[1] and not out.exists()
    code, err = _fake_shard(1, out, fmt, capsys)
    with open_output(check_output(str(tmp_path / "want"), [])) as stream:
        writer = ResultWriter(stream, fmt, LABELS, top_k=2)
        for i, result in enumerate(RESULTS):
            writer.add(i, result)
        writer.close()
    assert out.read_text() == (tmp_path / "want").read_text()
    assert code == 1 and err.count("b.wav: empty file (0 bytes)") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "want"]


def test_a_part_of_another_run_is_never_merged(tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    other = [*RESULTS[:-1], FileResult("f.wav", 1.0, [0.3, 0.7])]  # other inputs
    assert _fake_shard(2, out, "json", capsys, results=other)[0] == 0
    code, err = _fake_shard(1, out, "json", capsys)
    assert code == 0 and "waiting for shard 2" in err and not out.exists()
    code, err = _fake_shard(2, out, "json", capsys)  # shard 2 of this run replaces it
    assert code == 1 and "merged the 2 parts" in err
    assert [r["path"] for r in _records(out)] == [r.path for r in RESULTS]


def test_a_damaged_part_is_one_line_and_nothing_is_written(tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    assert _fake_shard(2, out, "json", capsys)[0] == 0
    part = tmp_path / "out.jsonl.part-2-of-2"
    lines = part.read_text().splitlines()
    part.write_text("\n".join(lines[:-2]) + "\n")  # a record and the end line lost
    code, err = _fake_shard(1, out, "json", capsys)
    assert code == 1 and not out.exists()
    assert len(err.strip().splitlines()) == 1 and "part-2-of-2: cannot merge" in err, err
