#!/usr/bin/env python3
"""Static files against nginx: a 1 KiB file (requests/s, wrk -t1 -c50) and a
100 MiB file (throughput, wrk -t1 -c4), tendril.static under /static/*path
and nginx's /static/ (sendfile on, tcp_nopush on), both on core 0, wrk on
core 1, runs interleaved. Prints the rates and the ratios the issue asks
for (at least 0.9 of nginx's).

usage: bench/static.py [--runs N] [--duration S] [--tendril PATH]
nginx comes from ../shared/bench/peers/start.sh (or $PEERS_START), which
serves /static/ from $STATIC_ROOT. Traffic goes to 127.0.0.1 only.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import ROOT, free_port, median, run  # noqa: E402

PEERS_START = os.environ.get("PEERS_START") or os.path.join(ROOT, "..", "shared", "bench", "peers", "start.sh")
APP = """local router = require("tendril.router").new()
router:get("/static/*path", require("tendril.static")(os.getenv("STATIC_ROOT")))
return router
"""
CASES = [("1 KiB file", "/static/1k.bin", 50, "Requests/sec"), ("100 MiB file", "/static/100m.bin", 4, "Transfer/sec")]


def wrk(port, path, conns, seconds):
    text = run(["taskset", "-c", "1", "wrk", "-t1", "-c%d" % conns, "-d%ds" % seconds, "--timeout", "10s",
                "http://127.0.0.1:%d%s" % (port, path)], timeout=seconds + 60)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    tput = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", text)
    scale = {"B": 1e-6, "KB": 1e-3, "MB": 1, "GB": 1e3}
    return {"Requests/sec": float(rps.group(1)) if rps else None,
            "Transfer/sec": float(tput.group(1)) * scale.get(tput.group(2), 1) if tput else None}


def wait_port(port):
    for _ in range(100):
        if subprocess.run(["curl", "-s", "-o", "/dev/null", "http://127.0.0.1:%d/static/1k.bin" % port]).returncode == 0:
            return
        time.sleep(0.05)
    raise RuntimeError("port %d does not answer" % port)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--tendril", default=os.path.join(ROOT, "build", "tendril"))
    a = ap.parse_args()
    root = tempfile.mkdtemp(prefix="tendril-bench-static-")
    with open(os.path.join(root, "1k.bin"), "wb") as f:
        f.write(os.urandom(1024))
    subprocess.run(["truncate", "-s", "100M", os.path.join(root, "100m.bin")], check=True)
    with tempfile.NamedTemporaryFile("w", prefix="tendril-static-app-", suffix=".lua", delete=False) as f:
        f.write(APP)
        app = f.name
    env = dict(os.environ, STATIC_ROOT=root, PEER_LOGS="/tmp/tendril-bench-logs")
    tport, nport = free_port(), free_port()
    tendril = subprocess.Popen(["taskset", "-c", "0", a.tendril, "serve", app, "--port", str(tport)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = subprocess.run([PEERS_START, "nginx", str(nport)], env=env, capture_output=True, text=True, timeout=30)
    nginx = int(out.stdout.strip().splitlines()[-1])
    try:
        wait_port(tport)
        wait_port(nport)
        results = {}
        for _ in range(a.runs):
            for name, path, conns, key in CASES:
                for peer, port in (("tendril", tport), ("nginx", nport)):
                    results.setdefault((name, peer), []).append(wrk(port, path, conns, a.duration)[key])
        for name, path, conns, key in CASES:
            t, n = median(results[(name, "tendril")]), median(results[(name, "nginx")])
            unit = "req/s" if key == "Requests/sec" else "MB/s"
            print("%-13s tendril %10.1f %s  nginx %10.1f %s  ratio %.2f" % (name, t, unit, n, unit, t / n))
    finally:
        tendril.terminate()
        tendril.wait()
        subprocess.run(["kill", str(nginx)])
        shutil.rmtree(root)
        os.unlink(app)


if __name__ == "__main__":
    main()
