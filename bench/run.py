#!/usr/bin/env python3
"""The engine of scripts/bench: starts each server pinned to core 0, drives
it from core 1 with ab and wrk, and writes docs/benchmarks.md.

usage: bench/run.py [--peers tendril,nginx-lua,node,eventlet,nginx] [--runs N]
                    [--duration S] [--out PATH] [--no-tls] [--no-ws]
The TLS section comes from bench/tls.py and the WebSocket section from
bench/ws.py (each also runnable alone), unless --no-tls or --no-ws, or
tendril is not among the peers. The WebSocket runs are short: there are at
least 3 of them whatever --runs says.
Every load run is bounded in requests or seconds; traffic goes to 127.0.0.1 only.
"""
import argparse
import datetime
import json
import os
import platform
import re
import resource
import socket
import ssl
import statistics
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PEERS_DIR = os.path.join(HERE, "peers")
HZ = os.sysconf("SC_CLK_TCK")
PEER_LOGS = "/tmp/tendril-bench-logs"

DESCRIPTIONS = {
    "tendril": "tendril (Lua handler)",
    "nginx-lua": "nginx + Lua (lua-nginx-module)",
    "node": "Node.js",
    "eventlet": "Python eventlet",
    "nginx": "nginx static `return 200` (C reference)",
}


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run(cmd, timeout):
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, preexec_fn=raise_nofile)
    return out.stdout + out.stderr


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def workload_args(doc, runs, out):
    """The options every workload script takes (--runs, --duration,
    --tendril, --out: a file under docs/); the caller may add its own."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=runs)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--tendril", default=os.path.join(ROOT, "build", "tendril"))
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", out))
    return ap


def head_commit():
    """The short hash of the commit measured, for a section's first line."""
    return subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()


def cpu_ticks(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def wait_ready(port, timeout=15, tls=False):
    end = time.time() + timeout
    ctx = ssl._create_unverified_context() if tls else None
    while time.time() < end:
        try:
            with urllib.request.urlopen("%s://127.0.0.1:%d/" % ("https" if tls else "http", port),
                                        timeout=1, context=ctx) as r:
                if r.status == 200:
                    return True
        except OSError:
            time.sleep(0.1)
    return False


def ab(port, n, c, path="/"):
    text = run(["taskset", "-c", "1", "ab", "-q", "-r", "-n", str(n), "-c", str(c),
                "http://127.0.0.1:%d%s" % (port, path)], timeout=300)
    rps = re.search(r"Requests per second:\s+([\d.]+)", text)
    failed = re.search(r"Failed requests:\s+(\d+)", text)
    done = re.search(r"Complete requests:\s+(\d+)", text)
    if not rps:
        return {"rps": None, "failed": None, "note": "ab did not finish"}
    return {"rps": float(rps.group(1)), "failed": int(failed.group(1)) + (n - int(done.group(1)))}


def wrk(port, conns, seconds, path="/", timeout_s=5, scheme="http"):
    text = run(["taskset", "-c", "1", "wrk", "-t1", "-c%d" % conns, "-d%ds" % seconds,
                "--timeout", "%ds" % timeout_s, "%s://127.0.0.1:%d%s" % (scheme, port, path)],
               timeout=seconds + 60)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    total = re.search(r"(\d+) requests in", text)
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errors = sum(int(x) for x in errs.groups()) if errs else 0
    return {"rps": float(rps.group(1)) if rps else None,
            "requests": int(total.group(1)) if total else 0,
            "errors": errors + (int(non2xx.group(1)) if non2xx else 0)}


def idle_conns(port, n, pid):
    text = run([sys.executable, os.path.join(PEERS_DIR, "idle-conns.py"), str(port), str(n), "3", str(pid)],
               timeout=90)
    try:
        return json.loads(text.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"bytes_per_conn": None, "note": text[-300:]}


def memory(mode, port, arg, pid):
    """bench/memory.py: peak RSS with many waiting requests, or growth under a
    client that pipelines and never reads."""
    try:
        text = run([sys.executable, os.path.join(HERE, "memory.py"), mode, str(port), str(arg), str(pid)],
                   timeout=120)
    except subprocess.TimeoutExpired:
        return {"note": "timed out"}
    try:
        return json.loads(text.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"note": text[-300:]}


PROXY_PEERS = ("tendril", "node", "nginx-lua")
WAITING = 10000


def start(peer, port, tendril_bin, upstream_port=None, tendril_args="", env_extra=None):
    """Starts a peer with bench/peers/start.sh; returns (master PID, the PID
    that serves: nginx's worker, else the master). A peer whose name ends in
    -tls (or -tls-check) serves HTTPS on port."""
    env = dict(os.environ, TENDRIL_BIN=tendril_bin, PEER_LOGS=PEER_LOGS,
               TENDRIL_ARGS=tendril_args, **(env_extra or {}))
    if upstream_port:
        env["UPSTREAM_PORT"] = str(upstream_port)
    out = subprocess.run([os.path.join(PEERS_DIR, "start.sh"), peer, str(port)], capture_output=True,
                         text=True, env=env, timeout=30)
    if out.returncode != 0:
        raise RuntimeError("%s did not start: %s" % (peer, out.stderr.strip()))
    master = int(out.stdout.strip().splitlines()[-1])
    if not wait_ready(port, tls=peer.endswith(("-tls", "-tls-check"))):
        stop(master)
        raise RuntimeError("%s is not answering on port %d" % (peer, port))
    worker = master
    if peer.startswith("nginx"):
        kids = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True).stdout.split()
        worker = int(kids[0])
    return master, worker


