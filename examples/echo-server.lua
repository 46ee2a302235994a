-- A TCP service beside the HTTP app: a line echo server on port 9100
-- (tcp.listen), and an HTTP handler that talks to it like any client.
--
--   ./scripts/serve examples/echo-server.lua
--   printf 'hi\n' | nc 127.0.0.1 9100
local tcp = require "tendril.tcp"

local ECHO_PORT = tonumber(os.getenv("ECHO_PORT")) or 9100

assert(tcp.listen("127.0.0.1", ECHO_PORT, function(sock)
    while true do
        local line = sock:receive("*l")
        if not line then
            return
        end
        sock:send(line .. "\n")
    end
end))

return function(req)
    local sock, err = tcp.connect("localhost", ECHO_PORT, { timeout = 5 })
    if not sock then
        return 502, nil, err
    end
    sock:send((req.query.say or "hello") .. "\n")
    local line = sock:receive("*l")
    sock:setkeepalive()
    return "echo: " .. tostring(line) .. "\n"
end
