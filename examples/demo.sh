#!/usr/bin/env bash
# The README's demo: installs Debian's RELION 3.1 programs (for extraction and 2D classification, when
# relion_schemer of RELION 4/5 is not installed) and this package, then runs the self-supervised loop on a
# small simulated project and prints picking F1 against the truth per iteration (about 5 min on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v relion_schemer >/dev/null 2>&1 && ! command -v relion_refine >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq relion >/dev/null
fi
python3 -m pip install -q torch==2.13.0
python3 -m pip install -q .
relion-plugins demo --force "$@"
