-- tendril.cors: a middleware for cross-origin requests (the Fetch standard's
-- CORS protocol), for router:use.
--
--   router:use(require("tendril.cors"){ origins = { "https://app.example" },
--       methods =, headers =, credentials =, max_age = })
--
-- A preflight (OPTIONS with Access-Control-Request-Method) from an allowed
-- origin is answered here with 204, before any route. Other requests from
-- an allowed origin go on with Access-Control-Allow-Origin set. A request
-- without Origin, or from an origin not allowed, goes on untouched: the
-- browser, not the server, enforces CORS.
local type, error, tostring, ipairs, concat = type, error, tostring, ipairs, table.concat

local DEFAULT_METHODS = "GET, HEAD, PUT, PATCH, POST, DELETE"

local function list(fname, name, v)
    if type(v) == "string" then
        return v
    end
    if type(v) ~= "table" then
        error(fname .. ": expected " .. name .. " to be a string or a list of strings, got " .. type(v), 3)
    end
    for i, s in ipairs(v) do
        if type(s) ~= "string" then
            error(fname .. ": " .. name .. "[" .. i .. "] is a " .. type(s) .. ", not a string", 3)
        end
    end
    return concat(v, ", ")
end

-- Adds to Vary rather than replacing what another middleware set there.
local function add_vary(res, value)
    local i = res._hi and res._hi["vary"]
    local old = i and res._h[i + 1]
    if type(old) == "string" and old ~= "" then
        value = old .. ", " .. value
    end
    res:header("Vary", value)
end

return function(opts)
    local fname = "tendril.cors"
    opts = opts or {}
    if type(opts) ~= "table" then
        error(fname .. ": expected an options table, got " .. type(opts), 2)
    end
    local origins = opts.origins or "*"
    local allowed -- function(origin) -> bool; nil for "*"
    if type(origins) == "function" then
        allowed = origins
    elseif type(origins) == "table" then
        local set = {}
        for i, o in ipairs(origins) do
            if type(o) ~= "string" then
                error(fname .. ": origins[" .. i .. "] is a " .. type(o) .. ", not a string", 2)
            end
            set[o] = true
        end
        allowed = function(o) return set[o] == true end
    elseif origins ~= "*" then
        error(fname .. ": origins must be \"*\", a list of origins or a function, got " .. tostring(origins), 2)
    end
    local methods = opts.methods and list(fname, "methods", opts.methods) or DEFAULT_METHODS
    local headers = opts.headers and list(fname, "headers", opts.headers)
    local credentials = opts.credentials and true or false
    local max_age = opts.max_age
    if max_age ~= nil and (type(max_age) ~= "number" or max_age % 1 ~= 0 or max_age < 0) then
        error(fname .. ": max_age must be a whole number of seconds, got " .. tostring(max_age), 2)
    end
    -- "*" with credentials is refused by browsers: echo the origin instead.
    local star = allowed == nil and not credentials

    -- Sets the headers every answer to an allowed origin carries.
    local function allow(res, origin)
        res:header("Access-Control-Allow-Origin", star and "*" or origin)
        if credentials then
            res:header("Access-Control-Allow-Credentials", "true")
        end
    end

    return function(req, res, nxt)
        local h = req.headers
        local origin = h.origin
        if not origin then
            return nxt()
        end
        if not star then
            -- The answer depends on Origin, allowed or not: caches must
            -- not hand one origin's answer to another.
            add_vary(res, "Origin")
        end
        if allowed and not allowed(origin) then
            return nxt()
        end
        allow(res, origin)
        if req.method == "OPTIONS" and h["access-control-request-method"] then
            res:header("Access-Control-Allow-Methods", methods)
            local asked = h["access-control-request-headers"]
            if headers then
                res:header("Access-Control-Allow-Headers", headers)
            elseif asked then
                -- No list given: the headers asked for are allowed.
                res:header("Access-Control-Allow-Headers", asked)
                add_vary(res, "Access-Control-Request-Headers")
            end
            if max_age then
                res:header("Access-Control-Max-Age", max_age)
            end
            return 204
        end
        return nxt()
    end
end
