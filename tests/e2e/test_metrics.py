"""tendril.metrics(): Prometheus' text format, the requests counted by
status class, the duration histogram, the gauges, and the README's route."""
import os
import re
import time

from harness import SLOW, Server, ServerTestCase, TestCase, connect, get, main, poll

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")

APP = r'''
local tendril = require "tendril"
return function(req, res)
    if req.path == "/metrics" then
        res:header("Content-Type", "text/plain; version=0.0.4")
        return tendril.metrics()
    elseif req.path == "/slow" then
        tendril.sleep(0.3)
        return "slow"
    elseif req.path == "/missing" then
        return 404, nil, "no"
    elseif req.path == "/boom" then
        error("boom")
    end
    return "ok"
end
'''

SAMPLE = re.compile(r'^(tendril_[a-z_]+)\{([^}]*)\} (\S+)$')


def parse(text):
    """{(name, labels): value}, checking the format on the way."""
    samples, helped, typed = {}, set(), set()
    for line in text.splitlines():
        if line.startswith("# HELP "):
            helped.add(line.split()[2])
        elif line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            assert kind in ("counter", "gauge", "histogram"), line
            typed.add(name)
        else:
            m = SAMPLE.match(line)
            assert m, "not a sample line: %r" % line
            name, labels, value = m.groups()
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            assert base in typed and base in helped, "%s has no HELP or TYPE" % name
            samples[(name, labels)] = float(value)
    return samples


class MetricsTest(ServerTestCase):
    APP = APP

    def test_counts_histogram_and_gauges(self):
        for _ in range(3):
            self.assertEqual(get(self.port, "/").status, 200)
        self.assertEqual(get(self.port, "/missing").status, 404)
        self.assertEqual(get(self.port, "/boom").status, 500)
        self.assertEqual(get(self.port, "/slow").status, 200)
        r = get(self.port, "/metrics")
        self.assertEqual(r.header("content-type"), "text/plain; version=0.0.4")
        m = parse(r.body.decode())
        w = 'worker="1"'
        self.assertEqual(m[("tendril_requests_total", w + ',class="2xx"')], 4)
        self.assertEqual(m[("tendril_requests_total", w + ',class="4xx"')], 1)
        self.assertEqual(m[("tendril_requests_total", w + ',class="5xx"')], 1)
        self.assertEqual(m[("tendril_requests_total", w + ',class="3xx"')], 0)
        self.assertEqual(m[("tendril_request_duration_seconds_count", w)], 6)
        self.assertEqual(m[("tendril_request_duration_seconds_bucket", w + ',le="+Inf"')], 6)
        # Five quick ones, then the 0.3 s one in the 0.5 s bucket.
        self.assertEqual(m[("tendril_request_duration_seconds_bucket", w + ',le="0.25"')], 5)
        self.assertEqual(m[("tendril_request_duration_seconds_bucket", w + ',le="0.5"')], 6)
        self.assertGreaterEqual(m[("tendril_request_duration_seconds_sum", w)], 0.29)
        buckets = [v for (n, l), v in m.items() if n == "tendril_request_duration_seconds_bucket"]
        self.assertEqual(buckets, sorted(buckets), "buckets are cumulative")
        self.assertEqual(m[("tendril_requests_in_flight", w)], 1)  # the scrape
        self.assertGreaterEqual(m[("tendril_connections", w)], 1)
        self.assertGreaterEqual(m[("tendril_tasks", w)], 1)
        self.assertEqual(m[("tendril_reloads_total", w)], 0)
        self.assertEqual(m[("tendril_stalls_total", w)], 0)
        self.assertGreater(m[("tendril_lua_memory_bytes", w)], 100000)
        self.assertEqual(m[("tendril_websockets", w)], 0)
        # The scrape itself is counted once it has ended.
        m2 = parse(get(self.port, "/metrics").body.decode())
        self.assertEqual(m2[("tendril_requests_total", w + ',class="2xx"')], 5)


class CutOffTest(TestCase):
    def test_cut_off_requests_count_and_quick_ones_add_up(self):
        with Server(APP) as srv:
            # A client that leaves before its answer: counted, as 499.
            s = connect(srv.port)
            s.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(0.1)
            s.close()
            self.assertTrue(poll(lambda: parse(get(srv.port, "/metrics").body.decode()).get(
                ("tendril_requests_total", 'worker="1",class="4xx"')) == 1, 10))
            # Sub-millisecond requests still add to the sum (nanoseconds, not
            # whole milliseconds).
            for _ in range(20):
                get(srv.port, "/")
            m = parse(get(srv.port, "/metrics").body.decode())
            total = m[("tendril_request_duration_seconds_sum", 'worker="1"')]
            self.assertGreater(total, 0.05)  # the cut-off one waited about 0.1 s
            self.assertLess(total, 0.1 + 5 * SLOW)


class MetricsWorkersTest(TestCase):
    def test_each_worker_labels_its_own(self):
        with Server(APP, args=["--workers", "2"]) as srv:
            seen = set()
            for _ in range(40):
                m = parse(get(srv.port, "/metrics").body.decode())
                seen |= {l.split(",")[0] for (n, l) in m if n == "tendril_requests_total"}
                if len(seen) == 2:
                    break
            self.assertEqual(seen, {'worker="1"', 'worker="2"'})


class ReadmeMetricsTest(TestCase):
    def test_the_readme_metrics_route(self):
        with open(os.path.join(ROOT, "README.md")) as f:
            text = f.read()
        section = text[text.index("### Metrics"):]
        block = re.search(r"```lua\n(.*?)```", section, re.S).group(1)
        app = 'local router = require("tendril.router").new()\n' + block + "return router\n"
        with Server(app) as srv:
            get(srv.port, "/")
            r = get(srv.port, "/metrics")
            self.assertEqual(r.status, 200)
            self.assertIn('tendril_requests_total{worker="1",class="4xx"} 1', r.body.decode())


if __name__ == "__main__":
    main()
