"""Baselines for the accuracy benchmark: openSMILE + linear SVM, and single-block probes.

The benchmark table (``benchmarks/accuracy.py``) compares qieemo with two baselines on the same
speaker-independent folds:

* (b) a logistic-regression probe on the time-mean of one encoder block's output
  (:func:`probe_baseline`, :func:`best_block_probe`);
* (c) openSMILE ComParE_2016 functionals (6373 dimensions) + a linear SVM
  (:func:`opensmile_features`, :func:`svm_baseline`).

Everything is evaluated by :func:`grouped_cv`: leave-one-fold-out, with WA (accuracy), UA (mean
per-class recall, i.e. balanced accuracy), WF1 (support-weighted F1) and MF1 (macro F1) in percent,
per fold and as mean / standard deviation over folds (``np.std``, ddof=0), plus the same metrics on
the pooled predictions of all folds.

This file is run as a script from the repository root, and imported by path from the other
benchmark scripts (``sys.path.insert(0, "benchmarks"); import baselines``). Corpora are read by
the recipes' own ``*_prepare.py`` scripts (:func:`corpus_items`), so every baseline sees the
utterances and folds the recipes' cross-validation sees.

Run (c) on two shared corpora and print the table::

    python benchmarks/baselines.py --out /tmp/baselines_opensmile.json

Author
------
qieemo project
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin, clone
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score
from sklearn.metrics.pairwise import linear_kernel
from sklearn.model_selection import GridSearchCV, LeaveOneGroupOut, cross_val_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

logger = logging.getLogger("baselines")

# --------------------------------------------------------------------------------------------------
# Corpora
# --------------------------------------------------------------------------------------------------

# corpus name -> its recipe's prepare script: the benchmarks read a corpus exactly as the recipe
# does (same utterances, labels, skipped files and folds).
RECIPE_PREPARE = {
    "emodb": "EmoDB/emotion/emodb_prepare.py",
    "ravdess": "RAVDESS/emotion/ravdess_prepare.py",
    "nemo": "nEMO/emotion/nemo_prepare.py",
    "emovo": "EMOVO/emotion/emovo_prepare.py",
    "turev": "TurEV-DB/emotion/turev_prepare.py",
}
RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def _prepare_module(name: str) -> Any:
    """The recipe's ``<corpus>_prepare`` module (recipes are scripts, not a package)."""
    path = RECIPES / RECIPE_PREPARE[name]
    spec = importlib.util.spec_from_file_location(f"{path.stem}_for_benchmarks", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def corpus_items(
    name: str, root: str | Path, classes: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Lists the utterances of a corpus with label, speaker and protocol fold, as its recipe does.

    The corpus is read by its recipe's ``list_utterances`` (``recipes/<Corpus>/emotion/
    <corpus>_prepare.py``): the same utterances, labels and skipped files, and the same folds
    as the recipe's ``cross_validate.py`` (fold ``k`` here is its fold ``k + 1``). EmoDB, nEMO,
    EMOVO and TurEV-DB: leave one speaker out; RAVDESS: 6 folds of 4 actors.

    Arguments
    ---------
    name : str
        One of :data:`RECIPE_PREPARE` (``"emodb"``, ``"ravdess"``, ``"nemo"``, ``"emovo"``,
        ``"turev"``).
    root : str or Path
        The corpus folder.
    classes : sequence of str, optional
        The labels to keep (the recipe's names, e.g. ``["angry", "calm", "happy", "sad"]``);
        default every label. Only the kept utterances' audio is checked.

    Returns
    -------
    list of dict
        ``{"path": str, "label": str, "speaker": str, "fold": int}`` (0-based fold index),
        sorted by path.

    Raises
    ------
    ValueError
        An unknown corpus, or a folder that is not that corpus (the recipe's one-line
        ``LayoutError``).

    Example
    -------
    >>> corpus_items("timit", ".")
    Traceback (most recent call last):
    ...
    ValueError: unknown corpus 'timit' (known: emodb, ravdess, nemo, emovo, turev)
    """
    name = name.lower()
    if name not in RECIPE_PREPARE:
        raise ValueError(f"unknown corpus {name!r} (known: {', '.join(RECIPE_PREPARE)})")
    from qieemo_lobes.manifests_folds import fold_names

    scan = _prepare_module(name).list_utterances(str(root), classes=classes)
    for skipped in scan.skipped:
        logger.warning("%s: skipped (%s)", skipped["path"], skipped["reason"])
    folds = fold_names(scan.records)
    items = [
        {"path": r.wav, "label": r.label, "speaker": r.speaker, "fold": folds.index(r.fold)}
        for r in scan.records
    ]
    return sorted(items, key=lambda item: item["path"])


# --------------------------------------------------------------------------------------------------
# openSMILE features with a cache
# --------------------------------------------------------------------------------------------------

COMPARE_DIM = 6373


class FeatureExtractionError(RuntimeError):
    """Raised after a batch when some files could not be processed (one line per file)."""


def _make_smile() -> Any:
    """The ComParE_2016 functionals extractor (a function so tests can count its uses)."""
    import opensmile

    return opensmile.Smile(
        feature_set=opensmile.FeatureSet.ComParE_2016,
        feature_level=opensmile.FeatureLevel.Functionals,
    )


def _cache_key(paths: Sequence[str]) -> str:
    """Hash of the file list (resolved path, size, mtime) and the openSMILE version / feature set."""
    import opensmile

    h = hashlib.sha256()
    h.update(f"opensmile={opensmile.__version__};ComParE_2016;Functionals\n".encode())
    for p in paths:
        try:
            st = os.stat(p)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        h.update(f"{Path(p).resolve()}\t{stamp}\n".encode())
    return h.hexdigest()


def _publish(tmp: str, dest: Path) -> None:
    """Gives a ``mkstemp`` file (mode 0600) the usual umask permissions and renames it to ``dest``."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, dest)


def _save_npz_atomic(cache_file: Path, **arrays: np.ndarray) -> None:
    """Writes an .npz next to ``cache_file`` and renames it into place (never a torn cache)."""
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache_file.parent, prefix=cache_file.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        _publish(tmp, cache_file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load_cache(cache_file: Path, key: str, n: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Returns (features, done) from a cache made for exactly this key, else None."""
    if not cache_file.is_file():
        return None
    try:
        with np.load(cache_file, allow_pickle=False) as z:
            if str(z["key"]) != key or z["features"].shape != (n, COMPARE_DIM):
                logger.warning(
                    "%s: stale cache (file list or openSMILE changed), recomputing", cache_file
                )
                return None
            return z["features"].copy(), z["done"].copy()
    except (OSError, ValueError, KeyError) as e:
        logger.warning("%s: unreadable cache (%s), recomputing", cache_file, e)
        return None


def opensmile_features(
    paths: Sequence[str | Path],
    cache_file: str | Path,
    *,
    save_every: int = 100,
    progress: bool = True,
    on_error: str = "raise",
) -> np.ndarray:
    """ComParE_2016 functionals (6373 per file) for every file, computed once and cached.

    The cache is an ``.npz`` holding the features, the path list, a ``done`` mask and a key that
    hashes the file list (resolved paths, sizes, modification times) with the openSMILE version, so
    a stale cache is never reused: a different key recomputes from scratch. Partial results are
    saved every ``save_every`` files, and a later call with the same files resumes where the last
    one stopped.

    Files are processed one at a time: about 0.07 s per EmoDB clip (2 s) and 0.08 s per RAVDESS
    clip (about 3.5 s) on this machine; two joblib workers were no faster on the 2 shared cores
    (0.076 vs 0.080 s per clip idle, 0.127 s under load), so there is no parallel path.

    Arguments
    ---------
    paths : sequence of str or Path
        Audio files (any format and sample rate openSMILE reads; the first channel is used).
    cache_file : str or Path
        Where to keep the features (``.npz``).
    save_every : int
        Save the partial cache after this many newly processed files.
    progress : bool
        Show a tqdm progress bar.
    on_error : str
        ``"raise"``: process every file, save the cache, then raise
        :class:`FeatureExtractionError` listing each failed file on one line (a later call retries
        only those). ``"nan"``: log one line per failed file and return NaN rows for them.

    Returns
    -------
    np.ndarray
        ``(len(paths), 6373)`` float32.
    """
    if on_error not in ("raise", "nan"):
        raise ValueError(f"on_error must be 'raise' or 'nan', not {on_error!r}")
    paths = [str(p) for p in paths]
    cache_file = Path(cache_file)
    n = len(paths)
    key = _cache_key(paths)
    cached = _load_cache(cache_file, key, n)
    if cached is None:
        feats = np.full((n, COMPARE_DIM), np.nan, dtype=np.float32)
        done = np.zeros(n, dtype=bool)
    else:
        feats, done = cached

    def save() -> None:
        _save_npz_atomic(
            cache_file, features=feats, done=done, paths=np.array(paths), key=np.array(key)
        )

    todo = np.flatnonzero(~done)
    failures: list[str] = []
    if len(todo):
        if done.any():
            logger.info("%s: resuming, %d of %d files left", cache_file, len(todo), n)
        from tqdm import tqdm

        smile = _make_smile()
        since_save = 0
        for i in tqdm(todo, desc=f"openSMILE {cache_file.name}", disable=not progress):
            try:
                row = smile.process_file(paths[i]).to_numpy(dtype=np.float32).reshape(-1)
                if row.shape != (COMPARE_DIM,):
                    raise ValueError(f"got {row.shape[0]} features, expected {COMPARE_DIM}")
            except Exception as e:  # any unreadable / odd file: note it, go on with the rest
                msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
                failures.append(f"{paths[i]}: {type(e).__name__}: {msg}")
                continue
            feats[i] = row
            done[i] = True
            since_save += 1
            if since_save >= save_every:
                save()
                since_save = 0
        save()
    if failures:
        if on_error == "raise":
            raise FeatureExtractionError(
                f"{len(failures)} of {n} files failed:\n" + "\n".join(failures)
            )
        for line in failures:
            logger.warning("%s", line)
    return feats


# --------------------------------------------------------------------------------------------------
# Grouped cross-validation and the baselines
# --------------------------------------------------------------------------------------------------

METRICS = ("WA", "UA", "WF1", "MF1")
# Scorer names for choosing hyper-parameters by inner CV on the same metrics.
SCORERS = {"WA": "accuracy", "UA": "balanced_accuracy", "WF1": "f1_weighted", "MF1": "f1_macro"}


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """WA, UA, WF1 and MF1 in percent (scikit-learn metrics).

    UA is the mean recall over the classes present in ``y_true`` (``balanced_accuracy_score``): a
    test speaker without any utterance of a class (EmoDB speaker 08 has no disgust) is scored on
    the classes it has; the warning scikit-learn gives for that is silenced here.

    Example
    -------
    >>> m = classification_metrics(np.array([0, 0, 0, 1]), np.array([0, 0, 0, 0]))
    >>> m["WA"], m["UA"]
    (75.0, 50.0)
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        ua = 100.0 * balanced_accuracy_score(y_true, y_pred)
    return {
        "WA": 100.0 * accuracy_score(y_true, y_pred),
        "UA": ua,
        "WF1": 100.0 * f1_score(y_true, y_pred, average="weighted", zero_division=0),
        "MF1": 100.0 * f1_score(y_true, y_pred, average="macro", zero_division=0),
    }


def grouped_cv(
    X: np.ndarray,
    y: Sequence[Any] | np.ndarray,
    folds: Sequence[Any] | np.ndarray,
    make_model: Callable[[], Any],
    *,
    pass_groups: bool = False,
) -> dict[str, Any]:
    """Leave-one-fold-out cross-validation with WA / UA / WF1 / MF1 in percent.

    For every fold value, a fresh model from ``make_model()`` is fitted on the other folds only and
    predicts the held-out fold.

    Arguments
    ---------
    X : np.ndarray
        ``(N, ...)`` features.
    y : sequence
        ``N`` labels (strings or integers).
    folds : sequence
        ``N`` fold (or speaker) ids; one test split per distinct value (``LeaveOneGroupOut``).
    make_model : callable
        Returns an unfitted scikit-learn style classifier (``fit`` / ``predict``).
    pass_groups : bool
        Also pass ``groups=`` (the training rows' fold ids) to ``fit``, for models that tune
        themselves by an inner grouped CV on the training folds (e.g. ``GridSearchCV`` with
        ``LeaveOneGroupOut``).

    Returns
    -------
    dict
        ``folds``: one dict per fold (``fold``, ``n_train``, ``n_test``, the metrics, ``seconds``
        and, when the model has them, ``best_params``); ``mean`` / ``std`` (ddof=0) of each metric
        over folds; ``pooled``: the metrics on all predictions together (with few utterances
        per class and speaker, the mean over folds of UA can be several points below the pooled
        UA: report which one); ``predictions``,
        ``labels``, ``fold_ids`` (arrays aligned with the input); ``classes``; ``seconds``.

    Example
    -------
    >>> from sklearn.dummy import DummyClassifier
    >>> X = np.zeros((6, 1))
    >>> y = np.array(["a", "a", "b", "a", "a", "b"])
    >>> r = grouped_cv(X, y, [0, 0, 0, 1, 1, 1], lambda: DummyClassifier(strategy="most_frequent"))
    >>> round(r["mean"]["WA"], 2), r["mean"]["UA"], r["predictions"].tolist()
    (66.67, 50.0, ['a', 'a', 'a', 'a', 'a', 'a'])
    """
    X = np.asarray(X)
    y = np.asarray(y)
    folds = np.asarray(folds)
    if not len(X) == len(y) == len(folds):
        raise ValueError(f"X, y and folds differ in length: {len(X)}, {len(y)}, {len(folds)}")
    fold_values = np.unique(folds)
    if len(fold_values) < 2:
        raise ValueError(f"need at least 2 folds, got {len(fold_values)}")

    t_all = time.perf_counter()
    predictions = np.empty(len(y), dtype=y.dtype)
    per_fold: list[dict[str, Any]] = []
    for train, test in LeaveOneGroupOut().split(X, y, folds):
        t0 = time.perf_counter()
        model = make_model()
        with warnings.catch_warnings():  # inner-CV UA, see classification_metrics
            warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
            if pass_groups:
                model.fit(X[train], y[train], groups=folds[train])
            else:
                model.fit(X[train], y[train])
        pred = np.asarray(model.predict(X[test]))
        predictions[test] = pred
        entry: dict[str, Any] = {
            "fold": folds[test[0]].item(),
            "n_train": int(len(train)),
            "n_test": int(len(test)),
            **classification_metrics(y[test], pred),
            "seconds": time.perf_counter() - t0,
        }
        if hasattr(model, "best_params_"):
            entry["best_params"] = dict(model.best_params_)
        per_fold.append(entry)

    return {
        "folds": per_fold,
        "mean": {m: float(np.mean([f[m] for f in per_fold])) for m in METRICS},
        "std": {m: float(np.std([f[m] for f in per_fold])) for m in METRICS},
        "pooled": classification_metrics(y, predictions),
        "predictions": predictions,
        "labels": y,
        "fold_ids": folds,
        "classes": np.unique(y).tolist(),
        "seconds": time.perf_counter() - t_all,
    }


# Standardised ComParE vectors (6373 dimensions, a few hundred training clips) are linearly
# separable, so every C >= 1e-3 gives the same hard-margin SVM; the grid spans the soft range.
SVM_C_GRID = (1e-4, 3e-4, 1e-3, 1e-2)


class LinearKernel(TransformerMixin, BaseEstimator):
    """Maps ``X`` to its dot products with the training rows, for ``SVC(kernel="precomputed")``.

    scikit-learn has the function (``linear_kernel``) but no pipeline step for it. One BLAS
    product per fit makes the SVM about twice as fast as ``SVC(kernel="linear")``, which
    computes each dot product of the 6373-dimensional vectors separately, with the same solution.
    """

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> LinearKernel:
        self.X_fit_ = np.asarray(X, dtype=np.float64)
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        return linear_kernel(np.asarray(X, dtype=np.float64), self.X_fit_)


def make_svm(C: float = 1e-3) -> Pipeline:
    """StandardScaler + linear SVM (libsvm ``SVC``, hinge loss, one-vs-one) on a precomputed
    linear kernel (:class:`LinearKernel`).

    Chosen over LinearSVC (liblinear, one-vs-rest, squared hinge), which on EmoDB with ComParE was
    both slower (about 20 s against 2 s per fold on the shared 2 cores) and worse (WA 71-73 for
    every C in 1e-5 .. 1, against 76.8).
    """
    return Pipeline(
        [
            ("scale", StandardScaler()),
            ("kernel", LinearKernel()),
            ("svm", SVC(kernel="precomputed", C=C)),
        ]
    )


def svm_baseline(
    X: np.ndarray,
    y: Sequence[Any] | np.ndarray,
    folds: Sequence[Any] | np.ndarray,
    *,
    C: float | None = None,
    C_grid: Sequence[float] = SVM_C_GRID,
    inner_metric: str = "UA",
) -> dict[str, Any]:
    """Baseline (c): StandardScaler + linear SVM (:func:`make_svm`), leave-one-fold-out.

    With ``C=None`` (the default) C is chosen for each test fold by an inner leave-one-fold-out CV
    on the training folds only (``GridSearchCV`` over ``C_grid``, scored by ``inner_metric``), then
    refitted on all training folds; the test fold is never seen. The chosen C of each fold is in
    ``result["folds"][i]["best_params"]``. A number for ``C`` fixes it instead.

    Arguments
    ---------
    X : np.ndarray
        ``(N, D)`` features, e.g. from :func:`opensmile_features`.
    y, folds : sequence
        Labels and fold ids.
    C : float, optional
        Fixed C; None chooses it by inner CV.
    C_grid : sequence of float
        Candidates for the inner CV.
    inner_metric : str
        ``"WA"``, ``"UA"``, ``"WF1"`` or ``"MF1"``.

    Returns
    -------
    dict
        As :func:`grouped_cv`.

    Example
    -------
    >>> rng = np.random.default_rng(0)
    >>> y = np.tile([0, 1], 30)
    >>> X = rng.normal(size=(60, 5)) + y[:, None]
    >>> r = svm_baseline(X, y, np.repeat([0, 1, 2], 20), C_grid=(0.01, 1.0))
    >>> r["mean"]["WA"] > 70, sorted(r["folds"][0]["best_params"])
    (True, ['svm__C'])
    """
    if C is not None:
        return grouped_cv(X, y, folds, lambda: make_svm(C))

    def make_model() -> GridSearchCV:
        return GridSearchCV(
            make_svm(),
            {"svm__C": list(C_grid)},
            scoring=SCORERS[inner_metric],
            cv=LeaveOneGroupOut(),
            refit=True,
        )

    return grouped_cv(X, y, folds, make_model, pass_groups=True)


def make_probe(C: float = 0.1) -> Pipeline:
    """StandardScaler + multinomial LogisticRegression (lbfgs)."""
    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000))


def probe_baseline(
    X: np.ndarray,
    y: Sequence[Any] | np.ndarray,
    folds: Sequence[Any] | np.ndarray,
    C: float = 0.1,
) -> dict[str, Any]:
    """Baseline (b): standardise + logistic regression (fixed C) on pooled features, e.g. the
    time-mean of one encoder block's output.

    Example
    -------
    >>> rng = np.random.default_rng(0)
    >>> y = np.tile([0, 1], 30)
    >>> X = rng.normal(size=(60, 5)) + y[:, None]
    >>> probe_baseline(X, y, np.repeat([0, 1, 2], 20))["mean"]["UA"] > 70
    True
    """
    return grouped_cv(X, y, folds, lambda: make_probe(C))


class InnerCVBlockProbe(ClassifierMixin, BaseEstimator):
    """A probe that chooses its encoder block by inner grouped CV on its own training data.

    ``X`` is ``(N, n_blocks * D)``: the block means laid side by side. ``fit(X, y, groups)`` scores
    a probe on every block by leave-one-group-out CV over ``groups`` (the training folds), keeps the
    best block (``best_block_``, ``best_params_``) and refits the probe on it.

    Arguments
    ---------
    n_blocks : int
        Number of blocks laid side by side in ``X``.
    C : float
        Logistic-regression C.
    metric : str
        Inner CV metric: ``"WA"``, ``"UA"``, ``"WF1"`` or ``"MF1"``.
    """

    def __init__(self, n_blocks: int = 1, C: float = 0.1, metric: str = "UA") -> None:
        self.n_blocks = n_blocks
        self.C = C
        self.metric = metric

    def _block(self, X: np.ndarray, b: int) -> np.ndarray:
        return X.reshape(len(X), self.n_blocks, -1)[:, b]

    def fit(self, X: np.ndarray, y: np.ndarray, groups: np.ndarray) -> InnerCVBlockProbe:
        X = np.asarray(X)
        self.inner_scores_ = [
            float(
                np.mean(
                    cross_val_score(
                        make_probe(self.C),
                        self._block(X, b),
                        y,
                        groups=groups,
                        cv=LeaveOneGroupOut(),
                        scoring=SCORERS[self.metric],
                    )
                )
            )
            for b in range(self.n_blocks)
        ]
        self.best_block_ = int(np.argmax(self.inner_scores_))
        self.best_params_ = {"block": self.best_block_}
        self.model_ = clone(make_probe(self.C)).fit(self._block(X, self.best_block_), y)
        self.classes_ = self.model_.classes_
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.model_.predict(self._block(np.asarray(X), self.best_block_))


def best_block_probe(
    block_means: np.ndarray,
    y: Sequence[Any] | np.ndarray,
    folds: Sequence[Any] | np.ndarray,
    *,
    C: float = 0.1,
    metric: str = "UA",
    select: str = "test",
) -> dict[str, Any]:
    """Probes every block and reports the best one.

    Every block's probe (:func:`probe_baseline`) is always run and returned in ``per_block``.

    * ``select="test"``: the block with the highest mean test ``metric`` over folds is reported.
      This is OPTIMISTIC: the block is chosen on the very folds it is scored on (a max over
      ``n_blocks`` noisy estimates); report it as "best block, chosen on test folds".
    * ``select="inner"``: for every test fold the block is chosen by an inner leave-one-fold-out CV
      on the training folds only (:class:`InnerCVBlockProbe`), so the reported score is an honest
      estimate; the chosen block of each fold is in ``result["folds"][i]["best_params"]``. It costs
      about ``n_blocks * (n_folds - 1)`` extra fits per test fold.

    Arguments
    ---------
    block_means : np.ndarray
        ``(n_blocks, N, D)``: time-mean of each block's output for every utterance.
    y, folds : sequence
        Labels and fold ids.
    C : float
        Logistic-regression C.
    metric : str
        The metric that picks the block: ``"WA"``, ``"UA"``, ``"WF1"`` or ``"MF1"``.
    select : str
        ``"test"`` or ``"inner"``.

    Returns
    -------
    dict
        ``per_block`` (one :func:`grouped_cv` result per block), ``best_block`` (an int for
        ``"test"``, the list of per-fold choices for ``"inner"``), ``result`` (the reported
        :func:`grouped_cv` result), ``select`` and ``metric``.

    Example
    -------
    >>> rng = np.random.default_rng(0)
    >>> y = np.tile([0, 1], 30)
    >>> noise = rng.normal(size=(2, 60, 4))
    >>> blocks = noise + np.stack([0 * y, 2 * y])[:, :, None]  # only block 1 carries the label
    >>> r = best_block_probe(blocks, y, np.repeat([0, 1, 2], 20), select="inner")
    >>> r["best_block"], r["result"]["mean"]["WA"] > 80
    ([1, 1, 1], True)
    """
    block_means = np.asarray(block_means)
    if block_means.ndim != 3:
        raise ValueError(f"block_means must be (n_blocks, N, D), got shape {block_means.shape}")
    if select not in ("test", "inner"):
        raise ValueError(f"select must be 'test' or 'inner', not {select!r}")
    per_block = [probe_baseline(b, y, folds, C=C) for b in block_means]
    if select == "test":
        best = int(np.argmax([r["mean"][metric] for r in per_block]))
        return {
            "per_block": per_block,
            "best_block": best,
            "result": per_block[best],
            "select": select,
            "metric": metric,
        }
    n_blocks, n, d = block_means.shape
    side_by_side = block_means.transpose(1, 0, 2).reshape(n, n_blocks * d)
    result = grouped_cv(
        side_by_side,
        y,
        folds,
        lambda: InnerCVBlockProbe(n_blocks=n_blocks, C=C, metric=metric),
        pass_groups=True,
    )
    return {
        "per_block": per_block,
        "best_block": [f["best_params"]["block"] for f in result["folds"]],
        "result": result,
        "select": select,
        "metric": metric,
    }


# --------------------------------------------------------------------------------------------------
# Script: baseline (c) on both corpora
# --------------------------------------------------------------------------------------------------


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


TABLE_HEADER = (
    "| corpus  |    N | K |  F |  WA mean ± std |  UA mean ± std | WF1 mean ± std | MF1 mean ± std "
    "| WA pool | UA pool | extract s |   CV s | C chosen |"
)


def _summary_line(corpus: str, r: dict[str, Any], extract_s: float, n: int, k: int) -> str:
    cells = [f"{r['mean'][m]:6.1f} ± {r['std'][m]:4.1f} " for m in METRICS]
    cs = [f["best_params"]["svm__C"] for f in r["folds"] if "best_params" in f]
    chosen = " ".join(f"{c:g}x{cs.count(c)}" for c in sorted(set(cs))) if cs else "fixed"
    return (
        f"| {corpus:7s} | {n:4d} | {k:d} | {len(r['folds']):2d} | "
        + " | ".join(cells)
        + f" | {r['pooled']['WA']:7.1f} | {r['pooled']['UA']:7.1f}"
        + f" | {extract_s:9.1f} | {r['seconds']:6.1f} | {chosen} |"
    )


def main(argv: Sequence[str] | None = None) -> int:
    repo = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(
        description="Baseline (c): openSMILE ComParE_2016 functionals + linear SVM, "
        "speaker-independent folds, on the shared corpora."
    )
    parser.add_argument("--data-root", type=Path, default=repo.parent / "shared" / "data")
    parser.add_argument("--cache-dir", type=Path, default=repo / "cache" / "opensmile")
    parser.add_argument(
        "--corpora", nargs="+", default=["emodb", "ravdess"], choices=list(RECIPE_PREPARE)
    )
    parser.add_argument("--C", type=float, default=None, help="fixed C (default: inner CV)")
    parser.add_argument("--out", type=Path, default=None, help="write all results as JSON here")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    rows, results, errors = [], {}, []
    for corpus in args.corpora:
        try:
            items = corpus_items(corpus, args.data_root / corpus)
            t0 = time.perf_counter()
            X = opensmile_features(
                [it["path"] for it in items],
                args.cache_dir / f"{corpus}_ComParE_2016.npz",
                progress=not args.no_progress,
            )
            extract_s = time.perf_counter() - t0
            y = np.array([it["label"] for it in items])
            folds = np.array([it["fold"] for it in items])
            r = svm_baseline(X, y, folds, C=args.C)
        except (OSError, ValueError, FeatureExtractionError) as e:
            errors.append(f"{corpus}: {e}")
            logger.error("%s: %s", corpus, e)
            continue
        rows.append(_summary_line(corpus, r, extract_s, len(y), len(r["classes"])))
        results[corpus] = {"extract_seconds": extract_s, **r}

    C_note = (
        f"C={args.C:g} fixed" if args.C is not None else "C by inner leave-one-fold-out CV (UA)"
    )
    print(f"\nopenSMILE ComParE_2016 functionals + StandardScaler + linear SVC, {C_note}")
    print(
        "percent; mean ± std (ddof=0) over folds, 'pool' on all folds' predictions together; "
        "'extract s' is just the cache load when the cache was complete"
    )
    print(TABLE_HEADER)
    for row in rows:
        print(row)
    if args.out is not None and results:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=args.out.parent, prefix=args.out.name, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(_jsonable(results), f, indent=1)
        _publish(tmp, args.out)
        print(f"results written to {args.out}")
    if errors:
        print(f"{len(errors)} corpus run(s) failed:", *errors, sep="\n", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
