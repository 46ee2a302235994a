/* Owns a WebSocket connection's protocol state after the switch: frames in,
 * messages queued, control frames answered, the closing handshake, the
 * dead-peer deadlines, frames out. */
#include "ws_conn.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/rand.h>

#include "errors.h"
#include "log.h"
#include "ws_deflate.h"

static const td_conn_ops ws_ops;

static inline td_ws_conn *ws_of(td_conn *c) { return c->owner; }

/* What this side accepts: masked frames from a client, RSV1 once
 * permessage-deflate was agreed. */
static inline td_ws_rules rules_of(const td_ws_conn *w) {
    return (td_ws_rules){.max_payload = w->cfg.max_message,
                         .rsv_allowed = (uint8_t)(w->cfg.deflate_bits ? 4 : 0),
                         .want_masked = (uint8_t)!w->client};
}
static inline uint64_t now_of(td_ws_conn *w) { return uv_now(w->c->tcp.loop); }

/* ---- deadlines ---- */

/* The conn's one deadline is the earliest of ours. */
static void arm(td_ws_conn *w) {
    if (!w->c)
        return;
    uint64_t due = 0;
    uint64_t cand[4] = {
        w->recv_due,
        w->close_due,
        w->cfg.idle_timeout_ms ? w->last_input + w->cfg.idle_timeout_ms : 0,
        w->cfg.ping_interval_ms ? w->last_input + (uint64_t)w->cfg.ping_interval_ms * (w->ping_out ? 2 : 1) : 0,
    };
    for (int i = 0; i < 4; i++)
        if (cand[i] && (!due || cand[i] < due))
            due = cand[i];
    if (!due) {
        td_conn_clear_deadline(w->c);
        return;
    }
    uint64_t now = now_of(w);
    td_conn_set_deadline(w->c, due > now ? due - now : 1);
}

void td_ws_conn_set_recv_deadline(td_ws_conn *w, uint64_t ms) {
    if (!w->c)
        return;
    w->recv_due = ms ? now_of(w) + ms : 0;
    arm(w);
}

/* ---- output ---- */

/* Masking keys: a client's must be unpredictable (RFC 6455, 5.3), so they
 * come from OpenSSL's generator, a batch at a time. */
static int mask_key(uint8_t key[4]) {
    static uint8_t pool[256];
    static size_t left;
    if (left < 4) {
        if (RAND_bytes(pool, sizeof pool) != 1)
            return -1;
        left = sizeof pool;
    }
    left -= 4;
    memcpy(key, pool + left, 4);
    return 0;
}

/* The compressed form of what is sent, and of a message received. */
static td_buf scratch;

static int send_frame(td_ws_conn *w, int opcode, int rsv, const char *data, size_t len, void (*release)(void *ud),
                      void *ud) {
    td_conn *c = w->c;
    uint8_t key[4];
    if (w->client && mask_key(key) != 0)
        return UV_ENOMEM;
    int by_ref = release && !w->client;
    td_buf *out = td_conn_out(c, TD_WS_MAX_HEADER + (by_ref ? 0 : len));
    if (!out)
        return UV_ENOMEM;
    out->len += td_ws_write_header((uint8_t *)out->data + out->len, 1, rsv, opcode, len, w->client ? key : NULL);
    if (by_ref)
        return td_conn_write_ref(c, data, len, release, ud);
    if (len) {
        memcpy(out->data + out->len, data, len);
        if (w->client)
            td_ws_unmask((uint8_t *)out->data + out->len, len, key, 0);
        out->len += len;
    }
    return 0;
}

int td_ws_conn_send(td_ws_conn *w, int opcode, const char *data, size_t len, void (*release)(void *ud), void *ud) {
    if (!w->c || w->c->closed || w->state != TD_WS_OPEN)
        return TD_ECLOSED;
    if (w->cfg.deflate_bits && opcode < TD_WS_CLOSE && len >= TD_WS_DEFLATE_MIN) {
        if (td_ws_deflate(data, len, w->cfg.deflate_bits, &scratch) != 0)
            return UV_ENOMEM;
        /* Sent compressed only when that is shorter (RFC 7692 lets each
         * message choose). */
        if (scratch.len < len) {
            int rc = send_frame(w, opcode, 4, scratch.data, scratch.len, NULL, NULL);
            if (scratch.cap > 65536)
                td_buf_free(&scratch);
            return rc;
        }
    }
    return send_frame(w, opcode, 0, data, len, release, ud);
}

