"""Protocol folds and the train/valid/test split of one test fold, for the emotion recipes.

Folds are part of a corpus's protocol, fixed by the prepare script:

- :func:`contiguous_group_folds`: runs of naturally sorted groups (sessions, actors),
- :func:`balanced_group_folds`: whole speakers into folds of balanced size,
- :func:`stratified_folds`: class-stratified folds of single utterances (not speaker
  independent), drawn with the fixed :data:`FOLD_SEED`.

:func:`split_for_test_fold` picks one test fold (a fold name or a 1-based index into
:func:`fold_names`, resolved by :func:`resolve_test_fold`; ``"none"`` tests on nothing) and draws
the validation set from the training folds only, by speaker or by utterance (:data:`VALID_SPLITS`).

Example
-------
>>> import dataclasses
>>> recs = [Utterance(f"u{i}", "/x.wav", "sad", spk, "", 1.0) for i, spk in enumerate("aabbcd")]
>>> folds = contiguous_group_folds([r.speaker for r in recs], 2, "spk")
>>> folds
{'a': 'spka-b', 'b': 'spka-b', 'c': 'spkc-d', 'd': 'spkc-d'}
>>> recs = [dataclasses.replace(r, fold=folds[r.speaker]) for r in recs]
>>> fold_names(recs), resolve_test_fold(fold_names(recs), 2)
(['spka-b', 'spkc-d'], 'spkc-d')
>>> splits = split_for_test_fold(recs, 2, valid_ratio=0.25)
>>> {k: [r.speaker for r in v] for k, v in splits.items()}
{'train': ['b', 'b'], 'valid': ['a', 'a'], 'test': ['c', 'd']}
"""

from __future__ import annotations

import random
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence

from qieemo_lobes.manifests_scan import Utterance, natural_key

VALID_SPLITS = ("speaker", "utterance")
# Folds are part of the protocol: they must not move when the training seed changes, so the
# random fold assignments (stratified folds of a CSV without speakers) use this fixed seed.
FOLD_SEED = 1986


# ---------------------------------------------------------------------------------------------
# Folds
# ---------------------------------------------------------------------------------------------


def contiguous_group_folds(
    groups: Iterable[str], n_folds: int, prefix: str = "fold"
) -> dict[str, str]:
    """Split the naturally sorted distinct groups into ``n_folds`` contiguous runs.

    Run sizes differ by at most one group (the first runs take the extra ones); each fold is
    named ``<prefix><first>-<last>`` (``<prefix><first>`` for a run of one group).

    Example
    -------
    >>> contiguous_group_folds(["1003", "1001", "1002", "1004", "1005"], 2, "actors")
    {'1001': 'actors1001-1003', '1002': 'actors1001-1003', '1003': 'actors1001-1003', \
'1004': 'actors1004-1005', '1005': 'actors1004-1005'}
    """
    distinct = sorted(set(groups), key=natural_key)
    n_folds = max(1, min(n_folds, len(distinct)))
    base, extra = divmod(len(distinct), n_folds)
    mapping, start = {}, 0
    for k in range(n_folds):
        run = distinct[start : start + base + (k < extra)]
        start += len(run)
        name = f"{prefix}{run[0]}" if len(run) == 1 else f"{prefix}{run[0]}-{run[-1]}"
        mapping.update(dict.fromkeys(run, name))
    return mapping


def balanced_group_folds(groups: Sequence[str], n_folds: int = 5) -> dict[str, str]:
    """Assign whole groups (speakers) to ``n_folds`` folds of balanced size, ``fold1``...

    Uses scikit-learn's ``GroupKFold`` (largest group first into the smallest fold), which is
    deterministic; ``groups`` has one entry per utterance.

    Example
    -------
    >>> balanced_group_folds(["a"] * 4 + ["b"] * 2 + ["c"] * 2, 2)
    {'a': 'fold1', 'b': 'fold2', 'c': 'fold2'}
    """
    from sklearn.model_selection import GroupKFold  # imported here: slow, few scripts need it

    distinct = sorted(set(groups), key=natural_key)
    n_folds = min(n_folds, len(distinct))
    if n_folds < 2:
        return dict.fromkeys(distinct, "fold1")
    mapping: dict[str, str] = {}
    for k, (_, test) in enumerate(GroupKFold(n_splits=n_folds).split(groups, groups=groups)):
        mapping.update({groups[i]: f"fold{k + 1}" for i in test})
    return dict(sorted(mapping.items(), key=lambda kv: natural_key(kv[0])))


