#!/usr/bin/env python3
"""The WebSocket workloads of scripts/bench: tendril against Node.js with the
npm package ws in the same run.

usage: bench/ws.py [--tendril BIN] [--runs N] [--duration S] [--out PATH] [--json PATH] [--note TEXT]
Measures, then puts the "## WebSocket" section into --out (docs/benchmarks.md),
replacing the one there; bench/run.py calls measure_all() and section() for a
whole run (scripts/bench; scripts/bench --ws-only runs this file alone).

The servers (bench/peers/start.sh, pinned to core 0): tendril-ws serves
bench/tendril-ws-app.lua, node-ws bench/peers/servers/node-ws.js; both echo
every message of /echo. The load tools (bench/load/, pinned to core 1): the
echo load in C (ws-echo-load.c, compiled on first use: the Node.js one,
ws-echo-load.js, fills its core before tendril fills its own), the idle
connections a Node.js script with ws, installed once by
bench/peers/npm-need.sh under $NODE_MODULES_DIR (default /tmp/tendril-bench-npm).
Workloads, on each server in each run:
- idle memory, on the fresh process: bench/load/ws-idle.js opens IDLE_CONNS
  WebSockets to /echo (each handler waits for a message) and holds them; the
  growth of the server's resident memory per connection;
- echo: bench/load/ws-echo-load.c, CONNS connections each sending a
  SIZE-byte text message and waiting for its echo before the next, for
  --duration seconds: round trips per second and the server's CPU time
  (utime+stime of /proc/PID/stat over the run) per round trip.
Every load run is bounded in seconds; traffic goes to 127.0.0.1 only.
"""
import datetime
import json
import os
import re
import resource
import select
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import PEERS_DIR, PEER_LOGS, ROOT, fmt, free_port, merge, start, stop, workload_args  # noqa: E402
from tls import ATTEMPTS, NOISY_PCT, clean, commit, measure_one, paired, ratio, splice  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
LOAD_DIR = os.path.join(HERE, "load")
WS_PACKAGE = os.environ.get("WS_PACKAGE", "ws@8.23.0")  # the npm package of the peer and the load tools
PEERS = ("tendril-ws", "node-ws")
DESCRIPTIONS = {
    "tendril-ws": "tendril (`tendril.websocket`, Lua handler)",
    "node-ws": "Node.js + ws",
}
CONNS = 50
SIZE = 64
IDLE_CONNS = 2000
IDLE_HOLD = 3  # seconds the idle connections are held (RSS sampled each second)


def node_path():
    """The node_modules directory with ws (installed once), for NODE_PATH."""
    out = subprocess.run([os.path.join(PEERS_DIR, "npm-need.sh"), WS_PACKAGE], capture_output=True, text=True,
                         timeout=300)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip() or "npm-need.sh failed")
    return out.stdout.strip().splitlines()[-1]


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def node_env(nm):
    return dict(os.environ, NODE_PATH=nm)


