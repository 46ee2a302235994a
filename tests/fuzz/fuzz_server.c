/* Owns the fuzzing server (loop, transport, HTTP server on 127.0.0.1), the
 * client socket of the run, the stand-in handler's records and the checks
 * of what the client received. See fuzz_server.h. */
#include "fuzz_server.h"

#include <errno.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "errors.h"
#include "fuzz_ref.h"

/* Requests handed over in one run, at most: more than a 64 KiB input holds. */
#define FUZZ_MAX_REQS 4096
/* A body that puts the output over the high-water mark at once. */
#define FUZZ_LARGE_BYTES (TD_HTTP_HIGH_WATER + 65536)
/* Large answers per run: each costs a third of a megabyte of copying. */
#define FUZZ_MAX_LARGE 2
/* The client sends at most this much: the server reads a live request's
 * pipelined input up to 64 KiB before it pauses, and a paused server would
 * not see the client leave. */
#define FUZZ_MAX_INPUT 60000
/* Loop turns before a wait counts as a hang, and turns between naps. */
#define FUZZ_MAX_TURNS 200000
#define FUZZ_SPIN_TURNS 64

static uv_loop_t loop;
static td_transport tp;
static td_http_server hs;
static int port = -1;

/* The server's connection of this run: valid while hs.nconns is 1. */
static td_conn *srv;
/* The transport's table for it, wrapped to count what the server read. */
static const td_conn_ops *http_ops;
static td_conn_ops counting_ops;
static size_t server_read;

static int client = -1;
static size_t client_sent;
static int client_eof;     /* the server's FIN (or reset) came */
static int client_closing; /* the client has sent its FIN */
static td_buf *output;

static const fuzz_server_input *cur;
static fuzz_server_req reqs[FUZZ_MAX_REQS];
static size_t nreqs;

/* Answers due when the transport's hooks are released (the vm's posted
 * resumes), and those waiting for the next piece of input. A request is
 * posted at most once, so each queue holds at most nreqs entries. */
static fuzz_server_req *posted[FUZZ_MAX_REQS];
static size_t posted_head, posted_tail;
static fuzz_server_req *later[FUZZ_MAX_REQS];
static size_t nlater;
static int held, answering;

static int larges;
static long refs_held; /* written by reference, not yet released */
static int abrupt;
static int trailer_close;
static char large_body[FUZZ_LARGE_BYTES];

/* What a failure message adds (fuzz_fail_context). */
static void print_output(void) {
    if (output)
        fprintf(stderr, "  the client received (%zu bytes): %s\n", output->len, fuzz_show(output->data, output->len));
}

/* ---- the stand-in handler ---- */

static void release_ref(void *ud) {
    (void)ud;
    refs_held--;
    FUZZ_CHECK(refs_held >= 0, "a buffer written by reference was released twice");
}

static void head(td_http_conn *hc, fuzz_server_req *r, int status, int close, int64_t length) {
    char id[24];
    int n = snprintf(id, sizeof id, "%zu", (size_t)(r - reqs));
    FUZZ_CHECK(td_http_head_begin(hc, status) == 0, "a live request without a head refused one");
    FUZZ_CHECK(td_http_head_add(hc, "X-Req", 5, id, (size_t)n) == 0, "a valid header was refused");
    if (close)
        FUZZ_CHECK(td_http_head_add(hc, "Connection", 10, "close", 5) == 0, "Connection: close was refused");
    FUZZ_CHECK(td_http_head_end(hc, length) == 0, "the head could not end");
}

static void write_ok(td_http_conn *hc, const char *p, size_t n) {
    FUZZ_CHECK(td_http_write(hc, p, n) == 0, "a write to a live request after its head failed");
}

/* llhttp changed its mind about keep-alive after the head: a "Connection:
 * close" trailer field, which makes it swallow what follows while the
 * server keeps the connection (the known defect "trailer-close"). The
 * parser's flags hold until it parses again, after the answer. */
static void note_trailer_close(td_http_conn *hc) {
    if (hc->rq->message_complete && hc->rq->keep_alive && !llhttp_should_keep_alive(&hc->rq->parser))
        trailer_close = 1;
}

