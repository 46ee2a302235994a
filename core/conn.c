/* Owns the listening socket, the accepted connections, their output buffers,
 * their deadlines and the memory they live in. */
#include "conn.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

/* Queue 0 holds connections in a lingering close. Two seconds lets a client
 * that is still sending see the response; nginx waits up to five. */
#define TD_LINGER_MS 2000
#define TD_LINGER_QUEUE 0
#define TD_NO_QUEUE 0xff
/* Output blocks: most responses fit in one. Up to one per connection is in
 * use during a loop turn (answers leave at its end), so the spares must
 * cover a busy turn: with 256, wrk -c1000 fell from ~65k to ~40k req/s. */
#define TD_OUT_BLOCK 16384
#define TD_OUT_SPARE_MAX 1024
/* on_drain fires once the write queue is at or below this. */
#define TD_WRITE_LOW_WATER 16384

typedef struct td_write {
    uv_write_t req;
    td_conn *conn;
    td_buf buf; /* owned: returned to the pool when the write ends */
} td_write;

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);

static uint64_t now_ms(td_server *s) { return uv_now(s->loop); }

/* ---- deadlines ---------------------------------------------------------- */

static void on_sweep(uv_timer_t *t);

static void arm_sweeper(td_server *s, uint64_t due) {
    if (due >= s->sweep_due)
        return;
    s->sweep_due = due;
    uint64_t now = now_ms(s);
    uv_timer_start(&s->sweeper, on_sweep, due > now ? due - now : 0, 0);
}

void td_conn_clear_timeout(td_conn *c) {
    if (c->queue != TD_NO_QUEUE) {
        td_list_remove(&c->tlink);
        c->queue = TD_NO_QUEUE;
    }
}

void td_conn_set_timeout(td_conn *c, int queue) {
    td_server *s = c->server;
    td_conn_clear_timeout(c);
    c->queue = (uint8_t)queue;
    c->deadline = now_ms(s) + s->queues[queue].ms;
    td_list_push_back(&s->queues[queue].conns, &c->tlink);
    arm_sweeper(s, c->deadline);
}

static void on_sweep(uv_timer_t *t) {
    td_server *s = td_container_of(t, td_server, sweeper);
    uint64_t now = now_ms(s);
    uint64_t next = UINT64_MAX;
    s->sweep_due = UINT64_MAX;
    for (int q = 0; q < s->nqueues; q++) {
        td_list *head = &s->queues[q].conns;
        while (!td_list_empty(head)) {
            td_conn *c = td_container_of(head->next, td_conn, tlink);
            if (c->deadline > now) {
                if (c->deadline < next)
                    next = c->deadline;
                break;
            }
            td_conn_clear_timeout(c);
            if (q == TD_LINGER_QUEUE)
                td_conn_close(c);
            else if (!c->closed)
                s->ops->on_timeout(c);
        }
    }
    while (!td_list_empty(&s->sending)) {
        td_conn *c = td_container_of(s->sending.next, td_conn, wlink);
        if (c->send_deadline > now) {
            if (c->send_deadline < next)
                next = c->send_deadline;
            break;
        }
        /* The peer has not taken a byte for the whole send timeout. */
        td_conn_close(c);
    }
    /* Handlers may have armed the sweeper already; keep the earlier. */
    if (next != UINT64_MAX)
        arm_sweeper(s, next);
}

/* (Re)starts the send deadline: output is queued, or some of it just left. */
static void watch_sending(td_conn *c) {
    td_server *s = c->server;
    if (!s->send_timeout_ms)
        return;
    td_list_remove(&c->wlink);
    c->send_deadline = now_ms(s) + s->send_timeout_ms;
    td_list_push_back(&s->sending, &c->wlink);
    arm_sweeper(s, c->send_deadline);
}

void td_server_set_send_timeout(td_server *s, uint64_t ms) { s->send_timeout_ms = ms; }

/* ---- output ------------------------------------------------------------- */

td_buf *td_conn_out(td_conn *c, size_t extra) {
    if (!c->out.data && td_buf_pool_take(&c->server->out_pool, &c->out) != 0)
        return NULL;
    if (td_buf_reserve(&c->out, extra) != 0)
        return NULL;
    if (!td_list_linked(&c->flink))
        td_list_push_back(&c->server->flush, &c->flink);
    return &c->out;
}

