"""Baseline (c) of the accuracy benchmark: openSMILE ComParE_2016 functionals + a linear SVM.

- :func:`opensmile_features`: the 6373 functionals of every file, computed once and kept in an
  ``.npz`` cache (resumed after an interruption, recomputed when the files or openSMILE change);
- :func:`make_svm`, :func:`svm_baseline`: StandardScaler + linear SVM on a precomputed linear
  kernel (:class:`LinearKernel`), C chosen by an inner leave-one-fold-out CV, evaluated by
  :func:`baselines_cv.grouped_cv`.

``baselines.py`` re-exports these names (tests replace ``_make_smile`` and ``make_svm`` here,
where :func:`opensmile_features` and :func:`svm_baseline` look them up).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from baselines_cv import SCORERS, grouped_cv
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.metrics.pairwise import linear_kernel
from sklearn.model_selection import GridSearchCV, LeaveOneGroupOut
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

logger = logging.getLogger("baselines")

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
    """Hash of the files' contents, in order, and the openSMILE version / feature set.

    Contents, not sizes and modification times: the shared corpora are copied afresh for each
    session, which changes every mtime and would recompute every corpus' features each time.
    """
    import opensmile

    from qieemo_lobes.features import FeatureCacheError, content_key

    h = hashlib.sha256()
    h.update(f"opensmile={opensmile.__version__};ComParE_2016;Functionals\n".encode())
    for p in paths:
        try:
            stamp = content_key(str(p))
        except FeatureCacheError:
            stamp = "missing"
        h.update(f"{stamp}\n".encode())
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


def opensmile_cached(paths: Sequence[str | Path], cache_file: str | Path) -> bool:
    """Whether :func:`opensmile_features` would read every file's features from ``cache_file``
    (made for exactly these files, all done) instead of computing some."""
    paths = [str(p) for p in paths]
    cached = _load_cache(Path(cache_file), _cache_key(paths), len(paths))
    return cached is not None and bool(cached[1].all())


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
# The linear SVM
# --------------------------------------------------------------------------------------------------

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
