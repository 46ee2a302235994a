"""--workers N: a supervisor and N worker processes on one port. Every
worker answers; a worker that dies or sticks is replaced while the others
serve; signals reach every worker; the shared dictionaries are one store
for all of them, and a watch hears a change made in another worker."""
import os
import re
import signal
import socket
import subprocess
import textwrap
import threading
import time

from harness import (BIN, SANITIZED, Server, TestCase, deadline, get, main, poll, request)

APP = r'''
local tendril = require "tendril"
local shared = require "tendril.shared"
local counters = shared.dict("counters")

return function(req, res)
    res:header("X-Worker", tostring(tendril.worker_id()))
    local p = req.path
    if p == "/" then
        return "worker " .. tendril.worker_id() .. " of " .. tendril.worker_count() .. "\n"
    elseif p == "/bump" then
        -- 1,000 increments, yielding between batches so that both workers
        -- run at once
        for i = 1, 10 do
            for _ = 1, 100 do
                counters:incr("hits", 1, 0)
            end
            tendril.sleep(0)
        end
        return "ok"
    elseif p == "/hits" then
        return tostring(counters:get("hits"))
    elseif p == "/spin" then
        while true do end
    elseif p == "/slow" then
        tendril.sleep(0.3)
        return "slow done"
    elseif p == "/set" then
        counters:set("seen:" .. tendril.worker_id(), tendril.now())
        return "set"
    elseif p == "/watch" then
        -- waits for a change made by another worker; answers the delay
        local sub = counters:watch("seen:")
        local me = "seen:" .. tendril.worker_id()
        while true do
            local key, err = sub:recv(10)
            if not key then
                return "watch: " .. err
            end
            if key ~= me then
                local at = counters:get(key)
                return string.format("%s %.1f", key, (tendril.now() - at) * 1000)
            end
        end
    elseif p == "/fill" then
        for i = 1, 100 do
            counters:set("keep:" .. i, "v" .. i)
        end
        return "filled"
    elseif p == "/kept" then
        local n = 0
        for i = 1, 100 do
            if counters:get("keep:" .. i) == "v" .. i then
                n = n + 1
            end
        end
        return tostring(n)
    elseif p == "/hold" then
        counters:_hold(30)
        return "held"
    elseif p == "/pid" then
        local f = io.open("/proc/self/stat")
        local pid = f:read("*n")
        f:close()
        return tostring(pid)
    elseif p == "/stats" then
        local s = counters:stats()
        return string.format("repairs=%d count=%d", s.repairs, s.count)
    end
    res.status = 404
    return "no"
end
'''


