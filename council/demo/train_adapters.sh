#!/bin/sh
# The demo's six LoRA specialists over council/demo/general (TRAINING.md, "Specialists as adapters"):
# world seed 0, the full branches' members, splits, seeds and step counts (legal/medical 300, finance 500),
# LoRA rank 32 / alpha 64 on the input embeddings and q,k,v,o,gate,up,down, lr 3e-3 (the LoraPlan defaults; without
# the embeddings finance learnt nothing even at rank 128: TRAINING.md). Two processes of one thread each.
set -e
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
run() { nice -n 10 "$PY" -m council.jobs.specialize --out council/demo --general-from council/demo/general \
    --adapters --threads 1 "$@"; }
mkdir -p runs
# Each member is its own command (its adapter is saved when it ends): on a busy box the first ones land first.
( run --only legal-1 --branch-steps 300 && run --only legal-2 --branch-steps 300 \
    && run --only finance-1 --branch-steps 500 ) > runs/adapters-a.log 2>&1 &
( run --only medical-1 --branch-steps 300 && run --only medical-2 --branch-steps 300 \
    && run --only finance-2 --branch-steps 500 ) > runs/adapters-b.log 2>&1 &
wait
