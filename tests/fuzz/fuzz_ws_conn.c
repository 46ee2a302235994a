/* libFuzzer harness: the WebSocket protocol (core/ws_conn.c over conn.c),
 * as a server or as a client, on a real loopback connection. The input's
 * bytes are what the peer sends after the handshake (masked frames to a
 * server, unmasked ones to a client), cut into reads at points the input
 * draws; the server's messages, pongs and close are held to a reference
 * decoder written here in another way (a frame at a time, whole, with the
 * rules of RFC 6455 and 7692 checked in one place):
 * - the messages delivered are exactly the reference's, in order, each
 *   whole (reassembled, unmasked, inflated);
 * - every ping before the end gets its pong, with its payload, in order;
 * - the end is the reference's: the client's close echoed with its code
 *   (or an empty close for an empty one), or the server's own close with
 *   the code of the first violation (1002, 1007, 1009), then the end of
 *   the connection; input that stops without a close gets no close;
 * - what does not depend on timing does not depend on the cuts: the input
 *   runs again in one piece;
 * - the connection's memory and the messages' are freed (LeakSanitizer).
 *
 * Input: 3 control bytes, then the client's bytes.
 *   [0]    bit 0: permessage-deflate agreed; bits 1-2: max_message (64,
 *          1 KiB, 64 KiB, 1 MiB); bit 3: tendril is the client
 *   [1..2] the cut seed (fuzz_cuts)
 * A digit stands for its value (fuzz_digit). */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <zlib.h>

#include "conn.h"
#include "errors.h"
#include "fuzz.h"
#include "fuzz_ref.h"
#include "ws.h"
#include "ws_conn.h"

#define CONTROL 3
#define MAX_CUTS 64
#define MAX_TURNS 20000
#define MAX_ITEMS 512

static const uint64_t max_messages[4] = {64, 1024, 65536, 1 << 20};

/* What one side saw: messages (or pongs) and the end. */
typedef struct item {
    uint8_t opcode;
    size_t len;
    char *data;
} item;

typedef struct outcome {
    item msgs[MAX_ITEMS]; /* messages delivered (server) / expected */
    size_t nmsgs;
    item pongs[MAX_ITEMS];
    size_t npongs;
    int close_code; /* the server's close frame: its code, 0 for none, -1 when no close came */
    int truncated;  /* more items than MAX_ITEMS: not compared */
} outcome;

static void add(item *list, size_t *n, int *truncated, int opcode, const char *p, size_t len) {
    if (*n >= MAX_ITEMS) {
        *truncated = 1;
        return;
    }
    item *it = &list[(*n)++];
    it->opcode = (uint8_t)opcode;
    it->len = len;
    it->data = malloc(len ? len : 1);
    FUZZ_CHECK(it->data != NULL, "out of memory");
    if (len)
        memcpy(it->data, p, len);
}

static void clear(outcome *o) {
    for (size_t i = 0; i < o->nmsgs; i++)
        free(o->msgs[i].data);
    for (size_t i = 0; i < o->npongs; i++)
        free(o->pongs[i].data);
    memset(o, 0, sizeof *o);
}

/* ---- the reference ---- */


/* Whether the first n bytes of a text could still begin valid UTF-8: the
 * server checks a message as it comes, so a text frame already broken is
 * refused (1007) before a later limit would refuse it. A last character
 * cut short is checked against the table of RFC 3629 (section 4): its lead
 * byte, and each continuation byte's range (narrower after E0, ED, F0,
 * F4). */
