-- tendril.router: routes by method and path, middleware, mounts.
--
-- Routes live in a segment tree: one node per path segment, each with its
-- literal children (a hash), one parameter child and one wildcard child.
-- Matching walks the request's segments, so its cost is the number of
-- segments, not the number of routes. Literal beats parameter beats
-- wildcard whatever the order of declaration: at each node the literal
-- child is tried first and, when it dead-ends deeper down, the search
-- backtracks to the parameter child, then to the wildcard.
--
-- Paths are matched against req.path, which the server has already
-- percent-decoded (dot segments removed), so parameters come decoded and an
-- encoded slash separates segments like a plain one. Pure Lua: the router
-- runs on any table with .method and .path, which the specs use.
local setmetatable, getmetatable, type, error, tostring, pairs, select =
    setmetatable, getmetatable, type, error, tostring, pairs, select
local find, sub, byte, upper = string.find, string.sub, string.byte, string.upper
local concat, sort = table.concat, table.sort
local unpack = unpack

local SLASH = 47 -- "/"

local _M = {}

local Router = {}
Router.__index = Router

local function new_node()
    return { static = {}, param = nil, wild = nil, mount = nil, methods = nil, any = nil }
end

--- A new, empty router. Call it (or return it from the app) as a handler.
function _M.new()
    return setmetatable({ _root = new_node(), _mw = {} }, Router)
end

--- True when x is a router (mount takes nothing else).
function _M.is_router(x)
    return getmetatable(x) == Router
end

---------------------------------------------------------------- declaring

-- Splits "/a/b/" into { "a", "b", "" } (n = 3), into `out`; "/" is { "" }.
-- A path that does not start with "/" (an OPTIONS "*" target) has no
-- segments and matches nothing.
local function split(path, out)
    if byte(path, 1) ~= SLASH then
        return 0
    end
    local n, start = 0, 2
    while true do
        local slash = find(path, "/", start, true)
        n = n + 1
        if not slash then
            out[n] = sub(path, start)
            return n
        end
        out[n] = sub(path, start, slash - 1)
        start = slash + 1
    end
end

-- The pattern's segments: { kind = "literal" | "param" | "wild", text = }.
local function parse_pattern(fname, pattern, level)
    if type(pattern) ~= "string" or byte(pattern, 1) ~= SLASH then
        error(fname .. ": expected a pattern starting with '/', got " .. tostring(pattern), level + 1)
    end
    local raw, segs = {}, {}
    local n = split(pattern, raw)
    local seen = {}
    for i = 1, n do
        local s = raw[i]
        local c = sub(s, 1, 1)
        if c == ":" or c == "*" then
            local name = sub(s, 2)
            if not find(name, "^[%a_][%w_]*$") then
                error(fname .. ": '" .. s .. "' in '" .. pattern .. "' needs a name of letters, digits and _",
                    level + 1)
            end
            if seen[name] then
                error(fname .. ": the name '" .. name .. "' appears twice in '" .. pattern .. "'", level + 1)
            end
            seen[name] = true
            if c == "*" and i ~= n then
                error(fname .. ": the wildcard '" .. s .. "' must be the last segment of '" .. pattern .. "'",
                    level + 1)
            end
            segs[i] = { kind = c == ":" and "param" or "wild", text = name }
        else
            segs[i] = { kind = "literal", text = s }
        end
    end
    return segs, n
end