/* What the handler's task does once it runs: the request may be over by
 * now (the client left, the server answered an error), as a task finds it
 * by handle. */
static void answer(fuzz_server_req *r) {
    td_http_conn *hc = td_http_find(&hs, r->slot, r->serial);
    if (!hc)
        return;
    note_trailer_close(hc);
    static const char piece[] = "defg";
    switch (r->behaviour) {
    case FUZZ_FAIL:
        td_http_fail(hc);
        r->answered = 1; /* the server's 500 */
        return;
    case FUZZ_FAIL_AFTER_HEAD:
        head(hc, r, 200, 0, 100);
        write_ok(hc, "partial", 7);
        /* While no byte of the answer has left, the failure becomes a
         * clean 500 (issue 8); after that, only closing tells the client. */
        if (hc->conn.out_epoch != hc->rq->resp_epoch)
            abrupt = 1;
        else
            r->answered = 1;
        td_http_fail(hc);
        return;
    case FUZZ_ANSWER_CHUNKED: {
        head(hc, r, 200, 0, -1);
        write_ok(hc, "abc", 3);
        refs_held++;
        int rc = td_http_write_ref(hc, piece, 4, release_ref, NULL);
        if (rc != 1)
            refs_held--;
        FUZZ_CHECK(rc >= 0, "a write by reference to a live request failed: %d", rc);
        break;
    }
    case FUZZ_READ_BODY:
        head(hc, r, 200, 0, (int64_t)r->body.len);
        if (r->body.len)
            write_ok(hc, r->body.data, r->body.len);
        break;
    case FUZZ_CLOSE:
        head(hc, r, 200, 1, 2);
        write_ok(hc, "ok", 2);
        break;
    case FUZZ_LARGE: {
        head(hc, r, 200, 0, FUZZ_LARGE_BYTES);
        refs_held++;
        int rc = td_http_write_ref(hc, large_body, FUZZ_LARGE_BYTES, release_ref, NULL);
        if (rc != 1)
            refs_held--;
        FUZZ_CHECK(rc >= 0, "a write by reference to a live request failed: %d", rc);
        break;
    }
    case FUZZ_NO_CONTENT:
        head(hc, r, 204, 0, -1);
        break;
    default:
        head(hc, r, 200, 0, 2);
        write_ok(hc, "ok", 2);
        break;
    }
    r->answered = 1;
    td_http_response_end(hc);
    FUZZ_CHECK(td_http_find(&hs, r->slot, r->serial) == NULL, "a request still found after its response ended");
}

/* Runs the posted answers unless something holds them (a transport
 * callback in progress) or they are running already further up. */
static void run_posted(void) {
    if (held || answering)
        return;
    answering = 1;
    while (posted_head != posted_tail)
        answer(posted[posted_head++]);
    answering = 0;
}

static void post(fuzz_server_req *r) {
    FUZZ_CHECK(posted_tail < FUZZ_MAX_REQS, "a request was posted twice");
    posted[posted_tail++] = r;
    run_posted();
}

static void hold(void *ud) {
    (void)ud;
    held++;
}

static void release(void *ud) {
    (void)ud;
    FUZZ_CHECK(held > 0, "the transport left a hook it had not entered");
    if (--held == 0)
        run_posted();
}

static void on_body_ready(td_http_conn *hc, int status, void *ud) {
    fuzz_server_req *r = ud;
    FUZZ_CHECK(r->body_status == 1, "a body waiter was called twice");
    r->body_status = status;
    if (status != 0)
        return;
    const char *data;
    size_t len;
    note_trailer_close(hc);
    FUZZ_CHECK(td_http_body(hc, &data, &len) == 0, "the body waiter was told the body is ready, but it is not");
    td_buf_append(&r->body, data, len);
    post(r);
}

