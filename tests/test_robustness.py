"""python -m qieemo_lobes.robustness and benchmarks/robustness.py on a few EmoDB clips.

The model is the built-in default model (angry, happy, neutral, sad): as a model folder with a
``--test`` CSV, and inside fake recipe runs (its head as a run's best checkpoint, with
``test.json``/``train.json`` manifests) that stand in for trained runs and for accuracy.py's fold
runs. EmoDB letters W, F, N, T are those four classes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch

from qieemo_lobes import robustness
from qieemo_lobes.audio import load_audio
from qieemo_lobes.classify import DEFAULT_MODEL_DIR
from qieemo_lobes.corruptions import choose_babble
from qieemo_lobes.recipe import classification_metrics
from qieemo_lobes.robustness import main
from qieemo_lobes.robustness_model import LazyRecognizer
from tests.conftest import REPO_ROOT

LETTERS = {"W": "angry", "F": "happy", "N": "neutral", "T": "sad"}
SPEAKERS = ("03", "08", "09")


@pytest.fixture(scope="module")
def emodb4(tmp_path_factory, emodb_dir) -> Path:
    """Two clips per class of each speaker in SPEAKERS, linked into ``DATA/emodb``."""
    root = tmp_path_factory.mktemp("data") / "emodb"
    root.mkdir()
    taken: dict[tuple[str, str], int] = {}
    for wav in sorted(emodb_dir.glob("*.wav")):
        key = (wav.name[:2], wav.name[5])
        if key[0] in SPEAKERS and key[1] in LETTERS and taken.get(key, 0) < 2:
            taken[key] = taken.get(key, 0) + 1
            os.symlink(wav, root / wav.name)
    return root


def clips(root: Path, speakers=SPEAKERS, per_class: int = 2) -> list[Path]:
    out, taken = [], {}
    for wav in sorted(root.glob("*.wav")):
        key = (wav.name[:2], wav.name[5])
        if key[0] in speakers and taken.get(key, 0) < per_class:
            taken[key] = taken.get(key, 0) + 1
            out.append(wav)
    return out


def write_csv(path: Path, wavs: list[Path], speaker: bool = True) -> Path:
    rows = ["path,label" + (",speaker" if speaker else "")]
    rows += [f"{w},{LETTERS[w.name[5]]}" + (f",{w.name[:2]}" if speaker else "") for w in wavs]
    path.write_text("\n".join(rows) + "\n")
    return path


def manifest(wavs: list[Path]) -> dict:
    return {
        w.stem: {"wav": str(w), "emo": LETTERS[w.name[5]], "spk_id": w.name[:2], "duration": 2.0}
        for w in wavs
    }


def fake_run(run: Path, test: list[Path], train: list[Path], finished: bool = True) -> Path:
    """A recipe run folder holding the default model's head as its best checkpoint."""
    text = (DEFAULT_MODEL_DIR / "hyperparams.yaml").read_text()
    text = text.replace(
        "qieemo_lobes.whisper_torch.TorchWhisperBlocks", "qieemo_lobes.encoders.WhisperBlocks"
    )
    text = re.sub(r"^  run_blocks: \d+\n", "", text, flags=re.MULTILINE)  # TorchWhisperBlocks' only
    ckpt = run / "save" / "CKPT+2026-01-01+00-00-00+00"
    ckpt.mkdir(parents=True)
    (run / "hyperparams.yaml").write_text(text)
    shutil.copy(DEFAULT_MODEL_DIR / "head.ckpt", ckpt / "head.ckpt")
    (ckpt / "CKPT.yaml").write_text("end-of-epoch: true\nua: 50.0\nunixtime: 1.0\n")
    shutil.copy(DEFAULT_MODEL_DIR / "label_encoder.ckpt", run / "save" / "label_encoder.txt")
    (run / "test.json").write_text(json.dumps(manifest(test)))
    (run / "train.json").write_text(json.dumps(manifest(train)))
    if finished:
        (run / "test_metrics.json").write_text(json.dumps({"fold": "x", "n_test": len(test)}))
    return run


def stderr_lines(capsys) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


def without_seconds(path: Path) -> dict:
    data = json.loads(path.read_text())
    for record in data["conditions"]:
        record.pop("seconds")
    return data


@pytest.fixture(scope="module")
def test_csv(emodb4, tmp_path_factory) -> Path:
    """One clip per class of speakers 03 and 08."""
    folder = tmp_path_factory.mktemp("csv")
    return write_csv(folder / "test.csv", clips(emodb4, ("03", "08"), per_class=1))