size_t td_conn_write_queue(td_conn *c) { return uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp); }

void td_conn_want_drain(td_conn *c) { c->want_drain = 1; }

static void on_write(uv_write_t *req, int status) {
    td_write *w = td_container_of(req, td_write, req);
    td_conn *c = w->conn;
    td_buf_pool_give(&c->server->out_pool, &w->buf);
    free(w);
    if (c->closing)
        return;
    if (status < 0) {
        td_conn_close(c);
        return;
    }
    if (td_conn_write_queue(c) > 0)
        watch_sending(c);
    else
        td_list_remove(&c->wlink);
    if (c->want_drain && !c->closed && td_conn_write_queue(c) <= TD_WRITE_LOW_WATER) {
        c->want_drain = 0;
        c->server->ops->on_drain(c);
    }
}

void td_conn_flush(td_conn *c) {
    td_list_remove(&c->flink);
    if (c->closing || c->out.len == 0)
        return;
    uv_buf_t b = uv_buf_init(c->out.data, (unsigned)c->out.len);
    int n = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
    if (n == (int)c->out.len) {
        c->out.len = 0;
        /* Keep the block while more output is likely (a streaming
         * response); an idle connection gives it back. */
        if (!c->want_drain)
            td_buf_pool_give(&c->server->out_pool, &c->out);
        return;
    }
    if (n < 0 && n != UV_EAGAIN) {
        td_conn_close(c);
        return;
    }
    size_t done = n > 0 ? (size_t)n : 0;
    td_write *w = malloc(sizeof *w);
    if (!w) {
        td_conn_close(c);
        return;
    }
    w->conn = c;
    w->buf = c->out;
    c->out = (td_buf){0};
    b = uv_buf_init(w->buf.data + done, (unsigned)(w->buf.len - done));
    int rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_write);
    if (rc < 0) {
        td_buf_pool_give(&c->server->out_pool, &w->buf);
        free(w);
        td_conn_close(c);
        return;
    }
    if (!td_list_linked(&c->wlink))
        watch_sending(c);
}

void td_conn_defer(td_conn *c) {
    if (!c->closed && !td_list_linked(&c->dlink))
        td_list_push_back(&c->server->deferred, &c->dlink);
}

/* Deferred work first: it may add output, which then leaves in the same
 * write (pipelined responses). */
static void on_flush_turn(uv_prepare_t *p) {
    td_server *s = td_container_of(p, td_server, flusher);
    while (!td_list_empty(&s->deferred)) {
        td_conn *c = td_container_of(s->deferred.next, td_conn, dlink);
        td_list_remove(&c->dlink);
        s->ops->on_deferred(c);
    }
    while (!td_list_empty(&s->flush))
        td_conn_flush(td_container_of(s->flush.next, td_conn, flink));
}

/* ---- reading ------------------------------------------------------------ */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    td_conn *c = td_container_of(h, td_conn, tcp);
    buf->base = c->server->rbuf;
    buf->len = sizeof c->server->rbuf;
}

void td_conn_pause_reading(td_conn *c) {
    if (c->reading && !c->closing) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = 0;
    }
}

void td_conn_resume_reading(td_conn *c) {
    if (!c->reading && !c->closing) {
        if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0)
            c->reading = 1;
    }
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
    td_conn *c = td_container_of(stream, td_conn, tcp);
    if (nread == 0)
        return;
    if (c->ending) {
        /* Lingering: discard until the peer closes. */
        if (nread < 0)
            td_conn_close(c);
        return;
    }
    if (nread < 0) {
        c->server->ops->on_eof(c, (int)nread);
        return;
    }
    c->server->ops->on_data(c, buf->base, (size_t)nread);
    /* Answer now, not at the end of the turn: the clients whose requests
     * came in the same batch would otherwise wait for every other one.
     * Pipelined answers from this read still leave in one write. */
    if (td_list_linked(&c->flink))
        td_conn_flush(c);
}

/* ---- closing ------------------------------------------------------------ */

static void notify_closed(td_conn *c) {
    if (c->closed)
        return;
    c->closed = 1;
    c->serial++;
    td_list_remove(&c->dlink);
    c->server->ops->on_close(c);
}

