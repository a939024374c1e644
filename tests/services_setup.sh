#!/usr/bin/env bash
# Install redis-server for the fleet tests (Debian's package; the tests start their own servers
# on free ports with the append-only file on, so none is enabled as a service here).
# Idempotent: does nothing when redis-server is already on PATH.
# Called by .ci/run before the tests; safe to run by hand as root.
set -euo pipefail
if command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ]; then
    exit 0
fi
if [ "$(id -u)" != "0" ]; then
    echo "services_setup.sh: not root; install Debian's 'redis-server' package to run the fleet tests" >&2
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "services_setup.sh: no apt-get here; the fleet tests that need Redis will be skipped" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
# policy-rc.d 101: do not start the packaged service (nothing should listen on 6379 by itself)
had_policy=0
if [ -e /usr/sbin/policy-rc.d ]; then had_policy=1; fi
if [ "$had_policy" = "0" ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
fi
apt-get install -y -qq --no-install-recommends redis-server >/dev/null || status=$?
if [ "$had_policy" = "0" ]; then rm -f /usr/sbin/policy-rc.d; fi
if [ "${status:-0}" != "0" ]; then
    echo "services_setup.sh: apt-get install redis-server failed; the fleet tests will be skipped" >&2
    exit 0
fi
echo "services_setup.sh: installed $(redis-server --version 2>/dev/null | cut -d' ' -f1-3)" >&2
