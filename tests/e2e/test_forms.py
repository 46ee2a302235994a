"""req:form() through the real server: curl -F uploads (fields and files),
urlencoded forms, repeated names, bad multipart answered 400 by the handler,
other content types, and bodies past --max-body-bytes."""
import json
import os
import subprocess
import tempfile

from harness import ServerTestCase, main, request

APP = r'''
local json = require "tendril.json"
return function(req, res)
    local form, err = req:form()
    if form and req.path == "/raw" then
        res:header("Content-Type", "application/octet-stream")
        return form.f.data
    end
    if not form then
        return err:find("^bad multipart") and 400 or err == "not a form" and 415 or 413, nil, err
    end
    -- Files as { filename, content_type, size, data } for the test to check.
    local out = {}
    for k, v in pairs(form) do
        if type(v) == "table" and v.filename then
            out[k] = { filename = v.filename, content_type = v.content_type or json.null,
                       size = #v.data, x = v.headers["x-note"] or json.null }
        else
            out[k] = v
        end
    end
    out._same = rawequal(form, req:form())
    return res:json(out)
end
'''


def post(port, body, ctype, target="/"):
    r, rd = request(port, "POST", target, headers={"Content-Type": ctype}, body=body)
    rd.sock.close()
    return r


class FormsTest(ServerTestCase):
    APP = APP
    ARGS = ["--max-body-bytes", "65536"]

    def curl(self, *args):
        r = subprocess.run(["curl", "-s", "-w", "\n%{http_code}", "http://127.0.0.1:%d/" % self.port] + list(args),
                           capture_output=True, timeout=20)
        body, _, code = r.stdout.rpartition(b"\n")
        return int(code), body

    def test_curl_fields_and_file(self):
        data = bytes(range(256)) * 40 + b"\r\n--boundary-ish\r\n"
        with tempfile.NamedTemporaryFile(suffix=".bin", delete=False) as f:
            f.write(data)
        try:
            code, body = self.curl("-F", "name=café", "-F", "tag=a", "-F", "tag=b",
                                   "-F", "up=@%s;type=application/octet-stream;filename=data.bin" % f.name)
        finally:
            os.unlink(f.name)
        self.assertEqual(code, 200, body)
        v = json.loads(body)
        self.assertEqual(v["name"], "café")
        self.assertEqual(v["tag"], ["a", "b"])
        self.assertEqual(v["up"]["filename"], "data.bin")
        self.assertEqual(v["up"]["content_type"], "application/octet-stream")
        self.assertEqual(v["up"]["size"], len(data))
        self.assertTrue(v["_same"])

    def test_binary_file_bytes_survive(self):
        payload = b"\x00\r\n--XyY\r\x01--XyZ\xff\r\n-" * 100
        body = (b"--XyZ\r\nContent-Disposition: form-data; name=\"f\"; filename=\"b\"\r\nX-Note: hi\r\n\r\n"
                + payload + b"\r\n--XyZ--\r\n")
        r = post(self.port, body, 'multipart/form-data; boundary="XyZ"', "/raw")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.body, payload)

    def test_urlencoded(self):
        code, body = self.curl("-d", "a=1&a=2&b=x+y%21&c")
        self.assertEqual(code, 200, body)
        v = json.loads(body)
        self.assertEqual(v["a"], ["1", "2"])
        self.assertEqual(v["b"], "x y!")
        self.assertEqual(v["c"], "")
        r = post(self.port, b"k=v", "application/x-www-form-urlencoded; charset=UTF-8")
        self.assertEqual(json.loads(r.body)["k"], "v")

    def test_bad_multipart_is_the_handlers_400(self):
        r = post(self.port, b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n",
                 "multipart/form-data; boundary=XyZ")
        self.assertEqual(r.status, 400)
        self.assertEqual(r.body, b"bad multipart: the body ends before its final boundary")
        r = post(self.port, b"whatever", "multipart/form-data")
        self.assertEqual(r.status, 400)
        self.assertIn(b"no boundary", r.body)

    def test_not_a_form(self):
        r = post(self.port, b"{}", "application/json")
        self.assertEqual((r.status, r.body), (415, b"not a form"))

    def test_too_large(self):
        r, rd = request(self.port, "POST", "/", headers={"Content-Type": "application/x-www-form-urlencoded"},
                        body=b"a=" + b"x" * 70000)
        rd.sock.close()
        self.assertEqual(r.status, 413)


if __name__ == "__main__":
    main()