/* A control frame of ours (a pong, a ping, a close), whatever the state. */
static void send_control(td_ws_conn *w, int opcode, const char *data, size_t len) {
    if (w->c && !w->c->closed)
        send_frame(w, opcode, 0, data, len, NULL, NULL);
}

static void send_close(td_ws_conn *w, int code, const char *reason, size_t len) {
    char p[125] = {0};
    size_t n = 0;
    if (code) {
        if (len > 123)
            len = 123;
        p[0] = (char)(code >> 8);
        p[1] = (char)(code & 0xFF);
        memcpy(p + 2, reason, len);
        n = 2 + len;
    }
    send_control(w, TD_WS_CLOSE, p, n);
}

void td_ws_conn_want_drain(td_ws_conn *w) {
    if (!w->c)
        return;
    w->want_drain = 1;
    td_conn_want_drain(w->c);
}

/* ---- the end ---- */

static void set_reason(td_ws_conn *w, int code, const char *reason, size_t len) {
    w->close_code = (uint16_t)code;
    free(w->reason);
    w->reason = NULL;
    w->reason_len = 0;
    if (len > 123)
        len = 123;
    if (len && (w->reason = malloc(len))) {
        memcpy(w->reason, reason, len);
        w->reason_len = (uint8_t)len;
    }
}

/* Tells the owner once that no more messages come. */
static void tell_end(td_ws_conn *w) {
    if (w->ended)
        return;
    w->ended = 1;
    if (w->hooks->on_message)
        w->hooks->on_message(w);
}

/* We fail the connection (RFC 6455, 7.1.7): our close with the code, then
 * the end of the TCP connection, without waiting for the peer's close. */
static void fail(td_ws_conn *w, int code, const char *why) {
    if (w->state == TD_WS_OPEN)
        send_close(w, code, why, strlen(why));
    if (w->state != TD_WS_DONE)
        set_reason(w, code, why, strlen(why));
    w->state = TD_WS_DONE;
    td_buf_free(&w->msg);
    tell_end(w);
    if (w->c)
        td_conn_end(w->c);
}

void td_ws_conn_close(td_ws_conn *w, int code, const char *reason, size_t len) {
    if (!w->c || w->state != TD_WS_OPEN)
        return;
    send_close(w, code, reason, len);
    w->state = TD_WS_CLOSE_SENT;
    set_reason(w, code ? code : 1005, reason, len);
    w->close_due = now_of(w) + (w->cfg.close_timeout_ms ? w->cfg.close_timeout_ms : 1);
    arm(w);
}

/* ---- input ---- */

/* The message assembled (data, len: w->msg or its decompressed form). */
static void enqueue(td_ws_conn *w, const char *data, size_t len) {
    td_ws_msg *m = malloc(sizeof *m + len);
    if (!m) {
        fail(w, 1011, "out of memory");
        return;
    }
    m->next = NULL;
    m->len = len;
    m->opcode = w->msg_op;
    if (len)
        memcpy(m->data, data, len);
    /* A large message's buffer goes; a small one's is kept for the next. */
    if (w->msg.cap > 4096)
        td_buf_free(&w->msg);
    w->msg.len = 0;
    w->msg_op = 0;
    if (w->tail)
        w->tail->next = m;
    else
        w->head = m;
    w->tail = m;
    w->queued += m->len + 64; /* an empty message costs too */
    if (w->queued > w->cfg.max_message && !w->paused) {
        w->paused = 1;
        td_conn_pause_reading(w->c);
    }
    if (w->hooks->on_message)
        w->hooks->on_message(w);
}

td_ws_msg *td_ws_conn_next(td_ws_conn *w) {
    td_ws_msg *m = w->head;
    if (!m)
        return NULL;
    w->head = m->next;
    if (!w->head)
        w->tail = NULL;
    w->queued -= m->len + 64;
    if (w->paused && w->queued <= w->cfg.max_message / 2 && w->c) {
        w->paused = 0;
        if (!w->throttled)
            td_conn_resume_reading(w->c);
    }
    return m;
}