static int ref_utf8_prefix(const uint8_t *p, size_t n) {
    size_t i = 0;
    while (i < n) {
        uint8_t b = p[i];
        size_t len = b < 0x80 ? 1 : (b & 0xE0) == 0xC0 ? 2 : (b & 0xF0) == 0xE0 ? 3 : (b & 0xF8) == 0xF0 ? 4 : 0;
        if (len == 0)
            return 0;
        if (i + len <= n) {
            if (!fuzz_ref_utf8(p + i, len))
                return 0;
            i += len;
            continue;
        }
        if (b == 0xC0 || b == 0xC1 || b > 0xF4)
            return 0;
        for (size_t k = 1; i + k < n; k++) {
            uint8_t c = p[i + k], lo = 0x80, hi = 0xBF;
            if (k == 1 && b == 0xE0)
                lo = 0xA0;
            else if (k == 1 && b == 0xED)
                hi = 0x9F;
            else if (k == 1 && b == 0xF0)
                lo = 0x90;
            else if (k == 1 && b == 0xF4)
                hi = 0x8F;
            if (c < lo || c > hi)
                return 0;
        }
        return 1;
    }
    return 1;
}

static int ref_inflate(const uint8_t *p, size_t n, uint64_t max, td_buf *out) {
    z_stream z;
    memset(&z, 0, sizeof z);
    if (inflateInit2(&z, -15) != Z_OK)
        return UV_ENOMEM;
    td_buf in = {0};
    td_buf_append(&in, p, n);
    td_buf_append(&in, "\x00\x00\xff\xff", 4);
    out->len = 0;
    z.next_in = (Bytef *)in.data;
    z.avail_in = (uInt)in.len;
    int rc = Z_OK, result = 0;
    while (z.avail_in > 0) {
        char buf[16384];
        z.next_out = (Bytef *)buf;
        z.avail_out = sizeof buf;
        rc = inflate(&z, Z_SYNC_FLUSH);
        size_t got = sizeof buf - z.avail_out;
        td_buf_append(out, buf, got);
        if (out->len > max) {
            result = TD_ETOOLARGE;
            break;
        }
        if (rc == Z_STREAM_END) {
            /* The four bytes added after a final block are not data. */
            if (z.avail_in > 0 && (size_t)(z.next_in - (Bytef *)in.data) < n)
                result = TD_EPROTO;
            break;
        }
        if (rc != Z_OK && !(rc == Z_BUF_ERROR && got > 0)) {
            result = TD_EPROTO;
            break;
        }
    }
    inflateEnd(&z);
    td_buf_free(&in);
    return result;
}

static int valid_close_code(unsigned code) {
    if (code >= 3000 && code <= 4999)
        return 1;
    return code >= 1000 && code <= 1014 && code != 1004 && code != 1005 && code != 1006;
}

/* What tendril must do with the peer's bytes (client: tendril is the
 * client, so frames must come unmasked). */
