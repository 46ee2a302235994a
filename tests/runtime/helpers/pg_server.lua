-- A PostgreSQL server of the spec's own: initdb in a fresh directory, on a
-- free loopback port, password logins over TCP (SCRAM); as root (CI), it
-- runs as the postgres user, which PostgreSQL requires. Stopped at will.
local tendril = require "tendril"
local tcp = require "tendril.tcp"

local _M = {}
local Server = {}
Server.__index = Server

local function sh(cmd, timeout)
    local r = tendril.run({ "sh", "-c", cmd }, { timeout = timeout or 60 })
    if not r then
        return nil, "timeout"
    end
    if r.status ~= 0 then
        return nil, r.stdout .. r.stderr
    end
    return r.stdout
end

local function bin()
    local out = assert(sh("ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1"))
    return (out:gsub("%s+$", ""))
end

local function as_postgres(cmd)
    local r = tendril.run({ "id", "-u" })
    if r and r.stdout:match("^0") then
        return "runuser -u postgres -- " .. cmd
    end
    return cmd
end

local format_cmd = string.format

local function listening(port)
    local s = tcp.connect("127.0.0.1", port, { timeout = 1 })
    if s then
        s:close()
        return true
    end
    return false
end

function Server:start()
    local cmd = format_cmd("%s/pg_ctl -D %s/data -l %s/log -w -t 30 -o '-p %d -k %s -c listen_addresses=127.0.0.1' "
        .. "start", self.bin, self.dir, self.dir, self.port, self.dir)
    return sh(as_postgres(cmd), 60)
end

function Server:stop()
    return sh(as_postgres(format_cmd("%s/pg_ctl -D %s/data -m fast -w stop", self.bin, self.dir)), 60)
end

function Server:remove()
    self:stop()
    sh("rm -rf " .. self.dir)
end

--- The connection string for user (default: the superuser, postgres).
function Server:url(db)
    return string.format("postgres://postgres:%s@127.0.0.1:%d/%s", self.password, self.port, db or "postgres")
end

--- Starts one on a free port.
function _M.start()
    math.randomseed(math.floor(tendril.now() * 1000) % 2147483647)
    local s = setmetatable({ bin = bin(), password = "pw" .. math.random(1e6, 9e6) }, Server)
    s.dir = assert(sh("mktemp -d /tmp/tendril-pg-XXXXXX")):gsub("%s+$", "")
    assert(sh(string.format("printf '%%s' '%s' > %s/pw && chmod 755 %s && chown -R postgres %s 2>/dev/null; true",
        s.password, s.dir, s.dir, s.dir)))
    assert(sh(as_postgres(string.format("%s/initdb -D %s/data -U postgres --pwfile=%s/pw --auth-local=trust "
        .. "--auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8", s.bin, s.dir, s.dir)), 120))
    -- TLS too (ssl = on; plain connections stay allowed): a certificate
    -- for 127.0.0.1 of its own, server.cert its file.
    s.cert = s.dir .. "/cert.pem"
    assert(sh(as_postgres(string.format("sh -c 'cd %s && openssl req -x509 -newkey rsa:2048 -nodes -keyout "
        .. "data/server.key -out data/server.crt -days 2 -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 "
        .. "2>&1 && chmod 600 data/server.key && cp data/server.crt cert.pem && echo ssl=on >> "
        .. "data/postgresql.conf'", s.dir)), 60))
    for _ = 1, 5 do
        s.port = math.random(20000, 60000)
        if not listening(s.port) then
            local ok, err = s:start()
            if ok then
                return s
            end
            s.err = err
        end
    end
    error("cannot start postgres: " .. tostring(s.err))
end

return _M
