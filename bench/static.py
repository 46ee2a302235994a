#!/usr/bin/env python3
"""Static files against nginx (issue 12): a 1 KiB file (requests/s,
wrk -t1 -c50) and a 100 MiB file (throughput, wrk -t1 -c4), tendril.static
under /static/*path and nginx's /static/ (sendfile on, tcp_nopush on, from
bench/peers), both on core 0, wrk on core 1, runs interleaved after a
warm-up. CPU is the server's user + system time per request. Writes the
"Static files" section of docs/benchmarks-extra.md (the issue asks for at
least 0.9 of nginx in both).

usage: bench/static.py [--runs N] [--duration S] [--tendril PATH] [--out FILE]
(scripts/bench --static-only). Traffic goes to 127.0.0.1 only.
"""
import datetime
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import (HZ, PEER_LOGS, ROOT, cpu_ticks, free_port, head_commit, median, run, start, stop,  # noqa: E402
                 workload_args)
from tls import splice  # noqa: E402

APP = """local router = require("tendril.router").new()
router:get("/static/*path", require("tendril.static")(os.getenv("STATIC_ROOT")))
return router
"""
# name, path, connections, the figure compared
CASES = [("1 KiB file", "/static/1k.bin", 50, "rps"), ("100 MiB file", "/static/100m.bin", 4, "mbps")]


def wrk(port, path, conns, seconds):
    text = run(["taskset", "-c", "1", "wrk", "-t1", "-c%d" % conns, "-d%ds" % seconds, "--timeout", "10s",
                "http://127.0.0.1:%d%s" % (port, path)], timeout=seconds + 60)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    total = re.search(r"(\d+) requests in", text)
    tput = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", text)
    scale = {"B": 1e-6, "KB": 1e-3, "MB": 1, "GB": 1e3}
    return {"rps": float(rps.group(1)) if rps else None,
            "requests": int(total.group(1)) if total else 0,
            "mbps": float(tput.group(1)) * scale.get(tput.group(2), 1) if tput else None}


def wait_file(port):
    for _ in range(200):
        if subprocess.run(["curl", "-sf", "-o", "/dev/null",
                           "http://127.0.0.1:%d/static/1k.bin" % port]).returncode == 0:
            return
        time.sleep(0.05)
    raise RuntimeError("port %d does not serve /static/1k.bin" % port)


def measure(tendril_bin, duration, runs):
    root = tempfile.mkdtemp(prefix="tendril-bench-static-")
    with open(os.path.join(root, "1k.bin"), "wb") as f:
        f.write(os.urandom(1024))
    subprocess.run(["truncate", "-s", "100M", os.path.join(root, "100m.bin")], check=True)
    with tempfile.NamedTemporaryFile("w", prefix="tendril-static-app-", suffix=".lua", delete=False) as f:
        f.write(APP)
        app = f.name
    env = dict(os.environ, STATIC_ROOT=root)
    servers = {}
    results = {}
    try:
        tport = free_port()
        os.makedirs(PEER_LOGS, exist_ok=True)
        with open(os.path.join(PEER_LOGS, "tendril-static.log"), "wb") as log:
            t = subprocess.Popen(["taskset", "-c", "0", tendril_bin, "serve", app, "--port", str(tport)],
                                 env=env, stdout=log, stderr=subprocess.STDOUT)
        servers["tendril"] = (tport, t.pid, t.pid)
        nport = free_port()
        servers["nginx"] = (nport,) + start("nginx", nport, tendril_bin, env_extra={"STATIC_ROOT": root})
        for port, _, _ in servers.values():
            wait_file(port)
            for _, path, conns, _ in CASES:
                wrk(port, path, conns, 1)  # warm-up (the JIT, the page cache)
        for _ in range(runs):
            for name, path, conns, _ in CASES:
                for peer, (port, _, worker) in servers.items():
                    t0 = cpu_ticks(worker)
                    r = wrk(port, path, conns, duration)
                    used = cpu_ticks(worker) - t0
                    r["cpu_us"] = used / HZ * 1e6 / r["requests"] if r["requests"] else None
                    results.setdefault((name, peer), []).append(r)
    finally:
        if "tendril" in servers:
            t.terminate()
            t.wait()
        if "nginx" in servers:
            stop(servers["nginx"][1])
        shutil.rmtree(root)
        os.unlink(app)
    return results


def section(results, duration, runs):
    commit = head_commit()
    lines = ["## Static files\n",
             "Measured on %s at commit %s by `bench/static.py` (`scripts/bench --static-only`): "
             "`tendril.static` under `/static/*path` against nginx's `/static/` (`sendfile on; tcp_nopush on`), "
             "both on core 0, `wrk -t1 -d%ds` on core 1 (50 connections for the 1 KiB file, 4 for the "
             "100 MiB one), %d interleaved run%s after a warm-up (medians). CPU is the server's user + system "
             "time per request.\n" % (datetime.date.today().isoformat(), commit, duration, runs,
                                      "" if runs == 1 else "s"),
             "| file | server | requests/s | MB/s | CPU µs/request |", "|---|---|---|---|---|"]
    ratios = []
    for name, _, _, key in CASES:
        figures = {}
        for peer in ("tendril", "nginx"):
            rs = results.get((name, peer), [])
            rps = median([r["rps"] for r in rs if r["rps"]])
            mbps = median([r["mbps"] for r in rs if r["mbps"]])
            cpu = median([r["cpu_us"] for r in rs if r["cpu_us"]])
            figures[peer] = {"rps": rps, "mbps": mbps, "cpu": cpu}
            lines.append("| %s | %s | %s | %s | %s |" % (
                name, peer, "{:,.0f}".format(rps) if rps else "-", "{:,.0f}".format(mbps) if mbps else "-",
                ("%.1f" % cpu) if cpu and cpu < 100 else ("{:,.0f}".format(cpu) if cpu else "-")))
        t, n = figures["tendril"], figures["nginx"]
        if t[key] and n[key]:
            ratios.append("%s: %.2fx nginx's %s at %.2fx its CPU per request" % (
                name, t[key] / n[key], "requests/s" if key == "rps" else "throughput",
                t["cpu"] / n["cpu"] if t["cpu"] and n["cpu"] else float("nan")))
    lines.append("\n" + "; ".join(ratios) + " (the issue asks for at least 0.9 in both).")
    return "\n".join(lines) + "\n"


def main():
    ap = workload_args(__doc__, 3, "benchmarks-extra.md")
    a = ap.parse_args()
    text = section(measure(a.tendril, a.duration, a.runs), a.duration, a.runs)
    print(text)
    splice(a.out, text, heading="Static files")


if __name__ == "__main__":
    main()
