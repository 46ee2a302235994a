/* Owns the request side of an HTTP server connection: the llhttp parser,
 * the request state (head, body, pipelined input, waiters) and its spares,
 * the connection's phase and deadlines, and the order of pipelined
 * requests. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "errors.h"
#include "http_private.h"
#include "log.h"

/* Input queued behind a live request before reading pauses. */
#define TD_PENDING_MAX 65536
/* Request states kept for reuse, with buffers up to this size. */
#define TD_REQ_SPARE_MAX 256
#define TD_REQ_KEEP_BUFFER 4096

enum { EV_NONE, EV_HEADERS, EV_MESSAGE };

static td_http_conn *hc_of_parser(llhttp_t *p) { return p->data; }

/* ---- llhttp callbacks: they record, the feed loop acts ---- */

static int fields_failed(td_http_req *rq) {
    rq->error_status = rq->fields.error == TD_ETOOLARGE ? 431 : 503;
    return HPE_USER;
}

static int on_message_begin(llhttp_t *p) {
    td_http_req *rq = hc_of_parser(p)->rq;
    td_http_fields_reset(&rq->fields);
    rq->started = uv_hrtime();
    memset(&rq->timings, 0, sizeof rq->timings);
    rq->body.len = 0;
    rq->body_off = 0;
    rq->target_len = 0;
    rq->hosts = 0;
    rq->te_seen = 0;
    rq->error_status = 0;
    rq->body_seen = 0;
    rq->crlf_left = 0;
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len) {
    td_http_req *rq = hc_of_parser(p)->rq;
    if (td_http_fields_value(&rq->fields, at, len) != 0)
        return fields_failed(rq);
    rq->fields.last = TD_HTTP_LAST_NONE;
    rq->target_len = (uint32_t)rq->fields.text.len;
    return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len) {
    td_http_req *rq = hc_of_parser(p)->rq;
    return td_http_fields_name(&rq->fields, at, len) == 0 ? 0 : fields_failed(rq);
}

static int on_header_field_complete(llhttp_t *p) {
    td_http_req *rq = hc_of_parser(p)->rq;
    td_http_fields *f = &rq->fields;
    const td_http_header *h = (const td_http_header *)(const void *)(f->headers.data + f->headers.len) - 1;
    size_t n = f->text.len - h->name;
    /* llhttp 8 keeps whitespace in the name (before the colon, or inside
     * it, in heads and trailers alike); RFC 9112 says to reject it (it
     * smuggles headers past other parsers). */
    if (n == 0 || td_http_fields_name_done(f) != 0) {
        rq->error_status = 400;
        return HPE_USER;
    }
    if (n == 4 && memcmp(f->text.data + h->name, "host", 4) == 0)
        rq->hosts++;
    else if (n == 17 && memcmp(f->text.data + h->name, "transfer-encoding", 17) == 0)
        rq->te_seen = 1;
    return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len) {
    td_http_conn *hc = hc_of_parser(p);
    td_http_req *rq = hc->rq;
    /* A value piece right after a line break is an obsolete line fold,
     * which llhttp 8 accepts and RFC 9112 lets a server reject. */
    char before = at > rq->feed_start ? at[-1] : rq->prev_byte;
    if (rq->fields.last == TD_HTTP_LAST_VALUE && before == '\n') {
        rq->error_status = 400;
        return HPE_USER;
    }
    return td_http_fields_value(&rq->fields, at, len) == 0 ? 0 : fields_failed(rq);
}

static int on_header_value_complete(llhttp_t *p) {
    td_http_fields_value_done(&hc_of_parser(p)->rq->fields);
    return 0;
}

static int on_headers_complete(llhttp_t *p) {
    hc_of_parser(p)->rq->event = EV_HEADERS;
    return HPE_PAUSED;
}

/* Every CR in framing (the head, chunk-size lines, trailers: all but body
 * data) must be followed by LF: llhttp 8 ends a line at a CR followed by
 * any byte, one byte of desync with a stricter peer. Returns 0 when
 * [p, end) is clean. */
static int scan_framing(td_http_req *rq, const char *p, const char *end) {
    if (p >= end)
        return 0;
    if (rq->cr_pending && *p != '\n')
        return -1;
    for (const char *q = p; q < end; q++) {
        q = memchr(q, '\r', (size_t)(end - q));
        if (!q)
            break;
        if (q + 1 < end && q[1] != '\n')
            return -1;
    }
    rq->cr_pending = end[-1] == '\r';
    return 0;
}

/* Checks the CRLF owed after a chunk's data against what input there is
 * (llhttp 8 skips any two bytes there, a request-desync primitive). */
static int crlf_ok(td_http_req *rq, const char *p, size_t avail) {
    for (; rq->crlf_left > 0 && avail > 0; p++, avail--, rq->crlf_left--)
        if (*p != (rq->crlf_left == 2 ? '\r' : '\n'))
            return 0;
    return 1;
}

static void body_pause(td_http_conn *hc);

