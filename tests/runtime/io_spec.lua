-- The waiting API below HTTP: tcp sockets and servers, names, files and
-- processes, each as a spec calls it.
local tendril = require "tendril"
local tcp = require "tendril.tcp"
local fs = require "tendril.fs"

-- An echo server: a line back for each line, "bye" and the end at "quit".
local echo_port = assert(tcp.listen("127.0.0.1", 0, function(sock)
    while true do
        local line = sock:receive("*l")
        if not line then
            return
        end
        if line == "quit" then
            sock:send("bye\n")
            return
        end
        sock:send(line .. "\n")
    end
end))

describe("tcp", function()
    it("receives lines, counts of bytes and the end", function()
        local s = assert(tcp.connect("localhost", echo_port))
        assert(s:send("ping\n"))
        assert.are.equal("ping", s:receive("*l"))
        s:send("abc\n")
        assert.are.equal("ab", s:receive(2))
        assert.are.equal("c", s:receive("*l"))
        s:send("quit\n")
        assert.are.equal("bye", s:receive("*l"))
        assert.are.same({ nil, "closed", "" }, { s:receive("*l") })
        s:close()
    end)

    it("receives all until the peer closes", function()
        local s = assert(tcp.connect("127.0.0.1", echo_port))
        s:send("x\nquit\n")
        assert.are.equal("x\nbye\n", s:receive("*a"))
        s:close()
    end)

    it("times out a read", function()
        local s = assert(tcp.connect("127.0.0.1", echo_port, { read_timeout = 0.2 }))
        local t0 = tendril.now()
        assert.are.same({ nil, "timeout", "" }, { s:receive("*l") })
        local took = tendril.now() - t0
        assert.is_true(took >= 0.19 and took < 1, took)
        s:close()
    end)

    it("tries each address a name resolves to", function()
        local real = tendril.resolve
        tendril.resolve = function(name)
            if name == "dual.test" then
                return { "::1", "127.0.0.1" } -- nothing listens on the first
            end
            return real(name)
        end
        local s, err = tcp.connect("dual.test", echo_port, { timeout = 2 })
        tendril.resolve = real
        assert(s, err)
        s:send("dual\n")
        assert.are.equal("dual", s:receive("*l"))
        s:close()
    end)

    it("refuses a port the same process listens on already", function()
        assert.are.same({ nil, "address in use" }, { tcp.listen("127.0.0.1", echo_port, function() end) })
    end)
end)

describe("tendril.resolve", function()
    it("resolves localhost and says when a name is unknown", function()
        local addrs = assert(tendril.resolve("localhost"))
        local found = false
        for _, a in ipairs(addrs) do
            found = found or a == "127.0.0.1" or a == "::1"
        end
        assert.is_true(found, table.concat(addrs, ","))
        assert.are.same({ nil, "host not found" }, { tendril.resolve("no-such-host.invalid") })
    end)

    it("leaves nothing pending after a lookup that raised", function()
        -- It cannot yield in a sort comparator: the name must not stay
        -- pending, or the next lookup would wait for the timeout.
        local ok = pcall(table.sort, { 1, 2 }, function(a, b)
            tendril.resolve("127.9")
            return a < b
        end)
        assert.is_false(ok)
        local t0 = tendril.now()
        assert.are.same({ "127.0.0.9" }, tendril.resolve("127.9"))
        assert.is_true(tendril.now() - t0 < 0.5)
    end)

    it("keeps at most 1024 names", function()
        for i = 1, 2000 do
            assert(tendril.resolve(string.format("127.%d.%d", math.floor(i / 256), i % 256)))
        end
        assert.are.equal(1024, tendril.stats().dns_cached)
    end)
end)

describe("tendril.fs", function()
    it("writes, reads, stats, and says why it cannot", function()
        local dir = os.tmpname()
        os.remove(dir)
        assert(fs.mkdir(dir))
        local path = dir .. "/f.txt"
        assert.is_true(fs.write(path, "contents\n"))
        assert.is_true(fs.append(path, "more\n"))
        assert.are.equal("contents\nmore\n", fs.read(path))
        local st = fs.stat(path)
        assert.are.equal(14, st.size)
        assert.are.equal("file", st.type)
        assert.is_true(st.mtime > 1e9)
        assert.are.equal("directory", fs.stat(dir).type)
        assert.are.same({ nil, "no such file or directory" }, { fs.read(dir .. "/missing") })
        assert.are.same({ nil, "not a directory" }, { fs.write("/proc/version/x", "y") })
        os.remove(path)
        os.remove(dir)
    end)
end)

describe("tendril.run", function()
    it("gives status, output, signal and errors", function()
        local r = assert(tendril.run({ "sh", "-c", "read x; echo out:$x; echo err >&2; exit 3" }, { input = "in\n" }))
        assert.are.same({ 3, "out:in\n", "err\n" }, { r.status, r.stdout, r.stderr })
        assert.are.equal(15, assert(tendril.run({ "sh", "-c", "kill -TERM $$" })).signal)
        assert.are.same({ nil, "no such file or directory" }, { tendril.run({ "no-such-program-xyz" }) })
    end)

    it("ends at its timeout, grandchildren holding the output included", function()
        local t0 = tendril.now()
        assert.are.same({ nil, "timeout" }, { tendril.run({ "sh", "-c", "sleep 30 & sleep 30" }, { timeout = 0.3 }) })
        -- The direct child exits at once; a grandchild keeps stdout open.
        assert.are.same({ nil, "timeout" },
            { tendril.run({ "sh", "-c", "sleep 10 & echo started" }, { timeout = 0.3 }) })
        local took = tendril.now() - t0
        assert.is_true(took >= 0.55 and took < 3, took)
    end)
end)
