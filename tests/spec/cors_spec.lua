-- tendril.cors: preflights answered, allowed origins marked, others untouched.
-- luacheck: ignore 212 (handlers take req, res whether they use them)
local cors = require "tendril.cors"
local router_mod = require "tendril.router"

-- A res that keeps headers as server.lua's does (_h, _hi), case-insensitive.
local function fake_res()
    local res = { _h = {}, _hi = {} }
    function res.header(self, name, value)
        local k = name:lower()
        local i = self._hi[k]
        if not i then
            i = #self._h + 1
            self._hi[k] = i
        end
        self._h[i], self._h[i + 1] = name, value
        return self
    end
    function res.get(self, name)
        local i = self._hi[name:lower()]
        return i and self._h[i + 1] or nil
    end
    return res
end

local function run(opts, method, headers)
    local r = router_mod.new()
    r:use(cors(opts))
    r:get("/x", function() return "x" end)
    r:post("/x", function() return "posted" end)
    local res = fake_res()
    local out = { r({ method = method, path = "/x", headers = headers }, res) }
    return out, res
end

describe("tendril.cors", function()
    it("answers a preflight from an allowed origin with 204 and the allowed methods and headers", function()
        local out, res = run({ origins = { "https://a.example" }, headers = { "Content-Type", "X-Token" },
            max_age = 600 }, "OPTIONS", { origin = "https://a.example", ["access-control-request-method"] = "POST" })
        assert.are.same({ 204 }, out)
        assert.are.equal("https://a.example", res:get("Access-Control-Allow-Origin"))
        assert.are.equal("GET, HEAD, PUT, PATCH, POST, DELETE", res:get("Access-Control-Allow-Methods"))
        assert.are.equal("Content-Type, X-Token", res:get("Access-Control-Allow-Headers"))
        assert.are.equal(600, res:get("Access-Control-Max-Age"))
        assert.are.equal("Origin", res:get("Vary"))
    end)

    it("allows the headers asked for when given no list", function()
        local _, res = run({}, "OPTIONS", { origin = "https://b.example",
            ["access-control-request-method"] = "PUT", ["access-control-request-headers"] = "x-a, x-b" })
        assert.are.equal("*", res:get("Access-Control-Allow-Origin"))
        assert.are.equal("x-a, x-b", res:get("Access-Control-Allow-Headers"))
        assert.are.equal("Access-Control-Request-Headers", res:get("Vary"))
    end)

    it("marks a simple request from an allowed origin and lets the route answer", function()
        local out, res = run({ origins = { "https://a.example" }, credentials = true }, "POST",
            { origin = "https://a.example" })
        assert.are.same({ "posted" }, out)
        assert.are.equal("https://a.example", res:get("Access-Control-Allow-Origin"))
        assert.are.equal("true", res:get("Access-Control-Allow-Credentials"))
        assert.are.equal("Origin", res:get("Vary"))
    end)

    it("echoes the origin rather than '*' with credentials", function()
        local _, res = run({ credentials = true }, "GET", { origin = "https://c.example" })
        assert.are.equal("https://c.example", res:get("Access-Control-Allow-Origin"))
    end)

    it("leaves other origins and requests without Origin untouched", function()
        local out, res = run({ origins = { "https://a.example" } }, "OPTIONS",
            { origin = "https://evil.example", ["access-control-request-method"] = "POST" })
        assert.are.equal(405, out[1]) -- the router's answer: no OPTIONS route
        assert.is_nil(res:get("Access-Control-Allow-Origin"))
        assert.are.equal("Origin", res:get("Vary"))
        out, res = run({}, "GET", {})
        assert.are.same({ "x" }, out)
        assert.is_nil(res:get("Access-Control-Allow-Origin"))
    end)

    it("takes a function deciding the origin", function()
        local opts = { origins = function(o) return o:match("%.example$") ~= nil end }
        local _, res = run(opts, "GET", { origin = "https://z.example" })
        assert.are.equal("https://z.example", res:get("Access-Control-Allow-Origin"))
        _, res = run(opts, "GET", { origin = "https://z.test" })
        assert.is_nil(res:get("Access-Control-Allow-Origin"))
    end)

    it("adds to a Vary set before it", function()
        local res = fake_res()
        res:header("Vary", "Accept-Encoding")
        local mw = cors({ origins = { "https://a.example" } })
        mw({ method = "GET", headers = { origin = "https://a.example" } }, res, function() return "ok" end)
        assert.are.equal("Accept-Encoding, Origin", res:get("Vary"))
    end)

    it("raises on bad options", function()
        assert.has_error(function() cors({ origins = 5 }) end)
        assert.has_error(function() cors({ methods = { 1 } }) end)
        assert.has_error(function() cors({ max_age = -1 }) end)
    end)
end)
