"""The examples run as the README says."""
import json
import os
import re
import socket
import subprocess
import tempfile
import threading
import time

from harness import BIN, Server, TestCase, deadline, get, main, request
from tlsfixture import SYSTEM_PYTHON
from upstream import Upstream

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def example(name):
    return os.path.join(ROOT, "examples", name)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ExamplesTest(TestCase):
    def test_hello(self):
        with Server(app_path=example("hello.lua")) as srv:
            self.assertEqual(get(srv.port, "/").body, b"hello world\n")

    def test_fetch_and_wait_serves_many_at_once(self):
        up = Upstream()
        try:
            with Server(app_path=example("fetch-and-wait.lua"), env={"UPSTREAM": up.url + "/location"}) as srv:
                n = 20
                bodies = [None] * n

                def one(i):
                    bodies[i] = get(srv.port, "/").body

                start = time.monotonic()
                threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                elapsed = time.monotonic() - start
                self.assertEqual(bodies, [b"hello http://example.test/next\n"] * n)
                # Twenty two-second waits, together.
                self.assertGreaterEqual(elapsed, 2.0)
                self.assertLess(elapsed, deadline(6))
        finally:
            up.close()

    def test_echo_server(self):
        port = free_port()
        with Server(app_path=example("echo-server.lua"), env={"ECHO_PORT": str(port)}) as srv:
            self.assertEqual(get(srv.port, "/?say=hi").body, b"echo: hi\n")
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(b"direct\n")
                self.assertEqual(s.recv(100), b"direct\n")


    def test_clock_sse_ticks_and_resumes_from_last_event_id(self):
        with Server(app_path=example("clock-sse.lua")) as srv:
            r = subprocess.run(["curl", "-sN", "-i", "--max-time", str(deadline(2.5)), "-H", "Last-Event-ID: 41",
                                "http://127.0.0.1:%d/" % srv.port], capture_output=True, timeout=deadline(30))
            out = r.stdout.decode().replace("\r\n", "\n")
            self.assertIn("content-type: text/event-stream", out.lower())
            self.assertIn("cache-control: no-cache", out.lower())
            self.assertIn("\n\nretry: 2000\n\n", out)
            ticks = re.findall(r"event: tick\nid: (\d+)\ndata: \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\n\n", out)
            self.assertGreaterEqual(len(ticks), 2, out)
            self.assertEqual(ticks, [str(42 + i) for i in range(len(ticks))])

    def test_chat_in_a_real_browser(self):
        """Headless Chromium loads the chat page, which sends three messages
        over its WebSocket, sees them come back, and gets them again through
        an EventSource (tests/e2e/browser.py reads the page's result)."""
        with Server(app_path=example("chat/app.lua")) as srv:
            r = subprocess.run([SYSTEM_PYTHON, os.path.join(os.path.dirname(os.path.abspath(__file__)), "browser.py"),
                                "http://127.0.0.1:%d/?selftest=browser" % srv.port, "result", str(deadline(30))],
                               capture_output=True, text=True, timeout=deadline(120))
            self.assertEqual((r.returncode, r.stdout.strip()),
                             (0, "ws: browser 1, browser 2, browser 3 | sse: browser 1, browser 2, browser 3"),
                             r.stderr[-2000:] + srv.stderr()[-2000:])
            # A reader who came later gets the conversation so far.
            r = subprocess.run(["curl", "-sN", "--max-time", str(deadline(1.5)), "http://127.0.0.1:%d/events" % srv.port],
                               capture_output=True, timeout=deadline(30))
            self.assertEqual(re.findall(r"data: (.*)\n", r.stdout.decode()),
                             ["browser 1", "browser 2", "browser 3"])


