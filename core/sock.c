/* Owns a stream socket's handles, its input buffer and the one operation
 * waiting on it. */
#include "sock.h"

#include <stdlib.h>
#include <string.h>

#include "errors.h"

/* Read granularity: what one read callback may add to s->in. */
#define TD_SOCK_READ_CHUNK 65536
/* Unconsumed input past which reading pauses until someone asks. */
#define TD_SOCK_MAX_BUFFERED (256 * 1024)

typedef struct sock_write {
    uv_write_t req;
    td_sock *sock;
    size_t len;
    char data[];
} sock_write;

static void maybe_free(td_sock *s) {
    if (s->handles == 0 && s->released) {
        if (s->owner_free)
            s->owner_free(s->owner_data);
        td_buf_free(&s->in);
        free(s);
    }
}

static void on_handle_closed(uv_handle_t *h) {
    td_sock *s = h->data;
    s->handles--;
    maybe_free(s);
}

/* Ends the waiting operation: exactly one callback per operation. */
static void finish(td_sock *s, int status) {
    td_sock_cb cb = s->cb;
    void *ud = s->cb_ud;
    if (s->op == TD_SOCK_IDLE)
        return;
    s->op = TD_SOCK_IDLE;
    s->cb = NULL;
    uv_timer_stop(&s->timer);
    if (cb)
        cb(s, status, ud);
}

static void on_deadline(uv_timer_t *t) {
    td_sock *s = t->data;
    if (s->pooled) {
        td_sock_close(s);
        return;
    }
    if (s->op == TD_SOCK_CONNECT) {
        /* libuv cannot cancel a connect: closing is the only way out. */
        td_sock_cb cb = s->cb;
        void *ud = s->cb_ud;
        s->cb = NULL;
        s->op = TD_SOCK_IDLE;
        td_sock_close(s);
        if (cb)
            cb(s, TD_ETIMEOUT, ud);
        return;
    }
    finish(s, TD_ETIMEOUT);
}

static void arm(td_sock *s, int op, uint64_t timeout_ms, td_sock_cb cb, void *ud) {
    s->op = op;
    s->cb = cb;
    s->cb_ud = ud;
    if (timeout_ms)
        uv_timer_start(&s->timer, on_deadline, timeout_ms, 0);
}

static td_list pooled = {&pooled, &pooled};

static td_sock *sock_init(uv_loop_t *loop) {
    td_sock *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    td_list_init(&s->pool_link);
    uv_tcp_init(loop, &s->tcp);
    uv_timer_init(loop, &s->timer);
    s->tcp.data = s;
    s->timer.data = s;
    s->handles = 2;
    return s;
}

td_sock *td_sock_new(uv_loop_t *loop) { return sock_init(loop); }

td_sock *td_sock_accept(uv_loop_t *loop, uv_stream_t *server) {
    td_sock *s = sock_init(loop);
    if (!s)
        return NULL;
    if (uv_accept(server, (uv_stream_t *)&s->tcp) != 0) {
        s->released = 1;
        td_sock_close(s);
        return NULL;
    }
    uv_tcp_nodelay(&s->tcp, 1);
    s->connected = 1;
    return s;
}

static void on_connect(uv_connect_t *req, int status) {
    td_sock *s = req->data;
    if (status == UV_ECANCELED || s->closing)
        return; /* closed while connecting: the closer reported it */
    if (status == 0) {
        s->connected = 1;
        uv_tcp_nodelay(&s->tcp, 1);
    }
    finish(s, status);
}

void td_sock_connect(td_sock *s, const struct sockaddr *addr, uint64_t timeout_ms, td_sock_cb cb, void *ud) {
    arm(s, TD_SOCK_CONNECT, timeout_ms, cb, ud);
    s->connect_req.data = s;
    int rc = uv_tcp_connect(&s->connect_req, &s->tcp, addr, on_connect);
    if (rc)
        finish(s, rc);
}

/* ---- reading ---- */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    td_sock *s = h->data;
    (void)suggested;
    if (td_buf_reserve(&s->in, TD_SOCK_READ_CHUNK) != 0) {
        buf->base = NULL;
        buf->len = 0;
        return;
    }
    buf->base = s->in.data + s->in.len;
    buf->len = s->in.cap - s->in.len;
}

static void stop_reading(td_sock *s) {
    if (s->reading) {
        uv_read_stop((uv_stream_t *)&s->tcp);
        s->reading = 0;
    }
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
    td_sock *s = stream->data;
    (void)buf;
    if (nread == 0)
        return;
    if (nread == UV_ENOBUFS) {
        nread = UV_ENOMEM;
    }
    if (s->pooled) {
        /* An idle pooled connection must stay silent: data or an end means
         * the peer moved on. */
        td_sock_close(s);
        return;
    }
    if (nread < 0) {
        s->read_end = (int)nread;
        stop_reading(s);
        if (s->op == TD_SOCK_READ)
            finish(s, (int)nread);
        return;
    }
    s->in.len += (size_t)nread;
    /* Keep the socket in the poll set while little is buffered (stopping
     * and restarting costs system calls); stop when nobody consumes. */
    if (s->in.len >= TD_SOCK_MAX_BUFFERED)
        stop_reading(s);
    if (s->op == TD_SOCK_READ)
        finish(s, 0);
}