-- The node a pattern ends at (made as needed) and its parameter names.
local function walk(root, segs, n)
    local node, names = root, {}
    for i = 1, n do
        local s = segs[i]
        if s.kind == "literal" then
            local child = node.static[s.text]
            if not child then
                child = new_node()
                node.static[s.text] = child
            end
            node = child
        elseif s.kind == "param" then
            node.param = node.param or new_node()
            node = node.param
            names[#names + 1] = s.text
        else
            node.wild = node.wild or new_node()
            node = node.wild
            names[#names + 1] = s.text
        end
    end
    return node, names
end

local function check_fn(fname, fn, level)
    local t = type(fn)
    if t ~= "function" and not (t == "table" and getmetatable(fn) and getmetatable(fn).__call) then
        error(fname .. ": expected a handler function, got " .. t, level + 1)
    end
end

-- A route's options: { max_body_bytes = n } (req:set_max_body_bytes
-- before the middleware runs).
local function check_opts(fname, opts, level)
    if type(opts) ~= "table" then
        error(fname .. ": expected the route's options as a table, got " .. type(opts), level + 1)
    end
    for k, v in pairs(opts) do
        if k ~= "max_body_bytes" then
            error(fname .. ": unknown route option '" .. tostring(k) .. "' (known: max_body_bytes)", level + 1)
        end
        if type(v) ~= "number" or v < 0 or v ~= v or v == 1 / 0 then
            error(fname .. ": max_body_bytes must be a number of bytes >= 0, got " .. tostring(v), level + 1)
        end
    end
    return opts
end

-- pattern[, opts], fn: the options go between, as Fastify has them.
local function add(self, fname, methods, pattern, a, b)
    -- Levels: add is called by the router:<method> the script called.
    local segs, n = parse_pattern(fname, pattern, 3)
    local fn, opts = a, nil
    if b ~= nil then
        fn, opts = b, check_opts(fname, a, 3)
    end
    check_fn(fname, fn, 3)
    local node, names = walk(self._root, segs, n)
    local entry = { fn = fn, names = names, max_body = opts and opts.max_body_bytes }
    if methods == nil then
        if node.any then
            error(fname .. ": a route for any method on '" .. pattern .. "' is declared already", 3)
        end
        node.any = entry
        return self
    end
    node.methods = node.methods or {}
    for i = 1, #methods do
        if node.methods[methods[i]] then
            error(fname .. ": " .. methods[i] .. " " .. pattern .. " is declared already", 3)
        end
    end
    for i = 1, #methods do
        node.methods[methods[i]] = entry
    end
    return self
end

for _, m in pairs({ "get", "post", "put", "patch", "delete", "options" }) do
    local M, fname = upper(m), "router:" .. m
    Router[m] = function(self, pattern, a, b)
        add(self, fname, { M }, pattern, a, b) -- not a tail call: error levels
        return self
    end
end

--- A route for every method (it never answers 405).
function Router:any(pattern, a, b)
    add(self, "router:any", nil, pattern, a, b) -- not a tail call: error levels
    return self
end

--- A route for a method ("GET") or a list of methods ({ "GET", "POST" }).
function Router:route(methods, pattern, a, b)
    if type(methods) == "string" then
        methods = { methods }
    end
    if type(methods) ~= "table" or #methods == 0 then
        error("router:route: expected a method or a list of methods, got " .. tostring(methods), 2)
    end
    for i = 1, #methods do
        local m = methods[i]
        if type(m) ~= "string" or not find(m, "^[%w!#$%%&'*+%-%.^_`|~]+$") then
            error("router:route: '" .. tostring(m) .. "' is not a method name", 2)
        end
    end
    add(self, "router:route", methods, pattern, a, b) -- not a tail call: error levels
    return self
end

--- Appends a middleware: fn(req, res, next), run in order of `use` before
--- the route (and before the 404 or 405 answer).
function Router:use(fn)
    check_fn("router:use", fn, 2)
    self._mw[#self._mw + 1] = fn
    return self
end

--- Serves `other`'s routes under `prefix` ("/api": other's "/users" answers
--- "/api/users", its "/" answers "/api" and "/api/"); other's middleware
--- runs after this router's, for its routes only.
function Router:mount(prefix, other)
    if getmetatable(other) ~= Router then
        error("router:mount: expected a router to mount, got " .. type(other), 2)
    end
    if other == self then
        error("router:mount: a router cannot mount itself", 2)
    end
    local segs, n = parse_pattern("router:mount", prefix, 2)
    if n == 1 and segs[1].text == "" then
        n = 0 -- "/" mounts at the root
    elseif segs[n].kind == "literal" and segs[n].text == "" then
        n = n - 1 -- "/api/" is "/api"
    end
    for i = 1, n do
        if segs[i].kind == "wild" then
            error("router:mount: a mount prefix cannot hold a wildcard ('" .. prefix .. "')", 2)
        end
    end
    local node, names = walk(self._root, segs, n)
    if node.mount then
        error("router:mount: a router is mounted at '" .. prefix .. "' already", 2)
    end
    node.mount = { router = other, names = names }
    return self
end

---------------------------------------------------------------- matching

-- Scratch space: matching never yields, so one set serves every request.
local segs, vals, chain = {}, {}, {}

local function pick(node, method)
    local ms = node.methods
    if ms then
        local e = ms[method]
        if e then
            return e
        end
        if method == "HEAD" then
            e = ms.GET
            if e then
                return e
            end
        end
    end
    return node.any
end

-- The entry for `method` at segments i..n below node, backtracking from a
-- literal branch to the parameter, the mount and the wildcard; also the
-- count of values in `vals` and of mounts in `chain`.
local function match(node, i, n, nv, nc, method)
    if i > n then
        local e = pick(node, method)
        if e then
            return e, nv, nc
        end
        local m = node.mount
        if m then
            -- "/api" reaches the mounted router's "/".
            segs[n + 1] = ""
            chain[nc + 1] = m
            local e2, nv2, nc2 = match(m.router._root, n + 1, n + 1, nv, nc + 1, method)
            if e2 then
                return e2, nv2, nc2
            end
        end
        return nil
    end
    local s = segs[i]
    local child = node.static[s]
    if child then
        local e, nv2, nc2 = match(child, i + 1, n, nv, nc, method)
        if e then
            return e, nv2, nc2
        end
    end
    local m = node.mount
    if m then
        chain[nc + 1] = m
        local e, nv2, nc2 = match(m.router._root, i, n, nv, nc + 1, method)
        if e then
            return e, nv2, nc2
        end
    end
    child = node.param
    if child and s ~= "" then
        vals[nv + 1] = s
        local e, nv2, nc2 = match(child, i + 1, n, nv + 1, nc, method)
        if e then
            return e, nv2, nc2
        end
    end
    child = node.wild
    if child then
        local e = pick(child, method)
        if e then
            vals[nv + 1] = i == n and s or concat(segs, "/", i, n)
            return e, nv + 1, nc
        end
    end
    return nil
end

-- Every method some route answers at segments i..n, into `set` (the 405
-- path only: it visits every branch).
local function allowed(node, i, n, set)
    if i > n then
        for m in pairs(node.methods or {}) do
            set[m] = true
        end
        if node.mount then
            segs[n + 1] = ""
            allowed(node.mount.router._root, n + 1, n + 1, set)
        end
        return
    end
    local s = segs[i]
    if node.static[s] then
        allowed(node.static[s], i + 1, n, set)
    end
    if node.mount then
        allowed(node.mount.router._root, i, n, set)
    end
    if node.param and s ~= "" then
        allowed(node.param, i + 1, n, set)
    end
    if node.wild then
        for m in pairs(node.wild.methods or {}) do
            set[m] = true
        end
    end
end

local function not_found()
    return 404, { ["Content-Type"] = "text/plain" }, "not found\n"
end

-- Runs middleware k.. of `mw`, then `final`. A middleware's answer is what
-- it returns; one that called next and returns nothing passes on next's.
local function pack(...)
    return { n = select("#", ...), ... }
end

-- Whether a middleware returned next's values as they were (return next()).
local function same(a, b)
    if a.n ~= b.n then
        return false
    end
    for i = 1, a.n do
        if a[i] ~= b[i] then
            return false
        end
    end
    return true
end

local function run(mw, k, final, req, res)
    local fn = mw[k]
    if not fn then
        res._handler = final
        return final(req, res)
    end
    local called, inner = false, nil
    local function nxt()
        if called then
            error("next: called twice by the same middleware", 2)
        end
        called = true
        inner = pack(run(mw, k + 1, final, req, res))
        return unpack(inner, 1, inner.n)
    end
    local out = pack(fn(req, res, nxt))
    if called and (out[1] == nil or same(out, inner)) then
        return unpack(inner, 1, inner.n)
    end
    res._handler = fn
    return unpack(out, 1, out.n)
end

--- Finds the route for req.method and req.path, sets req.params, and runs
--- the middleware and the route; answers 404, or 405 with Allow.
function Router:handle(req, res)
    local method = req.method
    local n = split(req.path, segs)
    -- No segments (a target such as OPTIONS's "*") matches no route, not
    -- even through a mount at "/".
    local e, _, nc
    if n > 0 then
        e, _, nc = match(self._root, 1, n, 0, 0, method)
    end
    local params = {}
    local final
    if e then
        local k = 0
        for c = 1, nc do
            local names = chain[c].names
            for j = 1, #names do
                k = k + 1
                params[names[j]] = vals[k]
            end
        end
        local names = e.names
        for j = 1, #names do
            params[names[j]] = vals[k + j]
        end
        final = e.fn
        if e.max_body then
            req:set_max_body_bytes(e.max_body)
        end
    else
        local set = {}
        if n > 0 then
            allowed(self._root, 1, n, set)
        end
        if set.GET then
            set.HEAD = true
        end
        local list = {}
        for m in pairs(set) do
            list[#list + 1] = m
        end
        if #list == 0 then
            final = not_found
        else
            sort(list)
            local allow = concat(list, ", ")
            final = function()
                return 405, { Allow = allow, ["Content-Type"] = "text/plain" }, "method not allowed\n"
            end
        end
        nc = 0
    end
    req.params = params
    local mw = self._mw
    if nc > 0 then
        -- Mounted routers' middleware runs after this one's, outer first.
        local all = { unpack(mw) }
        for c = 1, nc do
            local inner = chain[c].router._mw
            for j = 1, #inner do
                all[#all + 1] = inner[j]
            end
        end
        mw = all
    end
    if mw[1] == nil then
        -- res._handler: the function whose answer this is, so that the
        -- server's errors about a return value name its line, not ours.
        res._handler = final
        return final(req, res)
    end
    return run(mw, 1, final, req, res)
end

Router.__call = Router.handle

return _M
