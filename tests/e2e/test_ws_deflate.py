"""permessage-deflate (RFC 7692): negotiated only when the handler asks
for it and the client offers it, without context takeover either way;
compressed messages both ways, checked over raw frames with zlib."""
import zlib

from harness import ServerTestCase, main
from wsproto import WsClient, frame

OFFER = {"Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits"}


def deflate(data, bits=15):
    c = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -bits)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def inflate(data):
    return zlib.decompressobj(-15).decompress(data + b"\x00\x00\xff\xff")


class DeflateTest(ServerTestCase):
    APP = """
        local websocket = require "tendril.websocket"
        return function(req, res)
            if req.path == "/client" then
                -- tendril's own client, offering compression to this server
                local ws, err = websocket.connect("ws://127.0.0.1:" .. req.query.port .. "/ws", { compress = true })
                if not ws then return "connect: " .. tostring(err) end
                local big = string.rep("tendril client ", 4000)
                ws:send(big)
                local got = ws:recv(10)
                ws:close()
                return tostring(got == big)
            end
            local ws = websocket.upgrade(req, res, {
                compress = req.path ~= "/plain", max_message_bytes = 100000 })
            if not ws then return end
            while true do
                local data, kind = ws:recv()
                if not data then return end
                ws:send(data, kind)
            end
        end
    """

    def echo(self, c, opcode, payload, rsv=4):
        c.send(frame(opcode, payload, rsv=rsv))
        return c.read_frame().fields()

    def test_negotiated_without_context_takeover(self):
        c = WsClient.open(self.port, headers=OFFER)
        self.assertEqual(c.response.status, 101)
        self.assertEqual(c.response.header("sec-websocket-extensions"),
                         "permessage-deflate; server_no_context_takeover; client_no_context_takeover")
        c.close()

    def test_not_negotiated_unless_offered_or_wanted(self):
        c = WsClient.open(self.port)
        self.assertIsNone(c.response.header("sec-websocket-extensions"))
        c.close()
        c = WsClient.open(self.port, path="/plain", headers=OFFER)
        self.assertIsNone(c.response.header("sec-websocket-extensions"))
        # Without the extension, RSV1 is a protocol error.
        c.send(frame(0x1, deflate(b"hello"), rsv=4))
        self.assertEqual(c.read_close(), 1002)
        c.close()

    def test_offers_it_cannot_honour_are_declined(self):
        for offer, want in [
            ("permessage-deflate; server_max_window_bits=8", None),  # zlib has no 8-bit window
            ("permessage-deflate; unknown_param", None),
            ("permessage-deflate; server_no_context_takeover; server_no_context_takeover", None),
            ("x-webkit-deflate-frame, permessage-deflate; server_max_window_bits=10",
             "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
             "server_max_window_bits=10"),
        ]:
            c = WsClient.open(self.port, headers={"Sec-WebSocket-Extensions": offer})
            self.assertEqual(c.response.status, 101)
            self.assertEqual(c.response.header("sec-websocket-extensions"), want, offer)
            c.close()

    def test_compressed_both_ways(self):
        c = WsClient.open(self.port, headers=OFFER)
        text = ("a compressible line of text. " * 2000).encode()
        fin, rsv, op, payload = self.echo(c, 0x1, deflate(text))
        self.assertEqual((fin, rsv, op), (True, 4, 0x1))
        self.assertLess(len(payload), len(text) // 10)
        self.assertEqual(inflate(payload), text)
        # Each message stands alone: the same again decodes with a fresh
        # inflater (no context carried over).
        fin, rsv, op, payload2 = self.echo(c, 0x2, deflate(text))
        self.assertEqual((rsv, op), (4, 0x2))
        self.assertEqual(inflate(payload2), text)
        # Short or incompressible messages go as they are.
        self.assertEqual(self.echo(c, 0x1, deflate(b"hi")), (True, 0, 0x1, b"hi"))
        self.assertEqual(self.echo(c, 0x2, b"raw bytes", rsv=0), (True, 0, 0x2, b"raw bytes"))
        c.close()

    def test_fragmented_compressed_message(self):
        c = WsClient.open(self.port, headers=OFFER)
        text = ("fragmented " * 500).encode()
        z = deflate(text)
        c.send(frame(0x1, z[:10], fin=False, rsv=4) + frame(0x9, b"p") + frame(0x0, z[10:20], fin=False)
               + frame(0x0, z[20:]))
        self.assertEqual(c.read_frame().fields(), (True, 0, 0xA, b"p"))
        fin, rsv, op, payload = c.read_frame().fields()
        self.assertEqual(inflate(payload), text)
        c.close()

    def test_rsv1_on_a_continuation_is_a_protocol_error(self):
        c = WsClient.open(self.port, headers=OFFER)
        z = deflate(b"x" * 300)
        c.send(frame(0x1, z[:5], fin=False, rsv=4) + frame(0x0, z[5:], rsv=4))
        self.assertEqual(c.read_close(), 1002)
        c.close()

    def test_invalid_compressed_data_is_1007(self):
        c = WsClient.open(self.port, headers=OFFER)
        c.send(frame(0x1, b"\xff\xff\xff\xff garbage", rsv=4))
        self.assertEqual(c.read_close(), 1007)
        c.close()

    def test_invalid_utf8_after_inflating_is_1007(self):
        c = WsClient.open(self.port, headers=OFFER)
        c.send(frame(0x1, deflate(b"ok \xc3\x28 not utf-8" * 10), rsv=4))
        self.assertEqual(c.read_close(), 1007)
        c.close()

    def test_a_bomb_stops_at_max_message_bytes(self):
        c = WsClient.open(self.port, headers=OFFER)
        bomb = deflate(b"\0" * 5000000)  # 5 MB of zeros in a few KB
        self.assertLess(len(bomb), 10000)
        c.send(frame(0x2, bomb, rsv=4))
        self.assertEqual(c.read_close(), 1009)
        c.close()

    def test_tendrils_client_compresses_too(self):
        from harness import get
        self.assertEqual(get(self.port, "/client?port=%d" % self.port).body, b"true")

    def test_a_final_block_is_accepted(self):
        c = WsClient.open(self.port, headers=OFFER)
        z = zlib.compressobj(6, zlib.DEFLATED, -15)
        data = z.compress(b"final block " * 20) + z.flush(zlib.Z_FINISH)
        fin, rsv, op, payload = self.echo(c, 0x1, data)
        self.assertEqual(inflate(payload), b"final block " * 20)
        c.close()


if __name__ == "__main__":
    main()
