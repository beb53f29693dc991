#!/usr/bin/env bash
# The main job on the embedded default, tiny sizes, CPU only, nothing downloaded:
# synthetic corpus -> BPE vocabulary -> shards -> image tokenizer -> DeepSpeed pretraining (2 ranks, gloo)
# -> conversion -> FUNSD-format fine-tuning -> prediction on a page. Everything lands in $OUT (default outputs/).
# Sizes are chosen to finish in minutes on a 2-core machine; configs/pretrain/tiny.yaml documents each input.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
DEEPSPEED=${DEEPSPEED:-.venv/bin/deepspeed}
PRETRAIN_STEPS=${PRETRAIN_STEPS:-100}
IMAGE_TOKENIZER_STEPS=${IMAGE_TOKENIZER_STEPS:-300}
export DS_ACCELERATOR=cpu

step() { printf '\n== %s\n' "$*"; }

step "1/8 synthetic corpus (train + validation pages)"
"$PYTHON" -m data_prep.synth --out outputs/synth/pretrain --pages 240 --seed 0 --quiet
"$PYTHON" -m data_prep.synth --out outputs/synth/pretrain_val --pages 24 --seed 1 --quiet

step "2/8 BPE vocabulary trained on the corpus"
"$PYTHON" -m data_prep.train_tokenizer --input outputs/synth/pretrain/annotations --out outputs/tokenizer/tiny \
    --vocab-size 2000

step "3/8 tokenized webdataset shards"
"$PYTHON" -m data_prep.build_shards --input outputs/synth/pretrain --out outputs/shards/tiny/train --ocr funsd \
    --tokenizer outputs/tokenizer/tiny --max-samples-per-shard 24 --quiet
"$PYTHON" -m data_prep.build_shards --input outputs/synth/pretrain_val --out outputs/shards/tiny/val --ocr funsd \
    --tokenizer outputs/tokenizer/tiny --max-samples-per-shard 6 --quiet

step "4/8 image tokenizer (VQ-VAE) for masked image modeling"
"$PYTHON" launch/train_image_tokenizer.py --config configs/image_tokenizer/tiny.yaml \
    --images outputs/synth/pretrain/images --steps "$IMAGE_TOKENIZER_STEPS" --quiet

step "5/8 pretraining: MLM + MIM + WPA, DeepSpeed ZeRO-2, 2 CPU ranks"
"$DEEPSPEED" --num_gpus 2 launch/pretrain.py --config configs/pretrain/tiny.yaml \
    --train.steps "$PRETRAIN_STEPS" --checkpoint.every "$PRETRAIN_STEPS" --logging.val_every 50

step "6/8 DeepSpeed checkpoint -> model directory"
"$PYTHON" launch/convert.py --checkpoint outputs/checkpoints/pretrain/tiny --out outputs/models/tiny

step "7/8 fine-tuning on synthetic FUNSD-format forms"
"$PYTHON" launch/finetune.py --config configs/finetune/tiny.yaml --model outputs/models/tiny

step "8/8 prediction on a page"
page=$(find outputs/finetune/tiny/synthetic/testing_data/images -name '*.png' | sort | head -n 1)
"$PYTHON" launch/predict.py --model outputs/finetune/tiny/best --image "$page" --out outputs/predict/page.json \
    --viz outputs/predict/page.png
printf '\nDone: entities in outputs/predict/page.json, picture in outputs/predict/page.png\n'
