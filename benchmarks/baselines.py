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

The parts are beside this file, and every name stays importable from here: the corpora in
``baselines_items.py``, the grouped cross-validation and its metrics in ``baselines_cv.py``, the
openSMILE features and the SVM in ``baselines_opensmile.py``, the probes in
``baselines_probe.py``; this file is the script.

Author
------
qieemo project
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from baselines_cv import METRICS, SCORERS, classification_metrics, grouped_cv  # noqa: F401
from baselines_items import RECIPE_PREPARE, RECIPES, _prepare_module, corpus_items  # noqa: F401
from baselines_opensmile import (  # noqa: F401
    COMPARE_DIM,
    SVM_C_GRID,
    FeatureExtractionError,
    LinearKernel,
    _cache_key,
    _load_cache,
    _make_smile,
    _publish,
    _save_npz_atomic,
    make_svm,
    opensmile_cached,
    opensmile_features,
    svm_baseline,
)
from baselines_probe import (  # noqa: F401
    InnerCVBlockProbe,
    best_block_probe,
    make_probe,
    probe_baseline,
)

logger = logging.getLogger("baselines")

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
