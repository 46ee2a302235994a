/* The response head and body framing, over a real loopback connection: a
 * blocking client socket sends a request, the HTTP server hands it over,
 * the test writes the answer and reads what the client receives. */
#include "check.h"
#include "errors.h"
#include "http.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

static uv_loop_t loop;
static td_transport tp;
static td_http_server hs;
static td_http_conn *got;
static int port;

static void on_request(td_http_conn *hc, void *ud) {
    (void)ud;
    got = hc;
}

/* A connection that sent `raw`; returns the live request (or NULL) and the
 * client's socket in *fd. */
static td_http_conn *request(const char *raw, int *fd) {
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", port, &a);
    *fd = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(*fd, (struct sockaddr *)&a, sizeof a) != 0 || write(*fd, raw, strlen(raw)) != (ssize_t)strlen(raw))
        return NULL;
    fcntl(*fd, F_SETFL, O_NONBLOCK);
    got = NULL;
    for (int i = 0; i < 2000 && !got; i++) {
        uv_run(&loop, UV_RUN_NOWAIT);
        usleep(1000);
    }
    return got;
}

/* Reads what arrives within a short while, with the Date line cut out. */
static const char *received(int fd) {
    static char text[65536];
    size_t n = 0;
    for (int idle = 0; idle < 100 && n < sizeof text - 1;) {
        uv_run(&loop, UV_RUN_NOWAIT);
        ssize_t r = read(fd, text + n, sizeof text - 1 - n);
        if (r > 0) {
            n += (size_t)r;
            idle = 0;
        } else if (r == 0) {
            break;
        } else {
            idle++;
            usleep(1000);
        }
    }
    text[n] = '\0';
    char *date = strstr(text, "Date: ");
    if (date) {
        char *end = strstr(date, "\r\n");
        memmove(date, end + 2, strlen(end + 2) + 1);
    }
    return text;
}

static void done(int fd) {
    close(fd);
    for (int i = 0; i < 20; i++)
        uv_run(&loop, UV_RUN_NOWAIT);
}

static void test_known_length(void) {
    int fd;
    td_http_conn *hc = request("GET / HTTP/1.1\r\nHost: x\r\n\r\n", &fd);
    CHECK(hc != NULL);
    CHECK_EQ_INT(td_http_head_begin(hc, 200), 0);
    CHECK_EQ_INT(td_http_head_add(hc, "Content-Type", 12, "text/plain", 10), 0);
    CHECK_EQ_INT(td_http_head_end(hc, 5), 0);
    CHECK_EQ_INT(td_http_write(hc, "hello", 5), 0);
    CHECK_EQ_INT(td_http_head_begin(hc, 200), TD_ECLOSED);
    td_http_response_end(hc);
    CHECK(strcmp(received(fd), "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nServer: tendril\r\n"
                               "Content-Length: 5\r\n\r\nhello") == 0);
    CHECK(!td_http_is_live(hc));
    done(fd);
}

static void test_chunked_and_its_end(void) {
    int fd;
    td_http_conn *hc = request("GET / HTTP/1.1\r\nHost: x\r\n\r\n", &fd);
    td_http_head_begin(hc, 404);
    td_http_head_end(hc, -1);
    td_http_write(hc, "abc", 3);
    td_http_write(hc, "", 0);
    td_http_write(hc, "0123456789abcdef0123", 20);
    td_http_response_end(hc);
    CHECK(strcmp(received(fd), "HTTP/1.1 404 Not Found\r\nServer: tendril\r\nTransfer-Encoding: chunked\r\n\r\n"
                               "3\r\nabc\r\n14\r\n0123456789abcdef0123\r\n0\r\n\r\n") == 0);
    done(fd);
}

static void release(void *ud) { (*(int *)ud)++; }