@pytest.fixture(scope="module")
def two_outputs(test_csv, tmp_path_factory) -> tuple[Path, Path]:
    """The same evaluation (clean and white 0 dB) run twice into two files, in batches of
    3 and of 8 clips."""
    folder = tmp_path_factory.mktemp("outputs")
    outs = folder / "a.json", folder / "b.json"
    for out, batch in zip(outs, ("3", "8"), strict=True):
        args = [str(DEFAULT_MODEL_DIR), "--test", str(test_csv), "--corruptions", "white:0"]
        assert main([*args, "--out", str(out), "--batch-size", batch]) == 0
    return outs


def test_clean_condition_equals_classifying_the_clean_clips(two_outputs, test_csv):
    from qieemo_lobes.interfaces import EmotionRecognizer

    recognizer = EmotionRecognizer.from_hparams(source=DEFAULT_MODEL_DIR)
    rows = [line.split(",") for line in test_csv.read_text().splitlines()[1:]]
    direct = {
        Path(path).stem: recognizer.classify_batch(load_audio(path)[None], torch.ones(1))[3][0]
        for path, _, _ in rows
    }
    data = json.loads(two_outputs[0].read_text())
    clean = data["conditions"][0]
    assert (clean["corruption"], clean["severity"], clean["label"]) == ("clean", None, "clean")
    assert clean["predictions"] == direct and clean["n"] == len(rows)
    truth = [label for _, label, _ in rows]
    predicted = [direct[Path(p).stem] for p, _, _ in rows]
    metrics = classification_metrics(truth, predicted, recognizer.labels)
    assert clean["ua"] == pytest.approx(metrics["ua"], abs=1e-3)
    assert data["seed"] == 0 and data["model"] == str(DEFAULT_MODEL_DIR.resolve())
    assert set(clean) >= {"wa", "ua", "wf1", "n", "seconds"}


def test_corrupted_predictions_are_deterministic_and_differ_from_clean(two_outputs):
    first, second = (without_seconds(path) for path in two_outputs)
    assert first == second
    clean, white = first["conditions"]
    assert white["label"] == "white 0 dB"
    assert white["predictions"].keys() == clean["predictions"].keys()
    assert white["predictions"] != clean["predictions"]


