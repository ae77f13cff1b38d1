#!/usr/bin/env bash
# Installs Debian's chromium for the dashboard's browser tests, if it is not
# there yet.  Run by tox before the tests; needs root (as on CI) or sudo.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO=sudo; else
    echo "install-browser: chromium is missing and we are not root; install Debian's 'chromium' package" >&2
    exit 1
  fi
else
  SUDO=
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
command -v chromium
