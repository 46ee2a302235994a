-- tendril.http against an upstream in the same process (helpers/upstream.lua):
-- pooling, bodies of every framing, redirects, failures and retries.
local tendril = require "tendril"
local http = require "tendril.http"

local dir = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
package.path = dir .. "/helpers/?.lua;" .. package.path
local upstream = require "upstream"
local UP = upstream.url

local function show(res, err)
    if not res then
        return "error: " .. tostring(err)
    end
    return res.status .. " " .. tostring(res.body)
end

local function get(path, opts)
    return show(http.get(UP .. path, opts))
end

describe("tendril.http", function()
    it("reuses one pooled connection for consecutive GETs", function()
        local before = upstream.connections
        for _ = 1, 5 do
            assert.are.equal("200 hello from upstream", get("/hello"))
        end
        assert.are.equal(1, upstream.connections - before)
    end)

    it("sends a body and headers", function()
        local res = assert(http.request({ method = "POST", url = UP .. "/echo", body = "payload",
            headers = { ["X-Test"] = "yes" } }))
        assert.are.equal("POST yes payload", res.body)
        assert.are.equal("POST", res.headers["x-method"])
    end)

    it("reads chunked and close-delimited bodies", function()
        assert.are.equal("200 part1part2", get("/chunked"))
        assert.are.equal("200 until the end", get("/close-delimited"))
    end)

    it("streams a large body in pieces", function()
        local res = assert(http.get(UP .. "/big", { stream = true }))
        local n, pieces = 0, 0
        while true do
            local piece, err = res:read()
            if not piece then
                assert.is_nil(err)
                break
            end
            n, pieces = n + #piece, pieces + 1
        end
        assert.are.equal(5 * 1024 * 1024, n)
        assert.is_true(pieces > 1)
    end)

    it("follows redirects only when asked, as far as asked", function()
        local function redirect(n, opts)
            opts.url = UP .. "/redirect?n=" .. n .. "&code=" .. (opts.code or 302)
            opts.code = nil
            return show(http.request(opts))
        end
        assert.are.equal("302 ", redirect(2, {}))
        assert.are.equal("200 landed GET", redirect(2, { max_redirects = 5 }))
        assert.are.equal("302 ", redirect(3, { max_redirects = 2 }))
        assert.are.equal("200 landed POST", redirect(1, { max_redirects = 1, code = 307, method = "POST" }))
        assert.are.equal("200 landed GET", redirect(1, { max_redirects = 1, code = 303, method = "POST" }))
    end)

    it("says why a request failed", function()
        -- Nothing listens on port 1 of the loopback.
        assert.are.equal("error: connection refused", show(http.get("http://127.0.0.1:1/", { timeout = 5 })))
        local a, e1 = http.get("ftp://x/")
        assert.is_nil(a)
        assert.are.equal("unsupported scheme ftp (http and https only)", e1)
        local b, e2 = http.get("not a url")
        assert.is_nil(b)
        assert.are.equal("invalid url", e2)
        assert.are.equal("error: closed", get("/cut"))
    end)

    it("times out a slow answer", function()
        local t0 = tendril.now()
        assert.are.equal("error: timeout", get("/slow?s=1", { timeout = 0.2 }))
        assert.is_true(tendril.now() - t0 < 0.9)
        -- The upstream's task is done with it after its sleep.
        tendril.sleep(1)
    end)

    it("retries a request once when its pooled connection was stale", function()
        assert.are.equal("200 hello from upstream", get("/once"))
        local before = upstream.connections
        -- The upstream closes the pooled connection as the request arrives.
        assert.are.equal("200 hello from upstream", get("/once"))
        assert.are.equal(1, upstream.connections - before)
    end)

    it("retries on a new connection, not on another pooled one", function()
        -- Idle connections often die together (the server's keep-alive
        -- timeout): two pooled connections, both stale; the retry must not
        -- take the second.
        local a = tendril.spawn(get, "/slow?s=0.1")
        local b = tendril.spawn(get, "/slow?s=0.1")
        assert.are.same({ true, "200 slow" }, { a:join() })
        assert.are.same({ true, "200 slow" }, { b:join() })
        local before = upstream.connections
        assert.are.equal("200 hello from upstream", get("/once"))
        assert.are.equal(1, upstream.connections - before)
    end)

    it("comes back after the upstream closed its idle connections", function()
        local closed = upstream.idle_closed
        assert.are.equal("200 hello from upstream", get("/hello?idle=0.1"))
        tendril.sleep(0.3)
        assert.are.equal(closed + 1, upstream.idle_closed)
        -- The pool saw it go, or the request is retried on a new one.
        assert.are.equal("200 hello from upstream", get("/hello"))
    end)

    it("refuses CR, LF and NUL where they would make a header or a request", function()
        local before = upstream.connections
        local function refused(f)
            local ok, err = pcall(f)
            assert.is_false(ok)
            return err
        end
        assert.matches("http_client_spec%.lua:%d+: http%.request: header 'X%-Test': its value holds CR, LF or NUL$",
            refused(function()
                return (http.request({ url = UP .. "/echo", headers = { ["X-Test"] = "yes\r\nX-Injected: 1" } }))
            end))
        assert.matches("http_client_spec%.lua:%d+: http%.get: header 'X%-Test': its value holds CR, LF or NUL$",
            refused(function()
                return (http.get(UP .. "/echo", { headers = { ["X-Test"] = "a\0b" } }))
            end))
        assert.matches("http_client_spec%.lua:%d+: http%.request: header 'X%-Test\\r\\nX%-Injected': "
            .. "not a valid header name$",
            refused(function()
                return (http.request({ url = UP .. "/echo", headers = { ["X-Test\r\nX-Injected"] = "1" } }))
            end))
        assert.matches("http_client_spec%.lua:%d+: http%.request: method 'GET /x HTTP/1%.1\\r\\n.*': "
            .. "not a valid method$",
            refused(function()
                return (http.request({ url = UP .. "/echo", method = "GET /x HTTP/1.1\r\nX-Injected: 1\r\n\r\nGET" }))
            end))
        local res, err = http.get(UP .. "/echo HTTP/1.1\r\nX-Injected: 1\r\n")
        assert.is_nil(res)
        assert.are.equal("invalid url", err)
        assert.are.equal(before, upstream.connections)
    end)
end)
