#!/usr/bin/env python3
"""The JSON echo of scripts/bench (--json-only): a ~1 KiB JSON object POSTed,
decoded and encoded back, by tendril with tendril.json (/echo-json), by
tendril with cjson alone (/echo-cjson: what the array marks cost) and by
Node.js with JSON.parse and JSON.stringify. Servers on core 0, wrk -t1 -c50
on core 1, runs interleaved; writes the "JSON echo" section of
docs/benchmarks-extra.md.

usage: bench/json_echo.py [--runs N] [--duration S] [--tendril PATH] [--out PATH]
The body is bench/load/echo.json (it holds an empty array, as real
documents do). Every load run is bounded in seconds; traffic goes to
127.0.0.1 only.
"""
import datetime
import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import HZ, ROOT, cpu_ticks, free_port, head_commit, median, run, start, stop, workload_args  # noqa: E402
from tls import splice  # noqa: E402

BODY = os.path.join(ROOT, "bench", "load", "echo.json")

# (name, peer, path)
CASES = [
    ("tendril, tendril.json", "tendril", "/echo-json"),
    ("tendril, cjson alone", "tendril", "/echo-cjson"),
    ("Node.js, JSON.parse/stringify", "node", "/echo-json"),
]


def wrk_script(body):
    """A wrk script that POSTs body as application/json."""
    f = tempfile.NamedTemporaryFile("w", prefix="tendril-json-", suffix=".lua", delete=False)
    f.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
            "wrk.body = [==[%s]==]\n" % body)
    f.close()
    return f.name


def wrk_post(port, path, script, seconds, conns=50):
    text = run(["taskset", "-c", "1", "wrk", "-t1", "-c%d" % conns, "-d%ds" % seconds, "--timeout", "5s",
                "-s", script, "http://127.0.0.1:%d%s" % (port, path)], timeout=seconds + 60)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    total = re.search(r"(\d+) requests in", text)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    return {"rps": float(rps.group(1)) if rps else None, "requests": int(total.group(1)) if total else 0,
            "errors": (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, errs.groups())) if errs else 0)}


def check(port, path, body):
    """The route echoes the document (the same value, an empty array aside:
    cjson alone turns it into {}); returns whether [] stayed []."""
    import json
    import urllib.request
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path), data=body.encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        out = r.read()
    if json.loads(out.replace(b"[]", b"{}")) != json.loads(body.replace("[]", "{}")):
        raise RuntimeError("%s did not echo the document: %r" % (path, out[:200]))
    return out.count(b"[]") == body.count("[]")


def measure(tendril_bin, duration, runs):
    body = open(BODY).read()
    script = wrk_script(body)
    servers = {}
    results = {name: [] for name, _, _ in CASES}
    keeps_empty = {}
    try:
        for peer in ("tendril", "node"):
            port = free_port()
            servers[peer] = (port,) + start(peer, port, tendril_bin)
        for name, peer, path in CASES:
            keeps_empty[name] = check(servers[peer][0], path, body)
            wrk_post(servers[peer][0], path, script, 1)  # warm-up (JIT)
        for _ in range(runs):
            for name, peer, path in CASES:
                port, _, worker = servers[peer]
                t0 = cpu_ticks(worker)
                r = wrk_post(port, path, script, duration)
                used = cpu_ticks(worker) - t0
                r["cpu_us"] = used / HZ * 1e6 / r["requests"] if r["requests"] else None
                results[name].append(r)
    finally:
        for port, master, _ in servers.values():
            stop(master)
        os.unlink(script)
    return {"bytes": len(body), "runs": results, "keeps_empty": keeps_empty}


def section(res, duration, runs):
    commit = head_commit()
    lines = ["## JSON echo\n",
             "Measured on %s at commit %s by `bench/json_echo.py` (`scripts/bench --json-only`): a %d-byte JSON "
             "object (`bench/load/echo.json`, with an empty array) POSTed, decoded and encoded back; "
             "server on core 0, `wrk -t1 -c50 -d%ds` on core 1, %d interleaved run%s (medians). "
             "CPU is the server's user + system time per request.\n" % (
                 datetime.date.today().isoformat(), commit, res["bytes"], duration, runs, "" if runs == 1 else "s"),
             "| server | requests/s | CPU µs/request | `[]` kept |", "|---|---|---|---|"]
    base = None
    for name, _, _ in CASES:
        rs = res["runs"][name]
        rps = median([r["rps"] for r in rs if r["rps"]])
        cpu = median([r["cpu_us"] for r in rs if r["cpu_us"]])
        errors = sum(r["errors"] for r in rs)
        if name.startswith("tendril, cjson"):
            base = (rps, cpu)
        lines.append("| %s | %s | %s | %s |" % (name, "{:,.0f}".format(rps) if rps else "-",
                                               "%.1f" % cpu if cpu else "-",
                                               "yes" if res["keeps_empty"][name] else "no (`{}`)")
                     + (" (%d errors)" % errors if errors else ""))
    tj = res["runs"][CASES[0][0]]
    if base and base[0] and tj:
        rps = median([r["rps"] for r in tj if r["rps"]])
        cpu = median([r["cpu_us"] for r in tj if r["cpu_us"]])
        lines.append("\ntendril.json against cjson alone: %.2fx the requests/s at %.2fx the CPU per request "
                     "(the marks: a walk of the decoded tables, and a look for `{}` in the encoded text)."
                     % (rps / base[0], cpu / base[1] if cpu and base[1] else float("nan")))
    return "\n".join(lines) + "\n"


def main():
    ap = workload_args(__doc__, 1, "benchmarks-extra.md")
    args = ap.parse_args()
    res = measure(args.tendril, args.duration, args.runs)
    text = section(res, args.duration, args.runs)
    print(text)
    splice(args.out, text, heading="JSON echo")


if __name__ == "__main__":
    main()
