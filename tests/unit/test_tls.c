/* TLS in the transport over real loopback connections: a verified
 * handshake, a megabyte each way through an echo that pauses reading under
 * back-pressure (plaintext arriving after the pause), output by reference,
 * close_notify at a graceful end, a name the certificate does not cover,
 * STARTTLS on an open connection, and a plain request to the TLS listener.
 * The certificate is made at test time with the openssl command. At the end
 * no TLS state is left (td_tls_live), and under the sanitizer build
 * LeakSanitizer checks the rest. */
#include "check.h"
#include "conn.h"
#include "errors.h"
#include "tls.h"

#include <openssl/ssl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static uv_loop_t loop;
static td_transport tp;
static td_listener tls_listener;
static int tls_port;
static char dir[] = "/tmp/td-test-tls-XXXXXX";
static char cert[256], key[256];

#define TOTAL (1024 * 1024)
#define LARGE (8 * 1024 * 1024)

static struct {
    int opened, connects, connect_status, eofs, eof_err, closes;
    size_t server_got, client_got;
    int mismatch; /* echoed bytes that were not what was sent */
    td_conn *server, *client;
    char error[256];
    char plain_reply[512];
    size_t plain_len;
} ev;

static char pattern(size_t i) { return (char)('a' + (i * 7 + i / 251) % 26); }

/* ---- the server: an echo that stops reading while its output is high ---- */

static void s_data(td_conn *c, const char *d, size_t n) {
    td_buf *out = td_conn_out(c, n);
    CHECK(out != NULL);
    memcpy(out->data + out->len, d, n);
    out->len += n;
    ev.server_got += n;
    if (td_conn_unsent(c) > 64 * 1024) {
        td_conn_pause_reading(c);
        td_conn_want_drain(c);
    }
}
static void s_drain(td_conn *c) { td_conn_resume_reading(c); }
static void s_eof(td_conn *c, int err) {
    ev.eofs++;
    ev.eof_err = err;
    td_conn_end(c);
}
static void s_timeout(td_conn *c) { td_conn_close(c); }
static void s_nothing(td_conn *c) { (void)c; }
static void s_connect(td_conn *c, int status) { (void)c, (void)status; }
static void s_close(td_conn *c) {
    (void)c;
    ev.closes++;
}

static const td_conn_ops server_ops = {
    .low_water = 16 * 1024,
    .on_data = s_data,
    .on_eof = s_eof,
    .on_timeout = s_timeout,
    .on_drain = s_drain,
    .on_deferred = s_nothing,
    .on_connect = s_connect,
    .on_close = s_close,
};

static void on_open(td_listener *l, td_conn *c) {
    (void)l;
    ev.opened++;
    ev.server = c;
}

/* ---- the client ---- */

static void c_data(td_conn *c, const char *d, size_t n) {
    (void)c;
    for (size_t i = 0; i < n; i++)
        if (d[i] != pattern(ev.client_got + i))
            ev.mismatch++;
    ev.client_got += n;
    if (ev.plain_len + n < sizeof ev.plain_reply) {
        memcpy(ev.plain_reply + ev.plain_len, d, n);
        ev.plain_len += n;
    }
}
static void c_eof(td_conn *c, int err) {
    (void)err;
    td_conn_close(c);
}
static void c_connect(td_conn *c, int status) {
    ev.connects++;
    ev.connect_status = status;
    if (status == TD_ETLS)
        snprintf(ev.error, sizeof ev.error, "%s", td_tls_error(c->tls));
    else if (status == 0)
        td_conn_resume_reading(c);
}

static const td_conn_ops client_ops = {
    .low_water = 0,
    .on_data = c_data,
    .on_eof = c_eof,
    .on_timeout = s_timeout,
    .on_drain = s_nothing,
    .on_deferred = s_nothing,
    .on_connect = c_connect,
    .on_close = s_nothing,
};

#define RUN_UNTIL(cond)                                     \
    do {                                                    \
        for (int i_ = 0; i_ < 5000 && !(cond); i_++)        \
            uv_run(&loop, UV_RUN_NOWAIT), uv_sleep(1);      \
    } while (0)

static td_conn *dial(int port) {
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", port, &a);
    int err = 0;
    td_conn *c = td_conn_connect(&tp, (struct sockaddr *)&a, &client_ops, sizeof(td_conn), NULL, &err);
    CHECK(c != NULL);
    return c;
}

static td_tls *client_tls(const char *name) {
    char err[256] = "";
    td_tls *t = td_tls_connect(name, 1, cert, NULL, NULL, &tp.out_pool, err, sizeof err);
    CHECK(t != NULL);
    return t;
}

static char *big;

/* A verified TLS connection to the listener, its handshake done. */
static td_conn *tls_dial(void) {
    td_conn *c = dial(tls_port);
    CHECK_EQ_INT(td_conn_start_tls(c, client_tls("localhost")), 0);
    RUN_UNTIL(ev.connects == 1);
    CHECK_EQ_INT(ev.connect_status, 0);
    return c;
}