def stop(master):
    subprocess.run([os.path.join(PEERS_DIR, "stop.sh"), str(master)], timeout=30)


def measure(peer, tendril_bin, duration, upstream_port):
    port = free_port()
    master, worker = start(peer, port, tendril_bin, upstream_port)
    r = {}
    try:
        # Idle memory first, on a fresh process: later load would leave
        # pooled memory behind that hides the per-connection cost.
        r["idle"] = idle_conns(port, 2000, worker)
        if peer != "nginx":
            r["waiting"] = memory("waiting", port, WAITING, worker)
        r["flood"] = memory("flood", port, 5, worker)
        wrk(port, 50, 1)  # warm-up (JIT, caches)
        r["ab"] = [ab(port, 10000, c) for c in (5, 100, 1000)]
        t0 = cpu_ticks(worker)
        r["wrk50"] = wrk(port, 50, duration)
        used = cpu_ticks(worker) - t0
        r["cpu_us"] = used / HZ * 1e6 / r["wrk50"]["requests"] if r["wrk50"]["requests"] else None
        r["wrk1000"] = wrk(port, 1000, duration)
        if peer != "nginx":
            r["sleep1ms"] = wrk(port, 50, duration, "/sleep1ms")
            # In d seconds each connection can finish d - 1 one-second
            # sleeps (the first ends at 1 s, the d-th would end just past d).
            d = duration + 1
            r["sleeps2000"] = wrk(port, 2000, d, "/sleep", timeout_s=5)
            ideal = 2000.0 * (d - 1) / d
            r["sleeps2000"]["ideal_pct"] = (100.0 * r["sleeps2000"]["rps"] / ideal) if r["sleeps2000"]["rps"] else None
        if peer in PROXY_PEERS and upstream_port:
            r["proxy"] = wrk(port, 50, duration, "/proxy")
    finally:
        stop(master)
    return r


# Options whose cost must be invisible: tendril's hello with each on (the
# default) and off, interleaved so that drift in the machine hits both alike.
OPTION_COSTS = [
    ("loop-stall guard", "--stall-warn-ms 0"),
    ("file watching (hot reload)", "--no-watch"),
    ("per-request time breakdown", "--no-timings"),
]


def option_costs(tendril_bin, duration, runs):
    results = []
    for name, off_args in OPTION_COSTS:
        out = {"on": [], "off": []}
        for _ in range(max(runs, 2)):
            for mode, args in (("on", ""), ("off", off_args)):
                port = free_port()
                master, worker = start("tendril", port, tendril_bin, tendril_args=args)
                try:
                    wrk(port, 50, 1)
                    t0 = cpu_ticks(worker)
                    w = wrk(port, 50, duration)
                    cpu = (cpu_ticks(worker) - t0) / HZ * 1e6 / w["requests"] if w["requests"] else None
                    out[mode].append({"rps": w["rps"], "cpu_us": cpu})
                finally:
                    stop(master)
        results.append((name, off_args, {mode: {"rps": median([x["rps"] for x in v]),
                                                "cpu_us": median([x["cpu_us"] for x in v])}
                                         for mode, v in out.items()}))
    return results


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def merge(runs):
    """Medians over runs, field by field."""
    first = runs[0]
    if isinstance(first, dict):
        return {k: merge([r.get(k) for r in runs]) for k in first}
    if isinstance(first, list):
        return [merge([r[i] for r in runs]) for i in range(len(first))]
    if isinstance(first, (int, float)) or first is None:
        return median(runs)
    return first


