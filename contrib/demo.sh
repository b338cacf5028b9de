#!/usr/bin/env bash
# `make run`: pkvc's main job on a local demo repository in .demo/:
# snapshot -> change -> snapshot -> log -> checkout, then verify everything.
# Safe to run again: it starts from a fresh demo repository every time.
set -euo pipefail
cd "$(dirname "$0")/.."
PKVC=${PKVC:-.venv/bin/pkvc}
DEMO=.demo
rm -rf "$DEMO"
mkdir -p "$DEMO"
printf 'demo password\n' > "$DEMO/password"
export PKVC_PASSWORD_FILE="$DEMO/password" PKVC_CACHE_DIR="$DEMO/cache" PKVC_REPOSITORY="$DEMO/repo"

step() { printf '\n\033[1m$ pkvc %s\033[0m\n' "$*"; "$PKVC" "$@"; }
say() { printf '\n\033[1m# %s\033[0m\n' "$*"; }

say "Something worth backing up: pkvc's own source and docs, a symlink, a hard link."
mkdir -p "$DEMO/data"
cp -r pkvc docs README.md "$DEMO/data/"
ln -s README.md "$DEMO/data/readme-link"
ln "$DEMO/data/README.md" "$DEMO/data/README.hardlink"
cp -a "$DEMO/data" "$DEMO/original"

step init
step snapshot "$DEMO/data" --series demo --tag example
say "Change things: edit a file, add one, remove one."
echo "a new line" >> "$DEMO/data/README.md"
echo "brand new" > "$DEMO/data/new-file.txt"
rm "$DEMO/data/docs/format.md"
step snapshot "$DEMO/data" --series demo
step log demo
step diff demo@1 demo@0
step checkout demo@1 --output "$DEMO/checkout-old"
say "The older snapshot is back, byte for byte:"
diff -r "$DEMO/original" "$DEMO/checkout-old" && echo "identical to the original tree"
step series
say "Delete the index (it is only a cache): the history comes back from the packs."
rm -rf "$DEMO/cache"
step log demo
step check --read-data
echo
echo "Demo repository: $DEMO/repo (password in $DEMO/password)."
