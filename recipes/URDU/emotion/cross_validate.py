#!/usr/bin/env python3
"""Qieemo on URDU: every protocol fold, then a summary, a confusion plot and a report.

    python cross_validate.py hparams/qieemo.yaml --data_folder=DIR --output_folder=OUT \
        [--folds 1,3] [--use_cma=False ...]
"""

import sys
from pathlib import Path

from urdu_prepare import list_utterances

from qieemo_lobes.cross_validation import run_cross_validation

if __name__ == "__main__":
    sys.exit(run_cross_validation(Path(__file__).with_name("train.py"), list_utterances))
