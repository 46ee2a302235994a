-- tendril.static's pure parts: ranges, dates and the path checks that
-- come before any file is opened (tendril.core stubbed: the opens it is
-- asked for are recorded).
local opened = {}
package.loaded["tendril.core"] = {
    realpath = function(p) return p end,
    dir_open = function() return "a dir" end,
    file_open = function(p)
        opened[#opened + 1] = p
        return nil, "no such file or directory"
    end,
    file_close = function() end,
    log = function() end,
}
package.loaded["tendril.static"] = nil
local static = require "tendril.static"

describe("tendril.static", function()
    describe("ranges", function()
        local r = static._parse_range
        it("reads one range in its three forms", function()
            assert.are.same({ 0, 4 }, { r("bytes=0-4", 10) })
            assert.are.same({ 6, 9 }, { r("bytes=6-", 10) })
            assert.are.same({ 7, 9 }, { r("bytes=-3", 10) })
            assert.are.same({ 0, 9 }, { r("bytes=-30", 10) })
            assert.are.same({ 5, 9 }, { r("bytes=5-100", 10) })
        end)
        it("says unsatisfiable (false) past the end", function()
            assert.is_false(r("bytes=10-", 10))
            assert.is_false(r("bytes=-0", 10))
            assert.is_false(r("bytes=0-", 0))
        end)
        it("ignores (nil) several ranges, other units and nonsense", function()
            assert.is_nil(r("bytes=0-1,3-4", 10))
            assert.is_nil(r("items=0-1", 10))
            assert.is_nil(r("bytes=-", 10))
            assert.is_nil(r("bytes=5-2", 10))
        end)
    end)

    describe("dates", function()
        it("parses what it makes", function()
            for _, t in ipairs({ 0, 784111777, 1700000000, 951782400 }) do
                assert.are.equal(t, static._parse_date(static._http_date(t)))
            end
            assert.are.equal(784111777, static._parse_date("Sun, 06 Nov 1994 08:49:37 GMT"))
            assert.is_nil(static._parse_date("Sunday, 06-Nov-94 08:49:37 GMT"))
        end)
    end)

    describe("paths", function()
        local handler = static("/srv/www")
        local function status(target, path, opts)
            opened = {}
            local h = opts and static("/srv/www", opts) or handler
            local req = { method = "GET", target = target, path = path, headers = {} }
            return (h(req, {})), opened
        end
        it("refuses without opening anything", function()
            for _, case in ipairs({
                { "/../etc/passwd", "/../etc/passwd" },
                { "/%2e%2e/etc/passwd", "/../etc/passwd" },
                { "/a%2fb", "/a/b" },
                { "/a%2Fb", "/a/b" },
                { "/a%5cb", "/a\\b" },
                { "/a\\b", "/a\\b" },
                { "/a%00.txt", "/a\0.txt" },
                { "/.env", "/.env" },
                { "/x/.git/config", "/x/.git/config" },
                { "/./a", "/./a" },
            }) do
                local code, o = status(case[1], case[2])
                assert.are.equal(404, code, case[1])
                assert.are.equal(0, #o, case[1])
            end
        end)
        it("opens what is under the root", function()
            local code, o = status("/css/site.css", "/css/site.css")
            assert.are.equal(404, code) -- the stub has no files
            assert.are.same({ "/srv/www/css/site.css" }, o)
        end)
        it("opens hidden names when allowed", function()
            local _, o = status("/.well-known/x", "/.well-known/x", { hidden = true })
            assert.are.same({ "/srv/www/.well-known/x" }, o)
        end)
        it("answers 405 to other methods", function()
            assert.are.equal(405, (handler({ method = "POST", target = "/a", path = "/a", headers = {} }, {})))
        end)
    end)
end)
