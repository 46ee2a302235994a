/* The WebSocket codec: headers (every length form, partial input, each
 * rule a receiver enforces), masking at any offset, the header writer
 * against the parser, UTF-8 (valid and invalid sequences, split at every
 * byte) and the RFC's accept-key example. */
#include "check.h"
#include "ws.h"

#include <stdlib.h>

static const td_ws_rules server = {.max_payload = 1 << 20, .rsv_allowed = 0, .want_masked = 1};
static const td_ws_rules client = {.max_payload = UINT64_MAX >> 1, .rsv_allowed = 0, .want_masked = 0};

static int parse(const uint8_t *p, size_t n, const td_ws_rules *r, td_ws_frame *f) {
    return td_ws_parse_header(p, n, r, f);
}

static void test_headers(void) {
    td_ws_frame f;
    /* RFC 6455 5.7: a masked "Hello" from a client. */
    uint8_t hello[] = {0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58};
    CHECK_EQ_INT(parse(hello, sizeof hello, &server, &f), 6);
    CHECK_EQ_INT(f.fin, 1);
    CHECK_EQ_INT(f.opcode, TD_WS_TEXT);
    CHECK_EQ_INT(f.len, 5);
    td_ws_unmask(hello + 6, 5, f.mask, 0);
    CHECK_EQ_MEM(hello + 6, 5, "Hello");
    /* Every prefix of a header is "more, please". */
    for (size_t n = 0; n < 6; n++)
        CHECK_EQ_INT(parse(hello, n, &server, &f), 0);
    /* The server's unmasked "Hello" is refused by a server, taken by a client. */
    uint8_t plain[] = {0x81, 0x05, 'H', 'e', 'l', 'l', 'o'};
    CHECK_EQ_INT(parse(plain, sizeof plain, &server, &f), -TD_WS_PROTOCOL);
    CHECK_EQ_INT(parse(plain, sizeof plain, &client, &f), 2);
    /* A masked frame to a client is refused. */
    CHECK_EQ_INT(parse(hello, sizeof hello, &client, &f), -TD_WS_PROTOCOL);

    /* 16- and 64-bit lengths, written and read back, masked and not. */
    uint64_t lens[] = {0, 1, 125, 126, 127, 65535, 65536, 1 << 20, (uint64_t)1 << 40};
    uint8_t mask[4] = {1, 2, 3, 4}, h[TD_WS_MAX_HEADER];
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        size_t n = td_ws_write_header(h, 1, 0, TD_WS_BINARY, lens[i], NULL);
        CHECK_EQ_INT(n, lens[i] < 126 ? 2 : lens[i] <= 0xFFFF ? 4 : 10);
        CHECK_EQ_INT(parse(h, n, &client, &f), (int)n);
        CHECK_EQ_INT(f.len, lens[i]);
        CHECK_EQ_INT(parse(h, n - 1, &client, &f), 0);
        n = td_ws_write_header(h, 0, 0, TD_WS_TEXT, lens[i], mask);
        td_ws_rules big = server;
        big.max_payload = UINT64_MAX >> 1;
        CHECK_EQ_INT(parse(h, n, &big, &f), (int)n);
        CHECK_EQ_INT(f.len, lens[i]);
        CHECK_EQ_INT(f.fin, 0);
        CHECK_EQ_MEM(f.mask, 4, "\x01\x02\x03\x04");
    }
}

