-- tendril.testing: an app served inside the test's own process, on a
-- loopback port, and asked through the real HTTP stack.
--
--   local testing = require "tendril.testing"
--   local app = testing.app("app.lua")          -- or a handler function
--   local res = app:get("/users/1")             -- { status =, headers =, body = }
--   res = app:post("/users", '{"name":"x"}', { headers = { ["Content-Type"] = "application/json" } })
--   app:close()
--
-- Under `tendril test` (or `tendril run`). The app's top level runs in the
-- caller's task as a new generation; one app serves at a time (the last
-- one made), which is what a spec file wants.
local core = require "tendril.core"
local generation = require "tendril.generation"
local http = require "tendril.http"

local type, error, setmetatable, getmetatable, tostring = type, error, setmetatable, getmetatable, tostring
local match = string.match

local _M = {}

local App = {}
App.__index = App

-- The app's directory first on package.path, as tendril serve has it.
local function on_path(dir)
    local entry = dir .. "/?.lua;" .. dir .. "/?/init.lua;"
    if package.path:sub(1, #entry) ~= entry then
        package.path = entry .. package.path
    end
end

local function absolute(path)
    if path:sub(1, 1) == "/" then
        return path
    end
    local real = core.realpath(path)
    return real or path
end

--- Serves `what` (an app file, as `tendril serve` would, or a handler) on
--- 127.0.0.1 and a free port. Raises when the app does not load.
function _M.app(what)
    local t = type(what)
    if t == "string" then
        local path = absolute(what)
        local dir = match(path, "^(.*)/[^/]*$") or "."
        on_path(dir)
        generation.set_app(path, dir)
        local ok, err = generation.load()
        if not ok then
            error("testing.app: " .. tostring(err), 2)
        end
    elseif t == "function" or (t == "table" and getmetatable(what) and getmetatable(what).__call) then
        generation.install(what)
    else
        error("testing.app: expected an app file or a handler function, got " .. t, 2)
    end
    local listener, port = core.serve_listen("127.0.0.1", 0)
    if not listener then
        error("testing.app: cannot listen: " .. tostring(port), 2)
    end
    return setmetatable({ _listener = listener, port = port, url = "http://127.0.0.1:" .. port }, App)
end

-- One request for the public methods: misuse raises at their caller's
-- line (level 3 from here), the client's own checks included.
local function ask(self, fname, t)
    local path = t.path or "/"
    if type(path) ~= "string" or path:sub(1, 1) ~= "/" then
        error(fname .. ": the path must start with '/', got " .. tostring(path), 3)
    end
    local ok, res, err = pcall(http.request, { method = t.method or "GET", url = self.url .. path,
        headers = t.headers, body = t.body, timeout = t.timeout, max_redirects = 0 })
    if not ok then
        error(fname .. ": " .. tostring(res):gsub("^[^:]*:%d+: ", ""), 3)
    end
    if not res then
        return nil, err
    end
    return { status = res.status, headers = res.headers, body = res.body }
end

--- One request: t = { method =, path =, headers =, body =, timeout = }.
--- { status =, headers =, body = } (headers with lower-case names), or
--- nil, err.
function App:request(t)
    if type(t) ~= "table" then
        error("app:request: expected { method =, path =, headers =, body = }, got " .. type(t), 2)
    end
    return ask(self, "app:request", t)
end

--- GET path; opts: headers, timeout.
function App:get(path, opts)
    opts = opts or {}
    return ask(self, "app:get", { method = "GET", path = path, headers = opts.headers, timeout = opts.timeout })
end

--- POST body to path; opts: headers, timeout.
function App:post(path, body, opts)
    opts = opts or {}
    return ask(self, "app:post", { method = "POST", path = path, body = body, headers = opts.headers,
        timeout = opts.timeout })
end

--- Stops listening (requests in flight finish).
function App:close()
    core.serve_unlisten(self._listener)
end

return _M
