/* libFuzzer harness: the WebSocket codec (core/ws.c), held to properties
 * and to a reference written here in another way:
 * - UTF-8: td_ws_utf8 agrees with a decoder that reads each character
 *   whole (its length from the lead byte's high bits, then its code point,
 *   then the range checks of RFC 3629), fed at once and cut anywhere;
 * - headers: the first control byte picks the rules (server or client,
 *   RSV1 allowed or not, a small or no payload limit); a header the parser
 *   takes is exactly what the writer makes of the fields it read (the
 *   minimal length encoding is enforced), its fields obey every rule, and
 *   a prefix of it is "more, please"; a refused one is refused for a
 *   reason the reference finds too;
 * - unmasking in pieces at any offset equals unmasking at once, and twice
 *   gives the input back. */
#include <stdlib.h>

#include "fuzz.h"
#include "fuzz_ref.h"
#include "ws.h"


static void check_utf8(const uint8_t *p, size_t n, uint32_t seed) {
    int want = fuzz_ref_utf8(p, n);
    td_ws_utf8 u;
    td_ws_utf8_init(&u);
    int got = td_ws_utf8_feed(&u, p, n) == 0 && td_ws_utf8_complete(&u);
    FUZZ_CHECK(got == want, "utf8 at once: %d, reference %d", got, want);
    size_t cuts[64];
    size_t ncuts = fuzz_cuts(seed, n, cuts, 64), from = 0;
    td_ws_utf8_init(&u);
    int ok = 1;
    for (size_t c = 0; c <= ncuts && ok; c++) {
        size_t to = c < ncuts ? cuts[c] : n;
        ok = td_ws_utf8_feed(&u, p + from, to - from) == 0;
        from = to;
    }
    got = ok && td_ws_utf8_complete(&u);
    FUZZ_CHECK(got == want, "utf8 in pieces: %d, reference %d", got, want);
}

/* Why the reference refuses a complete header, or 0. */
static int ref_refuses(const uint8_t *p, size_t n, const td_ws_rules *r) {
    int fin = p[0] >> 7, rsv = (p[0] >> 4) & 7, op = p[0] & 15, masked = p[1] >> 7;
    uint64_t len = p[1] & 0x7F;
    if (rsv & ~r->rsv_allowed)
        return TD_WS_PROTOCOL;
    if (!(op <= 2 || (op >= 8 && op <= 10)))
        return TD_WS_PROTOCOL;
    if (op >= 8 && (!fin || len > 125 || rsv))
        return TD_WS_PROTOCOL;
    if (masked != r->want_masked)
        return TD_WS_PROTOCOL;
    if (len == 126 && n >= 4) {
        len = (uint64_t)p[2] * 256 + p[3];
        if (len < 126)
            return TD_WS_PROTOCOL;
    } else if (len == 127 && n >= 10) {
        if (p[2] & 0x80)
            return TD_WS_PROTOCOL;
        len = 0;
        for (int i = 2; i < 10; i++)
            len = len * 256 + p[i];
        if (len < 65536)
            return TD_WS_PROTOCOL;
    }
    if (len > r->max_payload)
        return TD_WS_TOO_BIG;
    return 0;
}

static void check_header(const uint8_t *p, size_t n, const td_ws_rules *r) {
    td_ws_frame f;
    int rc = td_ws_parse_header(p, n, r, &f);
    if (rc == 0) {
        /* More needed: then the input is shorter than its own header, or
         * too short to say. */
        FUZZ_CHECK(n < TD_WS_MAX_HEADER, "wanted more with %zu bytes", n);
        return;
    }
    if (rc < 0) {
        int why = ref_refuses(p, n, r);
        FUZZ_CHECK(why == -rc, "refused with %d, the reference says %d", -rc, why);
        return;
    }
    FUZZ_CHECK(ref_refuses(p, (size_t)rc, r) == 0, "taken, but the reference refuses (%d)", ref_refuses(p, (size_t)rc, r));
    FUZZ_CHECK(rc == f.header_len, "length %d vs header_len %d", rc, f.header_len);
    uint8_t h[TD_WS_MAX_HEADER];
    size_t hn = td_ws_write_header(h, f.fin, f.rsv, f.opcode, f.len, f.masked ? f.mask : NULL);
    FUZZ_CHECK(hn == (size_t)rc && memcmp(h, p, hn) == 0, "the header written back differs (%zu vs %d bytes)", hn,
               rc);
    for (size_t k = 0; k < (size_t)rc; k++)
        FUZZ_CHECK(td_ws_parse_header(p, k, r, &f) <= 0, "a %zu-byte prefix was taken", k);
}

static void check_unmask(const uint8_t *p, size_t n, uint32_t seed) {
    if (n < 4)
        return;
    uint8_t mask[4];
    memcpy(mask, p, 4);
    p += 4, n -= 4;
    uint8_t *whole = malloc(n + 1), *pieces = malloc(n + 1);
    memcpy(whole, p, n);
    memcpy(pieces, p, n);
    td_ws_unmask(whole, n, mask, 0);
    size_t cuts[64];
    size_t ncuts = fuzz_cuts(seed, n, cuts, 64), from = 0;
    for (size_t c = 0; c <= ncuts; c++) {
        size_t to = c < ncuts ? cuts[c] : n;
        td_ws_unmask(pieces + from, to - from, mask, from);
        from = to;
    }
    FUZZ_CHECK(memcmp(whole, pieces, n) == 0, "unmasking in pieces differs");
    for (size_t i = 0; i < n; i++)
        FUZZ_CHECK(whole[i] == (p[i] ^ mask[i & 3]), "byte %zu", i);
    td_ws_unmask(whole, n, mask, 0);
    FUZZ_CHECK(memcmp(whole, p, n) == 0, "twice is not the identity");
    free(whole);
    free(pieces);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2)
        return 0;
    unsigned ctl = fuzz_digit(data[0]);
    uint32_t seed = data[1];
    data += 2, size -= 2;
    check_utf8(data, size, seed);
    td_ws_rules r = {
        .max_payload = ctl & 4 ? 1000 : UINT64_MAX,
        .rsv_allowed = ctl & 2 ? 4 : 0,
        .want_masked = ctl & 1,
    };
    check_header(data, size, &r);
    check_unmask(data, size, seed);
    return 0;
}
