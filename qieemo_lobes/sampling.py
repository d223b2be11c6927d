"""Class-balanced sampling of the training set (SpeechBrain's reproducible weighted sampler).

``balanced_sampling: class`` draws every class equally often in expectation; ``fold_class``
draws every (fold, class) pair equally often, which with a cross-corpus manifest (fold = corpus)
balances the corpora and the classes within each: a large corpus no longer dominates training,
nor does a corpus' majority class. Draws are with replacement, as many per epoch as there are
training utterances, reproducible from the seed (SpeechBrain calls ``set_epoch`` each epoch).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from speechbrain.dataio.sampler import ReproducibleWeightedRandomSampler

MODES = ("none", "class", "fold_class")


def balanced_weights(records: Mapping[str, Mapping], mode: str) -> list[float]:
    """One weight per record (in the mapping's order): 1 / the size of its group.

    Arguments
    ---------
    records : mapping
        ``{utterance id: {"emo": label, "fold": fold, ...}}``, the training manifest.
    mode : str
        ``class`` (group = label) or ``fold_class`` (group = (fold, label)).

    Example
    -------
    >>> records = {"a": {"emo": "sad", "fold": "x"}, "b": {"emo": "sad", "fold": "x"},
    ...            "c": {"emo": "angry", "fold": "x"}, "d": {"emo": "sad", "fold": "y"}}
    >>> balanced_weights(records, "class")
    [0.3333333333333333, 0.3333333333333333, 1.0, 0.3333333333333333]
    >>> balanced_weights(records, "fold_class")
    [0.5, 0.5, 1.0, 1.0]
    """
    if mode not in MODES[1:]:
        raise ValueError(f"balanced_sampling must be one of {', '.join(MODES)}, not {mode!r}")

    def group(record: Mapping) -> tuple:
        return (record["emo"],) if mode == "class" else (str(record.get("fold", "")), record["emo"])

    sizes = Counter(group(record) for record in records.values())
    return [1.0 / sizes[group(record)] for record in records.values()]


def balanced_sampler(
    records: Mapping[str, Mapping], mode: str, seed: int
) -> ReproducibleWeightedRandomSampler:
    """A sampler drawing ``len(records)`` training utterances per epoch, balanced by ``mode``.

    Example
    -------
    >>> records = {str(i): {"emo": "sad" if i else "angry", "fold": "x"} for i in range(100)}
    >>> drawn = list(balanced_sampler(records, "class", seed=1))
    >>> len(drawn), 20 < drawn.count(0) < 80  # the single angry utterance: about half the draws
    (100, True)
    """
    weights = balanced_weights(records, mode)
    return ReproducibleWeightedRandomSampler(
        weights, num_samples=len(weights), replacement=True, seed=seed
    )
