#!/usr/bin/env bash
# All the GPU work of the performance issue in one run (<= 8 minutes on one H100/H200), every result under OUT:
#
#   bash benchmarks/gpu_run.sh OUT            # on the GPU machine, from the repository root
#   bash benchmarks/gpu_run.sh OUT --cpu      # the same steps at CPU sizes: a rehearsal, so GPU time is spent
#                                             # measuring, not debugging
#
# Steps, each under its own time limit, each logged to OUT/logs/<step>.log; a failed step does not stop the
# others, and OUT/steps.jsonl records every step's exit code and seconds:
#   install      offline wheels (.whl/ from ../shared/device/prepare.sh) when deepspeed/webdataset are missing
#   env          nvidia-smi, torch/CUDA/DeepSpeed versions                                   -> env.txt
#   fused_adam   builds DeepSpeed's FusedAdam (ninja + nvcc)                                  (GPU only)
#   flex_check   flex vs sdpa in bf16 on base: loss and bias-table gradients                 -> flex_check.json
#   train_step   base at 3 batch sizes: ours (sdpa, flex, +/- compile) vs transformers (+/- compile), samples/s,
#                MFU, peak memory                                                             -> train_step.json, .png
#   world        synthetic pages -> BPE -> shards -> a tiny image tokenizer, for the runs below
#   pretrain     the real launcher, ZeRO-2 bf16 on the GPU: 200 steps straight; then 100 + resume to 200;
#                per-step losses compared                                                     -> resume.json
#   loader       the loader's samples/s (collator and masking included) beside the step's     -> loader.txt
set -uo pipefail

OUT=${1:?usage: benchmarks/gpu_run.sh OUT [--cpu]}
MODE=gpu
[ "${2:-}" = --cpu ] && MODE=cpu
cd "$(dirname "$0")/.."
mkdir -p "$OUT/logs"
OUT=$(cd "$OUT" && pwd)
PYTHON=${PYTHON:-python3}
: >"$OUT/steps.jsonl"

step() {  # NAME LIMIT_S COMMAND...: run, log, record
    local name=$1 limit=$2 started rc
    shift 2
    started=$(date +%s)
    echo "$(date -u +%T) $name (limit ${limit}s)"
    timeout "$limit" "$@" >"$OUT/logs/$name.log" 2>&1
    rc=$?
    printf '{"step": "%s", "rc": %d, "seconds": %d}\n' "$name" "$rc" "$(($(date +%s) - started))" >>"$OUT/steps.jsonl"
    [ "$rc" -eq 0 ] || { echo "  $name failed ($rc):"; tail -n 5 "$OUT/logs/$name.log" | sed 's/^/    /'; }
    return 0
}

