"""``norm_group: fold``: per-fold (in a cross-corpus manifest, per-corpus) feature
normalisation, and its one-line refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from qieemo_lobes.errors import RecipeError
from qieemo_lobes.recipe import _fold_statistics
from qieemo_lobes.run_folder import check_run_settings
from tests.conftest import REPO_ROOT

CUSTOM = REPO_ROOT / "recipes" / "custom" / "emotion" / "hparams" / "qieemo.yaml"


def entry(value: float, frames: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """A fake cache entry: 2 blocks x ``frames`` x 3 dims, and a PPG of ``frames`` x 2."""
    return torch.full((2, frames, 3), value), torch.full((frames, 2), value)


def test_every_speaker_of_a_fold_gets_the_fold_statistics():
    # Corpus a: speakers a1 (value 0) and a2 (value 2); corpus b: speaker b1 (value 10).
    records = {
        "u1": {"spk_id": "a1", "fold": "a"},
        "u2": {"spk_id": "a2", "fold": "a"},
        "u3": {"spk_id": "b1", "fold": "b"},
    }
    values = {"u1": 0.0, "u2": 2.0, "u3": 10.0, "u1@90": 4.0}
    entries = {utt: Path(utt) for utt in values}
    variants = {"u1": [("", Path("u1")), ("@90", Path("u1@90"))]}
    stats = _fold_statistics(entries, records, variants, read=lambda p: entry(values[p.name]))
    (a_mean, a_std), _ = stats["a1"]["blocks"], stats["a1"]["ppg"]
    assert torch.allclose(a_mean, torch.tensor(1.0, dtype=a_mean.dtype))  # mean of 0 and 2
    assert torch.allclose(a_std, torch.tensor(1.0, dtype=a_std.dtype))
    assert stats["a1"] is stats["a2"]  # one corpus, one set of statistics
    assert torch.allclose(stats["b1"]["blocks"][0], torch.tensor(10.0, dtype=a_mean.dtype))
    # The speed copy is a voice of its own, standardised with the copies of its fold.
    assert torch.allclose(stats["a1@90"]["blocks"][0], torch.tensor(4.0, dtype=a_mean.dtype))


def test_a_speaker_in_two_folds_is_one_line():
    records = {"u1": {"spk_id": "s", "fold": "a"}, "u2": {"spk_id": "s", "fold": "b"}}
    entries = {utt: Path(utt) for utt in records}
    with pytest.raises(RecipeError, match="speaker s is in folds a and b"):
        _fold_statistics(entries, records, None, read=lambda p: entry(0.0))


def test_unknown_norm_group_is_one_line(tmp_path):
    data = tmp_path / "data.csv"
    data.write_text("path,label\n")
    overrides = [f"--data_folder={data}", "--classes=[a, b]", "--n_classes=2"]
    check_run_settings(str(CUSTOM), [*overrides, "--norm_group=fold"])  # accepted
    with pytest.raises(RecipeError, match="norm_group must be speaker or fold"):
        check_run_settings(str(CUSTOM), [*overrides, "--norm_group=corpus"])


def test_cross_corpus_options_train_end_to_end(tmp_path, emodb_dir):
    """The custom recipe on a two-"corpus" CSV (fold = corpus) with per-corpus normalisation
    and corpus-and-class balanced sampling: trains, tests the held-out corpus, and the
    sampler draws other utterances each epoch (SpeechBrain's set_epoch reaches it)."""
    import json
    import subprocess
    import sys

    from tests.conftest import TINY_WHISPER

    wavs = sorted(emodb_dir.glob("*.wav"))
    rows = ["path,label,speaker,fold"]
    letters = {"W": "angry", "T": "sad", "N": "neutral"}
    for wav in wavs:
        speaker, letter = wav.name[:2], wav.name[5]
        if speaker in ("03", "08", "09") and letter in letters:
            corpus = "a" if speaker in ("03", "08") else "b"
            rows.append(f"{wav},{letters[letter]},{speaker},{corpus}")
    manifest = tmp_path / "two_corpora.csv"
    manifest.write_text("\n".join(rows) + "\n")
    out = tmp_path / "run"
    command = [
        sys.executable, "train.py", "hparams/qieemo.yaml", f"--data_folder={manifest}",
        f"--output_folder={out}", f"--feature_cache={tmp_path / 'cache'}", "--test_fold=b",
        "--classes=[angry, neutral, sad]", "--n_classes=3", *TINY_WHISPER,
        "--number_of_epochs=2", "--batch_size=8", "--valid_split=utterance",
        "--speaker_norm=True", "--norm_group=fold", "--balanced_sampling=fold_class",
    ]  # fmt: skip
    result = subprocess.run(
        command, cwd=CUSTOM.parents[1], capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "test_metrics.json").read_text())
    assert metrics["fold"] == "b" and metrics["n_test"] > 0 and 0 <= metrics["ua"] <= 100


def test_balanced_sampler_draws_anew_each_epoch():
    from qieemo_lobes.sampling import balanced_sampler

    records = {str(i): {"emo": "sad" if i % 10 else "angry", "fold": "x"} for i in range(200)}
    sampler = balanced_sampler(records, "class", seed=3)
    first = list(sampler)
    assert first == list(sampler)  # reproducible within an epoch
    sampler.set_epoch(1)
    second = list(sampler)
    assert first != second
    angry = sum(int(i) % 10 == 0 for i in first + second) / len(first + second)
    assert 0.4 < angry < 0.6  # 10 % of the utterances, half of the draws
