"""Every emotion recipe's YAMLs build, and their heads run on encoder-shaped input.

The recipes differ only in their YAML; those not trained end to end in the tests (IEMOCAP,
RAVDESS, CREMA-D, URDU, custom, nEMO, EMOVO, TurEV-DB) would otherwise break unseen. Each recipe's
default is ``hparams/qieemo.yaml`` (``python train.py hparams/qieemo.yaml --data_folder=...``);
variants such as ``qieemo_conformer.yaml`` keep their own names.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hyperpyyaml import load_hyperpyyaml

from tests.conftest import REPO_ROOT

RECIPE_FOLDERS = sorted((REPO_ROOT / "recipes").glob("*/emotion"))
DEFAULTS = [folder / "hparams" / "qieemo.yaml" for folder in RECIPE_FOLDERS]
VARIANTS = sorted(
    path
    for folder in RECIPE_FOLDERS
    for path in (folder / "hparams").glob("*.yaml")
    if path.name != "qieemo.yaml"
)


def _load(path: Path, overrides: dict) -> dict:
    with open(path) as fh:
        return load_hyperpyyaml(fh, overrides)


def _overrides(path: Path, tmp_path: Path) -> dict:
    overrides = {"data_folder": str(tmp_path), "output_folder": str(tmp_path / "out")}
    if path.parts[-4] == "custom":  # the labels are the user's
        overrides |= {"classes": ["angry", "happy", "sad"], "n_classes": 3}
    return overrides


def _classify(head: torch.nn.Module, blocks: torch.Tensor, ppg: torch.Tensor) -> torch.Tensor:
    head.eval()
    with torch.no_grad():
        return head(blocks, ppg, torch.tensor([1.0, 0.5]))


def test_every_recipe_has_its_default_yaml_and_readme():
    names = {folder.parent.name for folder in RECIPE_FOLDERS}
    assert {"EmoDB", "RAVDESS", "IEMOCAP", "CREMA-D", "URDU", "custom"} <= names
    assert {"nEMO", "EMOVO", "TurEV-DB"} <= names
    for folder in RECIPE_FOLDERS:
        assert (folder / "hparams" / "qieemo.yaml").is_file(), folder
        assert not (folder / "hparams" / "qieemo_whisper.yaml").exists(), folder  # the old name
        readme = folder / "README.md"
        assert readme.is_file(), folder
        assert "python train.py hparams/qieemo.yaml" in readme.read_text(), readme
        assert "python cross_validate.py hparams/qieemo.yaml" in readme.read_text(), readme


@pytest.mark.parametrize("path", DEFAULTS, ids=lambda p: p.parts[-4])
def test_recipe_builds_and_its_head_classifies(path, tmp_path):
    hparams = _load(path, _overrides(path, tmp_path))
    assert hparams["encoder_source"] == "whisper-base" and hparams["fusion_blocks"] == [2, 3]
    head, n_classes = hparams["head"], hparams["n_classes"]
    assert n_classes == len(hparams["classes"])
    # The retrained encoder block is on by default for RAVDESS only; its copy starts from the
    # pretrained block 3 of whisper-base (512 wide).
    tuned = int(hparams["tune_blocks"])
    assert tuned == (1 if path.parts[-4] == "RAVDESS" else 0)
    assert len(list(head.block_tuner.parameters())) == (
        12 if tuned else 0
    )  # 2 layer norms, 4 linears
    logits = _classify(head, torch.randn(6, 2, 30, 512), torch.randn(2, 30, 512))
    assert logits.shape == (2, n_classes) and bool(logits.isfinite().all())


@pytest.mark.parametrize("path", VARIANTS, ids=lambda p: f"{p.parts[-4]}-{p.stem}")
def test_variant_builds_and_its_head_classifies(path, tmp_path):
    """The variants (the stage-1 Conformer encoder) build without their ASR folder's files."""
    overrides = _overrides(path, tmp_path) | {"asr_folder": str(tmp_path / "asr")}
    hparams = _load(path, overrides)
    n_blocks, ppg_dim = hparams["n_encoder_blocks"], hparams["ppg_dim"]
    assert max(hparams["fusion_blocks"]) <= n_blocks
    blocks = torch.randn(n_blocks, 2, 30, hparams["encoder_dim"])
    logits = _classify(hparams["head"], blocks, torch.randn(2, 30, ppg_dim))
    assert logits.shape == (2, hparams["n_classes"]) and bool(logits.isfinite().all())
