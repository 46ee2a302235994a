"""The request around a WebSocket: what a handler can still read of its
request after the upgrade, and what ends with it."""
from harness import ServerTestCase, get, main, poll
from wsproto import WsClient, frame


class RequestAfterUpgradeTest(ServerTestCase):
    APP = """
        local websocket = require "tendril.websocket"
        local tendril = require "tendril"
        local seen = tendril.keep("seen")
        return function(req, res)
            if req.path == "/seen" then
                return tostring(seen.text)
            end
            local cookie = req.path == "/early" and req.headers.cookie or nil
            local ws = websocket.upgrade(req, res)
            if not ws then return end
            local ok, err = pcall(function() return req.headers end)
            seen.text = table.concat({ req.method, req.path, req.scheme, tostring(req.remote_addr),
                tostring(cookie), tostring(ok), tostring(err) }, " ")
            ws:send("ready")
            ws:recv()
        end
    """

    def test_connection_fields_stay_and_headers_say_why_not(self):
        c = WsClient.open(self.port, "/late", headers={"Cookie": "a=1"})
        self.assertEqual(c.read_frame().fields(), (True, 0, 0x1, b"ready"))
        text = get(self.port, "/seen").body.decode()
        self.assertRegex(text, r"^GET /late http 127\.0\.0\.1 nil false .*app\.lua:\d+: req\.headers: the "
                               r"request's head is gone after websocket\.upgrade \(read the headers before it\)$")
        c.send(frame(0x8, b"\x03\xe8"))
        self.assertEqual(c.read_close(), 1000)
        c.close()

    def test_headers_read_before_the_upgrade_stay(self):
        c = WsClient.open(self.port, "/early", headers={"Cookie": "a=1"})
        self.assertEqual(c.read_frame().fields(), (True, 0, 0x1, b"ready"))
        self.assertTrue(poll(lambda: "a=1 true" in get(self.port, "/seen").body.decode(), 5))
        c.close()


if __name__ == "__main__":
    main()