def fmt(v, unit="", digits=0):
    if v is None:
        return "–"
    if digits == 0 and v >= 1000:
        return "%.1fk%s" % (v / 1000, unit)
    return ("%." + str(digits) + "f%s") % (v, unit)


def machine():
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    deb = open("/etc/debian_version").read().strip() if os.path.exists("/etc/debian_version") else "?"
    return "%s, %d cores, Linux %s, Debian %s" % (model, os.cpu_count(), platform.release(), deb)


def versions():
    def first_line(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip() \
                or subprocess.run(cmd, capture_output=True, text=True, timeout=10).stderr.strip()
        except OSError:
            return "not installed"
    return {
        "nginx": first_line(["nginx", "-v"]).replace("nginx version: ", ""),
        "node": first_line(["node", "--version"]),
        "eventlet": first_line(["/usr/bin/python3", "-c", "import eventlet; print(eventlet.__version__)"]),
    }


def write_report(path, results, runs, duration, extra_sections, stall=None):
    lines = []
    lines.append("# Benchmarks\n")
    lines.append("Written by `scripts/bench` on %s." % datetime.date.today().isoformat())
    lines.append("Machine: %s. Versions: %s." % (machine(), ", ".join("%s %s" % kv for kv in versions().items())))
    lines.append("Each server is pinned to core 0 and the load generator to core 1; medians of %d run(s), "
                 "%d s per wrk run, the peers' runs interleaved. Numbers move by 10%% or more between runs on this shared machine: "
                 "compare within one table. CPU µs per request is the steadier column: a request rate "
                 "also depends on how much of its core a server got while it ran (CPU µs/req × req/s "
                 "shows that share).\n" % (runs, duration))
    lines.append("| server | ab -n 10000 c5 / c100 / c1000 req/s (failed) | wrk -t1 -c50 req/s | CPU µs/req "
                 "| wrk -c1000 req/s | 1 ms sleep per request, c50 | 2000 × 1 s sleeps, % of ideal "
                 "| idle bytes/conn (2000 conns) |")
    lines.append("|---|---|---|---|---|---|---|---|")
    for peer, r in results.items():
        if "error" in r:
            lines.append("| %s | %s |  |  |  |  |  |  |" % (DESCRIPTIONS.get(peer, peer), r["error"]))
            continue
        abs_ = " / ".join(fmt(a["rps"]) for a in r["ab"])
        failed = sum((a["failed"] or 0) for a in r["ab"])
        sl = r.get("sleep1ms")
        s2 = r.get("sleeps2000")
        lines.append("| %s | %s (%d) | %s | %s | %s | %s | %s | %s |" % (
            DESCRIPTIONS.get(peer, peer), abs_, failed, fmt(r["wrk50"]["rps"]), fmt(r["cpu_us"], digits=1),
            fmt(r["wrk1000"]["rps"]), fmt(sl["rps"]) if sl else "–",
            (fmt(s2["ideal_pct"], "%") + ("" if not s2["errors"] else " (%d errors)" % s2["errors"])) if s2 else "–",
            fmt(r["idle"].get("bytes_per_conn"), digits=0) if r.get("idle") else "–"))
    lines.append("\n## Memory\n")
    lines.append("Resident memory of the server process (for nginx, its worker). Idle: 2000 keep-alive "
                 "connections, each after one request (`bench/peers/idle-conns.py`). Waiting: %d "
                 "connections each send `GET /sleep` (a one-second sleep) at once; the peak above idle "
                 "(`bench/memory.py waiting`). Flood: one client pipelines `GET /` for 5 s and never "
                 "reads; the growth (`bench/memory.py flood`).\n" % WAITING)
    lines.append("| server | idle bytes/conn | %d waiting requests: peak above idle | answered | "
                 "pipelining flood: growth | sent by the client |" % WAITING)
    lines.append("|---|---|---|---|---|---|")
    for peer, r in results.items():
        if "error" in r:
            continue
        w, f = r.get("waiting") or {}, r.get("flood") or {}
        lines.append("| %s | %s | %s | %s | %s | %s |" % (
            DESCRIPTIONS.get(peer, peer), fmt((r.get("idle") or {}).get("bytes_per_conn"), digits=0),
            fmt(w.get("peak_above_idle_mb"), " MB", 1) if w else "–",
            ("%s of %s" % (fmt(w.get("ok")), fmt(w.get("requests")))) if w else "–",
            fmt(f.get("growth_mb"), " MB", 1) if f else "–", fmt(f.get("sent_mb"), " MB", 1) if f else "–"))
    proxied = [(p, r) for p, r in results.items() if "error" not in r and r.get("proxy")]
    if proxied:
        lines.append("\n## One upstream GET per request (`/proxy`, wrk -t1 -c50)\n")
        lines.append("Each handler makes one keep-alive HTTP GET to a local nginx serving a static `return 200` "
                     "(pinned to the server's core) and answers with its body: tendril's `http.get` in the "
                     "handler, Node.js's `http.get` with a keep-alive agent, nginx + Lua's `ngx.location.capture` "
                     "to a keep-alive `proxy_pass`.\n")
        lines.append("| server | req/s | errors |")
        lines.append("|---|---|---|")
        for peer, r in proxied:
            lines.append("| %s | %s | %d |" % (DESCRIPTIONS.get(peer, peer), fmt(r["proxy"]["rps"]),
                                              r["proxy"]["errors"] or 0))
        t = results.get("tendril")
        if t and t.get("proxy"):
            for peer, r in proxied:
                if peer != "tendril" and r["proxy"]["rps"]:
                    lines.append("\ntendril / %s: %.2f×" % (DESCRIPTIONS.get(peer, peer),
                                                           t["proxy"]["rps"] / r["proxy"]["rps"]))
    if stall:
        lines.append("\n## What optional machinery costs (tendril hello, wrk -t1 -c50, interleaved runs)\n")
        lines.append("| feature | on: req/s | off: req/s | on: CPU µs/req | off: CPU µs/req |")
        lines.append("|---|---|---|---|---|")
        for name, off_args, r in stall:
            lines.append("| %s (off: `%s`) | %s | %s | %s | %s |" % (
                name, off_args, fmt(r["on"]["rps"]), fmt(r["off"]["rps"]),
                fmt(r["on"]["cpu_us"], digits=2), fmt(r["off"]["cpu_us"], digits=2)))
    t = results.get("tendril")
    if t and "error" not in t:
        lines.append("\n## Tendril against its peers (ratios from the same run)\n")
        lines.append("| peer | wrk -c50 req/s | CPU per request | wrk -c1000 req/s | 1 ms sleeps | /proxy req/s "
                     "| waiting requests' memory |")
        lines.append("|---|---|---|---|---|---|---|")
        for peer, r in results.items():
            if peer == "tendril" or "error" in r:
                continue

            def ratio(a, b):
                return "%.2f×" % (a / b) if a and b else "–"
            lines.append("| %s | %s | %s | %s | %s | %s | %s |" % (
                DESCRIPTIONS.get(peer, peer), ratio(t["wrk50"]["rps"], r["wrk50"]["rps"]),
                ratio(t["cpu_us"], r["cpu_us"]), ratio(t["wrk1000"]["rps"], r["wrk1000"]["rps"]),
                ratio((t.get("sleep1ms") or {}).get("rps"), (r.get("sleep1ms") or {}).get("rps")),
                ratio((t.get("proxy") or {}).get("rps"), (r.get("proxy") or {}).get("rps")),
                ratio((t.get("waiting") or {}).get("peak_above_idle_mb"),
                      (r.get("waiting") or {}).get("peak_above_idle_mb"))))
        lines.append("\nA ratio above 1 means tendril served more requests per second; for CPU per "
                     "request and memory, below 1 means tendril spent less.")
    for section in extra_sections:
        lines.append("")
        lines.append(section)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peers", default="tendril,nginx-lua,node,eventlet,nginx")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--tendril", default=os.path.join(ROOT, "build", "tendril"))
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks.md"))
    ap.add_argument("--json", help="also write the raw results here")
    ap.add_argument("--no-tls", action="store_true", help="skip the TLS workloads (bench/tls.py)")
    ap.add_argument("--no-ws", action="store_true", help="skip the WebSocket workloads (bench/ws.py)")
    ap.add_argument("--no-workers", action="store_true", help="skip the multi-process workloads (bench/workers.py)")
    ap.add_argument("--no-redis", action="store_true", help="skip the Redis workloads (bench/redis_bench.py)")
    ap.add_argument("--no-pg", action="store_true", help="skip the PostgreSQL workload (bench/pg_bench.py)")
    ap.add_argument("--no-stall-cost", action="store_true",
                    help="skip the on/off comparisons of the stall guard and file watching")
    args = ap.parse_args()
    results = {}
    peers = args.peers.split(",")
    upstream = None
    upstream_port = None
    if any(p in PROXY_PEERS for p in peers):
        upstream_port = free_port()
        upstream, _ = start("nginx", upstream_port, args.tendril)
    # Round-robin: run i of every peer before run i+1 of any, so that a
    # slow minute on this shared machine does not fall on one peer only.
    runs = {peer: [] for peer in peers}
    for i in range(args.runs):
        for peer in peers:
            print("bench: %s, run %d of %d" % (peer, i + 1, args.runs), file=sys.stderr, flush=True)
            try:
                runs[peer].append(measure(peer, args.tendril, args.duration, upstream_port))
            except (RuntimeError, subprocess.TimeoutExpired, OSError) as e:
                print("bench: %s: %s" % (peer, e), file=sys.stderr)
                runs[peer].append({"error": str(e)})
    for peer in peers:
        ok = [r for r in runs[peer] if "error" not in r]
        results[peer] = merge(ok) if ok else runs[peer][0]
        print(json.dumps({peer: results[peer]}), file=sys.stderr)
    if upstream:
        stop(upstream)
    stall = None
    if "tendril" in peers and not args.no_stall_cost:
        print("bench: optional features on and off", file=sys.stderr, flush=True)
        stall = option_costs(args.tendril, args.duration, args.runs)
    extra = []
    tls_results = None
    if "tendril" in peers and not args.no_tls:
        import tls  # bench/tls.py: the TLS workloads and their section
        tls_results = tls.measure_all(args.tendril, args.duration, args.runs)
        extra.append(tls.section(tls_results).strip())
    ws_results = None
    if "tendril" in peers and not args.no_ws:
        import ws  # bench/ws.py: the WebSocket workloads and their section
        ws_results = ws.measure_all(args.tendril, args.duration, max(args.runs, 3))
        extra.append(ws.section(ws_results).strip())
    workers_results = None
    if "tendril" in peers and not args.no_workers:
        import workers  # bench/workers.py: tendril --workers 2 against nginx + Lua and Node cluster
        workers_results = workers.measure_all(args.tendril, args.duration, max(args.runs, 3), 2)
        extra.append(workers.section(workers_results).strip())
    if "tendril" in peers and not args.no_redis:
        import redis_bench  # bench/redis_bench.py: tendril.redis against Node.js + ioredis
        redis_results = redis_bench.measure_all(args.tendril, args.duration, max(args.runs, 3))
        extra.append(redis_bench.section(redis_results, args.duration, max(args.runs, 3)).strip())
    if "tendril" in peers and not args.no_pg:
        import pg_bench  # bench/pg_bench.py: tendril.pg against Node.js + pg
        pg_results = pg_bench.measure_all(args.tendril, args.duration, max(args.runs, 3))
        extra.append(pg_bench.section(pg_results, args.duration, max(args.runs, 3)).strip())
    for name in ("benchmarks-slowloris.md", "benchmarks-extra.md"):
        extra_path = os.path.join(ROOT, "docs", name)
        if os.path.exists(extra_path):
            extra.append(open(extra_path).read().strip())
    write_report(args.out, results, args.runs, args.duration, extra, stall)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(results, tls=tls_results, ws=ws_results, workers=workers_results), f, indent=1)
    print("bench: wrote %s" % args.out, file=sys.stderr)


if __name__ == "__main__":
    main()
