"""A throwaway public key infrastructure for the TLS tests, made with the
`openssl` command at test time (no key is ever committed): a CA, server
certificates it signs (ECDSA P-256), a self-signed one, and helpers that
read what a TLS server presents."""
import os
import shutil
import socket
import ssl
import subprocess
import tempfile

from harness import deadline

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"

# Debian's interpreter, which imports Debian's python3-* modules (requests);
# the python3 on PATH may be another one.
SYSTEM_PYTHON = "/usr/bin/python3"

EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def openssl(*args, input=None, timeout=30):
    """Runs openssl; returns the CompletedProcess (text, both streams)."""
    return subprocess.run([OPENSSL] + list(args), input=input, capture_output=True, text=True,
                          timeout=deadline(timeout))


def must(r):
    if r.returncode != 0:
        raise AssertionError("openssl failed (%d): %s %s" % (r.returncode, r.args, r.stderr))
    return r


class Pki:
    """A CA and the certificates of one test class, in a temporary
    directory. Every certificate gets its own serial, so a test can tell
    which one a server presented."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="tendril-pki-")
        self.next_serial = 0x1000
        self.ca_key = self.path("ca.key")
        self.ca = self.path("ca.crt")
        must(openssl("req", "-x509", "-new", *EC, "-keyout", self.ca_key, "-out", self.ca, "-days", "2",
                     "-subj", "/CN=Tendril Test CA",
                     "-addext", "basicConstraints=critical,CA:TRUE",
                     "-addext", "keyUsage=critical,keyCertSign,cRLSign"))
        # The default server certificate, the second name for SNI, a
        # client certificate (also good for serving: it stands for "a
        # valid certificate for another name") and a self-signed one.
        self.localhost = self.issue("localhost", ["DNS:localhost", "IP:127.0.0.1"])
        self.other = self.issue("other.test", ["DNS:other.test"])
        self.client = self.issue("client.test", ["DNS:client.test"], eku="serverAuth,clientAuth")
        self.selfsigned = self.self_signed("localhost", ["DNS:localhost", "IP:127.0.0.1"])

    def path(self, name):
        return os.path.join(self.dir, name)

    def close(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def issue(self, name, sans, eku="serverAuth", tag=None):
        """A certificate for `name` signed by the CA, with a new key and a
        new serial. Returns a Cert."""
        self.next_serial += 1
        serial = self.next_serial
        base = self.path("%s-%x" % (tag or name, serial))
        ext = base + ".ext"
        with open(ext, "w") as f:
            f.write("basicConstraints=critical,CA:FALSE\n"
                    "keyUsage=critical,digitalSignature\n"
                    "extendedKeyUsage=%s\n"
                    "subjectKeyIdentifier=hash\n"
                    "authorityKeyIdentifier=keyid,issuer\n"
                    "subjectAltName=%s\n" % (eku, ",".join(sans)))
        must(openssl("req", "-new", *EC, "-keyout", base + ".key", "-out", base + ".csr", "-subj", "/CN=" + name))
        must(openssl("x509", "-req", "-in", base + ".csr", "-CA", self.ca, "-CAkey", self.ca_key,
                     "-set_serial", str(serial), "-days", "2", "-extfile", ext, "-out", base + ".crt"))
        return Cert(base + ".crt", base + ".key", serial, name)

    def self_signed(self, name, sans):
        self.next_serial += 1
        base = self.path("selfsigned-%x" % self.next_serial)
        must(openssl("req", "-x509", "-new", *EC, "-keyout", base + ".key", "-out", base + ".crt", "-days", "2",
                     "-subj", "/CN=" + name, "-set_serial", str(self.next_serial),
                     "-addext", "subjectAltName=" + ",".join(sans)))
        return Cert(base + ".crt", base + ".key", self.next_serial, name)


class Cert:
    def __init__(self, cert, key, serial, name):
        self.cert = cert
        self.key = key
        self.serial = serial
        self.name = name

    def der(self):
        with open(self.cert) as f:
            return ssl.PEM_cert_to_DER_cert(f.read())

    def install(self, cert_path, key_path):
        """Writes this certificate and key over the given files the way a
        renewal does (a new file renamed over the old one), key first."""
        for src, dst in ((self.key, key_path), (self.cert, cert_path)):
            tmp = dst + ".new"
            shutil.copyfile(src, tmp)
            os.rename(tmp, dst)


def client_context(ca=None, verify=True, alpn=None, version=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if verify:
        ctx.load_verify_locations(ca)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if version:
        ctx.minimum_version = ctx.maximum_version = version
    return ctx


def tls_connect(port, server_name="localhost", ca=None, verify=True, alpn=None, version=None, timeout=10):
    """A TLS connection to 127.0.0.1:port made by Python's ssl module.
    server_name is sent as SNI (an IP address is not) and verified."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=deadline(timeout))
    try:
        return client_context(ca, verify, alpn, version).wrap_socket(raw, server_hostname=server_name)
    except BaseException:
        raw.close()
        raise


def peer_der(port, server_name=None, timeout=10):
    """The DER of the certificate the server presents for server_name
    (None: no SNI), without verifying it."""
    with tls_connect(port, server_name, verify=False, timeout=timeout) as s:
        return s.getpeercert(binary_form=True)


def serial_of_der(der):
    r = must(subprocess.run([OPENSSL, "x509", "-inform", "DER", "-noout", "-serial"], input=der,
                            capture_output=True, timeout=deadline(30)))
    return int(r.stdout.decode().strip().split("=", 1)[1], 16)


def peer_serial(port, server_name=None, timeout=10):
    return serial_of_der(peer_der(port, server_name, timeout))