static void test_rules(void) {
    td_ws_frame f;
    uint8_t h[TD_WS_MAX_HEADER];
    uint8_t mask[4] = {9, 9, 9, 9};
    /* Reserved bits: refused unless an extension allows them. */
    size_t n = td_ws_write_header(h, 1, 4, TD_WS_TEXT, 3, mask);
    CHECK_EQ_INT(parse(h, n, &server, &f), -TD_WS_PROTOCOL);
    td_ws_rules deflate = server;
    deflate.rsv_allowed = 4;
    CHECK_EQ_INT(parse(h, n, &deflate, &f), (int)n);
    CHECK_EQ_INT(f.rsv, 4);
    n = td_ws_write_header(h, 1, 2, TD_WS_TEXT, 3, mask);
    CHECK_EQ_INT(parse(h, n, &deflate, &f), -TD_WS_PROTOCOL);
    /* Reserved opcodes. */
    int reserved[] = {3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF};
    for (size_t i = 0; i < sizeof reserved / sizeof reserved[0]; i++) {
        n = td_ws_write_header(h, 1, 0, reserved[i], 0, mask);
        CHECK_EQ_INT(parse(h, n, &server, &f), -TD_WS_PROTOCOL);
    }
    /* Control frames: whole, at most 125 bytes, and no extension's bits. */
    n = td_ws_write_header(h, 0, 0, TD_WS_PING, 3, mask);
    CHECK_EQ_INT(parse(h, n, &server, &f), -TD_WS_PROTOCOL);
    n = td_ws_write_header(h, 1, 0, TD_WS_PING, 126, mask);
    CHECK_EQ_INT(parse(h, n, &server, &f), -TD_WS_PROTOCOL);
    n = td_ws_write_header(h, 1, 0, TD_WS_CLOSE, 125, mask);
    CHECK_EQ_INT(parse(h, n, &server, &f), (int)n);
    n = td_ws_write_header(h, 1, 4, TD_WS_PONG, 0, mask);
    CHECK_EQ_INT(parse(h, n, &deflate, &f), -TD_WS_PROTOCOL);
    /* Lengths not in their minimal form, and the 64-bit length's top bit. */
    uint8_t wide16[] = {0x82, 0xFE, 0x00, 0x7D, 1, 2, 3, 4};
    CHECK_EQ_INT(parse(wide16, sizeof wide16, &server, &f), -TD_WS_PROTOCOL);
    uint8_t wide64[] = {0x82, 0xFF, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 1, 2, 3, 4};
    CHECK_EQ_INT(parse(wide64, sizeof wide64, &server, &f), -TD_WS_PROTOCOL);
    uint8_t top[] = {0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4};
    td_ws_rules any = server;
    any.max_payload = UINT64_MAX;
    CHECK_EQ_INT(parse(top, sizeof top, &any, &f), -TD_WS_PROTOCOL);
    /* Over the limit. */
    n = td_ws_write_header(h, 1, 0, TD_WS_BINARY, (1 << 20) + 1, mask);
    CHECK_EQ_INT(parse(h, n, &server, &f), -TD_WS_TOO_BIG);
    n = td_ws_write_header(h, 1, 0, TD_WS_BINARY, 1 << 20, mask);
    CHECK_EQ_INT(parse(h, n, &server, &f), (int)n);
    /* A reserved opcode is refused from the first byte, before the rest. */
    uint8_t early[] = {0x83};
    CHECK_EQ_INT(parse(early, 1, &server, &f), 0); /* one byte: not yet known */
    uint8_t early2[] = {0x83, 0xFF};
    CHECK_EQ_INT(parse(early2, 2, &server, &f), -TD_WS_PROTOCOL);
}

static void test_unmask_at_any_offset(void) {
    uint8_t mask[4] = {0xA1, 0xB2, 0xC3, 0xD4};
    uint8_t orig[100], whole[100], pieces[100];
    for (int i = 0; i < 100; i++)
        orig[i] = (uint8_t)(i * 37);
    memcpy(whole, orig, 100);
    td_ws_unmask(whole, 100, mask, 0);
    for (int i = 0; i < 100; i++)
        CHECK_EQ_INT(whole[i], orig[i] ^ mask[i % 4]);
    /* The same, in pieces of every size from 1 to 13. */
    for (size_t step = 1; step <= 13; step++) {
        memcpy(pieces, orig, 100);
        for (size_t off = 0; off < 100; off += step)
            td_ws_unmask(pieces + off, off + step > 100 ? 100 - off : step, mask, off);
        CHECK(memcmp(pieces, whole, 100) == 0);
    }
}

static int valid(const char *s, size_t n) {
    td_ws_utf8 u;
    td_ws_utf8_init(&u);
    return td_ws_utf8_feed(&u, (const uint8_t *)s, n) == 0 && td_ws_utf8_complete(&u);
}

