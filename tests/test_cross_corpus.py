"""Tests for benchmarks/cross_corpus.py (issue 13): class mapping, manifests, splits, resuming,
the probe's split hygiene and the report; no model is trained.

Fixture corpora in the recipes' layouts (EmoDB, RAVDESS, TurEV-DB) are written to ``tmp_path``
with short real audio (a tone over low noise); qieemo runs are replaced by a fake ``train.py``
that writes what a finished run leaves, and the probe reads synthetic block means or fake
feature cache entries.
"""

from __future__ import annotations

import doctest
import json
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import baselines  # noqa: E402
import cross_corpus as cc  # noqa: E402
import cross_corpus_qieemo  # noqa: E402  (where run_qieemo looks up launch)

from qieemo_lobes.run_settings import resolved_settings  # noqa: E402

# ---------------------------------------------------------------------------------------------
# Fixture corpora
# ---------------------------------------------------------------------------------------------


def write_audio(path: Path, seconds: float = 0.2, sr: int = 16000) -> Path:
    """A short tone over low noise (never silence); the format follows the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = int(round(seconds * sr))
    rng = np.random.default_rng(zlib.crc32(str(path).encode()))  # every clip its own audio
    tone = 0.2 * np.sin(2 * np.pi * 220 * np.arange(n) / sr) + 0.01 * rng.standard_normal(n)
    sf.write(path, tone.astype("float32"), sr, subtype="PCM_16")
    return path


# EmoDB letters: W angry, F happy, N neutral, T sad, L bored (left out), A fear (left out)
EMODB_LETTERS = "WFNTLA"
# RAVDESS codes: 05 angry, 03 happy, 01 neutral, 04 sad, 02 calm (left out)
RAVDESS_CODES = ("05", "03", "01", "04", "02")
# TurEV-DB folders and codes
TUREV_CODES = {"Angry": "kz", "Calm": "sk", "Happy": "mt", "Sad": "hl"}


def make_emodb(root: Path) -> Path:
    for spk in ("03", "08", "09"):
        for letter in EMODB_LETTERS:
            write_audio(root / "wav" / f"{spk}a01{letter}a.wav")
    return root


def make_ravdess(root: Path) -> Path:
    for actor in (1, 2, 5):
        for code in RAVDESS_CODES:
            write_audio(root / f"Actor_{actor:02d}" / f"03-01-{code}-01-01-01-{actor:02d}.flac")
    return root


def make_turev(root: Path) -> Path:
    for spk in ("1157", "1234", "7895"):
        for folder, code in TUREV_CODES.items():
            for word in ("acik", "kedi"):
                write_audio(root / folder / f"{spk}_{code}_{word}.flac")
    return root


def make_corpora(root: Path) -> Path:
    """``root/{emodb,ravdess,turev}`` in the recipes' layouts: 3 speakers each."""
    make_emodb(root / "emodb")
    make_ravdess(root / "ravdess")
    make_turev(root / "turev")
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_corpora(tmp_path_factory.mktemp("corpora"))


THREE = ["emodb", "ravdess", "turev"]


@pytest.fixture(scope="module")
def raw(data) -> dict[str, list[dict]]:
    return cc.read_corpora(THREE, data, cc.TUREV_CALM)


