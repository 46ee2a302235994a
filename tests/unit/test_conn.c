/* The transport over real loopback connections: every path that frees a
 * connection (a close from either side, a deadline, the send timeout, a
 * graceful end, a failed connect, a close while connecting), handles that
 * stop finding a closed connection, output by reference, the accept limit,
 * and the hooks around every protocol callback. Under the sanitizer build
 * LeakSanitizer checks that every connection's memory went. */
#include "check.h"
#include "conn.h"
#include "errors.h"

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static uv_loop_t loop;
static td_transport tp;
static td_listener listener;
static int port;

/* What the protocol saw. */
static struct {
    int opened, data, eofs, timeouts, drains, connects, closes, defers;
    int connect_status, close_reason;
    size_t bytes;
    td_conn *last_open;
    int depth, max_depth, entered;
} ev;

static void t_data(td_conn *c, const char *d, size_t n) {
    (void)c, (void)d;
    ev.data++;
    ev.bytes += n;
}
static void t_eof(td_conn *c, int err) {
    (void)err;
    ev.eofs++;
    td_conn_close(c);
}
static void t_timeout(td_conn *c) {
    ev.timeouts++;
    td_conn_close(c);
}
static void t_drain(td_conn *c) {
    (void)c;
    ev.drains++;
}
static void t_deferred(td_conn *c) {
    (void)c;
    ev.defers++;
}
static void t_connect(td_conn *c, int status) {
    (void)c;
    ev.connects++;
    ev.connect_status = status;
}
static void t_close(td_conn *c) {
    ev.closes++;
    ev.close_reason = c->close_reason;
}

static const td_conn_ops ops = {
    .low_water = 0,
    .on_data = t_data,
    .on_eof = t_eof,
    .on_timeout = t_timeout,
    .on_drain = t_drain,
    .on_deferred = t_deferred,
    .on_connect = t_connect,
    .on_close = t_close,
};

static void on_open(td_listener *l, td_conn *c) {
    (void)l;
    ev.opened++;
    ev.last_open = c;
}

static void hook_enter(void *ud) {
    (void)ud;
    ev.entered++;
    if (++ev.depth > ev.max_depth)
        ev.max_depth = ev.depth;
}
static void hook_leave(void *ud) {
    (void)ud;
    ev.depth--;
}

/* Runs the loop until cond holds (or about two seconds passed). */
#define RUN_UNTIL(cond)                                     \
    do {                                                    \
        for (int i_ = 0; i_ < 2000 && !(cond); i_++)        \
            uv_run(&loop, UV_RUN_NOWAIT), uv_sleep(1);      \
    } while (0)

static td_conn *dial(void) {
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", port, &a);
    int err = 0;
    td_conn *c = td_conn_connect(&tp, (struct sockaddr *)&a, &ops, sizeof(td_conn), NULL, &err);
    CHECK(c != NULL);
    return c;
}

static void settle(void) {
    for (int i = 0; i < 50; i++)
        uv_run(&loop, UV_RUN_NOWAIT);
}

static void test_accept_data_close(void) {
    memset(&ev, 0, sizeof ev);
    td_conn *client = dial();
    RUN_UNTIL(ev.connects == 1 && ev.opened == 1);
    CHECK_EQ_INT(ev.connect_status, 0);
    td_conn *server = ev.last_open;
    CHECK(server->accepted && !client->accepted);
    CHECK_EQ_INT(tp.naccepted, 1);
    uint32_t slot = server->slot, serial = td_conn_serial(server);
    CHECK(td_conn_lookup(&tp, slot, serial) == server);
    td_conn_bump(server);
    CHECK(td_conn_lookup(&tp, slot, serial) == NULL);
    serial = td_conn_serial(server);

    td_conn_resume_reading(client);
    td_buf *out = td_conn_out(client, 5);
    memcpy(out->data, "hello", 5);
    out->len = 5;
    td_conn_flush(client);
    RUN_UNTIL(ev.bytes == 5);
    CHECK_EQ_INT(ev.bytes, 5);

    /* The client closes: the server's side sees the end and closes. */
    td_conn_close(client);
    RUN_UNTIL(ev.eofs == 1 && ev.closes == 2);
    CHECK_EQ_INT(ev.closes, 2); /* on_close once each */
    settle();
    CHECK(td_conn_lookup(&tp, slot, serial) == NULL);
    CHECK_EQ_INT(tp.naccepted, 0);
    CHECK_EQ_INT(tp.nconns, 0);
    CHECK(ev.entered > 0 && ev.depth == 0);
}

