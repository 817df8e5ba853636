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
cat <<'EOF'

The tiny kernel is not Linux, so its update has no livepatch module (ksplice_<ID>.ko) and
`git ksplice try` has nothing to load: try is for real kernels. With a real one:
  1. a git repository of the running kernel's source, with the running kernel's .config,
     System.map, vmlinux and Module.symvers in its ksplice/ directory (ORIG_CONFIG);
  2. git ksplice create --prebuild     (the pristine build, once: as long as a kernel build)
  3. commit the fix, then: git ksplice create
  4. git ksplice try .git/ksplice/updates/ksplice-<ID>.tar.gz --kernel <its bzImage>
     (boots that kernel in qemu: the update loads, changes the behaviour, and undoes)
README.md ("For a real kernel") and `git help ksplice` say more.
EOF