def test_resume_keeps_finished_conditions_and_computes_nothing(
    two_outputs, test_csv, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "resumed.json"
    shutil.copy(two_outputs[0], out)
    calls = []
    monkeypatch.setattr(LazyRecognizer, "__call__", lambda self, wavs: calls.append(wavs))
    monkeypatch.setattr(robustness, "corrupt", lambda *a, **k: calls.append(a))
    args = [str(DEFAULT_MODEL_DIR), "--test", str(test_csv), "--corruptions", "white:0"]
    assert main([*args, "--out", str(out)]) == 0
    assert calls == []
    assert stderr_lines(capsys) == [
        "robustness: [1/2] clean: kept (UA "
        + f"{json.loads(out.read_text())['conditions'][0]['ua']:.1f} %, 8 clips)",
        "robustness: [2/2] white 0 dB: kept (UA "
        + f"{json.loads(out.read_text())['conditions'][1]['ua']:.1f} %, 8 clips)",
    ]
    assert without_seconds(out) == without_seconds(two_outputs[0])


def test_interrupt_exits_130_keeping_finished_conditions(test_csv, tmp_path, monkeypatch, capsys):
    real, calls = LazyRecognizer.__call__, []

    def interrupted(self, wavs):  # Ctrl-C during the second condition
        calls.append(len(wavs))
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real(self, wavs)

    monkeypatch.setattr(LazyRecognizer, "__call__", interrupted)
    out = tmp_path / "r.json"
    args = [str(DEFAULT_MODEL_DIR), "--test", str(test_csv), "--corruptions", "white:0"]
    assert main([*args, "--out", str(out)]) == 130
    assert calls == [8, 8]
    err = stderr_lines(capsys)
    assert err[-1] == f"robustness: interrupted; finished conditions: 1, in {out}"
    assert [c["label"] for c in json.loads(out.read_text())["conditions"]] == ["clean"]


def spy_on_corrupt(monkeypatch) -> list[dict]:
    calls: list[dict] = []
    real = robustness.corrupt

    def spy(wav, rate, corruption, **kwargs):
        calls.append({"corruption": corruption, **kwargs})
        return real(wav, rate, corruption, **kwargs)

    monkeypatch.setattr(robustness, "corrupt", spy)
    return calls


def test_babble_never_uses_the_test_speaker(emodb4, tmp_path, monkeypatch):
    """A run: the pool is its train.json; a model folder: the CSV's own clips, where the test
    speaker's other clips are in the pool but never chosen."""
    calls = spy_on_corrupt(monkeypatch)
    test = clips(emodb4, ("03",), per_class=1)
    run = fake_run(tmp_path / "run", test, clips(emodb4, ("08", "09")))
    assert main([str(run), "--corruptions", "babble:0", "--out", str(tmp_path / "r.json")]) == 0
    csv = write_csv(tmp_path / "t.csv", clips(emodb4, ("03", "08"), per_class=1))
    assert main([str(DEFAULT_MODEL_DIR), "--test", str(csv), "--corruptions", "babble:0"]) == 0
    assert len(calls) == len(test) + 8
    for call in calls[: len(test)]:
        assert {speaker for speaker, _ in call["babble_pool"]} == {"08", "09"}
    for call in calls:
        pool, speaker = call["babble_pool"], call["speaker"]
        assert speaker in ("03", "08")
        chosen = choose_babble(pool, speaker, utterance_id=call["utterance_id"], seed=0)
        assert chosen and all(pool[i][0] != speaker for i in chosen)
    assert {s for s, _ in calls[-1]["babble_pool"]} == {"03", "08"}  # the CSV's own speakers


def test_unavailable_corruption_is_one_skip_line(test_csv, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("QIEEMO_FFMPEG", "/nonexistent/ffmpeg")
    out = tmp_path / "r.json"
    args = [str(DEFAULT_MODEL_DIR), "--test", str(test_csv), "--corruptions", "mp3,gain:-20"]
    assert main([*args, "--out", str(out)]) == 0
    err = stderr_lines(capsys)
    assert [line for line in err if "mp3" in line] == [
        "robustness: mp3: skipped (ffmpeg not found (install the Debian package ffmpeg))"
    ]
    labels = [c["label"] for c in json.loads(out.read_text())["conditions"]]
    assert labels == ["clean", "gain -20 dB"]


def test_unreadable_audio_is_listed_once_and_skipped(emodb4, tmp_path, capsys):
    good = clips(emodb4, ("03",), per_class=1)[:2]
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    missing = tmp_path / "missing.wav"
    rows = "path,label,speaker\n" + "".join(f"{w},{LETTERS[w.name[5]]},03\n" for w in good)
    csv = tmp_path / "t.csv"
    csv.write_text(rows + f"{empty},sad,03\n{missing},sad,03\n")
    out = tmp_path / "r.json"
    args = [str(DEFAULT_MODEL_DIR), "--test", str(csv), "--corruptions", "gain:-20"]
    assert main([*args, "--out", str(out)]) == 1
    err = stderr_lines(capsys)
    assert sum(str(empty) in line for line in err) == 1
    assert sum(str(missing) in line for line in err) == 1
    assert err[-1] == "robustness: 2 clips skipped (unreadable audio or a failed corruption)"
    assert [c["n"] for c in json.loads(out.read_text())["conditions"]] == [2, 2]


def test_adapt_classifies_each_condition_with_its_own_statistics(emodb4, tmp_path, capsys):
    """--adapt: a condition's predictions are those of the model adapted to that condition's
    clips, which differ from the unadapted model's under noise; the file says it is adapted,
    and an unadapted run cannot resume it."""
    from qieemo_lobes.interfaces import EmotionRecognizer

    wavs = clips(emodb4, ("03", "08"), per_class=2)[:12]  # 12 clips: at least ADAPT_MIN_CLIPS
    csv = write_csv(tmp_path / "t.csv", wavs)
    args = [str(DEFAULT_MODEL_DIR), "--test", str(csv), "--corruptions", "white:0"]
    adapted, plain = tmp_path / "adapted.json", tmp_path / "plain.json"
    assert main([*args, "--adapt", "--out", str(adapted)]) == 0
    assert main([*args, "--out", str(plain)]) == 0
    data = json.loads(adapted.read_text())
    assert data["adapted"] is True and [c["n"] for c in data["conditions"]] == [12, 12]
    assert json.loads(plain.read_text())["adapted"] is False

    recognizer = EmotionRecognizer.from_hparams(source=DEFAULT_MODEL_DIR)
    audio = [load_audio(w) for w in wavs]
    with recognizer.adapted(recognizer.domain_statistics(audio)):
        expected = {
            w.stem: recognizer.classify_batch(a[None])[3][0]
            for w, a in zip(wavs, audio, strict=True)
        }
    assert data["conditions"][0]["predictions"] == expected
    noisy = [json.loads(f.read_text())["conditions"][1]["predictions"] for f in (adapted, plain)]
    assert noisy[0] != noisy[1]

    capsys.readouterr()
    assert main([*args, "--out", str(adapted)]) == 2
    assert stderr_lines(capsys) == [
        f"robustness: {adapted}: holds results for another run (adapted True -> False); "
        "choose another --out or delete it"
    ]
    few = write_csv(tmp_path / "few.csv", wavs[:9])
    assert main([str(DEFAULT_MODEL_DIR), "--test", str(few), "--adapt"]) == 2
    assert stderr_lines(capsys) == [
        f"robustness: {few.resolve()}: --adapt needs at least 10 test clips, it has 9"
    ]


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "not_a_model",
        "model_without_test",
        "csv_without_label",
        "unknown_label",
        "unfinished_run",
        "unknown_corruption",
        "other_seed",
    ],
)
def test_bad_input_is_one_line_and_exit_2(case, test_csv, emodb4, two_outputs, tmp_path, capsys):
    model, extra, named = str(DEFAULT_MODEL_DIR), ["--test", str(test_csv)], None
    if case == "missing":
        model = named = str(tmp_path / "nothing")
    elif case == "not_a_model":
        model = named = str(tmp_path)
    elif case == "model_without_test":
        extra, named = [], model
    elif case == "csv_without_label":
        csv = tmp_path / "t.csv"
        csv.write_text("path,speaker\na.wav,03\n")
        extra, named = ["--test", str(csv)], str(csv)
    elif case == "unknown_label":
        csv = tmp_path / "t.csv"
        csv.write_text(f"path,label\n{clips(emodb4)[0]},bored\n")
        extra, named = ["--test", str(csv)], "bored"
    elif case == "unfinished_run":
        run = fake_run(tmp_path / "run", clips(emodb4)[:1], clips(emodb4)[1:2], finished=False)
        model, extra, named = str(run), [], "test_metrics.json"
    elif case == "unknown_corruption":
        extra, named = [*extra, "--corruptions", "hail"], "hail"
    elif case == "other_seed":
        extra, named = [*extra, "--seed", "1", "--out", str(two_outputs[0])], "seed 0 -> 1"
    assert main([model, *extra]) == 2
    err = stderr_lines(capsys)
    assert len(err) == 1 and named in err[0], err