static void test_echo_a_megabyte(void) {
    memset(&ev, 0, sizeof ev);
    td_conn *c = tls_dial();
    CHECK(td_tls_established(c->tls));
    CHECK_STR(td_tls_version(c->tls), "TLSv1.3");
    /* Half in small copied pieces, half by reference (encrypted at once:
     * the data is free when the call returns). */
    for (size_t off = 0; off < TOTAL / 2; off += 1000) {
        size_t n = TOTAL / 2 - off < 1000 ? TOTAL / 2 - off : 1000;
        td_buf *out = td_conn_out(c, n);
        memcpy(out->data + out->len, big + off, n);
        out->len += n;
    }
    int released = 0;
    CHECK_EQ_INT(td_conn_write_ref(c, big + TOTAL / 2, TOTAL / 2, NULL, &released), 0);
    RUN_UNTIL(ev.client_got == TOTAL);
    CHECK_EQ_INT(ev.server_got, TOTAL);
    CHECK_EQ_INT(ev.client_got, TOTAL);
    CHECK_EQ_INT(ev.mismatch, 0);
    /* A graceful end sends close_notify: the server reads a clean end. */
    td_conn_end(c);
    RUN_UNTIL(ev.eofs == 1 && ev.closes == 1);
    CHECK_EQ_INT(ev.eof_err, UV_EOF);
    CHECK_EQ_INT(ev.closes, 1);
}

static void count_release(void *ud) { (*(int *)ud)++; }

/* A reference larger than the socket takes is held, encrypted a slice at a
 * time as the peer reads (the wire buffer stays small), and released once. */
static void test_large_reference_is_encrypted_in_slices(void) {
    memset(&ev, 0, sizeof ev);
    td_conn *c = tls_dial();
    int released = 0;
    /* Small output before and after the reference keeps its place. */
    td_buf *out = td_conn_out(c, 10);
    memcpy(out->data, big, 10);
    out->len = 10;
    CHECK_EQ_INT(td_conn_write_ref(c, big + 10, LARGE - 20, count_release, &released), 1);
    out = td_conn_out(c, 10);
    memcpy(out->data + out->len, big + LARGE - 10, 10);
    out->len += 10;
    CHECK_EQ_INT(released, 0);
    size_t most = 0;
    for (int i = 0; i < 20000 && ev.client_got < LARGE; i++) {
        uv_run(&loop, UV_RUN_NOWAIT);
        if (td_tls_wire(c->tls)->len > most)
            most = td_tls_wire(c->tls)->len;
        if (ev.client_got < LARGE)
            uv_sleep(1);
    }
    CHECK_EQ_INT(ev.client_got, LARGE);
    CHECK_EQ_INT(ev.mismatch, 0);
    CHECK_EQ_INT(released, 1);
    CHECK(most <= 80 * 1024); /* a slice (64 KiB) and its records' overhead */
    td_conn_close(c);
    RUN_UNTIL(ev.closes == 1);
}

/* A child process: a TLS 1.3 client that sends key updates asking for ours
 * as fast as it can and never reads. */
static void key_update_flood(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int small = 4096; /* the kernel must not absorb what the server sends */
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", tls_port, &a);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0)
        _exit(2);
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
    SSL *ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    if (SSL_connect(ssl) != 1)
        _exit(3);
    for (int i = 0; i < 400000; i++) {
        if (SSL_key_update(ssl, SSL_KEY_UPDATE_REQUESTED) != 1 || SSL_do_handshake(ssl) != 1)
            _exit(0); /* the server stopped reading: the socket filled up, or it closed */
    }
    _exit(0);
}

/* What a peer's records make us send stays bounded when the peer never
 * reads: reading stops past a mark until it takes some. */
static void test_a_peer_that_never_reads_is_throttled(void) {
    memset(&ev, 0, sizeof ev);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0)
        key_update_flood();
    RUN_UNTIL(ev.opened == 1);
    td_conn *s = ev.server;
    uv_os_fd_t fd;
    int small = 4096;
    CHECK_EQ_INT(uv_fileno((uv_handle_t *)&s->tcp, &fd), 0);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
    size_t most = 0;
    /* Until the mark is reached (generous: the sanitizer build is slow),
     * then one more second to see that it holds. */
    uint64_t end = uv_hrtime() + 20000000000ull, reached = 0;
    int exited = 0, status = 0;
    while (uv_hrtime() < end && !exited && ev.closes == 0) {
        uv_run(&loop, UV_RUN_NOWAIT);
        if (ev.closes == 0 && td_conn_unsent(s) > most)
            most = td_conn_unsent(s);
        if (!reached && most > 1024 * 1024) {
            reached = uv_hrtime();
            end = reached + 1000000000ull;
        }
        exited = waitpid(pid, &status, WNOHANG) == pid;
        uv_sleep(1);
    }
    CHECK(most > 1024 * 1024);        /* it made us answer more than the kernel took */
    CHECK(most < 2 * 1024 * 1024);    /* the mark (1 MiB) and what one read brings */
    if (!exited) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
    }
    RUN_UNTIL(ev.closes == 1);
    CHECK_EQ_INT(ev.closes, 1);
}

