-- Files, read and written on libuv's thread pool: local fs = require "tendril.fs"
local core = require "tendril.core"

local type, error = type, error
local find = string.find

local _M = {}

local function check_path(fname, path)
    if type(path) ~= "string" then
        error(fname .. ": expected a path, got " .. type(path), 3)
    end
    -- C would stop at the NUL: another file than the one named.
    if find(path, "\0", 1, true) then
        error(fname .. ": the path holds a NUL byte", 3)
    end
end

--- The whole file, or nil, err.
function _M.read(path)
    check_path("fs.read", path)
    return core.fs_read(path)
end

local function check_data(fname, data)
    if type(data) ~= "string" then
        error(fname .. ": expected the data as a string, got " .. type(data), 3)
    end
end

--- Writes (replaces) the file: true, or nil, err.
function _M.write(path, data)
    check_path("fs.write", path)
    check_data("fs.write", data)
    return core.fs_write(path, data)
end

--- Adds data at the end of the file (made if missing): true, or nil, err.
function _M.append(path, data)
    check_path("fs.append", path)
    check_data("fs.append", data)
    return core.fs_append(path, data)
end

--- Makes the directory (its parent must exist; one there already is
--- fine): true, or nil, err.
function _M.mkdir(path)
    check_path("fs.mkdir", path)
    return core.fs_mkdir(path)
end

--- { size =, mtime =, type = "file" | "directory" | "other" }, or nil, err.
function _M.stat(path)
    check_path("fs.stat", path)
    return core.fs_stat(path)
end

return _M
