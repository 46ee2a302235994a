"""tendril test: busted specs inside the runtime (Debian's lua-busted):
specs that wait (sleep, a server and a client, threads), busted's report
and exit status for a failing spec, a spec that leaves a thread running,
the default directories, busted's options, and the project's own specs."""
import os
import re
import subprocess
import tempfile
import textwrap

from harness import BIN, Server, TestCase, deadline, get, main

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")

WAITING_SPEC = r'''
local tendril = require "tendril"
local tcp = require "tendril.tcp"
local http = require "tendril.http"

describe("a spec inside tendril", function()
    it("sleeps", function()
        assert.is_true(tendril.sleep(0.02))
    end)
    it("serves and fetches", function()
        local port = tcp.listen("127.0.0.1", 0, function(sock)
            sock:receive("*l")
            sock:send("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        end)
        local res = assert(http.get("http://127.0.0.1:" .. port .. "/"))
        assert.are.equal("ok", res.body)
    end)
    it("joins its threads", function()
        local a = tendril.spawn(function() tendril.sleep(0.02) return 1 end)
        local b = tendril.spawn(function() return 2 end)
        assert.are.same({ true, 1 }, { a:join() })
        assert.are.same({ true, 2 }, { b:join() })
    end)
end)
'''

FAILING_SPEC = r'''
describe("arithmetic", function()
    it("is wrong here", function()
        assert.are.equal(3, 1 + 1)
    end)
end)
'''

APP = r'''
local router = require("tendril.router").new()
local greet = require "greet"
router:get("/hello/:name", function(req) return greet.hello(req.params.name) end)
router:post("/echo", function(req, res) return res:json(req:json()) end)
return router
'''

GREET = r'''
local _M = {}
function _M.hello(name) return "hello " .. name .. "\n" end
return _M
'''

APP_SPEC = r'''
local testing = require "tendril.testing"

describe("the app", function()
    local app
    setup(function() app = testing.app("app.lua") end)
    teardown(function() app:close() end)

    it("greets through its module", function()
        local res = assert(app:get("/hello/ann"))
        assert.are.equal(200, res.status)
        assert.are.equal("hello ann\n", res.body)
        assert.are.equal("text/plain", res.headers["content-type"])
    end)
    it("echoes JSON", function()
        local res = assert(app:post("/echo", '{"a":[1,2]}', { headers = { ["Content-Type"] = "application/json" } }))
        assert.are.same({ 200, '{"a":[1,2]}' }, { res.status, res.body })
    end)
    it("answers 404 and 405", function()
        assert.are.equal(404, app:get("/nope").status)
        local res = app:request({ method = "DELETE", path = "/echo" })
        assert.are.same({ 405, "POST" }, { res.status, res.headers.allow })
    end)
    it("serves a handler function too", function()
        local f = testing.app(function(req) return "fn " .. req.path end)
        assert.are.equal("fn /x", f:get("/x").body)
        f:close()
    end)
end)
'''

LEAKING_SPEC = r'''
local tendril = require "tendril"
describe("a leak", function()
    it("leaves a thread sleeping", function()
        tendril.spawn(function() tendril.sleep(5) end)
    end)
    it("runs after it", function() end)
end)
'''

SOCKET_SPEC = r'''
local tcp = require "tendril.tcp"
local port = assert(tcp.listen("127.0.0.1", 0, function(s) s:receive("*a") end))
describe("a socket", function()
    it("left open", function()
        local s = assert(tcp.connect("127.0.0.1", port))
        assert(s:send("x"))
    end)
    it("closed, the server's session still reading", function()
        local s = assert(tcp.connect("127.0.0.1", port))
        assert(s:send("x"))
        s:close()
    end)
end)
'''


def tendril_test(cwd, *args, timeout=120):
    return subprocess.run([BIN, "test"] + list(args), cwd=cwd, capture_output=True, text=True,
                          timeout=deadline(timeout))


