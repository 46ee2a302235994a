-- tendril.url: percent-decoding and query strings.
local url = require "tendril.url"

describe("tendril.url", function()
    describe("decode", function()
        it("decodes %XX escapes and keeps +", function()
            assert.are.equal("/a b/c+d", url.decode("/a%20b/c+d"))
            assert.are.equal("/caf\195\169", url.decode("/caf%C3%A9"))
        end)

        it("leaves malformed escapes alone", function()
            assert.are.equal("100%", url.decode("100%"))
            assert.are.equal("%zz", url.decode("%zz"))
        end)
    end)

    describe("decode_component", function()
        it("turns + into a space before decoding", function()
            assert.are.equal("a b+c", url.decode_component("a+b%2Bc"))
        end)
    end)

    describe("encode", function()
        it("keeps unreserved bytes and escapes the rest in upper-case hex", function()
            assert.are.equal("aZ09-._~", url.encode("aZ09-._~"))
            assert.are.equal("a%20b%2Fc%3F%26%3D%2B%25", url.encode("a b/c?&=+%"))
            assert.are.equal("caf%C3%A9", url.encode("caf\195\169"))
            assert.are.equal("12", url.encode(12))
        end)

        it("round-trips through decode and decode_component", function()
            local s = "x y+z/%?&=\0\255"
            assert.are.equal(s, url.decode(url.encode(s)))
            assert.are.equal(s, url.decode_component(url.encode(s)))
        end)

        it("raises on a non-string", function()
            assert.has_error(function() url.encode(nil) end, "url.encode: expected a string, got nil")
        end)
    end)

    describe("build_query", function()
        it("encodes names and values in sorted order, arrays repeated, true bare", function()
            assert.are.equal("a=1&b=x%20y&flag&t=1&t=2",
                url.build_query({ b = "x y", a = 1, t = { "1", 2 }, flag = true, off = false }))
            assert.are.equal("", url.build_query({}))
        end)

        it("is read back by parse_query", function()
            local t = { q = "a&b=c d+e", list = { "1", "2" }, ["n m"] = "" }
            assert.are.same(t, url.parse_query(url.build_query(t)))
        end)

        it("raises on what it cannot encode", function()
            assert.has_error(function() url.build_query("a=1") end, "url.build_query: expected a table, got string")
            assert.has_error(function() url.build_query({ a = print }) end)
        end)
    end)

    describe("parse_query", function()
        it("parses names and values", function()
            assert.are.same({ a = "1", b = "x y" }, url.parse_query("a=1&b=x+y"))
        end)

        it("collects a repeated name into an array", function()
            assert.are.same({ a = { "1", "2", "3" } }, url.parse_query("a=1&a=2&a=3"))
        end)

        it("gives a bare name the empty string", function()
            assert.are.same({ flag = "", e = "" }, url.parse_query("flag&e="))
        end)

        it("skips empty pairs and empty names", function()
            assert.are.same({ a = "1" }, url.parse_query("&&a=1&=x&"))
        end)

        it("decodes names too and keeps = in values", function()
            assert.are.same({ ["a b"] = "c=d" }, url.parse_query("a%20b=c=d"))
        end)

        it("returns an empty table for nothing", function()
            assert.are.same({}, url.parse_query(""))
            assert.are.same({}, url.parse_query(nil))
        end)
    end)

    describe("split_target", function()
        it("splits path and query and decodes the path only", function()
            local path, query = url.split_target("/a%2Fb?x=%20#frag")
            assert.are.equal("/a/b", path)
            assert.are.equal("x=%20", query)
        end)

        it("handles a target without a query", function()
            local path, query = url.split_target("/plain")
            assert.are.equal("/plain", path)
            assert.are.equal("", query)
        end)

        it("removes dot segments from the decoded path, never above /", function()
            local cases = {
                ["/a/../b"] = "/b", ["/a/./b"] = "/a/b", ["/../../etc/passwd"] = "/etc/passwd",
                ["/a/b/.."] = "/a/", ["/a/."] = "/a/", ["/%2e%2e/x"] = "/x", ["/a/%2E%2E/%2e/b"] = "/b",
                ["/"] = "/", ["/.."] = "/", ["/a//b"] = "/a//b", ["/a/..b/c"] = "/a/..b/c", ["/.x"] = "/.x",
            }
            for target, want in pairs(cases) do
                assert.are.equal(want, (url.split_target(target)), target)
            end
        end)

        it("takes the path and host of an absolute-form target", function()
            local path, query, host = url.split_target("http://example.com:8080/a/../x?y=1")
            assert.are.same({ "/x", "y=1", "example.com:8080" }, { path, query, host })
            path, query, host = url.split_target("HTTP://h?q")
            assert.are.same({ "/", "q", "h" }, { path, query, host })
            assert.is_nil(select(3, url.split_target("/a?b=http://c")))
        end)
    end)
end)
