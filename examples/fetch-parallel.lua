-- Fetches every URL given at once, one thread each, and prints what came
-- back in the order given:
--
--   tendril run examples/fetch-parallel.lua https://example.com/ http://127.0.0.1:8080/
--
-- Exits 0 when every fetch answered, 1 when one failed, 2 without URLs.
local tendril = require "tendril"
local http = require "tendril.http"

local urls = { ... }
if #urls == 0 then
    io.stderr:write("usage: tendril run fetch-parallel.lua URL...\n")
    return 2
end

local threads = {}
for i, url in ipairs(urls) do
    threads[i] = tendril.spawn(http.get, url, { timeout = 10 })
end

local failed = 0
for i, thread in ipairs(threads) do
    local _, res, err = thread:join()
    if res then
        print(res.status, #res.body .. " bytes", urls[i])
    else
        failed = failed + 1
        print("failed", err, urls[i])
    end
end
return failed > 0 and 1 or 0
