"""The corpora, classes and splits of the cross-corpus matrix, and the probe's settings.

Shared by ``benchmarks/cross_corpus.py`` (which reads the corpora, runs qieemo and the probe on
each split) and ``benchmarks/cross_corpus_report.py`` (which tabulates the runs), so that the
report needs no import of ``cross_corpus.py``; ``cross_corpus.py`` re-exports every name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

CORPORA = ("emodb", "ravdess", "nemo", "emovo", "turev")
NAMES = {
    "emodb": "EmoDB",
    "ravdess": "RAVDESS",
    "nemo": "nEMO",
    "emovo": "EMOVO",
    "turev": "TurEV-DB",
}
CLASSES = ("angry", "happy", "neutral", "sad")
TUREV_CALM = ("neutral", "drop")
# corpus -> {class: the corpus' own label counted as it}; the recipes name every label in English
# (EmoDB's W is "angry", ...), so the mapping is the identity but for TurEV-DB's calm.
SOURCES = {
    "emodb": {"angry": "W anger", "happy": "F happiness", "neutral": "N neutral", "sad": "T sadness"},
    "ravdess": {"angry": "05 angry", "happy": "03 happy", "neutral": "01 neutral", "sad": "04 sad"},
    "nemo": {"angry": "anger", "happy": "happiness", "neutral": "neutral", "sad": "sadness"},
    "emovo": {"angry": "rab anger", "happy": "gio joy", "neutral": "neu neutral", "sad": "tri sadness"},
    "turev": {"angry": "Angry (kz)", "happy": "Happy (mt)", "neutral": "Calm (sk)", "sad": "Sad (hl)"},
}  # fmt: skip
LEFT_OUT = {
    "emodb": "boredom, disgust, fear",
    "ravdess": "calm, fearful, disgust, surprised",
    "nemo": "fear, surprised",
    "emovo": "disgust, fear, surprise",
    "turev": "",
}
# The probe: its encoder (fit window), its C and the folds of its block choice.
PROBE_ENCODER = "whisper-base"
PROBE_C = 0.1
PROBE_INNER_FOLDS = 5


@dataclasses.dataclass(frozen=True)
class Split:
    """Trained on ``train`` (corpora), tested on ``test`` (one other corpus)."""

    train: tuple[str, ...]
    test: str

    @property
    def corpora(self) -> tuple[str, ...]:
        """Every corpus of the split, in :data:`CORPORA` order."""
        return tuple(c for c in CORPORA if c in self.train or c == self.test)

    def name(self, turev_calm: str) -> str:
        """The split's folder name; the TurEV-DB mode is part of it only when TurEV-DB is in it.

        Example
        -------
        >>> Split(("emodb",), "ravdess").name("drop")
        'train-emodb_test-ravdess'
        >>> Split(("emodb", "ravdess"), "turev").name("drop")
        'train-emodb+ravdess_test-turev_turev-calm-drop'
        """
        name = f"train-{'+'.join(self.train)}_test-{self.test}"
        return name + (f"_turev-calm-{turev_calm}" if "turev" in self.corpora else "")


def plan_splits(corpora: Sequence[str], pairs: bool = True, loco: bool = True) -> list[Split]:
    """The pairs (trained on one corpus, tested on each other) and the leave-one-corpus-out
    splits (trained on all the others); with two corpora the two kinds are the same splits.

    Example
    -------
    >>> [s.name("neutral") for s in plan_splits(["emodb", "ravdess", "nemo"], pairs=False)]
    ['train-ravdess+nemo_test-emodb', 'train-emodb+nemo_test-ravdess', 'train-emodb+ravdess_test-nemo']
    >>> len(plan_splits(CORPORA)), len(plan_splits(["emodb", "ravdess"]))
    (25, 2)
    """
    corpora = [c for c in CORPORA if c in corpora]
    splits = []
    if pairs:
        splits += [Split((a,), b) for a in corpora for b in corpora if a != b]
    if loco:
        splits += [Split(tuple(c for c in corpora if c != test), test) for test in corpora]
    return list(dict.fromkeys(splits))
