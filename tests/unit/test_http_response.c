/* The response head and body framing, on a connection that never touches
 * the network: the output buffer is inspected before any flush. */
#include "check.h"
#include "errors.h"
#include "http.h"

#include <stdlib.h>

static uv_loop_t loop;
static td_http_server hs;

static void on_request(td_http_conn *hc, void *ud) {
    (void)hc;
    (void)ud;
}

static td_http_conn *fake_request(int minor, int method) {
    td_http_conn *hc = calloc(1, sizeof *hc);
    td_conn_init(&hc->conn, &hs.srv);
    uv_tcp_init(&loop, &hc->conn.tcp);
    td_list_push_back(&hs.srv.conns, &hc->conn.link);
    hs.srv.nconns++;
    llhttp_init(&hc->parser, HTTP_REQUEST, NULL);
    td_list_init(&hc->body_waiters);
    td_list_init(&hc->drain_waiters);
    hc->parser.http_major = 1;
    hc->parser.http_minor = (uint8_t)minor;
    hc->parser.method = (uint8_t)method;
    hc->live = 1;
    hc->keep_alive = 1;
    hc->no_body = method == HTTP_HEAD;
    hc->message_complete = 1;
    hs.live++;
    return hc;
}

/* The output with the Date line cut out. */
static const char *output(td_http_conn *hc) {
    static char text[4096];
    size_t n = hc->conn.out.len < sizeof text - 1 ? hc->conn.out.len : sizeof text - 1;
    memcpy(text, hc->conn.out.data, n);
    text[n] = '\0';
    char *date = strstr(text, "Date: ");
    if (date) {
        char *end = strstr(date, "\r\n");
        memmove(date, end + 2, strlen(end + 2) + 1);
    }
    return text;
}

static void done(td_http_conn *hc) {
    td_conn_close(&hc->conn); /* frees it in the close callback */
    uv_run(&loop, UV_RUN_NOWAIT);
}

static void test_known_length(void) {
    td_http_conn *hc = fake_request(1, HTTP_GET);
    CHECK_EQ_INT(td_http_head_begin(hc, 200), 0);
    CHECK_EQ_INT(td_http_head_add(hc, "Content-Type", 12, "text/plain", 10), 0);
    CHECK_EQ_INT(td_http_head_end(hc, 5), 0);
    CHECK_EQ_INT(td_http_write(hc, "hello", 5), 0);
    CHECK(strcmp(output(hc), "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nServer: tendril\r\n"
                             "Content-Length: 5\r\n\r\nhello") == 0);
    CHECK_EQ_INT(td_http_head_begin(hc, 200), TD_ECLOSED);
    done(hc);
}

static void test_chunked_and_its_end(void) {
    td_http_conn *hc = fake_request(1, HTTP_GET);
    td_http_head_begin(hc, 404);
    td_http_head_end(hc, -1);
    td_http_write(hc, "abc", 3);
    td_http_write(hc, "", 0);
    td_http_write(hc, "0123456789abcdef0123", 20);
    td_http_response_end(hc);
    CHECK(strcmp(output(hc), "HTTP/1.1 404 Not Found\r\nServer: tendril\r\nTransfer-Encoding: chunked\r\n\r\n"
                             "3\r\nabc\r\n14\r\n0123456789abcdef0123\r\n0\r\n\r\n") == 0);
    CHECK(!hc->live);
    done(hc);
}

static void test_http10(void) {
    td_http_conn *hc = fake_request(0, HTTP_GET);
    td_http_head_begin(hc, 200);
    td_http_head_end(hc, 2);
    CHECK(strstr(output(hc), "Content-Length: 2\r\nConnection: keep-alive\r\n\r\n") != NULL);
    done(hc);
    hc = fake_request(0, HTTP_GET);
    td_http_head_begin(hc, 200);
    td_http_head_end(hc, -1);
    CHECK(strstr(output(hc), "Connection: close\r\n\r\n") != NULL);
    CHECK(strstr(output(hc), "chunked") == NULL);
    CHECK(hc->close_after);
    done(hc);
}