def last_json(text):
    for line in reversed(text.strip().splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None


ECHO_TOOL_SRC = os.path.join(LOAD_DIR, "ws-echo-load.c")
ECHO_TOOL = os.path.join(os.environ.get("TMPDIR", "/tmp"), "tendril-bench-ws-echo-load")


def echo_tool():
    """bench/load/ws-echo-load.c, compiled when missing or older than its
    source: the load tool in C, which does not fill its core before the
    server fills its own (ws-echo-load.js does)."""
    if not os.path.exists(ECHO_TOOL) or os.path.getmtime(ECHO_TOOL) < os.path.getmtime(ECHO_TOOL_SRC):
        subprocess.run(["cc", "-O2", "-o", ECHO_TOOL, ECHO_TOOL_SRC], check=True, timeout=120)
    return ECHO_TOOL


def echo(port, nm, seconds, conns=CONNS, size=SIZE):
    """ws-echo-load (C) on core 1: round trips (requests, for tls.timed) and their rate."""
    out = subprocess.run(["taskset", "-c", "1", echo_tool(), str(port), "/echo", str(conns), str(seconds), str(size)],
                         capture_output=True, text=True, timeout=seconds + 30, preexec_fn=raise_nofile)
    j = last_json(out.stdout)
    if not j or not j.get("msgs"):
        return {"rps": None, "requests": 0, "errors": None, "note": (out.stdout + out.stderr)[-300:]}
    return {"rps": j["msgs"] / j["seconds"], "requests": j["msgs"], "errors": j.get("errors", 0)}


def rss_kb(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    raise RuntimeError("the server (PID %d) is gone" % pid)  # or a zombie: no VmRSS


def idle(port, pid, nm, n=IDLE_CONNS, hold=IDLE_HOLD):
    """ws-idle.js on core 1 holds n WebSockets: the server's resident growth per
    connection (the highest of the samples taken each second while held)."""
    before = rss_kb(pid)
    p = subprocess.Popen(["taskset", "-c", "1", "node", os.path.join(LOAD_DIR, "ws-idle.js"),
                          "ws://127.0.0.1:%d/echo" % port, str(n), str(hold + 2)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=node_env(nm),
                         preexec_fn=raise_nofile)
    held, err = None, ""
    try:
        end = time.monotonic() + 60  # ws-idle.js gives up after 60 s of opening
        while held is None and time.monotonic() < end and p.poll() is None:
            ready, _, _ = select.select([p.stderr], [], [], 1)
            if ready:
                line = p.stderr.readline()
                err += line
                m = re.match(r"held (\d+)", line)
                if m:
                    held = int(m.group(1))
        samples = []
        if held:
            for _ in range(hold):
                time.sleep(1)
                samples.append(rss_kb(pid))
        out, rest = p.communicate(timeout=hold + 30)
        err += rest
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    j = last_json(out) or {}
    if not held or not samples:
        return {"bytes_per_conn": None, "conns": held, "note": (out + err)[-300:]}
    after = max(samples)
    return {"conns": held, "errors": j.get("errors"), "rss_before_kb": before, "rss_held_kb": after,
            "bytes_per_conn": (after - before) * 1024 / held}


def measure(peer, tendril_bin, duration, nm):
    port = free_port()
    master, worker = start(peer, port, tendril_bin)
    r = {}
    try:
        # Idle memory first, on a fresh process (as bench/run.py does).
        r["idle"] = idle(port, worker, nm)
        echo(port, nm, 1)  # warm-up (JIT, caches)
        r["echo"] = clean(worker, echo, port, nm, duration)
        rss_kb(worker)  # still there
    except (RuntimeError, OSError) as e:  # OSError: /proc/PID/stat is gone with the process
        raise RuntimeError("%s; the end of its log (%s): %s" % (e, log_path(peer), log_tail(peer)))
    finally:
        stop(master)
    return r


def log_path(peer):
    return os.path.join(PEER_LOGS, peer + ".log")


def log_tail(peer, n=600):
    try:
        with open(log_path(peer), errors="replace") as f:
            return f.read()[-n:].strip()
    except OSError:
        return "(none)"


def versions(nm):
    def out(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
        except OSError:
            return "?"
    ws_version = out(["node", "-p", "require(%r).version" % os.path.join(nm, "ws", "package.json")])
    return {"node": out(["node", "--version"]), "ws": ws_version}


def measure_all(tendril_bin, duration, runs, log=sys.stderr):
    """Round-robin over runs; returns medians per peer with the raw runs."""
    nm = node_path()
    raw = {p: [] for p in PEERS}
    for i in range(runs):
        for peer in PEERS:
            raw[peer].append(measure_one("WebSocket", peer, i, runs, lambda: measure(peer, tendril_bin, duration, nm),
                                         log))
    res = {"runs": runs, "duration": duration, "raw": {"servers": raw}, "servers": {},
           "date": datetime.date.today().isoformat(), "commit": commit(), "versions": versions(nm)}
    for peer, rs in raw.items():
        ok = [r for r in rs if "error" not in r]
        res["servers"][peer] = merge(ok) if ok else rs[0]
    return res


def section(res, note=None):
    """The "## WebSocket" section of docs/benchmarks.md, in Markdown."""
    S = res["servers"]
    t, n = "tendril-ws", "node-ws"
    v = res.get("versions") or {}
    lines = ["## WebSocket\n"]
    if note:
        lines.append("*%s*\n" % note)
    lines.append("Measured on %s with tendril at commit %s by `bench/ws.py` (alone: `scripts/bench --ws-only "
                 "[--runs N] [--duration S]`; `scripts/bench` runs it too).\n" % (
                     res.get("date", "?"), res.get("commit") or "?"))
    lines.append(
        "Each server is pinned to core 0, the load tools (`bench/load/`: the echo load in C, the idle "
        "connections from Node.js %s with ws %s) to core 1; "
        "medians of %d run(s), %d s per echo run, the servers' runs interleaved. The servers: tendril "
        "(`tendril serve bench/tendril-ws-app.lua`: `websocket.upgrade`, then `ws:recv()` and `ws:send(data, "
        "kind)` in a loop) and Node.js with the npm package ws (`bench/peers/servers/node-ws.js`: "
        "`WebSocketServer`, `ws.send(m)` on each message), neither compressing (`permessage-deflate` off).\n"
        % (v.get("node", "?"), v.get("ws", "?"), res["runs"], res["duration"]))
    lines.append(
        "- **Echo**: `bench/load/ws-echo-load.c PORT /echo %d %d %d`: %d connections, each sends a %d-byte "
        "masked text message and waits for its echo before sending the next. Round trips per second, and the "
        "server's CPU time per round trip: the change of utime+stime in `/proc/PID/stat` over the run, divided "
        "by the round trips. The load tool is in C because the Node.js one (`ws-echo-load.js`) spends about "
        "as much per message as a server and filled core 1 first. Both sides pay a read and a write per "
        "message, mostly in the kernel (loopback TCP, in a virtual machine): see the busy columns.\n"
        "- **Idle memory**: `bench/load/ws-idle.js URL %d %d`: %d WebSockets to `/echo` opened (500 at most "
        "at once) and held, each handler waiting for a message (tendril: in `ws:recv()`); the growth of the "
        "server's resident memory per connection (the highest of %d samples a second apart while they are "
        "held), on a fresh process. Neither server is asked to collect garbage first, so the figure includes "
        "what the handshakes left for the collector. `tests/e2e/test_ws_scale.py` measures tendril alone without "
        "that garbage (10,000 WebSockets, a full collection before each reading, the collector's pause at 100).\n"
        % (
            CONNS, res["duration"], SIZE, CONNS, SIZE, IDLE_CONNS, IDLE_HOLD + 2, IDLE_CONNS, IDLE_HOLD))

    def get(peer, *path):
        x = S.get(peer) or {}
        for k in path:
            x = x.get(k) if isinstance(x, dict) else None
        return x

    lines.append("| server | echo round trips/s (errors) | CPU µs per round trip | core 0 (server) / core 1 "
                 "(client) busy | idle bytes per WebSocket (connections held) |")
    lines.append("|---|---|---|---|---|")
    for p in PEERS:
        r = S.get(p) or {}
        if "error" in r:
            lines.append("| %s | %s |  |  |  |" % (DESCRIPTIONS[p], r["error"]))
            continue
        e, i = r.get("echo") or {}, r.get("idle") or {}
        lines.append("| %s | %s (%s) | %s | %s / %s | %s (%s) |" % (
            DESCRIPTIONS[p], fmt(e.get("rps")), fmt(e.get("errors")), fmt(e.get("cpu_us"), digits=1),
            fmt(e.get("server_core_pct"), "%"), fmt(e.get("load_core_pct"), "%"),
            fmt(i.get("bytes_per_conn")), "–" if i.get("conns") is None else "%d" % i["conns"]))

    failed = [(p, [x["error"] for x in rs if "error" in x]) for p, rs in
              ((p, ((res.get("raw") or {}).get("servers") or {}).get(p) or []) for p in PEERS)]
    for p, errs in failed:
        if errs:
            lines.append("\n%s: %d of %d runs failed, left out of the medians and ratios; the first: %s" % (
                DESCRIPTIONS[p], len(errs), res["runs"], errs[0].replace("\n", " ").replace("|", "/")))

    lines.append("\n### tendril against Node.js + ws\n")
    lines.append("Ratios are tendril / Node.js within each run, the median over the runs (range in brackets). "
                 "Above 1 means tendril did more round trips a second; for CPU and memory, below 1 means tendril "
                 "spent less.\n")
    lines.append("| measure | tendril / Node.js + ws |")
    lines.append("|---|---|")
    for name, kind in (("echo round trips/s", ("echo", "rps")),
                       ("server CPU µs per round trip", ("echo", "cpu_us")),
                       ("idle bytes per WebSocket", ("idle", "bytes_per_conn"))):
        r, lo, hi = paired(res, "servers", t, n, kind)
        lines.append("| %s | %s |" % (name, "–" if r is None else "%.2f×" % r + (
            " (%.2f–%.2f)" % (lo, hi) if hi != lo else "")))

    raw = (res.get("raw") or {}).get("servers") or {}
    others = [(x.get("echo") or {}).get("others_pct") for rs in raw.values() for x in rs]
    others = [o for o in others if o is not None]
    if others:
        attempts = [(x.get("echo") or {}).get("attempts") or 1 for rs in raw.values() for x in rs]
        lines.append("\nAs for TLS: each server waited (30 s at most) for cores 0 and 1 to be nearly idle, and an "
                     "echo run during which other processes took more than %d%% of a core there was repeated (%d "
                     "attempts at most, the quietest kept: %d repeats in all). In the runs kept, other processes "
                     "took %.0f%% of a core on average (%.0f%% at most)." % (
                         NOISY_PCT, ATTEMPTS, sum(a - 1 for a in attempts), sum(others) / len(others), max(others)))
    return "\n".join(lines) + "\n"


def main():
    ap = workload_args(__doc__, 3, "benchmarks.md")
    ap.add_argument("--json", help="also write the raw results here")
    ap.add_argument("--note", help="a line in italics under the heading (say, how the machine was)")
    args = ap.parse_args()
    res = measure_all(args.tendril, args.duration, args.runs)
    print(json.dumps(res), file=sys.stderr)
    splice(args.out, section(res, args.note), "WebSocket")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    print("bench: wrote the WebSocket section of %s" % args.out, file=sys.stderr)


if __name__ == "__main__":
    main()
