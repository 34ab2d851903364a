#!/bin/sh
# Builds and runs tests/consumers/consumer.cpp the way a user of safeshard would:
#   consumer.sh pkgconfig|cmake|subproject SOURCE_ROOT CXX
# pkgconfig and cmake install safeshard (headers-only configure, nothing compiled: no tests,
# benchmarks, examples or command-line tool) into a temporary prefix first; subproject links
# the source tree into a meson project's subprojects/.
set -eu
mode=$1 src=$(cd "$2" && pwd) cxx=$3
here="$src/tests/consumers"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/safeshard-consumer-$mode.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
export CXX="$cxx"

install_safeshard() {
    meson setup "$tmp/build" "$src" --prefix="$tmp/prefix" --libdir=lib \
        -Dtests=false -Dbenchmarks=false -Dexamples=false -Dtools=false >"$tmp/setup.log" 2>&1 \
        || { cat "$tmp/setup.log"; exit 1; }
    meson install -C "$tmp/build" --quiet >"$tmp/install.log" 2>&1 \
        || { cat "$tmp/install.log"; exit 1; }
}

case "$mode" in
pkgconfig)
    install_safeshard
    export PKG_CONFIG_PATH="$tmp/prefix/lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
    flags=$(pkg-config --cflags --libs safeshard)
    echo "pkg-config --cflags --libs safeshard: $flags"
    # shellcheck disable=SC2086  # the flags are words
    $cxx -std=c++20 -Wall -Wextra -Werror "$here/consumer.cpp" -o "$tmp/consumer" $flags
    # safeshard-cuda.pc is installed where the CUDA toolkit was found.
    if [ -f "$tmp/prefix/lib/pkgconfig/safeshard-cuda.pc" ]; then
        flags=$(pkg-config --cflags --libs safeshard-cuda)
        echo "pkg-config --cflags --libs safeshard-cuda: $flags"
        # The toolkit's lib64 may not be known to the dynamic linker: run from its -L folder.
        cudart_dir=$(printf '%s\n' $flags | sed -n 's/^-L//p' | head -n 1)
        # shellcheck disable=SC2086
        $cxx -std=c++20 -Wall -Wextra -Werror "$here/cuda_consumer.cpp" -o "$tmp/cuda_consumer" \
            $flags ${cudart_dir:+-Wl,-rpath,"$cudart_dir"}
        "$tmp/cuda_consumer"
    fi
    ;;
cmake)
    install_safeshard
    cp "$here/cmake/CMakeLists.txt" "$here/consumer.cpp" "$tmp/"
    cmake -G Ninja -S "$tmp" -B "$tmp/cbuild" -DCMAKE_PREFIX_PATH="$tmp/prefix" \
        -DCMAKE_CXX_COMPILER="$cxx" >"$tmp/cmake.log" 2>&1 || { cat "$tmp/cmake.log"; exit 1; }
    cmake --build "$tmp/cbuild" >"$tmp/cbuild.log" 2>&1 || { cat "$tmp/cbuild.log"; exit 1; }
    cp "$tmp/cbuild/consumer" "$tmp/consumer"
    ;;
subproject)
    mkdir -p "$tmp/proj/subprojects"
    cp "$here/subproject/meson.build" "$here/consumer.cpp" "$tmp/proj/"
    ln -s "$src" "$tmp/proj/subprojects/safeshard"
    meson setup "$tmp/proj/build" "$tmp/proj" >"$tmp/setup.log" 2>&1 \
        || { cat "$tmp/setup.log"; exit 1; }
    ninja -C "$tmp/proj/build" >"$tmp/ninja.log" 2>&1 || { cat "$tmp/ninja.log"; exit 1; }
    cp "$tmp/proj/build/consumer" "$tmp/consumer"
    ;;
*)
    echo "usage: consumer.sh pkgconfig|cmake|subproject SOURCE_ROOT CXX" >&2
    exit 2
    ;;
esac
"$tmp/consumer"
