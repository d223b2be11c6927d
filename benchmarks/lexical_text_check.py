"""Does the text carry the label? A text-only classifier on the lexical corpus and on nEMO.

:func:`text_only_baseline` (TF-IDF of words and word pairs + logistic regression) is trained on
transcripts only: on a generated lexical corpus' train fold and tested on its held-out sentences
(:func:`corpus_text_check`: the words must carry the label there), and on nEMO, leave one
speaker out (:func:`nemo_text_check`: its sentences are spoken in every emotion, so the text
should not). ``lexical_corpus.py`` re-exports every name.

Example
-------
>>> out = text_only_baseline(["i am glad", "i am sad"], ["happy", "sad"], ["glad"], ["happy"])
>>> out["predictions"], out["n_classes"]
(['happy'], 2)
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from lexical_synthesis import MANIFEST, read_manifest

from qieemo_lobes.stats import speaker_bootstrap_ci, unweighted_accuracy

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------- text only


def text_only_baseline(
    train_texts: Sequence[str],
    train_labels: Sequence[str],
    test_texts: Sequence[str],
    test_labels: Sequence[str],
) -> dict[str, Any]:
    """A text-only classifier: TF-IDF of words and word pairs + logistic regression.

    Returns
    -------
    dict
        ``ua`` (percent, on the test texts), ``chance`` (``100 / n_classes``, percent, the UA of
        any constant or random guess), ``n_classes`` (classes in the training labels),
        ``n_train``, ``n_test``, ``predictions`` (one per test text).

    Example
    -------
    >>> out = text_only_baseline(["so glad", "so sad", "very glad", "very sad"],
    ...                          ["happy", "sad", "happy", "sad"], ["glad", "sad"], ["happy", "sad"])
    >>> out["ua"], out["chance"]
    (100.0, 50.0)
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    if len(train_texts) != len(train_labels) or len(test_texts) != len(test_labels):
        raise ValueError("texts and labels of different lengths")
    if not len(train_texts) or not len(test_texts):
        raise ValueError("no training or no test texts")
    n_classes = len(set(train_labels))
    if n_classes < 2:
        raise ValueError(f"the training labels hold {n_classes} class; 2 or more needed")
    model = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
        LogisticRegression(max_iter=2000),
    )
    model.fit(list(train_texts), list(train_labels))
    predictions = [str(p) for p in model.predict(list(test_texts))]
    return {
        "ua": unweighted_accuracy(test_labels, predictions),
        "chance": 100.0 / n_classes,
        "n_classes": n_classes,
        "n_train": len(train_texts),
        "n_test": len(test_texts),
        "predictions": predictions,
    }


def corpus_text_check(out: str | Path) -> dict[str, Any]:
    """:func:`text_only_baseline` trained on a generated corpus' train fold, tested on its test fold.

    ``ua_unseen_words`` is the UA on the test sentences that hold a held-out feeling word (all
    of them unless ``held_out_words=0``).
    """
    rows = read_manifest(Path(out) / MANIFEST)
    train = [r for r in rows if r["fold"] == "train"]
    test = [r for r in rows if r["fold"] == "test"]
    result = text_only_baseline(
        [r["text"] for r in train],
        [r["label"] for r in train],
        [r["text"] for r in test],
        [r["label"] for r in test],
    )
    unseen = [i for i, r in enumerate(test) if r["unseen_words"] == "1"]
    if unseen:
        result["ua_unseen_words"] = unweighted_accuracy(
            [test[i]["label"] for i in unseen], [result["predictions"][i] for i in unseen]
        )
    return result


def _recipe_module(relative: str) -> Any:
    """A recipe's prepare script as a module (recipes are scripts, not a package)."""
    path = REPO / "recipes" / relative
    spec = importlib.util.spec_from_file_location(f"{path.stem}_for_lexical_corpus", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def nemo_text_check(nemo_root: str | Path, n_boot: int = 2000) -> dict[str, Any]:
    """Does nEMO's text carry its label? The text-only baseline, leave one speaker out.

    The corpus is read by the nEMO recipe (``recipes/nEMO/emotion/nemo_prepare.py``: the same
    utterances, labels and speakers; transcripts from ``data.tsv``'s ``raw_text``). For each
    speaker, :func:`text_only_baseline` is trained on the other speakers' transcripts and tested
    on that speaker's.

    Returns
    -------
    dict
        ``ua_mean``, ``ua_std`` (over the speaker folds, ddof=0), ``ua_per_fold``, ``ua_pooled``
        (UA of all folds' predictions) with its speaker-bootstrap ``ci_low`` / ``ci_high``
        (95 %), ``chance`` (``100 / n_classes``), ``n_classes``, ``classes``, ``n_utterances``,
        ``n_sentences``, ``n_speakers``.
    """
    scan = _recipe_module("nEMO/emotion/nemo_prepare.py").list_utterances(str(nemo_root))
    records = [r for r in scan.records if r.utt_id in scan.transcripts]
    if not records:
        raise ValueError(f"nemo: {nemo_root}: no utterance with a transcript")
    texts = np.array([scan.transcripts[r.utt_id] for r in records], dtype=object)
    labels = np.array([r.label for r in records])
    speakers = np.array([r.speaker for r in records])
    predictions = np.empty(len(records), dtype=object)
    per_fold = {}
    for speaker in sorted(set(speakers)):
        test = speakers == speaker
        out = text_only_baseline(texts[~test], labels[~test], texts[test], labels[test])
        predictions[test] = out["predictions"]
        per_fold[speaker] = out["ua"]
    ua, low, high = speaker_bootstrap_ci(labels, predictions.astype(str), speakers, n_boot=n_boot)
    classes = sorted(set(labels))
    return {
        "ua_mean": float(np.mean(list(per_fold.values()))),
        "ua_std": float(np.std(list(per_fold.values()))),
        "ua_per_fold": per_fold,
        "ua_pooled": ua,
        "ci_low": low,
        "ci_high": high,
        "chance": 100.0 / len(classes),
        "n_classes": len(classes),
        "classes": classes,
        "n_utterances": len(records),
        "n_sentences": len(set(texts)),
        "n_speakers": len(per_fold),
    }
