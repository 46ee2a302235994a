"""Many clients at once: coroutines, not threads, and nothing fails."""
import resource
import re
import socket
import subprocess
import threading
import time

from harness import ServerTestCase, Reader, Server, TestCase, connect, deadline, get, main, poll

APP = r'''
local tendril = require "tendril"
local flood_progress = 0
return function(req, res)
    local p = req.path
    if p == "/sleep" then
        tendril.sleep(tonumber(req.query.s) or 1)
        return "slept"
    elseif p == "/big" then
        return string.rep("b", 8 * 1024 * 1024)
    elseif p == "/progress" then
        return tostring(flood_progress)
    elseif p == "/flood" then
        -- 32 MiB in 64 KiB writes: write must wait for a slow reader
        local chunk = string.rep("z", 65536)
        for i = 1, 512 do
            flood_progress = i
            local ok, err = res:write(chunk)
            if not ok then
                tendril.log("warn", "flood stopped at ", i, ": ", err)
                return
            end
        end
        return
    end
    return "hello"
end
'''


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def ab(*args):
    out = subprocess.run(["ab", "-q", "-r"] + list(args), capture_output=True, text=True,
                         timeout=deadline(120), preexec_fn=raise_nofile)
    text = out.stdout + out.stderr
    done = re.search(r"Complete requests:\s+(\d+)", text)
    failed = re.search(r"Failed requests:\s+(\d+)", text)
    non2xx = re.search(r"Non-2xx responses:\s+(\d+)", text)
    return (int(done.group(1)) if done else None, int(failed.group(1)) if failed else None,
            int(non2xx.group(1)) if non2xx else 0, text)


class ConcurrencyTest(ServerTestCase):
    APP = APP

    def test_500_one_second_sleeps_answered_together(self):
        n = 500
        socks = []
        start = time.monotonic()
        for _ in range(n):
            s = connect(self.port)
            s.sendall(b"GET /sleep?s=1 HTTP/1.1\r\nHost: x\r\n\r\n")
            socks.append(s)
        bodies = []
        for s in socks:
            bodies.append(Reader(s, timeout=30).response().body)
            s.close()
        elapsed = time.monotonic() - start
        self.assertEqual(bodies, [b"slept"] * n)
        # One second each, served together: far below 500 s, and the bound
        # is generous for a loaded machine.
        self.assertLess(elapsed, deadline(6))

    def test_ab_without_keepalive_at_5_100_1000(self):
        for c in (5, 100, 1000):
            done, failed, non2xx, text = ab("-n", "10000", "-c", str(c), "http://127.0.0.1:%d/" % self.port)
            self.assertEqual((done, failed, non2xx), (10000, 0, 0), "c=%d\n%s" % (c, text[-2000:]))

    def test_ab_keepalive(self):
        done, failed, non2xx, text = ab("-k", "-n", "20000", "-c", "50", "http://127.0.0.1:%d/" % self.port)
        self.assertEqual((done, failed, non2xx), (20000, 0, 0), text[-2000:])
        self.assertIn("Keep-Alive requests:    20000", text)

    def test_slow_reader_does_not_make_the_server_buffer(self):
        s = connect(self.port)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        s.sendall(b"GET /flood HTTP/1.1\r\nHost: x\r\n\r\n")
        progress = lambda: int(get(self.port, "/progress").body)
        # The handler writes until the socket and the high-water mark are
        # full, then is parked in res:write (others are served meanwhile)
        # instead of queueing all 512 chunks in memory.
        time.sleep(0.5)
        first = progress()
        time.sleep(0.3)
        self.assertEqual(progress(), first, "the handler kept writing to a client that does not read")
        self.assertLess(first, 128, "%d chunks of 64 KiB were queued for a client that does not read" % first)
        r = Reader(s, timeout=60).response()
        self.assertEqual(len(r.body), 512 * 65536)
        s.close()

    def test_slow_reader_that_leaves(self):
        s = connect(self.port)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        s.sendall(b"GET /flood HTTP/1.1\r\nHost: x\r\n\r\n")
        s.recv(1000)
        time.sleep(0.2)
        s.close()
        self.assertTrue(poll(lambda: re.search(r"flood stopped at \d+: closed", self.server.stderr()), 5))


class SlowClientTest(TestCase):
    """A client that reads slowly gets everything; one that stops reading is
    let go after --send-timeout, and its handler learns it."""

    def test_slow_but_steady_reader_gets_a_large_answer(self):
        with Server(APP, args=["--keepalive-timeout", "0.5", "--send-timeout", "1"]) as srv:
            s = connect(srv.port)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            s.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            got = 0
            start = time.monotonic()
            s.settimeout(10)
            # Longer than the keep-alive timeout, with progress all along.
            while got < 8 * 1024 * 1024:
                b = s.recv(65536)
                if not b:
                    break
                got += len(b)
                time.sleep(0.004)
            s.close()
            self.assertGreater(time.monotonic() - start, 0.5)
            self.assertGreaterEqual(got, 8 * 1024 * 1024)

    def test_reader_that_stops_is_disconnected(self):
        with Server(APP, args=["--send-timeout", "1"]) as srv:
            s = connect(srv.port)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
            s.sendall(b"GET /flood HTTP/1.1\r\nHost: x\r\n\r\n")
            start = time.monotonic()
            # The parked handler is woken: res:write returns nil, "closed".
            self.assertTrue(poll(lambda: re.search(r"flood stopped at \d+: closed", srv.stderr()), 10))
            self.assertLess(time.monotonic() - start, deadline(4))
            self.assertEqual(get(srv.port, "/").body, b"hello")
            s.close()


if __name__ == "__main__":
    main()