def labels_of(items: list[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for u in items:
        out[u["label"]] = out.get(u["label"], 0) + 1
    return out


# ---------------------------------------------------------------------------------------------
# Class mapping, manifests, splits
# ---------------------------------------------------------------------------------------------


def test_module_docstring_examples():
    failures, tried = doctest.testmod(cc, optionflags=doctest.ELLIPSIS)
    assert tried > 10 and failures == 0


def test_class_mapping_both_turev_modes(raw):
    neutral, drop = cc.map_classes(raw, "neutral"), cc.map_classes(raw, "drop")
    for mapped in (neutral, drop):  # EmoDB's boredom and fear, RAVDESS' calm: left out
        assert labels_of(mapped["emodb"]) == {"angry": 3, "happy": 3, "neutral": 3, "sad": 3}
        assert labels_of(mapped["ravdess"]) == {"angry": 3, "happy": 3, "neutral": 3, "sad": 3}
    assert labels_of(neutral["turev"]) == {"angry": 6, "happy": 6, "neutral": 6, "sad": 6}
    assert {u["source"] for u in neutral["turev"] if u["label"] == "neutral"} == {"calm"}
    assert all("/Calm/" in u["path"] for u in neutral["turev"] if u["label"] == "neutral")
    assert labels_of(drop["turev"]) == {"angry": 6, "happy": 6, "sad": 6}
    assert not any("/Calm/" in u["path"] for u in drop["turev"])
    for corpus, items in neutral.items():  # speakers prefixed by their corpus
        assert {u["speaker"] for u in items} == {
            f"{corpus}_{s}"
            for s in {"emodb": ("03", "08", "09"), "ravdess": ("01", "02", "05"),
                      "turev": ("1157", "1234", "7895")}[corpus]
        }  # fmt: skip
        assert all(u["corpus"] == corpus for u in items)
    counts = cc.class_counts(drop["turev"])
    assert list(counts) == ["angry", "happy", "sad"]


def test_manifest_read_by_the_custom_recipe(raw, tmp_path):
    """The CSV is the custom recipe's: fold = corpus, corpus-prefixed speakers, the classes."""
    import importlib.util

    path = cc.RECIPE / "custom_prepare.py"
    spec = importlib.util.spec_from_file_location("custom_prepare_for_tests", path)
    custom = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(custom)
    for mode, n_turev, turev_labels in (
        ("neutral", 24, {"angry", "happy", "neutral", "sad"}),
        ("drop", 18, {"angry", "happy", "sad"}),
    ):
        utterances = cc.map_classes(raw, mode)
        split = cc.Split(("emodb", "ravdess"), "turev")
        manifest = cc.write_manifest(utterances, split, mode, tmp_path / "manifests")
        assert manifest.name.startswith(f"emodb+ravdess+turev_turev-calm-{mode}.")
        assert cc.write_manifest(utterances, split, mode, tmp_path / "manifests") == manifest
        scan = custom.list_utterances(manifest, classes=list(cc.CLASSES))
        summary = scan.summary()
        assert summary["folds"] == {"emodb": 12, "ravdess": 12, "turev": n_turev}
        assert summary["speaker_independent"] and summary["skipped"] == []
        turev = [r for r in scan.records if r.fold == "turev"]
        assert {r.label for r in turev} == turev_labels
        assert all(r.speaker.startswith(f"{r.fold}_") for r in scan.records)
    # a split without TurEV-DB has one manifest for both modes
    names = {
        cc.write_manifest(
            cc.map_classes(raw, m), cc.Split(("emodb",), "ravdess"), m, tmp_path / "m"
        ).name
        for m in cc.TUREV_CALM
    }
    assert len(names) == 1 and next(iter(names)).startswith("emodb+ravdess.")


def test_split_classes_when_turev_drops_calm(raw):
    drop = cc.map_classes(raw, "drop")
    # trained on TurEV-DB alone: three classes, tested on the other corpus' three
    train, test, classes = cc.split_data(cc.Split(("turev",), "emodb"), drop)
    assert classes == ["angry", "happy", "sad"]
    assert {u["corpus"] for u in train} == {"turev"} and len(test) == 9
    assert {u["label"] for u in test} == {"angry", "happy", "sad"}
    # tested on TurEV-DB: the four classes learnt, TurEV-DB's three tested
    train, test, classes = cc.split_data(cc.Split(("emodb", "ravdess"), "turev"), drop)
    assert classes == list(cc.CLASSES) and len(test) == 18
    assert {u["corpus"] for u in train} == {"emodb", "ravdess"}
    neutral = cc.map_classes(raw, "neutral")
    train, test, classes = cc.split_data(cc.Split(("turev",), "emodb"), neutral)
    assert classes == list(cc.CLASSES) and len(test) == 12


def test_plan_and_names():
    splits = cc.plan_splits(cc.CORPORA)
    assert len(splits) == 25 and len({s.name("neutral") for s in splits}) == 25
    assert all(s.test not in s.train for s in splits)
    loco = cc.plan_splits(cc.CORPORA, pairs=False)
    assert [len(s.train) for s in loco] == [4] * 5
    assert len(cc.plan_splits(cc.CORPORA, loco=False)) == 20
    names = {m: {s.name(m) for s in splits} for m in cc.TUREV_CALM}
    shared = names["neutral"] & names["drop"]
    assert len(shared) == 12 and not any("turev" in n for n in shared)


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--corpora", "emodb,timit"], "unknown corpus 'timit'"),
        (["--corpora", "emodb"], "at least two corpora"),
        (["--systems", "qieemo,svm"], "--systems"),
        (["--test_fold=2"], "--test_fold is set by cross_corpus.py"),
        (["--lrr=0.1"], "unknown override --lrr"),
        (["--d_model=x"], "d_model takes an integer"),
        (["stray"], "stray: not an option"),
    ],
)
def test_bad_arguments_are_one_line(args, expected, tmp_path, capsys):
    code = cc.main([*args, "--work", str(tmp_path / "w"), "--out", str(tmp_path / "o.md")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "\n" not in err
    assert expected in err
    assert not (tmp_path / "w").exists() and not (tmp_path / "o.md").exists()


def test_missing_or_wrong_data_folder_is_one_line(data, tmp_path, capsys):
    common = ["--work", str(tmp_path / "w"), "--out", str(tmp_path / "o.md")]
    code = cc.main(["--corpora", "emodb,nemo", "--data", str(data), *common])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "does not exist" in err and "nemo" in err
    code = cc.main(["--corpora", "emodb,ravdess", "--data", str(data / "turev"), *common])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and err.startswith("error: ")
    assert not (tmp_path / "w").exists()


# ---------------------------------------------------------------------------------------------
# qieemo runs: resuming, failures, the report (fake train.py)
# ---------------------------------------------------------------------------------------------


class FakeTrain:
    """Stands for ``train.py``: writes run_settings.json and test_metrics.json as a finished run
    does (UA from the split's name), or fails with a one-line error for the names in ``fail``."""

    def __init__(self, fail: set[str] = frozenset()):
        self.fail = set(fail)
        self.calls: list[dict] = []

    def __call__(self, arguments, log: Path) -> int:
        args = dict(a[2:].split("=", 1) for a in arguments)
        out = Path(args["output_folder"])
        self.calls.append(args)
        if out.name in self.fail:
            log.write_text("some output\nerror: --data_folder: something is wrong\n")
            return 2
        classes = json.loads(args["classes"])
        test = [
            row.split(",")
            for row in Path(args["data_folder"]).read_text().splitlines()[1:]
            if row.split(",")[3] == args["test_fold"] and row.split(",")[1] in classes
        ]
        ua = 30.0 + len(out.name) % 40
        k = len(classes)
        metrics = {
            "fold": args["test_fold"],
            "n_train": 10,
            "n_valid": 2,
            "n_test": len(test),
            "classes": classes,
            "wa": ua + 1,
            "ua": ua,
            "wf1": ua - 1,
            "macro_f1": ua - 2,
            "confusion": [[int(i == j) for j in range(k)] for i in range(k)],
        }
        (out / "run_settings.json").write_text(json.dumps(resolved_settings(cc.HPARAMS, arguments)))
        (out / "test_metrics.json").write_text(json.dumps(metrics))
        log.write_text("trained\n")
        return 0


def test_matrix_resumes_and_reports_failures(data, tmp_path, monkeypatch, capsys):
    work, out = tmp_path / "work", tmp_path / "report" / "cross_corpus.md"
    fail = "train-emodb_test-ravdess"
    fake = FakeTrain({fail})
    monkeypatch.setattr(cross_corpus_qieemo, "launch", fake)
    common = ["--corpora", ",".join(THREE), "--data", str(data), "--work", str(work)]
    common += ["--out", str(out), "--systems", "qieemo", "--use_cma=False"]
    assert cc.main(common) == 1
    captured = capsys.readouterr()
    assert len(fake.calls) == 9  # 6 pairs and 3 leave-one-corpus-out
    problem = "error: --data_folder: something is wrong"
    assert f"qieemo {fail}: FAILED: {problem}" in captured.err
    assert f"qieemo {fail}: exit status 2: {problem}" in captured.err
    for call in fake.calls:
        assert call["speed_perturb"] == "[100]" and call["use_cma"] == "False"
        assert Path(call["feature_cache"]) == work / "feature_cache"
        assert call["test_fold"] in THREE
    loco = [c for c in fake.calls if "+" in c["output_folder"]]
    assert {c["test_fold"] for c in loco} == set(THREE)
    assert all(Path(c["data_folder"]).name.startswith("emodb+ravdess+turev") for c in loco)
    report = out.read_text()
    assert "| EmoDB | (within: not here) | failed |" in report
    data_json = json.loads(out.with_suffix(".json").read_text())
    assert [f["split"] for f in data_json["failed"]] == [fail]
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Command: `python benchmarks/cross_corpus.py --corpora" in report

    # Rerun: only the failed run is trained again; the rest are kept.
    fake.fail.clear()
    fake.calls.clear()
    assert cc.main(common) == 0
    assert [Path(c["output_folder"]).name for c in fake.calls] == [fail]
    results = json.loads(out.with_suffix(".json").read_text())["results"]["neutral"]["qieemo"]
    run = results["runs"]["train-emodb_test-turev_turev-calm-neutral"]
    assert run["n_test"] == 24 and run["reused"] and run["classes"] == list(cc.CLASSES)
    assert results["pairs"]["emodb"]["turev"] == run["ua"]
    assert results["mean_loco"] == pytest.approx(np.mean(list(results["loco"].values())))

    # The other TurEV-DB mode: the splits without TurEV-DB are shared, the others are new.
    fake.calls.clear()
    assert cc.main([*common, "--turev-calm", "both"]) == 0
    names = sorted(Path(c["output_folder"]).name for c in fake.calls)
    assert len(names) == 7 and all(n.endswith("_turev-calm-drop") for n in names)
    drop = json.loads(out.with_suffix(".json").read_text())["results"]["drop"]["qieemo"]
    assert drop["runs"]["train-emodb_test-turev_turev-calm-drop"]["n_test"] == 18
    assert drop["runs"]["train-turev_test-emodb_turev-calm-drop"]["classes"] == [
        "angry", "happy", "sad",
    ]  # fmt: skip

    # Other settings than the finished runs': train.py is asked (it refuses or resumes).
    fake.calls.clear()
    cc.main([*common[:-1], "--use_cma=True", "--pairs-only"])
    assert len(fake.calls) == 6


def test_finished_run_uses_the_settings_train_py_records(tmp_path):
    """finished_run() compares with what train.py records (check_run_settings on the
    SpeechBrain-parsed command line), so a finished run is recognised."""
    import speechbrain as sb

    from qieemo_lobes.run_folder import check_run_settings

    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label,speaker,fold\n")
    out = tmp_path / "run"
    out.mkdir()
    arguments = cc.qieemo_arguments(
        manifest,
        out,
        cc.Split(("emodb", "ravdess"), "turev"),
        ["angry", "happy", "sad"],
        tmp_path / "cache",
        ["--use_cma=False", "--number_of_epochs=3"],
    )
    _, _, overrides = sb.parse_arguments([str(cc.HPARAMS), *arguments])
    settings, _ = check_run_settings(str(cc.HPARAMS), overrides)
    (out / "run_settings.json").write_text(json.dumps(settings))
    metrics = {"wa": 1.0, "ua": 2.0, "wf1": 3.0, "confusion": [], "classes": [], "n_test": 0}
    (out / "test_metrics.json").write_text(json.dumps(metrics))
    assert cc.finished_run(out, arguments) == metrics
    assert cc.finished_run(out, [*arguments[:-1], "--number_of_epochs=4"]) is None
    (out / "test_metrics.json").write_text("{")  # cut short: not finished
    assert cc.finished_run(out, arguments) is None


# ---------------------------------------------------------------------------------------------
# The probe
# ---------------------------------------------------------------------------------------------


def synthetic_means(utterances: dict[str, list[dict]], n_blocks: int = 4) -> dict:
    """Block 2 (0-based 1) carries the class; every utterance's vector is unique."""
    rng = np.random.default_rng(0)
    means = {}
    for items in utterances.values():
        for u in items:
            x = 0.1 * rng.standard_normal((n_blocks, 6))
            x[1, cc.CLASSES.index(u["label"])] += 3.0
            means[u["path"]] = x
    return means


def test_probe_never_fits_on_the_test_corpus(raw, tmp_path, monkeypatch):
    utterances = cc.map_classes(raw, "neutral")
    means = synthetic_means(utterances)
    seen: list[tuple[np.ndarray, np.ndarray]] = []
    fit = baselines.InnerCVBlockProbe.fit

    def spy(self, X, y, groups):
        seen.append((np.asarray(X).copy(), np.asarray(groups).copy()))
        return fit(self, X, y, groups)

    monkeypatch.setattr(baselines.InnerCVBlockProbe, "fit", spy)
    models: dict = {}
    for split in cc.plan_splits(THREE):
        seen.clear()
        record = cc.run_probe(split, "neutral", utterances, tmp_path, lambda: means, models)
        train, test, _ = cc.split_data(split, utterances)
        rows = {means[u["path"]].tobytes() for u in train}
        held_out = {means[u["path"]].tobytes() for u in test}
        for X, groups in seen:  # each fit: training corpora only, inner folds of their speakers
            fitted = {row.reshape(4, 6).tobytes() for row in X}
            assert fitted == rows and not fitted & held_out
            assert len(set(groups)) == min(5, len({u["speaker"] for u in train}))
        assert record["test"] == split.test and record["n_test"] == len(test)
        assert record["block"] == 2 and record["ua"] == 100.0  # block 2 carries the class
        assert len(record["inner_ua"]) == 4 and not record["reused"]
    # one fit per training set: 3 single corpora and 3 pairs of corpora
    assert len(models) == 6

    # Kept while the utterances are the same; redone when they change.
    split = cc.Split(("emodb",), "turev")
    again = cc.run_probe(split, "neutral", utterances, tmp_path, lambda: {}, {})
    assert again["reused"] and again["ua"] == 100.0
    drop = cc.map_classes(raw, "drop")
    record = cc.run_probe(split, "drop", drop, tmp_path, lambda: means, {})
    assert not record["reused"] and record["n_test"] == 18
    assert record["confusion"][2] == [0, 0, 0, 0]  # no neutral tested on TurEV-DB


def test_probe_reads_the_feature_cache(raw, tmp_path, monkeypatch):
    """Block means come from the whisper-base (fit window) entries of the shared cache; nothing
    is encoded when every clip is there."""
    import torch

    from qieemo_lobes import encoders
    from qieemo_lobes.features import FeatureCache

    identity = encoders.WhisperBlocks.identity_for("whisper-base", "fit")
    reader = FeatureCache(type("E", (), {"identity": identity})(), str(tmp_path))
    paths = [u["path"] for u in raw["emodb"][:4]]
    for i, path in enumerate(paths):
        entry = reader.entry(path)
        entry.parent.mkdir(parents=True, exist_ok=True)
        blocks = torch.full((6, 5, 8), float(i), dtype=torch.float16)
        torch.save({"blocks": blocks, "ppg": torch.ones(5, 8, dtype=torch.float16)}, entry)

    def no_encoder(*args, **kwargs):
        raise AssertionError("the encoder was built although every clip is cached")

    monkeypatch.setattr(encoders.WhisperBlocks, "__init__", no_encoder)
    means = cc.probe_features(paths, tmp_path)
    assert set(means) == set(paths)
    for i, path in enumerate(paths):
        assert means[path].shape == (7, 8)  # 6 blocks and the final output
        assert np.allclose(means[path][:6], i) and np.allclose(means[path][6], 1.0)


def test_inner_folds_keep_speakers_whole():
    speakers = ["a"] * 3 + ["b"] * 2 + ["c"] * 2 + ["d"] + ["e"] + ["f"]
    folds = cc.inner_folds(speakers)
    assert len(set(folds)) == 5
    for s in set(speakers):
        assert len({f for f, sp in zip(folds, speakers, strict=True) if sp == s}) == 1
    with pytest.raises(ValueError, match="at least 2 training speakers"):
        cc.inner_folds(["a", "a"])


# ---------------------------------------------------------------------------------------------
# The report from fake results
# ---------------------------------------------------------------------------------------------


def fake_record(system: str, split: cc.Split, ua: float) -> dict:
    classes = list(cc.CLASSES)
    return {
        "system": system,
        "train": list(split.train),
        "test": split.test,
        "classes": classes,
        "n_train": 100,
        "n_test": 40,
        "wa": ua + 2,
        "ua": ua,
        "wf1": ua + 1,
        "macro_f1": ua,
        "confusion": [[10 * (i == j) for j in range(4)] for i in range(4)],
        "wall_time_s": 12.0,
        "block": 3,
    }


def test_report_tables_json_and_heatmap(tmp_path):
    splits = cc.plan_splits(cc.CORPORA)
    records = {"qieemo": {}, "probe": {}}
    for k, split in enumerate(splits):
        name = split.name("neutral")
        records["qieemo"][name] = fake_record("qieemo", split, 40.0 + k)
        records["probe"][name] = fake_record("probe", split, 30.0 + k)
    failed = cc.Split(("nemo",), "emovo").name("neutral")
    records["probe"][failed] = {"system": "probe", "failed": "features: broken"}
    counts = {"neutral": {c: {k: 10 for k in cc.CLASSES} for c in cc.CORPORA}}
    out = tmp_path / "res" / "cross_corpus.md"
    text, data = cc.write_report(
        out,
        command="python benchmarks/cross_corpus.py",
        corpora=list(cc.CORPORA),
        modes=["neutral"],
        systems=["qieemo", "probe"],
        counts=counts,
        records=records,
        pairs=True,
        loco=True,
        overrides=["--use_cma=False"],
        wall_time_s=5.0,
        machine="2 CPU cores, no GPU",
        date="2026-12-01",
    )
    assert out.read_text() == text
    lines = text.splitlines()
    header = "| trained on \\ tested on | EmoDB | RAVDESS | nEMO | EMOVO | TurEV-DB | mean |"
    assert lines.count(header) == 2
    first = lines.index(header)
    # pairs come first in plan order: EmoDB -> RAVDESS is split 0 (UA 40), -> nEMO 41, ...
    assert lines[first + 2] == ("| EmoDB | (within: not here) | 40.0 | 41.0 | 42.0 | 43.0 | 41.5 |")
    assert lines[first + 8].startswith("| all the others (leave one corpus out) | 60.0 | 61.0 |")
    q = data["results"]["neutral"]["qieemo"]
    assert q["mean_off_diagonal"] == pytest.approx(np.mean(range(40, 60)))
    assert q["mean_loco"] == pytest.approx(62.0)
    p = data["results"]["neutral"]["probe"]
    assert p["pairs"]["nemo"]["emovo"] is None
    assert p["mean_off_diagonal"] == pytest.approx(np.mean([30 + k for k in range(20) if k != 10]))
    assert "| nEMO | " in text and "failed" in text
    assert "| qieemo | 49.5 | 62.0 |" in text
    assert "Calm (sk) (10)" in text and "calm, fearful, disgust, surprised" in text
    assert data["failed"] == [{"system": "probe", "split": failed, "problem": "features: broken"}]
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved["results"]["neutral"]["qieemo"]["runs"][splits[0].name("neutral")]["confusion"]
    assert saved["mapping"]["turev"]["neutral"] == "Calm (sk)"
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