class TendrilTestTest(TestCase):
    def project(self, files):
        d = tempfile.mkdtemp(prefix="tendril-test-")
        for name, text in files.items():
            path = os.path.join(d, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(textwrap.dedent(text))
        self.addCleanup(subprocess.run, ["rm", "-rf", d])
        return d

    def test_specs_wait_inside_the_runtime(self):
        d = self.project({"spec/wait_spec.lua": WAITING_SPEC})
        r = tendril_test(d)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("3 successes / 0 failures / 0 errors / 0 pending", r.stdout)

    def test_a_failing_spec_exits_non_zero_with_the_report(self):
        d = self.project({"spec/fail_spec.lua": FAILING_SPEC})
        r = tendril_test(d)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("0 successes / 1 failure / 0 errors", r.stdout)
        self.assertIn("Failure -> spec/fail_spec.lua @ 3", r.stdout)
        self.assertIn("spec/fail_spec.lua:4: Expected objects to be equal.", r.stdout)

    def test_a_spec_that_leaves_a_thread_fails(self):
        d = self.project({"spec/leak_spec.lua": LEAKING_SPEC})
        r = tendril_test(d)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("a leak leaves a thread sleeping", r.stdout)
        # What is left gets a few loop turns to end by itself (this one
        # sleeps on): past that it is the test's error.
        self.assertIn("spec/leak_spec.lua:4: the test left 1 thread(s) running (1 waiting): join the threads "
                      "a test spawns and close the sockets it opens", r.stdout)
        # The test is an error, once, and the next test is not blamed.
        self.assertIn("1 success / 0 failures / 1 error", r.stdout)
        # Every output handler says so: TAP too.
        r = tendril_test(d, "-o", "TAP")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("not ok 1 - a leak leaves a thread sleeping", r.stdout)
        self.assertIn("ok 2 - a leak runs after it", r.stdout)

    def test_a_spec_that_leaves_a_socket_open_fails(self):
        d = self.project({"spec/sock_spec.lua": SOCKET_SPEC})
        r = tendril_test(d)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("spec/sock_spec.lua:5: the test left 1 socket(s) open", r.stdout)
        # A server's sessions are not the test's (tcp.listen's, here).
        self.assertIn("1 success / 0 failures / 1 error", r.stdout)

    def test_default_directories_and_busted_options(self):
        d = self.project({"tests/spec/wait_spec.lua": WAITING_SPEC})
        r = tendril_test(d, "-o", "TAP")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual(re.findall(r"^ok \d+ - (.*)$", r.stdout, re.M),
                         ["a spec inside tendril sleeps", "a spec inside tendril serves and fetches",
                          "a spec inside tendril joins its threads"])
        # spec/ wins when both exist; a path given wins over both.
        d = self.project({"spec/fail_spec.lua": FAILING_SPEC, "tests/spec/wait_spec.lua": WAITING_SPEC})
        self.assertNotEqual(tendril_test(d).returncode, 0)
        self.assertEqual(tendril_test(d, "tests/spec").returncode, 0)

    def test_testing_app_serves_inside_the_test(self):
        d = self.project({"app.lua": APP, "greet.lua": GREET, "spec/app_spec.lua": APP_SPEC})
        r = tendril_test(d)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("4 successes / 0 failures / 0 errors / 0 pending", r.stdout)

    def test_testing_app_finds_its_modules_in_its_directory(self):
        d = self.project({"sub/app.lua": APP, "sub/greet.lua": GREET, "spec/sub_spec.lua":
                          'it("greets", function()\n'
                          '  local app = require("tendril.testing").app("sub/app.lua")\n'
                          '  assert.are.equal("hello bo\\n", app:get("/hello/bo").body)\n'
                          '  app:close()\n'
                          'end)\n'})
        r = tendril_test(d)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("1 success / 0 failures / 0 errors", r.stdout)

    def test_testing_app_that_does_not_load(self):
        d = self.project({"app.lua": "return 42\n", "spec/app_spec.lua":
                          'it("loads", function() require("tendril.testing").app("app.lua") end)\n'})
        r = tendril_test(d)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("testing.app: ", r.stdout)
        self.assertIn("did not return a handler function (it returned number)", r.stdout)

    def test_the_readme_testing_block(self):
        with open(os.path.join(ROOT, "README.md")) as f:
            text = f.read()
        section = text[text.index("`tendril.testing` serves an app"):]
        block = re.search(r"```lua\n(.*?)```", section, re.S).group(1)
        d = self.project({"app.lua": APP, "greet.lua": GREET, "spec/readme_spec.lua": block})
        r = tendril_test(d)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("2 successes / 0 failures / 0 errors / 0 pending", r.stdout)

    def test_tendril_new_makes_a_project_that_passes_its_tests(self):
        base = self.project({})
        d = os.path.join(base, "work", "demo")
        r = subprocess.run([BIN, "new", d], capture_output=True, text=True, timeout=deadline(30))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(sorted(os.listdir(d)), [".luacheckrc", "README.md", "app.lua", "greet.lua", "spec"])
        r = tendril_test(d)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("3 successes / 0 failures / 0 errors / 0 pending", r.stdout)
        lint = subprocess.run(["luacheck", "--no-color", "."], cwd=d, capture_output=True, text=True,
                              timeout=deadline(30))
        self.assertEqual(lint.returncode, 0, lint.stdout)
        with Server(app_path=os.path.join(d, "app.lua")) as srv:
            self.assertEqual(get(srv.port, "/").body, b"hello from tendril\n")
            self.assertEqual(get(srv.port, "/hello/bo").body, b'{"greeting":"hello, bo"}')
        with open(os.path.join(d, "README.md")) as f:
            self.assertIn("tendril serve app.lua", f.read())
        # Never over an existing project.
        r = subprocess.run([BIN, "new", d], capture_output=True, text=True, timeout=deadline(30))
        self.assertEqual(r.returncode, 1)
        self.assertIn("app.lua exists already: nothing was written", r.stderr)
        r = subprocess.run([BIN, "new"], capture_output=True, text=True, timeout=deadline(30))
        self.assertEqual((r.returncode, r.stderr), (1, "tendril new: usage: tendril new DIR\n"))

    def test_the_projects_own_specs(self):
        r = tendril_test(ROOT, "tests/spec")
        self.assertEqual(r.returncode, 0, r.stdout[-3000:] + r.stderr[-3000:])
        self.assertRegex(r.stdout, r"\d+ successes / 0 failures / 0 errors / 0 pending")


if __name__ == "__main__":
    main()
