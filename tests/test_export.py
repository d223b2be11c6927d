"""python -m qieemo_lobes.export: never over a folder it was not asked to replace, never a
broken head.

Every test reuses the tiny whisper-tiny.en run trained once per session by
``tests.test_interfaces.tiny_run`` (the ``exported`` fixture).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from qieemo_lobes.classify import DEFAULT_MODEL_DIR
from qieemo_lobes.export import main
from tests.conftest import REPO_ROOT
from tests.test_interfaces import _best_checkpoint, exported  # noqa: F401 (module fixture)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_export_refuses_a_non_empty_folder_unless_forced(exported, tmp_path, capsys):  # noqa: F811
    """The issue: exporting over the shipped default model replaced it and deleted its card."""
    run, _ = exported
    target = tmp_path / "default_model"
    shutil.copytree(DEFAULT_MODEL_DIR, target)
    before = _files(target)
    assert main([str(run), str(target)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"export: {target.absolute()}: exists and is not empty (an earlier export); pass --force "
        "to replace it whole, files the export does not write (MODEL_CARD.md...) included"
    ]
    assert _files(target) == before  # untouched, MODEL_CARD.md included

    assert main([str(run), str(target), "--force"]) == 0
    out = capsys.readouterr().out
    assert "removed: MODEL_CARD.md" in out
    best = _best_checkpoint(run)
    assert (target / "head.ckpt").read_bytes() == (best / "head.ckpt").read_bytes()
    assert json.loads((target / "metadata.json").read_text())["source_run"] == str(run)

    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    assert main([str(run), str(other), "--force"]) == 2  # not an export: never replaced
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not an exported model" in err[0] and str(other) in err[0]
    assert _files(other) == {"keep.txt": b"mine"}

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(run), str(empty)]) == 0  # an empty folder needs no --force
    assert (empty / "head.ckpt").is_file()
    assert _leftovers(tmp_path) == []


def _damage(head: Path, damage: str) -> None:
    if damage.startswith("cut_"):
        head.write_bytes(head.read_bytes()[: int(damage[4:])])
        return
    state = torch.load(head, weights_only=True)
    if damage in ("nan", "inf"):
        key = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
        state[key].view(-1)[1] = float(damage)
    elif damage == "missing_key":
        del state[next(iter(state))]
    elif damage == "pickled":
        state = {**state, "hook": shutil.rmtree}
    torch.save(state, head)


@pytest.mark.parametrize(
    "damage, problem",
    [
        ("cut_1000", ": truncated or corrupt checkpoint (PytorchStreamReader"),
        ("cut_0", ": truncated or corrupt checkpoint (EOFError)"),
        ("nan", " holds NaN or infinite weights (training diverged)"),
        ("inf", " holds NaN or infinite weights (training diverged)"),
        ("missing_key", ": does not fit the run's head (Missing key(s) in state_dict"),
        ("pickled", ": holds Python objects, not only tensors"),
    ],
)
def test_export_refuses_a_broken_head_before_writing(
    exported,  # noqa: F811
    tmp_path,
    capsys,
    damage,
    problem,
):
    """A 1000-byte head.ckpt exported with exit 0; so did a diverged (NaN) head, which then
    labelled every clip "angry" with confidence NaN."""
    run = tmp_path / "run"
    shutil.copytree(exported[0], run, symlinks=True)
    head = _best_checkpoint(run) / "head.ckpt"
    _damage(head, damage)
    target = tmp_path / "model"
    assert main([str(run), str(target)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"export: {head}{problem}"), err
    assert not target.exists() and _leftovers(tmp_path) == []


def test_export_refuses_a_damaged_label_encoder(exported, tmp_path, capsys):  # noqa: F811
    run = tmp_path / "run"
    shutil.copytree(exported[0], run, symlinks=True)
    labels = run / "save" / "label_encoder.txt"
    labels.write_text("'angry' => 0\n'sad")
    assert main([str(run), str(tmp_path / "model")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"export: {labels}: truncated or corrupt label encoder ("
    )
    assert not (tmp_path / "model").exists()


def test_train_default_model_replaces_the_model_and_keeps_its_card(
    exported,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    """tools/train_default_model.py writes the default model through the export (force) and the
    new folder appears with its MODEL_CARD.md; the recipe runs are stood in for by the tiny run."""
    spec = importlib.util.spec_from_file_location(
        "train_default_model", REPO_ROOT / "tools" / "train_default_model.py"
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    work, out = tmp_path / "work", tmp_path / "default_model"
    chosen, other = list(tool.CANDIDATES)[:2]  # the best mean UA below: chosen

    def run_variant(name, utterances, corpora, folder, cache, extra=(), train=None):
        ua = 50.0 if name == chosen else 40.0
        fold = {"n_test": 10, "wa": ua, "ua": ua, "wf1": ua, "confusion": [[1, 0], [0, 1]]}
        for corpus in corpora:  # the held-out predictions the shipped temperature is fitted on
            (folder / name / corpus).mkdir(parents=True, exist_ok=True)
            rows = ["utterance,true,predicted,angry,happy,neutral,sad"]
            rows += [f"u{i},angry,{'angry' if i % 2 else 'sad'},0.6,0.1,0.1,0.2" for i in range(10)]
            (folder / name / corpus / "predictions.csv").write_text("\n".join(rows) + "\n")
        return {c: {"folder": str(folder / name / c), **fold} for c in corpora}

    utterances = {
        c: [{"path": f"/{c}/{i}.wav", "label": label, "speaker": f"{c}_1", "corpus": c}
            for i, label in enumerate(("angry", "happy", "neutral", "sad"))]
        for c in ("emodb", "ravdess")
    }  # fmt: skip
    monkeypatch.setattr(tool.loco_study, "run_variant", run_variant)
    monkeypatch.setattr(tool.cross_corpus, "read_corpora", lambda *args: utterances)
    monkeypatch.setattr(tool.cross_corpus, "map_classes", lambda raw, mode: raw)
    shutil.copytree(exported[0], work / f"final_{chosen}", symlinks=True)
    shutil.copytree(DEFAULT_MODEL_DIR, out)  # the earlier default model, card included

    commands = []

    def run(command: list[str]) -> None:  # recipes: skipped; anything else: run for real
        commands.append(command)
        if "-m" in command:
            subprocess.run(command, cwd=REPO_ROOT, check=True, timeout=300)

    monkeypatch.setattr(tool, "run", run)
    argv = ["--corpora", "emodb,ravdess", "--candidates", f"{chosen},{other}"]
    assert tool.main([*argv, "--work", str(work), "--out", str(out)]) == 0
    best = _best_checkpoint(work / f"final_{chosen}")
    assert (out / "head.ckpt").read_bytes() == (best / "head.ckpt").read_bytes()
    # The model's temperature is the one fitted on the held-out corpora's predictions.
    calibration = json.loads((out / "metadata.json").read_text())["calibration"]
    assert "leave-one-corpus-out" in calibration["fitted_on"] and calibration["n_valid"] == 20
    temperature = f"temperature: {round(calibration['temperature'], 6)!r}"
    assert temperature in (out / "hyperparams.yaml").read_text().splitlines()
    assert "leave-one-corpus-out runs" in (out / "README.md").read_text()
    card = (out / "MODEL_CARD.md").read_text()
    assert card.startswith("# Model card: qieemo default emotion recognizer")
    assert f"--corpora emodb,ravdess --candidates {chosen},{other}" in card
    assert sorted(p.name for p in tmp_path.iterdir()) == ["default_model", "work"]


def test_export_carries_the_temperature_and_the_calibration(exported, tmp_path):  # noqa: F811
    """The run's calibration.json: T in hyperparams.yaml (a plain number the safe check
    accepts), the whole report in metadata.json, the ECE before and after in README.md."""
    from qieemo_lobes.model_folder import check_model_folder

    run, model = exported
    calibration = json.loads((run / "calibration.json").read_text())
    lines = (model / "hyperparams.yaml").read_text().splitlines()
    assert f"temperature: {calibration['temperature']!r}" in lines
    check_model_folder(model)
    assert json.loads((model / "metadata.json").read_text())["calibration"] == calibration
    if not calibration["fitted"]:  # the tiny run's dozen validation utterances: T = 1
        assert f"not calibrated ({calibration['note']})" in (model / "README.md").read_text()
        # A run with a fitted temperature: its own calibration.json, exported the same way.
        run = tmp_path / "run"
        shutil.copytree(exported[0], run, symlinks=True)
        calibration.update(fitted=True, temperature=1.75, ece_valid_after=3.25)
        calibration.update(ece_test_before=12.5, ece_test_after=4.0)
        calibration.pop("note")
        (run / "calibration.json").write_text(json.dumps(calibration))
        model = tmp_path / "model"
        assert main([str(run), str(model)]) == 0
        assert "temperature: 1.75" in (model / "hyperparams.yaml").read_text().splitlines()
        check_model_folder(model)
    readme = (model / "README.md").read_text()
    assert f"T = {calibration['temperature']:.3g}" in readme
    for split, name in (("valid", "validation"), ("test", "test")):
        before, after = calibration[f"ece_{split}_before"], calibration[f"ece_{split}_after"]
        assert f"{name} {before:.1f} % -> {after:.1f} %" in readme


def test_export_of_a_run_without_calibration_has_no_temperature(exported, tmp_path):  # noqa: F811
    """Runs made before calibration.json existed export as before: no temperature (T = 1)."""
    from qieemo_lobes.interfaces import EmotionRecognizer

    run = tmp_path / "run"
    shutil.copytree(exported[0], run, symlinks=True)
    (run / "calibration.json").unlink()
    model = tmp_path / "model"
    assert main([str(run), str(model)]) == 0
    assert "temperature" not in (model / "hyperparams.yaml").read_text()
    assert json.loads((model / "metadata.json").read_text())["calibration"] is None
    assert "not calibrated" in (model / "README.md").read_text()
    assert EmotionRecognizer.from_hparams(source=str(model)).temperature == 1.0


@pytest.mark.parametrize(
    "content",
    [
        '{"temperature": -1.0}',
        '{"temperature": 0}',
        '{"temperature": NaN}',
        '{"temperature": "1.5"}',
        '{"temperature": true}',
        '{"n_valid": 3}',
        "[1.5]",
        '{"temperature": 1.5',
    ],
)
def test_export_refuses_a_bad_calibration_file(exported, tmp_path, capsys, content):  # noqa: F811
    run = tmp_path / "run"
    shutil.copytree(exported[0], run, symlinks=True)
    (run / "calibration.json").write_text(content)
    assert main([str(run), str(tmp_path / "model")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"export: {run / 'calibration.json'}: "), err
    assert not (tmp_path / "model").exists() and _leftovers(tmp_path) == []
