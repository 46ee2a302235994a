-- The smallest app: every request gets "hello world".
return function(req, res)
    return "hello world\n"
end