/* A close code a peer may send (RFC 6455, 7.4). */
static int valid_code(unsigned code) {
    if (code >= 3000 && code <= 4999)
        return 1;
    return code >= 1000 && code <= 1014 && code != 1004 && code != 1005 && code != 1006;
}

static void on_close_frame(td_ws_conn *w) {
    const uint8_t *p = w->ctl;
    size_t n = w->ctl_len;
    if (n == 1) {
        fail(w, TD_WS_PROTOCOL, "a close frame of one byte");
        return;
    }
    unsigned code = n >= 2 ? (unsigned)p[0] << 8 | p[1] : 1005;
    if (n >= 2 && !valid_code(code)) {
        fail(w, TD_WS_PROTOCOL, "an invalid close code");
        return;
    }
    td_ws_utf8 u;
    td_ws_utf8_init(&u);
    if (n > 2 && (td_ws_utf8_feed(&u, p + 2, n - 2) != 0 || !td_ws_utf8_complete(&u))) {
        fail(w, TD_WS_INVALID_DATA, "a close reason that is not UTF-8");
        return;
    }
    if (w->state == TD_WS_OPEN)
        send_close(w, n >= 2 ? (int)code : 0, "", 0); /* the code echoed, as most endpoints do */
    set_reason(w, (int)code, n > 2 ? (const char *)p + 2 : "", n > 2 ? n - 2 : 0);
    w->state = TD_WS_DONE;
    td_buf_free(&w->msg);
    tell_end(w);
    /* The server closes the TCP connection first (RFC 6455, 7.1.1); a client
     * ends its side too: the server will not speak again. */
    td_conn_end(w->c);
}

static void on_control(td_ws_conn *w) {
    switch (w->f.opcode) {
    case TD_WS_PING:
        if (w->state == TD_WS_OPEN)
            send_control(w, TD_WS_PONG, (const char *)w->ctl, w->ctl_len);
        break;
    case TD_WS_PONG:
        break; /* any frame proves the peer alive */
    case TD_WS_CLOSE:
        on_close_frame(w);
        break;
    }
    free(w->ctl);
    w->ctl = NULL;
    w->ctl_len = 0;
}

/* The header of a frame, parsed: the rules of message sequence. */
static int frame_begins(td_ws_conn *w) {
    td_ws_frame *f = &w->f;
    if (f->opcode >= TD_WS_CLOSE)
        return 0;
    if (f->opcode == TD_WS_CONTINUATION) {
        if (!w->msg_op) {
            fail(w, TD_WS_PROTOCOL, "a continuation frame without a message");
            return -1;
        }
    } else {
        if (w->msg_op) {
            fail(w, TD_WS_PROTOCOL, "a new message inside a fragmented one");
            return -1;
        }
        w->msg_op = f->opcode;
        w->msg_deflated = (f->rsv & 4) != 0;
        td_ws_utf8_init(&w->utf8);
    }
    if (f->opcode == TD_WS_CONTINUATION && (f->rsv & 4)) {
        fail(w, TD_WS_PROTOCOL, "RSV1 on a continuation frame");
        return -1;
    }
    if (w->msg.len + f->len > w->cfg.max_message) {
        fail(w, TD_WS_TOO_BIG, "message too big");
        return -1;
    }
    if (td_buf_reserve(&w->msg, (size_t)f->len) != 0) {
        fail(w, 1011, "out of memory");
        return -1;
    }
    return 0;
}

/* Payload bytes of the current frame. */
static int take_payload(td_ws_conn *w, const char *data, size_t n) {
    td_ws_frame *f = &w->f;
    if (f->opcode >= TD_WS_CLOSE) {
        /* n fits: a control frame is at most 125 bytes (td_ws_parse_header). */
        if (!w->ctl && !(w->ctl = malloc(125))) {
            fail(w, 1011, "out of memory");
            return -1;
        }
        uint8_t *dst = w->ctl + w->ctl_len;
        memcpy(dst, data, n);
        w->ctl_len = (uint8_t)(w->ctl_len + n);
        if (f->masked)
            td_ws_unmask(dst, n, f->mask, w->f_got);
    } else {
        uint8_t *dst = (uint8_t *)w->msg.data + w->msg.len;
        memcpy(dst, data, n);
        if (f->masked)
            td_ws_unmask(dst, n, f->mask, w->f_got);
        w->msg.len += n;
        if (w->msg_op == TD_WS_TEXT && !w->msg_deflated && td_ws_utf8_feed(&w->utf8, dst, n) != 0) {
            fail(w, TD_WS_INVALID_DATA, "text that is not UTF-8");
            return -1;
        }
    }
    w->f_got += n;
    return 0;
}