def worker_pids(server):
    """The supervisor's children (the workers), by reading /proc."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == server.proc.pid:
            pids.append(int(entry))
    return sorted(pids)


def who(port, target="/"):
    r = get(port, target)
    return int(r.header("x-worker")), r


def ab(port, target, seconds, c):
    """ab -r (goes on past socket errors) for a number of seconds;
    (complete, lost, non-2xx, its output)."""
    out = subprocess.run(["ab", "-r", "-q", "-s", "20", "-t", str(seconds), "-n", "1000000", "-c", str(c),
                          "http://127.0.0.1:%d%s" % (port, target)],
                         capture_output=True, text=True, timeout=deadline(120))
    text = out.stdout + out.stderr

    def field(name):
        m = re.search(r"^%s:\s+(\d+)" % name, text, re.M)
        return int(m.group(1)) if m else 0
    if not re.search(r"^Complete requests:", text, re.M):
        raise AssertionError("ab did not finish: " + text[-2000:])
    # ab counts one request cut off mid-answer under several heads at once
    # (a receive error, an exception, a length that differs: seen as 44, 44
    # and 44 for 44 requests, or 0, 31 and 31): the requests lost are the
    # connect failures and the largest of the others.
    m = re.search(r"\(Connect: (\d+), Receive: (\d+), Length: (\d+), Exceptions: (\d+)\)", text)
    lost = int(m.group(1)) + max(int(m.group(2)), int(m.group(3)), int(m.group(4))) if m \
        else field("Failed requests")
    return field("Complete requests"), lost, field("Non-2xx responses"), text


class WorkersTest(TestCase):
    ARGS = ["--workers", "2", "--shared", "counters=1m", "--stall-kill", "2"]

    def serve(self, args=(), env=None, leftovers_ok=False):
        srv = Server(APP, args=self.ARGS + list(args), env=env, leftovers_ok=leftovers_ok)
        srv.start()
        self.addCleanup(lambda: srv.proc.poll() is None and srv.proc.kill())
        return srv

    def test_both_workers_answer_on_one_port(self):
        srv = self.serve()
        seen = {}
        for _ in range(1000):
            w, r = who(srv.port)
            self.assertEqual(r.status, 200)
            self.assertEqual(r.body, b"worker %d of 2\n" % w)
            seen[w] = seen.get(w, 0) + 1
        self.assertEqual(sorted(seen), [1, 2], seen)
        self.assertEqual(len(worker_pids(srv)), 2)
        self.assertEqual(srv.stop(), 0)
        err = srv.stderr()
        self.assertIn("supervisor: worker 1", err)
        self.assertIn("worker 2: SIGTERM: shutting down", err)
        self.assertEqual(srv.stdout().count("listening on"), 1)

    def test_a_killed_worker_is_back_within_a_second(self):
        srv = self.serve()
        before = worker_pids(srv)
        result = {}

        def load():
            result["ab"] = ab(srv.port, "/", 3, 50)
        t = threading.Thread(target=load)
        t.start()
        time.sleep(1)
        self.assertTrue(t.is_alive(), "ab ended before the kill")
        victim = before[0]
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        back = poll(lambda: len(worker_pids(srv)) == 2 and victim not in worker_pids(srv) and
                    "serves" in srv.stderr(), 5, interval=0.01)
        took = time.monotonic() - killed_at
        t.join()
        self.assertTrue(back, srv.stderr())
        self.assertLess(took, deadline(1.0))
        complete, failed, non2xx, text = result["ab"]
        # At most what the dead worker had in flight: ab keeps 50.
        self.assertLessEqual(failed + non2xx, 50, text)
        self.assertGreater(complete, 0)
        self.assertRegex(srv.stderr(), r"supervisor: worker \d \(pid %d\) was killed by signal 9 \(Killed\); "
                                       r"restarting it" % victim)
        # Both serve again, the replacement under the dead worker's id.
        ids = {who(srv.port)[0] for _ in range(200)}
        self.assertEqual(ids, {1, 2})
        self.assertEqual(srv.stop(), 0)

    def test_sigterm_under_load_drains_every_worker(self):
        srv = self.serve()
        results = []

        def slow():
            try:
                results.append(get(srv.port, "/slow").body)
            except Exception as e:  # noqa: BLE001
                results.append(repr(e).encode())
        threads = [threading.Thread(target=slow) for _ in range(20)]
        for t in threads:
            t.start()
        time.sleep(deadline(0.1))
        srv.signal(signal.SIGTERM)
        for t in threads:
            t.join()
        self.assertEqual(srv.wait(), 0)
        self.assertEqual(results, [b"slow done"] * 20)
        err = srv.stderr()
        self.assertIn("worker 1: SIGTERM: shutting down", err)
        self.assertIn("worker 2: SIGTERM: shutting down", err)
        self.assertIn("supervisor: every worker ended; exiting 0", err)

    def test_a_stuck_worker_is_replaced(self):
        srv = self.serve()
        s = socket.create_connection(("127.0.0.1", srv.port))
        s.sendall(b"GET /spin HTTP/1.1\r\nHost: x\r\n\r\n")
        started = time.monotonic()
        # Once it is stuck (a client that connected before could have been
        # accepted by it, and is lost with it), the other worker serves
        # throughout.
        self.assertTrue(poll(lambda: "stall: GET /spin" in srv.stderr(), 5), srv.stderr())
        served = 0
        while time.monotonic() - started < deadline(1.5):
            self.assertEqual(get(srv.port).status, 200)
            served += 1
        self.assertGreater(served, 0)
        line = poll(lambda: re.search(r"\[crit\] supervisor: worker (\d) \(pid \d+\): its event loop has not "
                                      r"turned for [\d.]+ s \(GET /spin\): killing it", srv.stderr()), 10)
        self.assertTrue(line, srv.stderr())
        replaced = poll(lambda: re.search(r"worker %s \(pid \d+\) serves" % line.group(1), srv.stderr()), 10)
        self.assertTrue(replaced, srv.stderr())
        # --stall-kill 2 plus a second (the sanitizer build's is longer).
        self.assertLess(time.monotonic() - started, deadline(2.0) + 1.0)
        # The client of the stuck request lost its connection.
        s.settimeout(5)
        try:
            self.assertEqual(s.recv(100), b"")
        except ConnectionResetError:
            pass
        s.close()
        self.assertEqual({who(srv.port)[0] for _ in range(100)}, {1, 2})
        self.assertEqual(srv.stderr().count("killing it"), 1)
        self.assertEqual(srv.stop(), 0)

    def test_an_idle_worker_is_not_stuck(self):
        # The shortest --stall-kill: the heartbeat turns an idle loop in time.
        srv = Server(APP, args=["--workers", "2", "--shared", "counters=64k", "--stall-kill", "1"]).start()
        self.addCleanup(lambda: srv.proc.poll() is None and srv.proc.kill())
        pids = worker_pids(srv)
        time.sleep(deadline(3))
        self.assertEqual(worker_pids(srv), pids)
        self.assertNotIn("killing it", srv.stderr())
        self.assertEqual(srv.stop(), 0)

    def test_a_top_level_stuck_at_start_stops_the_server(self):
        srv = Server("while true do end\n")  # not started: its directory and file
        proc = subprocess.run([BIN, "serve", srv.app_path, "--port", "0", "--workers", "2", "--stall-kill", "1"],
                              capture_output=True, text=True, timeout=deadline(30))
        self.assertEqual(proc.returncode, 1)
        self.assertIn("its event loop has not turned for", proc.stderr)
        self.assertIn("before it served; stopping", proc.stderr)

    def test_a_shared_counter_is_exact_across_workers(self):
        srv = self.serve()
        seen = set()
        lock = threading.Lock()

        def bump(n):
            for _ in range(n):
                w, r = who(srv.port, "/bump")
                assert r.body == b"ok", r.body
                with lock:
                    seen.add(w)
        threads = [threading.Thread(target=bump, args=(10,)) for _ in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(seen, {1, 2})
        self.assertEqual(get(srv.port, "/hits").body, b"100000")
        self.assertEqual(srv.stop(), 0)

    def test_a_worker_killed_holding_the_lock_does_not_wedge_the_others(self):
        # --stall-kill 0: the test kills the holder itself.
        srv = Server(APP, args=["--workers", "2", "--shared", "counters=1m", "--stall-kill", "0"],
                     env={"TENDRIL_TEST_HOOKS": "1"}).start()
        self.addCleanup(lambda: srv.proc.poll() is None and srv.proc.kill())
        self.assertEqual(get(srv.port, "/fill").body, b"filled")
        # /hold blocks its worker inside the lock; the other worker's calls
        # wait for the lock meanwhile.
        s = socket.create_connection(("127.0.0.1", srv.port))
        s.sendall(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
        holder = poll(lambda: re.search(r"worker (\d): stall: GET /hold", srv.stderr()), 5)
        self.assertTrue(holder, srv.stderr())
        # The other worker answers (without the dictionary); the holder's
        # pid is the one it is not.
        other = poll(lambda: int(get(srv.port, "/pid").body), 5)
        victim = [p for p in worker_pids(srv) if p != other]
        self.assertEqual(len(victim), 1)
        victim = victim[0]
        os.kill(victim, signal.SIGKILL)
        s.close()
        self.assertEqual(get(srv.port, "/kept").body, b"100")
        self.assertTrue(poll(lambda: len(worker_pids(srv)) == 2, 5))
        for _ in range(20):
            self.assertEqual(get(srv.port, "/kept").body, b"100")
        body = get(srv.port, "/stats").body.decode()
        self.assertIn("repairs=1", body)
        self.assertTrue(poll(lambda: "was killed by signal 9" in srv.stderr(), 5), srv.stderr())
        self.assertEqual(srv.stop(), 0)

    def test_a_watch_hears_a_change_in_the_other_worker(self):
        srv = self.serve()
        delays = []
        for _ in range(3):
            out = {}

            def watch():
                out["r"] = get(srv.port, "/watch", timeout=30)
            t = threading.Thread(target=watch)
            t.start()
            time.sleep(deadline(0.2))  # parked in recv
            # Sets in both workers until the other one made one.
            end = time.monotonic() + deadline(10)
            while t.is_alive() and time.monotonic() < end:
                get(srv.port, "/set")
                t.join(0.05)
            t.join()
            body = out["r"].body.decode()
            key, ms = body.split()
            self.assertNotEqual(key, "seen:%s" % out["r"].header("x-worker"))
            delays.append(float(ms))
        # A few milliseconds: the eventfd wakes the other worker at once
        # (the clocks are each loop's, read at the start of its turn).
        self.assertLess(max(delays), deadline(20), delays)
        self.assertEqual(srv.stop(), 0)

    def test_tcp_listen_is_shared_too(self):
        app = r'''
            local tendril = require "tendril"
            local tcp = require "tendril.tcp"
            local function service(name)
                return function(sock) sock:send(name .. " from worker " .. tendril.worker_id() .. "\n") end
            end
            local a = tcp.listen("127.0.0.1", 0, service("a"))
            local b = tcp.listen("127.0.0.1", 0, service("b"))
            return function() return a .. " " .. b end
        '''
        srv = Server(app, args=["--workers", "2", "--no-watch"]).start()
        self.addCleanup(lambda: srv.proc.poll() is None and srv.proc.kill())

        def check():
            ports = {get(srv.port).body for _ in range(50)}
            self.assertEqual(len(ports), 1, "each port 0 was resolved once for every worker: %s" % ports)
            pa, pb = (int(x) for x in ports.pop().split())
            self.assertNotEqual(pa, pb)
            for port, name in ((pa, b"a"), (pb, b"b")):
                # Which worker accepts is the kernel's choice: ask until
                # both have answered (100 in a row went to one once, under
                # ASan on a loaded machine), 1,000 times at most.
                seen = set()
                for _ in range(1000):
                    with socket.create_connection(("127.0.0.1", port)) as c:
                        c.settimeout(5)
                        seen.add(c.recv(100))
                    if len(seen) == 2:
                        break
                self.assertEqual(seen, {name + b" from worker 1\n", name + b" from worker 2\n"})
            return pa, pb
        first = check()
        # A reload keeps them: the k-th port-0 listener is the same socket.
        srv.signal(signal.SIGHUP)
        self.assertTrue(poll(lambda: srv.stderr().count("reload: generation 2") == 2, 10), srv.stderr())
        self.assertEqual(check(), first)
        self.assertEqual(srv.stop(), 0)

    def test_reload_reaches_every_worker_and_a_syntax_error_none(self):
        app = 'local g = require("tendril").generation()\nreturn function() return "gen " .. g end\n'
        srv = Server(app, args=["--workers", "2", "--no-watch"]).start()
        self.addCleanup(lambda: srv.proc.poll() is None and srv.proc.kill())
        first = get(srv.port).body
        self.assertEqual({get(srv.port).body for _ in range(50)}, {first})
        with open(srv.app_path, "w") as f:
            f.write("return function( oops\n")
        srv.signal(signal.SIGHUP)
        self.assertTrue(poll(lambda: sorted(re.findall(r"worker (\d): reload failed, the previous generation "
                                                       r"keeps serving: .*app.lua:2: .*expected", srv.stderr()))
                             == ["1", "2"], 10), srv.stderr())
        self.assertEqual({get(srv.port).body for _ in range(100)}, {first})
        with open(srv.app_path, "w") as f:
            f.write(app)
        srv.signal(signal.SIGHUP)
        bodies = poll(lambda: (lambda b: b if len(b) == 1 and first not in b else None)(
            {get(srv.port).body for _ in range(50)}), 10)
        self.assertTrue(bodies, srv.stderr())
        self.assertEqual(srv.stop(), 0)

    def test_a_failed_reload_leaves_port_0_services_to_the_old_code(self):
        app = r'''
            local tcp = require "tendril.tcp"
            local port = tcp.listen("127.0.0.1", 0, function(sock) sock:send("VERSION\n") end)
            FAIL
            return function() return tostring(port) end
        '''
        srv = Server(app.replace("VERSION", "v1").replace("FAIL", ""), args=["--workers", "2", "--no-watch"])
        srv.start()
        self.addCleanup(lambda: srv.proc.poll() is None and srv.proc.kill())
        port = int(get(srv.port).body)

        def answers():
            seen = set()
            for _ in range(60):
                with socket.create_connection(("127.0.0.1", port)) as c:
                    c.settimeout(5)
                    seen.add(c.recv(100))
            return seen
        self.assertEqual(answers(), {b"v1\n"})
        with open(srv.app_path, "w") as f:
            f.write(textwrap.dedent(app.replace("VERSION", "v2").replace(
                "FAIL", 'require("tendril").sleep(1.5) error("not today")')))
        srv.signal(signal.SIGHUP)
        # While the new top level runs, and after it failed: the old code.
        time.sleep(0.3)
        self.assertEqual(answers(), {b"v1\n"})
        self.assertTrue(poll(lambda: srv.stderr().count("not today") == 2, 10), srv.stderr())
        self.assertEqual(answers(), {b"v1\n"})
        with open(srv.app_path, "w") as f:
            f.write(textwrap.dedent(app.replace("VERSION", "v3").replace("FAIL", "")))
        srv.signal(signal.SIGHUP)
        self.assertTrue(poll(lambda: answers() == {b"v3\n"}, 10))
        self.assertEqual(int(get(srv.port).body), port)
        self.assertEqual(srv.stop(), 0)

    def test_ctrl_c_drains_every_worker(self):
        # A terminal's Ctrl-C reaches the whole process group.
        srv = Server(APP, args=self.ARGS, prefix=["setsid"])
        srv.start()
        self.addCleanup(lambda: srv.proc.poll() is None and srv.proc.kill())
        results = []

        def slow():
            results.append(get(srv.port, "/slow").body)
        threads = [threading.Thread(target=slow) for _ in range(10)]
        for t in threads:
            t.start()
        time.sleep(deadline(0.1))
        os.killpg(srv.proc.pid, signal.SIGINT)
        for t in threads:
            t.join()
        self.assertEqual(srv.wait(), 0, srv.stderr())
        self.assertEqual(results, [b"slow done"] * 10)
        self.assertIn("supervisor: SIGINT: shutting down 2 worker(s)", srv.stderr())

    def test_sigusr1_reopens_every_workers_log(self):
        srv = Server(APP, args=self.ARGS)
        log = os.path.join(srv.dir, "access.log")
        srv.args += ["--access-log", log]
        srv.start()
        self.addCleanup(lambda: srv.proc.poll() is None and srv.proc.kill())
        for _ in range(50):
            get(srv.port)
        os.rename(log, log + ".1")
        srv.signal(signal.SIGUSR1)
        self.assertTrue(poll(lambda: srv.stderr().count("SIGUSR1: log files reopened") == 3, 5), srv.stderr())
        # Both workers still answer (which one accepts is the kernel's
        # choice: under a sanitizer one may take a long run of them).
        ids, sent, end = set(), 0, time.monotonic() + deadline(10)
        while sent < 100 or (ids != {1, 2} and sent < 2000 and time.monotonic() < end):
            ids.add(who(srv.port)[0])
            sent += 1
        self.assertEqual(ids, {1, 2})
        self.assertEqual(srv.stop(), 0)
        with open(log) as f:
            lines = f.read().splitlines()
        self.assertEqual(len(lines), sent)
        self.assertEqual({line.rsplit("=", 1)[1] for line in lines}, {"1", "2"})
        with open(log + ".1") as f:
            self.assertEqual(len(f.read().splitlines()), 50)

    def test_a_worker_that_keeps_dying_is_restarted_with_back_off(self):
        # The shell's parent is the worker.
        app = 'return function(req) if req.path == "/die" then os.execute("kill -KILL $PPID") end return "ok" end\n'
        srv = Server(app, args=["--workers", "2"]).start()
        self.addCleanup(lambda: srv.proc.poll() is None and srv.proc.kill())
        for n in range(1, 5):
            r = None
            try:
                get(srv.port, "/die", timeout=2)
            except (OSError, EOFError) as e:
                r = e
            self.assertIsNotNone(r)
            self.assertTrue(poll(lambda: srv.stderr().count("was killed by signal 9") == n, 5), srv.stderr())
            self.assertTrue(poll(lambda: len(worker_pids(srv)) == 2, 5))
            # Only ever one of them dies here: the one that served /die.
        delays = re.findall(r"was killed by signal 9 \(Killed\); restarting it(?: in ([\d.]+) s)?", srv.stderr())
        # The first death of a worker restarts it at once; quick deaths
        # of the same worker wait 0.1 s, then 0.2 s...
        self.assertEqual(len(delays), 4)
        self.assertIn("", delays)
        self.assertTrue(set(delays) <= {"", "0.1", "0.2", "0.4"}, delays)
        self.assertEqual(get(srv.port).body, b"ok")
        self.assertEqual(srv.stop(), 0)

    def test_tls_sessions_resume_on_any_worker(self):
        from tlsfixture import Pki, openssl
        pki = Pki()
        self.addCleanup(pki.close)
        app = 'local t = require "tendril"\nreturn function() return "worker " .. t.worker_id() end\n'
        srv = Server(app, args=["--workers", "2", "--tls-cert", pki.localhost.cert, "--tls-key",
                                pki.localhost.key]).start()
        self.addCleanup(lambda: srv.proc.poll() is None and srv.proc.kill())
        sess = os.path.join(pki.dir, "session")
        req = "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        common = ["-connect", "127.0.0.1:%d" % srv.tls_port, "-servername", "localhost", "-CAfile", pki.ca,
                  "-ign_eof"]
        r = openssl("s_client", *common, "-sess_out", sess, input=req)
        self.assertIn("TLS session ticket:", r.stdout)
        workers = set()
        for _ in range(20):
            r = openssl("s_client", *common, "-sess_in", sess, input=req)
            out = r.stdout + r.stderr
            self.assertRegex(out, r"\nReused, TLSv1\.[23]")
            workers.add(re.search(r"worker (\d)", out).group(1))
        self.assertEqual(workers, {"1", "2"})
        self.assertEqual(srv.stop(), 0)

    def test_a_reload_asked_while_workers_start_reaches_them(self):
        app = 'require("tendril").sleep(0.5)\nreturn function() return "ok" end\n'
        srv = Server(app, args=["--workers", "2", "--no-watch"])
        t = threading.Thread(target=srv.start)
        t.start()
        self.addCleanup(lambda: srv.proc and srv.proc.poll() is None and srv.proc.kill())
        self.assertTrue(poll(lambda: srv.proc is not None and len(worker_pids(srv)) == 2, 5))
        srv.signal(signal.SIGHUP)  # while their top levels sleep
        t.join()
        self.assertTrue(poll(lambda: sorted(re.findall(r"worker (\d): reload: generation 2", srv.stderr()))
                             == ["1", "2"], 10), srv.stderr())
        self.assertEqual(srv.stop(), 0)

    def test_logs_name_the_worker(self):
        app = r'''
            return function(req)
                if req.path == "/boom" then error("boom") end
                return "ok"
            end
        '''
        srv = Server(app, args=["--workers", "2", "--access-log", "-"]).start()
        self.addCleanup(lambda: srv.proc.poll() is None and srv.proc.kill())
        for _ in range(20):
            get(srv.port)
        self.assertEqual(get(srv.port, "/boom").status, 500)
        self.assertEqual(srv.stop(), 0)
        lines = [line for line in srv.stdout().splitlines() if '"GET / HTTP/1.1" 200' in line]
        self.assertEqual(len(lines), 20)
        for line in lines:
            self.assertRegex(line, r" worker=[12]$")
        self.assertRegex(srv.stderr(), r"\[error\] worker [12]: GET /boom: .*app.lua:3: boom")

    def test_a_worker_that_cannot_start_stops_the_server(self):
        proc = subprocess.run([BIN, "serve", "/nonexistent/app.lua", "--port", "0", "--workers", "2"],
                              capture_output=True, text=True, timeout=deadline(20))
        self.assertEqual(proc.returncode, 1)
        self.assertNotIn("listening on", proc.stdout)
        self.assertIn("before it served; stopping", proc.stderr)

    def test_worker_id_alone(self):
        srv = Server('local t = require "tendril"\nreturn function() '
                     'return t.worker_id() .. "/" .. t.worker_count() end\n').start()
        self.addCleanup(lambda: srv.proc.poll() is None and srv.proc.kill())
        self.assertEqual(get(srv.port).body, b"1/1")
        self.assertEqual(srv.stop(), 0)
        self.assertNotIn("worker 1:", srv.stderr())


if __name__ == "__main__":
    main()
