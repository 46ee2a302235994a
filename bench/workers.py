#!/usr/bin/env python3
"""The multi-process workloads of scripts/bench: tendril --workers 2 against
nginx + Lua with two workers and Node.js cluster with two, in the same run.

usage: bench/workers.py [--tendril BIN] [--workers N] [--runs N] [--duration S] [--out PATH] [--json PATH]
                        [--note TEXT]
Measures, then puts the "## Workers" section into --out (docs/benchmarks.md),
replacing the one there (scripts/bench --workers-only runs this file alone;
scripts/bench runs it too).

The servers start with WORKERS=N through bench/peers/start.sh, on every core
(tendril: `--workers N` over bench/tendril-app.lua with --shared
counters=10m; nginx-lua: worker_processes N and lua_shared_dict counters;
node: cluster with N workers). The load tool, wrk with one thread, is not
pinned: it shares the two cores with the servers, as it would on a machine
of two cores. Workloads, on each server in each run (interleaved):
- hello: `wrk -t1 -c50 -dS /`: requests per second, and CPU time per request
  of every process of the server (supervisor or master included): the change
  of utime+stime in /proc/PID/stat over the run, divided by the requests;
- incr (tendril and nginx-lua): `wrk -t1 -c50 -dS /incr`: one increment of a
  shared counter per request (tendril: d:incr on a --shared dictionary;
  nginx: ngx.shared.DICT:incr), the same figures.
Every load run is bounded in seconds; traffic goes to 127.0.0.1 only.
"""
import datetime
import json
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import HZ, ROOT, fmt, free_port, merge, run, start, stop, workload_args  # noqa: E402
from tls import commit, measure_one, paired, splice  # noqa: E402

PEERS = ("tendril", "nginx-lua", "node")
DESCRIPTIONS = {
    "tendril": "tendril `--workers %d` (Lua handler, `--shared` dictionary)",
    "nginx-lua": "nginx + Lua, `worker_processes %d` (`lua_shared_dict`)",
    "node": "Node.js `cluster`, %d workers",
}
INCR_PEERS = ("tendril", "nginx-lua")
CONNS = 50


def tree(pid):
    """pid and its descendants."""
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        out = subprocess.run(["pgrep", "-P", str(p)], capture_output=True, text=True).stdout.split()
        todo.extend(int(x) for x in out)
    return pids


def ticks(pids):
    total = 0
    for p in pids:
        try:
            with open("/proc/%d/stat" % p) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total


def wrk_shared(port, seconds, path="/"):
    """wrk on any core (it shares both with the server)."""
    text = run(["wrk", "-t1", "-c%d" % CONNS, "-d%ds" % seconds, "--timeout", "5s",
                "http://127.0.0.1:%d%s" % (port, path)], timeout=seconds + 60)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    total = re.search(r"(\d+) requests in", text)
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return {"rps": float(rps.group(1)) if rps else None, "requests": int(total.group(1)) if total else 0,
            "errors": (sum(int(x) for x in errs.groups()) if errs else 0) + (int(non2xx.group(1)) if non2xx else 0)}


def timed(pids, port, seconds, path):
    t0 = ticks(pids)
    r = wrk_shared(port, seconds, path)
    used = (ticks(pids) - t0) / HZ
    r["cpu_us"] = used * 1e6 / r["requests"] if r["requests"] else None
    r["cores_used"] = used / seconds
    return r


def measure(peer, tendril_bin, duration, workers):
    port = free_port()
    env = {"WORKERS": str(workers)}
    master, _ = start(peer, port, tendril_bin, env_extra=env)
    r = {}
    try:
        pids = tree(master)
        r["processes"] = len(pids)
        wrk_shared(port, 1)  # warm-up (JIT, caches)
        r["hello"] = timed(pids, port, duration, "/")
        if peer in INCR_PEERS:
            wrk_shared(port, 1, "/incr")
            r["incr"] = timed(pids, port, duration, "/incr")
    finally:
        stop(master)
    return r


def measure_all(tendril_bin, duration, runs, workers, log=sys.stderr):
    raw = {p: [] for p in PEERS}
    for i in range(runs):
        for peer in PEERS:
            raw[peer].append(measure_one("workers", peer, i, runs,
                                         lambda: measure(peer, tendril_bin, duration, workers), log))
    res = {"runs": runs, "duration": duration, "workers": workers, "raw": {"servers": raw}, "servers": {},
           "date": datetime.date.today().isoformat(), "commit": commit()}
    for peer, rs in raw.items():
        ok = [r for r in rs if "error" not in r]
        res["servers"][peer] = merge(ok) if ok else rs[0]
    return res