static void test_by_reference_keeps_the_order(void) {
    int fd, released = 0;
    td_http_conn *hc = request("GET / HTTP/1.1\r\nHost: x\r\n\r\n", &fd);
    td_http_head_begin(hc, 200);
    td_http_head_end(hc, -1);
    td_http_write(hc, "ab", 2);
    CHECK(td_http_write_ref(hc, "REFERENCED", 10, release, &released) >= 0);
    td_http_write(hc, "cd", 2);
    td_http_response_end(hc);
    CHECK(strcmp(received(fd), "HTTP/1.1 200 OK\r\nServer: tendril\r\nTransfer-Encoding: chunked\r\n\r\n"
                               "2\r\nab\r\na\r\nREFERENCED\r\n2\r\ncd\r\n0\r\n\r\n") == 0);
    CHECK(released <= 1);
    done(fd);
}

static void test_http10(void) {
    int fd;
    td_http_conn *hc = request("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", &fd);
    td_http_head_begin(hc, 200);
    td_http_head_end(hc, 2);
    td_http_write(hc, "ok", 2);
    td_http_response_end(hc);
    CHECK(strstr(received(fd), "Content-Length: 2\r\nConnection: keep-alive\r\n\r\nok") != NULL);
    done(fd);
    hc = request("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", &fd);
    td_http_head_begin(hc, 200);
    td_http_head_end(hc, -1);
    CHECK(hc->rq->close_after);
    td_http_write(hc, "until the end", 13);
    td_http_response_end(hc);
    const char *text = received(fd);
    CHECK(strstr(text, "Connection: close\r\n\r\nuntil the end") != NULL);
    CHECK(strstr(text, "chunked") == NULL);
    done(fd);
}

static void test_user_headers_that_the_server_manages(void) {
    int fd;
    td_http_conn *hc = request("GET / HTTP/1.1\r\nHost: x\r\n\r\n", &fd);
    td_http_head_begin(hc, 201);
    CHECK_EQ_INT(td_http_head_add(hc, "connection", 10, "Close", 5), 0);
    CHECK_EQ_INT(td_http_head_add(hc, "Transfer-Encoding", 17, "gzip", 4), 0);
    CHECK_EQ_INT(td_http_head_add(hc, "Server", 6, "mine", 4), 0);
    CHECK_EQ_INT(td_http_head_add(hc, "Date", 4, "yesterday", 9), 0);
    CHECK_EQ_INT(td_http_head_add(hc, "Content-Length", 14, "3", 1), 0);
    td_http_head_end(hc, 99);
    td_http_write(hc, "abc", 3);
    td_http_response_end(hc);
    CHECK(strcmp(received(fd), "HTTP/1.1 201 Created\r\nServer: mine\r\nContent-Length: 3\r\n"
                               "Connection: close\r\n\r\nabc") == 0);
    done(fd);
}

static void test_refused_headers(void) {
    int fd;
    td_http_conn *hc = request("GET / HTTP/1.1\r\nHost: x\r\n\r\n", &fd);
    size_t start = td_http_head_mark(hc);
    td_http_head_begin(hc, 200);
    size_t before = td_http_head_mark(hc);
    CHECK_EQ_INT(td_http_head_add(hc, "X-A", 3, "a\r\nB: c", 7), TD_EBADARG);
    CHECK_EQ_INT(td_http_head_add(hc, "X A", 3, "v", 1), TD_EBADARG);
    CHECK_EQ_INT(td_http_head_add(hc, "X:A", 3, "v", 1), TD_EBADARG);
    CHECK_EQ_INT(td_http_head_add(hc, "", 0, "v", 1), TD_EBADARG);
    CHECK_EQ_INT(td_http_head_add(hc, "X-N", 3, "a\0b", 3), TD_EBADARG);
    CHECK_EQ_INT(td_http_head_mark(hc), before);
    td_http_head_abort(hc, start); /* as the Lua side does on a refused header */
    td_http_fail(hc);
    CHECK(strncmp(received(fd), "HTTP/1.1 500 Internal Server Error\r\n", 36) == 0);
    done(fd);
}

