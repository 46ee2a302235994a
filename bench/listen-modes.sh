#!/bin/bash
# One shared listening socket against one SO_REUSEPORT socket per worker
# (TENDRIL_REUSEPORT=1), tendril --workers 2, the load sharing both cores:
# keep-alive throughput (wrk -t1 -c50), connection set-up (ab -c100), and
# how many of 100 sequential new clients are answered within a second while
# one worker is stuck in a compiled loop. docs/design.md (Workers) quotes it.
# usage: bench/listen-modes.sh [ROUNDS]   (default 3; about 40 s a round)
set -u
cd "$(dirname "$0")/.."
BIN=${TENDRIL_BIN:-build/tendril}
ROUNDS=${1:-3}
APP=$(mktemp /tmp/listen-modes-XXXX.lua)
OUT=$(mktemp); ERR=$(mktemp)
trap 'rm -f "$APP" "$OUT" "$ERR"' EXIT
cat >"$APP" <<'L'
return function(req) if req.path == "/spin" then while true do end end return "hello world\n" end
L
serve() {  # serve MODE: starts the server, sets SUP and PORT
    if [ "$1" = reuseport ]; then export TENDRIL_REUSEPORT=1; else unset TENDRIL_REUSEPORT; fi
    : >"$OUT"
    "$BIN" serve "$APP" --port 0 --workers 2 --no-watch --stall-kill 10 >"$OUT" 2>"$ERR" &
    SUP=$!
    for _ in $(seq 50); do grep -q listening "$OUT" && break; sleep 0.1; done
    PORT=$(sed -n 's/.*:\([0-9]*\)$/\1/p' "$OUT")
}
for r in $(seq "$ROUNDS"); do
    for mode in shared reuseport; do
        serve $mode
        w=$(wrk -t1 -c50 -d5s "http://127.0.0.1:$PORT/" | awk '/Requests\/sec/{print $2}')
        a=$(ab -q -n 20000 -c 100 "http://127.0.0.1:$PORT/" 2>&1 | awk '/Requests per second/{print $4}')
        curl -s -m 0.5 "http://127.0.0.1:$PORT/spin" >/dev/null
        ok=0
        for _ in $(seq 100); do curl -s -m 1 -o /dev/null "http://127.0.0.1:$PORT/" && ok=$((ok + 1)); done
        kill -TERM $SUP; wait $SUP
        echo "round $r $mode: keep-alive $w req/s, ab -c100 $a req/s, one worker stuck: $ok of 100 answered within 1 s"
    done
done
