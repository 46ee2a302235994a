/* Owns a socket's input buffer, the one operation waiting on it, and the
 * list of pooled sockets. */
#include "sock.h"

#include <stdlib.h>
#include <string.h>

#include "errors.h"
#include "tls.h"

/* Unconsumed input past which reading pauses until someone asks. */
#define TD_SOCK_MAX_BUFFERED (256 * 1024)
/* An emptied input buffer larger than this goes back to malloc: a socket
 * waiting between reads should hold next to nothing. */
#define TD_SOCK_KEEP_BUFFER 4096

const char td_sock_owner = 0;

static td_list pooled = {&pooled, &pooled};

/* Ends the waiting operation: exactly one callback per operation. */
static void finish(td_sock *s, int status) {
    td_sock_cb cb = s->cb;
    void *ud = s->cb_ud;
    if (s->op == TD_SOCK_IDLE)
        return;
    if (s->op == TD_SOCK_WRITE)
        s->conn.want_drain = 0;
    s->op = TD_SOCK_IDLE;
    s->cb = NULL;
    td_conn_clear_deadline(&s->conn);
    if (cb)
        cb(s, status, ud);
}

static void arm(td_sock *s, int op, uint64_t timeout_ms, td_sock_cb cb, void *ud) {
    s->op = op;
    s->cb = cb;
    s->cb_ud = ud;
    if (timeout_ms)
        td_conn_set_deadline(&s->conn, timeout_ms);
}

/* ---- the protocol ---- */

static void sock_on_data(td_conn *c, const char *data, size_t len) {
    td_sock *s = (td_sock *)c;
    if (s->pooled) {
        /* An idle pooled connection must stay silent: data means the peer
         * moved on. */
        td_conn_close(c);
        return;
    }
    if (td_buf_append(&s->in, data, len) != 0) {
        s->read_end = UV_ENOMEM;
        td_conn_pause_reading(c);
        if (s->op == TD_SOCK_READ)
            finish(s, UV_ENOMEM);
        return;
    }
    /* Keep the socket in the poll set while little is buffered (stopping
     * and restarting costs system calls); stop when nobody consumes. */
    if (s->in.len >= TD_SOCK_MAX_BUFFERED)
        td_conn_pause_reading(c);
    if (s->op == TD_SOCK_READ)
        finish(s, 0);
}

static void sock_on_eof(td_conn *c, int err) {
    td_sock *s = (td_sock *)c;
    if (s->pooled) {
        td_conn_close(c);
        return;
    }
    s->read_end = err;
    if (s->op == TD_SOCK_READ)
        finish(s, err);
}

static void sock_on_timeout(td_conn *c) {
    td_sock *s = (td_sock *)c;
    if (s->pooled || s->op == TD_SOCK_CONNECT) {
        /* libuv cannot cancel a connect: closing is the only way out (the
         * close reports the timeout). */
        c->close_reason = TD_ETIMEOUT;
        td_conn_close(c);
        return;
    }
    finish(s, TD_ETIMEOUT);
}

static void sock_on_drain(td_conn *c) {
    td_sock *s = (td_sock *)c;
    if (s->op == TD_SOCK_WRITE)
        finish(s, 0);
}

static void sock_on_deferred(td_conn *c) { (void)c; }

static void sock_on_connect(td_conn *c, int status) {
    td_sock *s = (td_sock *)c;
    if (status == 0)
        td_conn_resume_reading(c);
    finish(s, status);
}

static void sock_on_close(td_conn *c) {
    td_sock *s = (td_sock *)c;
    if (s->pooled) {
        s->pooled = 0;
        td_list_remove(&s->pool_link);
    }
    finish(s, c->close_reason == TD_ETIMEOUT ? TD_ETIMEOUT : TD_ECLOSED);
    td_buf_free(&s->in);
    if (s->owner_free)
        s->owner_free(s->owner_data);
    s->owner_data = NULL;
    s->owner_free = NULL;
}

void td_sock_release(td_sock *s, td_buf *rest) {
    if (s->pooled) {
        s->pooled = 0;
        td_list_remove(&s->pool_link);
    }
    *rest = s->in;
    s->in = (td_buf){0};
    if (s->owner_free)
        s->owner_free(s->owner_data);
    s->owner_data = NULL;
    s->owner_free = NULL;
    td_conn_clear_deadline(&s->conn);
}

/* A send returns once the kernel has all of it: drain means empty. */
static const td_conn_ops sock_ops = {
    .low_water = 0,
    .on_data = sock_on_data,
    .on_eof = sock_on_eof,
    .on_timeout = sock_on_timeout,
    .on_drain = sock_on_drain,
    .on_deferred = sock_on_deferred,
    .on_connect = sock_on_connect,
    .on_close = sock_on_close,
};

