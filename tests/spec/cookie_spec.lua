-- tendril.cookie: the Cookie header in, Set-Cookie lines out (RFC 6265).
local cookie = require "tendril.cookie"

local function bad(...)
    local ok, err = pcall(cookie.serialize, "res:cookie", ...)
    assert.is_false(ok)
    return err
end

describe("tendril.cookie", function()
    describe("parse", function()
        it("reads name=value pairs separated by ';' and spaces", function()
            assert.are.same({ a = "1", sid = "x.y-z", e = "" }, cookie.parse("a=1; sid=x.y-z;e="))
        end)

        it("keeps the first pair of a name (the most specific path comes first)", function()
            assert.are.same({ id = "first" }, cookie.parse("id=first; id=second"))
        end)

        it("keeps values as sent: no percent-decoding, quotes and '=' kept", function()
            assert.are.same({ a = "x%20y", b = '"q"', c = "k=v" }, cookie.parse('a=x%20y; b="q"; c=k=v'))
        end)

        it("skips pairs without a name or '=' and reads nothing from nil", function()
            assert.are.same({ ok = "1" }, cookie.parse("junk; =v; ok=1;;"))
            assert.are.same({}, cookie.parse(nil))
            assert.are.same({}, cookie.parse(""))
        end)
    end)

    describe("serialize", function()
        it("writes the name and value alone without options", function()
            assert.are.equal("sid=abc", cookie.serialize("res:cookie", "sid", "abc", nil, 1))
        end)

        it("writes every attribute in a fixed order", function()
            local line = cookie.serialize("res:cookie", "sid", "abc", {
                path = "/", domain = "example.com", max_age = 3600, expires = 0,
                secure = true, http_only = true, same_site = "lax",
            }, 1)
            assert.are.equal("sid=abc; Path=/; Domain=example.com; Max-Age=3600; "
                .. "Expires=Thu, 01 Jan 1970 00:00:00 GMT; Secure; HttpOnly; SameSite=Lax", line)
        end)

        it("leaves false flags out and takes a string date", function()
            assert.are.equal("a=1; Expires=Wed, 21 Oct 2015 07:28:00 GMT",
                cookie.serialize("f", "a", 1, { expires = "Wed, 21 Oct 2015 07:28:00 GMT", secure = false }, 1))
        end)

        it("raises on names that are not tokens and values outside cookie-octets", function()
            assert.matches("res:cookie: 'a b' is not a valid cookie name", bad("a b", "1", nil, 1))
            assert.matches("res:cookie: 'a;b' is not a valid cookie name", bad("a;b", "1", nil, 1))
            for _, v in ipairs({ "a b", "a;b", "a,b", 'a"b', "a\\b", "a\nb", "caf\195\169" }) do
                assert.matches("the value of cookie 'n' holds", bad("n", v, nil, 1))
            end
            assert.matches("expected a string value", bad("n", true, nil, 1))
        end)

        it("raises on bad options, naming them", function()
            assert.matches("unknown option 'maxage'", bad("n", "v", { maxage = 1 }, 1))
            assert.matches("max_age must be a whole number", bad("n", "v", { max_age = 1.5 }, 1))
            assert.matches("path must be a string without ';'", bad("n", "v", { path = "/a;b" }, 1))
            assert.matches("same_site must be", bad("n", "v", { same_site = "sometimes" }, 1))
            assert.matches("same_site \"None\" needs secure", bad("n", "v", { same_site = "None" }, 1))
        end)

        it("raises at the given level", function()
            local function user()
                local line = cookie.serialize("res:cookie", "", "v", nil, 2)
                return line
            end
            local ok, err = pcall(function() user() end)
            assert.is_false(ok)
            assert.matches("cookie_spec.lua:%d+: res:cookie:", err)
        end)
    end)
end)
