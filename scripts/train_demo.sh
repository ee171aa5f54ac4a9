#!/usr/bin/env bash
# Reproduce the shipped demo model (janus-shapes) from nothing, with the project's own recipe:
# shapes-world data -> tokenizer -> VQ, SigLIP and text pretraining -> pretokenize -> Stage I, II, III
# -> export to openjanus/assets/janus-shapes. About 4 hours on a 2-core CPU.
set -euo pipefail
# Ctrl-C or SIGTERM stops a training step at its next step boundary, writes a checkpoint and exits
# with status 75 (interrupted, resumable), so `set -e` stops the script there instead of exporting
# an unfinished run: rerun that command with --resume, then the rest of the script.
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=PASSIVE  # OpenMP spin-waiting wrecks throughput when cores are shared
D=runs/demo

# 1. Data: the training split of the shapes world (held-out compositions never appear).
#    Generation data is drawn on plain backgrounds (prompts never name the background, and the
#    small VQ then spends its codes on the objects); the VQ first learns on all four background
#    kinds, and understanding data keeps all four.
openjanus eval export-dataset --kind t2i -n 80000 --seed 11 --split train --image-size 64 --workers 2 \
    --out $D/data/t2i-mixed
openjanus eval export-dataset --kind t2i -n 60000 --seed 11 --split train --image-size 64 --background plain \
    --workers 2 --out $D/data/t2i
openjanus eval export-dataset --kind und -n 60000 --seed 12 --split train --image-size 64 --out $D/data/und
openjanus eval export-dataset --kind text -n 40000 --seed 13 --split train --out $D/data/text

# 2. Tokenizer: the fixed one the shipped model uses (byte-level BPE with the Janus special tokens,
#    527 ids, made by scripts/make_demo_tokenizer.py; see its docstring for why it is kept fixed).
mkdir -p $D && cp -r configs/demo/tokenizer $D/tokenizer

# 3. The parts, from scratch (they can run side by side, one thread each).
openjanus train configs/demo/vq.json        # 900 steps on mixed backgrounds
openjanus train configs/demo/vq-plain.json  # 700 more on plain ones, re-seeding unused codes
OMP_NUM_THREADS=1 openjanus train configs/demo/siglip.json
OMP_NUM_THREADS=1 openjanus train configs/demo/text.json --override stage.steps=131

# 4. Text-to-image pairs to VQ codes, once (the VQ stays frozen from here on).
openjanus train pretokenize --model $D/vq-plain/export --data $D/data/t2i --out $D/data/gen-codes

# 5. The Janus-Pro stages.
openjanus train configs/demo/stage1.json
openjanus train configs/demo/stage2.json
openjanus train configs/demo/stage3.json  # 4,300 steps, ~2 h; constant lr, so it can stop and --resume

# 6. Ship: official layout, with the tokenizer and processor files.
openjanus train export $D/stage3 --out openjanus/assets/janus-shapes --tokenizer $D/tokenizer
