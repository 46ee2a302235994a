-- A redis-server of the spec's own: on a free loopback port, in a fresh
-- directory, saving nothing; stopped (and restarted on its port) at will.
local tendril = require "tendril"
local tcp = require "tendril.tcp"

local _M = {}
local Server = {}
Server.__index = Server

local function pong(port, tls)
    local s = tcp.connect("127.0.0.1", port, { timeout = 1, tls = tls, verify = false })
    if not s then
        return false
    end
    s:send("PING\r\n")
    local line = s:receive("*l")
    s:close()
    return line == "+PONG" or (line and line:find("NOAUTH", 1, true) ~= nil)
end

local wait_until = require("spec_util").wait_until

function Server:start()
    local args = { "redis-server", "--port", tostring(self.port), "--bind", "127.0.0.1", "--daemonize", "yes",
        "--pidfile", self.dir .. "/redis.pid", "--dir", self.dir, "--logfile", self.dir .. "/redis.log",
        "--save", "", "--appendonly", "no" }
    if self.password then
        args[#args + 1] = "--requirepass"
        args[#args + 1] = self.password
    end
    if self.cert then
        -- TLS only, on the port; clients need no certificate.
        args[3] = "0"
        for _, a in ipairs({ "--tls-port", tostring(self.port), "--tls-cert-file", self.cert, "--tls-key-file",
            self.dir .. "/key.pem", "--tls-auth-clients", "no" }) do
            args[#args + 1] = a
        end
    end
    local r, err = tendril.run(args, { timeout = 10 })
    if not r or r.status ~= 0 then
        return nil, "redis-server: " .. tostring(err or r.stderr)
    end
    if not wait_until(function() return pong(self.port, self.cert ~= nil) end, 10) then
        return nil, "redis-server did not answer on port " .. self.port
    end
    return true
end

--- Stops it (SIGTERM by its pid file) and waits until the port is free.
function Server:stop()
    local r = tendril.run({ "sh", "-c", "kill $(cat '" .. self.dir .. "/redis.pid')" }, { timeout = 5 })
    wait_until(function() return not pong(self.port, self.cert ~= nil) end, 10)
    return r and r.status == 0
end

function Server:url(db)
    return "redis://" .. (self.password and (":" .. self.password .. "@") or "") .. "127.0.0.1:" .. self.port
        .. (db and ("/" .. db) or "")
end

--- Stops it for good and removes its directory.
function Server:remove()
    self:stop()
    tendril.run({ "rm", "-rf", self.dir })
end

--- Starts one: opts.password; opts.tls (TLS only, with a certificate of
--- its own for 127.0.0.1 made now: server.cert is its file). Tries a few
--- ports.
function _M.start(opts)
    math.randomseed(math.floor(tendril.now() * 1000) % 2147483647)
    opts = opts or {}
    local dir = assert(tendril.run({ "mktemp", "-d", "/tmp/tendril-redis-XXXXXX" })).stdout:gsub("%s+$", "")
    local cert
    if opts.tls then
        cert = dir .. "/cert.pem"
        local r = assert(tendril.run({ "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
            dir .. "/key.pem", "-out", cert, "-days", "2", "-subj", "/CN=127.0.0.1", "-addext",
            "subjectAltName=IP:127.0.0.1" }, { timeout = 60 }))
        assert(r.status == 0, r.stderr)
    end
    local last
    for _ = 1, 5 do
        local port = math.random(20000, 60000)
        if not pong(port) then
            local s = setmetatable({ port = port, dir = dir, password = opts.password, cert = cert }, Server)
            local ok, err = s:start()
            if ok then
                return s
            end
            last = err
        end
    end
    error("cannot start redis-server: " .. tostring(last))
end

return _M
