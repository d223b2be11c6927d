"""Baseline (b) of the accuracy benchmark: logistic-regression probes on the time-mean of one
encoder block's output.

- :func:`make_probe`, :func:`probe_baseline`: standardise + logistic regression (fixed C) on
  pooled features, leave-one-fold-out (:func:`baselines_cv.grouped_cv`);
- :class:`InnerCVBlockProbe`: a probe that chooses its block by inner grouped CV on its own
  training data (``cross_corpus.py`` and ``robustness.py`` fit it directly);
- :func:`best_block_probe`: every block probed, the best one reported (chosen on the test
  folds, or honestly by the inner CV).

``baselines.py`` re-exports these names.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from baselines_cv import SCORERS, grouped_cv
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import LeaveOneGroupOut, cross_val_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler


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
