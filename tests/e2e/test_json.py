"""req:json() and res:json() through the real server: good, bad, empty and
too large bodies, statuses, and [] / {} surviving an echo."""
import json

from harness import ServerTestCase, connect, get, main, raw, request, Reader

APP = r'''
local json = require "tendril.json"
return function(req, res)
    local p = req.path
    if p == "/echo" then
        local v, err = req:json()
        if v == nil then
            return err:find("^invalid JSON") and 400 or 499, nil, err
        end
        return res:json(v)
    elseif p == "/twice" then
        -- Decoded once: the second call gives the same table.
        local a, b = req:json(), req:json()
        return res:json({ same = rawequal(a, b) })
    elseif p == "/created" then
        return res:json({ id = 7, tags = json.array(), meta = {}, none = json.null }, 201)
    elseif p == "/typed" then
        res:header("Content-Type", "application/problem+json")
        return res:json({ title = "nope" }, 422)
    elseif p == "/unencodable" then
        -- Not a tail call, so that the error can name this line.
        res:json({ f = print })
    elseif p == "/bad-status" then
        res:json({}, 99)
    elseif p == "/after-finish" then
        res:json({ first = true })
        res:json({ second = true })
    elseif p == "/keys" then
        local v = assert(req:json())
        local n = 0
        for _ in pairs(v) do n = n + 1 end
        return string.format("keys=%d is_array=%s", n, tostring(json.is_array(v)))
    end
    return 404, nil, "not found"
end
'''


def post(port, target, body, headers=None):
    r, rd = request(port, "POST", target, headers=headers, body=body)
    rd.sock.close()
    return r


class JsonTest(ServerTestCase):
    APP = APP
    ARGS = ["--max-body-bytes", "4096"]

    def test_echo_round_trips_a_document(self):
        doc = {"name": "café ☕", "n": 1.5, "ok": True, "no": False, "nothing": None,
               "list": [1, "two", [3, [4]], {"five": 5}], "obj": {"a": {"b": "c"}}}
        r = post(self.port, "/echo", json.dumps(doc).encode(), {"Content-Type": "application/json"})
        self.assertEqual(r.status, 200)
        self.assertEqual(r.header("content-type"), "application/json")
        self.assertEqual(json.loads(r.body), doc)

    def test_empty_array_and_object_survive_an_echo(self):
        for text in [b"[]", b"{}", b'{"a":[],"b":{}}', b"[[],{},[[]],[{}]]", b'{"a":{"b":[]},"c":[{}]}']:
            r = post(self.port, "/echo", text)
            self.assertEqual(r.status, 200, r.body)
            self.assertEqual(json.loads(r.body), json.loads(text))
            self.assertEqual(r.body.count(b"[]"), text.count(b"[]"), r.body)
            self.assertEqual(r.body.count(b"{}"), text.count(b"{}"), r.body)

    def test_any_content_type_is_decoded(self):
        r = post(self.port, "/echo", b'{"a":1}', {"Content-Type": "application/x-www-form-urlencoded"})
        self.assertEqual((r.status, json.loads(r.body)), (200, {"a": 1}))

    def test_bad_json_is_nil_err_with_the_position(self):
        r = post(self.port, "/echo", b'{"a":1,')
        self.assertEqual(r.status, 400)
        self.assertEqual(r.body, b"invalid JSON: Expected object key string but found T_END at character 8")
        r = post(self.port, "/echo", b'{"a": NaN}')
        self.assertEqual(r.status, 400)
        self.assertIn(b"at character 7", r.body)

    def test_empty_body(self):
        r = post(self.port, "/echo", b"")
        self.assertEqual((r.status, r.body), (400, b"invalid JSON: empty body"))
        r = get(self.port, "/echo")
        self.assertEqual((r.status, r.body), (400, b"invalid JSON: empty body"))

    def test_too_large_body(self):
        # Announced: the server answers 413 before the handler reads.
        r = post(self.port, "/echo", b"[" + b"1," * 3000 + b"1]")
        self.assertEqual(r.status, 413)
        # Chunked: the body error reaches the handler, or the server cuts it.
        chunk = b"%x\r\n%s\r\n" % (3000, b" " * 3000)
        out = raw(self.port, b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                  + chunk * 2 + b"0\r\n\r\n")
        status = int(out.split(b" ", 2)[1])
        self.assertIn(status, (413, 499), out)
        if status == 499:
            self.assertTrue(out.endswith(b"too large"), out)

    def test_decoded_once(self):
        r = post(self.port, "/twice", b'{"x":[1]}')
        self.assertEqual(json.loads(r.body), {"same": True})

    def test_status_markers_and_null(self):
        r = get(self.port, "/created")
        self.assertEqual(r.status, 201)
        self.assertEqual(r.header("content-type"), "application/json")
        self.assertEqual(json.loads(r.body), {"id": 7, "tags": [], "meta": {}, "none": None})
        self.assertIn(b'"tags":[]', r.body)
        self.assertIn(b'"meta":{}', r.body)

    def test_own_content_type_is_kept(self):
        r = get(self.port, "/typed")
        self.assertEqual((r.status, r.header("content-type")), (422, "application/problem+json"))
        self.assertEqual(json.loads(r.body), {"title": "nope"})

    def test_misuse_raises_at_the_callers_line(self):
        for target, words in [("/unencodable", b"res:json: Cannot serialise function"),
                              ("/bad-status", b"res:json: expected an integer status"),
                              ("/after-finish", b"res:json: the response was finished already")]:
            r = get(self.port, target)
            if target != "/after-finish":
                self.assertEqual(r.status, 500, target)
            self.assertIn(words, self.server.stderr().encode(), target)
        err = self.server.stderr()
        self.assertRegex(err, r"app\.lua:\d+: res:json: Cannot serialise function")
        self.assertRegex(err, r"app\.lua:\d+: res:json: expected an integer status from 200 to 599, got 99")

    def test_numeric_keys_stay_an_object(self):
        r = post(self.port, "/keys", b'{"1":"a","2":"b"}')
        self.assertEqual(r.body, b"keys=2 is_array=false")
        r = post(self.port, "/keys", b'["a","b"]')
        self.assertEqual(r.body, b"keys=2 is_array=true")

    def test_keep_alive_after_json(self):
        with connect(self.port) as s:
            rd = Reader(s)
            for i in range(3):
                body = b'{"i":%d}' % i
                s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                r = rd.response()
                self.assertEqual(json.loads(r.body), {"i": i})


if __name__ == "__main__":
    main()
