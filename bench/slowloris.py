#!/usr/bin/env python3
"""Slow clients against normal ones: for each server and each of
slowhttptest's three slow modes (1000 slow-header, slow-body and slow-read
clients), the p99 latency and rate of normal requests (wrk -t1 -c10
--latency, 5 s) before and during the attack, and how many of the slow
clients the server held. Writes docs/benchmarks-slowloris.md, which
bench/run.py embeds in docs/benchmarks.md.

usage: slowloris.py [--tendril BIN] [--peers tendril,nginx-lua] [--out PATH]

Server on core 0, wrk and slowhttptest on core 1. Every step is bounded in
time (slowhttptest runs with -l, and is killed at the end of its step)."""
import argparse
import os
import re
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from run import free_port, start, stop  # noqa: E402  (the peers' start and stop)

CLIENTS = 1000
MODES = {
    # slowloris: a header line every 5 s, never the blank line
    "slow headers (-H)": ["-H", "-i", "5", "-x", "24"],
    # R-U-Dead-Yet: a 1 MB body declared, 10 bytes every 5 s
    "slow body (-B)": ["-B", "-i", "5", "-s", "1000000", "-x", "10"],
    # slow read: 10 pipelined GET /big (64 KiB each), 32 bytes read every second from a 512-byte window
    "slow read (-X)": ["-X", "-k", "10", "-n", "1", "-z", "32", "-w", "512", "-y", "1024", "PATH=/big"],
}


def wrk_latency(port, seconds=5):
    out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", "-c10", "-d%ds" % seconds, "--latency",
                          "--timeout", "5s", "http://127.0.0.1:%d/" % port],
                         capture_output=True, text=True, timeout=seconds + 30).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    ms = None
    if p99:
        ms = float(p99.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    return {"rps": float(rps.group(1)) if rps else None, "p99_ms": ms,
            "errors": sum(int(x) for x in errs.groups()) if errs else 0}


def established(port):
    """Client connections the kernel shows as established to port."""
    out = subprocess.run(["ss", "-Htn", "state", "established", "( dport = :%d )" % port],
                         capture_output=True, text=True).stdout
    return len(out.splitlines())


def attack(port, mode_args, seconds):
    path = "/"
    args = []
    for a in mode_args:
        if a.startswith("PATH="):
            path = a[5:]
        else:
            args.append(a)
    cmd = ["taskset", "-c", "1", "slowhttptest", "-c", str(CLIENTS), "-r", "500", "-l", str(seconds), "-p", "3",
           "-u", "http://127.0.0.1:%d%s" % (port, path)] + args
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def measure(peer, port, tendril_bin):
    proc, pid = start(peer, port, tendril_bin)
    rows = []
    try:
        wrk_latency(port, 1)  # warm-up
        before = wrk_latency(port)
        for name, args in MODES.items():
            slow = attack(port, args, 20)
            try:
                time.sleep(6)  # the ramp: 500 connections a second
                held = established(port)
                during = wrk_latency(port)
            finally:
                os.killpg(slow.pid, signal.SIGKILL)
                slow.wait()
            time.sleep(1)
            rows.append((name, before, during, held))
        alive = wrk_latency(port, 1)["rps"] is not None
    finally:
        stop(proc)
    return rows, alive


def fmt(v, digits=1):
    return "–" if v is None else ("%.*f" % (digits, v))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tendril", default=os.path.join(ROOT, "build", "tendril"))
    ap.add_argument("--peers", default="tendril,nginx-lua")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks-slowloris.md"))
    args = ap.parse_args()
    lines = ["## Slow clients (slowloris)\n",
             "%d slow clients from Debian's `slowhttptest` (`bench/slowloris.py`: 500 new a second, on core 1 with "
             "the normal load) in each of its three modes, against 10 normal keep-alive clients (`wrk -t1 -c10 "
             "--latency`, 5 s, measured 6 s into the attack). *Held* counts the slow clients' connections the kernel "
             "showed established then; wrk shares core 1 with `slowhttptest`, so the rates during an attack are bounded "
             "by that core as well (a slow client the server has answered counts no more: slow bodies sent to a "
             "handler that answers without reading them end at once). Each server keeps its defaults (tendril: 10 s for a head, 10 s between "
             "reads of a body, 60 s without progress for a reader).\n" % CLIENTS,
             "| server | slow mode | held | normal req/s before → during | p99 before → during (ms) | wrk errors during |",
             "|---|---|---|---|---|---|"]
    for peer in args.peers.split(","):
        rows, alive = measure(peer, free_port(), args.tendril)
        for name, before, during, held in rows:
            lines.append("| %s | %s | %d | %s → %s | %s → %s | %d |" % (
                peer, name, held, fmt(before["rps"], 0), fmt(during["rps"], 0), fmt(before["p99_ms"], 2),
                fmt(during["p99_ms"], 2), during["errors"]))
        if not alive:
            lines.append("| %s | (did not answer after the attacks) | | | | |" % peer)
    lines.append("\nRun on %s with `python3 bench/slowloris.py`." % time.strftime("%Y-%m-%d"))
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
