#!/usr/bin/env python3
"""The Redis workloads of scripts/bench (--redis-only): tendril.redis against
Node.js + ioredis, one GET of key "hello" per request (/redis), and tendril's
pipeline of 100 GETs per request (/redis-pipe); then the parser comparison
behind tendril.redis's design: RESP in Lua against hiredis's C parser, CPU
per reply of 100-command pipelines from one client (bench/load/redis_pipe.lua
under `tendril run`, bench/load/redis_pipe.c built here with -lhiredis).

A redis-server of its own on a free port, in a temporary directory; the
servers on core 0, wrk -t1 -c50 on core 1, redis-server on core 1 as well
(a separate service: its work is not the server's), runs interleaved.
Writes the "Redis" section of docs/benchmarks.md.

usage: bench/redis_bench.py [--runs N] [--duration S] [--tendril PATH] [--out PATH]
Needs redis-server, libhiredis-dev, node and npm (ioredis, installed once).
"""
import datetime
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import HZ, ROOT, cpu_ticks, free_port, head_commit, median, start, stop, workload_args, wrk  # noqa: E402
from tls import splice  # noqa: E402

CASES = [
    ("tendril, one GET per request", "tendril", "/redis"),
    ("Node.js + ioredis, one GET per request", "node-redis", "/redis"),
    ("tendril, a pipeline of 100 GETs per request", "tendril", "/redis-pipe"),
]


def start_redis():
    d = tempfile.mkdtemp(prefix="tendril-bench-redis-")
    port = free_port()
    subprocess.run(["taskset", "-c", "1", "redis-server", "--port", str(port), "--bind", "127.0.0.1",
                    "--daemonize", "yes", "--pidfile", d + "/redis.pid", "--dir", d, "--logfile",
                    d + "/redis.log", "--save", "", "--appendonly", "no"], check=True, timeout=30)
    for _ in range(200):
        r = subprocess.run(["redis-cli", "-p", str(port), "set", "hello", "world"], capture_output=True,
                           text=True)
        if r.stdout.strip() == "OK":
            return port, d
        time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


def stop_redis(port, d):
    subprocess.run(["redis-cli", "-p", str(port), "shutdown", "nosave"], capture_output=True, timeout=30)
    shutil.rmtree(d, ignore_errors=True)


def parsers(tendril_bin, port, rounds=2000):
    """CPU µs per reply: (RESP in Lua, hiredis), medians of 3 alternating runs."""
    exe = os.path.join(tempfile.mkdtemp(prefix="tendril-bench-hiredis-"), "redis_pipe")
    subprocess.run(["gcc", "-O2", "-o", exe, os.path.join(ROOT, "bench", "load", "redis_pipe.c"), "-lhiredis"],
                   check=True, timeout=120)
    lua, c = [], []
    for _ in range(3):
        out = subprocess.run(["taskset", "-c", "0", tendril_bin, "run",
                              os.path.join(ROOT, "bench", "load", "redis_pipe.lua"), str(port), str(rounds)],
                             capture_output=True, text=True, timeout=300, check=True)
        lua.append(float(out.stdout.split()[-1]))
        out = subprocess.run(["taskset", "-c", "0", exe, str(port), str(rounds)], capture_output=True, text=True,
                             timeout=300, check=True)
        c.append(float(out.stdout.split()[-1]))
    shutil.rmtree(os.path.dirname(exe), ignore_errors=True)
    return median(lua), median(c)


def measure_all(tendril_bin, duration, runs):
    redis_port, redis_dir = start_redis()
    env = {"REDIS_URL": "redis://127.0.0.1:%d" % redis_port}
    servers = {}
    results = {name: [] for name, _, _ in CASES}
    try:
        for peer in ("tendril", "node-redis"):
            port = free_port()
            servers[peer] = (port,) + start(peer, port, tendril_bin, env_extra=env)
        for name, peer, path in CASES:
            with urllib.request.urlopen("http://127.0.0.1:%d%s" % (servers[peer][0], path), timeout=5) as r:
                body = r.read()
            if b"world" not in body:
                raise RuntimeError("%s %s answered %r" % (peer, path, body[:100]))
            wrk(servers[peer][0], 50, 1, path)  # warm-up (JIT, connections)
        for _ in range(runs):
            for name, peer, path in CASES:
                port, _, worker = servers[peer]
                t0 = cpu_ticks(worker)
                r = wrk(port, 50, duration, path)
                r["cpu_us"] = (cpu_ticks(worker) - t0) / HZ * 1e6 / r["requests"] if r["requests"] else None
                results[name].append(r)
    finally:
        for port, master, _ in servers.values():
            stop(master)
    try:
        lua, c = parsers(tendril_bin, redis_port)
    finally:
        stop_redis(redis_port, redis_dir)
    return {"runs": results, "parser_lua_us": lua, "parser_hiredis_us": c}


def section(res, duration, runs):
    lines = ["## Redis\n",
             "Measured on %s at commit %s by `bench/redis_bench.py` (`scripts/bench --redis-only`): a "
             "redis-server of its own on core 1 (beside the load: a separate service), servers on core 0, "
             "`wrk -t1 -c50 -d%ds` on core 1, %d interleaved run%s (medians). CPU is the server's user + "
             "system time per request (redis-server's not counted).\n" % (
                 datetime.date.today().isoformat(), head_commit(), duration, runs, "" if runs == 1 else "s"),
             "| server, workload | requests/s | CPU µs/request |", "|---|---|---|"]
    med = {}
    for name, _, _ in CASES:
        rs = res["runs"][name]
        rps = median([r["rps"] for r in rs if r["rps"]])
        cpu = median([r["cpu_us"] for r in rs if r["cpu_us"]])
        errors = sum(r.get("errors", 0) or 0 for r in rs)
        med[name] = (rps, cpu)
        lines.append("| %s | %s | %s |" % (name, "{:,.0f}".format(rps) if rps else "-", "%.1f" % cpu if cpu else "-")
                     + (" (%d errors)" % errors if errors else ""))
    t, n = med[CASES[0][0]], med[CASES[1][0]]
    if t[0] and n[0]:
        lines.append("\ntendril / Node.js + ioredis, one GET per request: %.2f× the requests/s at %.2f× the CPU "
                     "per request." % (t[0] / n[0], t[1] / n[1] if t[1] and n[1] else float("nan")))
    lines.append("\nThe parser, by measurement: one client sending pipelines of 100 GETs, CPU per reply "
                 "(socket I/O included): RESP in Lua (tendril.redis under `tendril run`) %.2f µs, hiredis's C "
                 "parser (blocking hiredis) %.2f µs. A C parser would save at most %.2f µs a reply, about %.0f%% "
                 "of a one-GET request's CPU above: tendril.redis keeps the Lua parser (no binding to keep, "
                 "no copy between a C reply tree and Lua values)." % (
                     res["parser_lua_us"], res["parser_hiredis_us"],
                     max(res["parser_lua_us"] - res["parser_hiredis_us"], 0),
                     100.0 * max(res["parser_lua_us"] - res["parser_hiredis_us"], 0) / t[1] if t[1] else 0))
    return "\n".join(lines) + "\n"


def main():
    ap = workload_args(__doc__, 3, "benchmarks.md")
    args = ap.parse_args()
    res = measure_all(args.tendril, args.duration, args.runs)
    text = section(res, args.duration, args.runs)
    print(text)
    splice(args.out, text, heading="Redis")


if __name__ == "__main__":
    main()