static int on_body(llhttp_t *p, const char *at, size_t len) {
    td_http_conn *hc = hc_of_parser(p);
    td_http_req *rq = hc->rq;
    /* The framing before this piece of data; the data itself is free. */
    /* A CR right before the data lost its LF: llhttp took the data's
     * first byte for it. */
    if (scan_framing(rq, rq->scan_from, at) != 0 || rq->cr_pending) {
        rq->error_status = 400;
        return HPE_USER;
    }
    rq->scan_from = at + len;
    rq->cr_pending = 0;
    /* llhttp counts a chunk down as it goes: at 0 its data is complete. */
    if ((p->flags & F_CHUNKED) && p->content_length == 0) {
        rq->crlf_left = 2;
        if (!crlf_ok(rq, at + len, (size_t)(rq->feed_end - (at + len)))) {
            rq->error_status = 400;
            return HPE_USER;
        }
    }
    /* Discarded bodies count too: draining one is bounded the same way. */
    rq->body_seen += len;
    if (rq->body_seen > rq->body_limit && !rq->body_over) {
        /* Before the handler reads, it may still raise the limit (a
         * route's own): hold the body. Once it reads, or after its
         * answer, the body is refused. */
        if (!td_http_is_live(hc) || rq->body_whole || rq->body_pieces || rq->body_status != 1) {
            rq->error_status = 413;
            return HPE_USER;
        }
        rq->body_over = 1;
        body_pause(hc);
    }
    if (rq->body_status != 1)
        return 0; /* nobody will read it: the response ended, or it failed */
    if (rq->body_off > 0) {
        /* Pieces handed out are dropped before more come. */
        memmove(rq->body.data, rq->body.data + rq->body_off, rq->body.len - rq->body_off);
        rq->body.len -= rq->body_off;
        rq->body_off = 0;
    }
    if (td_buf_append(&rq->body, at, len) != 0) {
        rq->error_status = 503;
        return HPE_USER;
    }
    if (!rq->body_whole && rq->body.len >= TD_HTTP_BODY_WINDOW)
        body_pause(hc);
    return 0;
}

static int on_message_complete(llhttp_t *p) {
    hc_of_parser(p)->rq->event = EV_MESSAGE;
    return HPE_PAUSED;
}

static const llhttp_settings_t parser_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_header_field_complete = on_header_field_complete,
    .on_header_value_complete = on_header_value_complete,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* ---- request state ---- */

/* A request state for hc, from the spares when there are some. NULL when
 * out of memory. */
static td_http_req *rq_attach(td_http_conn *hc) {
    td_http_server *hs = td_http__server(hc);
    td_http_req *rq;
    if (hs->nspare > 0) {
        rq = hs->spare[--hs->nspare];
        td_http_fields keep = rq->fields;
        memset(rq, 0, sizeof *rq);
        rq->fields = keep;
        td_http_fields_reset(&rq->fields);
    } else {
        rq = calloc(1, sizeof *rq);
        if (!rq)
            return NULL;
    }
    rq->fields.limit = hs->cfg.max_header_bytes;
    td_list_init(&rq->body_waiters);
    td_list_init(&rq->drain_waiters);
    llhttp_init(&rq->parser, HTTP_REQUEST, &parser_settings);
    rq->parser.data = hc;
    hc->rq = rq;
    return rq;
}

static void keep_small(td_buf *b) {
    if (b->cap > TD_REQ_KEEP_BUFFER)
        td_buf_free(b);
}

/* The connection is idle (or gone): its request state goes back. */
static void rq_detach(td_http_conn *hc) {
    td_http_req *rq = hc->rq;
    if (!rq)
        return;
    td_http_server *hs = td_http__server(hc);
    hc->rq = NULL;
    td_buf_free(&rq->body);
    td_buf_free(&rq->pending);
    if (hs->nspare < TD_REQ_SPARE_MAX && (hs->spare || (hs->spare = malloc(TD_REQ_SPARE_MAX * sizeof *hs->spare)))) {
        keep_small(&rq->fields.text);
        keep_small(&rq->fields.headers);
        hs->spare[hs->nspare++] = rq;
        return;
    }
    td_http_fields_free(&rq->fields);
    free(rq);
}

/* ---- waiters ---- */

/* Calls every waiter of the list once. A callback may wake the same list
 * again (with another status): each record is unlinked before its call. */
static void wake(td_http_conn *hc, td_list *waiters, int status) {
    while (!td_list_empty(waiters)) {
        td_http_waiter *w = td_container_of(waiters->next, td_http_waiter, link);
        td_list_remove(&w->link);
        w->cb(hc, status, w->ud);
    }
}

/* A piece arrived for a body read in pieces: each reader waiting now is
 * called once. One that finds the piece taken by another waits again: on
 * the request's list, not on the one being walked. */
static void wake_readers(td_http_conn *hc) {
    td_list now;
    td_list_init(&now);
    td_list_splice(&hc->rq->body_waiters, &now);
    wake(hc, &now, 0);
}

void td_http_wait_body(td_http_conn *hc, td_http_waiter *w) { td_list_push_back(&hc->rq->body_waiters, &w->link); }

void td_http_wait_drain(td_http_conn *hc, td_http_waiter *w) {
    td_list_push_back(&hc->rq->drain_waiters, &w->link);
    td_conn_want_drain(&hc->conn);
}

/* ---- request lifecycle ---- */

static void feed(td_http_conn *hc, const char *data, size_t len);
static void parse_failed(td_http_conn *hc, int status);

