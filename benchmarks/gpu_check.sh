#!/usr/bin/env bash
# The GPU checks of metareid in one short script, for a machine with CUDA devices.
#
# It runs what the CPU machines cannot: the `gpu` tests, the ResNet-50 meta-step timing
# (256 x 128, P = 16, K = 4), the memory of kept vs recomputed chunks at the paper's
# batch (ResNet-50 and IBN-Net50-a, benchmarks/chunked_step.py), a CUDA training smoke in
# fp32, bf16 and fp16 (the GradScaler path), the example's smoke run on CUDA, and the
# 1..N GPU (NCCL) rows of benchmarks/distributed_step.py. Every step writes its full log
# to $OUT/<step>.log and prints its exit code and the last lines; a failing step does not
# stop the others, and the script exits non-zero if any failed. About 8 minutes on one
# H200 before the chunked-step rows were added (not run since: no GPU was lent); nothing
# is downloaded (`--pretrained none`).
#
# Run from the repository root:  OUT=/tmp/gpu_check bash benchmarks/gpu_check.sh
# DEVICE=cpu runs the same commands on the CPU with tiny sizes, without fp16 (to check
# the script; about 2 minutes on 2 cores).
set -u
OUT=${OUT:-gpu_check}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
failed=0

step() {
    local name=$1
    shift
    echo "== $name: $*"
    local start=$SECONDS
    "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "-- $name: exit $rc after $((SECONDS - start)) s"
    tail -n 20 "$OUT/$name.log"
    [ "$rc" -eq 0 ] || failed=1
}

if [ "$DEVICE" = cuda ]; then
    SIZE=(--height 256 --width 128) STEPS=5 ARCH=resnet50 SMOKE_ARCH=resnet18
    AMPS=(off bf16 fp16)
else  # fp16 convolutions on the CPU take minutes per iteration: left out
    SIZE=(--height 64 --width 32) STEPS=1 ARCH=resnet18 SMOKE_ARCH=resnet10
    AMPS=(off bf16)
fi

step versions python -c "import torch, torchvision, metareid; print(torch.__version__, \
torchvision.__version__, metareid.__version__, torch.version.cuda, torch.cuda.is_available(), \
torch.cuda.device_count(), [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])"

if [ "$DEVICE" = cuda ]; then
    step gpu_tests python -m pytest -q -m gpu -p no:cacheprovider
fi

step meta_step python benchmarks/meta_step.py --arch "$ARCH" "${SIZE[@]}" --p 16 --k 4 \
    --device "$DEVICE" --steps "$STEPS"

# Peak memory of one step at the paper's batch (3 x 16 x 4 images), whole batch vs N
# micro-batches, every chunk's graph kept vs recomputed one at a time (--recompute).
if [ "$DEVICE" = cuda ]; then
    CHUNK_ARCHS=(resnet50 ibn_resnet50a) CHUNK_SIZE=(--height 256 --width 128 --p 16 --k 4)
else
    CHUNK_ARCHS=(resnet10) CHUNK_SIZE=(--height 64 --width 32 --p 4 --k 2)
fi
for arch in "${CHUNK_ARCHS[@]}"; do
    step "chunked_step_$arch" python benchmarks/chunked_step.py --arch "$arch" \
        "${CHUNK_SIZE[@]}" --chunks 1 2 4 8 --device "$DEVICE" --steps "$STEPS" \
        --json "$OUT/chunked_step_$arch.json"
done

DATA="$OUT/synthetic"
step synthetic python -m metareid synthetic --data-dir "$DATA"
for amp in "${AMPS[@]}"; do
    step "train_$amp" python -m metareid train --data-dir "$DATA" \
        --sources synthetic:0 synthetic:1 synthetic:2 --target synthetic:3 \
        --arch "$SMOKE_ARCH" --pretrained none --height 64 --width 32 --epochs 1 \
        --iters-per-epoch 10 --device "$DEVICE" --amp "$amp" --no-plots --no-progress \
        --output-dir "$OUT/train_$amp"
done

step example_smoke python examples/reproduce_m3l.py --smoke --synthetic-dir "$DATA" \
    --output-dir "$OUT/example" -- --device "$DEVICE"

step distributed_step python benchmarks/distributed_step.py --iters "$STEPS"

echo "== done: $([ "$failed" -eq 0 ] && echo all steps passed || echo some steps FAILED)"
exit "$failed"