class TodoExampleTest(TestCase):
    """examples/todo: the JSON API with a session cookie per visitor, CORS
    for a development front end, the page and its files."""

    def call(self, port, method, path, body=None, cookie=None, headers=None):
        hdrs = dict(headers or {})
        if cookie:
            hdrs["Cookie"] = "todo_session=" + cookie
        if body is not None:
            hdrs["Content-Type"] = "application/json"
        r, rd = request(port, method, path, headers=hdrs, body=body)
        rd.sock.close()
        return r

    def test_api(self):
        with Server(app_path=example("todo/app.lua")) as srv:
            p = srv.port
            r = self.call(p, "GET", "/api/todos")
            self.assertEqual((r.status, r.body), (200, b"[]"))
            m = re.match(r"todo_session=([0-9a-f]{32}); Path=/; Max-Age=2592000; HttpOnly; SameSite=Lax$",
                         r.header("set-cookie"))
            self.assertTrue(m, r.header("set-cookie"))
            me = m.group(1)
            r = self.call(p, "POST", "/api/todos", b'{"title": "buy milk"}', me)
            self.assertEqual((r.status, r.header("location"), r.header("set-cookie")), (201, "/api/todos/1", None))
            self.assertEqual(json.loads(r.body), {"id": 1, "title": "buy milk", "done": False})
            self.call(p, "POST", "/api/todos", b'{"title": "write docs"}', me)
            r = self.call(p, "PATCH", "/api/todos/1", b'{"done": true}', me)
            self.assertEqual(json.loads(r.body), {"id": 1, "title": "buy milk", "done": True})
            r = self.call(p, "GET", "/api/todos/2", cookie=me)
            self.assertEqual(json.loads(r.body), {"id": 2, "title": "write docs", "done": False})
            # Another visitor has a list of their own.
            r = self.call(p, "GET", "/api/todos")
            self.assertEqual(r.body, b"[]")
            self.assertNotIn(me, r.header("set-cookie"))
            # Bad input gets the right status and a JSON error.
            for method, path, body, status, error in (
                    ("POST", "/api/todos", b"{nope", 400, "invalid JSON"),
                    ("POST", "/api/todos", b'{"title": "  "}', 422, "title: expected a non-empty string"),
                    ("POST", "/api/todos", b'{"title": "%s"}' % (b"x" * 201), 422, "title: at most 200 bytes"),
                    ("PATCH", "/api/todos/1", b'{"done": "yes"}', 422, "done: expected true or false"),
                    ("GET", "/api/todos/9", None, 404, "no item 9"),
                    ("DELETE", "/api/todos/x", None, 404, "no item x")):
                r = self.call(p, method, path, body, me)
                self.assertEqual(r.status, status, (method, path, r.body))
                self.assertIn(error, json.loads(r.body)["error"])
            r = self.call(p, "PUT", "/api/todos/1", b"{}", me)
            self.assertEqual((r.status, r.header("allow")), (405, "DELETE, GET, HEAD, PATCH"))
            r = self.call(p, "DELETE", "/api/todos/1", cookie=me)
            self.assertEqual((r.status, r.body), (204, b""))
            r = self.call(p, "GET", "/api/todos", cookie=me)
            self.assertEqual(json.loads(r.body), [{"id": 2, "title": "write docs", "done": False}])
            # A front end on the development port may call it with the cookie.
            r = self.call(p, "OPTIONS", "/api/todos", headers={
                "Origin": "http://localhost:5173", "Access-Control-Request-Method": "PATCH",
                "Access-Control-Request-Headers": "content-type"})
            self.assertEqual((r.status, r.header("access-control-allow-origin"),
                              r.header("access-control-allow-credentials")), (204, "http://localhost:5173", "true"))
            # The page and its files; nothing outside public/.
            r = get(p, "/")
            self.assertEqual((r.status, r.header("content-type")), (200, "text/html; charset=utf-8"))
            self.assertIn(b"<title>To do</title>", r.body)
            self.assertEqual(get(p, "/style.css").header("content-type"), "text/css; charset=utf-8")
            for path in ("/../app.lua", "/%2e%2e/app.lua", "/app.lua"):
                self.assertEqual(get(p, path).status, 404, path)

    def test_the_page_in_a_real_browser(self):
        """Headless Chromium adds two items through the page's form, ticks
        one, deletes the other, and reads back what the API holds."""
        with Server(app_path=example("todo/app.lua")) as srv:
            r = subprocess.run([SYSTEM_PYTHON, os.path.join(os.path.dirname(os.path.abspath(__file__)), "browser.py"),
                                "http://127.0.0.1:%d/?selftest&wait=%d" % (srv.port, deadline(10) * 1000), "result",
                                str(deadline(30))],
                               capture_output=True, text=True, timeout=deadline(120))
            self.assertEqual((r.returncode, r.stdout.strip()), (0, "first (done) | cookie http-only"),
                             r.stderr[-2000:] + srv.stderr()[-2000:])