static uint64_t now_ms(void) { return uv_hrtime() / 1000000; }

static void test_deadline(void) {
    memset(&ev, 0, sizeof ev);
    td_conn *client = dial();
    RUN_UNTIL(ev.opened == 1);
    td_conn *server = ev.last_open;
    /* A deadline moved later leaves its heap entry where it was (deadlines
     * move lazily): the entry fires early, is put right, and the timeout
     * comes at the later time, once. A cleared one never comes. */
    td_conn_set_deadline(client, 30);
    td_conn_clear_deadline(client);
    uint64_t start = now_ms();
    td_conn_set_deadline(server, 30);
    td_conn_set_deadline(server, 200);
    RUN_UNTIL(now_ms() - start >= 100);
    CHECK_EQ_INT(ev.timeouts, 0);
    RUN_UNTIL(ev.timeouts == 1);
    CHECK_EQ_INT(ev.timeouts, 1);
    CHECK(now_ms() - start >= 190);
    td_conn_close(client);
    settle();
    CHECK_EQ_INT(ev.timeouts, 1);
    CHECK_EQ_INT(tp.nconns, 0);
    CHECK_EQ_INT(tp.deadlines.heap.count, 0);
}

static int released;
static void release(void *ud) { (*(int *)ud)++; }

static void test_send_timeout_and_output_by_reference(void) {
    memset(&ev, 0, sizeof ev);
    released = 0;
    td_conn *client = dial();
    RUN_UNTIL(ev.opened == 1);
    td_conn *server = ev.last_open;
    /* The client never reads: queued output makes no progress. */
    td_conn_set_send_timeout(server, 100);
    static char big[8 << 20];
    int rc = td_conn_write_ref(server, big, sizeof big, release, &released);
    CHECK_EQ_INT(rc, 1);
    CHECK(td_conn_unsent(server) > 0);
    RUN_UNTIL(ev.closes == 1);
    CHECK_EQ_INT(ev.close_reason, TD_ETIMEOUT);
    settle();
    CHECK_EQ_INT(released, 1); /* once, though the write never finished */
    td_conn_close(client);
    settle();
    CHECK_EQ_INT(tp.nconns, 0);
}

static void test_graceful_end_delivers_output(void) {
    memset(&ev, 0, sizeof ev);
    td_conn *client = dial();
    RUN_UNTIL(ev.opened == 1);
    td_conn_resume_reading(client);
    td_conn *server = ev.last_open;
    td_buf *out = td_conn_out(server, 3);
    memcpy(out->data, "bye", 3);
    out->len = 3;
    td_conn_end(server); /* on_close now, the bytes still go */
    CHECK_EQ_INT(ev.closes, 1);
    RUN_UNTIL(ev.bytes == 3 && ev.eofs == 1);
    CHECK_EQ_INT(ev.bytes, 3);
    CHECK_EQ_INT(ev.eofs, 1); /* the half-close reached the client */
    settle();
    CHECK_EQ_INT(tp.nconns, 0);
}