static void reference(const uint8_t *p, size_t n, int deflate, uint64_t max, int client, outcome *o) {
    size_t at = 0;
    td_buf msg = {0}, inflated = {0};
    int msg_op = 0, msg_deflated = 0;
    o->close_code = -1;
    for (;;) {
        if (n - at < 2)
            break; /* the input stops inside a header: nothing more */
        const uint8_t *h = p + at;
        int fin = h[0] >> 7, rsv = (h[0] >> 4) & 7, op = h[0] & 15, masked = h[1] >> 7;
        uint64_t len = h[1] & 127;
        size_t hl = 2 + (len == 126 ? 2 : len == 127 ? 8 : 0) + (masked ? 4 : 0);
        int control = op >= 8;
        /* The checks the first two bytes allow, in the server's order. */
        if ((rsv & ~(deflate ? 4 : 0)) || (op > 2 && op < 8) || op > 10 || (control && (!fin || len > 125 || rsv)) ||
            masked == client) {
            o->close_code = TD_WS_PROTOCOL;
            break;
        }
        if (n - at < hl)
            break;
        if (len == 126) {
            len = (uint64_t)h[2] << 8 | h[3];
            if (len < 126) {
                o->close_code = TD_WS_PROTOCOL;
                break;
            }
        } else if (len == 127) {
            len = 0;
            for (int i = 0; i < 8; i++)
                len = len << 8 | h[2 + i];
            if ((len >> 63) || len <= 0xFFFF) {
                o->close_code = TD_WS_PROTOCOL;
                break;
            }
        }
        if (len > max) {
            o->close_code = TD_WS_TOO_BIG;
            break;
        }
        static const uint8_t no_key[4];
        const uint8_t *key = masked ? h + hl - 4 : no_key;
        /* Sequence rules, known from the header alone. */
        if (!control) {
            if (op == 0 && !msg_op) {
                o->close_code = TD_WS_PROTOCOL;
                break;
            }
            if (op != 0 && msg_op) {
                o->close_code = TD_WS_PROTOCOL;
                break;
            }
            if (op == 0 && (rsv & 4)) {
                o->close_code = TD_WS_PROTOCOL;
                break;
            }
            if (msg.len + len > max) {
                o->close_code = TD_WS_TOO_BIG;
                break;
            }
            if (op != 0) {
                msg_op = op;
                msg_deflated = (rsv & 4) != 0;
            }
        }
        /* The payload, unmasked: what arrived of it. */
        size_t avail = n - at - hl < len ? n - at - hl : (size_t)len;
        uint8_t *pl = malloc(avail ? avail : 1);
        FUZZ_CHECK(pl != NULL, "out of memory");
        for (size_t i = 0; i < avail; i++)
            pl[i] = p[at + hl + i] ^ key[i & 3];
        if (!control) {
            td_buf_append(&msg, pl, avail);
            if (msg_op == 1 && !msg_deflated && !ref_utf8_prefix((const uint8_t *)msg.data, msg.len)) {
                free(pl);
                o->close_code = TD_WS_INVALID_DATA;
                break;
            }
        }
        if (avail < len) {
            free(pl);
            break; /* the input stops inside a payload */
        }
        at += hl + (size_t)len;
        if (op == 9) {
            add(o->pongs, &o->npongs, &o->truncated, 10, (const char *)pl, avail);
        } else if (op == 8) {
            if (len == 1) {
                o->close_code = TD_WS_PROTOCOL;
            } else if (len >= 2 && !valid_close_code((unsigned)pl[0] << 8 | pl[1])) {
                o->close_code = TD_WS_PROTOCOL;
            } else if (len > 2 && !fuzz_ref_utf8(pl + 2, len - 2)) {
                o->close_code = TD_WS_INVALID_DATA;
            } else {
                o->close_code = len >= 2 ? ((int)pl[0] << 8 | pl[1]) : 0;
            }
            free(pl);
            break;
        } else if (!control && fin) {
            const char *d = msg.data ? msg.data : "";
            size_t dl = msg.len;
            if (msg_deflated) {
                int rc = ref_inflate((const uint8_t *)d, dl, max, &inflated);
                if (rc != 0) {
                    free(pl);
                    o->close_code = rc == TD_ETOOLARGE ? TD_WS_TOO_BIG : TD_WS_INVALID_DATA;
                    break;
                }
                d = inflated.data ? inflated.data : "";
                dl = inflated.len;
            }
            if (msg_op == 1 && !fuzz_ref_utf8((const uint8_t *)d, dl)) {
                free(pl);
                o->close_code = TD_WS_INVALID_DATA;
                break;
            }
            add(o->msgs, &o->nmsgs, &o->truncated, msg_op, d, dl);
            msg.len = 0;
            msg_op = 0;
        }
        free(pl);
    }
    td_buf_free(&msg);
    td_buf_free(&inflated);
}

/* ---- the server ---- */

static uv_loop_t loop;
static td_transport tp;
static td_listener listener;
static int port = -1;
static td_ws_conn ws;
static int attached, gone;
static td_ws_config cfg;
static int role_client;
static outcome *cur;

static void on_message(td_ws_conn *w) {
    td_ws_msg *m;
    while ((m = td_ws_conn_next(w))) {
        add(cur->msgs, &cur->nmsgs, &cur->truncated, m->opcode, m->data, m->len);
        free(m);
    }
}

static void on_gone(td_ws_conn *w) {
    (void)w;
    gone = 1;
}

static const td_ws_hooks hooks = {.on_message = on_message, .on_gone = on_gone};

static void on_open(td_listener *l, td_conn *c) {
    (void)l;
    memset(&ws, 0, sizeof ws);
    td_list_init(&ws.link);
    td_ws_conn_attach(&ws, c, role_client, &cfg, &hooks, NULL);
    attached = 1;
}

