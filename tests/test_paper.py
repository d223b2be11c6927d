"""Tests for benchmarks/paper.py and paper_report.py (issue 15) and the scratch encoder.

No model is trained: ``cross_validate.py`` and ``train.py`` are replaced by a fake that writes
what a finished run leaves (per fold ``test_metrics.json``, ``predictions.csv``, ``test.json``,
``train_log.txt`` with the MMF weights, a checkpoint with the CMA gates, and
``cv_settings.json``), with built-in differences between the systems; the probe reads fake
feature cache entries whose label signal peaks in block 4.
"""

from __future__ import annotations

import csv
import doctest
import gzip
import json
import shutil
import sys
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import baselines  # noqa: E402
import paper  # noqa: E402
import paper_report  # noqa: E402

from qieemo_lobes.files import save_torch_atomic, write_json_atomic  # noqa: E402
from qieemo_lobes.fold_runs import cv_settings  # noqa: E402
from qieemo_lobes.run_settings import resolved_settings  # noqa: E402
from qieemo_lobes.scratch_encoder import (  # noqa: E402
    ARCHITECTURES,
    RECIPE_OVERRIDE,
    ScratchWhisperBlocks,
)
from tests.test_cross_corpus import write_audio  # noqa: E402

SPEAKERS = ("03", "08", "09", "10", "11", "12")
LETTERS = "WLEAFTN"  # EmoDB's seven emotions
# Share (in tenths) of utterances each fake system gets wrong: full and no_cma equally good
# (errors drawn independently: a null difference), no_mmf and from_scratch much worse.
ERRORS = {"full": 1, "no_cma": 1, "best_block": 1, "no_mmf": 6, "from_scratch": 7}
SEEDS = "1986,1987,1988"


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """``data/emodb``: 6 speakers x 7 emotions x 2 sentences of short tones."""
    root = tmp_path_factory.mktemp("corpora")
    for spk in SPEAKERS:
        for letter in LETTERS:
            for text in ("a01", "a02"):
                write_audio(root / "emodb" / f"{spk}{text}{letter}a.wav", seconds=0.1)
    return root


@pytest.fixture(scope="module")
def cache(data, tmp_path_factory) -> Path:
    """Fake whisper-base cache entries: 6 blocks + final of 8 features; the label is readable
    from every block, best from block 4, barely from the final output."""
    from qieemo_lobes.features import FeatureCache

    folder = tmp_path_factory.mktemp("cache")
    identity = paper.probe_encoder_identity("pretrained")
    writer = FeatureCache(SimpleNamespace(identity=identity), str(folder))
    items = baselines.corpus_items("emodb", data / "emodb")
    classes = sorted({item["label"] for item in items})
    strength = [0.3, 0.6, 1.0, 3.0, 1.0, 0.6]  # blocks 1..6
    for i, item in enumerate(items):
        rng = np.random.default_rng(i)
        onehot = np.zeros(8)
        onehot[classes.index(item["label"])] = 1.0
        blocks = np.stack([s * onehot + rng.normal(size=(4, 8)) for s in strength])
        ppg = 0.1 * onehot + rng.normal(size=(4, 8))
        entry = writer.entry(item["path"])
        entry.parent.mkdir(parents=True, exist_ok=True)
        save_torch_atomic(
            {
                "blocks": torch.tensor(blocks, dtype=torch.float16),
                "ppg": torch.tensor(ppg, dtype=torch.float16),
            },
            entry,
        )
    return folder


def _wrong(utt: str, system: str) -> bool:
    base = system.split("_seed")[0]
    share = ERRORS.get(base, 1)
    return zlib.crc32(f"{utt}|{base}".encode()) % 10 < share