install_wheels() {
    if "$PYTHON" -c "import deepspeed, webdataset, seqeval" 2>/dev/null; then
        echo "deepspeed, webdataset and seqeval already importable"
        return 0
    fi
    ls .whl/*.whl >/dev/null || { echo "no .whl/: run ../shared/device/prepare.sh first"; return 1; }
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
}
export PYTHON
export -f install_wheels
step install 120 bash -c install_wheels
export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}

if [ "$MODE" = gpu ]; then
    FLAVOR=base BATCHES=8,16,32 DTYPE=bf16 DEVICE=cuda COMPILE=both ATTN=sdpa,flex
    PRETRAIN_STEPS=200 RANKS=1 DS_JSON=ds_configs/zero2_bf16.json PAGES=96
    export DS_ACCELERATOR=cuda
else
    FLAVOR=tiny BATCHES=1,2 DTYPE=fp32 DEVICE=cpu COMPILE=off ATTN=sdpa
    PRETRAIN_STEPS=12 RANKS=2 DS_JSON=ds_configs/cpu_fp32.json PAGES=24
    export DS_ACCELERATOR=cpu OMP_NUM_THREADS=1
fi
HALF=$((PRETRAIN_STEPS / 2))
WORLD=$OUT/world
export FLAVOR BATCHES DTYPE DEVICE COMPILE ATTN PRETRAIN_STEPS RANKS DS_JSON PAGES HALF WORLD OUT

environment() {
    { command -v nvidia-smi >/dev/null && nvidia-smi; } || echo "no nvidia-smi"
    "$PYTHON" -c "import torch, deepspeed, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else None, 'deepspeed', deepspeed.__version__,
'transformers', transformers.__version__)"
}
export -f environment
step env 30 bash -c environment
cp "$OUT/logs/env.log" "$OUT/env.txt"

[ "$MODE" = gpu ] && step fused_adam 150 "$PYTHON" -m layoutlmv3.training.extensions --ops FusedAdamBuilder

step flex_check 120 "$PYTHON" benchmarks/flex_check.py --flavor "$FLAVOR" --device "$DEVICE" --dtype "$DTYPE" \
    --json "$OUT/flex_check.json"

step train_step 200 "$PYTHON" benchmarks/train_step.py --flavor "$FLAVOR" --batch "$BATCHES" --device "$DEVICE" \
    --dtype "$DTYPE" --compile "$COMPILE" --attn "$ATTN" --warmup 3 --steps 5 --rounds 3 \
    --json "$OUT/train_step.json" --plot "$OUT/throughput_${FLAVOR}.png"

make_world() {
    set -e
    "$PYTHON" -m data_prep.synth --out "$WORLD/pages" --pages "$PAGES" --seed 0 --quiet
    "$PYTHON" -m data_prep.train_tokenizer --input "$WORLD/pages/annotations" --out "$WORLD/vocab" --vocab-size 2000
    "$PYTHON" -m data_prep.build_shards --input "$WORLD/pages" --out "$WORLD/shards" --ocr funsd \
        --tokenizer "$WORLD/vocab" --max-samples-per-shard 12 --quiet
    "$PYTHON" launch/train_image_tokenizer.py --config configs/image_tokenizer/tiny.yaml \
        --images "$WORLD/pages/images" --out "$WORLD/image_tokenizer" --steps 50 --quiet
}
export -f make_world
step world 120 bash -c make_world

pretrain() {  # DIR [overrides...]: the real launcher on the world, logs and checkpoints in DIR
    local dir=$1
    shift
    "$PYTHON" -m deepspeed.launcher.runner --num_gpus "$RANKS" --master_port "$((29500 + RANDOM % 1000))" \
        launch/pretrain.py --config configs/pretrain/tiny.yaml --deepspeed "$DS_JSON" --train.global_batch_size null \
        --data.train_shards "$WORLD/shards" --data.val_shards null --data.tokenizer "$WORLD/vocab" \
        --objectives.image_tokenizer "$WORLD/image_tokenizer" --train.steps "$PRETRAIN_STEPS" \
        --logging.every 20 --logging.progress false --checkpoint.every "$HALF" \
        --checkpoint.dir "$dir/checkpoints" --logging.dir "$dir/runs" "$@"
}
compare_resume() {
    "$PYTHON" - "$OUT" "$HALF" "$PRETRAIN_STEPS" <<'EOF'
import json, sys
out, half, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def losses(name):
    lines = open(f"{out}/{name}/runs/metrics.jsonl").read().splitlines()
    return {r["step"]: r["train/loss"] for r in map(json.loads, lines) if "train/loss" in r}
straight, resumed = losses("pretrain_straight"), losses("pretrain_resumed")
diffs = [abs(straight[s] - resumed[s]) for s in range(half + 1, steps + 1)]
result = {"steps": steps, "resumed_at": half, "max_abs_difference": max(diffs), "exact": max(diffs) == 0.0,
          "first_loss": straight[1], "last_loss": straight[steps]}
print(json.dumps(result))
json.dump(result, open(f"{out}/resume.json", "w"), indent=2)
sys.exit(0 if max(diffs) <= 1e-6 else 1)
EOF
}
export -f pretrain compare_resume
step pretrain_straight 150 bash -c "pretrain $OUT/pretrain_straight"
step pretrain_first_half 120 bash -c "pretrain $OUT/pretrain_resumed --train.stop_at_step $HALF"
step pretrain_resume 120 bash -c "pretrain $OUT/pretrain_resumed --resume auto"
step resume_check 30 bash -c compare_resume

step loader 90 "$PYTHON" benchmarks/loader_throughput.py --workers 0 2 --batches 20
{
    cat "$OUT/logs/loader.log"
    "$PYTHON" -c "import json, sys; r = [json.loads(l) for l in open(sys.argv[1])][-1]
print(f'training step (tiny, {sys.argv[2]} rank(s)): {r[\"perf/samples_per_s\"]:.1f} samples/s over all ranks')" \
        "$OUT/pretrain_straight/runs/metrics.jsonl" "$RANKS" 2>/dev/null
} >"$OUT/loader.txt"

failed=$(grep -vc '"rc": 0' "$OUT/steps.jsonl" || true)
echo "$(date -u +%T) done: $failed step(s) failed; results in $OUT (steps.jsonl, logs/)"
[ "$failed" -eq 0 ]
