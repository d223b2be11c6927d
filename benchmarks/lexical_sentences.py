"""The text of the lexical corpus (``benchmarks/lexical_corpus.py``): words, templates, sentences.

Four classes, each with its own "feeling" and "description" words (:data:`FEEL_WORDS`,
:data:`DESC_WORDS`, disjoint between classes), neutral fillers shared by every class
(:data:`FILLERS`) and sentence templates with two emotional slots (:data:`TEMPLATES`).
:func:`make_sentences` fills them: sentence ``k`` of every class shares one template and its
fillers, so the classes differ only in their emotional words; the test sentences use templates
(:func:`split_templates`) and feeling words (:func:`held_out_feel_words`) never seen in training.
No audio here: ``lexical_synthesis.py`` speaks the sentences. ``lexical_corpus.py`` re-exports
every name.

Example
-------
>>> rows = make_sentences(4, seed=0)
>>> sorted({(r["fold"], r["label"]) for r in rows})[:2]
[('test', 'angry'), ('test', 'happy')]
>>> all(r["feel_word"] in r["text"] and r["desc_word"] in r["text"] for r in rows)
True
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

CLASSES = ("angry", "happy", "neutral", "sad")

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