class ReadmeTest(TestCase):
    """The README's handler runs as written."""

    def test_the_readme_handler(self):
        with open(os.path.join(ROOT, "README.md")) as f:
            text = f.read()
        blocks = re.findall(r"```lua\n(.*?)```", text, re.S)
        handler = next(b for b in blocks if "X-Powered-By" in b)
        with Server(handler) as srv:
            r = get(srv.port, "/?name=reader")
            self.assertEqual((r.status, r.body, r.header("x-powered-by")), (200, b"hello reader", "tendril"))
            self.assertEqual(get(srv.port, "/").body, b"hello world")
            self.assertEqual(get(srv.port, "/slow").body, b"done\n")
            r = request(srv.port, "POST", "/", body=b'{"a":1}')[0]
            self.assertEqual((r.status, r.header("content-type"), r.body), (201, "application/json", b'{"a":1}'))

    def test_the_readme_real_time_block(self):
        from wsproto import WsClient, frame
        with open(os.path.join(ROOT, "README.md")) as f:
            text = f.read()
        block = next(b for b in re.findall(r"```lua\n(.*?)```", text, re.S) if "websocket.upgrade" in b)
        with Server(block) as srv:
            c = WsClient.open(srv.port, "/echo")
            self.assertEqual(c.response.status, 101)
            c.send(frame(0x1, b"hello"))
            self.assertEqual(c.read_frame().fields(), (True, 0, 0x1, b"hello"))
            c.send(frame(0x8, b"\x03\xe8"))
            self.assertEqual(c.read_close(), 1000)
            c.close()
            curl = subprocess.Popen(["curl", "-sN", "--max-time", str(deadline(10)),
                                     "http://127.0.0.1:%d/news" % srv.port], stdout=subprocess.PIPE)
            reached = None
            end = time.monotonic() + deadline(10)
            while reached != b"reached 1\n" and time.monotonic() < end:
                reached = get(srv.port, "/publish?text=two%0Alines").body
                time.sleep(0.05)
            self.assertEqual(reached, b"reached 1\n")
            line = b""
            while not line.endswith(b"\n\n"):
                line += curl.stdout.read(1)
            curl.kill()
            curl.wait()
            self.assertEqual(line, b"event: news\ndata: two\ndata: lines\n\n")

    def test_the_readme_fetch_and_wait_is_the_example(self):
        with open(os.path.join(ROOT, "README.md")) as f:
            text = f.read()
        with open(example("fetch-and-wait.lua")) as f:
            code = f.read()
        block = next(b for b in re.findall(r"```lua\n(.*?)```", text, re.S) if "fetch" in b or "upstream" in b)
        self.assertIn(block.strip(), code, "README's fetch-and-wait differs from examples/fetch-and-wait.lua")


    def test_the_readme_shared_block_and_the_counter_example(self):
        with open(os.path.join(ROOT, "README.md")) as f:
            text = f.read()
        block = next(b for b in re.findall(r"```lua\n(.*?)```", text, re.S) if "shared.dict" in b)
        with Server(block, args=["--shared", "counters=1m"]) as srv:
            self.assertEqual([get(srv.port).body for _ in range(3)], [b"visit 1", b"visit 2", b"visit 3"])
        # As its comment says to run it.
        with Server(app_path=example("counter.lua"), args=["--workers", "2", "--shared", "counters=1m"]) as srv:
            bodies = [get(srv.port).body.decode() for _ in range(100)]
        for i, body in enumerate(bodies):
            self.assertRegex(body, r"^visit %d, served by worker [12] of 2\n$" % (i + 1))
        self.assertEqual({b.split()[-3] for b in bodies}, {"1", "2"})

    def test_the_readme_https_block(self):
        # Run as written, with the paths and ports moved out of the way.
        with open(os.path.join(ROOT, "README.md")) as f:
            text = f.read()
        block = next(b for b in re.findall(r"```sh\n(.*?)```", text, re.S) if "--tls-cert" in b)
        d = tempfile.mkdtemp(prefix="tendril-readme-https-")
        with socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", 0))
            b.bind(("127.0.0.1", 0))
            plain, tls = a.getsockname()[1], b.getsockname()[1]
        script = (block.replace("/tmp/tendril-", d + "/").replace("build/tendril", BIN)
                  .replace("examples/", os.path.join(ROOT, "examples") + "/")
                  .replace("8080", str(plain)).replace("8443", str(tls)))
        # The server runs in the background: curl gets a moment, then both go.
        script = script.replace("\ncurl ", "\nfor i in $(seq 1 50); do curl -s -o /dev/null -k https://localhost:%d/ && break; "
                                "sleep 0.1; done\ncurl " % tls) + "\nkill %1\nwait\n"
        r = subprocess.run(["bash", "-e", "-c", script], capture_output=True, text=True, timeout=deadline(60))
        self.assertEqual(r.returncode, 0, r.stderr)
        # The server's own lines, then curl's answer.
        self.assertIn("listening on https://127.0.0.1:%d\n" % tls, r.stdout)
        self.assertTrue(r.stdout.endswith("hello world\n"), r.stdout)


if __name__ == "__main__":
    main()