def section(res, note=None):
    """The "## Workers" section of docs/benchmarks.md, in Markdown."""
    S, w = res["servers"], res["workers"]
    lines = ["## Workers\n"]
    if note:
        lines.append("*%s*\n" % note)
    lines.append("Measured on %s with tendril at commit %s by `bench/workers.py` (alone: `scripts/bench "
                 "--workers-only [--runs N] [--duration S]`; `scripts/bench` runs it too).\n" % (
                     res.get("date", "?"), res.get("commit") or "?"))
    lines.append(
        "Each server runs %d workers on both cores (`WORKERS=%d bench/peers/start.sh PEER PORT`), and the load "
        "tool, `wrk -t1 -c%d -d%ds`, is not pinned: it shares the two cores with the server, as on a two-core "
        "machine. Medians of %d run(s), the servers interleaved. CPU µs per request counts every process of "
        "the server (tendril's supervisor and nginx's and Node's masters included): the change of utime+stime "
        "in `/proc/PID/stat` over the run, divided by the requests; \"cores\" is that CPU time over the run's "
        "length. `/incr` increments one shared counter per request: `d:incr(\"hits\", 1, 0)` on a `--shared` "
        "dictionary in tendril, `ngx.shared.counters:incr(\"hits\", 1, 0)` in nginx.\n"
        % (w, w, CONNS, res["duration"], res["runs"]))

    def get(peer, *path):
        x = S.get(peer) or {}
        for k in path:
            x = x.get(k) if isinstance(x, dict) else None
        return x

    lines.append("| server | hello req/s (errors) | CPU µs/req | cores | /incr req/s (errors) | CPU µs/req | cores |")
    lines.append("|---|---|---|---|---|---|---|")
    for p in PEERS:
        r = S.get(p) or {}
        if "error" in r:
            lines.append("| %s | %s |  |  |  |  |  |" % (DESCRIPTIONS[p] % w, r["error"]))
            continue
        h, i = r.get("hello") or {}, r.get("incr") or {}
        lines.append("| %s | %s (%s) | %s | %s | %s | %s | %s |" % (
            DESCRIPTIONS[p] % w, fmt(h.get("rps")), fmt(h.get("errors")), fmt(h.get("cpu_us"), digits=1),
            fmt(h.get("cores_used"), digits=2),
            fmt(i.get("rps")) + (" (%s)" % fmt(i.get("errors")) if i else ""), fmt(i.get("cpu_us"), digits=1),
            fmt(i.get("cores_used"), digits=2)))
    lines.append("\n### tendril against the peers, with %d workers each\n" % w)
    lines.append("Ratios are tendril / peer within each run, the median over the runs (range in brackets). Above 1 "
                 "means tendril served more; for CPU, below 1 means tendril spent less per request.\n")
    lines.append("| measure | tendril / nginx + Lua | tendril / Node.js cluster |")
    lines.append("|---|---|---|")
    for name, kind in (("hello req/s", ("hello", "rps")), ("hello CPU µs/req", ("hello", "cpu_us")),
                       ("/incr req/s", ("incr", "rps")), ("/incr CPU µs/req", ("incr", "cpu_us"))):
        cells = []
        for peer in ("nginx-lua", "node"):
            r, lo, hi = paired(res, "servers", "tendril", peer, kind)
            cells.append("–" if r is None else "%.2f×" % r + (" (%.2f–%.2f)" % (lo, hi) if hi != lo else ""))
        lines.append("| %s | %s | %s |" % (name, cells[0], cells[1]))
    return "\n".join(lines) + "\n"


def main():
    ap = workload_args(__doc__, 3, "benchmarks.md")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", help="also write the raw results here")
    ap.add_argument("--note", help="a line in italics under the heading (say, how the machine was)")
    args = ap.parse_args()
    res = measure_all(args.tendril, args.duration, args.runs, args.workers)
    print(json.dumps(res), file=sys.stderr)
    splice(args.out, section(res, args.note), "Workers")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    print("bench: wrote the Workers section of %s" % args.out, file=sys.stderr)


if __name__ == "__main__":
    main()
