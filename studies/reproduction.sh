#!/usr/bin/env bash
# Reproduction study (docs/implementation.md "Reproduction study"): six methods x 5 seeds on the tiny preset,
# then the momentum phase ablation of NAMEx-Full-Mom. Resumable: finished runs are skipped.
# About 45 minutes on 2 CPU cores. Then: python studies/report.py > results/reproduction.md
set -euo pipefail
cd "$(dirname "$0")/.."
NAMEX=${NAMEX:-.venv/bin/namex}
$NAMEX compare --methods namex-full-mom,smoe,ep-camex,namex,camex,smear --seeds 0-4 --jobs 2 \
    --no-progress --out runs/repro
# The remaining methods of the layer, for the per-method table (issue 5).
$NAMEX compare --methods namex-mom,namex-q --seeds 0-4 --jobs 2 --no-progress --out runs/repro-extra
# phi = 0 (real beta), pi/12; pi/6 is the default (the main study's namex-full-mom runs).
$NAMEX compare --methods namex-full-mom --seeds 0-4 --jobs 2 --no-progress --beta-phase 0 \
    --out runs/abl-phi0
$NAMEX compare --methods namex-full-mom --seeds 0-4 --jobs 2 --no-progress \
    --beta-phase 0.2617993877991494 --out runs/abl-phi15
# -pi/12, one seed: must equal +pi/12 bit for bit (conjugate symmetry, results/crosslayer.md).
$NAMEX compare --methods namex-full-mom,namex-full --seeds 0 --jobs 2 --no-progress \
    --beta-phase -0.2617993877991494 --out runs/abl-phim15
# beta = 0 (no momentum): NAMEx-Full.
$NAMEX compare --methods namex-full --seeds 0-4 --jobs 2 --no-progress --out runs/abl-nomom
