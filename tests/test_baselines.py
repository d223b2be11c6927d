"""Tests for benchmarks/baselines.py: folds on the real corpora, metrics, fold hygiene, openSMILE."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.linear_model import LogisticRegression

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import baselines  # noqa: E402
import baselines_opensmile  # noqa: E402  (_make_smile and make_svm are patched in their home)

# ------------------------------------------------------------------------------------ folds


def _check_disjoint_speakers(items: list[dict]) -> dict[int, set[str]]:
    by_fold: dict[int, set[str]] = {}
    fold_of: dict[str, int] = {}
    for it in items:
        by_fold.setdefault(it["fold"], set()).add(it["speaker"])
        assert fold_of.setdefault(it["speaker"], it["fold"]) == it["fold"], it
    return by_fold


def test_emodb_folds_leave_one_speaker_out(emodb_dir: Path) -> None:
    items = baselines.corpus_items("emodb", emodb_dir)
    assert len(items) == 535
    by_fold = _check_disjoint_speakers(items)
    assert sorted(by_fold) == list(range(10))
    assert all(len(s) == 1 for s in by_fold.values())
    assert {s for ss in by_fold.values() for s in ss} == {
        "03", "08", "09", "10", "11", "12", "13", "14", "15", "16",
    }  # fmt: skip
    counts = Counter(it["label"] for it in items)
    # Counts of the README: W 127, L 81, N 79, F 71, A 69, T 62, E 46.
    assert counts == {
        "angry": 127, "bored": 81, "neutral": 79, "happy": 71, "fearful": 69, "sad": 62,
        "disgust": 46,
    }  # fmt: skip
    letters = {"W": "angry", "L": "bored", "E": "disgust", "A": "fearful", "F": "happy",
               "T": "sad", "N": "neutral"}  # fmt: skip
    for it in items:  # label and speaker come from the file name, not from anything else
        name = Path(it["path"]).name
        assert it["speaker"] == name[:2]
        assert it["label"] == letters[name[5]]


def test_ravdess_folds_of_four_actors(ravdess_dir: Path) -> None:
    items = baselines.corpus_items("ravdess", ravdess_dir)
    assert len(items) == 1434  # 1440 less the 6 files missing from the shared copy
    by_fold = _check_disjoint_speakers(items)
    assert sorted(by_fold) == list(range(6))
    codes = {"01": "neutral", "02": "calm", "03": "happy", "04": "sad", "05": "angry",
             "06": "fearful", "07": "disgust", "08": "surprised"}  # fmt: skip
    for f, speakers in by_fold.items():
        assert {int(s) for s in speakers} == set(range(4 * f + 1, 4 * f + 5))
    for it in items:
        path = Path(it["path"])
        assert int(path.parent.name.split("_")[1]) == int(it["speaker"])
        assert it["label"] == codes[path.name.split("-")[2]]


def test_corpus_items_are_the_recipe_folds(tmp_path: Path, emodb_dir: Path) -> None:
    """The baselines' fold k is fold k + 1 of the recipe's cross-validation (its test set)."""
    import importlib.util

    from tests.conftest import REPO_ROOT

    path = REPO_ROOT / "recipes" / "EmoDB" / "emotion" / "emodb_prepare.py"
    spec = importlib.util.spec_from_file_location("emodb_prepare_for_test", path)
    prepare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prepare)
    items = baselines.corpus_items("emodb", emodb_dir)
    for k in (1, 7):
        prepare.prepare_emodb(
            emodb_dir, tmp_path / "tr.json", tmp_path / "va.json", tmp_path / "te.json", test_fold=k
        )
        test = {
            Path(r["wav"]).name for r in json.loads((tmp_path / "te.json").read_text()).values()
        }
        assert test == {Path(it["path"]).name for it in items if it["fold"] == k - 1}


def test_corpus_items_bad_layouts(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist or is not a folder"):
        baselines.corpus_items("emodb", tmp_path / "missing")
    with pytest.raises(ValueError, match="no usable utterances|expected"):
        baselines.corpus_items("emodb", tmp_path)


# ------------------------------------------------------------------------------------ metrics


class EchoModel:
    """Predicts the label stored in column 0 of X (so the predictions are set by hand)."""

    def fit(self, X: np.ndarray, y: np.ndarray) -> EchoModel:
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return X[:, 0].astype(int)


def test_grouped_cv_metrics_by_hand() -> None:
    y = np.array([0, 0, 0, 1, 0, 1, 1, 1])
    pred = np.array([0, 0, 0, 0, 0, 1, 1, 0])
    folds = np.array([7, 7, 7, 7, 3, 3, 3, 3])
    r = baselines.grouped_cv(pred[:, None], y, folds, EchoModel)
    by_fold = {f["fold"]: f for f in r["folds"]}
    # Fold 7: three 0 right, the one 1 missed. UA = (1 + 0) / 2 differs from WA = 3/4.
    # F1(0) = 2 * 0.75 * 1 / 1.75 = 6/7, F1(1) = 0.
    assert by_fold[7]["WA"] == pytest.approx(75.0)
    assert by_fold[7]["UA"] == pytest.approx(50.0)
    assert by_fold[7]["WF1"] == pytest.approx(100 * 0.75 * 6 / 7)
    assert by_fold[7]["MF1"] == pytest.approx(100 * 3 / 7)
    # Fold 3: y 0 1 1 1, pred 0 1 1 0. Recall 1 and 2/3; F1(0) = 2/3, F1(1) = 0.8.
    assert by_fold[3]["WA"] == pytest.approx(75.0)
    assert by_fold[3]["UA"] == pytest.approx(100 * (1 + 2 / 3) / 2)
    assert by_fold[3]["WF1"] == pytest.approx(100 * (0.25 * 2 / 3 + 0.75 * 0.8))
    assert by_fold[3]["MF1"] == pytest.approx(100 * (2 / 3 + 0.8) / 2)
    assert (by_fold[3]["n_train"], by_fold[3]["n_test"]) == (4, 4)
    assert r["mean"]["UA"] == pytest.approx((50 + 250 / 3) / 2)
    assert r["std"]["UA"] == pytest.approx((250 / 3 - 50) / 2)
    assert r["std"]["WA"] == pytest.approx(0.0)
    assert r["pooled"]["WA"] == pytest.approx(75.0)
    np.testing.assert_array_equal(r["predictions"], pred)
    assert r["classes"] == [0, 1]


def test_grouped_cv_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        baselines.grouped_cv(np.zeros((3, 1)), [0, 1, 0], [0, 1], EchoModel)
    with pytest.raises(ValueError, match="at least 2 folds"):
        baselines.grouped_cv(np.zeros((2, 1)), [0, 1], [5, 5], EchoModel)


# ------------------------------------------------------------------------------------ fold hygiene

FIT_LOG: list[set[int]] = []  # module level: GridSearchCV clones the estimators it fits


class RowRecorder(TransformerMixin, BaseEstimator):
    """Records the row ids (column 0) it is fitted on, and drops that column."""

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> RowRecorder:
        FIT_LOG.append(set(X[:, 0].astype(int).tolist()))
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        return X[:, 1:]


def _toy(n_folds: int = 4, per_fold: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    n = n_folds * per_fold
    y = np.tile([0, 1, 2], n // 3)
    folds = np.repeat(np.arange(n_folds), per_fold)
    feats = rng.normal(size=(n, 3)) + np.eye(3)[y] * 2
    return np.column_stack([np.arange(n), feats]), y, folds


def test_grouped_cv_never_fits_on_the_test_fold() -> None:
    X, y, folds = _toy()
    fitted: list[set[int]] = []

    class Recording:
        def fit(self, X, y):
            fitted.append(set(X[:, 0].astype(int).tolist()))
            self.model = LogisticRegression().fit(X[:, 1:], y)
            return self

        def predict(self, X):
            return self.model.predict(X[:, 1:])

    r = baselines.grouped_cv(X, y, folds, Recording)
    assert len(fitted) == 4
    for seen, fold in zip(fitted, r["folds"], strict=True):
        assert seen == set(np.flatnonzero(folds != fold["fold"]).tolist())


def test_svm_inner_cv_never_sees_the_test_fold(monkeypatch: pytest.MonkeyPatch) -> None:
    X, y, folds = _toy()
    real_make_svm = baselines.make_svm

    def make_svm(C: float = 1e-3):
        pipe = real_make_svm(C)
        pipe.steps.insert(0, ("record", RowRecorder()))
        return pipe

    monkeypatch.setattr(baselines_opensmile, "make_svm", make_svm)
    FIT_LOG.clear()
    grid = (0.01, 1.0)
    r = baselines.svm_baseline(X, y, folds, C_grid=grid)
    per_outer = len(grid) * 3 + 1  # grid x inner folds, then the refit on all training folds
    assert len(FIT_LOG) == 4 * per_outer
    for i, fold in enumerate(r["folds"]):
        test_rows = set(np.flatnonzero(folds == fold["fold"]).tolist())
        chunk = FIT_LOG[i * per_outer : (i + 1) * per_outer]
        assert all(not (rows & test_rows) for rows in chunk)
        assert chunk[-1] == set(range(len(y))) - test_rows  # the refit uses all training folds
        assert fold["best_params"]["svm__C"] in grid
    assert r["mean"]["WA"] > 60  # the toy classes are separable enough


def test_best_block_probe_inner_and_test_selection() -> None:
    _, y, folds = _toy(n_folds=4, per_fold=15, seed=1)
    rng = np.random.default_rng(1)
    blocks = rng.normal(size=(3, len(y), 4))
    blocks[2] += np.eye(3)[y] @ rng.normal(size=(3, 4)) * 3  # only block 2 carries the label
    inner = baselines.best_block_probe(blocks, y, folds, select="inner")
    assert inner["best_block"] == [2, 2, 2, 2]
    assert len(inner["per_block"]) == 3
    test = baselines.best_block_probe(blocks, y, folds, select="test")
    assert test["best_block"] == 2
    assert test["result"] is test["per_block"][2]
    assert test["per_block"][2]["mean"]["UA"] > test["per_block"][0]["mean"]["UA"] + 20
    np.testing.assert_array_equal(inner["result"]["predictions"], test["result"]["predictions"])


# ------------------------------------------------------------------------------------ openSMILE


REAL_MAKE_SMILE = baselines._make_smile


class CountingSmile:
    """Wraps the real extractor, counts files and can stop after a number of them."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.smile = REAL_MAKE_SMILE()
        self.calls: list[str] = []
        self.stop_after = stop_after

    def process_file(self, path: str):
        if self.stop_after is not None and len(self.calls) == self.stop_after:
            raise KeyboardInterrupt  # an interrupted run
        self.calls.append(path)
        return self.smile.process_file(path)