# ------------------------------------------------------------------------------------------------
# benchmarks/robustness.py


@pytest.fixture(scope="module")
def benchmark():
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location(
        "robustness_benchmark", REPO_ROOT / "benchmarks" / "robustness.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def work(emodb4, benchmark, tmp_path_factory) -> Path:
    """accuracy.py's work folder as the benchmark reads it: one finished run per fold."""
    import baselines

    work = tmp_path_factory.mktemp("work")
    items = baselines.corpus_items("emodb", emodb4)
    for k in sorted({i["fold"] for i in items}):
        test = [Path(i["path"]) for i in items if i["fold"] == k]
        train = [Path(i["path"]) for i in items if i["fold"] != k]
        fake_run(work / "emodb" / "qieemo" / f"fold_{k + 1}", test, train)
    return work


def run_benchmark(benchmark, work, emodb4, out, systems) -> int:
    return benchmark.main(
        [
            "--corpora=emodb",
            f"--systems={systems}",
            f"--work={work}",
            f"--data={emodb4.parent}",
            f"--out={out}",
            "--corruptions=white:0",
            "--max-per-fold=2",
        ]
    )


def check_outputs(out: Path, systems: list[str]) -> dict:
    report = out.read_text()
    assert "Quick run: at most 2 test clips per fold" in report
    assert "| white 0 dB |" in report and "| clean |" in report
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["max_per_fold"] == 2 and data["command"].startswith("python benchmarks/")
    points = {(p["system"], p["label"]): p for p in data["points"]}
    assert set(points) == {(s, c) for s in systems for c in ("clean", "white 0 dB")}
    for point in points.values():
        assert point["n"] == 6 and point["complete"] and len(point["folds"]) == 3
        assert 0 <= point["ua"] <= 100
    means = " | ".join(f"{points[(s, 'white 0 dB')]['ua']:.1f}" for s in systems)  # one condition
    assert f"| **mean of the corrupted conditions** | {means} |" in report
    return points


def test_benchmark_writes_table_json_and_curves_and_resumes(
    benchmark, work, emodb4, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "robustness.md"
    assert run_benchmark(benchmark, work, emodb4, out, "qieemo,probe") == 0
    check_outputs(out, ["qieemo", "probe"])
    assert (work / "robustness" / "emodb" / "probe" / "fold_3.json").is_file()
    capsys.readouterr()
    monkeypatch.setattr(robustness, "corrupt", lambda *a, **k: pytest.fail("recomputed"))
    assert run_benchmark(benchmark, work, emodb4, tmp_path / "again.md", "qieemo,probe") == 0
    assert sum("kept" in line for line in stderr_lines(capsys)) == 12  # 2 systems x 3 folds x 2


@pytest.mark.skipif(importlib.util.find_spec("opensmile") is None, reason="no opensmile")
def test_benchmark_opensmile(benchmark, work, emodb4, tmp_path):
    out = tmp_path / "robustness.md"
    assert run_benchmark(benchmark, work, emodb4, out, "opensmile") == 0
    check_outputs(out, ["opensmile"])
    assert (work / "opensmile_emodb.npz").is_file()


def test_benchmark_refuses_missing_fold_runs(benchmark, work, emodb4, tmp_path, capsys):
    partial = tmp_path / "work"
    shutil.copytree(work / "emodb" / "qieemo" / "fold_1", partial / "emodb" / "qieemo" / "fold_1")
    assert run_benchmark(benchmark, partial, emodb4, tmp_path / "r.md", "qieemo") == 2
    err = stderr_lines(capsys)
    assert len(err) == 1 and "fold_2, fold_3" in err[0]
    assert f"python benchmarks/accuracy.py --corpora emodb --work {partial}" in err[0]


def test_adapted_system_gets_each_condition_whole_and_adapts_to_it(
    benchmark, work, emodb4, tmp_path, monkeypatch
):
    """qieemo_adapt: every condition of a fold in one call, classified with the input
    statistics of that condition's clips, as EmotionRecognizer.adapted would."""
    from qieemo_lobes.interfaces import EmotionRecognizer
    from qieemo_lobes.robustness_model import AdaptingRecognizer

    calls = []
    real = AdaptingRecognizer.__call__

    def spy(self, wavs):
        labels = real(self, wavs)
        calls.append((wavs, labels))
        return labels

    monkeypatch.setattr(AdaptingRecognizer, "__call__", spy)
    out = tmp_path / "robustness.md"
    assert run_benchmark(benchmark, work, emodb4, out, "qieemo_adapt") == 0
    check_outputs(out, ["qieemo_adapt"])
    assert len(calls) == 6 and all(len(wavs) == 2 for wavs, _ in calls)  # 3 folds x 2 conditions

    recognizer = EmotionRecognizer.from_hparams(source=DEFAULT_MODEL_DIR)
    for wavs, labels in calls:
        with recognizer.adapted(recognizer.domain_statistics(wavs)):
            expected = [recognizer.classify_batch(w[None])[3][0] for w in wavs]
        assert labels == expected


def test_augmented_systems_read_their_runs(benchmark, work, emodb4, tmp_path, capsys):
    partial = tmp_path / "work"
    shutil.copytree(work / "emodb", partial / "emodb", symlinks=True)
    system = "qieemo_aug_mild"  # each augmented setting reads its own runs
    shutil.copytree(partial / "emodb" / "qieemo", partial / "emodb" / "qieemo_aug")
    assert run_benchmark(benchmark, partial, emodb4, tmp_path / "r.md", f"qieemo,{system}") == 2
    err = stderr_lines(capsys)
    assert len(err) == 1 and f"no finished {system} fold runs fold_1, fold_2, fold_3" in err[0]
    command = f"accuracy.py --corpora emodb --augmented emodb --augment-settings {system} --work"
    assert f"{command} {partial}" in err[0]
    shutil.copytree(partial / "emodb" / "qieemo", partial / "emodb" / system)
    out = tmp_path / "robustness.md"
    assert run_benchmark(benchmark, partial, emodb4, out, f"qieemo,{system}") == 0
    points = check_outputs(out, ["qieemo", system])
    for condition in ("clean", "white 0 dB"):  # the same heads here: the same results
        assert points[("qieemo", condition)]["ua"] == points[(system, condition)]["ua"]
