"""Memory bounds: what one connection can hold whatever its client does,
what a waiting request weighs, what an idle connection costs, and that a
burst's peak goes back.

Assertions on resident memory run against the Release build only:
AddressSanitizer's quarantine keeps freed memory resident. The sanitizer
build runs the same traffic and checks that the server answers everyone
else meanwhile and leaves nothing behind."""
import asyncio
import resource
import socket
import time

from harness import (SANITIZED, STATS_FILES, Reader, ServerTestCase, assert_nothing_left, connect, deadline, get,
                     main, poll)

APP = r'''
local tendril = require "tendril"
local stats_line = require "stats_line"

local KIB64 = string.rep("k", 65536)
local P15K = string.rep("s", 15000)
local MIB = string.rep("m", 1048576)
local waiting, most = 0, 0

return function(req, res)
    local p = req.path
    if p == "/big" then
        return KIB64
    elseif p == "/many" then
        -- 270 KB in pieces small enough to be copied: over the mark
        for _ = 1, 18 do
            if not res:write(P15K) then return end
        end
        return
    elseif p == "/pieces" then
        for _ = 1, 16 do
            if not res:write(MIB) then return end
        end
        return
    elseif p == "/sleep" then
        waiting = waiting + 1
        if waiting > most then most = waiting end
        tendril.sleep(tonumber(req.query.s) or 1)
        waiting = waiting - 1
        return "slept"
    elseif p == "/most" then
        local m = most
        most = 0
        return tostring(m)
    elseif p == "/gc" then
        collectgarbage("collect")
        return "collected"
    elseif p == "/stats" then
        return stats_line()
    end
    return "ok"
end
'''

MIB = 1024 * 1024