static void on_request(td_http_conn *hc, void *ud) {
    (void)ud;
    FUZZ_CHECK(nreqs < FUZZ_MAX_REQS, "more requests than the input can hold");
    FUZZ_CHECK(hc->rq && hc->rq->user == NULL, "a request handed over twice");
    fuzz_server_req *r = &reqs[nreqs++];
    size_t i = (size_t)(r - reqs);
    r->behaviour = cur->nbehaviours ? cur->behaviours[i % cur->nbehaviours] % FUZZ_NBEHAVIOURS : FUZZ_ANSWER;
    if (r->behaviour == FUZZ_LARGE && larges++ >= FUZZ_MAX_LARGE)
        r->behaviour = FUZZ_ANSWER;
    r->method = hc->rq->parser.method;
    r->minor = td_http_minor(hc);
    size_t tlen;
    const char *target = td_http_target(hc, &tlen);
    r->target_len = tlen;
    memcpy(r->target, target, tlen < sizeof r->target ? tlen : sizeof r->target);
    r->body.len = 0;
    r->body_status = 1;
    r->over = 0;
    r->over_status = 0;
    r->answered = 0;
    r->early = 0;
    r->slot = hc->conn.slot;
    r->serial = td_conn_serial(&hc->conn);
    td_list_init(&r->waiter.link);
    hc->rq->user = r;
    FUZZ_CHECK(td_http_find(&hs, r->slot, r->serial) == hc, "a request handed over is not found by its handle");
    switch (r->behaviour) {
    case FUZZ_READ_BODY: {
        const char *data;
        size_t len;
        int64_t declared = hc->rq->body_declared; /* a refusal may free the request's state */
        int st = td_http_body(hc, &data, &len);
        if (st == 1) {
            r->waiter.cb = on_body_ready;
            r->waiter.ud = r;
            td_http_wait_body(hc, &r->waiter);
        } else if (st == TD_ETOOLARGE) {
            /* Content-Length over the limit: held, and refused (the 413
             * went) once asked for. */
            FUZZ_CHECK(declared > 0 && (uint64_t)declared > cur->max_body_bytes,
                       "a body refused as too large before any of it came: %d", st);
            r->body_status = st;
        } else {
            FUZZ_CHECK(st == 0, "the body failed before the request was handed over: %d", st);
            r->body_status = 0;
            td_buf_append(&r->body, data, len);
            post(r);
        }
        break;
    }
    case FUZZ_LATER:
        later[nlater++] = r;
        break;
    case FUZZ_NEVER:
        break;
    default:
        post(r);
        break;
    }
}

static void on_over(td_http_conn *hc, int status, void *ud) {
    (void)ud;
    fuzz_server_req *r = hc->rq ? hc->rq->user : NULL;
    FUZZ_CHECK(r != NULL, "on_over for a request never handed over");
    hc->rq->user = NULL;
    r->over++;
    r->over_status = status;
    FUZZ_CHECK(status == 0 || status == TD_ECLOSED, "on_over with status %d", status);
    FUZZ_CHECK(td_http_find(&hs, r->slot, r->serial) == NULL, "a request that is over is still found by its handle");
    /* Output the client was owed may have been dropped with the
     * connection (td_conn_close): only a truncated tail is allowed then. */
    if (status != 0 && hc->rq->head_sent && !client_closing)
        abrupt = 1;
    /* Over before its body was all in: what the rest of the body does
     * (an error) then races the handler's answer. */
    if (!hc->rq->message_complete && !client_closing)
        r->early = 1;
}

/* ---- the fake connection ---- */

static void counting_on_data(td_conn *c, const char *data, size_t len) {
    server_read += len;
    http_ops->on_data(c, data, len);
}

static void start(void) {
    static const td_http_config cfg = {
        .max_header_bytes = 65536,
        .max_body_bytes = 1 << 20,
        /* Long enough never to fire during a run: a deadline would make
         * the outcome depend on the machine's speed. */
        .header_timeout_ms = 600000,
        .body_timeout_ms = 600000,
        .keepalive_timeout_ms = 600000,
        .send_timeout_ms = 600000,
    };
    memset(large_body, 'L', sizeof large_body);
    FUZZ_CHECK(uv_loop_init(&loop) == 0, "uv_loop_init");
    FUZZ_CHECK(td_transport_init(&tp, &loop, 0) == 0, "td_transport_init");
    tp.enter = hold;
    tp.leave = release;
    td_http_server_init(&hs, &tp, &cfg, on_request, on_over, NULL);
    int rc = td_http_server_listen(&hs, td_listen_socket("127.0.0.1", 0, 0));
    FUZZ_CHECK(rc == 0, "listening on 127.0.0.1: %s", uv_strerror(rc));
    port = td_http_server_port(&hs);
}

