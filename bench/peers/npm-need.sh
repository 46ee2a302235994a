#!/bin/bash
# usage: npm-need.sh NAME@VERSION...  -> installs the npm packages once under $NODE_MODULES_DIR
# (default /tmp/tendril-bench-npm) and prints the node_modules directory for NODE_PATH.
# A package already there at that version is left alone. Needs node and npm.
set -e
NM=${NODE_MODULES_DIR:-/tmp/tendril-bench-npm}
for spec in "$@"; do
  name=${spec%@*}; version=${spec##*@}
  have=$(node -p "require('$NM/node_modules/$name/package.json').version" 2>/dev/null || true)
  if [ "$have" != "$version" ]; then
    mkdir -p "$NM"
    npm install --silent --no-audit --no-fund --prefix "$NM" "$spec" >/dev/null 2>&1 ||
      { echo "npm install $spec failed (into $NM)" >&2; exit 1; }
  fi
done
echo "$NM/node_modules"
