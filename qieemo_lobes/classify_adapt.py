"""``classify --adapt``: the inputs' own input statistics measured first (AdaBN), then used.

:func:`adapted_results` groups the runnable inputs (all of them, or each folder's files),
measures every group's statistics on up to :data:`ADAPT_MAX_CLIPS` of its clips
(:func:`adaptation_clips`: short files whole, the speech segments of long recordings) before
anything is classified, then classifies each group with its own
(:meth:`~qieemo_lobes.interfaces.EmotionRecognizer.adapted`). See :mod:`qieemo_lobes.adaptation`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qieemo_lobes.classify_engine import FileResult, _TorchBackend, classify_planned

if TYPE_CHECKING:
    from qieemo_lobes.adaptation import InputStatistics
    from qieemo_lobes.interfaces import EmotionRecognizer

__all__ = ["ADAPT_MAX_CLIPS", "adaptation_clips", "adapted_results", "measure_inputs"]

# --adapt measures the input statistics on at most this many clips (short files whole, speech
# segments of long recordings), spread over the inputs: benchmarks/adapt_study.py found 100
# random clips as good as a whole held-out corpus.
ADAPT_MAX_CLIPS = 100


def adaptation_clips(
    plan: list[FileResult | tuple[str, float]],
    recognizer: EmotionRecognizer,
    limit: int = ADAPT_MAX_CLIPS,
) -> Iterator[Any]:
    """Waveforms for ``--adapt``: up to ``limit`` clips, taken from inputs spread evenly over
    the runnable ``(path, duration_s)`` entries of ``plan``; a file up to
    :data:`~qieemo_lobes.segmentation.LONG_RECORDING_S` whole, a longer one as its speech
    segments (at least :data:`~qieemo_lobes.audio.MIN_SECONDS` long). Inputs that cannot be read
    are skipped here (their own result reports them).
    """
    from qieemo_lobes.audio import MIN_SECONDS, AudioError
    from qieemo_lobes.segmentation import LONG_RECORDING_S

    backend = _TorchBackend(recognizer)
    runnable = [item for item in plan if isinstance(item, tuple)]
    step = max(1, len(runnable) // limit)
    n_clips, segmenter = 0, None
    for path, duration in runnable[::step]:
        try:
            if duration <= LONG_RECORDING_S:
                clips = [backend.load(path)]
            else:
                segmenter = segmenter or backend.segmenter()
                segments = backend.segment_waveforms(path, segmenter(path))
                clips = (wav for _, _, wav in segments)
            for wav in clips:
                if len(wav) < MIN_SECONDS * recognizer.sample_rate:
                    continue
                yield wav
                n_clips += 1
                if n_clips >= limit:
                    return
        except AudioError:
            continue


def measure_inputs(plan: list, recognizer: EmotionRecognizer, min_clips: int) -> InputStatistics:
    """The head's input statistics on :func:`adaptation_clips` of ``plan`` (``--adapt``).

    Raises
    ------
    qieemo_lobes.adaptation.AdaptationError
        Fewer than ``min_clips`` clips could be read, or the model cannot be adapted.
    """
    from qieemo_lobes.adaptation import AdaptationError, check_adaptable

    check_adaptable(recognizer.mods.head)
    try:
        stats = recognizer.domain_statistics(adaptation_clips(plan, recognizer))
    except AdaptationError:  # not one clip: reported below
        stats = None
    n_clips = stats.n_clips if stats is not None else 0
    if n_clips < min_clips:
        raise AdaptationError(
            f"needs at least {min_clips} readable clips of one domain (files, or speech "
            f"segments of long recordings); the inputs gave {n_clips}"
        )
    return stats


def adapted_results(
    recognizer: EmotionRecognizer, plan: list, by: str, batch_size: int, min_clips: int
) -> Iterator[tuple[int, FileResult]]:
    """Each group of inputs (``by``: ``"inputs"``, all of them, or ``"folder"``, each folder's
    files) classified with its own input statistics: ``(index in plan, result)`` as
    :func:`~qieemo_lobes.classify_engine.classify_planned` yields them.

    Every group is measured here, before anything is classified (one stderr line each), so a
    group with too few clips raises before any result exists.

    Raises
    ------
    qieemo_lobes.adaptation.AdaptationError
        A group gave fewer than ``min_clips`` clips (the message names the folder), or the model
        cannot be adapted.
    """
    from qieemo_lobes.adaptation import AdaptationError

    groups: dict[str, list[int]] = {}
    for index, item in enumerate(plan):
        if isinstance(item, tuple):
            key = f"folder {Path(item[0]).parent}" if by == "folder" else "the inputs"
            groups.setdefault(key, []).append(index)
    measured = []
    for key, indices in groups.items():
        group = [plan[i] for i in indices]
        try:
            stats = measure_inputs(group, recognizer, min_clips)
        except AdaptationError as err:
            raise AdaptationError(f"{key}: {err}" if by == "folder" else str(err)) from None
        print(
            f"classify: adapted to {key} (input statistics of {stats.n_clips} clips); "
            "each result depends on the other inputs",
            file=sys.stderr,
        )
        measured.append((indices, group, stats))

    def classified() -> Iterator[tuple[int, FileResult]]:
        for indices, group, stats in measured:
            with recognizer.adapted(stats):
                for position, result in classify_planned(group, recognizer, batch_size):
                    yield indices[position], result

    return classified()
