"""Test-time adaptation of a Qieemo head to a new domain: its input statistics, recomputed.

A head trained with ``input_norm=True`` standardises every feature it reads with the mean and
variance of its training frames (``QieemoHead.block_norm``, and ``ppg_norm`` with CMA). On another
corpus, language or recording chain those statistics no longer centre the encoder's features, and
the classifier sees a shifted input: one class absorbs most clips (the default model called most
neutral speech sad on two evaluation corpora). Adaptive batch normalisation (AdaBN: Li et al.,
2016, "Revisiting Batch Normalization For Practical Domain Adaptation", arXiv 1603.04779) replaces
them with the statistics of the target domain, measured on its unlabelled audio. Nothing is
trained and no label is read, but the predictions depend on the other clips of the domain: it is
*transductive*, and the clips must come from one domain (one corpus, one recording set-up).

:func:`input_statistics` measures the statistics with the head itself (forward pre-hooks on its
normalisation layers, so exactly the frames they standardise are counted: valid frames only,
after the head's frame averaging); :func:`adapted` applies them for the duration of a ``with``
block and restores the training statistics after it. ``benchmarks/adapt_study.py`` measures what
it does on leave-one-corpus-out runs and how many unlabelled clips it needs.

Example
-------
>>> import torch
>>> from qieemo_lobes.qieemo import QieemoHead
>>> head = QieemoHead(input_dim=8, ppg_dim=8, n_classes=4, n_encoder_blocks=3, blocks=[2, 3],
...                   d_model=16, use_cma=False).eval()
>>> blocks, ppg = torch.randn(3, 2, 10, 8) * 3 + 1, torch.randn(2, 10, 8)
>>> stats = input_statistics(head, [(blocks, ppg, torch.tensor([1.0, 0.5]))])
>>> stats.n_clips, stats.n_frames  # the valid frames: 10 + 5
(2, 15)
>>> with adapted(head, stats):
...     bool(torch.equal(head.block_norm.running_mean, stats.block_mean))
True
>>> bool(torch.equal(head.block_norm.running_mean, stats.block_mean))  # training statistics back
False
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from qieemo_lobes.qieemo import QieemoHead

__all__ = ["AdaptationError", "InputStatistics", "adapted", "check_adaptable", "input_statistics"]


class AdaptationError(ValueError):
    """The head cannot be adapted (no input standardisation) or no frame was given."""


@dataclass
class InputStatistics:
    """Per-feature mean and variance of the frames a head standardises, in one domain.

    ``block_mean``/``block_var`` match ``head.block_norm`` (the blocks the head reads, side by
    side), ``ppg_mean``/``ppg_var`` ``head.ppg_norm`` (``None`` without CMA). ``n_clips`` and
    ``n_frames`` say how much audio they come from.
    """

    block_mean: torch.Tensor
    block_var: torch.Tensor
    ppg_mean: torch.Tensor | None
    ppg_var: torch.Tensor | None
    n_clips: int
    n_frames: int


class _Moments:
    """Running sums of a ``(frames, features)`` stream, in float64 (fp32 sums of squares lose
    digits over the millions of frames of a corpus)."""

    def __init__(self) -> None:
        self.n, self.sum, self.sum_sq = 0, 0.0, 0.0

    def add(self, frames: torch.Tensor) -> None:
        frames = frames.detach().double()
        self.n += frames.shape[0]
        self.sum = self.sum + frames.sum(0)
        self.sum_sq = self.sum_sq + (frames * frames).sum(0)

    def mean_var(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.sum / self.n
        var = (self.sum_sq / self.n - mean * mean).clamp(min=0.0)
        return mean.to(dtype), var.to(dtype)


def check_adaptable(head: QieemoHead) -> None:
    """Raise :class:`AdaptationError` when the head has no input standardisation to adapt.

    Arguments
    ---------
    head : QieemoHead
        The head to check.
    """
    if head.block_norm is None:
        raise AdaptationError("the head has no input standardisation (input_norm=False)")


def input_statistics(
    head: QieemoHead, batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
) -> InputStatistics:
    """Measure, on unlabelled ``(blocks, ppg, lengths)`` batches of one domain, the statistics the
    head's input standardisation would need there.

    The head runs in eval mode on every batch (its outputs are discarded); hooks on its
    normalisation layers collect the frames they receive.

    Arguments
    ---------
    head : QieemoHead
        A head built with ``input_norm=True``.
    batches : iterable of (blocks, ppg, lengths)
        The encoder's outputs, as :meth:`QieemoHead.forward` takes them.

    Returns
    -------
    InputStatistics

    Raises
    ------
    AdaptationError
        The head has no input standardisation, or the batches hold no frame.
    """
    check_adaptable(head)
    moments = {"block": _Moments(), "ppg": _Moments()}
    norms = {"block": head.block_norm, "ppg": head.ppg_norm}
    hooks = [
        norm.register_forward_pre_hook(lambda _, args, m=moments[name]: m.add(args[0]))
        for name, norm in norms.items()
        if norm is not None
    ]
    n_clips, was_training = 0, head.training
    head.eval()
    try:
        with torch.inference_mode():
            for blocks, ppg, lengths in batches:
                head(blocks, ppg, lengths)
                n_clips += blocks.shape[1]
    finally:
        for hook in hooks:
            hook.remove()
        head.train(was_training)
    if moments["block"].n == 0:
        raise AdaptationError("no audio frame to measure the domain's statistics on")
    dtype = head.block_norm.running_mean.dtype
    block_mean, block_var = moments["block"].mean_var(dtype)
    ppg_mean = ppg_var = None
    if head.ppg_norm is not None:
        ppg_mean, ppg_var = moments["ppg"].mean_var(dtype)
    return InputStatistics(block_mean, block_var, ppg_mean, ppg_var, n_clips, moments["block"].n)


@contextmanager
def adapted(head: QieemoHead, stats: InputStatistics) -> Iterator[QieemoHead]:
    """Within the ``with`` block the head standardises with ``stats``; after it, with its own
    (training) statistics again, even when the block raised.

    Arguments
    ---------
    head : QieemoHead
        The head to adapt (changed in place).
    stats : InputStatistics
        From :func:`input_statistics` on the same head (or one of the same shape).

    Yields
    ------
    QieemoHead
        The head itself.
    """
    pairs = [(head.block_norm, stats.block_mean, stats.block_var)]
    if head.ppg_norm is not None:
        pairs.append((head.ppg_norm, stats.ppg_mean, stats.ppg_var))
    saved = []
    for norm, mean, _ in pairs:
        if norm is None or mean is None or mean.shape != norm.running_mean.shape:
            raise AdaptationError("these statistics were measured with another head")
        saved.append((norm, norm.running_mean.clone(), norm.running_var.clone()))
    try:
        for norm, mean, var in pairs:
            norm.running_mean.copy_(mean)
            norm.running_var.copy_(var)
        yield head
    finally:
        for norm, mean, var in saved:
            norm.running_mean.copy_(mean)
            norm.running_var.copy_(var)
