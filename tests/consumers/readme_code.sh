#!/bin/sh
# Writes the ```cpp blocks of README.md, in order, into one C++ file (the README's tour is
# compiled and run by the `readme` test). Other fences (```sh, ```text, ```c++) are left out.
# Usage: readme_code.sh README.md OUTPUT.cpp
set -eu
{
    echo "// Generated from README.md by tests/consumers/readme_code.sh: do not edit."
    awk '/^```cpp[[:space:]]*$/ { inside = 1; next } /^```/ { inside = 0 } inside' "$1"
} >"$2"
grep -q 'int main' "$2" || { echo "README.md has no \`\`\`cpp block with main()" >&2; exit 1; }
