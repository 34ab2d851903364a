#!/usr/bin/env bash
# Builds every tests/fuzz/*_fuzz.cpp as a libFuzzer binary and runs each for SECONDS (default
# 60; FUZZ_JOBS of them at a time, default one per core) on a temp copy of its seed corpus
# (tests/fuzz/corpus/<target>/, if present), so new finds never land in the repository. Exits
# non-zero when any target fails to build or crashes; crash inputs are copied to
# $FUZZ_ARTIFACTS (default: fuzz-artifacts/ in the current folder).
# With FUZZ_KEEP_CORPUS=DIR, each target's final corpus is copied to DIR/<target>/.
set -u
seconds="${1:-60}"
root="$(cd "$(dirname "$0")/../.." && pwd)"
cxx="${CXX_FUZZ:-clang++}"
work="$(mktemp -d "${TMPDIR:-/tmp}/safeshard-fuzz.XXXXXX")"
trap 'rm -rf "$work"' EXIT
artifacts="${FUZZ_ARTIFACTS:-$PWD/fuzz-artifacts}"
read -r -a simdjson_flags <<< "$(pkg-config --cflags --libs simdjson)"
status=0
shopt -s nullglob
targets=("$root"/tests/fuzz/*_fuzz.cpp)
if [ ${#targets[@]} -eq 0 ]; then
    echo "no fuzz targets in $root/tests/fuzz" >&2
    exit 1
fi
# One target: build, then run; its report goes to $work/<name>.report, and $work/<name>.failed
# marks a failure.
run_one() {
    local src=$1 name bin corpus
    name="$(basename "$src" .cpp)"
    bin="$work/$name"
    echo "== $name: building"
    if ! "$cxx" -std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
            -I"$root/include" "$src" -o "$bin" "${simdjson_flags[@]}"; then
        echo "== $name: BUILD FAILED" >&2
        touch "$work/$name.failed"
        return
    fi
    corpus="$work/corpus-$name"
    mkdir -p "$corpus" "$work/artifacts-$name"
    if [ -d "$root/tests/fuzz/corpus/$name" ]; then
        cp -r "$root/tests/fuzz/corpus/$name/." "$corpus/"
    fi
    echo "== $name: running ${seconds}s"
    if ! "$bin" "$corpus" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
            -artifact_prefix="$work/artifacts-$name/" -print_final_stats=1 2>"$work/$name.log"; then
        echo "== $name: FAILED" >&2
        tail -n 60 "$work/$name.log" >&2
        mkdir -p "$artifacts/$name"
        cp "$work/artifacts-$name/"* "$artifacts/$name/" 2>/dev/null || true
        echo "== $name: crash inputs copied to $artifacts/$name" >&2
        touch "$work/$name.failed"
    else
        grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|#[0-9]+ +DONE)' "$work/$name.log" || true
        if [ -n "${FUZZ_KEEP_CORPUS:-}" ]; then
            mkdir -p "$FUZZ_KEEP_CORPUS/$name"
            cp -r "$corpus/." "$FUZZ_KEEP_CORPUS/$name/"
        fi
        echo "== $name: ok"
    fi
}

# libFuzzer runs on one core: $FUZZ_JOBS targets (default: one per core) build and run side by
# side, each for the full time; their reports are printed in order once all are done.
jobs="${FUZZ_JOBS:-$(nproc 2>/dev/null || echo 1)}"
running=0
for src in "${targets[@]}"; do
    if [ "$running" -ge "$jobs" ]; then
        wait -n || true
        running=$((running - 1))
    fi
    run_one "$src" >"$work/$(basename "$src" .cpp).report" 2>&1 &
    running=$((running + 1))
done
wait
for src in "${targets[@]}"; do
    name="$(basename "$src" .cpp)"
    cat "$work/$name.report"
    [ ! -e "$work/$name.failed" ] || status=1
done
exit $status
