#!/usr/bin/env python3
"""A controlled corpus where only the words carry the emotion, spoken by espeak-ng.

Question it answers (issue 15, "what the PPG carries"): can cross-modal attention (CMA) use the
text when the text does carry the emotion? Real acted corpora cannot tell, since their sentences
are spoken in every emotion. Here the voice cannot tell: every sentence of every class is
synthesised by the same espeak-ng voices with the same fixed prosody (speed, pitch and amplitude
identical for all utterances), so the emotional words are the only cue.

Design
------
- Classes ``angry``, ``happy``, ``neutral``, ``sad``. Each class has 20 "feeling" words
  (``furious``, ``delighted``, ``composed``, ``heartbroken``...) and 16 "description" words
  (``outrageous``, ``wonderful``, ``ordinary``, ``tragic``...), disjoint between classes.
- A sentence is a template with two emotional slots and neutral fillers, e.g.
  ``i am so {feel} about the {desc} {noun}``. Sentence ``k`` of every class shares the same
  template and fillers (its "skeleton"): classes differ only in their emotional words, and the
  rest of the text is as frequent in every class.
- Test sentences are held out three ways: their templates are never used in training (4 of 16,
  drawn by the seed), their feeling word is one of ``held_out_words`` words per class never used
  in training (column ``unseen_words`` = 1; ``held_out_words=0`` turns this off), and their
  description word is one of those the class used in training, so the label stays recoverable
  from the text by a model that learned the training words.
- Speakers are espeak-ng voices (:data:`VOICES`, language + variant); the test voices are never
  heard in training (fold ``train`` / ``test``, speakers disjoint). Every sentence of a split is
  spoken by every voice of that split, so each voice speaks every class equally.
- Audio: espeak-ng's 22.05 kHz output resampled to 16 kHz mono 16-bit WAV (``scipy``'s polyphase
  resampler), no noise, no gain change.

Output (``OUT``)::

    manifest.csv      path,label,speaker,fold,text,voice,speed,pitch,amplitude,template,
                      feel_word,desc_word,unseen_words   (recipes/custom/emotion reads it)
    synthesis.json    the settings, the espeak-ng command, voices, templates and word splits
    wavs/<speaker>_<label>_<tr|te><k>_<hash>.wav

The file name ends in a hash of the text, voice and settings, so a rerun keeps every valid WAV
it would write again (resumable, idempotent) and never reuses one of another configuration.

Usage::

    python benchmarks/lexical_corpus.py --out /tmp/lexical              # 4 x 60 sentences x 6 voices
    python benchmarks/lexical_corpus.py --out /tmp/lexical --n-sentences 8 --n-voices 3
    python benchmarks/lexical_corpus.py --nemo ../shared/data/nemo       # nEMO's text-only check
    cd recipes/custom/emotion && python train.py hparams/qieemo.yaml \\
        --data_folder=/tmp/lexical/manifest.csv --classes=[angry,happy,neutral,sad] --n_classes=4 \\
        --test_fold=test --output_folder=results/lexical/qieemo   # add --use_cma=False to compare

(train on fold ``train``, validation from its voices, test on the held-out sentences and voices;
``cross_validate.py`` would also train on the test fold, which is not the design.)

Requires the ``espeak-ng`` program (Debian: ``apt-get install espeak-ng``).

Example
-------
>>> plan = plan_corpus(n_sentences=4, n_voices=3, seed=0)
>>> sorted({(r["fold"], r["voice"]) for r in plan})
[('test', 'en-us+m3'), ('train', 'en-gb+f3'), ('train', 'en-us')]
>>> sorted({r["label"] for r in plan}) == list(CLASSES)
True
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import importlib.util
import io
import json
import random
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere: the package is the checkout's
    sys.path.insert(0, str(REPO))

from qieemo_lobes.files import atomic_open, write_json_atomic, write_text_atomic  # noqa: E402
from qieemo_lobes.stats import speaker_bootstrap_ci, unweighted_accuracy  # noqa: E402

CLASSES = ("angry", "happy", "neutral", "sad")
SAMPLE_RATE = 16000
ESPEAK_RATE = 22050
# The fixed prosody: identical for every utterance of every class and voice.
SPEED, PITCH, AMPLITUDE = 150, 50, 100  # espeak-ng -s (words per minute), -p (0-99), -a (0-200)
MANIFEST = "manifest.csv"
SETTINGS = "synthesis.json"
COLUMNS = (
    "path,label,speaker,fold,text,voice,speed,pitch,amplitude,template,feel_word,desc_word,"
    "unseen_words"
).split(",")

# Words that say how someone feels ("i am so {feel}") and words that colour a thing or event
# ("the {desc} car"); hand-written, one word each, no word in two classes.
FEEL_WORDS: dict[str, tuple[str, ...]] = {
    "angry": tuple(
        "furious angry outraged livid irritated enraged annoyed infuriated resentful mad fuming "
        "irate hostile bitter exasperated indignant incensed cross vexed aggravated".split()
    ),
    "happy": tuple(
        "delighted happy thrilled joyful cheerful glad overjoyed ecstatic elated excited pleased "
        "grateful jubilant merry blissful proud radiant euphoric gleeful upbeat".split()
    ),
    "neutral": tuple(
        "calm indifferent unmoved composed neutral impartial unconcerned informed aware notified "
        "certain sure ready awake detached unbothered objective steady settled reserved".split()
    ),
    "sad": tuple(
        "sad miserable heartbroken depressed gloomy unhappy sorrowful lonely devastated grieving "
        "hopeless downcast melancholy despondent dejected tearful crushed forlorn mournful "
        "despairing".split()
    ),
}
DESC_WORDS: dict[str, tuple[str, ...]] = {
    "angry": tuple(
        "broken outrageous unfair insulting ridiculous infuriating stupid rude dishonest "
        "unacceptable shameful hateful obnoxious pathetic offensive maddening".split()
    ),
    "happy": tuple(
        "wonderful beautiful lovely fantastic amazing brilliant delightful marvellous splendid "
        "perfect glorious charming fabulous terrific superb magnificent".split()
    ),
    "neutral": tuple(
        "ordinary usual regular standard typical plain average routine normal common basic "
        "medium weekly scheduled rectangular wooden".split()
    ),
    "sad": tuple(
        "tragic bleak dismal painful heartbreaking dreary desolate abandoned wretched pitiful "
        "lost empty faded ruined grim lifeless".split()
    ),
}
# Neutral fillers, shared by every class.
FILLERS: dict[str, tuple[str, ...]] = {
    "noun": tuple(
        "car letter house meeting phone report garden train dinner movie package computer "
        "message holiday bill painting".split()
    ),
    "name": tuple("anna peter maria john lucy david emma thomas".split()),
    "place": tuple("office station market school hospital park library airport".split()),
    "time": tuple("morning evening weekend week afternoon night summer winter".split()),
    "relative": tuple("sister brother mother father friend neighbour cousin uncle".split()),
}
TEMPLATES: tuple[str, ...] = (
    "i am so {feel} about the {desc} {noun}",
    "{name} was {feel} when we saw the {desc} {noun}",
    "we felt {feel} after the {desc} {noun} at the {place}",
    "the {desc} {noun} made me feel {feel} this {time}",
    "honestly i am {feel} because the {noun} was {desc}",
    "everyone at the {place} seemed {feel} about the {desc} {noun}",
    "my {relative} was {feel} to hear about the {desc} {noun}",
    "it was a {desc} {time} and i felt {feel}",
    "{name} told me the {noun} was {desc} and i am {feel}",
    "after the {desc} {noun} we were all {feel}",
    "i feel {feel} whenever i think of the {desc} {noun}",
    "the {noun} at the {place} was {desc} so {name} was {feel}",
    "they looked {feel} as they left the {desc} {place}",
    "my {relative} is {feel} about the {desc} {noun} from {name}",
    "this {time} was {desc} and i am still {feel}",
    "you sound {feel} about that {desc} {noun}",
)
# Speakers: espeak-ng voices (language + variant), in the order they are taken; the last
# ``n_test_voices`` of the first ``n_voices`` are the test speakers.
VOICES: tuple[str, ...] = (
    "en-us",
    "en-gb+f3",
    "en-us+m3",
    "en+f2",
    "en-gb-x-rp+m1",
    "en-us+f4",
    "en+m4",
    "en-gb-scotland+f1",
    "en-us+m7",
    "en-029+f5",
    "en-gb-x-rp+m2",
    "en-us-nyc+f2",
)


class CorpusError(RuntimeError):
    """A corpus that cannot be made as asked; ``str()`` is one line (or one per failed file)."""


# ------------------------------------------------------------------------------------- text


def _fill(template: str, words: dict[str, str]) -> str:
    return template.format(**words)


def _cycle(pool: Sequence[str], rng: random.Random, n: int) -> list[str]:
    """``n`` words drawn round-robin from a shuffled ``pool``: every word used about equally."""
    order = list(pool)
    rng.shuffle(order)
    return [order[i % len(order)] for i in range(n)]


def split_templates(seed: int = 0, n_test_templates: int = 4) -> tuple[list[str], list[str]]:
    """The (train, test) templates: ``n_test_templates`` of :data:`TEMPLATES` held out.

    Example
    -------
    >>> train, test = split_templates(seed=0)
    >>> len(train), len(test), set(train) & set(test)
    (12, 4, set())
    """
    if not 0 < n_test_templates < len(TEMPLATES):
        raise CorpusError(f"n_test_templates must be 1..{len(TEMPLATES) - 1}")
    test = set(random.Random(f"{seed}-templates").sample(TEMPLATES, n_test_templates))
    return [t for t in TEMPLATES if t not in test], [t for t in TEMPLATES if t in test]


def held_out_feel_words(seed: int = 0, held_out_words: int = 5) -> dict[str, list[str]]:
    """Per class, the feeling words kept for test sentences (never in a training sentence)."""
    if not 0 <= held_out_words < len(FEEL_WORDS[CLASSES[0]]):
        raise CorpusError(f"held_out_words must be 0..{len(FEEL_WORDS[CLASSES[0]]) - 1}")
    return {
        c: sorted(random.Random(f"{seed}-held-{c}").sample(FEEL_WORDS[c], held_out_words))
        for c in CLASSES
    }


def _skeletons(templates: Sequence[str], n: int, rng: random.Random) -> list[dict[str, str]]:
    """``n`` different (template, fillers) pairs; the emotional slots are filled per class."""
    seen: set[str] = set()
    out: list[dict[str, str]] = []
    for _ in range(200 * n + 1000):
        if len(out) == n:
            return out
        template = rng.choice(templates)
        fillers = {slot: rng.choice(words) for slot, words in FILLERS.items()}
        key = _fill(template, {**fillers, "feel": "_", "desc": "_"})
        if key not in seen:
            seen.add(key)
            out.append({"template": template, **fillers})
    raise CorpusError(f"could only make {len(out)} different sentences, {n} asked")


def make_sentences(
    n_sentences: int = 60,
    seed: int = 0,
    test_share: float = 0.25,
    n_test_templates: int = 4,
    held_out_words: int = 5,
) -> list[dict[str, Any]]:
    """The sentences of every class and split (no audio): the corpus' text design.

    Arguments
    ---------
    n_sentences : int
        Sentences per class, train and test together (at least 2).
    seed : int
        Seed of every draw: the same seed gives the same sentences.
    test_share : float
        Share of each class' sentences in the test split (at least one).
    n_test_templates : int
        Templates used only by test sentences.
    held_out_words : int
        Feeling words per class used only by test sentences (0: none).

    Returns
    -------
    list of dict
        ``fold`` ("train"/"test"), ``index`` (the skeleton, shared by the classes), ``label``,
        ``text``, ``template``, ``feel_word``, ``desc_word``, ``unseen_words`` (0 or 1).

    Example
    -------
    >>> rows = make_sentences(8, seed=1)
    >>> [r["text"] for r in rows if r["index"] == 0 and r["fold"] == "train"][:2]  # doctest: +SKIP
    ['i am so furious about the rude car', 'i am so delighted about the lovely car']
    >>> len(rows), len({r["text"] for r in rows})
    (32, 32)
    """
    if n_sentences < 2:
        raise CorpusError(
            f"n_sentences must be at least 2 (one train, one test), not {n_sentences}"
        )
    n_test = min(n_sentences - 1, max(1, round(test_share * n_sentences)))
    n_train = n_sentences - n_test
    train_templates, test_templates = split_templates(seed, n_test_templates)
    held = held_out_feel_words(seed, held_out_words)
    rows: list[dict[str, Any]] = []
    for fold, templates, n in (
        ("train", train_templates, n_train),
        ("test", test_templates, n_test),
    ):
        skeletons = _skeletons(templates, n, random.Random(f"{seed}-{fold}-skeletons"))
        for label in CLASSES:
            rng = random.Random(f"{seed}-{fold}-{label}")
            if fold == "train":
                feel_pool = [w for w in FEEL_WORDS[label] if w not in held[label]]
                desc_pool: Sequence[str] = DESC_WORDS[label]
            else:
                feel_pool = held[label] or [w for w in FEEL_WORDS[label]]
                # The description words this class used in training: the label stays in the text.
                desc_pool = sorted({r["desc_word"] for r in rows if r["label"] == label})
            feels, descs = _cycle(feel_pool, rng, n), _cycle(desc_pool, rng, n)
            for k, (skeleton, feel, desc) in enumerate(zip(skeletons, feels, descs, strict=True)):
                fillers = {s: w for s, w in skeleton.items() if s != "template"}
                text = _fill(skeleton["template"], {**fillers, "feel": feel, "desc": desc})
                rows.append(
                    {
                        "fold": fold,
                        "index": k,
                        "label": label,
                        "text": text,
                        "template": TEMPLATES.index(skeleton["template"]),
                        "feel_word": feel,
                        "desc_word": desc,
                        "unseen_words": int(fold == "test" and bool(held[label])),
                    }
                )
    if len({r["text"] for r in rows}) != len(rows):
        raise CorpusError("two sentences came out the same; change the seed")
    return rows


# ----------------------------------------------------------------------------------- speech


def espeak_args(voice: str, text: str, espeak: str = "espeak-ng") -> list[str]:
    """The espeak-ng command of one utterance: the fixed prosody, the voice, the text."""
    return [espeak, "-v", voice, "-s", str(SPEED), "-p", str(PITCH), "-a", str(AMPLITUDE)] + [
        "--stdout",
        text,
    ]


def synthesize(text: str, voice: str, espeak: str = "espeak-ng") -> np.ndarray:
    """``text`` spoken by ``voice`` with the fixed prosody: float32 samples at 16 kHz.

    Raises
    ------
    CorpusError
        espeak-ng failed (e.g. an unknown voice): one line with its message.
    """
    from scipy.signal import resample_poly

    proc = subprocess.run(espeak_args(voice, text, espeak), capture_output=True, timeout=60)
    if proc.returncode != 0 or not proc.stdout:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise CorpusError(f"espeak-ng failed (voice {voice}): {err[-1] if err else 'no output'}")
    wav, rate = sf.read(io.BytesIO(proc.stdout), dtype="float32")
    if wav.ndim > 1:
        wav = wav.mean(axis=1)
    if rate != ESPEAK_RATE:
        raise CorpusError(f"espeak-ng wrote {rate} Hz, expected {ESPEAK_RATE}")
    # 22050 -> 16000 Hz is 320/441.
    return np.clip(resample_poly(wav, 320, 441), -1.0, 1.0).astype(np.float32)


def _valid_wav(path: Path) -> bool:
    """An existing, readable 16 kHz mono WAV with samples (else it is written again)."""
    try:
        info = sf.info(str(path))
    except (RuntimeError, OSError, sf.LibsndfileError):
        return False
    return info.samplerate == SAMPLE_RATE and info.channels == 1 and info.frames > 0


def plan_corpus(
    n_sentences: int = 60,
    n_voices: int = 6,
    n_test_voices: int | None = None,
    seed: int = 0,
    held_out_words: int = 5,
) -> list[dict[str, Any]]:
    """The manifest rows (``COLUMNS``) of a corpus, without writing anything.

    Every sentence of a split is spoken by every voice of that split; speakers are ``v01`` ...
    (the index in :data:`VOICES`), the test voices the last ``n_test_voices`` (default a third,
    at least one) of the first ``n_voices``.
    """
    if n_test_voices is None:
        n_test_voices = max(1, n_voices // 3)
    if not 2 <= n_voices <= len(VOICES):
        raise CorpusError(f"n_voices must be 2..{len(VOICES)}, not {n_voices}")
    if not 1 <= n_test_voices < n_voices:
        raise CorpusError(f"n_test_voices must be 1..{n_voices - 1}, not {n_test_voices}")
    n_train_voices = n_voices - n_test_voices
    voices = {
        "train": list(enumerate(VOICES[:n_train_voices], start=1)),
        "test": list(enumerate(VOICES[n_train_voices:n_voices], start=n_train_voices + 1)),
    }
    rows = []
    for sentence in make_sentences(n_sentences, seed, held_out_words=held_out_words):
        for number, voice in voices[sentence["fold"]]:
            speaker = f"v{number:02d}"
            digest = hashlib.sha1(
                "|".join(espeak_args(voice, sentence["text"]) + [str(SAMPLE_RATE)]).encode()
            ).hexdigest()[:8]
            name = f"{speaker}_{sentence['label']}_{sentence['fold'][:2]}{sentence['index']:03d}"
            rows.append(
                {
                    "path": f"wavs/{name}_{digest}.wav",
                    "label": sentence["label"],
                    "speaker": speaker,
                    "fold": sentence["fold"],
                    "text": sentence["text"],
                    "voice": voice,
                    "speed": SPEED,
                    "pitch": PITCH,
                    "amplitude": AMPLITUDE,
                    "template": sentence["template"],
                    "feel_word": sentence["feel_word"],
                    "desc_word": sentence["desc_word"],
                    "unseen_words": sentence["unseen_words"],
                }
            )
    return rows


def _espeak_version(espeak: str) -> str:
    out = subprocess.run([espeak, "--version"], capture_output=True, text=True, timeout=30)
    return out.stdout.split("Data at")[0].strip()


def make_corpus(
    out: str | Path,
    n_sentences: int = 60,
    n_voices: int = 6,
    n_test_voices: int | None = None,
    seed: int = 0,
    held_out_words: int = 5,
    espeak: str = "espeak-ng",
    workers: int = 2,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the corpus into ``out``: WAVs, ``manifest.csv`` and ``synthesis.json``.

    Valid WAVs already there are kept; new ones are written whole (through a temporary file).
    The manifest is written last, and only when every utterance exists.

    Returns
    -------
    dict
        ``manifest`` (its path), ``n_utterances``, ``synthesised``, ``kept``, counts per fold
        and label, the voices of each fold.

    Raises
    ------
    CorpusError
        espeak-ng missing, bad sizes, or utterances that could not be synthesised (one line each).
    """
    if shutil.which(espeak) is None:
        raise CorpusError(f"{espeak}: program not found (Debian: apt-get install espeak-ng)")
    out = Path(out)
    rows = plan_corpus(n_sentences, n_voices, n_test_voices, seed, held_out_words)
    (out / "wavs").mkdir(parents=True, exist_ok=True)
    todo = [r for r in rows if not _valid_wav(out / r["path"])]
    if progress:
        print(f"lexical_corpus: {len(rows)} utterances, {len(todo)} to synthesise", file=sys.stderr)

    def job(row: dict[str, Any]) -> str | None:
        try:
            wav = synthesize(row["text"], row["voice"], espeak)
            with atomic_open(out / row["path"], "wb") as fh:
                sf.write(fh, wav, SAMPLE_RATE, format="WAV", subtype="PCM_16")
        except (CorpusError, OSError, RuntimeError, subprocess.SubprocessError) as err:
            return f"{out / row['path']}: {err}"
        return None

    failures: list[str] = []
    step = max(50, len(todo) // 20)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for done, future in enumerate(as_completed([pool.submit(job, r) for r in todo]), 1):
            if (message := future.result()) is not None:
                failures.append(message)
            if progress and (done % step == 0 or done == len(todo)):
                print(f"lexical_corpus: synthesised {done}/{len(todo)}", file=sys.stderr)
    if failures:
        raise CorpusError(
            f"{len(failures)} utterance(s) could not be synthesised:\n"
            + "\n".join(sorted(failures))
        )

    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(text.getvalue(), out / MANIFEST)
    train_templates, test_templates = split_templates(seed)
    fold_voices = {
        fold: sorted({(r["speaker"], r["voice"]) for r in rows if r["fold"] == fold})
        for fold in ("train", "test")
    }
    settings = {
        "generator": "benchmarks/lexical_corpus.py",
        "seed": seed,
        "n_sentences_per_class": n_sentences,
        "classes": list(CLASSES),
        "sample_rate": SAMPLE_RATE,
        "espeak": {
            "version": _espeak_version(espeak),
            "speed": SPEED,
            "pitch": PITCH,
            "amplitude": AMPLITUDE,
            "command": espeak_args("<voice>", "<text>", espeak),
        },
        "voices": {fold: dict(pairs) for fold, pairs in fold_voices.items()},
        "templates": {"train": train_templates, "test": test_templates},
        "held_out_feel_words": held_out_feel_words(seed, held_out_words),
        "counts": {
            fold: dict(sorted(Counter(r["label"] for r in rows if r["fold"] == fold).items()))
            for fold in ("train", "test")
        },
    }
    write_json_atomic(settings, out / SETTINGS)
    return {
        "manifest": str(out / MANIFEST),
        "n_utterances": len(rows),
        "synthesised": len(todo),
        "kept": len(rows) - len(todo),
        "counts": settings["counts"],
        "voices": settings["voices"],
    }


def read_manifest(path: str | Path) -> list[dict[str, str]]:
    """The rows of a ``manifest.csv`` as dicts of strings."""
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


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


# -------------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="the corpus folder (made or completed)")
    parser.add_argument("--n-sentences", type=int, default=60, help="per class (default 60)")
    parser.add_argument("--n-voices", type=int, default=6, help=f"2..{len(VOICES)} (default 6)")
    parser.add_argument("--n-test-voices", type=int, help="held out (default n-voices // 3)")
    parser.add_argument("--held-out-words", type=int, default=5, help="per class (default 5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--espeak", default="espeak-ng")
    parser.add_argument("--nemo", metavar="ROOT", help="also run nemo_text_check on this nEMO")
    args = parser.parse_args(argv)
    if not args.out and not args.nemo:
        parser.error("give --out DIR (and/or --nemo ROOT)")
    try:
        if args.out:
            summary = make_corpus(
                args.out,
                args.n_sentences,
                args.n_voices,
                args.n_test_voices,
                args.seed,
                args.held_out_words,
                args.espeak,
                args.workers,
            )
            check = corpus_text_check(args.out)
            check.pop("predictions")
            print(json.dumps({**summary, "text_only": check}, indent=2))
        if args.nemo:
            print(json.dumps({"nemo_text_only": nemo_text_check(args.nemo)}, indent=2))
    except (CorpusError, ValueError) as err:
        print(f"lexical_corpus: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"lexical_corpus: {err.filename}: {err.strerror}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