/* Reads what arrived for the client. */
static void client_read(void) { fuzz_recv_all(client, output, &client_eof); }

static int queue_len(int fd, unsigned long what) {
    int n = 0;
    FUZZ_CHECK(ioctl(fd, what, &n) == 0, "ioctl: %s", strerror(errno));
    return n;
}

/* Nothing moves any more: the server read what was sent (or stopped
 * reading), its output reached the client, which read it, and no answer is
 * due. Once the server has ended the connection, its FIN (which follows
 * all its output) must have come. */
static int settled(void) {
    if (posted_head != posted_tail || tp.ndeferred || !td_list_empty(&tp.pending))
        return 0;
    if (hs.nconns == 0)
        return client_eof;
    if (srv->reading && server_read < client_sent && !client_closing)
        return 0;
    if (srv->out.len || uv_stream_get_write_queue_size((uv_stream_t *)&srv->tcp))
        return 0;
    uv_os_fd_t fd;
    FUZZ_CHECK(uv_fileno((uv_handle_t *)&srv->tcp, &fd) == 0, "uv_fileno");
    return queue_len(fd, SIOCOUTQNSD) == 0 && queue_len(client, FIONREAD) == 0;
}

static void turn(int i) {
    uv_run(&loop, UV_RUN_NOWAIT);
    client_read();
    if (i > FUZZ_SPIN_TURNS)
        usleep(10); /* let the kernel's loopback work run, if it was put off */
}

static void pump(const char *what) {
    for (int i = 0; i < FUZZ_MAX_TURNS; i++) {
        turn(i);
        if (settled())
            return;
    }
    FUZZ_CHECK(0, "the exchange did not settle (%s)", what);
}

static void client_connect(void) {
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", port, &a);
    client = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    FUZZ_CHECK(client >= 0, "socket: %s", strerror(errno));
    int one = 1;
    struct linger reset = {1, 0};
    setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(client, SOL_SOCKET, SO_LINGER, &reset, sizeof reset);
    int rc = connect(client, (struct sockaddr *)&a, sizeof a);
    FUZZ_CHECK(rc == 0 || errno == EINPROGRESS, "connect: %s", strerror(errno));
    for (int i = 0; i < FUZZ_MAX_TURNS && hs.nconns == 0; i++)
        turn(i);
    FUZZ_CHECK(hs.nconns == 1, "the server did not accept the connection");
    srv = NULL;
    for (uint32_t s = 0; s < tp.nslots; s++) {
        td_conn *c = tp.slots[s].conn;
        if (c && c->owner == &hs && !c->closed)
            srv = c;
    }
    FUZZ_CHECK(srv != NULL, "the accepted connection is not in the transport's table");
    if (!http_ops) {
        http_ops = srv->ops;
        counting_ops = *http_ops;
        counting_ops.on_data = counting_on_data;
    }
    FUZZ_CHECK(srv->ops == http_ops, "a new connection speaks another protocol");
    srv->ops = &counting_ops;
}

/* Writes one piece; the server may have gone (then the rest is dropped). */
static void client_send(const char *p, size_t n) {
    for (int i = 0; n > 0 && !client_eof; i++) {
        FUZZ_CHECK(i < FUZZ_MAX_TURNS, "the server stopped taking input");
        ssize_t w = send(client, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w > 0) {
            client_sent += (size_t)w;
            p += w;
            n -= (size_t)w;
        } else if (errno == EPIPE || errno == ECONNRESET) {
            return;
        } else {
            FUZZ_CHECK(errno == EAGAIN || errno == EWOULDBLOCK, "send: %s", strerror(errno));
            turn(i);
        }
    }
}

/* The client is done: FIN, then everything up to the server's FIN (the
 * server takes the client's FIN for its leaving and closes), then the
 * socket goes with a reset, so no TIME_WAIT is left behind. */
