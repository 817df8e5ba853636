#!/bin/sh
# The README's first command: build a rebootless update of the bundled tiny kernel.
#
# In a scratch directory: make a git repository of examples/tiny-kernel (the "running
# kernel's" source), build that kernel and keep its .config and System.map as ORIG_CONFIG,
# let git-ksplice build its pristine tree, commit a fix, and turn the fix into an update.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
work=${1:-$(mktemp -d "${TMPDIR:-/tmp}/ksplice-demo.XXXXXX")}
mkdir -p "$work"
cp -R "$here/tiny-kernel" "$work/linux"
cd "$work/linux"
export GIT_AUTHOR_NAME="Tiny Kernel Developer" GIT_AUTHOR_EMAIL=dev@example.org
export GIT_COMMITTER_NAME="$GIT_AUTHOR_NAME" GIT_COMMITTER_EMAIL="$GIT_AUTHOR_EMAIL"
git init -q
git add -A
git commit -q -m "tiny kernel $(cat RELEASE)"

echo "== building the running kernel (its .config and System.map go to ksplice/)"
make -s >/dev/null
mkdir -p ksplice
cp .config System.map ksplice/
echo ksplice/ >> .git/info/exclude
make -s clean >/dev/null

echo "== git ksplice create --prebuild"
git ksplice create --prebuild

echo "== committing a fix"
git am -q "$here/fix-uname.patch"
git log --oneline

echo "== git ksplice create"
git ksplice create --id demo --description "uname: report the system name in full" -o "$work"

echo "== git ksplice view $work/ksplice-demo.tar.gz"
git ksplice view "$work/ksplice-demo.tar.gz"
echo "== git ksplice series"
git ksplice series
echo
echo "Scratch repository: $work/linux (try: git log refs/ksplice/series)"
