-- A scriptable HTTP/1.1 upstream for the client specs, served by tcp.listen
-- in the spec's own process: it counts the connections it accepts and
-- misbehaves on purpose (close-delimited bodies, bodies cut short, slow
-- answers, stale keep-alive connections).
--
-- An idle connection is closed after IDLE seconds, as servers do (a
-- request's ?idle=S sets it for what follows on its connection).
local tendril = require "tendril"
local tcp = require "tendril.tcp"
local url = require "tendril.url"

local _M = { connections = 0, idle_closed = 0, IDLE = 10 }

local function send(sock, status, body, headers)
    local head = { "HTTP/1.1 " .. status .. " X\r\n" }
    for name, value in pairs(headers or {}) do
        head[#head + 1] = name .. ": " .. value .. "\r\n"
    end
    head[#head + 1] = "Content-Length: " .. #body .. "\r\n\r\n"
    return sock:send(table.concat(head) .. body)
end

-- method, path, query, headers, body; or nil when the connection ends
-- (or stays idle past IDLE).
local function read_request(sock, idle)
    sock:settimeout(idle)
    local line, err = sock:receive("*l")
    if not line then
        if err == "timeout" then
            _M.idle_closed = _M.idle_closed + 1
        end
        return nil
    end
    sock:settimeout(5)
    local method, target = line:match("^(%S+) (%S+) HTTP/1%.%d$")
    local headers = {}
    while true do
        local h = sock:receive("*l")
        if not h then
            return nil
        end
        if h == "" then
            break
        end
        local name, value = h:match("^([^:]+):%s*(.-)%s*$")
        headers[name:lower()] = value
    end
    local body = ""
    local n = tonumber(headers["content-length"] or 0)
    if n > 0 then
        body = sock:receive(n)
    end
    local path, query = target:match("^([^?]*)%??(.*)$")
    return method, path, url.parse_query(query), headers, body
end

-- Answers one request; false when the connection must end.
local function answer(sock, method, path, q, headers, body)
    if path == "/hello" or path == "/once" then
        send(sock, 200, "hello from upstream")
    elseif path == "/echo" then
        send(sock, 200, method .. " " .. (headers["x-test"] or "-") .. " " .. body, { ["X-Method"] = method })
    elseif path == "/chunked" then
        sock:send("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\npart1\r\n5\r\npart2\r\n0\r\n\r\n")
    elseif path == "/close-delimited" then
        sock:send("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end")
        return false
    elseif path == "/cut" then
        sock:send("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")
        return false
    elseif path == "/slow" then
        tendril.sleep(tonumber(q.s or 3))
        send(sock, 200, "slow")
    elseif path == "/redirect" then
        local n = tonumber(q.n or 1)
        if n == 0 then
            send(sock, 200, "landed " .. method)
        else
            send(sock, tonumber(q.code or 302), "", { Location = "/redirect?n=" .. (n - 1) })
        end
    elseif path == "/big" then
        send(sock, 200, string.rep("b", 5 * 1024 * 1024))
    else
        send(sock, 404, "no such path")
    end
    return true
end

local port = assert(tcp.listen("127.0.0.1", 0, function(sock)
    _M.connections = _M.connections + 1
    local served, idle = 0, 5
    while true do
        local method, path, q, headers, body = read_request(sock, idle)
        if not method then
            break
        end
        idle = tonumber(q.idle) or _M.IDLE
        -- A stale keep-alive connection: closed as the next request arrives.
        if path == "/once" and served > 0 then
            break
        end
        served = served + 1
        if not answer(sock, method, path, q, headers, body) then
            break
        end
    end
    sock:close()
end))

_M.port = port
_M.url = "http://127.0.0.1:" .. port

return _M