/* The same, fed one byte at a time. */
static int valid_bytewise(const char *s, size_t n) {
    td_ws_utf8 u;
    td_ws_utf8_init(&u);
    for (size_t i = 0; i < n; i++)
        if (td_ws_utf8_feed(&u, (const uint8_t *)s + i, 1) != 0)
            return 0;
    return td_ws_utf8_complete(&u);
}

static void test_utf8(void) {
    static const struct {
        const char *s;
        int ok;
    } cases[] = {
        {"", 1},
        {"plain ASCII, longer than eight bytes", 1},
        {"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5", 1}, /* kosme */
        {"\xc2\x80", 1},
        {"\xdf\xbf", 1},
        {"\xe0\xa0\x80", 1},
        {"\xef\xbf\xbf", 1},
        {"\xf0\x90\x80\x80", 1},
        {"\xf4\x8f\xbf\xbf", 1}, /* U+10FFFF */
        {"\xed\x9f\xbf", 1},     /* U+D7FF */
        {"\xee\x80\x80", 1},     /* U+E000 */
        {"\x80", 0},
        {"\xbf", 0},
        {"\xc0\x80", 0}, /* overlong NUL */
        {"\xc1\xbf", 0},
        {"\xe0\x9f\xbf", 0},     /* overlong */
        {"\xf0\x8f\xbf\xbf", 0}, /* overlong */
        {"\xed\xa0\x80", 0},     /* U+D800 */
        {"\xed\xbf\xbf", 0},     /* U+DFFF */
        {"\xf4\x90\x80\x80", 0}, /* U+110000 */
        {"\xf5\x80\x80\x80", 0},
        {"\xff", 0},
        {"\xce\xba\xe1", 0},     /* ends mid-character */
        {"\xe1\x80", 0},
        {"\xc2\x41", 0},         /* a continuation byte missing */
        {"abcdefgh\xc3\xa9", 1},
        {"abcdefg\x80z", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t n = strlen(cases[i].s);
        if (valid(cases[i].s, n) != cases[i].ok || valid_bytewise(cases[i].s, n) != cases[i].ok)
            fprintf(stderr, "utf8 case %zu\n", i);
        CHECK_EQ_INT(valid(cases[i].s, n), cases[i].ok);
        CHECK_EQ_INT(valid_bytewise(cases[i].s, n), cases[i].ok);
    }
    /* Every code point, encoded here independently, is accepted; split
     * anywhere it still is. */
    int bad = 0;
    for (uint32_t cp = 0; cp <= 0x10FFFF; cp += (cp < 0x800 ? 1 : 7)) {
        if (cp >= 0xD800 && cp <= 0xDFFF)
            continue;
        char b[4];
        size_t n;
        if (cp < 0x80)
            b[0] = (char)cp, n = 1;
        else if (cp < 0x800)
            b[0] = (char)(0xC0 | cp >> 6), b[1] = (char)(0x80 | (cp & 0x3F)), n = 2;
        else if (cp < 0x10000)
            b[0] = (char)(0xE0 | cp >> 12), b[1] = (char)(0x80 | (cp >> 6 & 0x3F)),
            b[2] = (char)(0x80 | (cp & 0x3F)), n = 3;
        else
            b[0] = (char)(0xF0 | cp >> 18), b[1] = (char)(0x80 | (cp >> 12 & 0x3F)),
            b[2] = (char)(0x80 | (cp >> 6 & 0x3F)), b[3] = (char)(0x80 | (cp & 0x3F)), n = 4;
        bad += !valid(b, n) || !valid_bytewise(b, n);
    }
    CHECK_EQ_INT(bad, 0);
}

static void test_accept_key(void) {
    char out[29];
    const char key[] = "dGhlIHNhbXBsZSBub25jZQ=="; /* RFC 6455 section 1.3 */
    CHECK_EQ_INT(td_ws_accept_key(key, sizeof key - 1, out), 0);
    CHECK_STR(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}

int main(void) {
    test_headers();
    test_rules();
    test_unmask_at_any_offset();
    test_utf8();
    test_accept_key();
    return check_result("test_ws");
}
