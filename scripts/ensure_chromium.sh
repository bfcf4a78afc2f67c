#!/usr/bin/env bash
# Make sure headless Chromium is there for the gallery's browser test (tests/test_gallery.py).
# Idempotent and quiet: nothing happens when chromium is already on PATH. As root with apt-get
# it installs Debian's `chromium` package (about 10 s here, plus the download); otherwise it
# says why not and exits 0, and the browser test skips with that reason. It never fails a build.
set -uo pipefail

if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_chromium: chromium is not installed and installing it needs root and apt-get" \
        "(apt-get install chromium); the gallery browser test will be skipped." >&2
    exit 0
fi
echo "ensure_chromium: installing Debian's chromium package system-wide with apt-get, for the" \
    "gallery's browser test (once; skipped whenever a chromium is on PATH)" >&2
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if apt-get update -qq >"$log" 2>&1 \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium \
        >>"$log" 2>&1; then
    exit 0
fi
tail -n 5 "$log" >&2
echo "ensure_chromium: installing Debian's chromium package failed; the gallery browser test" \
    "will be skipped." >&2
exit 0