static void stub_data(td_conn *c, const char *d, size_t n) { (void)c, (void)d, (void)n; }
static void stub_eof(td_conn *c, int err) { (void)err, td_conn_close(c); }
static void stub_conn(td_conn *c) { (void)c; }
static void stub_connect(td_conn *c, int s) { (void)c, (void)s; }
static const td_conn_ops stub_ops = {
    .on_data = stub_data, .on_eof = stub_eof, .on_timeout = stub_conn, .on_drain = stub_conn,
    .on_deferred = stub_conn, .on_connect = stub_connect, .on_close = stub_conn,
};

static void start(void) {
    FUZZ_CHECK(uv_loop_init(&loop) == 0, "uv_loop_init");
    FUZZ_CHECK(td_transport_init(&tp, &loop, 0) == 0, "td_transport_init");
    int rc = td_listener_open(&listener, &tp, "127.0.0.1", 0, &stub_ops, sizeof(td_conn), on_open, NULL);
    FUZZ_CHECK(rc == 0, "listening: %s", uv_strerror(rc));
    port = td_listener_port(&listener);
}

/* ---- the client ---- */

static int client = -1, client_eof;
static td_buf received;

static void client_read(void) { fuzz_recv_all(client, &received, &client_eof); }

static void turn(int i) {
    uv_run(&loop, UV_RUN_NOWAIT);
    client_read();
    if (i > 100)
        usleep(10);
}

static void client_send(const char *p, size_t n) {
    for (int i = 0; n > 0 && !client_eof; i++) {
        FUZZ_CHECK(i < MAX_TURNS, "the server stopped taking input");
        ssize_t w = send(client, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w > 0) {
            p += w;
            n -= (size_t)w;
        } else if (errno == EPIPE || errno == ECONNRESET) {
            return;
        } else {
            FUZZ_CHECK(errno == EAGAIN || errno == EWOULDBLOCK, "send: %s", strerror(errno));
            turn(i);
        }
        /* Let the server read what came, so a cut is one read. */
        for (int k = 0; k < 3; k++)
            turn(0);
    }
}

/* Tendril's frames to the peer: pongs and the close, masked when tendril
 * is the client (and then unmasked here, into a copy). */
static void parse_received(outcome *o) {
    uint8_t *p = (uint8_t *)received.data;
    size_t n = received.len, at = 0;
    o->close_code = -1;
    while (n - at >= 2) {
        int op = p[at] & 15;
        int masked = p[at + 1] >> 7;
        FUZZ_CHECK(masked == role_client, "a %s's frame is %smasked", role_client ? "client" : "server",
                   masked ? "" : "not ");
        uint64_t len = p[at + 1] & 127;
        size_t hl = 2 + (len == 126 ? 2 : len == 127 ? 8 : 0) + (masked ? 4 : 0);
        FUZZ_CHECK(n - at >= hl, "a cut frame header from tendril");
        if (len == 126)
            len = (uint64_t)p[at + 2] << 8 | p[at + 3];
        FUZZ_CHECK(len <= 125, "a control frame of %llu bytes from tendril", (unsigned long long)len);
        FUZZ_CHECK(n - at - hl >= len, "a cut frame from tendril");
        char *pl = (char *)p + at + hl;
        if (masked)
            td_ws_unmask((uint8_t *)pl, (size_t)len, p + at + hl - 4, 0);
        if (op == 10) {
            FUZZ_CHECK(o->close_code == -1, "a pong after the close");
            add(o->pongs, &o->npongs, &o->truncated, 10, pl, (size_t)len);
        } else {
            FUZZ_CHECK(op == 8, "tendril sent opcode %d unasked", op);
            FUZZ_CHECK(o->close_code == -1, "two closes");
            FUZZ_CHECK(len != 1, "a close of one byte");
            o->close_code = len >= 2 ? ((unsigned char)pl[0] << 8 | (unsigned char)pl[1]) : 0;
        }
        at += hl + (size_t)len;
    }
    FUZZ_CHECK(at == n, "bytes after tendril's last frame");
}

