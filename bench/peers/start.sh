#!/bin/bash
# usage: start.sh PEER PORT  -> starts PEER pinned to core 0 in the background and prints its PID
# (for nginx peers the PID is the master; its one worker is the master's child).
# PEER: tendril | node | eventlet | stdlib | nginx | nginx-lua | luahttp
# TENDRIL_BIN (environment) is the tendril binary; it serves bench/tendril-app.lua with
# the options in TENDRIL_ARGS.
# UPSTREAM_PORT (environment) is where node's and nginx-lua's /proxy send their one GET.
# Needs: nodejs; python3-eventlet; nginx libnginx-mod-http-lua; lua-http lua-cqueues luajit2 (all Debian).
set -e
D=$(cd "$(dirname "$0")" && pwd)
PEER=$1; PORT=$2; UP=${UPSTREAM_PORT:-1}
ulimit -n 20000 2>/dev/null || true
LOGS=${PEER_LOGS:-/tmp/peer-logs}; mkdir -p "$LOGS"; LOG=$LOGS/$PEER.log
case $PEER in
  tendril)  UPSTREAM_PORT=$UP taskset -c 0 "${TENDRIL_BIN:?TENDRIL_BIN}" serve "$D/../tendril-app.lua" --port "$PORT" \
              ${TENDRIL_ARGS:-} >"$LOG" 2>&1 & ;;
  node)     UPSTREAM_PORT=$UP taskset -c 0 node "$D/servers/node-hello.js" "$PORT" >"$LOG" 2>&1 & ;;
  eventlet) taskset -c 0 /usr/bin/python3 "$D/servers/eventlet-hello.py" "$PORT" >"$LOG" 2>&1 & ;;
  stdlib)   taskset -c 0 /usr/bin/python3 "$D/servers/stdlib-hello.py" "$PORT" >"$LOG" 2>&1 & ;;
  luahttp)  taskset -c 0 luajit "$D/servers/luahttp-hello.lua" "$PORT" >"$LOG" 2>&1 & ;;
  nginx|nginx-lua)
    [ $PEER = nginx-lua ] && [ ! -e /usr/lib/nginx/modules/ngx_http_lua_module.so ] &&
      { echo "ngx_http_lua_module.so missing: apt-get install libnginx-mod-http-lua" >&2; exit 1; }
    P=$(mktemp -d /tmp/peer-$PEER.XXXX); mkdir -p "$P/logs"
    sed -e "s/@PORT@/$PORT/" -e "s/@UPSTREAM_PORT@/$UP/" "$D/servers/$PEER.conf" >"$P/nginx.conf"
    taskset -c 0 nginx -p "$P" -c "$P/nginx.conf" -e "$P/logs/error.log" >"$LOG" 2>&1 & ;;
  *) echo "unknown peer $PEER" >&2; exit 2 ;;
esac
echo $!
