"""Training-time corruption augmentation: the corruption suite as a recipe option (issue 14).

Two settings of every emotion recipe's YAML turn it on:

- ``augment_copies: N`` (0: off): corrupted copies per training clip;
- ``augment_corruptions: [white, babble, reverb, telephone, mp3, opus, gain]``: names of
  :data:`qieemo_lobes.corruptions.CORRUPTIONS` (every severity of the name) or ``name:severity``
  (that severity only, e.g. ``white:10``, ``mp3:16``, ``gain:-20``). Every severity of the suite
  is drawn, 0 dB SNR included: the robustness benchmark measures all of them, and a copy is only
  one of the ``N + 1`` versions of a clip an epoch draws from (the clean clip stays one of them).

With the feature cache (frozen encoder) each training clip gets ``N`` corrupted copies, encoded
once (:meth:`qieemo_lobes.features.FeatureCache.precompute` with ``copies``, one progress bar)
and cached beside the original; each epoch reads the original or one copy at random, like the
speed copies (with both, one of the speeds or copies). A copy is made from the clip at its
original speed only (never a speed copy corrupted). Validation and test clips are never
corrupted.

How copy ``k`` (1..N) of a clip is drawn, from nothing but the seed, the clip's audio (its cache
key, :func:`qieemo_lobes.features.content_key`), the list and ``k``: the list's names are
shuffled once per clip (a generator seeded by SHA-256 of ``(seed, key)``) and copy ``k`` takes
the ``k``-th name (cycling), so a clip's copies use different corruptions while names are left;
its severity likewise cycles through that name's severities in an order shuffled once per clip
(so a clip's copies repeat a condition only when the list is exhausted); :func:`corrupt` gets
``utterance_id="<key>#aug<k>"`` and the seed. A copy is therefore the same in every run, and a
larger ``N`` keeps the copies already made. Babble talkers are training clips of other
speakers (:func:`~qieemo_lobes.corruptions.choose_babble` over the training set; never the
clip's speaker, never a validation or test clip). The entry is ``<key>_aug<k>-<name>_<hash>.pt``
where the hash (SHA-256, 10 hex digits) covers everything the copy depends on besides the audio:
the corruption and severity, ``k``, the seed and the babble talkers' audio keys. Another seed or
list gives other entries when the copies differ; the same copy made under another list is
shared.

Per-speaker normalisation (``speaker_norm``): copy ``k`` is a voice of its own (``"@aug<k>"``),
standardised with the statistics of the same speaker's ``k``-th copies, as a speed copy is with
those of its speed. Grouping by corruption instead would leave a handful of clips per group,
and a clip standardised with little more than its own statistics loses its utterance-level
cues.

Without the cache (live encoder) the training batches are corrupted on the fly: SpeechBrain's
:class:`~speechbrain.augment.augmenter.Augmenter` (one augmentation, the original not
concatenated, so labels need no replication) wraps :class:`CorruptBatch`, which corrupts each
clip of a training batch with probability ``N / (N + 1)`` (as often as the cache would read a
copy), with a corruption and severity drawn from ``(seed, utterance id, epoch)``: deterministic
given the seed and the epoch. Corrupted clips are speed-perturbed afterwards, with the batch.

Example
-------
>>> corruption_choices(["white:10", "gain", "white:0"])
{'white': (10, 0), 'gain': (-20, 20)}
>>> choices = {"white": (10, 0), "gain": (-20, 20)}
>>> [draw_corruption(choices, seed=1, key="ab12", index=k).label for k in (1, 2, 3)]
['gain +20 dB', 'white 0 dB', 'gain -20 dB']
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from qieemo_lobes.audio_levels import remove_dc
from qieemo_lobes.corruptions import (
    CORRUPTIONS,
    FILE_CORRUPTIONS,
    Corruption,
    CorruptionError,
    choose_babble,
    corrupt,
    unavailable_corruptions,
)
from qieemo_lobes.features import SAMPLE_RATE, content_key, read_audio

__all__ = [
    "MILD",
    "AugmentationError",
    "CorruptBatch",
    "CorruptedCopy",
    "cache_copies",
    "check_augmentation",
    "copies_of",
    "corrupted_copies",
    "corruption_choices",
    "describe",
    "draw_corruption",
    "live_augmenter",
]

# Part of every copy's hash: bump it when a corruption's output changes.
COPY_VERSION = 1

# The mild severities: the whole suite but the severities that leave little speech (SNR 5 and
# 0 dB, RT60 1 s, MP3 8 kbps, Opus 6 kbps). Two copies of these kept EmoDB's clean UA (-0.1 over
# three seeds) and raised EMOVO's (+3.1), and raised the mean UA over the corrupted conditions on
# both, where the whole suite cost EmoDB 1.4 clean UA (benchmarks/results/augmentation_seeds_*.md
# and robustness_augmentation.md).
MILD = (
    *("white:20", "white:10", "babble:20", "babble:10", "reverb:0.3", "reverb:0.6"),
    *("telephone", "mp3:32", "mp3:16", "opus:12", "gain"),
)

logger = logging.getLogger(__name__)


class AugmentationError(ValueError):
    """Augmentation settings that cannot be used, or a clip that cannot be corrupted while
    training; ``str()`` is one line."""


def _hash(*parts: object) -> str:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()


def _rng(*parts: object) -> np.random.Generator:
    return np.random.default_rng(int(_hash(*parts)[:32], 16))


def copies_of(settings: Mapping) -> int:
    """``augment_copies`` (0 when absent)."""
    return int(settings.get("augment_copies") or 0)


def corruption_choices(entries: Sequence[str] | None) -> dict[str, tuple]:
    """``{name: severities}`` of ``augment_corruptions``, in the list's order.

    Raises
    ------
    AugmentationError
        One line: not a list of names, an unknown name or severity, a corruption that needs
        files of the user (``noise``, ``rir``).
    """
    if not isinstance(entries, (list, tuple)):
        raise AugmentationError(
            f"augment_corruptions takes a list of corruption names, e.g. [white, gain], "
            f"not {entries!r}"
        )
    choices: dict[str, list] = {}
    for entry in entries:
        if not isinstance(entry, str) or not entry.strip():
            raise AugmentationError(
                f"augment_corruptions: {entry!r} is not a corruption name (name or name:severity)"
            )
        name, _, severity = entry.strip().partition(":")
        if name in FILE_CORRUPTIONS:
            raise AugmentationError(
                f"augment_corruptions: {name} needs files of your own and is not used for "
                f"training; known: {', '.join(CORRUPTIONS)}"
            )
        if name not in CORRUPTIONS:
            close = difflib.get_close_matches(name, list(CORRUPTIONS), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise AugmentationError(
                f"augment_corruptions: unknown corruption {name!r}{hint}; "
                f"known: {', '.join(CORRUPTIONS)}"
            )
        if severity:
            try:
                levels = [Corruption(name, severity.strip()).severity]
            except CorruptionError as err:
                raise AugmentationError(f"augment_corruptions: {err}") from None
        else:
            levels = list(CORRUPTIONS[name])
        known = choices.setdefault(name, [])
        known.extend(s for s in levels if s not in known)
    return {name: tuple(levels) for name, levels in choices.items()}


def check_augmentation(settings: Mapping) -> None:
    """Refuse augmentation settings that cannot be used, before anything is built.

    The names are checked whether augmentation is on or not; whether this machine can make
    them (ffmpeg for ``mp3``/``opus``/``gsm``, pyroomacoustics for ``reverb``) only when it is.

    Raises
    ------
    AugmentationError
        One line naming the setting and the problem.

    Example
    -------
    >>> check_augmentation({"augment_copies": 2, "augment_corruptions": ["white", "gian"]})
    Traceback (most recent call last):
        ...
    qieemo_lobes.augmentation.AugmentationError: augment_corruptions: unknown corruption 'gian' (did you mean gain?); known: white, babble, reverb, telephone, gsm, mp3, opus, gain
    """
    copies = settings.get("augment_copies", 0)
    if copies is None:
        copies = 0
    if isinstance(copies, bool) or not isinstance(copies, int):
        raise AugmentationError(f"augment_copies takes an integer (0: off), not {copies!r}")
    if copies < 0:
        raise AugmentationError(f"augment_copies must not be negative, not {copies}")
    if "augment_corruptions" not in settings and not copies:
        return
    choices = corruption_choices(settings.get("augment_corruptions"))
    if not copies:
        return
    if not choices:
        raise AugmentationError(
            f"augment_copies is {copies} but augment_corruptions is empty: name at least one "
            "corruption, or set augment_copies: 0"
        )
    missing = unavailable_corruptions()
    for name in choices:
        if name in missing:
            need = "pyroomacoustics" if name == "reverb" else "ffmpeg"
            raise AugmentationError(
                f"augment_corruptions: {name} cannot be made on this machine ({missing[name]}); "
                f"install {need} or drop {name} from augment_corruptions"
            )


def describe(settings: Mapping, live: bool = False) -> str:
    """The log line of a run with augmentation."""
    copies = copies_of(settings)
    names = ", ".join(str(n) for n in settings.get("augment_corruptions") or [])
    line = f"augmentation: {copies} corrupted copies per training clip from [{names}]"
    if live:
        line += (
            f" (live encoder: drawn on the fly, each training clip corrupted with probability "
            f"{copies}/{copies + 1} per epoch)"
        )
    return line


def draw_corruption(choices: Mapping[str, tuple], seed: int, key: str, index: int) -> Corruption:
    """The corruption of copy ``index`` (1-based) of the clip whose cache key is ``key``.

    The names are shuffled once per clip (a generator seeded by ``(seed, key)``) and copy
    ``index`` takes the ``index``-th (cycling); each name's severities are shuffled once per
    clip too, and a name's ``t``-th turn takes its ``t``-th severity (cycling). A clip's copies
    repeat a condition only once every condition of the list has had its turn.
    """
    names = list(choices)
    order = _rng(seed, key, "augment order").permutation(len(names))
    turn, place = divmod(index - 1, len(names))
    name = names[int(order[place])]
    levels = choices[name]
    severities = _rng(seed, key, "augment severity", name).permutation(len(levels))
    return Corruption(name, levels[int(severities[turn % len(levels)])])


Talker = tuple[str, str, float | None, float | None]  # speaker, wav, start, stop


def _babble_waves(talkers: Sequence[Talker]) -> list[tuple[str, np.ndarray]]:
    return [(spk, read_audio(wav, start, stop).numpy()) for spk, wav, start, stop in talkers]


def _clean(wav: torch.Tensor) -> torch.Tensor:
    """float32, its DC offset removed, as :func:`~qieemo_lobes.features.read_audio` gives it."""
    wav = torch.as_tensor(wav, dtype=torch.float32)
    return remove_dc(wav[None], torch.ones(1))[0]


@dataclass(frozen=True)
class CorruptedCopy:
    """Copy ``index`` of one training clip: a waveform transform for the feature cache.

    ``copy(wav)`` is the corrupted 16 kHz waveform (same length, DC offset removed as the
    model's input always is); ``suffix`` names its cache entry (see the module docstring).
    """

    corruption: Corruption
    index: int
    seed: int
    key: str  # the clip's cache key (content digest)
    speaker: str
    talkers: tuple[Talker, ...] = ()
    talker_keys: tuple[str, ...] = ()

    @property
    def suffix(self) -> str:
        c = self.corruption
        digest = _hash(COPY_VERSION, c.name, c.severity, self.index, self.seed, *self.talker_keys)
        return f"_aug{self.index}-{c.name}_{digest[:10]}"

    def __call__(self, wav: torch.Tensor) -> torch.Tensor:
        pool = _babble_waves(self.talkers) if self.corruption.name == "babble" else None
        out = corrupt(
            wav,
            SAMPLE_RATE,
            self.corruption,
            utterance_id=f"{self.key}#aug{self.index}",
            seed=self.seed,
            babble_pool=pool,
            speaker=self.speaker,
        )
        return _clean(out)


def _pool(train: Mapping[str, dict]) -> list[tuple[str, dict]]:
    """``[(speaker, record)]`` of the training clips, in utterance-id order."""
    return [(str(train[utt]["spk_id"]), train[utt]) for utt in sorted(train)]


def _check_babble(pool: Sequence[tuple[str, dict]], choices: Mapping) -> None:
    speakers = {spk for spk, _ in pool}
    if "babble" in choices and len(speakers) < 2:
        raise AugmentationError(
            f"augment_corruptions: babble needs training clips of at least two speakers (the "
            f"training set has {len(speakers)}); drop babble from augment_corruptions"
        )


def _talkers(pool, speaker: str, utterance_id: str, seed: int) -> tuple[Talker, ...]:
    chosen = choose_babble(pool, speaker, utterance_id=utterance_id, seed=seed)
    return tuple(
        (spk, record["wav"], record.get("start"), record.get("stop"))
        for spk, record in (pool[i] for i in chosen)
    )


def corrupted_copies(
    train: Mapping[str, dict], settings: Mapping, index: int
) -> dict[str, CorruptedCopy]:
    """``{utterance id: copy index}`` of every training clip (manifest records with ``wav``,
    ``spk_id``, optional ``start``/``stop``); ``settings`` holds ``augment_corruptions`` and
    ``seed``."""
    choices = corruption_choices(settings.get("augment_corruptions"))
    seed = int(settings.get("seed", 0))
    pool = _pool(train)
    _check_babble(pool, choices)
    copies = {}
    for utt, record in train.items():
        key = content_key(record["wav"], record.get("start"), record.get("stop"))
        corruption = draw_corruption(choices, seed, key, index)
        talkers: tuple[Talker, ...] = ()
        if corruption.name == "babble":
            talkers = _talkers(pool, str(record["spk_id"]), f"{key}#aug{index}", seed)
        copies[utt] = CorruptedCopy(
            corruption,
            index,
            seed,
            key,
            str(record["spk_id"]),
            talkers,
            tuple(content_key(wav, start, stop) for _, wav, start, stop in talkers),
        )
    return copies


def cache_copies(
    cache,
    train: Mapping[str, dict],
    settings: Mapping,
    run_on_main: Callable | None = None,
) -> dict[str, list[tuple[str, Path]]]:
    """Encode the missing corrupted copies of the training clips; ``{utt: [(voice, entry)]}``.

    ``cache`` is the run's :class:`~qieemo_lobes.features.FeatureCache`; ``run_on_main`` (DDP)
    runs the encoding in the main process only, then every process gets the paths.
    """
    n = copies_of(settings)
    logger.info(describe(settings))
    records, copies = {}, {}
    for index in range(1, n + 1):
        for utt, copy in corrupted_copies(train, settings, index).items():
            records[f"{utt}@aug{index}"] = train[utt]
            copies[f"{utt}@aug{index}"] = copy
    kwargs = {"utterances": records, "copies": copies}
    if run_on_main is None:
        cache.precompute(**kwargs)
    else:
        run_on_main(cache.precompute, kwargs=kwargs)
    paths = cache.precompute(**kwargs, progress=False)  # all cached now: paths only
    variants: dict[str, list[tuple[str, Path]]] = {utt: [] for utt in train}
    for index in range(1, n + 1):
        for utt in train:
            variants[utt].append((f"@aug{index}", paths[f"{utt}@aug{index}"]))
    return variants


class CorruptBatch(torch.nn.Module):
    """Corrupts the clips of a training batch on the fly (the live-encoder path).

    Each clip is corrupted with probability ``copies / (copies + 1)``, with a corruption from
    ``choices`` drawn from ``(seed, utterance id, epoch)``; :meth:`set_batch` gives the batch's
    utterance ids and the epoch before each call (without it, the clip's index in the batch
    stands for its id). Padding stays zero; lengths do not change.

    Example
    -------
    >>> corrupter = CorruptBatch({"gain": (-20,)}, copies=1000, seed=1)
    >>> wavs = 0.1 * torch.sin(torch.arange(3200.0)).repeat(2, 1)
    >>> wavs[1, 1600:] = 0.0  # padding: the second clip is half as long
    >>> corrupter.set_batch(["a", "b"], epoch=1)
    >>> out = corrupter(wavs, torch.tensor([1.0, 0.5]))
    >>> round(float(out[0].abs().max() / wavs[0].abs().max()), 2), float(out[1, 1600:].abs().max())
    (0.1, 0.0)
    """

    def __init__(
        self,
        choices: Mapping[str, tuple],
        copies: int,
        seed: int,
        speaker_of: Mapping[str, str] | None = None,
        pool: Sequence[tuple[str, dict]] = (),
    ):
        super().__init__()
        self.choices, self.copies, self.seed = dict(choices), int(copies), int(seed)
        self.speaker_of, self.pool = dict(speaker_of or {}), list(pool)
        self.ids: list[str] | None = None
        self.epoch = 0

    def set_batch(self, ids: Sequence[str], epoch: int) -> None:
        """The utterance ids of the next batch and the epoch: what the draws are seeded by."""
        self.ids, self.epoch = list(ids), int(epoch)

    def draw(self, utt: str) -> Corruption | None:
        """The corruption of ``utt`` in this epoch, or None (the clip stays clean)."""
        rng = _rng(self.seed, utt, "live", self.epoch)
        if rng.random() >= self.copies / (self.copies + 1):
            return None
        names = list(self.choices)
        name = names[int(rng.integers(len(names)))]
        levels = self.choices[name]
        return Corruption(name, levels[int(rng.integers(len(levels)))])

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        out = waveforms.clone()
        ids = self.ids if self.ids is not None else [str(i) for i in range(len(waveforms))]
        n_samples = waveforms.shape[1]
        for i, utt in enumerate(ids):
            corruption = self.draw(utt)
            if corruption is None:
                continue
            n = max(1, int(round(float(lengths[i]) * n_samples)))
            speaker = self.speaker_of.get(utt, f"\x00unknown {utt}")
            clip_id = f"{utt}@epoch{self.epoch}"
            pool = None
            if corruption.name == "babble":
                pool = _babble_waves(_talkers(self.pool, speaker, clip_id, self.seed))
            try:
                wav = corrupt(
                    waveforms[i, :n].detach().cpu(),
                    SAMPLE_RATE,
                    corruption,
                    utterance_id=clip_id,
                    seed=self.seed,
                    babble_pool=pool,
                    speaker=speaker,
                )
            except CorruptionError as err:
                raise AugmentationError(
                    f"augmentation of training utterance {utt}: {err}"
                ) from None
            out[i, :n] = _clean(wav).to(out.device, out.dtype)
        self.ids = None
        return out


def live_augmenter(settings: Mapping) -> tuple[torch.nn.Module, CorruptBatch] | None:
    """``(Augmenter, CorruptBatch)`` for a live encoder with ``augment_copies`` > 0, else None.

    ``settings`` holds ``augment_copies``, ``augment_corruptions``, ``seed`` and
    ``train_annotation`` (the training manifest: speakers and the babble pool).
    """
    from speechbrain.augment.augmenter import Augmenter

    copies = copies_of(settings)
    if not copies:
        return None
    choices = corruption_choices(settings.get("augment_corruptions"))
    with open(settings["train_annotation"], encoding="utf-8") as fh:
        train = json.load(fh)
    pool = _pool(train)
    _check_babble(pool, choices)
    speaker_of = {utt: str(record["spk_id"]) for utt, record in train.items()}
    corrupter = CorruptBatch(choices, copies, int(settings.get("seed", 0)), speaker_of, pool)
    # One augmentation, applied to every batch, the original not concatenated: the batch keeps
    # its size and labels. CorruptBatch itself decides per clip whether it is corrupted.
    augmenter = Augmenter(
        augmentations=[corrupter], concat_original=False, min_augmentations=1, max_augmentations=1
    )
    logger.info(describe(settings, live=True))
    return augmenter, corrupter