def stratified_folds(labels: Sequence[str], n_folds: int = 5, seed: int = FOLD_SEED) -> list[str]:
    """Per-utterance fold names ``fold1``... from scikit-learn's shuffled ``StratifiedKFold``.

    Not speaker independent. Each fold needs a member of some class, so when even the largest
    class has fewer than ``n_folds`` utterances, only that many folds are made.

    Example
    -------
    >>> folds = stratified_folds(["sad"] * 4 + ["happy"] * 4, 2, seed=0)
    >>> sorted(Counter(zip(folds, ["sad"] * 4 + ["happy"] * 4)).values())
    [2, 2, 2, 2]
    """
    from sklearn.model_selection import StratifiedKFold

    largest_class = max(Counter(labels).values(), default=0)
    n_folds = min(n_folds, largest_class)
    if n_folds < 2:
        return ["fold1"] * len(labels)
    folds = [""] * len(labels)
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # "least populated class has only N members": expected here
        warnings.simplefilter("ignore", UserWarning)
        for k, (_, test) in enumerate(splitter.split(list(labels), list(labels))):
            for i in test:
                folds[i] = f"fold{k + 1}"
    return folds


# ---------------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------------


NO_TEST_FOLD = "none"  # test_fold value that trains on every fold and tests on nothing


def fold_names(records: Iterable[Utterance]) -> list[str]:
    """The distinct folds in natural order; ``test_fold=K`` picks the K-th (1-based)."""
    return sorted({r.fold for r in records}, key=natural_key)


def resolve_test_fold(folds: Sequence[str], test_fold: int | str) -> str:
    """Turn ``test_fold`` (a fold name, or a 1-based index into ``folds``) into a fold name.

    An ``int`` is always an index; a string is a fold name, or an index when it is all digits and
    no fold has that name; ``"none"`` (:data:`NO_TEST_FOLD`) stays ``"none"``: no test fold.

    Example
    -------
    >>> resolve_test_fold(["03", "08", "10"], 2), resolve_test_fold(["03", "08", "10"], "10")
    ('08', '10')
    """
    if isinstance(test_fold, bool):
        raise ValueError(f"test_fold must be a fold name or a 1-based index, not {test_fold!r}")
    if isinstance(test_fold, str):
        name = test_fold.strip()
        if name in folds or name == NO_TEST_FOLD:
            return name
        if not name.isdigit():
            raise ValueError(f"test_fold {name!r} is not one of the folds {list(folds)}")
        test_fold = int(name)
    if not 1 <= int(test_fold) <= len(folds):
        hint = (
            f" (a fold named '{test_fold}' is picked by name only)"
            if str(test_fold) in folds
            else ""
        )
        raise ValueError(
            f"test_fold {test_fold} is out of range: 1..{len(folds)} for folds {list(folds)}{hint}"
        )
    return folds[int(test_fold) - 1]


def _valid_by_speaker(train: list[Utterance], ratio: float, rng: random.Random) -> set[str]:
    counts = Counter(r.speaker for r in train)
    speakers = sorted(counts, key=natural_key)
    if len(speakers) < 2:
        raise ValueError(
            f"valid_split='speaker' needs at least 2 training speakers, found {speakers}; "
            "use valid_split='utterance'"
        )
    rng.shuffle(speakers)
    target = ratio * len(train)
    chosen: set[str] = set()
    total = 0
    # Greedy in seeded random order: take a speaker when it brings the total closer to the
    # target; always at least one speaker, and never every training speaker.
    for spk in speakers:
        if len(chosen) == len(speakers) - 1:
            break
        if not chosen or abs(total + counts[spk] - target) < abs(total - target):
            chosen.add(spk)
            total += counts[spk]
    return chosen