static void test_wrong_name_fails_the_handshake(void) {
    memset(&ev, 0, sizeof ev);
    td_conn *c = dial(tls_port);
    CHECK_EQ_INT(td_conn_start_tls(c, client_tls("other.test")), 0);
    RUN_UNTIL(ev.connects == 1 && ev.closes == 1);
    CHECK_EQ_INT(ev.connect_status, TD_ETLS);
    CHECK_STR(ev.error, "host name mismatch");
    CHECK_EQ_INT(ev.closes, 1); /* the server closed its side too */
}

static void test_starttls_on_an_open_connection(void) {
    memset(&ev, 0, sizeof ev);
    td_conn *c = dial(tls_port);
    RUN_UNTIL(ev.connects == 1 && ev.opened == 1);
    CHECK_EQ_INT(ev.connect_status, 0);
    CHECK(c->tls == NULL);
    CHECK_EQ_INT(td_conn_start_tls(c, client_tls("127.0.0.1")), 0); /* an IP address, verified */
    CHECK_EQ_INT(ev.connects, 1); /* never inside the call */
    RUN_UNTIL(ev.connects == 2);
    CHECK_EQ_INT(ev.connect_status, 0);
    td_buf *out = td_conn_out(c, 3);
    memcpy(out->data, big, 3);
    out->len = 3;
    td_conn_flush(c);
    RUN_UNTIL(ev.client_got == 3);
    CHECK_EQ_INT(ev.client_got, 3);
    td_conn_close(c);
    RUN_UNTIL(ev.closes == 1);
}

static void test_plain_request_to_the_tls_port(void) {
    memset(&ev, 0, sizeof ev);
    td_conn *c = dial(tls_port);
    RUN_UNTIL(ev.connects == 1);
    td_buf *out = td_conn_out(c, 64);
    const char req[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    memcpy(out->data, req, sizeof req - 1);
    out->len = sizeof req - 1;
    td_conn_flush(c);
    RUN_UNTIL(ev.plain_len >= 8 && ev.closes == 1);
    ev.plain_reply[ev.plain_len] = '\0';
    CHECK_STR(ev.plain_reply, "NOT TLS\n");
    CHECK_EQ_INT(ev.closes, 1);
    td_conn_close(c);
}

int main(void) {
    CHECK(mkdtemp(dir) != NULL);
    snprintf(cert, sizeof cert, "%s/cert.pem", dir);
    snprintf(key, sizeof key, "%s/key.pem", dir);
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost "
             "-addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout %s -out %s 2>/dev/null",
             key, cert);
    CHECK_EQ_INT(system(cmd), 0);
    big = malloc(LARGE);
    for (size_t i = 0; i < LARGE; i++)
        big[i] = pattern(i);

    uv_loop_init(&loop);
    td_transport_init(&tp, &loop, 0);
    char err[512] = "";
    const char *certs[] = {cert}, *keys[] = {key};
    td_tls_server *s = td_tls_server_new(certs, keys, 1, 0, err, sizeof err);
    CHECK(s != NULL);
    CHECK_EQ_INT(td_listener_open(&tls_listener, &tp, "127.0.0.1", 0, &server_ops, sizeof(td_conn), on_open, NULL), 0);
    td_listener_set_tls(&tls_listener, s, "NOT TLS\n", 8);
    tls_port = td_listener_port(&tls_listener);
    td_tls_server_unref(s);

    /* A key that is not the certificate's is refused, with the reason. */
    char other[256];
    snprintf(other, sizeof other, "%s/other.pem", dir);
    snprintf(cmd, sizeof cmd, "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out %s 2>/dev/null",
             other);
    CHECK_EQ_INT(system(cmd), 0);
    const char *bad_keys[] = {other};
    CHECK(td_tls_server_new(certs, bad_keys, 1, 0, err, sizeof err) == NULL);
    CHECK(strstr(err, "does not match the certificate") != NULL);

    test_echo_a_megabyte();
    test_large_reference_is_encrypted_in_slices();
    test_a_peer_that_never_reads_is_throttled();
    test_wrong_name_fails_the_handshake();
    test_starttls_on_an_open_connection();
    test_plain_request_to_the_tls_port();

    td_listener_close(&tls_listener, NULL);
    td_transport_close(&tp);
    uv_run(&loop, UV_RUN_DEFAULT);
    td_transport_destroy(&tp);
    CHECK_EQ_INT(uv_loop_close(&loop), 0);
    CHECK_EQ_INT(td_tls_live(), 0);
    td_tls_shutdown();
    free(big);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK_EQ_INT(system(cmd), 0);
    return check_result("test_tls");
}
