-- bench/router.py's app: tendril.router with ROUTES routes, the measured
-- one (/users/:id/posts) among ROUTES - 2 others of the same shape and /.
local router = require("tendril.router").new()
local n = tonumber(os.getenv("ROUTES")) or 10
for i = 1, n - 2 do
    router:get("/svc" .. i .. "/items/:id", function(req) return req.params.id end)
end
router:get("/", function() return "ready" end) -- bench/run.py's wait_ready asks for /
router:get("/users/:id/posts", function(req) return "posts of " .. req.params.id end)
return router
