-- tendril run: the script's chunk, ready for the task app.c runs it in.
-- arg is set as luajit sets it: arg[0] the script ("-e" for code given on
-- the command line), arg[1..n] its arguments, which are also the chunk's
-- "...".
local loadfile, loadstring, unpack = loadfile, loadstring, unpack

local _M = {}

--- The function the task runs, or nil, err when the script does not load.
function _M.prepare(path, code, args)
    local chunk, err
    if code then
        chunk, err = loadstring(code, "=(command line)")
    else
        chunk, err = loadfile(path)
    end
    if not chunk then
        return nil, err
    end
    local a = { [0] = path or "-e" }
    for i = 1, #args do
        a[i] = args[i]
    end
    _G.arg = a
    return function()
        return chunk(unpack(args, 1, #args))
    end
end

return _M