static void client_finish(void) {
    client_closing = 1;
    shutdown(client, SHUT_WR);
    for (int i = 0; i < FUZZ_MAX_TURNS && !client_eof; i++)
        turn(i);
    FUZZ_CHECK(client_eof, "the server did not close after the client left");
    close(client);
    client = -1;
    for (int i = 0; i < FUZZ_MAX_TURNS && (hs.nconns || tp.nconns); i++)
        turn(i);
    FUZZ_CHECK(hs.nconns == 0 && tp.nconns == 0, "the connection's memory was not freed");
}

/* ---- what the client received ---- */

typedef struct out_parser {
    llhttp_t p;
    fuzz_server_result *res;
    td_buf name, value, body;
    size_t body_bytes;
    long xreq;
    int close;
    int interims; /* 100 Continue before the current final response */
    int complete; /* llhttp ended the current message */
} out_parser;

static out_parser *op_of(llhttp_t *p) { return td_container_of(p, out_parser, p); }

static int op_begin(llhttp_t *p) {
    out_parser *op = op_of(p);
    op->name.len = op->value.len = op->body.len = 0;
    op->body_bytes = 0;
    op->xreq = -1;
    op->close = 0;
    op->complete = 0;
    return 0;
}

static int op_field(llhttp_t *p, const char *at, size_t len) {
    out_parser *op = op_of(p);
    td_buf_append(&op->name, at, len);
    return 0;
}

static int op_value(llhttp_t *p, const char *at, size_t len) {
    out_parser *op = op_of(p);
    td_buf_append(&op->value, at, len);
    return 0;
}

static int op_value_done(llhttp_t *p) {
    out_parser *op = op_of(p);
    const char *n = op->name.data ? op->name.data : "", *v = op->value.data ? op->value.data : "";
    if (op->name.len == 5 && strncasecmp(n, "x-req", 5) == 0) {
        char num[24] = {0};
        memcpy(num, v, op->value.len < sizeof num - 1 ? op->value.len : sizeof num - 1);
        op->xreq = strtol(num, NULL, 10);
    } else if (op->name.len == 10 && strncasecmp(n, "connection", 10) == 0) {
        op->close = op->value.len == 5 && strncasecmp(v, "close", 5) == 0;
    }
    op->name.len = op->value.len = 0;
    return 0;
}

/* A final response is the k-th one: it answers the k-th request handed
 * over, if there is one, unless it is the server's own error answer. */
static int server_error(const out_parser *op) { return op->xreq < 0 && op->p.status_code != 500; }

static int op_headers_done(llhttp_t *p) {
    out_parser *op = op_of(p);
    const fuzz_server_result *res = op->res;
    if (p->status_code == 100)
        return 0;
    size_t k = res->responses;
    return k < res->nreqs && res->reqs[k].method == HTTP_HEAD && !server_error(op) ? 1 : 0;
}

static int op_body(llhttp_t *p, const char *at, size_t len) {
    out_parser *op = op_of(p);
    /* Bodies are kept to be compared, but the large one: counted. */
    op->body_bytes += len;
    if (op->body.len < 65536)
        td_buf_append(&op->body, at, len);
    return 0;
}

static int op_message_done(llhttp_t *p) {
    op_of(p)->complete = 1;
    return HPE_PAUSED;
}

static const llhttp_settings_t op_settings = {
    .on_message_begin = op_begin,
    .on_header_field = op_field,
    .on_header_value = op_value,
    .on_header_value_complete = op_value_done,
    .on_headers_complete = op_headers_done,
    .on_body = op_body,
    .on_message_complete = op_message_done,
};