static void release_memory(td_server *s, td_conn *c) {
    if (s->nspare == s->spare_cap) {
        size_t cap = s->spare_cap ? s->spare_cap * 2 : 64;
        void **spare = realloc(s->spare, cap * sizeof *spare);
        if (!spare) {
            /* Cannot happen to a pointer Lua may hold without leaking it:
             * keep the memory unreachable rather than reuse it unsafely. */
            td_log(TD_LOG_CRIT, "out of memory keeping a connection for reuse");
            return;
        }
        s->spare = spare;
        s->spare_cap = cap;
    }
    s->spare[s->nspare++] = c;
}

static void accept_one(td_server *s);

static void on_conn_closed(uv_handle_t *h) {
    td_conn *c = td_container_of(h, td_conn, tcp);
    td_server *s = c->server;
    td_list_remove(&c->link);
    td_buf_pool_give(&s->out_pool, &c->out);
    release_memory(s, c);
    s->nconns--;
    if (s->accept_waiting && s->listening) {
        s->accept_waiting = 0;
        accept_one(s);
    }
    if (s->nconns == 0 && s->on_empty)
        s->on_empty(s);
}

void td_conn_close(td_conn *c) {
    if (c->closing)
        return;
    notify_closed(c);
    td_conn_clear_timeout(c);
    td_list_remove(&c->flink);
    td_list_remove(&c->wlink);
    c->closing = 1;
    c->reading = 0;
    uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
}

static void on_shutdown(uv_shutdown_t *req, int status) {
    td_conn *c = req->data;
    free(req);
    if (c->closing)
        return;
    if (status < 0) {
        td_conn_close(c);
        return;
    }
    td_conn_resume_reading(c);
    td_conn_set_timeout(c, TD_LINGER_QUEUE);
}

void td_conn_end(td_conn *c) {
    if (c->closing || c->ending)
        return;
    notify_closed(c);
    c->ending = 1;
    c->want_drain = 0;
    td_conn_clear_timeout(c);
    td_conn_flush(c);
    if (c->closing)
        return;
    uv_shutdown_t *req = malloc(sizeof *req);
    if (!req) {
        td_conn_close(c);
        return;
    }
    req->data = c;
    /* libuv runs the shutdown after the queued writes. */
    if (uv_shutdown(req, (uv_stream_t *)&c->tcp, on_shutdown) < 0) {
        free(req);
        td_conn_close(c);
    }
}

/* ---- accepting ---------------------------------------------------------- */

void td_conn_init(td_conn *c, td_server *s) {
    c->server = s;
    c->queue = TD_NO_QUEUE;
    td_list_init(&c->link);
    td_list_init(&c->tlink);
    td_list_init(&c->flink);
    td_list_init(&c->dlink);
    td_list_init(&c->wlink);
}

static td_conn *conn_alloc(td_server *s) {
    td_conn *c;
    uint32_t serial = 0;
    if (s->nspare > 0) {
        c = s->spare[--s->nspare];
        serial = c->serial;
        memset(c, 0, s->ops->conn_size);
    } else {
        c = calloc(1, s->ops->conn_size);
        if (!c)
            return NULL;
    }
    td_conn_init(c, s);
    c->serial = serial;
    return c;
}

static void on_rejected_closed(uv_handle_t *h) { free(h); }

