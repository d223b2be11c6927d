"""The utterances of the cross-corpus matrix (``benchmarks/cross_corpus.py``): each corpus read
as its recipe reads it, its labels mapped to the four shared classes, and the training and test
utterances of a split.

- :func:`class_map`: the labels of a corpus kept and the class each one counts as (TurEV-DB's
  calm: neutral or left out);
- :func:`read_corpora`: every utterance of each corpus (:func:`baselines.corpus_items`);
- :func:`map_classes`: those utterances in the four classes for one TurEV-DB mode;
- :func:`split_data`: a split's training and test utterances and the classes learnt;
- :func:`class_counts`: utterances per class.

``cross_corpus.py`` re-exports these names.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import baselines
from corpora_classes import CLASSES, TUREV_CALM, Split


def class_map(corpus: str, turev_calm: str = "neutral") -> dict[str, str]:
    """``{recipe label: class}`` of a corpus: the labels kept and the class each one counts as.

    Example
    -------
    >>> class_map("ravdess")  # calm is left out
    {'angry': 'angry', 'happy': 'happy', 'neutral': 'neutral', 'sad': 'sad'}
    >>> class_map("turev", "neutral"), class_map("turev", "drop")
    ({'angry': 'angry', 'happy': 'happy', 'sad': 'sad', 'calm': 'neutral'}, {'angry': 'angry', 'happy': 'happy', 'sad': 'sad'})
    """
    if turev_calm not in TUREV_CALM:
        raise ValueError(f"turev_calm must be one of {TUREV_CALM}, not {turev_calm!r}")
    if corpus != "turev":
        return {label: label for label in CLASSES}
    mapping = {"angry": "angry", "happy": "happy", "sad": "sad"}
    if turev_calm == "neutral":
        mapping["calm"] = "neutral"
    return mapping


def read_corpora(
    corpora: Sequence[str], data: str | Path, modes: Sequence[str]
) -> dict[str, list[dict]]:
    """Every utterance of each corpus with a label some mode keeps, as its recipe reads it.

    Returns ``{corpus: [{"path", "label" (the recipe's), "speaker" (prefixed by the corpus),
    "corpus"}]}``. Raises ``ValueError`` (the recipes' one-line ``LayoutError`` among them) for a
    missing or wrong folder.
    """
    raw = {}
    for corpus in corpora:
        labels = sorted({label for mode in modes for label in class_map(corpus, mode)})
        items = baselines.corpus_items(corpus, Path(data) / corpus, classes=labels)
        raw[corpus] = [
            {
                "path": item["path"],
                "label": item["label"],
                "speaker": f"{corpus}_{item['speaker']}",
                "corpus": corpus,
            }
            for item in items
        ]
    return raw


def map_classes(raw: dict[str, list[dict]], turev_calm: str) -> dict[str, list[dict]]:
    """The utterances of every corpus in the four classes for one TurEV-DB mode.

    Each utterance keeps its recipe label as ``source``; ``label`` becomes its class.

    Example
    -------
    >>> raw = {"turev": [{"path": "a.flac", "label": "calm", "speaker": "turev_1", "corpus": "turev"}]}
    >>> [u["label"] for u in map_classes(raw, "neutral")["turev"]], map_classes(raw, "drop")["turev"]
    (['neutral'], [])
    """
    mapped = {}
    for corpus, items in raw.items():
        mapping = class_map(corpus, turev_calm)
        mapped[corpus] = [
            {**item, "source": item["label"], "label": mapping[item["label"]]}
            for item in items
            if item["label"] in mapping
        ]
    return mapped


def split_data(
    split: Split, utterances: dict[str, list[dict]]
) -> tuple[list[dict], list[dict], list[str]]:
    """``(train, test, classes)`` of a split: the training corpora's utterances, the test
    corpus' utterances of the classes learnt, and those classes (the four, or angry, happy and
    sad when the training corpora have no neutral: TurEV-DB alone without calm).

    Example
    -------
    >>> u = {"turev": [{"path": "t", "label": "sad"}],
    ...      "emodb": [{"path": "e1", "label": "neutral"}, {"path": "e2", "label": "sad"}]}
    >>> train, test, classes = split_data(Split(("turev",), "emodb"), u)
    >>> [x["path"] for x in train], [x["path"] for x in test], classes
    (['t'], ['e2'], ['sad'])
    """
    train = [u for corpus in split.train for u in utterances[corpus]]
    present = {u["label"] for u in train}
    classes = [c for c in CLASSES if c in present]
    test = [u for u in utterances[split.test] if u["label"] in classes]
    return train, test, classes


def class_counts(utterances: Iterable[dict]) -> dict[str, int]:
    """``{class: n}`` in :data:`CLASSES` order (classes with no utterance left out)."""
    labels = [u["label"] for u in utterances]
    return {c: labels.count(c) for c in CLASSES if c in labels}