/* A whole response came: is it the one owed? */
static void check_response(out_parser *op) {
    fuzz_server_result *res = op->res;
    int status = op->p.status_code;
    if (status == 100) {
        FUZZ_CHECK(++op->interims == 1, "two interim responses before a final one");
        return;
    }
    op->interims = 0;
    size_t k = res->responses++;
    res->last_status = status;
    /* After an abrupt close, how much arrived depends on when output
     * left: not part of the outcome. Nor is which error the server
     * answered, when a request breaks two rules (a fold, and too long a
     * head): which it sees first depends on where llhttp's pieces end. */
    if (!res->abrupt)
        td_buf_printf(&res->outcome, "response %d\n", server_error(op) ? 0 : status);
    if (op->xreq >= 0) {
        FUZZ_CHECK((size_t)op->xreq == k, "response %zu answers request %ld: out of order", k, op->xreq);
        FUZZ_CHECK(k < res->nreqs, "a response with X-Req %zu to no request", k);
        const fuzz_server_req *r = &res->reqs[k];
        /* A head alone is whole when it answers HEAD. */
        FUZZ_CHECK(r->answered || (r->behaviour == FUZZ_FAIL_AFTER_HEAD && r->method == HTTP_HEAD),
                   "a whole response to request %zu, which no handler finished", k);
        FUZZ_CHECK(status == (r->behaviour == FUZZ_NO_CONTENT ? 204 : 200), "status %d for behaviour %d", status,
                   r->behaviour);
        if (r->method == HTTP_HEAD || status == 204) {
            FUZZ_CHECK(op->body.len == 0, "a body in the answer to HEAD or with 204");
        } else if (r->behaviour == FUZZ_READ_BODY) {
            FUZZ_CHECK(fuzz_same(op->body.data, op->body.len, r->body.data, r->body.len),
                       "the echoed body differs from the one the handler read");
        } else if (r->behaviour == FUZZ_ANSWER_CHUNKED) {
            FUZZ_CHECK(fuzz_same(op->body.data, op->body.len, "abcdefg", 7), "a chunked answer's body: %s",
                       fuzz_show(op->body.data ? op->body.data : "", op->body.len));
        } else if (r->behaviour == FUZZ_LARGE) {
            FUZZ_CHECK(op->body_bytes == FUZZ_LARGE_BYTES, "a large answer of %zu bytes", op->body_bytes);
        } else {
            FUZZ_CHECK(fuzz_same(op->body.data, op->body.len, "ok", 2), "an answer's body: %s",
                       fuzz_show(op->body.data ? op->body.data : "", op->body.len));
        }
    } else if (status == 500) {
        FUZZ_CHECK(k < res->nreqs &&
                       (res->reqs[k].behaviour == FUZZ_FAIL || res->reqs[k].behaviour == FUZZ_FAIL_AFTER_HEAD),
                   "a 500 for request %zu, whose handler did not fail", k);
    } else {
        FUZZ_CHECK(status == 400 || status == 405 || status == 413 || status == 431 || status == 501 || status == 505,
                   "an error answer with status %d", status);
        FUZZ_CHECK(op->close, "an error answer without Connection: close");
    }
}

/* Parses the whole output (see fuzz_server.h for the rules). */
static void check_output(fuzz_server_result *res) {
    out_parser op = {.res = res};
    llhttp_init(&op.p, HTTP_RESPONSE, &op_settings);
    const char *p = res->output.data ? res->output.data : "";
    size_t n = res->output.len, at = 0;
    int last_close = 0, partial = 0;
    while (at < n) {
        FUZZ_CHECK(!last_close, "bytes after a response with Connection: close");
        llhttp_errno_t err = llhttp_execute(&op.p, p + at, n - at);
        size_t used = err == HPE_OK ? n - at : (size_t)(llhttp_get_error_pos(&op.p) - (p + at));
        FUZZ_CHECK(err == HPE_OK || err == HPE_PAUSED, "the output is not HTTP (%s) at byte %zu",
                   llhttp_errno_name(err), at + used);
        at += used;
        if (err == HPE_PAUSED) {
            llhttp_resume(&op.p);
            check_response(&op);
            if (op.p.status_code != 100)
                last_close = op.close;
            op.complete = 0;
        } else {
            partial = 1;
        }
    }
    /* A body delimited by the close: its end is the end of the output. */
    if (partial && res->server_closed && llhttp_finish(&op.p) == HPE_PAUSED && op.complete) {
        check_response(&op);
        last_close = 1;
        partial = 0;
    }
    FUZZ_CHECK(!partial || res->abrupt, "a response cut short");
    if (!res->abrupt) {
        for (size_t k = 0; k < res->nreqs; k++)
            FUZZ_CHECK(!res->reqs[k].answered || k < res->responses, "the answer to request %zu never arrived", k);
        FUZZ_CHECK(res->responses <= res->nreqs + 1, "%zu responses to %zu requests", res->responses, res->nreqs);
        /* Closing is the only answer left to a body that goes wrong after
         * its request was answered (early). */
        FUZZ_CHECK(!res->server_closed || last_close || res->early,
                   "the server closed after a response without Connection: close");
    }
    FUZZ_CHECK(!last_close || res->server_closed, "the server kept the connection after Connection: close");
    td_buf_free(&op.name);
    td_buf_free(&op.value);
    td_buf_free(&op.body);
}

