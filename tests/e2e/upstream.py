"""A scriptable HTTP/1.1 upstream for the client tests: it counts the
connections it accepts and misbehaves on purpose (close-delimited bodies,
bodies cut short, slow answers, stale keep-alive connections)."""
import socket
import socketserver
import threading
import time
from urllib.parse import parse_qs, urlsplit


class Upstream:
    def __init__(self):
        self.connections = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                with outer.lock:
                    outer.connections += 1
                outer._serve(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True
            request_queue_size = 256

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = "http://127.0.0.1:%d" % self.port
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def _read_request(self, sock, buf):
        while b"\r\n\r\n" not in buf:
            b = sock.recv(65536)
            if not b:
                return None, buf
            buf += b
        head, buf = buf.split(b"\r\n\r\n", 1)
        lines = head.decode().split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
        n = int(headers.get("content-length", "0"))
        while len(buf) < n:
            b = sock.recv(65536)
            if not b:
                break
            buf += b
        body, buf = buf[:n], buf[n:]
        return (method, target, headers, body), buf

    def _serve(self, sock):
        buf = b""
        served = 0
        try:
            while True:
                req, buf = self._read_request(sock, buf)
                if req is None:
                    return
                method, target, headers, body = req
                u = urlsplit(target)
                q = {k: v[0] for k, v in parse_qs(u.query).items()}
                path = u.path
                if path == "/once" and served > 0:
                    return  # a stale keep-alive connection: closed as the request arrives
                served += 1
                if not self._answer(sock, method, path, q, headers, body):
                    return
        except OSError:
            return
        finally:
            sock.close()

    @staticmethod
    def _send(sock, status, body=b"", headers=()):
        head = "HTTP/1.1 %d X\r\n" % status
        head += "".join("%s: %s\r\n" % h for h in headers)
        sock.sendall(head.encode() + b"Content-Length: %d\r\n\r\n" % len(body) + body)

    def _answer(self, sock, method, path, q, headers, body):
        if path in ("/hello", "/once"):
            self._send(sock, 200, b"hello from upstream")
        elif path == "/echo":
            info = "%s %s %s" % (method, headers.get("x-test", "-"), body.decode())
            self._send(sock, 200, info.encode(), [("X-Method", method)])
        elif path == "/count":
            self._send(sock, 200, str(self.connections).encode())
        elif path == "/chunked":
            sock.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"5\r\npart1\r\n5\r\npart2\r\n0\r\n\r\n")
        elif path == "/close-delimited":
            sock.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end")
            return False
        elif path == "/cut":
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")
            return False
        elif path == "/slow":
            time.sleep(float(q.get("s", "3")))
            self._send(sock, 200, b"slow")
        elif path == "/redirect":
            n = int(q.get("n", "1"))
            if n == 0:
                self._send(sock, 200, ("landed " + method).encode())
            else:
                self._send(sock, int(q.get("code", "302")), b"", [("Location", "/redirect?n=%d" % (n - 1))])
        elif path == "/location":
            self._send(sock, 200, b"see header", [("Location", "http://example.test/next")])
        elif path == "/big":
            self._send(sock, 200, b"b" * (5 * 1024 * 1024))
        else:
            self._send(sock, 404, b"no such path")
        return True
