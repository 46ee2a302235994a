/* Owns the request side of an HTTP connection: the llhttp parser, the head
 * and body buffers, the connection's phase and deadlines, and the order of
 * pipelined requests. */
#include <errno.h>
#include <string.h>
#include <strings.h>

#include "errors.h"
#include "http_private.h"
#include "log.h"

/* Head buffers: most request heads fit in one block. */
#define TD_HEAD_BLOCK 4096
#define TD_HEAD_SPARE_MAX 1024
/* Input queued behind a live request before reading pauses. */
#define TD_PENDING_MAX 65536

enum { EV_NONE, EV_HEADERS, EV_MESSAGE };
enum { CB_NONE, CB_FIELD, CB_VALUE };

static td_http_conn *hc_of_parser(llhttp_t *p) { return td_container_of(p, td_http_conn, parser); }

static td_http_header *last_header(td_http_conn *hc) {
    return (td_http_header *)(void *)(hc->headers.data + hc->headers.len) - 1;
}

static int head_append(td_http_conn *hc, const char *at, size_t len) {
    size_t limit = td_http__server(hc)->cfg.max_header_bytes;
    if (hc->head.len + len > limit) {
        hc->error_status = 431;
        return HPE_USER;
    }
    if (td_buf_append(&hc->head, at, len) != 0) {
        hc->error_status = 503;
        return HPE_USER;
    }
    return 0;
}

/* ---- llhttp callbacks: they record, the feed loop acts ---- */

static int on_message_begin(llhttp_t *p) {
    td_http_conn *hc = hc_of_parser(p);
    td_http_server *hs = td_http__server(hc);
    if (td_buf_pool_take(&hs->head_pool, &hc->head) != 0 || td_buf_pool_take(&hs->head_pool, &hc->headers) != 0) {
        hc->error_status = 503;
        return HPE_USER;
    }
    hc->head.len = 0;
    hc->headers.len = 0;
    hc->body.len = 0;
    hc->target_len = 0;
    hc->last_cb = CB_NONE;
    hc->hosts = 0;
    hc->error_status = 0;
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len) {
    td_http_conn *hc = hc_of_parser(p);
    int rc = head_append(hc, at, len);
    hc->target_len = (uint32_t)hc->head.len;
    return rc;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len) {
    td_http_conn *hc = hc_of_parser(p);
    if (hc->last_cb != CB_FIELD) {
        td_http_header h = {.name = (uint32_t)hc->head.len};
        if (td_buf_append(&hc->headers, &h, sizeof h) != 0) {
            hc->error_status = 503;
            return HPE_USER;
        }
        hc->last_cb = CB_FIELD;
    }
    return head_append(hc, at, len);
}

static int on_header_field_complete(llhttp_t *p) {
    td_http_conn *hc = hc_of_parser(p);
    td_http_header *h = last_header(hc);
    h->name_len = (uint32_t)hc->head.len - h->name;
    char *name = hc->head.data + h->name;
    /* llhttp 8 keeps whitespace before the colon in the name; RFC 9112
     * says to reject it (it smuggles headers past other parsers). */
    if (h->name_len == 0 || name[h->name_len - 1] == ' ' || name[h->name_len - 1] == '\t') {
        hc->error_status = 400;
        return HPE_USER;
    }
    td_http_lower(name, h->name_len);
    if (h->name_len == 4 && memcmp(name, "host", 4) == 0)
        hc->hosts++;
    h->value = (uint32_t)hc->head.len;
    h->value_len = 0;
    return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len) {
    td_http_conn *hc = hc_of_parser(p);
    /* A value piece right after a line break is an obsolete line fold,
     * which llhttp 8 accepts and RFC 9112 lets a server reject. */
    char before = at > hc->feed_start ? at[-1] : hc->prev_byte;
    if (hc->last_cb == CB_VALUE && before == '\n') {
        hc->error_status = 400;
        return HPE_USER;
    }
    hc->last_cb = CB_VALUE;
    return head_append(hc, at, len);
}