static void test_bodyless_statuses_and_head(void) {
    int fd;
    td_http_conn *hc = request("GET / HTTP/1.1\r\nHost: x\r\n\r\n", &fd);
    td_http_head_begin(hc, 204);
    td_http_head_end(hc, 10);
    td_http_write(hc, "ignored", 7);
    td_http_response_end(hc);
    CHECK(strcmp(received(fd), "HTTP/1.1 204 No Content\r\nServer: tendril\r\n\r\n") == 0);
    done(fd);
    hc = request("HEAD / HTTP/1.1\r\nHost: x\r\n\r\n", &fd);
    td_http_head_begin(hc, 200);
    td_http_head_end(hc, 7);
    td_http_write(hc, "content", 7);
    td_http_response_end(hc);
    CHECK(strcmp(received(fd), "HTTP/1.1 200 OK\r\nServer: tendril\r\nContent-Length: 7\r\n\r\n") == 0);
    done(fd);
}

static void test_reasons(void) {
    CHECK(strcmp(td_http_reason(431), "Request Header Fields Too Large") == 0);
    /* What tendril.static and conditional requests answer. */
    CHECK(strcmp(td_http_reason(416), "Range Not Satisfiable") == 0);
    CHECK(strcmp(td_http_reason(412), "Precondition Failed") == 0);
    CHECK(strcmp(td_http_reason(299), "Unknown") == 0);
    CHECK(strcmp(td_err_name(TD_ETIMEOUT), "timeout") == 0);
    CHECK(strcmp(td_err_name(UV_ECONNREFUSED), "connection refused") == 0);
    CHECK(strcmp(td_err_name(UV_EPIPE), "closed") == 0);
}

/* td_http_lower_name, eight bytes at a time, against a byte-at-a-time
 * reference: every byte value at every position of names of every length
 * up to 40. */
static void test_lower_name(void) {
    int wrong = 0;
    unsigned seed = 1;
    for (size_t n = 0; n <= 40; n++) {
        for (int round = 0; round < 2000; round++) {
            char a[48], want[48];
            int want_bad = 0;
            for (size_t i = 0; i < n; i++) {
                seed = seed * 1103515245u + 12345u;
                unsigned c = (seed >> 16) & 0xFF;
                if (round % 3)
                    c = 'A' + c % 58; /* mostly letters and what lies around them */
                a[i] = (char)c;
                want[i] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
                want_bad |= c <= ' ';
            }
            int bad = td_http_lower_name(a, n) != 0;
            wrong += bad != want_bad || memcmp(a, want, n) != 0;
        }
    }
    CHECK_EQ_INT(wrong, 0);
}

int main(void) {
    test_lower_name();
    uv_loop_init(&loop);
    td_transport_init(&tp, &loop, 0);
    td_http_config cfg = {.max_header_bytes = 16384, .max_body_bytes = 1 << 20, .header_timeout_ms = 10000,
                          .body_timeout_ms = 10000, .keepalive_timeout_ms = 5000, .send_timeout_ms = 60000};
    td_http_server_init(&hs, &tp, &cfg, on_request, NULL, NULL);
    CHECK_EQ_INT(td_http_server_listen(&hs, td_listen_socket("127.0.0.1", 0, 0)), 0);
    port = td_http_server_port(&hs);
    test_known_length();
    test_chunked_and_its_end();
    test_by_reference_keeps_the_order();
    test_http10();
    test_user_headers_that_the_server_manages();
    test_refused_headers();
    test_bodyless_statuses_and_head();
    test_reasons();
    td_http_server_drain(&hs);
    td_transport_close(&tp);
    uv_run(&loop, UV_RUN_DEFAULT);
    td_http_server_destroy(&hs);
    td_transport_destroy(&tp);
    CHECK_EQ_INT(uv_loop_close(&loop), 0);
    return check_result("test_http_response");
}