static void accept_one(td_server *s) {
    td_conn *c = conn_alloc(s);
    if (!c) {
        /* Accept and drop it, so libuv keeps watching the listener. */
        uv_tcp_t *t = malloc(sizeof *t);
        if (t && uv_tcp_init(s->loop, t) == 0) {
            uv_accept((uv_stream_t *)&s->listener, (uv_stream_t *)t);
            uv_close((uv_handle_t *)t, on_rejected_closed);
        } else {
            free(t);
        }
        td_log(TD_LOG_ERROR, "out of memory accepting a connection");
        return;
    }
    uv_tcp_init(s->loop, &c->tcp);
    td_list_push_back(&s->conns, &c->link);
    s->nconns++;
    if (uv_accept((uv_stream_t *)&s->listener, (uv_stream_t *)&c->tcp) != 0) {
        c->closed = 1;
        c->closing = 1;
        uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    td_conn_resume_reading(c);
    s->ops->on_open(c);
}

static void on_connection(uv_stream_t *listener, int status) {
    td_server *s = td_container_of(listener, td_server, listener);
    if (status < 0) {
        td_log(TD_LOG_ERROR, "accept: %s", uv_strerror(status));
        return;
    }
    if (s->max_conns && s->nconns >= s->max_conns) {
        /* Not accepting makes libuv stop watching the listener, so further
         * clients wait in the kernel's backlog until a connection closes. */
        s->accept_waiting = 1;
        return;
    }
    accept_one(s);
}

/* ---- the server --------------------------------------------------------- */

int td_server_init(td_server *s, uv_loop_t *loop, const td_conn_ops *ops, size_t max_conns) {
    memset(s, 0, offsetof(td_server, rbuf));
    s->loop = loop;
    s->ops = ops;
    s->max_conns = max_conns;
    s->sweep_due = UINT64_MAX;
    td_list_init(&s->conns);
    td_list_init(&s->flush);
    td_list_init(&s->deferred);
    td_list_init(&s->sending);
    td_buf_pool_init(&s->out_pool, TD_OUT_BLOCK, TD_OUT_SPARE_MAX);
    int rc = uv_tcp_init(loop, &s->listener);
    if (rc)
        return rc;
    uv_timer_init(loop, &s->sweeper);
    uv_prepare_init(loop, &s->flusher);
    uv_prepare_start(&s->flusher, on_flush_turn);
    /* Neither keeps the loop alive on its own. */
    uv_unref((uv_handle_t *)&s->sweeper);
    uv_unref((uv_handle_t *)&s->flusher);
    s->handles_open = 1;
    td_server_add_queue(s, TD_LINGER_MS);
    return 0;
}

int td_server_add_queue(td_server *s, uint64_t ms) {
    int q = s->nqueues++;
    td_list_init(&s->queues[q].conns);
    s->queues[q].ms = ms;
    return q;
}

static int backlog_size(void) {
    int n = 511;
    FILE *f = fopen("/proc/sys/net/core/somaxconn", "r");
    if (f) {
        int v;
        if (fscanf(f, "%d", &v) == 1 && v > n)
            n = v;
        fclose(f);
    }
    return n;
}

int td_server_listen(td_server *s, const char *host, int port) {
    char portstr[16];
    snprintf(portstr, sizeof portstr, "%d", port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
    uv_getaddrinfo_t req;
    int rc = uv_getaddrinfo(s->loop, &req, NULL, host, portstr, &hints);
    if (rc)
        return rc;
    rc = uv_tcp_bind(&s->listener, req.addrinfo->ai_addr, 0);
    uv_freeaddrinfo(req.addrinfo);
    if (rc)
        return rc;
    rc = uv_listen((uv_stream_t *)&s->listener, backlog_size(), on_connection);
    if (rc)
        return rc;
    s->listening = 1;
    return 0;
}

int td_server_port(td_server *s) {
    struct sockaddr_storage ss;
    int len = sizeof ss;
    if (uv_tcp_getsockname(&s->listener, (struct sockaddr *)&ss, &len) != 0)
        return -1;
    if (ss.ss_family == AF_INET)
        return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
}

void td_server_stop_listening(td_server *s) {
    if (!s->listening)
        return;
    s->listening = 0;
    s->accept_waiting = 0;
    uv_close((uv_handle_t *)&s->listener, NULL);
}

void td_server_close(td_server *s) {
    if (s->listening) {
        td_server_stop_listening(s);
    } else if (s->handles_open && !uv_is_closing((uv_handle_t *)&s->listener)) {
        uv_close((uv_handle_t *)&s->listener, NULL);
    }
    td_list *pos, *tmp;
    td_list_foreach_safe(pos, tmp, &s->conns) td_conn_close(td_container_of(pos, td_conn, link));
    if (s->handles_open) {
        uv_close((uv_handle_t *)&s->sweeper, NULL);
        uv_close((uv_handle_t *)&s->flusher, NULL);
        s->handles_open = 0;
    }
}

void td_server_destroy(td_server *s) {
    while (s->nspare > 0)
        free(s->spare[--s->nspare]);
    free(s->spare);
    s->spare = NULL;
    td_buf_pool_destroy(&s->out_pool);
}

int td_conn_peer(td_conn *c, char *buf, size_t size) {
    struct sockaddr_storage ss;
    int len = sizeof ss;
    int rc = uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len);
    if (rc)
        return rc;
    if (ss.ss_family == AF_INET6)
        return uv_ip6_name((struct sockaddr_in6 *)&ss, buf, size);
    return uv_ip4_name((struct sockaddr_in *)&ss, buf, size);
}