/* ---- operations ---- */

td_sock *td_sock_connect(td_transport *tp, const struct sockaddr *addr, uint64_t timeout_ms, td_sock_cb cb,
                         void *ud, int *err) {
    td_sock *s = (td_sock *)td_conn_connect(tp, addr, &sock_ops, sizeof(td_sock), (void *)&td_sock_owner, err);
    if (!s)
        return NULL;
    td_list_init(&s->pool_link);
    arm(s, TD_SOCK_CONNECT, timeout_ms, cb, ud);
    return s;
}

int td_sock_listen(td_listener *l, td_transport *tp, const char *ip, int port,
                   void (*on_open)(td_listener *l, td_conn *c)) {
    return td_listener_open(l, tp, ip, port, &sock_ops, sizeof(td_sock), on_open, (void *)&td_sock_owner);
}

void td_sock_read(td_sock *s, uint64_t timeout_ms, td_sock_cb cb, void *ud) {
    arm(s, TD_SOCK_READ, timeout_ms, cb, ud);
    if (s->conn.closed) {
        finish(s, TD_ECLOSED);
        return;
    }
    if (s->read_end) {
        finish(s, s->read_end);
        return;
    }
    td_conn_resume_reading(&s->conn);
}

void td_sock_write(td_sock *s, const char *data, size_t len, uint64_t timeout_ms, td_sock_cb cb, void *ud) {
    arm(s, TD_SOCK_WRITE, timeout_ms, cb, ud);
    if (!td_sock_usable(s)) {
        finish(s, TD_ECLOSED);
        return;
    }
    td_buf *out = td_conn_out(&s->conn, len);
    if (!out) {
        finish(s, UV_ENOMEM);
        return;
    }
    memcpy(out->data + out->len, data, len);
    out->len += len;
    td_conn_flush(&s->conn);
    /* A failed flush closed the socket, which finished the operation. */
    if (s->op != TD_SOCK_WRITE)
        return;
    if (td_conn_unsent(&s->conn) == 0)
        finish(s, 0);
    else
        td_conn_want_drain(&s->conn);
}

void td_sock_starttls(td_sock *s, struct td_tls *t, uint64_t timeout_ms, td_sock_cb cb, void *ud) {
    arm(s, TD_SOCK_CONNECT, timeout_ms, cb, ud);
    int rc = TD_ECLOSED;
    if (td_sock_usable(s))
        rc = td_conn_start_tls(&s->conn, t);
    else
        td_tls_free(t);
    if (rc != 0 && s->op == TD_SOCK_CONNECT)
        finish(s, rc);
}

void td_sock_cancel(td_sock *s) {
    if (s->op == TD_SOCK_WRITE)
        s->conn.want_drain = 0;
    s->op = TD_SOCK_IDLE;
    s->cb = NULL;
    td_conn_clear_deadline(&s->conn);
}

void td_sock_consume(td_sock *s, size_t n) {
    td_buf_consume(&s->in, n);
    if (s->in.len == 0 && s->in.cap > TD_SOCK_KEEP_BUFFER)
        td_buf_free(&s->in);
    if (s->in.len < TD_SOCK_MAX_BUFFERED && !s->read_end)
        td_conn_resume_reading(&s->conn);
}

/* ---- pools ---- */

void td_sock_pool(td_sock *s, uint64_t idle_ms) {
    td_sock_cancel(s);
    if (!td_sock_usable(s) || s->in.len > 0 || s->read_end) {
        td_sock_close(s);
        return;
    }
    td_buf_free(&s->in);
    s->pooled = 1;
    td_list_push_back(&pooled, &s->pool_link);
    td_conn_resume_reading(&s->conn);
    td_conn_set_deadline(&s->conn, idle_ms);
}

int td_sock_unpool(td_sock *s) {
    if (!s->pooled)
        return td_sock_usable(s) ? 0 : TD_ECLOSED;
    s->pooled = 0;
    td_list_remove(&s->pool_link);
    td_conn_clear_deadline(&s->conn);
    /* Reading goes on: the next response comes soon, and leaving the poll
     * set only to rejoin it costs two system calls per request. */
    return td_sock_usable(s) ? 0 : TD_ECLOSED;
}

void td_sock_close_pooled(void) {
    while (!td_list_empty(&pooled))
        td_sock_close(td_container_of(pooled.next, td_sock, pool_link));
}
