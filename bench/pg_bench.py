#!/usr/bin/env python3
"""The PostgreSQL workload of scripts/bench (--pg-only): tendril.pg against
Node.js + pg, one primary-key SELECT per request (SELECT v FROM kv WHERE k =
$1), a pool of 16 connections each. A PostgreSQL of its own (initdb in a
temporary directory, run as the postgres user when root, trust logins on
127.0.0.1) pinned to core 1 beside the load (a separate service); the
servers on core 0, wrk -t1 -c50 on core 1, runs interleaved. Writes the
"PostgreSQL" section of docs/benchmarks.md.

usage: bench/pg_bench.py [--runs N] [--duration S] [--tendril PATH] [--out PATH]
Needs postgresql, node and npm (pg, installed once).
"""
import datetime
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import HZ, cpu_ticks, free_port, head_commit, median, start, stop, workload_args, wrk  # noqa: E402
from tls import splice  # noqa: E402

CASES = [
    ("tendril, one SELECT per request", "tendril"),
    ("Node.js + pg, one SELECT per request", "node-pg"),
]


def as_postgres(cmd):
    return (["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []) + cmd


def start_pg():
    bindir = sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1]
    d = tempfile.mkdtemp(prefix="tendril-bench-pg-")
    if os.geteuid() == 0:
        shutil.chown(d, "postgres")
    port = free_port()
    subprocess.run(as_postgres([bindir + "/initdb", "-D", d + "/data", "-U", "postgres", "--auth=trust",
                                "-E", "UTF8", "--locale=C.UTF-8"]), check=True, capture_output=True, timeout=120)
    subprocess.run(as_postgres(["taskset", "-c", "1", bindir + "/pg_ctl", "-D", d + "/data", "-l", d + "/log",
                                "-w", "-o", "-p %d -k %s -c listen_addresses=127.0.0.1 -c max_connections=100"
                                % (port, d), "start"]), check=True, capture_output=True, timeout=120)
    sql = "CREATE TABLE kv (k int PRIMARY KEY, v text); INSERT INTO kv VALUES (1, 'world');"
    subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-d", "postgres", "-q", "-c", sql],
                   check=True, capture_output=True, timeout=60)
    return port, d, bindir


def stop_pg(d, bindir):
    subprocess.run(as_postgres([bindir + "/pg_ctl", "-D", d + "/data", "-m", "fast", "-w", "stop"]),
                   capture_output=True, timeout=120)
    shutil.rmtree(d, ignore_errors=True)


def pg_ticks():
    """CPU ticks (user + system) of every PostgreSQL process now."""
    pids = subprocess.run(["pgrep", "-u", "postgres"], capture_output=True, text=True).stdout.split()
    total = 0
    for pid in pids:
        try:
            with open("/proc/%s/stat" % pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass  # ended meanwhile
    return total


def measure_all(tendril_bin, duration, runs):
    port, d, bindir = start_pg()
    env = {"PG_URL": "postgres://postgres@127.0.0.1:%d/postgres" % port}
    servers = {}
    results = {name: [] for name, _ in CASES}
    try:
        for peer in ("tendril", "node-pg"):
            p = free_port()
            servers[peer] = (p,) + start(peer, p, tendril_bin, env_extra=env)
        for name, peer in CASES:
            with urllib.request.urlopen("http://127.0.0.1:%d/pg" % servers[peer][0], timeout=5) as r:
                body = r.read()
            if body.strip() != b"world":
                raise RuntimeError("%s /pg answered %r" % (peer, body[:100]))
            wrk(servers[peer][0], 50, 1, "/pg")  # warm-up (JIT, the pools)
        for _ in range(runs):
            for name, peer in CASES:
                p, _, worker = servers[peer]
                t0, g0 = cpu_ticks(worker), pg_ticks()
                r = wrk(p, 50, duration, "/pg")
                n = r["requests"]
                r["cpu_us"] = (cpu_ticks(worker) - t0) / HZ * 1e6 / n if n else None
                r["pg_us"] = (pg_ticks() - g0) / HZ * 1e6 / n if n else None
                results[name].append(r)
    finally:
        for p, master, _ in servers.values():
            stop(master)
        stop_pg(d, bindir)
    return {"runs": results}


def section(res, duration, runs):
    lines = ["## PostgreSQL\n",
             "Measured on %s at commit %s by `bench/pg_bench.py` (`scripts/bench --pg-only`): a PostgreSQL of its "
             "own on core 1 (beside the load: a separate service), table `kv`, one primary-key SELECT per "
             "request through a pool of 16 connections; servers on core 0, `wrk -t1 -c50 -d%ds` on core 1, %d "
             "interleaved run%s (medians). CPU is the server's user + system time per request; PostgreSQL's, "
             "beside it, is every postgres process's (the same database work costs it differently by how the "
             "client asks: tendril.pg runs a statement prepared from its second use).\n" % (
                 datetime.date.today().isoformat(), head_commit(), duration, runs, "" if runs == 1 else "s"),
             "| server, workload | requests/s | CPU µs/request | PostgreSQL CPU µs/request |", "|---|---|---|---|"]
    med = {}
    for name, _ in CASES:
        rs = res["runs"][name]
        rps = median([r["rps"] for r in rs if r["rps"]])
        cpu = median([r["cpu_us"] for r in rs if r["cpu_us"]])
        pg = median([r["pg_us"] for r in rs if r["pg_us"]])
        errors = sum(r.get("errors", 0) or 0 for r in rs)
        med[name] = (rps, cpu, pg)
        lines.append("| %s | %s | %s | %s |" % (name, "{:,.0f}".format(rps) if rps else "-",
                                               "%.1f" % cpu if cpu else "-", "%.1f" % pg if pg else "-")
                     + (" (%d errors)" % errors if errors else ""))
    t, n = med[CASES[0][0]], med[CASES[1][0]]
    if t[0] and n[0]:
        lines.append("\ntendril / Node.js + pg: %.2f× the requests/s at %.2f× the CPU per request (PostgreSQL: "
                     "%.2f× its CPU per request)." % (t[0] / n[0], t[1] / n[1] if t[1] and n[1] else float("nan"),
                                                       t[2] / n[2] if t[2] and n[2] else float("nan")))
    return "\n".join(lines) + "\n"


def main():
    ap = workload_args(__doc__, 3, "benchmarks.md")
    args = ap.parse_args()
    res = measure_all(args.tendril, args.duration, args.runs)
    text = section(res, args.duration, args.runs)
    print(text)
    splice(args.out, text, heading="PostgreSQL")


if __name__ == "__main__":
    main()
