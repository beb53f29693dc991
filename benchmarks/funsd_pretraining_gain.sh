#!/usr/bin/env bash
# Does the pretraining system help? FUNSD entity F1 after the same fine-tuning budget, from random initialisation
# and from a short pretraining run, with the same architecture and vocabulary (fine-tuning's model.init=random
# keeps the model directory's shape and tokenizer and draws fresh weights).
#
# Pretraining corpus: synthetic pages (data_prep.synth) + FUNSD training_data pages with their annotated words as
# the OCR (testing_data is never read before the final score). Everything lands under $OUT.
#
#   bash benchmarks/funsd_pretraining_gain.sh                    # FUNSD from ../shared/data/funsd
#   FUNSD=/data/funsd FLAVOR=small PRETRAIN_STEPS=3000 bash benchmarks/funsd_pretraining_gain.sh
#
# Prints both results.json files; BENCHMARKS.md records the figures with the settings used.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
DEEPSPEED=${DEEPSPEED:-.venv/bin/deepspeed}
FUNSD=${FUNSD:-../shared/data/funsd}
OUT=${OUT:-outputs/funsd_gain}
FLAVOR=${FLAVOR:-tiny}
SYNTH_PAGES=${SYNTH_PAGES:-400}
VOCAB_SIZE=${VOCAB_SIZE:-8000}
MAX_LENGTH=${MAX_LENGTH:-256}
PRETRAIN_STEPS=${PRETRAIN_STEPS:-3000}
PRETRAIN_LR=${PRETRAIN_LR:-1e-3}
IMAGE_TOKENIZER_STEPS=${IMAGE_TOKENIZER_STEPS:-4000}
FINETUNE_STEPS=${FINETUNE_STEPS:-1000}
FINETUNE_LR=${FINETUNE_LR:-5e-4}
FINETUNE_BATCH=${FINETUNE_BATCH:-16}
FINETUNE_DS=${FINETUNE_DS:-ds_configs/finetune_cpu_fp32.json}  # ds_configs/finetune_bf16.json on a GPU
NUM_GPUS=${NUM_GPUS:-2}
export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}

if [[ ! -d "$FUNSD/training_data" || ! -d "$FUNSD/testing_data" ]]; then
    echo "FUNSD not found at $FUNSD (training_data/ and testing_data/ expected); set FUNSD=DIR" >&2
    exit 2
fi
step() { printf '\n== %s\n' "$*"; }

step "corpus: $SYNTH_PAGES synthetic pages + FUNSD training_data (annotated words as OCR)"
"$PYTHON" -m data_prep.synth --out "$OUT/synth" --pages "$SYNTH_PAGES" --seed 7 --quiet
"$PYTHON" -m data_prep.synth --out "$OUT/synth_val" --pages 24 --seed 8 --quiet

step "BPE vocabulary ($VOCAB_SIZE) on both corpora"
"$PYTHON" -m data_prep.train_tokenizer --input "$OUT/synth/annotations" "$FUNSD/training_data/annotations" \
    --out "$OUT/tokenizer" --vocab-size "$VOCAB_SIZE"

step "shards (one dataset: both page sets linked into $OUT/corpus)"
for kind in images annotations; do
    mkdir -p "$OUT/corpus/$kind"
    for source in "$OUT/synth" "$FUNSD/training_data"; do
        ln -sf "$(realpath "$source/$kind")"/* "$OUT/corpus/$kind/"
    done
done
"$PYTHON" -m data_prep.build_shards --input "$OUT/corpus" --out "$OUT/shards/train" --ocr funsd \
    --tokenizer "$OUT/tokenizer" --max-samples-per-shard 50 --quiet
"$PYTHON" -m data_prep.build_shards --input "$OUT/synth_val" --out "$OUT/shards/val" --ocr funsd \
    --tokenizer "$OUT/tokenizer" --max-samples-per-shard 8 --quiet

step "image tokenizer on the corpus pages"
"$PYTHON" launch/train_image_tokenizer.py --config configs/image_tokenizer/tiny.yaml --shards "$OUT/shards/train" \
    --out "$OUT/image_tokenizer" --steps "$IMAGE_TOKENIZER_STEPS" --quiet

step "pretraining: $FLAVOR, $PRETRAIN_STEPS steps, MLM + MIM + WPA"
"$DEEPSPEED" --num_gpus "$NUM_GPUS" launch/pretrain.py --config configs/pretrain/tiny.yaml --resume none \
    --model.flavor "$FLAVOR" --data.train_shards "$OUT/shards/train" --data.val_shards "$OUT/shards/val" \
    --data.tokenizer "$OUT/tokenizer" --data.max_length "$MAX_LENGTH" \
    --objectives.image_tokenizer "$OUT/image_tokenizer" \
    --train.steps "$PRETRAIN_STEPS" --train.lr "$PRETRAIN_LR" --logging.dir "$OUT/runs/pretrain" \
    --logging.val_every 500 --checkpoint.dir "$OUT/checkpoints" --checkpoint.every "$PRETRAIN_STEPS"
"$PYTHON" launch/convert.py --checkpoint "$OUT/checkpoints" --out "$OUT/model" --drop-pretraining-heads

for init in pretrained random; do
    step "fine-tuning on FUNSD from $init weights: $FINETUNE_STEPS steps, batch $FINETUNE_BATCH, lr $FINETUNE_LR"
    "$PYTHON" launch/finetune.py --config configs/finetune/funsd.yaml --data "$FUNSD" --model "$OUT/model" \
        --model.init "$init" --out "$OUT/finetune/$init" --data.max_length "$MAX_LENGTH" --data.stride 64 \
        --train.steps "$FINETUNE_STEPS" --train.global_batch_size "$FINETUNE_BATCH" --train.lr "$FINETUNE_LR" \
        --train.warmup_ratio 0.1 --logging.val_every 100 --deepspeed "$FINETUNE_DS"
done

for init in pretrained random; do
    printf '\n%s: ' "$init"
    cat "$OUT/finetune/$init/results.json"
done
