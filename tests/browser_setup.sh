#!/usr/bin/env bash
# Install a headless Chromium for the gallery's browser test (Debian's package; no browser
# download of its own). Idempotent: does nothing when chromium is already on PATH.
# Called by .ci/run before the tests; safe to run by hand as root.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ]; then
    exit 0
fi
if [ "$(id -u)" != "0" ]; then
    echo "browser_setup.sh: not root; install Debian's 'chromium' package to run the browser test" >&2
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "browser_setup.sh: no apt-get here; the browser test will be skipped" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
echo "browser_setup.sh: installed $(chromium --version 2>/dev/null || echo chromium)" >&2
