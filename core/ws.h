/* WebSocket framing (RFC 6455), as a codec over bytes: the frame header
 * parser with every rule a receiver enforces, unmasking (at any offset of
 * a payload, so a payload can arrive in pieces), the header writer, an
 * incremental UTF-8 validator (a text message split anywhere, across
 * fragments too) and the handshake's accept key. No I/O, no Lua, no
 * allocation: the protocol layer above keeps the state between reads.
 *
 * Errors are the close codes a receiver answers with: TD_WS_PROTOCOL
 * (1002) for a frame that breaks the framing rules, TD_WS_TOO_BIG (1009)
 * for a payload over the caller's limit. */
#ifndef TD_WS_H
#define TD_WS_H

#include <stddef.h>
#include <stdint.h>

enum {
    TD_WS_CONTINUATION = 0x0,
    TD_WS_TEXT = 0x1,
    TD_WS_BINARY = 0x2,
    TD_WS_CLOSE = 0x8,
    TD_WS_PING = 0x9,
    TD_WS_PONG = 0xA,
};

/* Close codes (RFC 6455, section 7.4.1). */
enum {
    TD_WS_NORMAL = 1000,
    TD_WS_GOING_AWAY = 1001,
    TD_WS_PROTOCOL = 1002,
    TD_WS_INVALID_DATA = 1007,
    TD_WS_TOO_BIG = 1009,
};

/* The longest header: 2 bytes, 8 of length, 4 of mask. */
#define TD_WS_MAX_HEADER 14

typedef struct td_ws_frame {
    uint64_t len; /* payload bytes */
    uint8_t fin;
    uint8_t rsv;    /* the three reserved bits, as 0..7 (RSV1 is 4) */
    uint8_t opcode;
    uint8_t masked;
    uint8_t mask[4];
    uint8_t header_len;
} td_ws_frame;

/* What a receiver allows. */
typedef struct td_ws_rules {
    uint64_t max_payload; /* larger frames: TD_WS_TOO_BIG */
    uint8_t rsv_allowed;  /* reserved bits an extension gave meaning to (RSV1: 4) */
    uint8_t want_masked;  /* 1: a server (frames must be masked); 0: a client (must not be) */
} td_ws_rules;

/* The header at p (n bytes available) into f: its length (> 0), 0 when
 * more bytes are needed, or minus a close code. Checks: reserved bits and
 * opcodes, masking, control frames (FIN set, at most 125 bytes), the
 * minimal length encoding, the 64-bit length's top bit, max_payload. */
int td_ws_parse_header(const uint8_t *p, size_t n, const td_ws_rules *rules, td_ws_frame *f);

/* Unmasks (or masks: the same) n bytes in place, the first being byte
 * `offset` of the payload. */
void td_ws_unmask(uint8_t *p, size_t n, const uint8_t mask[4], uint64_t offset);

/* Writes a header for a payload of len bytes into out (TD_WS_MAX_HEADER
 * bytes of room) and returns its length; mask NULL: unmasked. rsv as in
 * td_ws_frame. */
size_t td_ws_write_header(uint8_t *out, int fin, int rsv, int opcode, uint64_t len, const uint8_t *mask);

/* UTF-8, checked as it arrives: feed every piece of a text message, then
 * ask whether it ended on a whole character. Overlong forms, surrogates
 * and code points past U+10FFFF are invalid (RFC 3629). */
typedef struct td_ws_utf8 {
    uint8_t need;   /* continuation bytes still to come */
    uint8_t lo, hi; /* the range the next continuation byte must be in */
} td_ws_utf8;

static inline void td_ws_utf8_init(td_ws_utf8 *u) { u->need = 0, u->lo = 0x80, u->hi = 0xBF; }
/* 0 while valid so far, -1 once invalid (the state is then meaningless). */
int td_ws_utf8_feed(td_ws_utf8 *u, const uint8_t *p, size_t n);
/* 1 when what was fed ends on a whole character. */
static inline int td_ws_utf8_complete(const td_ws_utf8 *u) { return u->need == 0; }

/* Sec-WebSocket-Accept for the client's key: base64(SHA-1(key + the
 * RFC's GUID)), 28 characters and a NUL into out. 0, or -1 (no memory). */
int td_ws_accept_key(const char *key, size_t len, char out[29]);

#endif
