#!/bin/bash
# Everything the CUDA engine needs a GPU for, in one run of about 8 minutes (run from the
# repository root on the GPU machine):
#   1. configure build-gpu (-Dcuda=enabled -Dwerror=true; the default debugoptimized build,
#      as proven with -Werror on g++ 12; the benchmark's hot path is pread and cudaMemcpy)
#      and build only the CUDA targets
#   2. transformers checkpoints and torch's per-rank slices (tools/gpu/hf_reference.py, about
#      20 s on a 2-core host: llama, qwen2 and the mixtures of experts mixtral, qwen2_moe,
#      qwen3_moe, deepseek_v3, these also with their experts stacked: <arch>-stacked, and
#      gpt_oss and llama4, stacked in their own forms), checked on the host first with the
#      safeshard tool's plan and export, the stacked ones merged back too
#      (tools/gpu/compare_refs.py: about 25 s on a 2-core host, every form included)
#   3. meson test --suite cuda (the GPU test compares them too: SAFESHARD_HF_DIR)
#   4. the GPU test once under compute-sanitizer memcheck (a subset, for time)
#   5. peer figures (.device/peer_bench.py --make, when present) and cuda_bench on the same
#      files: P5-P8 and a sweep
# Every step has a time limit; a failed step is logged and the next one runs. Logs go to
# $OUT (default /tmp/out): summary.log first, then one log per step.
#   OUT=/tmp/out tools/gpu/gpu-check.sh [TOTAL_SECONDS]
set -u
OUT=${OUT:-/tmp/out}
TOTAL=${1:-470}
BUILD=${BUILD:-build-gpu}
HF_DIR=${HF_DIR:-/tmp/safeshard-hf}
PEER_DIR=${PEER_DIR:-/tmp/safeshard-peer}
GIB=${GIB:-2}
mkdir -p "$OUT"
START=$(date +%s)
SUMMARY="$OUT/summary.log"
: > "$SUMMARY"

log() { echo "[$(date -u +%H:%M:%S) +$(( $(date +%s) - START ))s] $*" | tee -a "$SUMMARY"; }

# step NAME LIMIT CMD...: runs CMD with the smaller of LIMIT and the time left, output to
# $OUT/NAME.log; returns CMD's status (124: timed out).
step() {
    local name=$1 limit=$2
    shift 2
    local left=$(( TOTAL - ($(date +%s) - START) ))
    if [ "$left" -lt 15 ]; then
        log "SKIP $name: out of time"
        return 125
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    log "RUN  $name (limit ${limit}s): $*"
    local t0
    t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    local what=ok
    [ $rc -ne 0 ] && what=FAILED
    [ $rc -eq 124 ] && what=TIMEOUT
    [ $rc -eq 77 ] && what=SKIPPED
    log "$what $name: rc=$rc in $(( $(date +%s) - t0 ))s (log: $OUT/$name.log)"
    return $rc
}

# The packages brought along (DEVICE.md), when they are.
if [ -f .device/on-device.sh ]; then
    set +u
    # shellcheck disable=SC1091
    . .device/on-device.sh > "$OUT/on-device.log" 2>&1 || log "on-device.sh failed (see on-device.log)"
    set -u
fi
export PATH="/usr/local/cuda/bin:$PATH"
MESON=(meson)
command -v meson > /dev/null || MESON=(python3 -m mesonbuild.mesonmain)

{
    date -u
    uptime
    git log --oneline -1 2>/dev/null
    nvidia-smi 2>&1 | head -20
    nvcc --version 2>&1 | tail -2
    g++ --version | head -1
    "${MESON[@]}" --version
    python3 -c 'import torch, transformers, safetensors; print("torch", torch.__version__, "transformers", transformers.__version__, "safetensors", safetensors.__version__)' 2>&1
    free -g
} > "$OUT/machine.log" 2>&1
log "machine: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1); load $(cut -d' ' -f1-3 /proc/loadavg)"

# 1. configure and build
if [ -d "$BUILD" ]; then
    step setup 60 "${MESON[@]}" setup --reconfigure "$BUILD" -Dcuda=enabled -Dwerror=true -Dbenchmarks=true -Dexamples=false
else
    step setup 60 "${MESON[@]}" setup "$BUILD" -Dcuda=enabled -Dwerror=true -Dbenchmarks=true -Dexamples=false
fi
TARGETS="tests/cuda/cuda_engine_tests tests/cuda/cuda_gpu_tests tests/cuda/cuda_compile_test benchmarks/cuda/cuda_bench"
# shellcheck disable=SC2086
if ! step build 240 ninja -C "$BUILD" $TARGETS; then
    # a newer compiler's warning must not cost the GPU figures: once more without -Werror
    log "retrying the build without -Werror (the warnings are in build.log)"
    step setup-nowerror 60 "${MESON[@]}" setup --reconfigure "$BUILD" -Dwerror=false
    # shellcheck disable=SC2086
    step build-nowerror 240 ninja -C "$BUILD" $TARGETS
