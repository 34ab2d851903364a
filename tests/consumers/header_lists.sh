#!/bin/sh
# Checks that the lists other checks are built from are complete:
#  - every header under include/safeshard/ (but cuda/) is in tests/consumers/public_headers.txt
#    (compiled on its own) and, but detail/ headers, included by the umbrella safeshard.hpp
#    (the ODR test includes it);
#  - every shard/ and cuda/ header is in tests/cuda/cuda_headers.txt (compiled by nvcc in a
#    .cu file);
#  - every tests/static/*_static.cpp is named in tests/static/meson.build.
# Usage: header_lists.sh SOURCE_ROOT
set -eu
src=$1
cd "$src"
status=0
fail() { echo "FAIL: $*"; status=1; }

listed() { grep -v '^[[:space:]]*#' "$1" | sed '/^[[:space:]]*$/d'; }

for h in $(cd include && find safeshard -name '*.hpp' -o -name '*.cuh' | LC_ALL=C sort); do
    case "$h" in
    safeshard/cuda/* | safeshard/shard/*)
        listed tests/cuda/cuda_headers.txt | grep -qxF "$h" \
            || fail "$h is not in tests/cuda/cuda_headers.txt"
        ;;
    esac
    case "$h" in
    safeshard/cuda/*) ;;
    *)
        listed tests/consumers/public_headers.txt | grep -qxF "$h" \
            || fail "$h is not in tests/consumers/public_headers.txt"
        # The umbrella includes every public header; detail/ headers come in through them.
        case "$h" in safeshard/safeshard.hpp | */detail/*) continue ;; esac
        grep -qF "#include \"$h\"" include/safeshard/safeshard.hpp \
            || fail "$h is not included by include/safeshard/safeshard.hpp"
        ;;
    esac
done
for list in tests/consumers/public_headers.txt tests/cuda/cuda_headers.txt; do
    for h in $(listed "$list"); do
        [ -f "include/$h" ] || fail "$list names $h, which is not under include/"
    done
done
for f in tests/static/*_static.cpp; do
    [ -f "$f" ] || continue
    grep -qF "'$(basename "$f")'" tests/static/meson.build \
        || fail "$f is not listed in tests/static/meson.build"
done
[ $status -eq 0 ] && echo "header lists: complete"
exit $status
