-- A to-do list: a JSON API and the page that uses it.
--
--   tendril serve examples/todo/app.lua     then open http://127.0.0.1:8080/
--
-- Each visitor has a list of their own, found by a session cookie made on
-- the first visit. The lists live in the process (tendril.keep: they
-- survive a hot reload, not a restart), bounded below.
--
--   GET    /api/todos        the visitor's items, oldest first
--   POST   /api/todos        {"title": "..."}: 201 with the new item
--   GET    /api/todos/:id    one item
--   PATCH  /api/todos/:id    {"title": "...", "done": true}: the item changed
--   DELETE /api/todos/:id    204
--   GET    /*path            the page and its files, from public/
--
-- A front end served from elsewhere during development (a bundler on
-- port 5173) may call the API with the cookie: see ORIGINS.
local tendril = require "tendril"
local json = require "tendril.json"
local new_router = require("tendril.router").new
local cors = require "tendril.cors"
local static = require "tendril.static"

local ORIGINS = { "http://localhost:5173", "http://127.0.0.1:5173" }
local MAX_SESSIONS = 10000 -- the oldest list goes when a new visitor comes past this
local MAX_ITEMS = 500
local MAX_TITLE = 200

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."

-- sessions[id] = { id =, items = { id -> item }, order = { ids }, next = n }
local store = tendril.keep("todo.sessions", function()
    return { sessions = {}, queue = {}, first = 1, last = 0 }
end)

local function new_session_id()
    local f = assert(io.open("/dev/urandom", "rb"))
    local bytes = f:read(16)
    f:close()
    return (bytes:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

local function open_session()
    local q = store.queue
    if store.last - store.first + 1 >= MAX_SESSIONS then
        store.sessions[q[store.first]] = nil
        q[store.first] = nil
        store.first = store.first + 1
    end
    local s = { id = new_session_id(), items = {}, order = {}, next = 1 }
    store.sessions[s.id] = s
    store.last = store.last + 1
    q[store.last] = s.id
    return s
end

-- An item as the API shows it.
local function view(item)
    return { id = item.id, title = item.title, done = item.done }
end

local function check_title(title)
    if type(title) ~= "string" or title:find("^%s*$") then
        return nil, "title: expected a non-empty string"
    end
    if #title > MAX_TITLE then
        return nil, "title: at most " .. MAX_TITLE .. " bytes"
    end
    return title
end

local function problem(res, status, message)
    return res:json({ error = message }, status)
end

local router, api = new_router(), new_router()

router:use(cors{ origins = ORIGINS, credentials = true, headers = { "Content-Type" } })

-- Every API request has a session: the cookie's, or a new one.
api:use(function(req, res, next)
    local s = store.sessions[req.cookies.todo_session or ""]
    if not s then
        s = open_session()
        res:cookie("todo_session", s.id, { path = "/", http_only = true, same_site = "Lax",
                                           max_age = 30 * 24 * 3600 })
    end
    req.session = s
    return next()
end)

api:get("/todos", function(req, res)
    local s, out = req.session, json.array({})
    for i = 1, #s.order do
        out[i] = view(s.items[s.order[i]])
    end
    return res:json(out)
end)

api:post("/todos", function(req, res)
    local body, err = req:json()
    if body == nil then return problem(res, 400, err) end
    local title, terr = check_title(type(body) == "table" and body.title)
    if not title then return problem(res, 422, terr) end
    local s = req.session
    if #s.order >= MAX_ITEMS then return problem(res, 409, "at most " .. MAX_ITEMS .. " items") end
    local item = { id = s.next, title = title, done = false }
    s.next = s.next + 1
    s.items[item.id] = item
    s.order[#s.order + 1] = item.id
    res:header("Location", "/api/todos/" .. item.id)
    return res:json(view(item), 201)
end)

local function find(req, res)
    local item = req.session.items[tonumber(req.params.id) or -1]
    if not item then
        return nil, problem(res, 404, "no item " .. req.params.id)
    end
    return item
end

api:get("/todos/:id", function(req, res)
    local item = find(req, res)
    if not item then return end
    return res:json(view(item))
end)

api:patch("/todos/:id", function(req, res)
    local item = find(req, res)
    if not item then return end
    local body, err = req:json()
    if body == nil then return problem(res, 400, err) end
    if type(body) ~= "table" then return problem(res, 422, "expected an object") end
    if body.title ~= nil then
        local title, terr = check_title(body.title)
        if not title then return problem(res, 422, terr) end
        item.title = title
    end
    if body.done ~= nil then
        if type(body.done) ~= "boolean" then return problem(res, 422, "done: expected true or false") end
        item.done = body.done
    end
    return res:json(view(item))
end)

api:delete("/todos/:id", function(req, res)
    local item = find(req, res)
    if not item then return end
    local s = req.session
    s.items[item.id] = nil
    for i = 1, #s.order do
        if s.order[i] == item.id then
            table.remove(s.order, i)
            break
        end
    end
    return 204
end)

router:mount("/api", api)
router:get("/*path", static(here .. "/public"))

return router