static void run(const char *data, size_t len, const size_t *cuts, size_t ncuts, outcome *o) {
    if (port < 0)
        start();
    cur = o;
    attached = gone = 0;
    client_eof = 0;
    received.len = 0;
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", port, &a);
    client = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    struct linger reset = {1, 0};
    setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(client, SOL_SOCKET, SO_LINGER, &reset, sizeof reset);
    int rc = connect(client, (struct sockaddr *)&a, sizeof a);
    FUZZ_CHECK(rc == 0 || errno == EINPROGRESS, "connect: %s", strerror(errno));
    for (int i = 0; i < MAX_TURNS && !attached; i++)
        turn(i);
    FUZZ_CHECK(attached, "the server did not accept");
    size_t from = 0;
    for (size_t i = 0; i <= ncuts; i++) {
        size_t to = i < ncuts ? cuts[i] : len;
        client_send(data + from, to - from);
        from = to;
    }
    /* Everything sent: the client half-closes and reads to the end. */
    for (int i = 0; i < 200; i++)
        turn(0);
    shutdown(client, SHUT_WR);
    for (int i = 0; i < MAX_TURNS && !(client_eof && gone); i++)
        turn(i);
    FUZZ_CHECK(client_eof && gone, "the connection did not end");
    close(client);
    client = -1;
    for (int i = 0; i < MAX_TURNS && tp.nconns; i++)
        turn(i);
    FUZZ_CHECK(tp.nconns == 0, "the connection's memory was not freed");
    td_ws_conn_free(&ws);
    parse_received(o);
}

static void compare(const outcome *want, const outcome *got, const char *what) {
    if (want->truncated || got->truncated)
        return;
    FUZZ_CHECK(want->nmsgs == got->nmsgs, "%s: %zu messages, the reference %zu", what, got->nmsgs, want->nmsgs);
    for (size_t i = 0; i < want->nmsgs; i++)
        FUZZ_CHECK(want->msgs[i].opcode == got->msgs[i].opcode &&
                       fuzz_same(want->msgs[i].data, want->msgs[i].len, got->msgs[i].data, got->msgs[i].len),
                   "%s: message %zu differs (%zu bytes, the reference %zu)", what, i, got->msgs[i].len,
                   want->msgs[i].len);
    FUZZ_CHECK(want->npongs == got->npongs, "%s: %zu pongs, the reference %zu", what, got->npongs, want->npongs);
    for (size_t i = 0; i < want->npongs; i++)
        FUZZ_CHECK(fuzz_same(want->pongs[i].data, want->pongs[i].len, got->pongs[i].data, got->pongs[i].len),
                   "%s: pong %zu differs", what, i);
    FUZZ_CHECK(want->close_code == got->close_code, "%s: close %d, the reference %d", what, got->close_code,
               want->close_code);
}

static outcome expected, split_run, whole_run;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < CONTROL)
        return 0;
    unsigned config = fuzz_digit(data[0]);
    int deflate = config & 1;
    uint64_t max = max_messages[(config >> 1) & 3];
    role_client = (config >> 3) & 1;
    uint32_t seed = (uint32_t)data[1] | (uint32_t)data[2] << 8;
    const char *in = (const char *)data + CONTROL;
    size_t len = size - CONTROL;
    memset(&cfg, 0, sizeof cfg);
    cfg.max_message = max;
    cfg.close_timeout_ms = 600000; /* never during a run: the outcome must not depend on speed */
    cfg.deflate_bits = deflate ? 15 : 0;
    clear(&expected);
    reference((const uint8_t *)in, len, deflate, max, role_client, &expected);
    size_t cuts[MAX_CUTS];
    size_t ncuts = fuzz_cuts(seed, len, cuts, MAX_CUTS);
    clear(&split_run);
    run(in, len, cuts, ncuts, &split_run);
    compare(&expected, &split_run, "cut");
    if (ncuts > 0) {
        clear(&whole_run);
        run(in, len, NULL, 0, &whole_run);
        compare(&expected, &whole_run, "whole");
    }
    return 0;
}