static void test_connect_failures(void) {
    memset(&ev, 0, sizeof ev);
    /* A port nobody listens on. */
    uv_tcp_t probe;
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", 0, &a);
    uv_tcp_init(&loop, &probe);
    uv_tcp_bind(&probe, (struct sockaddr *)&a, 0);
    struct sockaddr_storage ss;
    int len = sizeof ss;
    uv_tcp_getsockname(&probe, (struct sockaddr *)&ss, &len);
    uv_close((uv_handle_t *)&probe, NULL);
    settle();
    int err = 0;
    td_conn *c = td_conn_connect(&tp, (struct sockaddr *)&ss, &ops, sizeof(td_conn), NULL, &err);
    CHECK(c != NULL);
    RUN_UNTIL(ev.connects == 1);
    CHECK_EQ_INT(ev.connect_status, UV_ECONNREFUSED);
    td_conn_close(c);
    /* Closed while connecting: on_close, and no on_connect after it. */
    memset(&ev, 0, sizeof ev);
    c = dial();
    td_conn_close(c);
    CHECK_EQ_INT(ev.closes, 1);
    settle();
    CHECK_EQ_INT(ev.connects, 0);
    /* The accepted side, if it came, ends too. */
    CHECK_EQ_INT(ev.closes, 1 + ev.opened);
    CHECK_EQ_INT(tp.nconns, 0);
}

static void test_accept_limit(void) {
    memset(&ev, 0, sizeof ev);
    tp.max_conns = 1;
    td_conn *a = dial();
    RUN_UNTIL(ev.opened == 1);
    td_conn *first = ev.last_open;
    td_conn *b = dial();
    RUN_UNTIL(ev.connects == 2);
    settle();
    CHECK_EQ_INT(ev.opened, 1); /* the second waits in the backlog */
    td_conn_close(first);
    RUN_UNTIL(ev.opened == 2);
    CHECK_EQ_INT(ev.opened, 2);
    tp.max_conns = 0;
    td_conn_close(a);
    td_conn_close(b);
    td_conn_close(ev.last_open);
    settle();
    CHECK_EQ_INT(tp.nconns, 0);
}

static void test_deferred(void) {
    memset(&ev, 0, sizeof ev);
    td_conn *c = dial();
    td_conn_defer(c);
    td_conn_defer(c);
    settle();
    CHECK_EQ_INT(ev.defers, 1);
    td_conn_defer(c);
    td_conn_close(c); /* a closed connection's deferred work is dropped */
    settle();
    CHECK_EQ_INT(ev.defers, 1);
    CHECK_EQ_INT(tp.ndeferred, 0);
    /* The accepted side saw the end and closed itself. */
    settle();
    CHECK_EQ_INT(tp.nconns, 0);
}

/* A protocol whose on_close closes the connection again (a waiter woken
 * by the close calls close on what it holds): one close only. */
static void t_close_again(td_conn *c) {
    ev.closes++;
    td_conn_close(c);
}

static void test_close_inside_on_close(void) {
    static td_conn_ops again_ops;
    again_ops = ops;
    again_ops.on_close = t_close_again;
    memset(&ev, 0, sizeof ev);
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", port, &a);
    int err = 0;
    td_conn *c = td_conn_connect(&tp, (struct sockaddr *)&a, &again_ops, sizeof(td_conn), NULL, &err);
    CHECK(c != NULL);
    RUN_UNTIL(ev.connects == 1 && ev.opened == 1);
    td_conn_set_deadline(c, 20); /* closed from the deadline's callback */
    /* The server side reads the end and closes too. */
    RUN_UNTIL(ev.timeouts == 1 && ev.eofs == 1 && ev.closes == 2);
    settle();
    CHECK_EQ_INT(ev.timeouts, 1);
    CHECK_EQ_INT(ev.closes, 2); /* each side's on_close once */
    CHECK_EQ_INT(tp.nconns, 0);
}

/* ---- files ---- */

/* The accepted side sends a file, going on at each on_drain. */
static struct {
    int fd;
    int64_t off;
    uint64_t left;
    int64_t last; /* the last return: bytes, or an error */
    int calls;
} sf;

