"""The leak check can fail: with TENDRIL_LEAK_CANARY the sanitizer build
forgets to free memory at teardown, and LeakSanitizer must say so. Only the
sanitizer build registers this test."""
from harness import SANITIZED, Server, TestCase, get, main


class LeakCanaryTest(TestCase):
    def test_forgotten_memory_is_reported(self):
        self.assertTrue(SANITIZED, "the canary needs the sanitizer build")
        srv = Server('return function() return "ok" end\n', env={"TENDRIL_LEAK_CANARY": "1"}).start()
        self.assertEqual(get(srv.port, "/").body, b"ok")
        srv.signal(15)
        code = srv.wait()
        self.assertNotEqual(code, 0)
        self.assertRegex(srv.stderr(), r"ERROR: LeakSanitizer: detected memory leaks")
        with self.assertRaises(AssertionError):
            srv.assert_clean()


if __name__ == "__main__":
    main()