static int start_reading(td_sock *s) {
    if (s->reading)
        return 0;
    int rc = uv_read_start((uv_stream_t *)&s->tcp, on_alloc, on_read);
    if (rc == 0)
        s->reading = 1;
    return rc;
}

void td_sock_read(td_sock *s, uint64_t timeout_ms, td_sock_cb cb, void *ud) {
    arm(s, TD_SOCK_READ, timeout_ms, cb, ud);
    if (s->closing) {
        finish(s, TD_ECLOSED);
        return;
    }
    if (s->read_end) {
        finish(s, s->read_end);
        return;
    }
    int rc = start_reading(s);
    if (rc)
        finish(s, rc);
}

/* ---- writing ---- */

static void on_write(uv_write_t *req, int status) {
    sock_write *w = (sock_write *)req;
    td_sock *s = w->sock;
    s->write_pending -= w->len;
    free(w);
    if (s->closing)
        return;
    if (status < 0) {
        if (s->op == TD_SOCK_WRITE)
            finish(s, status);
        return;
    }
    if (s->op == TD_SOCK_WRITE && s->write_pending == 0)
        finish(s, 0);
}

void td_sock_write(td_sock *s, const char *data, size_t len, uint64_t timeout_ms, td_sock_cb cb, void *ud) {
    arm(s, TD_SOCK_WRITE, timeout_ms, cb, ud);
    if (!td_sock_usable(s)) {
        finish(s, TD_ECLOSED);
        return;
    }
    size_t done = 0;
    if (s->write_pending == 0) {
        uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
        int n = uv_try_write((uv_stream_t *)&s->tcp, &b, 1);
        if (n < 0 && n != UV_EAGAIN) {
            finish(s, n);
            return;
        }
        done = n > 0 ? (size_t)n : 0;
    }
    if (done == len) {
        finish(s, 0);
        return;
    }
    size_t rest = len - done;
    sock_write *w = malloc(sizeof *w + rest);
    if (!w) {
        finish(s, UV_ENOMEM);
        return;
    }
    w->sock = s;
    w->len = rest;
    memcpy(w->data, data + done, rest);
    uv_buf_t b = uv_buf_init(w->data, (unsigned)rest);
    int rc = uv_write(&w->req, (uv_stream_t *)&s->tcp, &b, 1, on_write);
    if (rc) {
        free(w);
        finish(s, rc);
        return;
    }
    s->write_pending += rest;
}

void td_sock_cancel(td_sock *s) {
    s->op = TD_SOCK_IDLE;
    s->cb = NULL;
    uv_timer_stop(&s->timer);
}

/* ---- pools ---- */

void td_sock_pool(td_sock *s, uint64_t idle_ms) {
    td_sock_cancel(s);
    if (!td_sock_usable(s) || s->in.len > 0 || s->read_end) {
        td_sock_close(s);
        return;
    }
    s->pooled = 1;
    td_list_push_back(&pooled, &s->pool_link);
    if (start_reading(s) != 0) {
        td_sock_close(s);
        return;
    }
    uv_timer_start(&s->timer, on_deadline, idle_ms, 0);
}

int td_sock_unpool(td_sock *s) {
    if (!s->pooled)
        return td_sock_usable(s) ? 0 : TD_ECLOSED;
    s->pooled = 0;
    td_list_remove(&s->pool_link);
    uv_timer_stop(&s->timer);
    /* Reading goes on: the next response comes soon, and leaving the poll
     * set only to rejoin it costs two system calls per request. */
    return td_sock_usable(s) ? 0 : TD_ECLOSED;
}

void td_sock_close_pooled(void) {
    while (!td_list_empty(&pooled))
        td_sock_close(td_container_of(pooled.next, td_sock, pool_link));
}

/* ---- closing ---- */

void td_sock_close(td_sock *s) {
    if (s->closing)
        return;
    s->closing = 1;
    s->pooled = 0;
    td_list_remove(&s->pool_link);
    s->reading = 0;
    uv_close((uv_handle_t *)&s->tcp, on_handle_closed);
    uv_close((uv_handle_t *)&s->timer, on_handle_closed);
    /* A connect in flight is cancelled by the close (its callback sees
     * UV_ECANCELED); anything else waiting learns it here. */
    if (s->op != TD_SOCK_IDLE && s->op != TD_SOCK_CONNECT)
        finish(s, TD_ECLOSED);
    else if (s->op == TD_SOCK_CONNECT) {
        td_sock_cb cb = s->cb;
        void *ud = s->cb_ud;
        s->op = TD_SOCK_IDLE;
        s->cb = NULL;
        if (cb)
            cb(s, TD_ECLOSED, ud);
    }
}

void td_sock_release(td_sock *s) {
    s->released = 1;
    td_sock_close(s);
    maybe_free(s);
}
