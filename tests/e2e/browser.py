"""Opens a page in headless Chromium and prints the text of one element
once the page has put some there: usage

    /usr/bin/python3 browser.py URL ELEMENT_ID SECONDS

Chromium is driven over its DevTools protocol (a WebSocket, with Debian's
python3-websockets, hence /usr/bin/python3), polling in real time. The
simpler `chromium --dump-dom --virtual-time-budget=MS` hangs for good when
the page keeps a connection open (virtual time stops while a fetch is
pending), which it does whenever the page's own test goes wrong. Exit
status 0 with the text; 1 (and what the page showed) when the time ran
out; 2 when Chromium did not start."""
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

import websockets

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def start_chromium(profile):
    p = subprocess.Popen(["chromium"] + FLAGS + ["--user-data-dir=" + profile, "--remote-debugging-port=0",
                                                 "about:blank"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    end = time.monotonic() + 60
    while time.monotonic() < end:
        line = p.stderr.readline()
        if not line:
            break
        m = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line)
        if m:
            return p, int(m.group(1))
    p.kill()
    p.wait()
    return None, None


async def read_element(port, url, element, seconds):
    with urllib.request.urlopen("http://127.0.0.1:%d/json/list" % port, timeout=10) as r:
        pages = [t for t in json.load(r) if t.get("type") == "page"]
    async with websockets.connect(pages[0]["webSocketDebuggerUrl"], max_size=None) as cdp:
        ids = iter(range(1, 1 << 30))

        async def call(method, **params):
            n = next(ids)
            await cdp.send(json.dumps({"id": n, "method": method, "params": params}))
            while True:
                msg = json.loads(await cdp.recv())
                if msg.get("id") == n:
                    return msg.get("result", {})

        await call("Page.navigate", url=url)
        expr = "(function(){var e=document.getElementById(%s);return e?e.textContent:''})()" % json.dumps(element)
        end = time.monotonic() + seconds
        text = ""
        while time.monotonic() < end:
            res = await call("Runtime.evaluate", expression=expr, returnByValue=True)
            text = res.get("result", {}).get("value") or ""
            if text:
                return True, text
            await asyncio.sleep(0.1)
        res = await call("Runtime.evaluate", expression="document.body ? document.body.innerText : ''",
                         returnByValue=True)
        return False, res.get("result", {}).get("value") or ""


def main():
    url, element, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    profile = tempfile.mkdtemp(prefix="tendril-chromium-")
    p, port = start_chromium(profile)
    if not p:
        print("chromium did not start", file=sys.stderr)
        return 2
    try:
        ok, text = asyncio.run(read_element(port, url, element, seconds))
    finally:
        p.kill()
        p.wait()
        shutil.rmtree(profile, ignore_errors=True)
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