/* ---- a run ---- */

static uint32_t hash(const char *p, size_t n) {
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)p[i]) * 16777619u;
    return h;
}

void fuzz_server_run(const fuzz_server_input *in, fuzz_server_result *res) {
    if (port < 0)
        start();
    fuzz_fail_context = print_output;
    hs.cfg.max_header_bytes = in->max_header_bytes;
    hs.cfg.max_body_bytes = in->max_body_bytes;
    cur = in;
    nreqs = 0;
    posted_head = posted_tail = nlater = 0;
    larges = 0;
    abrupt = 0;
    trailer_close = 0;
    client_sent = server_read = 0;
    client_eof = client_closing = 0;
    res->output.len = res->requests.len = res->outcome.len = 0;
    res->early = 0;
    res->responses = 0;
    res->last_status = 0;
    output = &res->output;

    client_connect();
    size_t len = in->len < FUZZ_MAX_INPUT ? in->len : FUZZ_MAX_INPUT, from = 0;
    for (size_t c = 0; c <= in->ncuts; c++) {
        size_t to = c < in->ncuts && in->cuts[c] < len ? in->cuts[c] : len;
        if (to <= from && c < in->ncuts)
            continue;
        /* Answers put off until this piece has been read. */
        size_t due = nlater;
        client_send(in->data + from, to - from);
        pump("after a piece of input");
        for (size_t i = 0; i < due; i++)
            post(later[i]);
        memmove(later, later + due, (nlater - due) * sizeof later[0]);
        nlater -= due;
        pump("after the answers put off");
        from = to;
        if (to == len)
            break;
    }
    /* The input is all in: what was put off is answered, and so is what
     * those answers let through (pipelined requests handed over then). */
    while (nlater > 0) {
        size_t due = nlater;
        for (size_t i = 0; i < due; i++)
            post(later[i]);
        memmove(later, later + due, (nlater - due) * sizeof later[0]);
        nlater -= due;
        pump("after the last answers");
    }
    pump("at the end of the input");
    res->server_closed = client_eof;
    client_finish();

    FUZZ_CHECK(held == 0, "the transport's hooks are still held");
    FUZZ_CHECK(hs.live == 0, "%zu requests still live after the connection closed", hs.live);
    FUZZ_CHECK(refs_held == 0, "%ld buffers written by reference were never released", refs_held);
    for (size_t i = 0; i < nreqs; i++) {
        fuzz_server_req *r = &reqs[i];
        FUZZ_CHECK(r->over == 1, "request %zu was over %d times", i, r->over);
        FUZZ_CHECK(!td_list_linked(&r->waiter.link), "request %zu's body waiter was never called", i);
        FUZZ_CHECK(!r->answered || r->over_status == 0, "request %zu was answered but over with %d", i,
                   r->over_status);
    }
    res->reqs = reqs;
    res->nreqs = nreqs;
    res->abrupt = abrupt;
    res->trailer_close = trailer_close;
    for (size_t i = 0; i < nreqs; i++) {
        const fuzz_server_req *r = &reqs[i];
        res->early |= r->early;
        td_buf_printf(&res->requests, "%s %zu:%s HTTP/1.%d\n", llhttp_method_name((llhttp_method_t)r->method),
                      r->target_len,
                      fuzz_show(r->target, r->target_len < sizeof r->target ? r->target_len : sizeof r->target),
                      r->minor);
        td_buf_printf(&res->outcome, "request %zu: body %d:%zu:%08x over %d\n", i, r->body_status, r->body.len,
                      hash(r->body.data, r->body.len), r->over_status);
    }
    td_buf_printf(&res->outcome, "closed %d abrupt %d\n", res->server_closed, abrupt);
    check_output(res);
    output = NULL;
    /* FUZZ_DEBUG=1 ./fuzz_request input: what one run did. */
    static int debug = -1;
    if (debug < 0)
        debug = getenv("FUZZ_DEBUG") != NULL;
    if (debug)
        fprintf(stderr, "--- %zu cuts, output (%zu bytes): %s\n%.*s%.*s", in->ncuts, res->output.len,
                fuzz_show(res->output.data, res->output.len),
                (int)res->requests.len, res->requests.data, (int)res->outcome.len, res->outcome.data);
}