static void sf_step(td_conn *c) {
    while (sf.left > 0) {
        int64_t n = td_conn_send_file(c, sf.fd, &sf.off, sf.left);
        sf.calls++;
        sf.last = n;
        if (n < 0)
            return;
        sf.left -= (uint64_t)n;
        if (td_conn_unsent(c) > 0) {
            td_conn_want_drain(c);
            return;
        }
    }
}

static void sf_drain(td_conn *c) {
    ev.drains++;
    sf_step(c);
}

static const td_conn_ops file_ops = {
    .low_water = 0,
    .on_data = t_data,
    .on_eof = t_eof,
    .on_timeout = t_timeout,
    .on_drain = sf_drain,
    .on_deferred = t_deferred,
    .on_connect = t_connect,
    .on_close = t_close,
};

static int temp_file(size_t size) {
    char name[] = "/tmp/td-test-conn-XXXXXX";
    int fd = mkstemp(name);
    CHECK(fd >= 0);
    unlink(name);
    char block[4096];
    for (size_t i = 0; i < sizeof block; i++)
        block[i] = (char)('a' + i % 26);
    for (size_t done = 0; done < size;) {
        size_t n = size - done < sizeof block ? size - done : sizeof block;
        CHECK(write(fd, block, n) == (ssize_t)n);
        done += n;
    }
    return fd;
}

/* A file larger than a sendfile burst arrives whole, in order of size,
 * through sendfile and the blocks queued while the socket is full. */
static void test_send_file(void) {
    memset(&ev, 0, sizeof ev);
    size_t size = (9u << 20) + 123;
    td_conn *client = dial();
    RUN_UNTIL(ev.opened == 1);
    td_conn *server = ev.last_open;
    server->ops = &file_ops;
    td_conn_resume_reading(client);
    sf.fd = temp_file(size);
    sf.off = 100; /* from an offset */
    sf.left = size - 100;
    td_buf *out = td_conn_out(server, 4);
    memcpy(out->data, "HEAD", 4); /* output before the file goes first */
    out->len = 4;
    sf_step(server);
    for (int i = 0; i < 20 && ev.bytes < size - 100 + 4; i++)
        RUN_UNTIL(ev.bytes == size - 100 + 4);
    CHECK_EQ_INT(ev.bytes, size - 100 + 4);
    CHECK_EQ_INT(sf.left, 0);
    CHECK(sf.calls > 1); /* the burst bound made it come back */
    CHECK_EQ_INT(td_conn_unsent(server), 0);
    close(sf.fd);
    td_conn_close(client);
    RUN_UNTIL(ev.closes == 2);
    settle();
    CHECK_EQ_INT(tp.nconns, 0);
}

/* A file shorter than asked: TD_ESHORT once what there was went. */
static void test_send_file_short(void) {
    memset(&ev, 0, sizeof ev);
    td_conn *client = dial();
    RUN_UNTIL(ev.opened == 1);
    td_conn *server = ev.last_open;
    server->ops = &file_ops;
    td_conn_resume_reading(client);
    sf.fd = temp_file(1000);
    sf.off = 0;
    sf.left = 5000;
    sf_step(server);
    RUN_UNTIL(sf.last < 0);
    CHECK_EQ_INT(sf.last, TD_ESHORT);
    CHECK_EQ_INT(sf.left, 4000);
    close(sf.fd);
    td_conn_close(server);
    td_conn_close(client);
    settle();
    CHECK_EQ_INT(tp.nconns, 0);
}