static void test_user_headers_that_the_server_manages(void) {
    td_http_conn *hc = fake_request(1, HTTP_GET);
    td_http_head_begin(hc, 201);
    CHECK_EQ_INT(td_http_head_add(hc, "connection", 10, "Close", 5), 0);
    CHECK_EQ_INT(td_http_head_add(hc, "Transfer-Encoding", 17, "gzip", 4), 0);
    CHECK_EQ_INT(td_http_head_add(hc, "Server", 6, "mine", 4), 0);
    CHECK_EQ_INT(td_http_head_add(hc, "Date", 4, "yesterday", 9), 0);
    CHECK_EQ_INT(td_http_head_add(hc, "Content-Length", 14, "3", 1), 0);
    td_http_head_end(hc, 99);
    CHECK(strcmp(output(hc), "HTTP/1.1 201 Created\r\nServer: mine\r\nContent-Length: 3\r\n"
                             "Connection: close\r\n\r\n") == 0);
    done(hc);
}

static void test_refused_headers(void) {
    td_http_conn *hc = fake_request(1, HTTP_GET);
    td_http_head_begin(hc, 200);
    size_t before = hc->conn.out.len;
    CHECK_EQ_INT(td_http_head_add(hc, "X-A", 3, "a\r\nB: c", 7), TD_EBADARG);
    CHECK_EQ_INT(td_http_head_add(hc, "X A", 3, "v", 1), TD_EBADARG);
    CHECK_EQ_INT(td_http_head_add(hc, "X:A", 3, "v", 1), TD_EBADARG);
    CHECK_EQ_INT(td_http_head_add(hc, "", 0, "v", 1), TD_EBADARG);
    CHECK_EQ_INT(td_http_head_add(hc, "X-N", 3, "a\0b", 3), TD_EBADARG);
    CHECK_EQ_INT(hc->conn.out.len, before);
    done(hc);
}

static void test_bodyless_statuses_and_head(void) {
    td_http_conn *hc = fake_request(1, HTTP_GET);
    td_http_head_begin(hc, 204);
    td_http_head_end(hc, 10);
    td_http_write(hc, "ignored", 7);
    CHECK(strcmp(output(hc), "HTTP/1.1 204 No Content\r\nServer: tendril\r\n\r\n") == 0);
    done(hc);
    hc = fake_request(1, HTTP_HEAD);
    td_http_head_begin(hc, 200);
    td_http_head_end(hc, 7);
    td_http_write(hc, "content", 7);
    CHECK(strcmp(output(hc), "HTTP/1.1 200 OK\r\nServer: tendril\r\nContent-Length: 7\r\n\r\n") == 0);
    done(hc);
}

static void test_reasons(void) {
    CHECK(strcmp(td_http_reason(431), "Request Header Fields Too Large") == 0);
    CHECK(strcmp(td_http_reason(299), "Unknown") == 0);
    CHECK(strcmp(td_err_name(TD_ETIMEOUT), "timeout") == 0);
    CHECK(strcmp(td_err_name(UV_ECONNREFUSED), "connection refused") == 0);
    CHECK(strcmp(td_err_name(UV_EPIPE), "closed") == 0);
}

int main(void) {
    uv_loop_init(&loop);
    td_http_config cfg = {.max_header_bytes = 16384, .max_body_bytes = 1 << 20, .header_timeout_ms = 10000,
                          .body_timeout_ms = 10000, .keepalive_timeout_ms = 5000, .send_timeout_ms = 60000};
    td_http_server_init(&hs, &loop, &cfg, 0, on_request, NULL);
    test_known_length();
    test_chunked_and_its_end();
    test_http10();
    test_user_headers_that_the_server_manages();
    test_refused_headers();
    test_bodyless_statuses_and_head();
    test_reasons();
    td_server_close(&hs.srv);
    uv_run(&loop, UV_RUN_DEFAULT);
    td_http_server_destroy(&hs);
    CHECK_EQ_INT(uv_loop_close(&loop), 0);
    return check_result("test_http_response");
}
