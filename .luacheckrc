std = "luajit"
max_line_length = 120
files["tests/spec"] = { std = "+busted" }
files["tests/runtime"] = { std = "+busted" }
-- A handler's (req, res) is its contract, used or not.
files["examples"] = { ignore = { "212/req", "212/res" } }
files["tests/e2e"] = { ignore = { "212/req", "212/res" } }
