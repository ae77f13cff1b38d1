#!/usr/bin/env bash
# Install Crossbar.io (PyPI "crossbar") into a virtualenv of its own, once.
#
#   bash tests/crossbar/install.sh [DIR]      DIR defaults to .tox/crossbar (gitignored)
#
# Crossbar pins its own versions of Twisted, autobahn and friends, so it never
# shares explorerd's environment.  A finished install leaves DIR/.installed;
# a second run with the same pinned version does nothing.  Takes ~2 minutes
# and ~375 MB the first time.
set -euo pipefail

VERSION="${CROSSBAR_VERSION:-26.10.1}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
DIR="${1:-${CROSSBAR_VENV:-$ROOT/.tox/crossbar}}"
PYTHON="${CROSSBAR_PYTHON:-python3}"

if [ -f "$DIR/.installed" ] && [ "$(cat "$DIR/.installed")" = "$VERSION" ] && [ -x "$DIR/bin/crossbar" ]; then
    exit 0
fi

echo "installing crossbar $VERSION into $DIR (takes a couple of minutes, once)" >&2
rm -rf "$DIR"
"$PYTHON" -m venv "$DIR"
"$DIR/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$DIR/bin/python" -m pip install --quiet --disable-pip-version-check "crossbar==$VERSION"
"$DIR/bin/crossbar" version >/dev/null
echo "$VERSION" > "$DIR/.installed"
echo "crossbar $VERSION installed in $DIR" >&2