def _valid_by_utterance(train: list[Utterance], ratio: float, rng: random.Random) -> set[str]:
    # Own per-class draw rather than sklearn's train_test_split(stratify=...), which refuses
    # classes with a single member; largest remainders make the total round(ratio * n).
    by_label: dict[str, list[str]] = {}
    for r in sorted(train, key=lambda r: natural_key(r.utt_id)):
        by_label.setdefault(r.label, []).append(r.utt_id)
    n_valid = min(max(1, round(ratio * len(train))), len(train) - 1)
    exact = {lab: ratio * len(ids) for lab, ids in by_label.items()}
    take = {lab: int(x) for lab, x in exact.items()}
    order = sorted(exact, key=lambda lab: (-(exact[lab] - take[lab]), lab))
    for lab in order[: max(0, n_valid - sum(take.values()))]:
        take[lab] += 1
    chosen: set[str] = set()
    for lab in sorted(by_label):
        ids = by_label[lab]
        rng.shuffle(ids)
        chosen.update(ids[: take[lab]])
    return chosen


def split_for_test_fold(
    records: Sequence[Utterance],
    test_fold: int | str,
    valid_split: str = "speaker",
    valid_ratio: float = 0.1,
    seed: int = 1986,
) -> dict[str, list[Utterance]]:
    """Train/valid/test for one test fold; valid comes from the training folds only.

    Arguments
    ---------
    records : sequence of Utterance
        All utterances of the corpus.
    test_fold : int or str
        Fold name, or 1-based index into :func:`fold_names`; ``"none"`` tests on nothing and
        trains on every fold (a final model, once the folds have been cross-validated).
    valid_split : str
        ``"speaker"``: hold out whole training speakers, about ``valid_ratio`` of the training
        utterances, at least one speaker. ``"utterance"``: a class-stratified random
        ``valid_ratio`` of the training utterances.
    valid_ratio : float
        In ``[0, 1)``; 0 gives an empty validation set.
    seed : int
        Seed of the validation draw (the folds do not depend on it).

    Returns
    -------
    dict
        ``{"train": [...], "valid": [...], "test": [...]}``, each sorted by id.

    Example
    -------
    >>> recs = [Utterance(f"u{i}", "/x.wav", "sad", f"s{i % 3}", f"f{i % 3}", 1.0)
    ...         for i in range(9)]
    >>> {k: len(v) for k, v in split_for_test_fold(recs, "f0").items()}
    {'train': 3, 'valid': 3, 'test': 3}
    """
    if valid_split not in VALID_SPLITS:
        raise ValueError(f"valid_split must be one of {VALID_SPLITS}, not {valid_split!r}")
    if not 0 <= float(valid_ratio) < 1:
        raise ValueError(f"valid_ratio must be in [0, 1), not {valid_ratio!r}")
    test_name = resolve_test_fold(fold_names(records), test_fold)
    test = [r for r in records if r.fold == test_name]
    train = [r for r in records if r.fold != test_name]
    if not train:
        raise ValueError(f"test fold {test_name!r} holds every utterance; nothing left to train")
    rng = random.Random(seed)
    if valid_ratio == 0:
        valid_ids: set[str] = set()
    elif valid_split == "speaker":
        held_out = _valid_by_speaker(train, float(valid_ratio), rng)
        valid_ids = {r.utt_id for r in train if r.speaker in held_out}
    else:
        if len(train) < 2:
            raise ValueError("valid_split='utterance' needs at least 2 training utterances")
        valid_ids = _valid_by_utterance(train, float(valid_ratio), rng)

    def by_id(items: Iterable[Utterance]) -> list[Utterance]:
        return sorted(items, key=lambda r: natural_key(r.utt_id))

    return {
        "train": by_id(r for r in train if r.utt_id not in valid_ids),
        "valid": by_id(r for r in train if r.utt_id in valid_ids),
        "test": by_id(test),
    }
