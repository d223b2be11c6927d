#!/usr/bin/env python3
"""Qieemo emotion recognition on a corpus described by a CSV manifest, one fold.

    python train.py hparams/qieemo.yaml --data_folder=DIR --test_fold=K

The recipe logic is shared by every corpus (``qieemo_lobes.recipe``); this file only names the
corpus' data preparation.
"""

from custom_prepare import prepare_custom

from qieemo_lobes.recipe import run_training

if __name__ == "__main__":
    run_training(prepare_custom)