def _write_fold(out: Path, test: dict[str, dict], classes: list[str], system: str, uses: dict):
    """What a finished fold leaves, for the utterances ``test`` (id -> record)."""
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(test, out / "test.json")
    rows, true, pred = [], [], []
    for utt, record in test.items():
        label = record["emo"]
        guess = classes[(classes.index(label) + 1) % len(classes)] if _wrong(utt, system) else label
        probs = [0.8 if c == guess else 0.2 / (len(classes) - 1) for c in classes]
        rows.append([utt, label, guess, *(f"{p:.6f}" for p in probs)])
        true.append(label)
        pred.append(guess)
    with open(out / "predictions.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["utterance", "true", "predicted", *classes])
        writer.writerows(rows)
    metrics = baselines.classification_metrics(np.array(true), np.array(pred))
    confusion = [[sum(t == a and p == b for t, p in zip(true, pred, strict=True)) for b in classes] for a in classes]  # fmt: skip
    write_json_atomic(
        {
            "fold": out.name,
            "n_train": 50,
            "n_valid": 5,
            "n_test": len(test),
            "classes": classes,
            "wa": metrics["WA"],
            "ua": metrics["UA"],
            "wf1": metrics["WF1"],
            "macro_f1": metrics["MF1"],
            "confusion": confusion,
        },
        out / "test_metrics.json",
    )
    weights = ""
    if uses["use_mmf"] == "True":
        blocks = json.loads(uses.get("fusion_blocks", "[2, 3]"))
        weights = ", " + ", ".join(f"w{b}: {1 / len(blocks):.3e}" for b in blocks)
    (out / "train_log.txt").write_text(
        f"epoch: 1, lr: 1.00e-03{weights} - train loss: 1.0 - valid loss: 1.0\n"
        f"epoch: 2, lr: 5.00e-04{weights} - train loss: 0.9 - valid loss: 0.9\n"
        "Epoch loaded: 2 - test loss: 1.0, test ua: 50.0\n"
    )
    if uses["use_cma"] == "True":
        ckpt = out / "save" / "CKPT+2026-01-01+00-00-00+00"
        ckpt.mkdir(parents=True, exist_ok=True)
        (ckpt / "CKPT.yaml").write_text("end-of-epoch: true\nua: 50.0\nunixtime: 1.0\n")
        save_torch_atomic(
            {"cma.attn_gate": torch.tensor([0.2]), "cma.ffn_gate": torch.tensor([0.1])},
            ckpt / "head.ckpt",
        )
    write_json_atomic({"wall_time_s": 2.0}, out / "wall_time.json")


class FakeRecipes:
    """Stands for ``cross_validate.py`` and ``train.py``: writes finished runs, or fails with a
    one-line error for the output folders named in ``fail``, or is interrupted."""

    def __init__(self, fail: set[str] = frozenset(), interrupt: bool = False):
        self.fail = set(fail)
        self.interrupt = interrupt
        self.calls: list[tuple[str, dict]] = []

    def __call__(self, script: Path, arguments, log: Path) -> int:
        named = dict(a[2:].split("=", 1) for a in arguments[1:])
        out = Path(named["output_folder"])
        self.calls.append((script.name, named))
        if self.interrupt:
            raise KeyboardInterrupt
        if out.name in self.fail:
            log.write_text("training ...\nerror: something is wrong with this run\n")
            return 2
        uses = {**{"use_mmf": "True", "use_cma": "True"}, **named}
        if script.name == "cross_validate.py":
            items = baselines.corpus_items("emodb", named["data_folder"])
            classes = sorted({item["label"] for item in items})
            folds = [int(k) for k in named["folds"].split(",")] if "folds" in named else range(1, 7)
            for k in folds:
                test = {
                    Path(i["path"]).stem: {
                        "wav": i["path"],
                        "emo": i["label"],
                        "spk_id": i["speaker"],
                        "fold": i["speaker"],
                    }
                    for i in items
                    if i["fold"] == k - 1
                }
                _write_fold(out / f"fold_{k}", test, classes, out.name, uses)
            passed = [a for a in arguments[1:] if a.split("=", 1)[0] not in (
                "--data_folder", "--output_folder", "--folds")]  # fmt: skip
            record = cv_settings(arguments[0], passed, named["data_folder"])
            write_json_atomic(
                {"hparams_file": arguments[0], "overrides": passed, **record},
                out / "cv_settings.json",
            )
        else:  # the lexical corpus' train.py
            rows = list(csv.DictReader(open(named["data_folder"])))
            test = {
                Path(r["path"]).stem: {"wav": r["path"], "emo": r["label"], "spk_id": r["speaker"]}
                for r in rows
                if r["fold"] == "test"
            }
            system = out.name.replace("blocks_only", "no_cma").replace("ppg_only", "no_mmf")
            _write_fold(out, test, list(paper.LEXICAL_CLASSES), system, uses)
            write_json_atomic(
                resolved_settings(arguments[0], arguments[1:]), out / "run_settings.json"
            )
        log.write_text("done\n")
        return 0


def fake_lexical_corpus(folder: Path) -> Path:
    """A manifest in the lexical corpus' format: 4 voices (2 test) x 4 classes x 6 sentences."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "manifest.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "speaker", "fold", "text", "unseen_words"])
        for v in range(4):
            fold = "train" if v < 2 else "test"
            for label in paper.LEXICAL_CLASSES:
                for k in range(6):
                    path = write_audio(folder / "wavs" / f"v{v}_{label}_{k}.wav", seconds=0.1)
                    text = f"i am so {label} word{k} about the thing {k}"
                    writer.writerow([path.relative_to(folder), label, f"v{v}", fold, text, 0])
    return manifest


@pytest.fixture
def study(data, cache, tmp_path, monkeypatch):
    """``main`` with the fakes; returns (run(argv) -> (code, out, err), fake, paths)."""
    fake = FakeRecipes()
    monkeypatch.setattr(paper, "launch", fake)
    monkeypatch.setattr(paper, "make_lexical_corpus", fake_lexical_corpus)
    work, out = tmp_path / "work", tmp_path / "results" / "paper_report.md"
    common = ["--corpora", "emodb", "--data", str(data), "--work", str(work)]
    common += ["--cache", str(cache), "--out", str(out), "--seeds", SEEDS, "--n-boot", "500"]
    common += ["--archive", str(tmp_path / "archive")]
    return SimpleNamespace(fake=fake, work=work, out=out, json=out.with_name("paper_results.json"), archive=tmp_path / "archive", common=common)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The study, end to end with the fakes
# ---------------------------------------------------------------------------------------------


def test_study_writes_the_report_resumes_and_regenerates(study, capsys):
    assert paper.main(study.common) == 0
    captured = capsys.readouterr()
    assert "paper: written" in captured.out and captured.err == ""
    scripts = [s for s, _ in study.fake.calls]
    # 4 ablations + 2 block sets + from_scratch, 3 seeds; 3 lexical systems, 3 seeds
    assert scripts.count("cross_validate.py") == 21 and scripts.count("train.py") == 9
    for _script, named in study.fake.calls:
        assert named["tune_blocks"] == "0" and named["speed_perturb"] == "[100]"
        assert named["number_of_epochs"] == "15" and named["seed"] in SEEDS.split(",")
        assert Path(named["feature_cache"]) == Path(study.common[study.common.index("--cache") + 1])
        system = Path(named["output_folder"]).name.rsplit("_seed", 1)[0]
        if system == "best_block":  # the block the inner CV chose: block 4, where the signal is
            assert named["fusion_blocks"] == "[4]" and named["use_cma"] == "False"
        if system == "no_mmf":
            assert named["use_mmf"] == "False" and named["use_cma"] == "True"
        if system == "from_scratch":
            assert named["encoder_source"] == "scratch-whisper-base"
            assert named["encoder"] == RECIPE_OVERRIDE.split("=", 1)[1]
    results = json.loads(study.json.read_text())
    emodb = results["corpora"]["emodb"]
    assert set(emodb["probe"]) == {"1", "2", "3", "4", "5", "6", "final"}
    assert max(emodb["probe"], key=emodb["probe"].get) == "4"
    assert emodb["best_block_used"] == 4 and emodb["probe_inner_choice"] == [4] * 6
    for name in ("full", "no_cma", "no_mmf", "best_block", "from_scratch"):
        system = emodb["systems"][name]
        assert system["status"] == "done" and system["seeds_done"] == [1986, 1987, 1988]
        assert len(system["ua_folds"]) == 6 and isinstance(system["ua_mean"], float)
    assert emodb["systems"]["full"]["mmf_weights"]["2"]["mean"] == pytest.approx(0.5)
    assert emodb["systems"]["full"]["cma_gates"]["attn"]["mean"] == pytest.approx([0.197375])
    tests = {(t["a"], t["b"]): t for t in results["tests"]}
    for t in results["tests"]:
        assert {"corpus", "a", "b", "delta_ua", "p_value"} <= set(t)
    real, null = tests[("full", "no_mmf")], tests[("full", "no_cma")]
    assert real["delta_ua"] > 20 and real["p_value"] < 0.05 and real["significant"]
    assert null["p_value"] > 0.05 and not null["significant"]
    assert tests[("full", "from_scratch")]["significant"]
    claims = {v["claim"][:2]: v for v in results["verdicts"]}
    for v in results["verdicts"]:
        assert {"claim", "paper", "here", "verdict"} <= set(v)
    assert claims["1."]["verdict"] == "holds"  # block 4 of 6, far above the final output
    assert claims["2."]["verdict"] == "holds" and claims["4."]["verdict"] == "holds"
    assert claims["3."]["verdict"] == "does not hold"
    assert claims["6."]["verdict"] == "not testable here"
    assert emodb["cma_default"]["default"] == "off"
    lexical = results["lexical"]
    assert lexical["systems"]["full"]["status"] == "done" and len(lexical["tests"]) == 3
    assert lexical["text_only"]["ua"] == 100.0  # the fake sentences name their class
    report = study.out.read_text()
    for heading in ("## 1. Where emotion lives", "## 2. Ablations", "## 3. From scratch",
                    "## 4. What the PPG carries", "## 5. Verdicts"):  # fmt: skip
        assert heading in report
    assert "Command: `python benchmarks/paper.py --corpora emodb" in report
    assert "IEMOCAP" in report and "Not run" not in report
    for png in ("paper_report_probe.png", "paper_report_ablations.png"):
        assert (study.out.parent / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    first = (study.out.read_text(), study.json.read_text())

    # A second call trains nothing: every run is finished with the same settings.
    study.fake.calls.clear()
    assert paper.main(study.common) == 0
    assert study.fake.calls == []
    assert "finished earlier, kept" in capsys.readouterr().out
    assert (study.out.read_text(), study.json.read_text()) == first

    # --report-only regenerates the same report, without launching anything.
    study.out.unlink()
    study.json.unlink()
    assert paper.main([*study.common, "--report-only"]) == 0
    assert study.fake.calls == []
    assert (study.out.read_text(), study.json.read_text()) == first

    # Every finished cross-validation is archived; on a fresh checkout (the run folders gone)
    # the study trains nothing the archive holds and the report keeps every run's numbers.
    kept = sorted(p.name for p in (study.archive / "emodb").iterdir())
    assert len(kept) == 22 and "full_seed1986.json.gz" in kept and "probe.json.gz" in kept
    for run in study.work.glob("emodb/*_seed*"):
        if run.is_dir():
            shutil.rmtree(run)
    assert paper.main([*study.common, "--sections", "probe,ablations,scratch"]) == 0
    assert study.fake.calls == []
    again = json.loads(study.json.read_text())["corpora"]["emodb"]["systems"]
    before = json.loads(first[1])["corpora"]["emodb"]["systems"]
    for name, system in before.items():
        assert again[name]["seeds_done"] == system["seeds_done"]
        assert again[name]["ua_folds"] == pytest.approx(system["ua_folds"])
        assert again[name]["ua_ensemble"] == pytest.approx(system["ua_ensemble"], abs=0.05)
    # an archived run whose settings are not the planned ones is trained again
    (study.archive / "emodb" / "full_seed1986.json.gz").write_bytes(
        gzip.compress(b'{"settings": {"use_cma": false}, "folds": {}}')
    )
    assert paper.main([*study.common, "--sections", "ablations"]) == 0
    assert [Path(n["output_folder"]).name for _, n in study.fake.calls] == ["full_seed1986"]

    # Without the work folder and the feature cache, the archive alone gives the probe and
    # the runs: --report-only on a fresh checkout reports the same numbers.
    study.fake.calls.clear()
    shutil.rmtree(study.work)
    fresh = [*study.common, "--report-only", "--sections", "probe,ablations,scratch"]
    fresh[fresh.index("--cache") + 1] = str(study.work.parent / "no_cache")
    assert paper.main(fresh) == 0
    assert study.fake.calls == [] and not study.work.exists()
    again = json.loads(study.json.read_text())["corpora"]["emodb"]
    assert again["probe"] == json.loads(first[1])["corpora"]["emodb"]["probe"]
    assert again["best_block_used"] == 4
    assert again["systems"]["no_cma"]["ua_folds"] == pytest.approx(before["no_cma"]["ua_folds"])


def test_max_folds_failures_and_missing_runs(study, capsys):
    study.fake.fail = {"no_cma_seed1986"}
    argv = [*study.common, "--max-folds", "2", "--sections", "ablations", "--block-sets", ""]
    assert paper.main(argv) == 1
    captured = capsys.readouterr()
    assert (
        "paper: [emodb] no_cma seed 1986: FAILED: exit status 2: error: something is wrong"
        in captured.err
    )
    assert "1 run(s) failed" in captured.err
    # the other runs went on: 4 ablations x 3 seeds, folds 1-2 only
    assert len(study.fake.calls) == 12
    assert all(named["folds"] == "1,2" for _, named in study.fake.calls)
    results = json.loads(study.json.read_text())
    systems = results["corpora"]["emodb"]["systems"]
    assert systems["no_cma"]["status"] == "partial" and systems["no_cma"]["seeds_done"] == [
        1987,
        1988,
    ]
    assert len(systems["full"]["ua_folds"]) == 2
    assert systems["from_scratch"]["status"] == "not run"
    assert results["failed"][0]["run"] == "[emodb] no_cma seed 1986"
    report = study.out.read_text()
    assert "folds 1..2 of each corpus only (--max-folds 2)" in report
    assert "- emodb, not run: no_cma (seed 1986), from_scratch (seeds 1986, 1987, 1988)" in report
    assert "**Failed in this invocation:** [emodb] no_cma seed 1986" in report
    # a rerun launches only the failed run
    study.fake.fail.clear()
    study.fake.calls.clear()
    assert paper.main(argv) == 0
    assert [Path(n["output_folder"]).name for _, n in study.fake.calls] == ["no_cma_seed1986"]
    assert not list(study.archive.rglob("*_seed*.json.gz"))  # some folds only: not archived


def test_systems_runs_only_the_named_ones(study):
    argv = [*study.common, "--max-folds", "2", "--sections", "ablations", "--block-sets", ""]
    assert paper.main([*argv, "--systems", "no_mmf,best_block", "--seeds", "1986"]) == 0
    names = [Path(n["output_folder"]).name for _, n in study.fake.calls]
    assert names == ["no_mmf_seed1986", "best_block_seed1986"]
    systems = json.loads(study.json.read_text())["corpora"]["emodb"]["systems"]
    assert systems["full"]["status"] == "not run" and systems["no_mmf"]["status"] == "done"


def test_interrupt_is_one_line(study, capsys):
    study.fake.interrupt = True
    assert paper.main([*study.common, "--sections", "ablations"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["paper: interrupted; rerun the same command to resume"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--corpora", "emodb,timit"], "unknown corpus 'timit'"),
        (["--corpora", "emodb,emodb"], "names a corpus twice"),
        (["--seeds", "1,x"], "--seeds takes comma-separated integers"),
        (["--sections", "probe,plots"], "unknown section 'plots'"),
        (["--max-folds", "1"], "--max-folds must be at least 2"),
        (["--systems", "full,tiny"], "unknown system 'tiny' in --systems"),
        (["--block-sets", "2,9"], "block 9 is not one of whisper-base's blocks 1..6"),
        (["--corpora", "ravdess"], "ravdess:"),  # no such folder under --data
        (["--frobnicate"], "unrecognized arguments: --frobnicate"),
    ],
)
def test_bad_arguments_are_one_line(args, expected, data, tmp_path, capsys):
    argv = ["--data", str(data), "--work", str(tmp_path / "w"), "--out", str(tmp_path / "r.md")]
    assert paper.main([*argv, *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("paper: error:") and expected in err[0]
    assert not (tmp_path / "r.md").exists()


# ---------------------------------------------------------------------------------------------
# Statistics and verdict rules on crafted inputs
# ---------------------------------------------------------------------------------------------


def test_module_docstring_examples():
    for module in (paper, paper_report):
        failures, tried = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert tried >= 3 and failures == 0


def test_verdict_rules():
    v = paper_report.verdict
    assert v(["+", "+", "+", "0", "0"]) == "holds"  # 3 of 5
    assert v(["+", "+", "0", "0", "0"]) == "mixed"  # 2 of 5
    assert v(["+", "+", "+", "+", "-"]) == "mixed"  # one corpus against
    assert v(["0", "0", "0", "0", "0"]) == "does not hold"
    assert v(["-", "-", "0"]) == "does not hold"
    assert v(["+", None, None]) == "holds" and v([None] * 5) == "not testable here"
    out = paper_report.outcome
    assert out(None) is None
    assert out({"significant": True, "delta_ua": -3.0}) == "-"
    tests = [
        {"a": "full", "b": b, "significant": sig, "delta_ua": d}
        for b, sig, d in (("no_cma", True, 1.0), ("no_mmf", True, 9.0), ("best_block", False, 0.5))
    ]
    systems = {"no_cma": {"ua_ensemble": 60.0}, "no_mmf": {"ua_ensemble": 50.0},
               "best_block": {"ua_ensemble": 61.0}}  # fmt: skip
    assert paper_report.whole_outcome(tests, systems) == "0"  # not above the strongest
    tests[2]["significant"] = True
    assert paper_report.whole_outcome(tests, systems) == "+"
    tests[0]["delta_ua"] = -1.0
    assert paper_report.whole_outcome(tests, systems) == "-"
    assert paper_report.whole_outcome([], systems) is None


def _probe(best: int, n: int = 6, final_right: float = 0.5) -> dict:
    labels = ["a", "b"] * 40
    right = {str(k): labels for k in range(1, n + 1)}
    flipped = [("b" if y == "a" else "a") if i % 2 else y for i, y in enumerate(labels)]
    predictions = {k: (p if k == str(best) else flipped) for k, p in right.items()}
    predictions["final"] = [y if i % 10 < final_right * 10 else "z" for i, y in enumerate(labels)]
    blocks = {
        k: {"ua": paper_report.unweighted_accuracy(labels, p)} for k, p in predictions.items()
    }
    return {
        "n_blocks": n,
        "blocks": blocks,
        "predictions": predictions,
        "labels": labels,
        "speakers": [f"s{i % 8}" for i in range(80)],
    }


def test_probe_claim_rule():
    mark, detail = paper_report.probe_outcome(_probe(best=4), n_boot=500)
    assert mark == "+" and detail["best_block"] == 4 and detail["depth"] == pytest.approx(4 / 6)
    assert paper_report.probe_outcome(_probe(best=3), n_boot=500)[0] == "-"  # the middle: 0.5
    assert paper_report.probe_outcome(_probe(best=6), n_boot=500)[0] == "-"  # the top block
    assert paper_report.probe_outcome(_probe(best=5, final_right=1.0), n_boot=500)[0] == "-"
    assert paper_report.probe_outcome(None) == (None, None)


def test_paired_test_on_known_ensembles():
    y = np.array(["a", "b"] * 30)
    groups = np.array([f"s{i // 10}" for i in range(60)])
    good = {"utterances": [str(i) for i in range(60)], "y": y, "pred": y.copy(), "groups": groups,
            "ua_folds": {"1": 90.0, "2": 80.0, "3": 85.0}}  # fmt: skip
    bad_pred = np.where(np.arange(60) % 3 == 0, np.where(y == "a", "b", "a"), y)
    bad = {**good, "pred": bad_pred, "ua_folds": {"1": 70.0, "2": 60.0, "3": 65.0}}
    t = paper_report.paired_test("good", good, "bad", bad, n_boot=500)
    assert t["delta_ua"] == pytest.approx(100 - paper_report.unweighted_accuracy(y, bad_pred))
    assert t["mcnemar_b"] == 20 and t["mcnemar_c"] == 0 and t["mcnemar_p"] < 1e-4
    assert t["wilcoxon_delta"] == pytest.approx(20.0) and t["n_folds"] == 3
    same = paper_report.paired_test("good", good, "copy", good, n_boot=500)
    assert same["delta_ua"] == 0 and same["p_raw"] == 1.0 and same["mcnemar_p"] == 1.0
    adjusted = paper_report.adjust([t, same])
    assert adjusted[0]["significant"] and not adjusted[1]["significant"]
    assert adjusted[0]["p_value"] == pytest.approx(2 * t["p_raw"])


def test_run_readers(tmp_path):
    log = tmp_path / "train_log.txt"
    log.write_text("epoch: 1, lr: 1e-3 - x\nEpoch loaded: 1 - test\n")
    assert paper.mmf_weights(log) is None  # no MMF weights logged
    assert paper.mmf_weights(tmp_path / "missing.txt") is None
    save = tmp_path / "save"
    for name, ua, gate in (("CKPT+1", 80.0, 0.5), ("CKPT+2", 70.0, 0.9)):
        (save / name).mkdir(parents=True)
        (save / name / "CKPT.yaml").write_text(f"ua: {ua}\nunixtime: 1.0\n")
        save_torch_atomic(
            {"cma.attn_gate": torch.tensor([gate, 0.0]), "cma.ffn_gate": torch.tensor([0.0, gate])},
            save / name / "head.ckpt",
        )
    gates = paper.cma_gates(save)  # the best validation UA's checkpoint: CKPT+1
    assert gates["attn"] == pytest.approx([np.tanh(0.5), 0.0], abs=1e-6)
    assert paper.cma_gates(tmp_path / "none") is None


# ---------------------------------------------------------------------------------------------
# The scratch encoder
# ---------------------------------------------------------------------------------------------


def test_scratch_encoder_is_random_deterministic_and_shaped_like_whisper_base():
    from qieemo_lobes.encoders import WhisperBlocks
    from qieemo_lobes.whisper_torch import load_encoder_state

    for alias, sizes in ARCHITECTURES.items():  # the table matches the real weights' sizes
        assert load_encoder_state(alias)[1] == sizes
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = ScratchWhisperBlocks("scratch-whisper-base", window="fit", seed=0)
    assert torch.rand(1) == before  # the caller's random state is untouched
    b = ScratchWhisperBlocks("scratch-whisper-base", window="fit", seed=0)
    c = ScratchWhisperBlocks("whisper-base", window="fit", seed=1)
    pretrained = WhisperBlocks("whisper-base", window="fit")
    wavs = 0.1 * torch.randn(2, 16000, generator=torch.Generator().manual_seed(0))
    lens = torch.tensor([1.0, 0.6])
    blocks_a, ppg_a = a(wavs, lens)
    blocks_b, ppg_b = b(wavs, lens)
    blocks_c, _ = c(wavs, lens)
    blocks_p, ppg_p = pretrained(wavs, lens)
    assert blocks_a.shape == blocks_p.shape == (6, 2, 50, 512) and ppg_a.shape == ppg_p.shape
    assert (a.n_blocks, a.block_dim, a.ppg_dim) == (pretrained.n_blocks, pretrained.block_dim, 512)
    assert torch.equal(blocks_a, blocks_b) and torch.equal(ppg_a, ppg_b)  # same seed, same weights
    assert a.identity == b.identity != c.identity
    assert not torch.allclose(blocks_a, blocks_c)
    assert a.identity != pretrained.identity and a.identity.startswith(
        "scratch-whisper-base-seed0-fit-"
    )
    assert (blocks_a - blocks_p).abs().mean() > 0.1 and torch.isfinite(blocks_a).all()
    # the first utterance's frames do not depend on the second (masked padding, as WhisperBlocks)
    alone, _ = a(wavs[:1], torch.tensor([1.0]))
    assert torch.allclose(alone[:, 0], blocks_a[:, 0], atol=1e-4)
    # trainable when not frozen
    trained = ScratchWhisperBlocks("scratch-whisper-tiny.en", freeze=False, unfreeze_top=1)
    out, _ = trained(wavs, lens)
    out.sum().backward()
    assert trained.encoder.blocks[-1].mlp[0].weight.grad is not None
    assert trained.encoder.blocks[0].mlp[0].weight.grad is None
    with pytest.raises(ValueError, match="unknown architecture"):
        ScratchWhisperBlocks("scratch-whisper-large")


def test_recipe_builds_the_scratch_encoder_from_the_override(data):
    """The override paper.py passes: the recipe's settings accept it, record the source, and
    HyperPyYAML builds the scratch encoder in place of WhisperBlocks."""
    import speechbrain as sb
    from hyperpyyaml import load_hyperpyyaml

    from qieemo_lobes.run_folder import check_run_settings

    hparams = paper.recipe_hparams("emodb")
    overrides = paper.render(paper.system_overrides("from_scratch"))
    argv = [str(hparams), f"--data_folder={data / 'emodb'}", "--tune_blocks=0", *overrides]
    hparams_file, _, yaml_overrides = sb.parse_arguments(argv)
    settings, _ = check_run_settings(hparams_file, yaml_overrides)
    assert settings["encoder_source"] == "scratch-whisper-base"
    with open(hparams_file) as fh:
        built = load_hyperpyyaml(fh, yaml_overrides)
    assert isinstance(built["encoder"], ScratchWhisperBlocks)
    assert built["encoder"].window == "fit" and built["encoder"].freeze


def test_failure_line_names_the_folds_own_error(tmp_path):
    fold_log = tmp_path / "fold_2" / "stdout.log"
    fold_log.parent.mkdir()
    fold_log.write_text("loading ...\nerror: --data_folder: no such folder\n")
    cv_log = tmp_path / "cv.log"
    cv_log.write_text(f"fold 2/6 (08): training ...\nfold 2: FAILED (exit 2); see {fold_log}\n"
                      "error: folds [2] failed\n")  # fmt: skip
    assert paper._last_line(cv_log) == "fold 2: error: --data_folder: no such folder"
    assert paper._last_line(tmp_path / "missing.log") == ""


def test_a_verdict_says_on_how_many_of_the_corpora_it_rests():
    row = {"claim": "2. MMF", "paper": "p", "here": "h", "verdict": "holds"}
    partial = {"rule": "rule", "verdicts": [{**row, "per_corpus": {"emodb": "+", "nemo": None}}]}
    whole = {"rule": "rule", "verdicts": [{**row, "per_corpus": {"emodb": "+", "nemo": "+"}}]}
    assert "| **holds** (on 1 of 2 corpora) |" in "\n".join(paper_report._section_verdicts(partial))
    assert "| **holds** |" in "\n".join(paper_report._section_verdicts(whole))


def _fake_run(right: list[bool]) -> dict:
    """A finished one-fold run as ``paper_runs.read_run`` returns it: utterance i is right or
    wrong as ``right[i]`` says (two classes, alternating; two speakers)."""
    utterances = {}
    for i, ok in enumerate(right):
        true = "ab"[i % 2]
        probs = np.array([0.9, 0.1]) if (true == "a") == ok else np.array([0.1, 0.9])
        utterances[f"u{i}"] = {"true": true, "probs": probs, "speaker": f"s{i % 4}", "fold": "1"}
    fold = {"ua": 0.0, "wa": 0.0, "classes": ["a", "b"], "utterances": utterances,
            "weights": None, "gates": None, "wall_time_s": None}  # fmt: skip
    return {"status": "done", "folds": {1: fold}, "settings": {}}


def test_paired_tests_use_the_seeds_both_systems_finished():
    import paper_analysis

    n = 40
    systems = {  # full: seed 1986 as good as no_cma, seed 1987 perfect; no_cma has seed 1986 only
        "full": {1986: _fake_run([i % 4 != 0 for i in range(n)]), 1987: _fake_run([True] * n)},
        "no_cma": {1986: _fake_run([i % 4 != 1 for i in range(n)])},
    }
    ensembles = {s: paper_report.summarise_system(r, n_boot=100)[1] for s, r in systems.items()}
    test = paper_analysis.common_seed_test("emodb", systems, ensembles, "full", "no_cma", 500)
    assert test["seeds"] == [1986] and test["delta_ua"] == 0.0  # seed 1987 left out
    unfair = paper_report.paired_test("full", ensembles["full"], "no_cma", ensembles["no_cma"])
    assert unfair["delta_ua"] != 0.0  # what the two-seed ensemble alone would have claimed
    systems["no_cma"] = {1987: _fake_run([True] * n)}
    ensembles["no_cma"] = paper_report.summarise_system(systems["no_cma"], n_boot=100)[1]
    assert paper_analysis.common_seed_test("x", systems, ensembles, "full", "no_cma", 500)[
        "seeds"
    ] == [1987]
    systems["no_cma"] = {1988: _fake_run([True] * n)}
    ensembles["no_cma"] = paper_report.summarise_system(systems["no_cma"], n_boot=100)[1]
    assert paper_analysis.common_seed_test("x", systems, ensembles, "full", "no_cma", 500) is None
