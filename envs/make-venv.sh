#!/usr/bin/env bash
# Build a side venv NAME whose pinned REQUIREMENTS shadow the main venv's packages, without
# downloading again what the main venv already has (torch above all).
#
#   envs/make-venv.sh NAME REQUIREMENTS        e.g.  envs/make-venv.sh .venv-nova envs/nova-requirements.txt
#
# * NAME is created with the main venv's interpreter (BASE_VENV, default .venv: build it first,
#   `make install`).
# * A file `_marpipe_base_venv.pth` in NAME's site-packages appends the main venv's site-packages to
#   sys.path (through site.addsitedir, so the main venv's own .pth files, e.g. marpipe's editable
#   install, work too). Packages installed into NAME come first on sys.path and shadow the main
#   venv's; everything else (torch, pytest, marpipe and its dependencies) comes from the main venv.
# * Each `name==version` line of REQUIREMENTS whose version the combined environment does not
#   already have is installed into NAME with `pip install --no-deps` (the requirements file pins
#   the whole set, so nothing else is resolved; pip replaces an older pin installed in NAME and
#   never touches the main venv: "Not uninstalling ... outside environment").
# * Idempotent: NAME/.installed holds a hash of REQUIREMENTS, the base path and the base venv's list
#   of installed distributions; when it matches, nothing is done. Delete NAME to start over.
#
# * EXTRA_NO_DEPS (environment): packages that are not on PyPI, installed `--no-deps` after the pins, e.g.
#   NOVA's diffnext at its pinned commit: `git+https://github.com/baaivision/NOVA.git@<commit>`, or a local
#   checkout of that commit (copied to a temporary folder first: its setup.py writes into the source tree).
#
# Lines that are not plain `name==version` pins (comments, blank lines, options) are ignored.
set -euo pipefail

if [ $# -ne 2 ]; then
    echo "usage: $0 NAME REQUIREMENTS" >&2
    exit 2
fi
NAME=$1
REQ=$2
BASE=${BASE_VENV:-.venv}

[ -f "$REQ" ] || { echo "make-venv: no requirements file $REQ" >&2; exit 2; }
[ -x "$BASE/bin/python" ] || { echo "make-venv: no base venv at $BASE (run 'make install' first)" >&2; exit 2; }

BASE_SITE=$("$BASE/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
STAMP="$NAME/.installed"
# the stamp: REQUIREMENTS, the base path and the base venv's installed distributions (a package
# upgraded in the main venv makes the next run check the pins again)
EXTRA=${EXTRA_NO_DEPS:-}
WANT=$( { cat "$REQ"; echo "base=$BASE_SITE"; echo "extra=$EXTRA"; ls "$BASE_SITE" | grep -E '\.(dist|egg)-info$' || true; } \
        | sha256sum | cut -d' ' -f1)

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
    touch "$STAMP"      # for make: newer than the files it was checked against
    echo "make-venv: $NAME is up to date with $REQ (stamp $STAMP)"
    exit 0
fi

if [ ! -x "$NAME/bin/python" ]; then
    echo "make-venv: creating $NAME with $BASE's interpreter"
    "$BASE/bin/python" -m venv --without-pip "$NAME"   # pip, setuptools: the main venv's
fi
SITE=$("$NAME/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "make-venv: $SITE/_marpipe_base_venv.pth -> $BASE_SITE"
echo "import site; site.addsitedir('$BASE_SITE')" > "$SITE/_marpipe_base_venv.pth"

# the pins the combined environment does not satisfy yet
TODO=$("$NAME/bin/python" - "$REQ" <<'EOF'
import re, sys
from importlib import metadata
for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;]+)", line)
    if not m:
        continue
    name, want = m.groups()
    try:
        have = metadata.version(name)
    except metadata.PackageNotFoundError:
        have = None
    if have != want:
        print(f"{name}=={want}")
        print(f"make-venv:   {name}: {have or 'absent'} -> {want}", file=sys.stderr)
EOF
)
if [ -n "$TODO" ]; then
    echo "make-venv: pip install --no-deps into $NAME:" $TODO
    # shellcheck disable=SC2086
    "$NAME/bin/python" -m pip install -q --disable-pip-version-check --no-deps $TODO
else
    echo "make-venv: every pin of $REQ is already met"
fi
for src in $EXTRA; do
    if [ -d "$src" ]; then
        tmp=$(mktemp -d)
        cp -r "$src/." "$tmp/"
        chmod -R u+w "$tmp"
        echo "make-venv: pip install --no-deps $src (a copy) into $NAME"
        "$NAME/bin/python" -m pip install -q --disable-pip-version-check --no-deps "$tmp"
        rm -rf "$tmp"
    else
        echo "make-venv: pip install --no-deps $src into $NAME"
        "$NAME/bin/python" -m pip install -q --disable-pip-version-check --no-deps "$src"
    fi
done
echo "$WANT" > "$STAMP"
echo "make-venv: $NAME ready (stamp $STAMP)"
