-- tendril.multipart: the incremental parser and whole-body form decoding.
local mp = require "tendril.multipart"

local CT = "multipart/form-data; boundary=XyZ"

local function body(parts, opts)
    opts = opts or {}
    local out = { opts.preamble or "" }
    for _, p in ipairs(parts) do
        out[#out + 1] = "--XyZ\r\n" .. p .. "\r\n"
    end
    out[#out + 1] = "--XyZ--" .. (opts.epilogue or "\r\n")
    return table.concat(out)
end

local function field(name, value)
    return 'Content-Disposition: form-data; name="' .. name .. '"\r\n\r\n' .. value
end

-- Feeds s to a new parser in pieces of `size` bytes; returns the parts as
-- { name =, filename =, data = } and the error, if any.
local function chunked(s, size, boundary)
    local p = mp.new(boundary or "XyZ")
    local parts, cur = {}, nil
    for i = 1, #s, size do
        local evs, err = p:feed(s:sub(i, i + size - 1))
        if not evs then
            return parts, err
        end
        for _, ev in ipairs(evs) do
            if ev.type == "part" then
                cur = { name = ev.name, filename = ev.filename, headers = ev.headers, data = {} }
            elseif ev.type == "data" then
                assert(ev.data ~= "")
                cur.data[#cur.data + 1] = ev.data
            else
                cur.data = table.concat(cur.data)
                parts[#parts + 1] = cur
            end
        end
    end
    local ok, err = p:finish()
    return parts, (not ok) and err or nil
end

describe("multipart.boundary", function()
    it("reads plain and quoted boundaries", function()
        assert.equal("XyZ", mp.boundary("multipart/form-data; boundary=XyZ"))
        assert.equal("a b;c", mp.boundary('multipart/form-data; charset=utf-8; boundary="a b;c"'))
        assert.equal("q\"x", mp.boundary('Multipart/Form-Data;boundary="q\\"x"'))
    end)
    it("refuses other types and missing or long boundaries", function()
        assert.equal("not multipart", select(2, mp.boundary("text/plain")))
        assert.equal("not multipart", select(2, mp.boundary(nil)))
        assert.matches("^bad multipart: no boundary", select(2, mp.boundary("multipart/form-data")))
        assert.matches("^bad multipart", select(2, mp.boundary("multipart/form-data; boundary=" .. ("x"):rep(71))))
    end)
end)

describe("multipart.parse", function()
    it("decodes fields, files and repeated names", function()
        local b = body({
            field("a", "1"),
            field("a", "2"),
            field("empty", ""),
            'Content-Disposition: form-data; name="f"; filename="x y.txt"\r\n'
                .. "Content-Type: text/plain\r\nX-Extra: yes\r\n\r\nfile\r\ndata",
        }, { preamble = "ignored preamble\r\n", epilogue = "\r\nignored epilogue" })
        local form = assert(mp.parse(b, CT))
        assert.same({ "1", "2" }, form.a)
        assert.equal("", form.empty)
        assert.equal("x y.txt", form.f.filename)
        assert.equal("text/plain", form.f.content_type)
        assert.equal("yes", form.f.headers["x-extra"])
        assert.equal("file\r\ndata", form.f.data)
    end)
    it("reads quoted names with escapes and RFC 8187 filenames", function()
        local b = body({
            'Content-Disposition: form-data; name="q\\"n"\r\n\r\nv',
            "content-disposition: form-data; name=t; filename*=UTF-8''%C3%A9t%C3%A9.txt\r\n\r\nd",
        })
        local form = assert(mp.parse(b, CT))
        assert.equal("v", form['q"n'])
        assert.equal("\195\169t\195\169.txt", form.t.filename)
    end)
    it("accepts a body that opens with its boundary and padding after it", function()
        local b = "--XyZ  \r\n" .. field("a", "1") .. "\r\n--XyZ--"
        assert.same({ a = "1" }, assert(mp.parse(b, CT)))
    end)
    it("fails without the final boundary", function()
        local b = "--XyZ\r\n" .. field("a", "1") .. "\r\n"
        local form, err = mp.parse(b, CT)
        assert.is_nil(form)
        assert.equal("bad multipart: the body ends before its final boundary", err)
        assert.equal("bad multipart: no boundary in the body", select(2, mp.parse("hello", CT)))
    end)
    it("fails on a part without a name and on malformed headers", function()
        assert.matches("without a Content%-Disposition name",
            select(2, mp.parse(body({ "Content-Type: text/plain\r\n\r\nx" }), CT)))
        assert.matches("malformed part header", select(2, mp.parse(body({ "garbage\r\n\r\nx" }), CT)))
        assert.matches("ends with something else than CRLF",
            select(2, mp.parse("--XyZjunk\r\n" .. field("a", "1") .. "\r\n--XyZ--", CT)))
    end)
    it("refuses a head larger than 16 KiB", function()
        local b = body({ "X-Big: " .. ("x"):rep(20000) .. "\r\n" .. field("a", "1") })
        assert.matches("headers pass", select(2, mp.parse(b, CT)))
    end)
end)

describe("multipart parser fed in pieces", function()
    local binary = {}
    for i = 0, 255 do
        binary[#binary + 1] = string.char(i)
    end
    -- Binary data holding CR, LF, CRLF, "--", and the boundary without its
    -- CRLF or with only a part of the delimiter.
    local tricky = table.concat(binary) .. "\r\n--XyY\r\n-XyZ\r--XyZ\n--Xy\r\n\r\n--" .. "\r"
    local b = body({
        field("a", "first"),
        'Content-Disposition: form-data; name="bin"; filename="b.bin"\r\n\r\n' .. tricky,
        field("empty", ""),
        field("crlf", "\r\n"),
    })

    it("gives the same parts whatever the piece size", function()
        for _, size in ipairs({ 1, 2, 3, 5, 7, 8, 13, 64, #b }) do
            local parts, err = chunked(b, size)
            assert.is_nil(err)
            assert.equal(4, #parts)
            assert.equal("first", parts[1].data)
            assert.equal("b.bin", parts[2].filename)
            assert.equal(tricky, parts[2].data)
            assert.equal("", parts[3].data)
            assert.equal("\r\n", parts[4].data)
        end
    end)

    it("handles many parts", function()
        local ps = {}
        for i = 1, 500 do
            ps[i] = field("f" .. i, ("v"):rep(i % 17))
        end
        local parts, err = chunked(body(ps), 101)
        assert.is_nil(err)
        assert.equal(500, #parts)
        assert.equal(("v"):rep(499 % 17), parts[499].data)
        local form = assert(mp.parse(body(ps), CT))
        assert.equal(("v"):rep(16), form.f16)
    end)

    it("reads a body of many parts in linear time", function()
        -- 20,000 parts in 2.6 MB: cutting the buffer at each part would
        -- copy about 26 GB.
        local ps = {}
        for i = 1, 20000 do
            ps[i] = field("f", ("x"):rep(80))
        end
        local t0 = os.clock()
        local form = assert(mp.parse(body(ps), CT))
        assert.equal(20000, #form.f)
        assert.is_true(os.clock() - t0 < 2)
    end)

    it("reports a missing final boundary on finish", function()
        local parts, err = chunked("--XyZ\r\n" .. field("a", "1") .. "\r\n--Xy", 3)
        assert.equal(0, #parts)
        assert.equal("bad multipart: the body ends before its final boundary", err)
    end)

    it("keeps failing after an error", function()
        local p = mp.new("XyZ")
        assert.is_nil(p:feed("--XyZ!!\r\n"))
        local evs, err = p:feed("more")
        assert.is_nil(evs)
        assert.matches("^bad multipart", err)
    end)

    it("raises on a missing boundary", function()
        assert.has_error(function() mp.new("") end, "multipart.new: expected a boundary string, got ")
    end)
end)

describe("tendril.multipart.reader", function()
    -- A read function giving s in pieces of `size` bytes, then nil (or
    -- nil, fail_with after the pieces).
    local function reader_of(s, size, fail_with)
        local i = 1
        return mp.reader("XyZ", function()
            if i > #s then
                return nil, fail_with
            end
            local piece = s:sub(i, i + size - 1)
            i = i + size
            return piece
        end)
    end

    local function collect(r)
        local out = {}
        for part, err in r:parts() do
            if not part then
                out.err = err
                break
            end
            local data = {}
            while true do
                local piece, err2 = part:read()
                if not piece then
                    if err2 then
                        out.err = err2
                        return out
                    end
                    break
                end
                data[#data + 1] = piece
            end
            out[#out + 1] = { name = part.name, filename = part.filename, data = table.concat(data) }
        end
        return out
    end

    local b = body({
        field("title", "hello"),
        'Content-Disposition: form-data; name="f"; filename="a.txt"\r\nContent-Type: text/plain\r\n\r\n'
            .. ("\r\n--XyX-ish\r\n"):rep(50),
        field("empty", ""),
    })

    it("gives each part with its data, whatever the piece size", function()
        for _, size in ipairs({ 1, 3, 7, 64, 1000, #b }) do
            local out = collect(reader_of(b, size))
            assert.is_nil(out.err)
            assert.equal(3, #out)
            assert.same({ name = "title", data = "hello" }, out[1])
            assert.equal("a.txt", out[2].filename)
            assert.equal(("\r\n--XyX-ish\r\n"):rep(50), out[2].data)
            assert.equal("", out[3].data)
        end
    end)

    it("gives pieces of at most max bytes", function()
        local r = reader_of(b, 1000)
        local next_part = r:parts()
        next_part() -- title
        local f = next_part()
        local pieces, all = 0, {}
        while true do
            local piece = f:read(7)
            if not piece then break end
            assert.is_true(#piece >= 1 and #piece <= 7)
            pieces = pieces + 1
            all[#all + 1] = piece
        end
        assert.equal(("\r\n--XyX-ish\r\n"):rep(50), table.concat(all))
        assert.is_true(pieces >= math.ceil(#table.concat(all) / 7))
        assert.has_error(function() f:read(0) end, "part:read: expected a number of bytes >= 1, got 0")
    end)

    it("skips what is left of a part when the loop moves on", function()
        local names = {}
        for part in reader_of(b, 5):parts() do
            names[#names + 1] = part.name
            part:read() -- at most one piece, then on
        end
        assert.same({ "title", "f", "empty" }, names)
    end)

    it("ends the loop with false, err once, for a malformed or cut body", function()
        local out = collect(reader_of("--XyZ\r\n" .. field("a", "1"), 4))
        assert.equal("bad multipart: the body ends before its final boundary", out.err)
        out = collect(reader_of("nothing here", 4))
        assert.equal("bad multipart: no boundary in the body", out.err)
        out = collect(reader_of("--XyZ\r\nContent-Type: text/plain\r\n\r\nx\r\n--XyZ--\r\n", 4))
        assert.equal("bad multipart: a part without a Content-Disposition name", out.err)
        local calls = 0
        for part, err in reader_of("--XyZ\r\n" .. field("a", "1"), 4, "timeout"):parts() do
            calls = calls + 1
            if part then
                local piece, rerr = part:read()
                while piece do
                    piece, rerr = part:read()
                end
                assert.equal("timeout", rerr)
            else
                assert.equal("timeout", err)
            end
        end
        assert.equal(2, calls) -- the part, then false, "timeout"; then the loop ends
    end)

    it("raises on a read that is not a function", function()
        assert.has_error(function() mp.reader("XyZ", "nope") end,
            "multipart.reader: expected a read function, got string")
    end)
end)
