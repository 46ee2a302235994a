#!/bin/sh
# Builds tendril (Release, without the tests) from the source tree this
# script sits in and installs the binary as PREFIX/bin/tendril. The
# Dockerfile's build stage runs it; tests/e2e/test_deploy.py runs it too.
#   deploy/build.sh [PREFIX]      (default /usr/local)
set -eu
src=$(cd "$(dirname "$0")/.." && pwd)
prefix=${1:-/usr/local}
build=$(mktemp -d /tmp/tendril-build.XXXXXX)
trap 'rm -rf "$build"' EXIT
cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DTD_TESTS=OFF >/dev/null
cmake --build "$build" -j"$(nproc)" --target tendril >/dev/null
install -D -m 0755 "$build/tendril" "$prefix/bin/tendril"
echo "installed $prefix/bin/tendril"
