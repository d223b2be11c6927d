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

The parts: the sentences (words, templates, held-out splits) in ``lexical_sentences.py``; the
voices, espeak-ng synthesis and the manifest in ``lexical_synthesis.py``; the text-only checks
(this corpus, nEMO) in ``lexical_text_check.py``. This script is the command line, and
re-exports every name of the three.

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
import json
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "benchmarks"):  # run as a script from anywhere: the checkout's package
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

# The corpus' parts, re-exported: ``lexical_corpus.X`` stays the name of each.
from lexical_sentences import (  # noqa: E402, F401
    CLASSES,
    DESC_WORDS,
    FEEL_WORDS,
    FILLERS,
    TEMPLATES,
    CorpusError,
    held_out_feel_words,
    make_sentences,
    split_templates,
)
from lexical_synthesis import (  # noqa: E402, F401
    AMPLITUDE,
    COLUMNS,
    ESPEAK_RATE,
    MANIFEST,
    PITCH,
    SAMPLE_RATE,
    SETTINGS,
    SPEED,
    VOICES,
    espeak_args,
    make_corpus,
    plan_corpus,
    read_manifest,
    synthesize,
)
from lexical_text_check import (  # noqa: E402, F401
    corpus_text_check,
    nemo_text_check,
    text_only_baseline,
)

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
