"""Shared test fixtures: where the real corpora live, and the offline Whisper cache."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

# Several tests interrupt a child process with SIGINT and expect its "interrupted" line. A test
# run started in the background without job control (``cmd &`` in a script, some CI runners)
# ignores SIGINT, children inherit the ignored disposition, and Python then installs no
# KeyboardInterrupt handler: the interrupt would be lost. With a handler here, every child starts
# with SIGINT at its default, as in a terminal.
signal.signal(signal.SIGINT, signal.default_int_handler)

REPO_ROOT = Path(__file__).resolve().parents[1]
# Recipe overrides for a small, fast emotion model: whisper-tiny.en (4 blocks of 384), a small
# head. Tests add their own epochs, folds and validation split.
TINY_WHISPER = [
    "--encoder_source=whisper-tiny.en",
    "--n_encoder_blocks=4",
    "--encoder_dim=384",
    "--fusion_blocks=[1,2]",
    "--d_model=64",
    "--d_ffn=128",
]
# The corpora are read in place from ../shared/data beside the checkout (never copied in).
SHARED_DATA = Path(os.environ.get("QIEEMO_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "emodb").is_dir():
        pytest.skip(f"real corpora not found under {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def emodb_dir(shared_data: Path) -> Path:
    return shared_data / "emodb"


@pytest.fixture(scope="session")
def ravdess_dir(shared_data: Path) -> Path:
    return shared_data / "ravdess"