def raise_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class MemoryTest(ServerTestCase):
    APP = APP
    FILES = STATS_FILES

    def rss(self):
        return self.server.rss_kib() * 1024

    def assertRssBelow(self, limit, message):
        if not SANITIZED:
            self.assertLess(self.rss(), limit, message)

    def test_pipelining_client_that_never_reads(self):
        # Finding 5: answers were queued without bound, and input kept being
        # read because answers kept being produced (950 MB in 17 s).
        self.flood(b"/big")  # 64 KiB answers, written by reference

    def test_pipelining_client_of_small_answers_that_never_reads(self):
        # Small answers to a client that never reads: one queued write per
        # answer held a whole 16 KiB output block each (30 MB in 3 s).
        self.flood(b"/")

    def flood(self, target):
        before = self.rss()
        s = connect(self.port)
        s.setblocking(False)
        request = (b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n") * 64
        sent = 0
        start = time.monotonic()
        stuck_since = None
        while time.monotonic() - start < deadline(3):
            try:
                sent += s.send(request)
                stuck_since = None
            except BlockingIOError:
                stuck_since = stuck_since or time.monotonic()
                if time.monotonic() - stuck_since > 1.0:
                    break  # the server stopped reading: that is the point
                time.sleep(0.01)
        # Others are served meanwhile.
        self.assertEqual(get(self.port, "/").body, b"ok")
        self.assertGreater(sent, 100 * 1024)
        # Its input buffer plus the output mark, and a little slack.
        self.assertRssBelow(before + 10 * MIB, "one client that never reads took %d MiB"
                            % ((self.rss() - before) // MIB))
        s.close()
        assert_nothing_left(self, self.port)

    def test_pipelined_after_an_answer_over_the_mark(self):
        # The second request waits while the first answer is over the mark;
        # when that output left at once (no write callback), nothing said
        # it drained and the connection hung.
        s = connect(self.port)
        s.sendall(b"GET /many HTTP/1.1\r\nHost: x\r\n\r\nGET /many HTTP/1.1\r\nHost: x\r\n\r\n")
        rd = Reader(s, timeout=10)
        self.assertEqual(len(rd.response().body), 18 * 15000)
        self.assertEqual(len(rd.response().body), 18 * 15000)
        s.close()
        assert_nothing_left(self, self.port)

    def test_slow_readers_of_large_pieces(self):
        # Finding 6: res:write copied the whole piece before it looked at
        # the mark: 1000 slow readers of 1 MiB pieces held 1.05 GB, never
        # returned afterwards.
        get(self.port, "/gc")
        before = self.rss()
        clients = []
        for _ in range(200):
            s = connect(self.port)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(b"GET /pieces HTTP/1.1\r\nHost: x\r\n\r\n")
            clients.append(s)
        self.assertTrue(poll(lambda: "requests=201" in get(self.port, "/stats").body.decode(), 10))
        time.sleep(0.5)
        self.assertRssBelow(before + 40 * MIB, "200 slow readers took %d MiB" % ((self.rss() - before) // MIB))
        for s in clients:
            s.close()
        assert_nothing_left(self, self.port)
        if not SANITIZED:
            self.assertTrue(poll(lambda: self.rss() < before + 10 * MIB, 10),
                            "%d MiB kept after the readers left" % ((self.rss() - before) // MIB))

    def test_waiting_requests_weigh_little_and_a_burst_goes_back(self):
        # 10,000 requests each suspended in a sleep: at most 4 KiB
        # each, all told (40 MB); afterwards resident memory returns to
        # within 10 MB of its level before the burst.
        n = 2000 if SANITIZED else 10000
        raise_fd_limit()
        get(self.port, "/gc")
        get(self.port, "/most")
        idle = self.rss()
        peak = [idle]

        async def burst():
            # Every connection opens first and the requests go out
            # together, so that the sleeps overlap even on a busy machine.
            sem = asyncio.Semaphore(1000)

            async def open_one():
                async with sem:
                    return await asyncio.open_connection("127.0.0.1", self.port)

            conns = await asyncio.gather(*[open_one() for _ in range(n)])
            for _, w in conns:
                w.write(b"GET /sleep?s=3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")

            async def answer(r, w):
                body = await asyncio.wait_for(r.read(), deadline(30))
                w.close()
                return body.endswith(b"slept")

            answers = asyncio.gather(*[answer(r, w) for r, w in conns])
            while not answers.done():
                peak[0] = max(peak[0], self.rss())
                await asyncio.sleep(0.05)
            return answers.result()

        done = asyncio.run(burst())
        self.assertEqual(done.count(True), n)
        most = int(get(self.port, "/most").body)
        self.assertGreater(most, n * 0.95, "the sleeps hardly overlapped")
        if not SANITIZED:
            self.assertLess(peak[0] - idle, 40 * 1000 * 1000,
                            "%d waiting requests took %.1f MB" % (most, (peak[0] - idle) / 1e6))
            self.assertTrue(poll(lambda: self.rss() < idle + 10 * 1000 * 1000, 10),
                            "%.1f MB kept after the burst" % ((self.rss() - idle) / 1e6))
        assert_nothing_left(self, self.port)



class IdleConnectionTest(ServerTestCase):
    """Its own server with the smallest app: the other tests' large strings
    move memory between malloc's arenas and would blur the measure. The
    collector runs without pause here, so that the requests' garbage (up
    to the live heap again, with the default pause) is not counted as the
    connections' cost."""
    APP = r'''
collectgarbage("setpause", 100)
return function(req)
    if req.path == "/gc" then
        collectgarbage("collect")
        return "collected"
    end
    return "ok"
end
'''
    FILES = STATS_FILES

    def rss(self):
        return self.server.rss_kib() * 1024

    def test_idle_keepalive_connection_cost(self):
        # At most nginx's 525 bytes: no parser, buffer or coroutine while idle.
        n = 2000
        raise_fd_limit()
        get(self.port, "/gc")
        before = self.rss()
        clients = []
        for _ in range(n):
            s = connect(self.port)
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            clients.append(s)
        for s in clients:
            s.settimeout(deadline(10))
            data = b""
            while not data.endswith(b"ok"):
                data += s.recv(4096)
        get(self.port, "/gc")  # the requests' garbage is not the connections'
        cost = (self.rss() - before) / n
        for s in clients:
            s.close()
        if not SANITIZED:
            self.assertLessEqual(cost, 525, "an idle keep-alive connection costs %d bytes" % cost)


if __name__ == "__main__":
    main()