/* A client that never reads: the send timeout closes the sender. */
static void test_send_file_timeout(void) {
    memset(&ev, 0, sizeof ev);
    td_conn *client = dial();
    RUN_UNTIL(ev.opened == 1);
    td_conn *server = ev.last_open;
    server->ops = &file_ops;
    td_conn_set_send_timeout(server, 100);
    sf.fd = temp_file(64u << 20);
    sf.off = 0;
    sf.left = 64u << 20;
    sf_step(server);
    RUN_UNTIL(ev.closes == 1);
    CHECK_EQ_INT(ev.close_reason, TD_ETIMEOUT);
    CHECK(sf.left > 0);
    close(sf.fd);
    td_conn_close(client);
    settle();
    CHECK_EQ_INT(tp.nconns, 0);
}

/* A held connection reads nothing, yet sees its peer leave; resuming reads
 * what waited in the kernel; a close during a hold lets go of the watch
 * (LeakSanitizer: its memory; the descriptor count: its second fd). */
static void send_text(td_conn *c, const char *text) {
    size_t n = strlen(text);
    td_buf *out = td_conn_out(c, n);
    memcpy(out->data + out->len, text, n);
    out->len += n;
    td_conn_flush(c);
}

static int open_fds(void) {
    int n = 0;
    for (int fd = 0; fd < 1024; fd++)
        if (fcntl(fd, F_GETFD) != -1)
            n++;
    return n;
}

static void test_hold_sees_the_peer_leave(void) {
    memset(&ev, 0, sizeof ev);
    int fds = open_fds();
    td_conn *client = dial();
    RUN_UNTIL(ev.connects == 1 && ev.opened == 1);
    td_conn *server = ev.last_open;
    td_conn_hold_reading(server);
    CHECK(server->held && !server->reading);
    send_text(client, "kept in the kernel");
    settle();
    CHECK_EQ_INT(ev.bytes, 0);
    /* Resuming ends the hold and reads what waited. */
    td_conn_resume_reading(server);
    CHECK(!server->held);
    RUN_UNTIL(ev.bytes == 18);
    CHECK_EQ_INT(ev.bytes, 18);
    /* Held again, with unread input queued behind: the client's close is
     * seen all the same. */
    td_conn_hold_reading(server);
    send_text(client, "more");
    settle();
    td_conn_close(client);
    RUN_UNTIL(ev.eofs == 1 && ev.closes == 2);
    CHECK_EQ_INT(ev.eofs, 1);
    CHECK_EQ_INT(ev.bytes, 18);
    settle();
    CHECK_EQ_INT(tp.nconns, 0);
    CHECK_EQ_INT(open_fds(), fds);

    /* This side closes during a hold. */
    memset(&ev, 0, sizeof ev);
    client = dial();
    RUN_UNTIL(ev.connects == 1 && ev.opened == 1);
    td_conn_hold_reading(ev.last_open);
    td_conn_close(ev.last_open);
    td_conn_close(client);
    settle();
    CHECK_EQ_INT(tp.nconns, 0);
    CHECK(td_list_empty(&tp.holds));
    CHECK_EQ_INT(open_fds(), fds);
}

int main(void) {
    uv_loop_init(&loop);
    td_transport_init(&tp, &loop, 0);
    tp.enter = hook_enter;
    tp.leave = hook_leave;
    CHECK_EQ_INT(td_listener_open(&listener, &tp, "127.0.0.1", 0, &ops, sizeof(td_conn), on_open, NULL), 0);
    port = td_listener_port(&listener);
    test_accept_data_close();
    test_deadline();
    test_send_timeout_and_output_by_reference();
    test_graceful_end_delivers_output();
    test_connect_failures();
    test_accept_limit();
    test_deferred();
    test_close_inside_on_close();
    test_send_file();
    test_send_file_short();
    test_send_file_timeout();
    test_hold_sees_the_peer_leave();
    CHECK_EQ_INT(ev.depth, 0); /* every enter had its leave (they may nest) */
    td_listener_close(&listener, NULL);
    td_transport_close(&tp);
    uv_run(&loop, UV_RUN_DEFAULT);
    td_transport_destroy(&tp);
    CHECK_EQ_INT(uv_loop_close(&loop), 0);
    return check_result("test_conn");
}
