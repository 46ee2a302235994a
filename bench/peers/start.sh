#!/bin/bash
# usage: start.sh PEER PORT  -> starts PEER pinned to core 0 in the background and prints its PID
# (for nginx peers the PID is the master; its workers are the master's children).
# WORKERS=N (N > 1): tendril --workers N, nginx worker_processes N, Node cluster with N workers, then
# on every core (the PID printed is tendril's supervisor, nginx's or Node's master).
# PEER: tendril | tendril-tls | tendril-ws | node | node-ws | node-redis | node-pg | eventlet | stdlib | nginx | nginx-tls | nginx-lua
#       | nginx-lua-tls | nginx-tls-check | luahttp
# The -tls peers serve HTTPS only (TLS 1.2 and 1.3) on PORT with the certificate from make-cert.sh
# (ECDSA P-256 for localhost and 127.0.0.1, kept in CERT_DIR, default /tmp/tendril-bench-cert);
# nginx-tls-check is nginx-tls with an access log of $ssl_protocol and $ssl_session_reused (r: resumed)
# in $PEER_LOGS/nginx-tls-check-access.log, started afresh: bench/tls.py checks its load tool with it.
# TENDRIL_BIN (environment) is the tendril binary; it serves bench/tendril-app.lua with
# the options in TENDRIL_ARGS (and --shared counters=10m, for /incr); tendril-ws serves bench/tendril-ws-app.lua (WebSocket /echo).
# node-ws is Node.js with the npm package ws (/echo, /broadcast), installed once by npm-need.sh
# under $NODE_MODULES_DIR (default /tmp/tendril-bench-npm); WS_PACKAGE pins its version.
# node-redis is Node.js with ioredis (REDIS_PACKAGE): /redis is one GET of key "hello" from
# $REDIS_URL (default redis://127.0.0.1:6379), as tendril's /redis; node-pg is Node.js with pg
# (PG_PACKAGE, a pool of 16): /pg is one primary-key SELECT from table kv at $PG_URL, as tendril's /pg.
# UPSTREAM_PORT (environment) is where node's and nginx-lua's /proxy send their one GET;
# UPSTREAM_TLS_PORT where node's and tendril's /proxy-tls send theirs (over TLS).
# STATIC_ROOT (environment) is the directory nginx serves under /static/ (default /tmp/tendril-bench-static).
# Needs: nodejs (npm for node-ws); python3-eventlet; nginx libnginx-mod-http-lua; lua-http lua-cqueues luajit2; openssl (all Debian).
set -e
D=$(cd "$(dirname "$0")" && pwd)
PEER=$1; PORT=$2; UP=${UPSTREAM_PORT:-1}; W=${WORKERS:-1}
CPUS=0; TW=""; [ "$W" -gt 1 ] && CPUS=0-$(($(nproc) - 1)) && TW="--workers $W"
ulimit -n 20000 2>/dev/null || true
LOGS=${PEER_LOGS:-/tmp/peer-logs}; mkdir -p "$LOGS"; LOG=$LOGS/$PEER.log; rm -f "$LOGS/$PEER-access.log"
export CERT_DIR=${CERT_DIR:-/tmp/tendril-bench-cert}; CD=$CERT_DIR
case $PEER in *-tls|*-tls-check) "$D/make-cert.sh" "$CD" ;; esac
WS_PACKAGE=${WS_PACKAGE:-ws@8.23.0}
REDIS_PACKAGE=${REDIS_PACKAGE:-ioredis@6.0.0}
PG_PACKAGE=${PG_PACKAGE:-pg@8.16.3}
case $PEER in
  tendril)  UPSTREAM_PORT=$UP taskset -c $CPUS "${TENDRIL_BIN:?TENDRIL_BIN}" serve "$D/../tendril-app.lua" --port "$PORT" \
              --shared counters=10m $TW ${TENDRIL_ARGS:-} >"$LOG" 2>&1 & ;;
  tendril-tls)  UPSTREAM_PORT=$UP taskset -c 0 "${TENDRIL_BIN:?TENDRIL_BIN}" serve "$D/../tendril-app.lua" --port "$PORT" \
              --tls-cert "$CD/cert.pem" --tls-key "$CD/key.pem" ${TENDRIL_ARGS:-} >"$LOG" 2>&1 & ;;
  tendril-ws)  taskset -c 0 "${TENDRIL_BIN:?TENDRIL_BIN}" serve "$D/../tendril-ws-app.lua" --port "$PORT" \
              ${TENDRIL_ARGS:-} >"$LOG" 2>&1 & ;;
  node-ws)  NM=$("$D/npm-need.sh" "$WS_PACKAGE")
            NODE_PATH=$NM taskset -c 0 node "$D/servers/node-ws.js" "$PORT" >"$LOG" 2>&1 & ;;
  node-pg)  NM=$("$D/npm-need.sh" "$PG_PACKAGE")
            NODE_PATH=$NM taskset -c 0 node "$D/servers/node-pg.js" "$PORT" >"$LOG" 2>&1 & ;;
  node-redis)  NM=$("$D/npm-need.sh" "$REDIS_PACKAGE")
            NODE_PATH=$NM taskset -c 0 node "$D/servers/node-redis.js" "$PORT" >"$LOG" 2>&1 & ;;
  node)     WORKERS=$W UPSTREAM_PORT=$UP taskset -c $CPUS node "$D/servers/node-hello.js" "$PORT" >"$LOG" 2>&1 & ;;
  eventlet) taskset -c 0 /usr/bin/python3 "$D/servers/eventlet-hello.py" "$PORT" >"$LOG" 2>&1 & ;;
  stdlib)   taskset -c 0 /usr/bin/python3 "$D/servers/stdlib-hello.py" "$PORT" >"$LOG" 2>&1 & ;;
  luahttp)  taskset -c 0 luajit "$D/servers/luahttp-hello.lua" "$PORT" >"$LOG" 2>&1 & ;;
  nginx|nginx-lua|nginx-tls|nginx-lua-tls|nginx-tls-check)
    case $PEER in nginx-lua*) [ -e /usr/lib/nginx/modules/ngx_http_lua_module.so ] ||
      { echo "ngx_http_lua_module.so missing: apt-get install libnginx-mod-http-lua" >&2; exit 1; } ;; esac
    P=$(mktemp -d /tmp/peer-$PEER.XXXX); mkdir -p "$P/logs"
    SR=${STATIC_ROOT:-/tmp/tendril-bench-static}; mkdir -p "$SR"
    sed -e "s|@STATIC_ROOT@|$SR|" -e "s|@PORT@|$PORT|" -e "s|@UPSTREAM_PORT@|$UP|" -e "s|@WORKERS@|$W|" -e "s|@CERT@|$CD/cert.pem|" -e "s|@KEY@|$CD/key.pem|" \
        -e "s|@ACCESS_LOG@|$LOGS/$PEER-access.log|" "$D/servers/$PEER.conf" >"$P/nginx.conf"
    taskset -c $CPUS nginx -p "$P" -c "$P/nginx.conf" -e "$P/logs/error.log" >"$LOG" 2>&1 & ;;
  *) echo "unknown peer $PEER" >&2; exit 2 ;;
esac
echo $!