static void frame_done(td_ws_conn *w) {
    w->in_frame = 0;
    if (w->f.opcode >= TD_WS_CLOSE) {
        on_control(w);
        return;
    }
    if (!w->f.fin)
        return;
    const char *data = w->msg.data;
    size_t len = w->msg.len;
    if (w->msg_deflated && w->state == TD_WS_OPEN) {
        int rc = td_ws_inflate(data, len, w->cfg.max_message, &scratch);
        if (rc != 0) {
            fail(w, rc == TD_ETOOLARGE ? TD_WS_TOO_BIG : rc == TD_EPROTO ? TD_WS_INVALID_DATA : 1011,
                 rc == TD_ETOOLARGE ? "message too big" : rc == TD_EPROTO ? "invalid compressed data" : "out of memory");
            return;
        }
        data = scratch.data, len = scratch.len;
        if (w->msg_op == TD_WS_TEXT && td_ws_utf8_feed(&w->utf8, (const uint8_t *)data, len) != 0) {
            fail(w, TD_WS_INVALID_DATA, "text that is not UTF-8");
            return;
        }
    }
    if (w->msg_op == TD_WS_TEXT && !td_ws_utf8_complete(&w->utf8)) {
        fail(w, TD_WS_INVALID_DATA, "text that is not UTF-8");
        return;
    }
    if (w->state == TD_WS_OPEN) {
        enqueue(w, data, len);
        if (scratch.cap > 65536)
            td_buf_free(&scratch);
    } else {
        w->msg.len = 0; /* we are closing: nobody will read it */
        w->msg_op = 0;
    }
}

static void feed(td_ws_conn *w, const char *data, size_t len) {
    td_ws_rules rules = rules_of(w);
    while (len > 0 && w->c && !w->c->closed && w->state != TD_WS_DONE) {
        if (!w->in_frame) {
            int rc;
            size_t used;
            if (w->hdr_len == 0) {
                rc = td_ws_parse_header((const uint8_t *)data, len, &rules, &w->f);
                if (rc == 0) {
                    memcpy(w->hdr, data, len); /* len < TD_WS_MAX_HEADER here */
                    w->hdr_len = (uint8_t)len;
                    return;
                }
                used = rc > 0 ? (size_t)rc : 0;
            } else {
                size_t room = TD_WS_MAX_HEADER - w->hdr_len, n = len < room ? len : room;
                memcpy(w->hdr + w->hdr_len, data, n);
                rc = td_ws_parse_header(w->hdr, w->hdr_len + n, &rules, &w->f);
                if (rc == 0) {
                    w->hdr_len = (uint8_t)(w->hdr_len + n);
                    return;
                }
                used = rc > 0 ? (size_t)rc - w->hdr_len : 0;
            }
            if (rc < 0) {
                fail(w, -rc, rc == -TD_WS_TOO_BIG ? "message too big" : "a frame that breaks the protocol");
                return;
            }
            w->hdr_len = 0;
            data += used;
            len -= used;
            w->in_frame = 1;
            w->f_got = 0;
            if (frame_begins(w) != 0)
                return;
        }
        uint64_t want = w->f.len - w->f_got;
        size_t n = want < len ? (size_t)want : len;
        if (n && take_payload(w, data, n) != 0)
            return;
        data += n;
        len -= n;
        if (w->f_got == w->f.len)
            frame_done(w);
    }
}

/* ---- connection callbacks ---- */

static void ws_on_data(td_conn *c, const char *data, size_t len) {
    td_ws_conn *w = ws_of(c);
    w->last_input = uv_now(c->tcp.loop);
    w->ping_out = 0;
    feed(w, data, len);
    if (c->closed)
        return;
    if (w->cfg.idle_timeout_ms || w->cfg.ping_interval_ms)
        arm(w);
    if (!w->throttled && td_conn_unsent(c) > TD_WS_HIGH_WATER) {
        w->throttled = 1;
        td_conn_pause_reading(c);
        td_conn_want_drain(c);
    }
}

