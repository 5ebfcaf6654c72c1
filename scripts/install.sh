#!/usr/bin/env bash
# Installs valle-jax and everything it needs on a fresh Debian machine with Python >= 3.10.
#   bash scripts/install.sh          # the package, data prep, codecs, evaluation, tests
# System packages come from Debian main through apt-get (sudo is used when not root).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# --- System packages (Debian main) ---------------------------------------------------
# espeak-ng: phonemes and voices; flite, festival + festvox voices and the KJV Bible text
# (bible-kjv pulls bible-kjv-text): the built-in synthetic corpus (`valle-jax make-corpus`).
# chromium: the headless-browser check of report.html (tests/test_report.py).
APT_PACKAGES=(espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts
              bible-kjv chromium)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "[install] apt-get install ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- Python packages ---------------------------------------------------------------------
# torch first and exactly, so nothing later resolves a multi-GB CUDA build: 2.13.0 is the
# CPU wheel on this project's machines; any torch already installed in range is kept.
if ! $PY -c "import torch" 2>/dev/null; then
  $PY -m pip install -q "torch==2.13.0" || $PY -m pip install -q --index-url https://download.pytorch.org/whl/cpu torch
fi
$PY -m pip install -q -e ".[all]"
# `encodec` without its declared deps (torchaudio would pull a second, CUDA torch).
$PY -m pip install -q --no-deps "encodec>=0.1.1,<0.2"
# `resemblyzer` without its declared deps (its `webrtcvad` needs a compiler; the EVAL extra
# installs webrtcvad-wheels, the same module prebuilt).
$PY -m pip install -q --no-deps "resemblyzer>=0.1.3,<0.2"
echo "[install] done: $($PY -c 'import jax, flax; print("jax", jax.__version__, "flax", flax.__version__)')"
