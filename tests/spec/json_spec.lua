-- tendril.json: cjson with array marks, so `[]` and `{}` survive.
local json = require "tendril.json"

local function round_trip(s)
    local v, err = json.decode(s)
    assert(v ~= nil, err)
    return json.encode(v)
end

describe("tendril.json", function()
    describe("decode", function()
        it("decodes values of every type", function()
            assert.are.same({ a = 1, b = "x", c = true, d = false }, json.decode('{"a":1,"b":"x","c":true,"d":false}'))
            assert.are.equal(1.5, json.decode("1.5"))
            assert.are.equal("s", json.decode('"s"'))
            assert.are.equal(false, json.decode("false"))
        end)

        it("gives null as json.null, so arrays keep their length", function()
            local v = json.decode("[1,null,3]")
            assert.are.equal(3, #v)
            assert.are.equal(json.null, v[2])
            assert.are.equal(json.null, json.decode("null"))
            assert.are.equal(json.null, json.decode('{"a":null}').a)
        end)

        it("marks arrays, empty or not, nested or not", function()
            local v = json.decode('{"a":[],"b":{},"c":[1,[],[[]],{"d":[ ]}]}')
            assert.is_true(json.is_array(v.a))
            assert.is_nil(next(v.a))
            assert.is_false(json.is_array(v.b))
            assert.is_false(json.is_array(v))
            assert.is_true(json.is_array(v.c))
            assert.is_true(json.is_array(v.c[2]))
            assert.is_true(json.is_array(v.c[3][1]))
            assert.is_true(json.is_array(v.c[4].d))
            assert.is_true(json.is_array(json.decode("[]")))
            assert.is_true(json.is_array(json.decode(" [ \n\t] ")))
        end)

        it("leaves brackets inside strings alone", function()
            local v = json.decode('["[]", "\\"[]", "a\\\\", [], "[ ]"]')
            assert.are.same({ "[]", '"[]', "a\\", {}, "[ ]" }, v)
            assert.is_true(json.is_array(v[4]))
            assert.are.same({ k = "[]" }, json.decode('{"k":"[]"}'))
        end)

        it("keeps object keys that look like numbers as strings", function()
            local v = json.decode('{"1":"a","2":[]}')
            assert.are.equal("a", v["1"])
            assert.is_false(json.is_array(v))
            assert.is_true(json.is_array(v["2"]))
        end)

        it("decodes unicode escapes and raw UTF-8", function()
            assert.are.equal("caf\195\169 \240\159\152\128", json.decode('"caf\\u00e9 \\ud83d\\ude00"'))
            assert.are.equal("caf\195\169", json.decode('"caf\195\169"'))
        end)

        it("returns nil and the position on invalid JSON", function()
            local v, err = json.decode("[1,")
            assert.is_nil(v)
            assert.are.equal("Expected value but found T_END at character 4", err)
            v, err = json.decode("")
            assert.is_nil(v)
            assert.matches("at character 1", err)
            assert.is_nil((json.decode('{"a":1} x')))
            assert.is_nil((json.decode("{[]:1}"))) -- an empty array is no key
            assert.matches("at character 2", select(2, json.decode("{[]:1}")))
            assert.is_nil((json.decode('["a", [] ')))
            assert.is_nil((json.decode('"unterminated [] ')))
            assert.is_nil((json.decode("[\f]")))
        end)

        it("is strict about numbers", function()
            assert.is_nil((json.decode("[NaN]")))
            assert.is_nil((json.decode("Infinity")))
            assert.is_nil((json.decode("0x10")))
        end)

        it("raises on a value that is not a string", function()
            assert.has_error(function() json.decode(12) end, "json.decode: expected a string, got number")
            assert.has_error(function() json.decode(nil) end, "json.decode: expected a string, got nil")
        end)

        it("survives raw sentinel-like bytes in the text", function()
            local s = '["\255A", "\255B", [], {"\255C": []}]'
            local v = assert(json.decode(s))
            assert.are.equal("\255A", v[1])
            assert.are.equal("\255B", v[2])
            assert.is_true(json.is_array(v[3]))
            assert.is_true(json.is_array(v[4]["\255C"]))
            assert.are.equal('["\255A","\255B",[],{"\255C":[]}]', json.encode(v))
        end)
    end)

    describe("encode", function()
        it("encodes empty tables as objects, marked ones as arrays", function()
            assert.are.equal("{}", json.encode({}))
            assert.are.equal("[]", json.encode(json.array({})))
            assert.are.equal("[]", json.encode(json.array()))
            assert.are.equal('{"a":[]}', json.encode({ a = json.array() }))
            assert.are.equal("[[],{},[[]]]", json.encode({ json.array(), {}, { json.array() } }))
        end)

        it("leaves {} inside strings alone", function()
            assert.are.equal('["{}",[],"[\\"\255A\\"]"]', json.encode({ "{}", json.array(), '["\255A"]' }))
            assert.are.equal('{"a":"{}"}', json.encode({ a = "{}" }))
        end)

        it("leaves the marked tables empty afterwards", function()
            local e = json.array()
            json.encode({ e, {} })
            assert.is_nil(next(e))
        end)

        it("encodes json.null as null", function()
            assert.are.equal("[1,null]", json.encode({ 1, json.null }))
        end)

        it("raises naming what cannot be encoded", function()
            assert.has_error(function() json.encode({ f = print }) end,
                "json.encode: Cannot serialise function: type not supported")
            assert.has_error(function() json.encode(0 / 0) end,
                "json.encode: Cannot serialise number: must not be NaN or Inf")
            assert.has_error(function() json.encode({ math.huge }) end,
                "json.encode: Cannot serialise number: must not be NaN or Inf")
            local t = {}
            t.self = t
            assert.has_error(function() json.encode(t) end)
        end)
    end)

    describe("array", function()
        it("returns the table it marks", function()
            local t = { 1, 2 }
            assert.are.equal(t, json.array(t))
            assert.is_true(json.is_array(t))
        end)

        it("raises on a non-table or a table with a metatable", function()
            assert.has_error(function() json.array("x") end, "json.array: expected a table, got string")
            assert.has_error(function() json.array(setmetatable({}, {})) end,
                "json.array: the table has a metatable of its own")
        end)
    end)

    describe("round trips", function()
        it("keep [] and {} apart, nested in both", function()
            for _, s in ipairs({ "[]", "{}", "[[]]", "[{}]", '{"a":[]}', '{"a":{}}', "[[],{},[[],[{}]]]",
                '{"a":{"b":[[]]},"c":[]}', '[1,"x",null,true,[],{"d":[{}]}]' }) do
                local back = round_trip(s)
                -- Objects' key order is Lua's: compare decoded again.
                assert.are.same(json.decode(s), json.decode(back))
                assert.are.equal(#s - select(2, s:gsub("[%[{]", "")), #back - select(2, back:gsub("[%[{]", "")))
                assert.are.equal(select(2, s:gsub("%[%]", "")), select(2, back:gsub("%[%]", "")))
                assert.are.equal(select(2, s:gsub("{}", "")), select(2, back:gsub("{}", "")))
            end
        end)

        it("keep an emptied decoded array an array", function()
            local v = json.decode('{"list":[1,2]}')
            v.list[2], v.list[1] = nil, nil
            assert.are.equal('{"list":[]}', json.encode(v))
        end)

        it("keep a shared empty array in every place it stands", function()
            local e = json.array()
            assert.are.equal("[[],[]]", json.encode({ e, e }))
            assert.are.equal("[[],{},[]]", json.encode({ e, {}, e }))
        end)

        it("keep random documents, marks and all", function()
            -- Same value and same marks, table by table.
            local function same(a, b)
                if type(a) ~= "table" then
                    return a == b
                end
                if type(b) ~= "table" or json.is_array(a) ~= json.is_array(b) then
                    return false
                end
                for k, v in pairs(a) do
                    if not same(v, b[k]) then
                        return false
                    end
                end
                for k in pairs(b) do
                    if a[k] == nil then
                        return false
                    end
                end
                return true
            end
            local strings = { "[]", "{}", "[ ]", '"', "\\", "a[b]c", "", "\255A", "x" }
            local seed = 1
            local function rand(n)
                seed = (seed * 1103515245 + 12345) % 2147483648
                return seed % n + 1
            end
            local function gen(depth)
                local r = rand(depth > 4 and 3 or 6)
                if r == 1 then
                    return strings[rand(#strings)]
                elseif r == 2 then
                    return rand(100) - 50
                elseif r == 3 then
                    return ({ true, false, json.null })[rand(3)]
                elseif r == 4 then
                    local t = json.array()
                    for i = 1, rand(4) - 1 do
                        t[i] = gen(depth + 1)
                    end
                    return t
                end
                local t = {}
                for _ = 1, rand(4) - 1 do
                    t[strings[rand(#strings)] .. rand(9)] = gen(depth + 1)
                end
                return t
            end
            for _ = 1, 2000 do
                local v = gen(1)
                local text = json.encode(v)
                local back, err = json.decode(text)
                assert(back ~= nil, err)
                if not same(v, back) then
                    error("did not survive: " .. text .. " -> " .. json.encode(back))
                end
            end
        end)

        it("keep unicode", function()
            assert.are.equal('["caf\195\169"]', round_trip('["caf\\u00e9"]'))
        end)
    end)
end)
