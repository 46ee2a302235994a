"""Thousands of requests, errors and client aborts: afterwards nothing is
left behind, and the sanitizer build (ASan, UBSan, LeakSanitizer, and a count
of Lua's own memory) reports nothing when the server stops."""
import random
import socket
import threading
import time

from harness import STATS_FILES, Server, TestCase, assert_nothing_left, connect, get, main

APP = r'''
local tendril, stats_line = require "tendril", require "stats_line"
return function(req, res)
    local p = req.path
    if p == "/error" then
        error("planned failure")
    elseif p == "/late-error" then
        tendril.sleep(0.001)
        error({ not_a_string = true })
    elseif p == "/body" then
        local body = req:body()
        return body and #body .. "" or "none"
    elseif p == "/stream" then
        for i = 1, 20 do
            if not res:write(string.rep("s", 1000)) then return end
            if i % 5 == 0 then tendril.sleep(0.001) end
        end
        return
    elseif p == "/sleep" then
        tendril.sleep(0.01)
        return "slept"
    elseif p == "/stats" then
        return stats_line()
    end
    return "ok"
end
'''

REQUESTS = [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /error HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /late-error HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /body HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /sleep HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /bad header HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20000 + b"\r\n\r\n",
]


def client(port, n, seed, errors):
    rnd = random.Random(seed)
    for _ in range(n):
        try:
            s = connect(port)
            req = rnd.choice(REQUESTS)
            mode = rnd.random()
            if mode < 0.2:
                # Abort: half a request, or a whole one, then gone.
                s.sendall(req[: rnd.randint(1, len(req))])
                s.close()
                continue
            s.sendall(req * rnd.randint(1, 3))
            if mode < 0.3:
                time.sleep(0.002)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                s.close()  # reset mid-response
                continue
            s.settimeout(10)
            while s.recv(65536):
                s.shutdown(socket.SHUT_WR) if rnd.random() < 0.5 else None
        except OSError:
            pass
        except Exception as e:  # noqa: BLE001 - a client bug must fail the test
            errors.append(e)
        finally:
            s.close()


class LeakTest(TestCase):
    def test_mixed_traffic_leaves_nothing(self):
        srv = Server(APP, files=STATS_FILES, args=["--max-header-bytes", "4096", "--keepalive-timeout", "0.2"]).start()
        errors = []
        threads = [threading.Thread(target=client, args=(srv.port, 150, i, errors)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(errors, [])

        assert_nothing_left(self, srv.port)
        self.assertEqual(get(srv.port, "/").body, b"ok")
        self.assertEqual(srv.stop(), 0, srv.stderr()[-3000:])
        self.assertIn("planned failure", srv.stderr())


if __name__ == "__main__":
    main()
