"""Every emotion recipe's whisper YAML builds, and its head runs on encoder-shaped input.

The recipes differ only in their YAML; those not trained end to end in the tests (IEMOCAP,
RAVDESS, CREMA-D, URDU, custom) would otherwise break unseen.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hyperpyyaml import load_hyperpyyaml

from tests.conftest import REPO_ROOT

RECIPES = sorted((REPO_ROOT / "recipes").glob("*/emotion/hparams/qieemo_whisper.yaml"))


def _load(path: Path, overrides: dict) -> dict:
    with open(path) as fh:
        return load_hyperpyyaml(fh, overrides)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.parts[-4])
def test_recipe_builds_and_its_head_classifies(path, tmp_path):
    overrides = {"data_folder": str(tmp_path), "output_folder": str(tmp_path / "out")}
    if path.parts[-4] == "custom":  # the labels are the user's
        overrides |= {"classes": ["angry", "happy", "sad"], "n_classes": 3}
    hparams = _load(path, overrides)
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
    blocks, ppg = torch.randn(6, 2, 30, 512), torch.randn(2, 30, 512)
    head.eval()
    with torch.no_grad():
        logits = head(blocks, ppg, torch.tensor([1.0, 0.5]))
    assert logits.shape == (2, n_classes) and bool(logits.isfinite().all())
