#!/usr/bin/env bash
# Set up .venv/ at the repo root with speechmtp and its dependencies (idempotent).
#   scripts/setup.sh            engine + CLI
#   scripts/setup.sh test       + test tools, the offline teacher voice and ASR, headless Chromium
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-run}"

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# torch==2.9.1 and torchaudio==2.9.1 are pinned as a pair in pyproject.toml.
target="."  # the engine and CLI; the teacher voice and ASR are only needed to make data and evaluate
if [ "$what" = "test" ]; then
  target=".[test,data,eval]"
fi
.venv/bin/pip install --quiet --disable-pip-version-check -e "$target"

if [ "$what" = "test" ] && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
  # Browser test needs Debian's chromium; demos' audio path needs PortAudio. Best effort:
  # the tests that need them skip with a reason when they are missing.
  if ! command -v chromium >/dev/null || ! ldconfig -p | grep -q libportaudio; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium libportaudio2 >/dev/null) \
      || echo "setup: could not install chromium/libportaudio2; browser and audio-device tests will skip" >&2
  fi
fi