fi

# 2. transformers checkpoints and torch's slices; the safeshard tool (when the build has it:
#    CLI11 and fmt found) checks them on the host
rm -rf "$HF_DIR"
if HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 step hf_reference 120 python3 tools/gpu/hf_reference.py "$HF_DIR"; then
    export SAFESHARD_HF_DIR="$HF_DIR"
    sed 's/^/     /' "$OUT/hf_reference.log" | grep -v "Writing model" >> "$SUMMARY"
    if ninja -C "$BUILD" -t targets all 2>/dev/null | grep -q '^tools/safeshard:' &&
        step build_cli 120 ninja -C "$BUILD" tools/safeshard; then
        step compare_refs 90 python3 tools/gpu/compare_refs.py "$BUILD/tools/safeshard" "$HF_DIR"
        grep -v "^ok " "$OUT/compare_refs.log" | head -30 | sed 's/^/     /' | tee -a "$SUMMARY"
    else
        log "SKIP compare_refs: no tools/safeshard target in $BUILD"
    fi
fi

# 3. the CUDA suite (fake transport, nvcc compile test, GPU test with the transformers check)
step meson_test_cuda 240 "${MESON[@]}" test -C "$BUILD" --suite cuda --no-rebuild --print-errorlogs --timeout-multiplier 2
cp "$BUILD/meson-logs/testlog.txt" "$OUT/meson-testlog.txt" 2>/dev/null
echo "     $(grep -E '^(Ok|Fail|Skipped|Timeout):' "$OUT/meson_test_cuda.log" | tr -s ' \n' ' ')" | tee -a "$SUMMARY"
grep -E '^ *[0-9]+/[0-9]+ ' "$OUT/meson_test_cuda.log" | sed 's/^/     /' | tee -a "$SUMMARY"
echo "     $(grep -h "equal torch" "$BUILD/meson-logs/testlog.txt" 2>/dev/null | sort -u | wc -l) loads equal torch's slices (host, staged, registered)" >> "$SUMMARY"
grep -h "equal torch" "$BUILD/meson-logs/testlog.txt" 2>/dev/null | sort -u | grep " rank 0 " | head -12 >> "$SUMMARY"

# 4. memcheck (the intentional-error test case is left out: its API error is expected)
SAN=/usr/local/cuda/bin/compute-sanitizer
if [ -x "$SAN" ]; then
    step memcheck 120 "$SAN" --tool memcheck --error-exitcode 9 --leak-check full \
        "$BUILD/tests/cuda/cuda_gpu_tests" \
        '-tc=narrowing*,load<cuda_tensor>*,a user allocator*'
    grep -E "ERROR SUMMARY|LEAK SUMMARY|test cases" "$OUT/memcheck.log" | sed 's/^/     /' | tee -a "$SUMMARY"
else
    log "SKIP memcheck: no $SAN"
fi

# 5. peers and cuda_bench on the same files, page cache warm
PEER_ARGS=""
if [ -f .device/peer_bench.py ]; then
    rm -rf "$PEER_DIR"
    if step peer_bench 150 python3 .device/peer_bench.py "$PEER_DIR" --make --gib "$GIB" --reps 3 --json "$OUT/peer.json"; then
        PEER_ARGS="--dir $PEER_DIR --peer-json $OUT/peer.json"
    elif [ -n "$(ls "$PEER_DIR"/*.safetensors 2>/dev/null)" ]; then
        PEER_ARGS="--dir $PEER_DIR"
    fi
    sed 's/^/     /' "$OUT/peer_bench.log" | tail -8 >> "$SUMMARY"
else
    log "no .device/peer_bench.py: cuda_bench writes its own files"
fi
# shellcheck disable=SC2086
step cuda_bench 200 "$BUILD/benchmarks/cuda/cuda_bench" --gib "$GIB" --runs 5 $PEER_ARGS --sweep \
    --sweep-buffers "${SWEEP_BUFFERS:-16}" --sweep-mib "${SWEEP_MIB:-4,8}" \
    --sweep-streams "${SWEEP_STREAMS:-2}" --sweep-threads "${SWEEP_THREADS:-8,12,16}" \
    --p7-threads "${P7_THREADS:-12,16}"
grep -E "^(P[5-8]|limit|best|NVIDIA|skip)" "$OUT/cuda_bench.log" | sed 's/^/     /' | tee -a "$SUMMARY"

rm -rf "$PEER_DIR" "$HF_DIR"
log "done in $(( $(date +%s) - START ))s; logs in $OUT"
exit 0