/* Reading stops while a body waits for its handler: past the window, or
 * held over its limit. The client is not the slow side then, so the body
 * timeout does not run. A handler that has not taken to the body may wait
 * on anything for long: the client's leaving must still end its request
 * (a hold). One reading pieces comes back for more soon, and learns of it
 * then (a plain pause, without a hold's descriptor). */
static void body_pause(td_http_conn *hc) {
    td_http_req *rq = hc->rq;
    if (rq->body_paused)
        return;
    rq->body_paused = 1;
    if (rq->body_pieces)
        td_conn_pause_reading(&hc->conn);
    else
        td_conn_hold_reading(&hc->conn);
    td_conn_clear_deadline(&hc->conn);
}

/* Reading goes on once the handler took what the window allows. After the
 * message is complete the pause is the idle logic's to lift (start_idle,
 * http_on_deferred), as for pipelined input. */
static void body_resume(td_http_conn *hc) {
    td_http_req *rq = hc->rq;
    if (!rq->body_paused || rq->body_over)
        return;
    if (!rq->body_whole && rq->body.len - rq->body_off >= TD_HTTP_BODY_WINDOW)
        return;
    rq->body_paused = 0;
    if (hc->conn.proto_state != TD_HTTP_BODY || hc->conn.closed)
        return;
    td_conn_resume_reading(&hc->conn);
    td_conn_set_deadline(&hc->conn, td_http__server(hc)->cfg.body_timeout_ms);
}

/* 100 Continue, once the handler asks for the body (then the limit it may
 * have set is known), and before any of the answer. */
static void send_continue(td_http_conn *hc) {
    static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
    hc->rq->continue_owed = 0;
    if (hc->rq->head_sent)
        return;
    td_buf *out = td_conn_out(&hc->conn, sizeof cont - 1);
    if (out)
        td_buf_append(out, cont, sizeof cont - 1);
}

void td_http__request_over(td_http_conn *hc, int status) {
    if (!td_http_is_live(hc))
        return;
    td_http_server *hs = td_http__server(hc);
    hc->conn.proto_flags &= (uint8_t)~(TD_HTTP_F_LIVE | TD_HTTP_F_STREAM);
    td_conn_bump(&hc->conn);
    hs->live--;
    if (hs->on_over)
        hs->on_over(hc, status, hs->ud);
}

/* The body will not be read: tell the waiters why, and stop buffering it. */
static void body_failed(td_http_conn *hc, int status) {
    td_http_req *rq = hc->rq;
    if (!rq)
        return;
    if (rq->body_status == 1)
        rq->body_status = status;
    wake(hc, &rq->body_waiters, status);
}

/* Between requests. Input that follows (`more`, or pipelined input kept
 * in pending) is parsed once the answers before it are below the
 * high-water mark; without any, the connection holds no request state and
 * waits for the keep-alive timeout. */
static void start_idle(td_http_conn *hc, int more) {
    td_http_server *hs = td_http__server(hc);
    td_http_req *rq = hc->rq;
    hc->conn.proto_state = TD_HTTP_IDLE;
    if (rq && (more || rq->pending.len > 0)) {
        rq->message_complete = 0;
        rq->head_sent = 0;
        rq->body.len = 0;
        rq->body_off = 0;
        if (td_http_unsent(hc) > TD_HTTP_HIGH_WATER)
            td_conn_flush(&hc->conn); /* what the kernel takes now does not count */
        if (hc->conn.closed)
            return;
        if (td_http_unsent(hc) > TD_HTTP_HIGH_WATER) {
            hc->conn.proto_flags |= TD_HTTP_F_WAITING_DRAIN;
            td_conn_pause_reading(&hc->conn);
            td_conn_want_drain(&hc->conn);
            return;
        }
        if (!more)
            td_conn_defer(&hc->conn);
        return;
    }
    rq_detach(hc);
    td_conn_resume_reading(&hc->conn);
    td_conn_set_deadline(&hc->conn, hs->cfg.keepalive_timeout_ms);
}

static int header_is(const td_http_req *rq, const td_http_header *h, const char *name, size_t nlen) {
    return h->name_len == nlen && memcmp(rq->fields.text.data + h->name, name, nlen) == 0;
}

static int value_has_token(const td_http_req *rq, const td_http_header *h, const char *tok, size_t tlen) {
    const char *v = rq->fields.text.data + h->value;
    for (uint32_t i = 0; i + tlen <= h->value_len; i++)
        if (strncasecmp(v + i, tok, tlen) == 0)
            return 1;
    return 0;
}

