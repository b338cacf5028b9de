#!/usr/bin/env bash
# `make run`: pkvc's main job on a local demo repository in .demo/.
# Safe to run again: it starts from a fresh demo repository every time.
set -euo pipefail
cd "$(dirname "$0")/.."
PKVC=${PKVC:-.venv/bin/pkvc}
DEMO=.demo
rm -rf "$DEMO"
mkdir -p "$DEMO"
printf 'demo password\n' > "$DEMO/password"
export PKVC_PASSWORD_FILE="$DEMO/password" PKVC_CACHE_DIR="$DEMO/cache" PKVC_REPOSITORY="$DEMO/repo"

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

# Something worth backing up: pkvc's own source and docs, plus a symlink.
mkdir -p "$DEMO/data"
cp -r pkvc docs README.md "$DEMO/data/"
ln -s README.md "$DEMO/data/readme-link"

step "$PKVC" init
ref=$("$PKVC" put "$DEMO/data")
printf '\n$ pkvc put %s\n%s\n' "$DEMO/data" "$ref"
step "$PKVC" put "$DEMO/data"            # the same tree again: no new pack data
step "$PKVC" describe "$ref"
step "$PKVC" get "$ref" --output "$DEMO/restored"
step diff -r "$DEMO/data" "$DEMO/restored"
echo "(restored tree is identical)"
step "$PKVC" check --read-data
step "$PKVC" key list
echo
echo "Demo repository: $DEMO/repo (password in $DEMO/password)."