static int on_header_value_complete(llhttp_t *p) {
    td_http_conn *hc = hc_of_parser(p);
    td_http_header *h = last_header(hc);
    h->value_len = (uint32_t)td_http_trim_end(hc->head.data + h->value, hc->head.len - h->value);
    hc->head.len = h->value + h->value_len;
    hc->last_cb = CB_NONE;
    return 0;
}

static int on_headers_complete(llhttp_t *p) {
    hc_of_parser(p)->event = EV_HEADERS;
    return HPE_PAUSED;
}

static int on_body(llhttp_t *p, const char *at, size_t len) {
    td_http_conn *hc = hc_of_parser(p);
    if (hc->body_status != 1)
        return 0; /* nobody will read it: the response ended, or it failed */
    if (hc->body.len + len > td_http__server(hc)->cfg.max_body_bytes) {
        hc->error_status = 413;
        return HPE_USER;
    }
    if (td_buf_append(&hc->body, at, len) != 0) {
        hc->error_status = 503;
        return HPE_USER;
    }
    return 0;
}

static int on_message_complete(llhttp_t *p) {
    hc_of_parser(p)->event = EV_MESSAGE;
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

void td_http_wait_body(td_http_conn *hc, td_http_waiter *w) { td_list_push_back(&hc->body_waiters, &w->link); }

void td_http_wait_drain(td_http_conn *hc, td_http_waiter *w) {
    td_list_push_back(&hc->drain_waiters, &w->link);
    td_conn_want_drain(&hc->conn);
}

/* ---- request lifecycle ---- */

static void feed(td_http_conn *hc, const char *data, size_t len);

void td_http__request_over(td_http_conn *hc) {
    if (!hc->live)
        return;
    hc->live = 0;
    hc->conn.serial++;
    td_http__server(hc)->live--;
}

/* The body will not be read: tell a waiter why, and stop buffering it. */
static void body_failed(td_http_conn *hc, int status) {
    if (hc->body_status == 1)
        hc->body_status = status;
    wake(hc, &hc->body_waiters, status);
}

static void start_idle(td_http_conn *hc) {
    td_http_server *hs = td_http__server(hc);
    hc->phase = TD_HTTP_IDLE;
    hc->message_complete = 0;
    hc->head_sent = 0;
    /* An idle connection keeps no buffers. */
    td_buf_free(&hc->body);
    td_buf_pool_give(&hs->head_pool, &hc->head);
    td_buf_pool_give(&hs->head_pool, &hc->headers);
    if (hc->pending.len > 0) {
        td_conn_defer(&hc->conn);
        return;
    }
    td_buf_free(&hc->pending);
    td_conn_resume_reading(&hc->conn);
    td_conn_set_timeout(&hc->conn, hs->q_keepalive);
}

static int header_is(td_http_conn *hc, const td_http_header *h, const char *name, size_t nlen) {
    return h->name_len == nlen && memcmp(hc->head.data + h->name, name, nlen) == 0;
}

static int value_has_token(td_http_conn *hc, const td_http_header *h, const char *tok, size_t tlen) {
    const char *v = hc->head.data + h->value;
    for (uint32_t i = 0; i + tlen <= h->value_len; i++)
        if (strncasecmp(v + i, tok, tlen) == 0)
            return 1;
    return 0;
}

/* A whole, valid head: check what llhttp lets through, then hand it on. */
static void on_head(td_http_conn *hc) {
    td_http_server *hs = td_http__server(hc);
    llhttp_t *p = &hc->parser;
    if (p->http_major != 1 || p->http_minor > 1) {
        td_http__error_response(hc, 505);
        return;
    }
    if ((p->http_minor == 1 && hc->hosts != 1) || hc->hosts > 1) {
        td_http__error_response(hc, 400);
        return;
    }
    int has_body = (p->flags & F_CHUNKED) || ((p->flags & F_CONTENT_LENGTH) && p->content_length > 0);
    if ((p->flags & F_CONTENT_LENGTH) && p->content_length > hs->cfg.max_body_bytes) {
        td_http__error_response(hc, 413);
        return;
    }
    int expect_continue = 0;
    size_t n = td_http_header_count(hc);
    const td_http_header *hdrs = (const td_http_header *)(const void *)hc->headers.data;
    for (size_t i = 0; i < n; i++)
        if (header_is(hc, &hdrs[i], "expect", 6) && value_has_token(hc, &hdrs[i], "100-continue", 12))
            expect_continue = 1;

    hc->keep_alive = llhttp_should_keep_alive(p) ? 1 : 0;
    hc->close_after = 0;
    hc->no_body = p->method == HTTP_HEAD;
    hc->status = 200;
    hc->body_sent = 0;
    hc->chunked = 0;
    hc->head_sent = 0;
    hc->user_date = hc->user_server = hc->user_length = hc->user_type = 0;
    if (has_body) {
        hc->phase = TD_HTTP_BODY;
        hc->body_status = 1;
        td_conn_set_timeout(&hc->conn, hs->q_body);
        if (expect_continue && p->http_minor == 1) {
            static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
            td_buf *out = td_conn_out(&hc->conn, sizeof cont - 1);
            if (out)
                td_buf_append(out, cont, sizeof cont - 1);
        }
    } else {
        hc->phase = TD_HTTP_BODY; /* until on_message_complete, at once */
        hc->body_status = 0;
        td_conn_clear_timeout(&hc->conn);
    }
    hc->live = 1;
    hc->conn.serial++;
    hs->live++;
    hs->on_request(hc, hs->ud);
}

static void on_message(td_http_conn *hc) {
    hc->message_complete = 1;
    if (hc->phase == TD_HTTP_BODY)
        td_conn_clear_timeout(&hc->conn);
    if (hc->body_status == 1) {
        hc->body_status = 0;
        wake(hc, &hc->body_waiters, 0);
    }
    hc->phase = TD_HTTP_AWAITING;
    if (!hc->live)
        start_idle(hc); /* the response went before the body had arrived */
}

/* Parses as much as the current request allows. Every action that may run
 * Lua happens here, between llhttp calls, never inside its callbacks. */
static void feed(td_http_conn *hc, const char *data, size_t len) {
    td_http_server *hs = td_http__server(hc);
    /* After a pause llhttp may owe a callback with no input left (the end
     * of a message without a body): run it once more with zero bytes. */
    int resumed = 0;
    while (!hc->conn.closed) {
        if (len == 0 && (!resumed || hc->phase == TD_HTTP_AWAITING || hc->phase == TD_HTTP_IDLE))
            return;
        resumed = 0;
        if (hc->phase == TD_HTTP_AWAITING) {
            if (hc->live) {
                /* Answer in order: keep the rest for after this response. */
                if (td_buf_append(&hc->pending, data, len) != 0) {
                    td_conn_close(&hc->conn);
                    return;
                }
                if (hc->pending.len >= TD_PENDING_MAX)
                    td_conn_pause_reading(&hc->conn);
                return;
            }
            start_idle(hc);
        }
        if (hc->phase == TD_HTTP_IDLE) {
            hc->phase = TD_HTTP_HEAD;
            hc->head_bytes = 0;
            td_conn_set_timeout(&hc->conn, hs->q_header);
        }
        hc->feed_start = data;
        llhttp_errno_t err = llhttp_execute(&hc->parser, data, len);
        size_t used = err == HPE_OK ? len : (size_t)(llhttp_get_error_pos(&hc->parser) - data);
        if (used > 0)
            hc->prev_byte = data[used - 1];
        if (hc->phase == TD_HTTP_HEAD) {
            hc->head_bytes += used;
            if (hc->head_bytes > hs->cfg.max_header_bytes) {
                td_http__error_response(hc, 431);
                return;
            }
        }
        data += used;
        len -= used;
        if (err == HPE_OK)
            return;
        if (err == HPE_PAUSED) {
            llhttp_resume(&hc->parser);
            int ev = hc->event;
            hc->event = EV_NONE;
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
            llhttp_resume_after_upgrade(&hc->parser);
            continue;
        }
        int status = hc->error_status ? hc->error_status : err == HPE_INVALID_VERSION ? 505 : 400;
        if (status == 413 && hc->live) {
            body_failed(hc, TD_ETOOLARGE);
            if (hc->conn.closed)
                return;
        }
        if (hc->live && hc->head_sent) {
            td_conn_close(&hc->conn);
            return;
        }
        td_http__error_response(hc, status);
        return;
    }
}

/* ---- connection callbacks ---- */

static void http_on_open(td_conn *c) {
    td_http_conn *hc = (td_http_conn *)c;
    llhttp_init(&hc->parser, HTTP_REQUEST, &parser_settings);
    td_list_init(&hc->body_waiters);
    td_list_init(&hc->drain_waiters);
    hc->body_status = 0;
    /* A new connection gets the header timeout for its first request. */
    hc->phase = TD_HTTP_HEAD;
    td_conn_set_timeout(c, td_http__server(hc)->q_header);
    if (td_http__server(hc)->draining)
        td_conn_close(c);
}

static void http_on_data(td_conn *c, const char *data, size_t len) {
    td_http_conn *hc = (td_http_conn *)c;
    if (hc->pending.len > 0) {
        /* Earlier input waits already: keep the order. */
        if (td_buf_append(&hc->pending, data, len) != 0)
            td_conn_close(c);
        else if (hc->pending.len >= TD_PENDING_MAX)
            td_conn_pause_reading(c);
        return;
    }
    feed(hc, data, len);
}

static void http_on_deferred(td_conn *c) {
    td_http_conn *hc = (td_http_conn *)c;
    td_buf in = hc->pending;
    hc->pending = (td_buf){0};
    feed(hc, in.data, in.len);
    td_buf_free(&in);
    if (!c->closed && hc->pending.len == 0 && !hc->live)
        td_conn_resume_reading(c);
}

/* The client closed or reset: it is gone, whatever it sent last. (A
 * half-close is treated the same way: nearly every client that does it has
 * given up, and a live request learns at once that writing is pointless.) */
static void http_on_eof(td_conn *c, int err) { td_conn_close(c); }

static void http_on_timeout(td_conn *c) {
    td_http_conn *hc = (td_http_conn *)c;
    switch (hc->phase) {
    case TD_HTTP_HEAD:
        /* Nothing received at all is an idle connection, not a slow one. */
        if (hc->head_bytes == 0)
            td_conn_close(c);
        else
            td_http__error_response(hc, 408);
        return;
    case TD_HTTP_BODY:
        body_failed(hc, TD_ETIMEOUT);
        if (c->closed)
            return;
        if (hc->live && hc->head_sent)
            td_conn_close(c);
        else
            td_http__error_response(hc, 408);
        return;
    default:
        /* Idle: but a large answer may still be on its way to a slow
         * reader; the send timeout watches that, not this one. */
        if (td_conn_write_queue(c) > 0) {
            td_conn_set_timeout(c, td_http__server(hc)->q_keepalive);
            return;
        }
        td_conn_close(c);
        return;
    }
}

static void http_on_drain(td_conn *c) {
    td_http_conn *hc = (td_http_conn *)c;
    wake(hc, &hc->drain_waiters, 0);
}

static void http_on_close(td_conn *c) {
    td_http_conn *hc = (td_http_conn *)c;
    td_http__request_over(hc);
    body_failed(hc, TD_ECLOSED);
    wake(hc, &hc->drain_waiters, TD_ECLOSED);
    td_http_server *hs = td_http__server(hc);
    td_buf_pool_give(&hs->head_pool, &hc->head);
    td_buf_pool_give(&hs->head_pool, &hc->headers);
    td_buf_free(&hc->body);
    td_buf_free(&hc->pending);
}

static const td_conn_ops http_ops = {
    .conn_size = sizeof(td_http_conn),
    .on_open = http_on_open,
    .on_data = http_on_data,
    .on_eof = http_on_eof,
    .on_timeout = http_on_timeout,
    .on_deferred = http_on_deferred,
    .on_drain = http_on_drain,
    .on_close = http_on_close,
};

int td_http_server_init(td_http_server *hs, uv_loop_t *loop, const td_http_config *cfg, size_t max_conns,
                        td_http_request_cb on_request, void *ud) {
    int rc = td_server_init(&hs->srv, loop, &http_ops, max_conns);
    if (rc)
        return rc;
    hs->cfg = *cfg;
    hs->on_request = on_request;
    hs->ud = ud;
    hs->live = 0;
    hs->draining = 0;
    td_buf_pool_init(&hs->head_pool, TD_HEAD_BLOCK, TD_HEAD_SPARE_MAX);
    hs->q_keepalive = td_server_add_queue(&hs->srv, cfg->keepalive_timeout_ms);
    hs->q_header = td_server_add_queue(&hs->srv, cfg->header_timeout_ms);
    hs->q_body = td_server_add_queue(&hs->srv, cfg->body_timeout_ms);
    td_server_set_send_timeout(&hs->srv, cfg->send_timeout_ms);
    return 0;
}

void td_http_server_destroy(td_http_server *hs) {
    td_server_destroy(&hs->srv);
    td_buf_pool_destroy(&hs->head_pool);
}

void td_http_server_drain(td_http_server *hs) {
    hs->draining = 1;
    td_server_stop_listening(&hs->srv);
    td_list *pos, *tmp;
    td_list_foreach_safe(pos, tmp, &hs->srv.conns) {
        td_http_conn *hc = (td_http_conn *)td_container_of(pos, td_conn, link);
        if (hc->conn.closed)
            continue;
        int idle = hc->phase == TD_HTTP_IDLE || (hc->phase == TD_HTTP_HEAD && hc->head_bytes == 0);
        if (idle && !hc->live && hc->pending.len == 0)
            td_conn_close(&hc->conn);
    }
}

/* ---- request accessors ---- */

const char *td_http_method(const td_http_conn *hc) { return llhttp_method_name((llhttp_method_t)hc->parser.method); }

const char *td_http_target(const td_http_conn *hc, size_t *len) {
    *len = hc->target_len;
    return hc->head.data ? hc->head.data : "";
}

int td_http_minor(const td_http_conn *hc) { return hc->parser.http_minor; }

size_t td_http_header_count(const td_http_conn *hc) { return hc->headers.len / sizeof(td_http_header); }

void td_http_header_at(const td_http_conn *hc, size_t i, const char **name, size_t *nlen, const char **value,
                       size_t *vlen) {
    const td_http_header *h = (const td_http_header *)(const void *)hc->headers.data + i;
    *name = hc->head.data + h->name;
    *nlen = h->name_len;
    *value = hc->head.data + h->value;
    *vlen = h->value_len;
}

int td_http_body(td_http_conn *hc, const char **data, size_t *len) {
    if (hc->body_status == 0) {
        *data = hc->body.data ? hc->body.data : "";
        *len = hc->body.len;
    }
    return hc->body_status;
}

/* ---- ending a response (the head and body writers are in http_response.c) ---- */

void td_http_response_end(td_http_conn *hc) {
    if (!hc->live)
        return;
    td_http_server *hs = td_http__server(hc);
    if (hc->chunked && !hc->no_body) {
        td_buf *out = td_conn_out(&hc->conn, 5);
        if (out)
            td_buf_append(out, "0\r\n\r\n", 5);
    }
    td_http__access_log(hc);
    td_http__request_over(hc);
    wake(hc, &hc->drain_waiters, TD_ECLOSED);
    if (hc->close_after || !hc->keep_alive || hs->draining || hc->body_status < 0) {
        td_conn_end(&hc->conn);
        return;
    }
    /* Discard a body nobody read; the parser still frames it. */
    if (hc->body_status == 1) {
        hc->body_status = 0;
        wake(hc, &hc->body_waiters, TD_ECLOSED);
        td_buf_free(&hc->body);
    }
    if (hc->message_complete)
        start_idle(hc);
}
