-- tendril.compress: option checks (the gzip itself runs in C: see
-- tests/e2e/test_compress.py).
local compress = require "tendril.compress"

describe("tendril.compress options", function()
    it("accepts no options and valid ones", function()
        assert.is_function(compress())
        assert.is_function(compress({ min_size = 0, level = 9, types = { "text/*", "application/*+json" } }))
    end)
    it("raises at the caller naming the module", function()
        assert.has_error(function() compress(5) end, "tendril.compress: expected an options table, got number")
        assert.has_error(function() compress({ min_size = -1 }) end,
            "tendril.compress: min_size must be a whole number of bytes, got -1")
        assert.has_error(function() compress({ level = 10 }) end, "tendril.compress: level must be from 1 to 9, got 10")
        assert.has_error(function() compress({ types = "text/*" }) end,
            "tendril.compress: expected types to be a list of media types, got string")
        assert.has_error(function() compress({ types = { "text/*", 3 } }) end,
            "tendril.compress: types[2] is a number, not a string")
    end)
    it("leaves HEAD requests alone", function()
        local mw = compress()
        local res = {}
        local called = false
        mw({ method = "HEAD", headers = {} }, res, function() called = true end)
        assert.is_true(called)
        assert.is_nil(res._filter)
    end)
end)