static int is_tchar(unsigned char ch) {
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

/* Transfer-Encoding (every line of it, in order): 0 when the codings are
 * exactly chunked, 501 for a coding tendril does not implement, 400 for a
 * malformed list. (llhttp 8 lets other codings through to the body.) */
static int transfer_coding_status(const td_http_req *rq, const td_http_header *hdrs, size_t n) {
    int codings = 0, chunked_last = 0, unknown = 0;
    for (size_t i = 0; i < n; i++) {
        if (!header_is(rq, &hdrs[i], "transfer-encoding", 17))
            continue;
        const char *v = rq->fields.text.data + hdrs[i].value;
        size_t len = hdrs[i].value_len, j = 0;
        while (j <= len) {
            /* One list element: OWS token OWS, up to a comma or the end. */
            while (j < len && (v[j] == ' ' || v[j] == '\t'))
                j++;
            size_t start = j;
            while (j < len && is_tchar((unsigned char)v[j]))
                j++;
            size_t tlen = j - start;
            while (j < len && (v[j] == ' ' || v[j] == '\t'))
                j++;
            if (j < len && v[j] != ',')
                return 400; /* parameters, quotes, stray bytes */
            j++;
            if (tlen == 0)
                continue; /* an empty element */
            if (chunked_last)
                return 400; /* chunked must be the last coding, once */
            codings++;
            if (tlen == 7 && strncasecmp(v + start, "chunked", 7) == 0)
                chunked_last = 1;
            else
                unknown = 1;
        }
    }
    if (codings == 0)
        return 400;
    return unknown ? 501 : 0;
}

/* An absolute-form target (RFC 9112 section 3.2.2): http or https, a
 * host that is not empty, no user info. */
static int absolute_form_ok(const char *t, size_t len) {
    size_t skip;
    if (len >= 7 && strncasecmp(t, "http://", 7) == 0)
        skip = 7;
    else if (len >= 8 && strncasecmp(t, "https://", 8) == 0)
        skip = 8;
    else
        return 0;
    size_t end = skip;
    while (end < len && t[end] != '/' && t[end] != '?' && t[end] != '#') {
        if (t[end] == '@')
            return 0;
        end++;
    }
    return end > skip;
}

/* A whole, valid head: check what llhttp lets through, then hand it on. */
static void on_head(td_http_conn *hc) {
    td_http_server *hs = td_http__server(hc);
    td_http_req *rq = hc->rq;
    llhttp_t *p = &rq->parser;
    if (p->http_major != 1 || p->http_minor > 1) {
        td_http__error_response(hc, 505);
        return;
    }
    if ((p->http_minor == 1 && rq->hosts != 1) || rq->hosts > 1) {
        td_http__error_response(hc, 400);
        return;
    }
    if (p->method == HTTP_CONNECT) {
        td_http__error_response(hc, 405); /* tendril is no proxy */
        return;
    }
    /* A NUL in the decoded path would cut it short in every C string. */
    const char *target = rq->fields.text.data;
    if (rq->target_len > 0 && target[0] != '/' && !(rq->target_len == 1 && target[0] == '*') &&
        !absolute_form_ok(target, rq->target_len)) {
        td_http__error_response(hc, 400);
        return;
    }
    for (uint32_t i = 0; i + 2 < rq->target_len && target[i] != '?'; i++) {
        if (target[i] == '%' && target[i + 1] == '0' && target[i + 2] == '0') {
            td_http__error_response(hc, 400);
            return;
        }
    }
    int has_body = (p->flags & F_CHUNKED) || ((p->flags & F_CONTENT_LENGTH) && p->content_length > 0);
    int expect_continue = 0;
    size_t n = td_http_fields_count(&rq->fields);
    const td_http_header *hdrs = td_http_fields_at(&rq->fields);
    if ((p->flags & F_TRANSFER_ENCODING) || rq->te_seen) {
        /* HTTP/1.0 has no Transfer-Encoding: faulty framing. An empty
         * value is malformed; and what llhttp did not take for chunked
         * ("chunked" then a tab) must not be framed as anything else. */
        int st = p->http_minor == 0 ? 400 : transfer_coding_status(rq, hdrs, n);
        if (st == 0 && !(p->flags & F_CHUNKED))
            st = 400;
        if (st) {
            td_http__error_response(hc, st);
            return;
        }
    }
    for (size_t i = 0; i < n; i++)
        if (header_is(rq, &hdrs[i], "expect", 6) && value_has_token(rq, &hdrs[i], "100-continue", 12))
            expect_continue = 1;

    rq->keep_alive = llhttp_should_keep_alive(p) ? 1 : 0;
    rq->close_after = 0;
    rq->no_body = p->method == HTTP_HEAD;
    rq->status = 200;
    rq->body_sent = 0;
    rq->chunked = 0;
    rq->head_sent = 0;
    rq->user_date = rq->user_server = rq->user_length = 0;
    rq->body_whole = rq->body_pieces = rq->body_over = rq->body_paused = rq->continue_owed = 0;
    rq->body_limit = hs->cfg.max_body_bytes;
    rq->body_declared = (p->flags & F_CONTENT_LENGTH) ? (int64_t)p->content_length : -1;
    hc->conn.proto_state = TD_HTTP_BODY; /* until on_message_complete (at once without a body) */
    if (has_body) {
        rq->body_status = 1;
        rq->continue_owed = expect_continue && p->http_minor == 1;
        if (rq->body_declared > 0 && (uint64_t)rq->body_declared > rq->body_limit) {
            /* Held, not refused yet: the handler may raise the limit (a
             * route's own) or read it and get the 413. */
            rq->body_over = 1;
            body_pause(hc);
        } else {
            td_conn_set_deadline(&hc->conn, hs->cfg.body_timeout_ms);
        }
    } else {
        rq->body_status = 0;
        td_conn_clear_deadline(&hc->conn);
    }
    hc->conn.proto_flags |= TD_HTTP_F_LIVE;
    td_conn_bump(&hc->conn);
    hs->live++;
    if (hs->on_request)
        hs->on_request(hc, hs->ud);
}

static void on_message(td_http_conn *hc) {
    td_http_req *rq = hc->rq;
    rq->message_complete = 1;
    /* "Connection: close" among the trailers: llhttp stops parsing what
     * follows, so the connection ends after the answer. */
    if (rq->keep_alive && !llhttp_should_keep_alive(&rq->parser))
        rq->close_after = 1;
    if (hc->conn.proto_state == TD_HTTP_BODY)
        td_conn_clear_deadline(&hc->conn);
    /* The body is whole: what follows is pipelined input, read (and
     * bounded) as such. */
    if (rq->body_paused) {
        rq->body_paused = 0;
        td_conn_resume_reading(&hc->conn);
    }
    if (rq->body_status == 1) {
        rq->body_status = 0;
        wake(hc, &rq->body_waiters, 0);
    }
    hc->conn.proto_state = TD_HTTP_AWAITING;
    if (!td_http_is_live(hc))
        start_idle(hc, 0); /* the response went before the body had arrived */
}

/* Keeps input for after the live request, pausing reads past a bound. */
static int keep_pending(td_http_conn *hc, const char *data, size_t len) {
    td_http_req *rq = hc->rq;
    if (td_buf_append(&rq->pending, data, len) != 0) {
        td_conn_close(&hc->conn);
        return -1;
    }
    if (rq->pending.len >= TD_PENDING_MAX)
        td_conn_pause_reading(&hc->conn);
    return 0;
}

/* Parses as much as the current request allows. llhttp's callbacks only
 * record; the actions happen here, between llhttp calls, and none runs Lua
 * (the request's task is posted and runs after the transport callback). */
static void feed(td_http_conn *hc, const char *data, size_t len) {
    td_http_server *hs = td_http__server(hc);
    /* After a pause llhttp may owe a callback with no input left (the end
     * of a message without a body): run it once more with zero bytes. */
    int resumed = 0;
    while (!hc->conn.closed) {
        if (len == 0 && (!resumed || hc->conn.proto_state == TD_HTTP_AWAITING || hc->conn.proto_state == TD_HTTP_IDLE))
            return;
        resumed = 0;
        if (hc->conn.proto_state == TD_HTTP_AWAITING) {
            if (td_http_is_live(hc)) {
                /* Answer in order: keep the rest for after this response. */
                keep_pending(hc, data, len);
                return;
            }
            start_idle(hc, len > 0);
            if (hc->conn.proto_flags & TD_HTTP_F_WAITING_DRAIN) {
                keep_pending(hc, data, len);
                return;
            }
        }
        if (hc->conn.proto_state == TD_HTTP_IDLE) {
            hc->conn.proto_state = TD_HTTP_HEAD;
            td_conn_set_deadline(&hc->conn, hs->cfg.header_timeout_ms);
            if (hc->rq)
                hc->rq->head_bytes = 0;
        }
        td_http_req *rq = hc->rq ? hc->rq : rq_attach(hc);
        if (!rq) {
            td_log(TD_LOG_ERROR, "out of memory reading a request");
            td_conn_close(&hc->conn);
            return;
        }
        rq->feed_start = data;
        rq->feed_end = data + len;
        rq->scan_from = data;
        if (rq->crlf_left && !crlf_ok(rq, data, len)) {
            parse_failed(hc, 400);
            return;
        }
        llhttp_errno_t err = llhttp_execute(&rq->parser, data, len);
        size_t used = err == HPE_OK ? len : (size_t)(llhttp_get_error_pos(&rq->parser) - data);
        if (err != HPE_USER && scan_framing(rq, rq->scan_from, data + used) != 0) {
            parse_failed(hc, 400);
            return;
        }
        if (used > 0)
            rq->prev_byte = data[used - 1];
        if (hc->conn.proto_state == TD_HTTP_HEAD) {
            rq->head_bytes += used;
            if (rq->head_bytes > hs->cfg.max_header_bytes) {
                td_http__error_response(hc, 431);
                return;
            }
        }
        /* The body timeout runs between reads, as nginx's does, while the
         * request lives; a body discarded after the answer gets one body
         * timeout in all (set when the answer ended), as nginx's
         * lingering_time bounds its discarding. */
        if (hc->conn.proto_state == TD_HTTP_BODY && used > 0 && td_http_is_live(hc) && !rq->body_paused)
            td_conn_set_deadline(&hc->conn, hs->cfg.body_timeout_ms);
        /* A handler reading the body in pieces hears of each. */
        if (rq->body_pieces && rq->body.len > rq->body_off)
            wake_readers(hc);
        if (hc->conn.closed)
            return;
        data += used;
        len -= used;
        if (err == HPE_OK)
            return;
        if (err == HPE_PAUSED) {
            llhttp_resume(&rq->parser);
            int ev = rq->event;
            rq->event = EV_NONE;
            if (ev == EV_HEADERS)
                on_head(hc);
            else if (ev == EV_MESSAGE)
                on_message(hc);
            resumed = 1;
            continue;
        }
        if (err == HPE_PAUSED_UPGRADE) {
            /* tendril does not switch protocols yet: the request was served
             * as a plain one, and the connection goes on as HTTP. */
            llhttp_resume_after_upgrade(&rq->parser);
            continue;
        }
        parse_failed(hc, rq->error_status ? rq->error_status : err == HPE_INVALID_VERSION ? 505 : 400);
        return;
    }
}

/* The input cannot be parsed (any more): answered with status when that
 * can still be the answer to the request, otherwise the connection goes. */
static void parse_failed(td_http_conn *hc, int status) {
    td_http_req *rq = hc->rq;
    if (status == 413 && td_http_is_live(hc)) {
        body_failed(hc, TD_ETOOLARGE);
        if (hc->conn.closed)
            return;
    }
    if (td_http_is_live(hc) && rq->head_sent) {
        td_conn_close(&hc->conn);
        return;
    }
    /* The answer went already (the body was being discarded): an
     * unsolicited error would be read as the answer to the next request. */
    if (!td_http_is_live(hc) && hc->conn.proto_state == TD_HTTP_BODY) {
        td_conn_close(&hc->conn);
        return;
    }
    td_http__error_response(hc, status);
}

/* ---- connection callbacks ---- */

static void http_on_open(td_listener *l, td_conn *c) {
    (void)l;
    td_http_conn *hc = (td_http_conn *)c;
    td_http_server *hs = td_http__server(hc);
    hs->nconns++;
    if (hs->draining) {
        td_conn_close(c);
        return;
    }
    /* A new connection gets the header timeout for its first request. */
    hc->conn.proto_state = TD_HTTP_HEAD;
    td_conn_set_deadline(c, hs->cfg.header_timeout_ms);
    td_conn_set_send_timeout(c, hs->cfg.send_timeout_ms);
}

static void http_on_data(td_conn *c, const char *data, size_t len) {
    td_http_conn *hc = (td_http_conn *)c;
    if (hc->rq && hc->rq->pending.len > 0) {
        /* Earlier input waits already: keep the order. */
        keep_pending(hc, data, len);
        return;
    }
    feed(hc, data, len);
}

static void http_on_deferred(td_conn *c) {
    td_http_conn *hc = (td_http_conn *)c;
    if (!hc->rq || (hc->conn.proto_flags & TD_HTTP_F_WAITING_DRAIN))
        return;
    td_buf in = hc->rq->pending;
    hc->rq->pending = (td_buf){0};
    feed(hc, in.data, in.len);
    td_buf_free(&in);
    if (!c->closed && !td_http_is_live(hc) && !(hc->conn.proto_flags & TD_HTTP_F_WAITING_DRAIN) &&
        (!hc->rq || hc->rq->pending.len == 0))
        td_conn_resume_reading(c);
}

/* The client closed or reset: it is gone, whatever it sent last. (A
 * half-close is treated the same way: nearly every client that does it has
 * given up, and a live request learns at once that it is over.) */
static void http_on_eof(td_conn *c, int err) { td_conn_close(c); }

static void http_on_timeout(td_conn *c) {
    td_http_conn *hc = (td_http_conn *)c;
    td_http_req *rq = hc->rq;
    switch (hc->conn.proto_state) {
    case TD_HTTP_HEAD:
        /* Nothing received at all is an idle connection, not a slow one. */
        if (!rq || rq->head_bytes == 0)
            td_conn_close(c);
        else
            td_http__error_response(hc, 408);
        return;
    case TD_HTTP_BODY:
        /* The answer went while the body was still coming: quietly. */
        if (!td_http_is_live(hc)) {
            td_conn_close(c);
            return;
        }
        body_failed(hc, TD_ETIMEOUT);
        if (c->closed)
            return;
        if (rq->head_sent) {
            td_conn_close(c);
            return;
        }
        /* The handler answers (its req:body() said "timeout"), and its
         * answer ends the connection: the rest of the body never came. */
        rq->close_after = 1;
        td_conn_pause_reading(c);
        td_conn_clear_deadline(c);
        return;
    default:
        /* Idle: but a large answer may still be on its way to a slow
         * reader; the send timeout watches that, not this one. */
        if (td_conn_unsent(c) > 0) {
            td_conn_set_deadline(c, td_http__server(hc)->cfg.keepalive_timeout_ms);
            return;
        }
        td_conn_close(c);
        return;
    }
}

static void http_on_drain(td_conn *c) {
    td_http_conn *hc = (td_http_conn *)c;
    if (hc->conn.proto_flags & TD_HTTP_F_WAITING_DRAIN) {
        hc->conn.proto_flags &= (uint8_t)~TD_HTTP_F_WAITING_DRAIN;
        td_conn_defer(c);
    }
    if (hc->rq)
        wake(hc, &hc->rq->drain_waiters, 0);
}

static void http_on_close(td_conn *c) {
    td_http_conn *hc = (td_http_conn *)c;
    td_http__server(hc)->nconns--;
    if (td_http_is_live(hc) && hc->rq) {
        /* Cut off (the client went away, the send timeout): logged and
         * counted too, as 499 (nginx's "client closed request") when no
         * answer had begun, else with its status and the bytes it got so
         * far. */
        if (!hc->rq->head_sent)
            hc->rq->status = 499;
        td_http__access_log(hc);
    }
    td_http__request_over(hc, TD_ECLOSED);
    body_failed(hc, TD_ECLOSED);
    if (hc->rq)
        wake(hc, &hc->rq->drain_waiters, TD_ECLOSED);
    rq_detach(hc);
}

static void http_on_connect(td_conn *c, int status) { (void)c, (void)status; }

const td_conn_ops td_http__ops = {
    .low_water = TD_HTTP_LOW_WATER,
    .on_data = http_on_data,
    .on_eof = http_on_eof,
    .on_timeout = http_on_timeout,
    .on_drain = http_on_drain,
    .on_deferred = http_on_deferred,
    .on_connect = http_on_connect,
    .on_close = http_on_close,
};

int td_http_server_init(td_http_server *hs, td_transport *tp, const td_http_config *cfg,
                        td_http_request_cb on_request, td_http_over_cb on_over, void *ud) {
    memset(hs, 0, sizeof *hs);
    hs->tp = tp;
    hs->cfg = *cfg;
    hs->on_request = on_request;
    hs->on_over = on_over;
    hs->ud = ud;
    return 0;
}

struct td_http_listener {
    td_listener l; /* first: the close callback gets it */
};

td_http_listener *td_http_server_listen_more(td_http_server *hs, int fd, int *err) {
    td_http_listener *hl = malloc(sizeof *hl);
    if (!hl) {
        if (fd >= 0)
            close(fd);
        *err = UV_ENOMEM;
        return NULL;
    }
    *err = td_listener_adopt(&hl->l, hs->tp, fd, &td_http__ops, sizeof(td_http_conn), http_on_open, hs);
    if (*err) {
        free(hl);
        return NULL;
    }
    return hl;
}

int td_http_listener_port(td_http_listener *hl) { return td_listener_port(&hl->l); }

static void free_more(td_listener *l) { free(l); }

void td_http_server_unlisten(td_http_listener *hl) {
    td_listener_close(&hl->l, free_more);
}

int td_http_server_listen(td_http_server *hs, int fd) {
    return td_listener_adopt(&hs->listener, hs->tp, fd, &td_http__ops, sizeof(td_http_conn), http_on_open, hs);
}

/* What a client that speaks plain HTTP to the HTTPS port gets (as nginx
 * does), so that the mistake is plain to whoever made it. */
#define PLAIN_TO_TLS_BODY "This port speaks HTTPS: the request came as plain HTTP\n"
_Static_assert(sizeof PLAIN_TO_TLS_BODY - 1 == 55, "the Content-Length below");
static const char plain_to_tls[] = "HTTP/1.1 400 Bad Request\r\n"
                                   "Content-Type: text/plain\r\n"
                                   "Content-Length: 55\r\n"
                                   "Connection: close\r\n"
                                   "\r\n" PLAIN_TO_TLS_BODY;

int td_http_server_listen_tls(td_http_server *hs, int fd, struct td_tls_server *tls) {
    int rc = td_listener_adopt(&hs->tls_listener, hs->tp, fd, &td_http__ops, sizeof(td_http_conn), http_on_open, hs);
    if (rc == 0)
        td_http_server_set_tls(hs, tls);
    return rc;
}

void td_http_server_set_tls(td_http_server *hs, struct td_tls_server *tls) {
    td_listener_set_tls(&hs->tls_listener, tls, plain_to_tls, sizeof plain_to_tls - 1);
}

void td_http_server_destroy(td_http_server *hs) {
    while (hs->nspare > 0) {
        td_http_req *rq = hs->spare[--hs->nspare];
        td_http_fields_free(&rq->fields);
        free(rq);
    }
    free(hs->spare);
    hs->spare = NULL;
}

/* An endless response: its body ends here, and its request is over as if
 * the client had gone (its tasks' waits end). */
static void end_stream(td_http_conn *hc) {
    td_http_req *rq = hc->rq;
    if (rq->head_sent && rq->chunked && !rq->no_body) {
        td_buf *out = td_conn_out(&hc->conn, 5);
        if (out)
            td_buf_append(out, "0\r\n\r\n", 5);
    }
    td_http__access_log(hc);
    td_http__request_over(hc, TD_ECLOSED);
    td_conn_end(&hc->conn);
}

/* Idle connections close at once; streams end; the others finish their
 * request. */
static void drain_one(td_conn *c, void *ud) {
    td_http_conn *hc = (td_http_conn *)c;
    if (c->owner != ud || c->closed)
        return;
    if (td_http_is_live(hc) && (c->proto_flags & TD_HTTP_F_STREAM)) {
        end_stream(hc);
        return;
    }
    int idle = hc->conn.proto_state == TD_HTTP_IDLE || (hc->conn.proto_state == TD_HTTP_HEAD && (!hc->rq || hc->rq->head_bytes == 0));
    if (idle && !td_http_is_live(hc) && (!hc->rq || hc->rq->pending.len == 0))
        td_conn_close(c);
}

void td_http_server_drain(td_http_server *hs) {
    hs->draining = 1;
    td_listener_close(&hs->listener, NULL);
    td_listener_close(&hs->tls_listener, NULL);
    /* Listeners from td_http_server_listen_more are their owners' to close
     * (a Lua userdata's close or __gc): what they accept now is closed at
     * once. */
    td_transport_foreach(hs->tp, drain_one, hs);
}

int td_http_upgrade(td_http_conn *hc, const char *upgrade, const char *lines, size_t len, td_buf *rest) {
    td_http_req *rq = hc->rq;
    if (!td_http_is_live(hc) || rq->head_sent)
        return TD_ECLOSED;
    if (!rq->message_complete || rq->body_status != 0)
        return TD_EBADARG;
    td_buf *out = td_conn_out(&hc->conn, 96 + strlen(upgrade) + len);
    if (!out)
        return UV_ENOMEM;
    td_buf_printf(out, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: %s\r\nConnection: Upgrade\r\n", upgrade);
    td_buf_append(out, lines, len);
    td_buf_append(out, "\r\n", 2);
    rq->status = 101;
    rq->head_sent = 1;
    td_http__access_log(hc);
    td_http__request_over(hc, 0);
    wake(hc, &rq->drain_waiters, TD_ECLOSED);
    *rest = rq->pending;
    rq->pending = (td_buf){0};
    rq_detach(hc);
    td_http__server(hc)->nconns--;
    hc->conn.proto_state = 0;
    hc->conn.proto_flags = 0;
    hc->conn.owner = NULL;
    return 0;
}

/* ---- request accessors ---- */

const char *td_http_method(const td_http_conn *hc) {
    return llhttp_method_name((llhttp_method_t)hc->rq->parser.method);
}

const char *td_http_target(const td_http_conn *hc, size_t *len) {
    *len = hc->rq->target_len;
    return hc->rq->fields.text.data ? hc->rq->fields.text.data : "";
}

int td_http_minor(const td_http_conn *hc) { return hc->rq->parser.http_minor; }

/* A body over its limit, asked for: the 413 goes now (the request is
 * over). */
static int refuse_body(td_http_conn *hc) {
    parse_failed(hc, 413);
    return TD_ETOOLARGE;
}

int td_http_body(td_http_conn *hc, const char **data, size_t *len) {
    td_http_req *rq = hc->rq;
    if (rq->body_pieces)
        return TD_EBADARG;
    if (rq->body_over && rq->body_status >= 0)
        return refuse_body(hc);
    if (rq->continue_owed)
        send_continue(hc);
    if (!rq->body_whole) {
        rq->body_whole = 1;
        body_resume(hc);
    }
    if (rq->body_status == 0) {
        *data = rq->body.data ? rq->body.data : "";
        *len = rq->body.len;
    }
    return rq->body_status;
}

int td_http_body_read(td_http_conn *hc, size_t max, const char **data, size_t *len) {
    td_http_req *rq = hc->rq;
    if (rq->body_whole)
        return TD_EBADARG;
    if (rq->body_over && rq->body_status >= 0)
        return refuse_body(hc);
    if (rq->continue_owed)
        send_continue(hc);
    rq->body_pieces = 1;
    size_t avail = rq->body.len - rq->body_off;
    if (avail > 0) {
        size_t n = avail < max ? avail : max;
        *data = rq->body.data + rq->body_off;
        *len = n;
        rq->body_off += n;
        if (rq->body_off == rq->body.len)
            rq->body.len = rq->body_off = 0; /* the bytes stay until the next append */
        body_resume(hc);
        return 0;
    }
    if (rq->body_status == 0) {
        *data = "";
        *len = 0;
    }
    return rq->body_status;
}

int td_http_set_body_limit(td_http_conn *hc, uint64_t limit) {
    td_http_req *rq = hc->rq;
    if (rq->body_whole || rq->body_pieces)
        return TD_EBADARG;
    rq->body_limit = limit;
    if (rq->body_status < 0)
        return 0;
    uint64_t known = rq->body_declared >= 0 ? (uint64_t)rq->body_declared : rq->body_seen;
    if (known > limit || rq->body_seen > limit) {
        rq->body_over = 1;
        if (rq->body_status == 1)
            body_pause(hc);
    } else if (rq->body_over) {
        rq->body_over = 0;
        body_resume(hc);
    }
    return 0;
}

/* ---- ending a response (the head and body writers are in http_response.c) ---- */

void td_http_response_end(td_http_conn *hc) {
    if (!td_http_is_live(hc))
        return;
    td_http_server *hs = td_http__server(hc);
    td_http_req *rq = hc->rq;
    if (rq->chunked && !rq->no_body) {
        td_buf *out = td_conn_out(&hc->conn, 5);
        if (out)
            td_buf_append(out, "0\r\n\r\n", 5);
    }
    td_http__access_log(hc);
    td_http__request_over(hc, 0);
    wake(hc, &rq->drain_waiters, TD_ECLOSED);
    /* A body held over its limit is never read: the connection ends. */
    if (rq->close_after || !rq->keep_alive || hs->draining || rq->body_status < 0 ||
        (rq->body_over && rq->body_status == 1)) {
        td_conn_end(&hc->conn);
        return;
    }
    /* Discard a body nobody read; the parser still frames it, for one
     * body timeout at most. */
    if (rq->body_status == 1) {
        rq->body_status = 0;
        wake(hc, &rq->body_waiters, TD_ECLOSED);
        td_buf_free(&rq->body);
        rq->body_off = 0;
        if (rq->body_paused) {
            rq->body_paused = 0;
            td_conn_resume_reading(&hc->conn);
        }
        td_conn_set_deadline(&hc->conn, hs->cfg.body_timeout_ms);
    }
    if (rq->message_complete)
        start_idle(hc, 0);
}
