#!/bin/sh
# Build orig.c and patched.c the way kbuild builds a kernel object for git-ksplice
# (function and data sections, __fentry__ calls), then compare them function by function.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$(mktemp -d)}
flags="-O2 -ffunction-sections -fdata-sections -mcmodel=kernel -fno-pic -mno-red-zone
       -fno-asynchronous-unwind-tables -fno-stack-protector -pg -mfentry -mrecord-mcount"
for v in orig patched; do
    mkdir -p "$out/$v"
    cp "$here/$v.c" "$out/$v/meminfo.c"
    (cd "$out/$v" && gcc $flags -c meminfo.c -o meminfo.o)
done
git ksplice diff-object "$out/orig/meminfo.o" "$out/patched/meminfo.o" -o "$out/diff.o"
echo "diff object: $out/diff.o"