def test_opensmile_features_cache(
    emodb_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = [str(p) for p in sorted(emodb_dir.glob("*.wav"))[:3]]
    cache = tmp_path / "feats.npz"
    smiles: list[CountingSmile] = []

    def make(stop_after: int | None = None):
        def _make():
            smiles.append(CountingSmile(stop_after))
            return smiles[-1]

        monkeypatch.setattr(baselines_opensmile, "_make_smile", _make)

    # An interrupted run keeps what it had saved (every file here), and the next one resumes.
    assert not baselines.opensmile_cached(paths, cache)  # no cache yet
    make(stop_after=2)
    with pytest.raises(KeyboardInterrupt):
        baselines.opensmile_features(paths, cache, save_every=1, progress=False)
    assert not baselines.opensmile_cached(paths, cache)  # a partial cache is not "cached"
    make()
    X = baselines.opensmile_features(paths, cache, progress=False)
    assert baselines.opensmile_cached(paths, cache)
    assert not baselines.opensmile_cached(paths[:2], cache)  # another file list: stale
    assert smiles[-1].calls == paths[2:]
    assert X.shape == (3, baselines.COMPARE_DIM) and np.isfinite(X).all()
    assert not np.allclose(X[0], X[1])

    # Same list: read from the cache, no extractor made.
    def fail():
        raise AssertionError("cache not reused")

    monkeypatch.setattr(baselines_opensmile, "_make_smile", fail)
    np.testing.assert_array_equal(baselines.opensmile_features(paths, cache, progress=False), X)
    # The same bytes copied afresh (new modification times, as the shared corpora each session):
    # still the cache's files.
    copies = []
    for path in paths:
        copies.append(str(tmp_path / "copy" / Path(path).name))
        Path(copies[-1]).parent.mkdir(exist_ok=True)
        shutil.copyfile(path, copies[-1])
        os.utime(copies[-1], (1.0e9, 1.0e9))
    assert baselines.opensmile_cached(copies, cache)
    with open(copies[0], "r+b") as fh:  # one changed byte of audio: stale
        fh.seek(-1, os.SEEK_END)
        last = fh.read(1)
        fh.seek(-1, os.SEEK_END)
        fh.write(bytes([last[0] ^ 1]))
    assert not baselines.opensmile_cached(copies, cache)

    # A different list invalidates the cache: everything is computed again.
    make()
    X2 = baselines.opensmile_features(paths[:2], cache, progress=False)
    assert smiles[-1].calls == paths[:2]
    np.testing.assert_allclose(X2, X[:2], rtol=1e-6)


def test_opensmile_features_bad_file(emodb_dir: Path, tmp_path: Path) -> None:
    good = tmp_path / "good.wav"
    shutil.copy(sorted(emodb_dir.glob("*.wav"))[0], good)
    bad = tmp_path / "broken.wav"
    bad.write_text("not audio")
    cache = tmp_path / "feats.npz"
    with pytest.raises(baselines.FeatureExtractionError, match=r"1 of 2 files failed:\n.*broken"):
        baselines.opensmile_features([bad, good], cache, progress=False)
    X = baselines.opensmile_features([bad, good], cache, progress=False, on_error="nan")
    assert np.isnan(X[0]).all() and np.isfinite(X[1]).all()