static void ws_on_deferred(td_conn *c) { (void)c; }

/* The peer's TCP end: a closing handshake that ends well ended already; any
 * other end is abnormal (1006). */
static void ws_on_eof(td_conn *c, int err) {
    (void)err;
    td_conn_close(c);
}

static void ws_on_timeout(td_conn *c) {
    td_ws_conn *w = ws_of(c);
    uint64_t now = uv_now(c->tcp.loop);
    if (w->close_due && now >= w->close_due) {
        td_conn_close(c); /* the peer never answered our close */
        return;
    }
    if (w->cfg.idle_timeout_ms && now >= w->last_input + w->cfg.idle_timeout_ms) {
        fail(w, TD_WS_GOING_AWAY, "idle timeout");
        return;
    }
    if (w->cfg.ping_interval_ms && now >= w->last_input + w->cfg.ping_interval_ms) {
        if (w->ping_out && now >= w->last_input + 2 * (uint64_t)w->cfg.ping_interval_ms) {
            fail(w, TD_WS_GOING_AWAY, "no answer to a ping");
            return;
        }
        if (!w->ping_out && w->state == TD_WS_OPEN) {
            w->ping_out = 1;
            send_control(w, TD_WS_PING, "", 0);
        }
    }
    if (w->recv_due && now >= w->recv_due) {
        w->recv_due = 0;
        if (w->hooks->on_recv_timeout)
            w->hooks->on_recv_timeout(w);
        if (!w->c)
            return;
    }
    arm(w);
}

static void ws_on_drain(td_conn *c) {
    td_ws_conn *w = ws_of(c);
    if (w->throttled) {
        w->throttled = 0;
        if (!w->paused)
            td_conn_resume_reading(c);
    }
    if (!w->want_drain)
        return;
    w->want_drain = 0;
    if (w->hooks->on_drain)
        w->hooks->on_drain(w);
}

static void ws_on_close(td_conn *c) {
    td_ws_conn *w = ws_of(c);
    if (w->state != TD_WS_DONE) {
        /* Neither side finished the closing handshake: abnormal, unless we
         * closed and the peer never answered (our code stands). */
        if (w->state == TD_WS_OPEN)
            set_reason(w, 1006, "", 0);
        w->state = TD_WS_DONE;
    }
    tell_end(w);
    w->c = NULL;
    if (w->hooks->on_gone)
        w->hooks->on_gone(w);
}

static void ws_on_connect(td_conn *c, int status) { (void)c, (void)status; }

static const td_conn_ops ws_ops = {
    .low_water = TD_WS_LOW_WATER,
    .on_data = ws_on_data,
    .on_eof = ws_on_eof,
    .on_timeout = ws_on_timeout,
    .on_drain = ws_on_drain,
    .on_deferred = ws_on_deferred,
    .on_connect = ws_on_connect,
    .on_close = ws_on_close,
};

void td_ws_conn_attach(td_ws_conn *w, td_conn *c, int client, const td_ws_config *cfg, const td_ws_hooks *hooks,
                       const td_buf *rest) {
    w->c = c;
    w->hooks = hooks;
    w->cfg = *cfg;
    w->client = client != 0;
    w->state = TD_WS_OPEN;
    w->close_code = 1006;
    w->last_input = uv_now(c->tcp.loop);
    c->ops = &ws_ops;
    c->owner = w;
    c->proto_state = c->proto_flags = 0;
    td_conn_clear_deadline(c);
    arm(w);
    td_conn_resume_reading(c);
    if (rest && rest->len)
        ws_on_data(c, rest->data, rest->len);
}

void td_ws_conn_abort(td_ws_conn *w) {
    static const td_ws_hooks none;
    if (!w->c)
        return;
    w->hooks = &none;
    td_conn_close(w->c);
}

void td_ws_conn_shutdown(void) {
    td_buf_free(&scratch);
    td_ws_deflate_shutdown();
}

void td_ws_conn_free(td_ws_conn *w) {
    td_ws_msg *m;
    while ((m = td_ws_conn_next(w)))
        free(m);
    td_buf_free(&w->msg);
    free(w->ctl);
    w->ctl = NULL;
    free(w->reason);
    w->reason = NULL;
}
