"""deploy/: the systemd unit passes systemd-analyze verify (where the
machine has it); the Dockerfile's build steps (deploy/build.sh) build a
binary that serves; the image's runtime packages hold every library the
binary loads and the user is not root. No Docker engine runs here, so the
image itself is not built."""
import os
import re
import shutil
import subprocess
import tempfile

from harness import BIN, SANITIZED, TestCase, deadline, get, main

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
DEPLOY = os.path.join(ROOT, "deploy")


def read(name):
    with open(os.path.join(DEPLOY, name)) as f:
        return f.read()


class DeployTest(TestCase):
    def test_systemd_unit(self):
        unit = read("tendril.service")
        for line in ("Restart=on-failure", "ExecReload=/bin/kill -HUP $MAINPID", "KillSignal=SIGTERM",
                     "LimitNOFILE=65536", "User=tendril"):
            self.assertIn("\n" + line + "\n", unit)
        self.assertIn("systemctl kill -s USR1 tendril", read("logrotate"))
        verify = shutil.which("systemd-analyze")
        if not verify:
            self.skipTest("systemd-analyze is not on this machine")
        # The unit as installed names paths this machine lacks: point them
        # at the built binary and a directory that exists.
        text = unit.replace("/usr/local/bin/tendril", BIN).replace("/srv/app", tempfile.gettempdir())
        text = re.sub(r"(?m)^(User|Group)=.*$", r"\1=root", text)
        d = tempfile.mkdtemp()
        try:
            path = os.path.join(d, "tendril.service")
            with open(path, "w") as f:
                f.write(text)
            r = subprocess.run([verify, "verify", path], capture_output=True, text=True, timeout=deadline(60))
            self.assertEqual((r.returncode, r.stderr.strip()), (0, ""), r.stdout)
        finally:
            shutil.rmtree(d)

    def test_build_script_makes_a_binary_that_serves(self):
        if SANITIZED:
            self.skipTest("deploy/build.sh builds its own Release binary: once, in the plain build's run")
        prefix = tempfile.mkdtemp(prefix="tendril-deploy-")
        try:
            r = subprocess.run([os.path.join(DEPLOY, "build.sh"), prefix], capture_output=True, text=True,
                               timeout=deadline(900))
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            binary = os.path.join(prefix, "bin", "tendril")
            self.assertTrue(os.access(binary, os.X_OK))
            out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
            self.assertRegex(out.stdout, r"^tendril \S+")
            p = subprocess.Popen([binary, "serve", os.path.join(ROOT, "examples", "hello.lua"), "--port", "0"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                line = p.stdout.readline()
                port = int(re.search(r":(\d+)\n$", line).group(1))
                self.assertEqual(get(port, "/").body, b"hello world\n")
            finally:
                p.terminate()
                self.assertEqual(p.wait(timeout=deadline(15)), 0)
                p.stdout.close()
                p.stderr.close()
        finally:
            shutil.rmtree(prefix)

    def test_dockerfile(self):
        text = read("Dockerfile")
        stages = re.split(r"(?m)^FROM ", text)[1:]
        self.assertEqual([s.split()[0] for s in stages], ["debian:12", "debian:12-slim"])
        build, image = stages
        self.assertIn("RUN /src/deploy/build.sh /out", build)
        self.assertIn("COPY --from=build /out/bin/tendril /usr/local/bin/tendril", image)
        user = re.search(r"(?m)^USER (\S+)$", image)
        self.assertTrue(user and user.group(1) not in ("root", "0"), "the image runs as root")
        packages = set(re.search(r"apt-get install -y --no-install-recommends\s*\\\n\s*([^\\]*)\\", image)
                       .group(1).split())
        # Every library the binary loads, by the Debian package that holds it.
        ldd = subprocess.run(["ldd", BIN], capture_output=True, text=True, timeout=30).stdout
        needed = set()
        for lib in re.findall(r"=> (\S+)", ldd):
            if re.search(r"/(libc|libm|libgcc_s|ld-linux[^/]*)\.so", lib):
                continue  # in every Debian image
            if SANITIZED and re.search(r"/(libasan|libubsan|liblsan|libstdc\+\+)\.so", lib):
                continue  # the sanitizers' runtime (and what it loads): not in the image's Release build
            for candidate in (lib, os.path.realpath(lib), "/lib/x86_64-linux-gnu/" + os.path.basename(lib)):
                owner = subprocess.run(["dpkg", "-S", candidate], capture_output=True, text=True)
                if owner.returncode == 0:
                    needed.add(owner.stdout.split(":")[0])
                    break
            else:
                self.fail("no Debian package holds %s" % lib)
        needed |= {"lua-cjson", "media-types", "ca-certificates"}
        # What apt installs with the packages named (their Depends, as this
        # machine's dpkg knows them) is in the image too.
        installed = set(packages)
        todo = list(packages)
        while todo:
            deps = subprocess.run(["dpkg-query", "-W", "-f", "${Depends}, ${Pre-Depends}", todo.pop()],
                                  capture_output=True, text=True).stdout
            for alt in deps.split(","):
                name = alt.split("|")[0].strip().split(" ")[0].split(":")[0]
                if name and name not in installed:
                    installed.add(name)
                    todo.append(name)
        self.assertLessEqual(needed, installed, "missing from the image: %s" % sorted(needed - installed))


if __name__ == "__main__":
    main()