void fuzz_check_handed_over(const char *data, size_t len, size_t limit, const fuzz_server_result *res, size_t first,
                            const char *known) {
    size_t at = 0, n;
    fuzz_ref_req rr;
    for (size_t k = first; (n = fuzz_ref_request(data + at, len - at, limit, &rr)) > 0; k++) {
        if (k >= res->nreqs && known && fuzz_tolerated(known))
            return;
        FUZZ_CHECK(k < res->nreqs, "well-formed request %zu was not handed over%s%s: %s", k, known ? ", known: " : "",
                   known ? known : "", fuzz_show(data + at, n));
        const fuzz_server_req *r = &res->reqs[k];
        const char *method = llhttp_method_name((llhttp_method_t)r->method);
        size_t shown = rr.target_len < sizeof r->target ? rr.target_len : sizeof r->target;
        FUZZ_CHECK(fuzz_same(method, strlen(method), rr.method, rr.method_len) && r->target_len == rr.target_len &&
                       memcmp(r->target, rr.target, shown) == 0 && r->minor == 1,
                   "request %zu was handed over as %s %s", k, method, fuzz_show(r->target, shown));
        if (r->behaviour == FUZZ_CLOSE || r->behaviour == FUZZ_FAIL_AFTER_HEAD || r->behaviour == FUZZ_NEVER)
            break;
        at += n;
    }
}

static int same(const td_buf *a, const td_buf *b) { return fuzz_same(a->data, a->len, b->data, b->len); }

void fuzz_server_compare(const fuzz_server_result *cut, const fuzz_server_result *whole) {
    /* Whether llhttp swallows what follows a "Connection: close" trailer
     * field depends on the cuts. */
    int known = cut->trailer_close || whole->trailer_close;
    if (known && fuzz_tolerated("trailer-close"))
        return;
    const char *why = known ? " (the known defect trailer-close)" : "";
    if (cut->early || whole->early) {
        /* A request answered before its body was all in: the connection
         * closes after the answer when the rest of the body is still to
         * come, so whether the requests behind it are handed over depends
         * on where the input was cut. Up to there, the same ones. */
        size_t n = cut->requests.len < whole->requests.len ? cut->requests.len : whole->requests.len;
        FUZZ_CHECK(fuzz_same(cut->requests.data, n, whole->requests.data, n),
                   "the requests handed over before an early answer depend on where the input was cut%s:\n"
                   "--- in pieces:\n%.*s--- at once:\n%.*s",
                   why, (int)cut->requests.len, cut->requests.data, (int)whole->requests.len, whole->requests.data);
        return;
    }
    FUZZ_CHECK(same(&cut->requests, &whole->requests),
               "the requests handed over depend on where the input was cut%s:\n--- in pieces:\n%.*s--- at once:\n%.*s",
               why, (int)cut->requests.len, cut->requests.data, (int)whole->requests.len, whole->requests.data);
    FUZZ_CHECK(same(&cut->outcome, &whole->outcome),
               "the outcome depends on where the input was cut%s:\n--- in pieces:\n%.*s--- at once:\n%.*s", why,
               (int)cut->outcome.len, cut->outcome.data, (int)whole->outcome.len, whole->outcome.data);
}
