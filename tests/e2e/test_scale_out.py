"""examples/scale-out: two tendril instances (each --workers 2) behind
HAProxy, state in Redis, the bus bridged through it. A chat message said
on one instance reaches a WebSocket on the other; an instance killed under
load costs failures only while the health checks notice."""
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from harness import BIN, SLOW, Server, TestCase, deadline, get, main, poll
from wsproto import WsClient

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
EXAMPLE = os.path.join(ROOT, "examples", "scale-out")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_tree(pid):
    """SIGKILL to a supervisor and its workers: the instance is gone."""
    kids = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    for p in [pid] + [int(k) for k in kids]:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


class ScaleOutTest(TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="tendril-scale-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        rport = free_port()
        subprocess.run(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--daemonize", "yes",
                        "--pidfile", self.dir + "/redis.pid", "--dir", self.dir, "--logfile",
                        self.dir + "/redis.log", "--save", "", "--appendonly", "no"], check=True, timeout=30)
        self.addCleanup(subprocess.run, ["redis-cli", "-p", str(rport), "shutdown", "nosave"],
                        capture_output=True, timeout=30)
        self.assertTrue(poll(lambda: subprocess.run(["redis-cli", "-p", str(rport), "ping"], capture_output=True,
                                                    text=True).stdout.strip() == "PONG", 10))
        self.redis_url = "redis://127.0.0.1:%d" % rport
        self.instances = {}
        for name in ("a", "b"):
            # (Stopped with SIGTERM at the end: the bridge's tasks end with
            # the shutdown, and nothing may be left waiting.)
            srv = Server(app_path=os.path.join(EXAMPLE, "app.lua"), args=["--workers", "2"],
                         env={"REDIS_URL": self.redis_url, "INSTANCE": name}).start()
            self.addCleanup(self.stop, srv)
            self.instances[name] = srv
        self.port = free_port()
        with open(os.path.join(EXAMPLE, "haproxy.cfg")) as f:
            cfg = (f.read().replace("127.0.0.1:8080", "127.0.0.1:%d" % self.port)
                   .replace("127.0.0.1:8081", "127.0.0.1:%d" % self.instances["a"].port)
                   .replace("127.0.0.1:8082", "127.0.0.1:%d" % self.instances["b"].port))
        path = os.path.join(self.dir, "haproxy.cfg")
        with open(path, "w") as f:
            f.write(cfg)
        self.haproxy = subprocess.Popen(["haproxy", "-db", "-f", path], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        self.addCleanup(self.haproxy.kill)
        self.assertTrue(poll(lambda: self.ok(self.port, "/health"), 10))

    def stop(self, srv):
        if srv.proc.poll() is None:
            srv.stop()

    @staticmethod
    def ok(port, path):
        try:
            return get(port, path, timeout=2).status == 200
        except OSError:
            return False

    def test_state_in_redis_and_the_chat_across_instances(self):
        # Round robin: both instances answer, and the counter is one.
        seen, counts = set(), []
        for _ in range(6):
            text = get(self.port, "/count").body.decode()
            counts.append(int(text.split()[1]))
            seen.add(text.split()[-1].rstrip(")"))
        self.assertEqual(counts, list(range(1, 7)))
        self.assertEqual(seen, {"a", "b"})
        # A message said through A reaches a visitor connected through B.
        listener = WsClient.open(self.instances["b"].port, "/ws")
        speaker = WsClient.open(self.instances["a"].port, "/ws")

        def heard():
            speaker.send_msg(0x1, b"hello from a")
            try:
                op, payload = listener.read_message(timeout=0.5)
            except socket.timeout:
                return False
            return payload == b"hello from a"
        # The bridges subscribe as the instances start: try until one lands.
        self.assertTrue(poll(heard, 10 * SLOW, interval=0.1))
        listener.close()
        speaker.close()
        # The room's history is Redis's: either instance tells it.
        for name in ("a", "b"):
            self.assertIn("hello from a", get(self.instances[name].port, "/history").body.decode())
        # The chat's page, through the balancer.
        page = get(self.port, "/")
        self.assertEqual(page.status, 200)
        self.assertIn(b"new WebSocket", page.body)

    def test_a_session_in_redis_across_instances(self):
        first = get(self.port, "/session")
        cookie = first.header("set-cookie").split(";")[0]
        self.assertRegex(cookie, r"^sid=[0-9a-f]{32}$")
        seen, visits = set(), [int(first.body.split()[2])]
        for _ in range(5):
            r = get(self.port, "/session", headers={"Cookie": cookie})
            visits.append(int(r.body.split()[2]))
            seen.add(r.body.decode().split()[-1].rstrip(")"))
        # One session, whichever instance answered.
        self.assertEqual(visits, [1, 2, 3, 4, 5, 6])
        self.assertEqual(seen, {"a", "b"})
        # Another visitor starts at one.
        self.assertEqual(get(self.port, "/session").body.split()[2], b"1")

    def test_an_instance_killed_under_load(self):
        failures, after = [], []
        killed_at = None
        t0 = time.monotonic()
        # Requests one after another through HAProxy (bounded): a second
        # before the kill, the window after it, and a while more.
        window = deadline(2.0)
        for _ in range(20000):
            now = time.monotonic()
            if now - t0 > 1 + window + 1.5:
                break
            if killed_at is None and now - t0 > 1:
                kill_tree(self.instances["a"].proc.pid)
                killed_at = now
            try:
                r = get(self.port, "/count", timeout=2)
                ok = r.status == 200
                who = r.body.decode().split()[-1].rstrip(")") if ok else None
            except OSError:
                ok, who = False, None
            if not ok:
                failures.append(time.monotonic())
            elif killed_at is not None:
                after.append((time.monotonic() - killed_at, who))
        self.assertIsNotNone(killed_at)
        # Failures only within the health checks' window (2 x 500 ms, plus
        # slack), and after it only B answers.
        for t in failures:
            self.assertLess(t - killed_at, window, "a failure %.2f s after the kill" % (t - killed_at))
        late = [who for dt, who in after if dt > window]
        self.assertTrue(late, "no requests answered after the window")
        self.assertEqual(set(late), {"b"})

    def test_an_instance_drained_under_load(self):
        """SIGTERM (a deploy): the instance finishes what it has, HAProxy
        sends the rest to B, and no request fails."""
        failures, answered = [], []
        stopped_at = None
        t0 = time.monotonic()
        for _ in range(20000):
            now = time.monotonic()
            if now - t0 > 4:
                break
            if stopped_at is None and now - t0 > 1:
                self.instances["a"].proc.send_signal(signal.SIGTERM)
                stopped_at = now
            try:
                r = get(self.port, "/count", timeout=5)
                ok = r.status == 200
            except OSError as e:
                ok = False
                failures.append(repr(e))
            else:
                if not ok:
                    failures.append(r.status)
                elif stopped_at is not None:
                    answered.append(r.body.decode().split()[-1].rstrip(")"))
        self.assertEqual(failures, [])
        self.assertEqual(self.instances["a"].proc.wait(timeout=deadline(15)), 0)
        self.instances["a"].assert_nothing_left_at_exit()
        self.assertIn("b", answered)

    def test_a_script_that_bridges_ends(self):
        """tendril run: the bridge's tasks do not keep a finished script
        alive, and end without leaving a wait behind."""
        script = ('local bus = require "tendril.bus"\n'
                  'local b = assert(bus.bridge(os.getenv("REDIS_URL")))\n'
                  'bus.publish("news", "from a script")\n'
                  'print("bridged", b.id ~= nil)\n')
        t0 = time.monotonic()
        r = subprocess.run([BIN, "run", "-e", script], env=dict(os.environ, REDIS_URL=self.redis_url),
                           capture_output=True, text=True, timeout=deadline(30))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout, "bridged\ttrue\n")
        self.assertNotIn("still pending", r.stderr)
        self.assertLess(time.monotonic() - t0, deadline(5))

    def test_a_bridge_to_a_stopped_redis_does_not_hold_the_end(self):
        """A publish on its way to a Redis that stopped answering: a
        script still ends when its work is done, and a server's SIGTERM
        leaves nothing waiting."""
        pid = int(open(self.dir + "/redis.pid").read())
        script = ('local tendril = require "tendril"\n'
                  'local bus = require "tendril.bus"\n'
                  'assert(bus.bridge(os.getenv("REDIS_URL")))\n'
                  'print("bridged") io.stdout:flush()\n'
                  'tendril.sleep(0.5)\n'
                  'bus.publish("news", "into the void")\n'
                  'return 3\n')
        proc = subprocess.Popen([BIN, "run", "-e", script], env=dict(os.environ, REDIS_URL=self.redis_url),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # Redis stops once the bridge is up, before the publish.
        self.assertEqual(proc.stdout.readline(), "bridged\n")
        t0 = time.monotonic()
        os.kill(pid, signal.SIGSTOP)
        try:
            out, err = proc.communicate(timeout=deadline(30))
            took = time.monotonic() - t0
        finally:
            os.kill(pid, signal.SIGCONT)
        self.assertEqual(proc.returncode, 3, err)
        self.assertLess(took, deadline(4))
        srv = Server(app='local bus = require "tendril.bus"\n'
                         'assert(bus.bridge(os.getenv("REDIS_URL")))\n'
                         'return function() bus.publish("news", "x") return "ok\\n" end\n',
                     env={"REDIS_URL": self.redis_url}).start()
        os.kill(pid, signal.SIGSTOP)
        try:
            self.assertEqual(get(srv.port, "/").body, b"ok\n")
            t0 = time.monotonic()
            self.assertEqual(srv.stop(), 0)  # and nothing left waiting at exit
            self.assertLess(time.monotonic() - t0, deadline(5))
        finally:
            os.kill(pid, signal.SIGCONT)


if __name__ == "__main__":
    main()
