#!/usr/bin/env python3
"""Memory under two loads, for scripts/bench; prints one JSON line.

usage: memory.py waiting PORT N PID [PID...]
         N connections each send GET /sleep (a one-second sleep) at once:
         the servers' peak resident memory above idle, and how many
         answers came back. All connections open first and the requests
         go out together, so the sleeps overlap.
       memory.py flood PORT SECONDS PID [PID...]
         One client pipelines GET / and never reads, for SECONDS: the
         servers' resident memory growth.
Bounded: the waiting run ends within 60 s whatever the server does (a
server that cannot take the connections reports fewer answers)."""
import asyncio
import json
import socket
import sys
import time


def rss_kb(pids):
    total = 0
    for p in pids:
        with open("/proc/%d/status" % p) as f:
            total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return total


async def waiting(port, n, pids):
    idle = rss_kb(pids)
    sem = asyncio.Semaphore(1000)

    async def open_one():
        async with sem:
            return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 20)

    opened = await asyncio.gather(*[open_one() for _ in range(n)], return_exceptions=True)
    conns = [c for c in opened if not isinstance(c, BaseException)]
    peak = rss_kb(pids)
    for _, w in conns:
        w.write(b"GET /sleep HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")

    async def answer(r):
        try:
            data = await asyncio.wait_for(r.read(), 30)
            return data.startswith(b"HTTP/1.1 200")
        except (OSError, asyncio.TimeoutError):
            return False

    answers = asyncio.gather(*[answer(r) for r, _ in conns])
    while not answers.done():
        peak = max(peak, rss_kb(pids))
        await asyncio.sleep(0.05)
    ok = sum(1 for a in answers.result() if a)
    for _, w in conns:
        w.close()
    return {"requests": n, "ok": ok, "idle_kb": idle, "peak_kb": peak, "peak_above_idle_mb": round((peak - idle) / 1024, 1)}


def flood(port, seconds, pids):
    before = rss_kb(pids)
    s = socket.create_connection(("127.0.0.1", port))
    s.setblocking(False)
    batch = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 256
    sent, peak = 0, before
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            sent += s.send(batch)
        except BlockingIOError:
            time.sleep(0.01)
        peak = max(peak, rss_kb(pids))
    s.close()
    return {"seconds": seconds, "sent_mb": round(sent / 1e6, 1), "before_kb": before, "peak_kb": peak,
            "growth_mb": round((peak - before) / 1024, 1)}


def main():
    mode, port, arg = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    pids = [int(p) for p in sys.argv[4:]]
    if mode == "waiting":
        try:
            result = asyncio.run(asyncio.wait_for(waiting(port, int(arg), pids), 60))
        except asyncio.TimeoutError:
            result = {"requests": int(arg), "ok": None, "note": "did not finish within 60 s"}
    else:
        result = flood(port, float(arg), pids)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
