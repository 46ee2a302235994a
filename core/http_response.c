/* Owns the response side of an HTTP connection: the status line and
 * headers, body framing (Content-Length, chunked, close-delimited), the
 * server's own error responses and the access log line. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "clock.h"
#include "errors.h"
#include "http_private.h"
#include "log.h"

#define APPEND_LIT(out, s) td_buf_append((out), (s), sizeof(s) - 1)

const char *td_http_reason(int status) {
    switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 206: return "Partial Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 406: return "Not Acceptable";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 411: return "Length Required";
    case 412: return "Precondition Failed";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 416: return "Range Not Satisfiable";
    case 417: return "Expectation Failed";
    case 418: return "I'm a teapot";
    case 421: return "Misdirected Request";
    case 422: return "Unprocessable Content";
    case 426: return "Upgrade Required";
    case 428: return "Precondition Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 451: return "Unavailable For Legal Reasons";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
    }
}

/* The connection ends after the answer when a body is left unread that
 * would not be worth discarding: held over its limit, or one the client
 * has not sent, waiting for a 100 Continue that a final answer replaced
 * (whether it sends it now is its choice). */
static int closing(td_http_conn *hc) {
    td_http_req *rq = hc->rq;
    if (rq->close_after || !rq->keep_alive || td_http__server(hc)->draining)
        return 1;
    return rq->body_status == 1 && (rq->body_over || (rq->continue_owed && rq->body_seen == 0));
}

size_t td_http_head_mark(td_http_conn *hc) { return hc->conn.out.len; }

void td_http_head_abort(td_http_conn *hc, size_t mark) {
    if (hc->conn.out.len > mark)
        hc->conn.out.len = mark;
}

int td_http_head_begin(td_http_conn *hc, int status) {
    if (!td_http_is_live(hc) || hc->rq->head_sent)
        return TD_ECLOSED;
    td_buf *out = td_conn_out(&hc->conn, 512);
    if (!out)
        return UV_ENOMEM;
    td_http_req *rq = hc->rq;
    rq->status = status;
    rq->user_date = rq->user_server = rq->user_length = 0;
    rq->resp_mark = out->len;
    rq->resp_epoch = hc->conn.out_epoch;
    if (status == 200)
        return APPEND_LIT(out, "HTTP/1.1 200 OK\r\n");
    return td_buf_printf(out, "HTTP/1.1 %d %s\r\n", status, td_http_reason(status));
}

static int name_is(const char *name, size_t nlen, const char *lit, size_t llen) {
    return nlen == llen && strncasecmp(name, lit, llen) == 0;
}

int td_http_head_add(td_http_conn *hc, const char *name, size_t nlen, const char *value, size_t vlen) {
    td_http_req *rq = hc->rq;
    if (!td_http_valid_name(name, nlen) || !td_http_valid_value(value, vlen))
        return TD_EBADARG;
    switch (name[0] | 0x20) {
    case 'c':
        if (name_is(name, nlen, "content-length", 14)) {
            uint64_t n = 0;
            if (vlen == 0 || vlen > 19)
                return TD_EBADARG;
            for (size_t i = 0; i < vlen; i++) {
                if (value[i] < '0' || value[i] > '9')
                    return TD_EBADARG;
                n = n * 10 + (uint64_t)(value[i] - '0');
            }
            rq->user_length = 1;
            rq->declared_length = n;
        } else if (name_is(name, nlen, "connection", 10)) {
            /* The server writes Connection itself; a "close" is honoured. */
            for (size_t i = 0; i + 5 <= vlen; i++)
                if (strncasecmp(value + i, "close", 5) == 0)
                    rq->close_after = 1;
            return 0;
        }
        break;
    case 'd':
        if (name_is(name, nlen, "date", 4))
            rq->user_date = 1;
        break;
    case 's':
        if (name_is(name, nlen, "server", 6))
            rq->user_server = 1;
        break;
    case 't':
        /* Framing is the server's business. */
        if (name_is(name, nlen, "transfer-encoding", 17))
            return 0;
        break;
    }
    td_buf *out = td_conn_out(&hc->conn, nlen + vlen + 4);
    if (!out)
        return UV_ENOMEM;
    memcpy(out->data + out->len, name, nlen);
    out->len += nlen;
    out->data[out->len++] = ':';
    out->data[out->len++] = ' ';
    memcpy(out->data + out->len, value, vlen);
    out->len += vlen;
    out->data[out->len++] = '\r';
    out->data[out->len++] = '\n';
    return 0;
}

int td_http_head_add_line(td_http_conn *hc, const char *line, size_t len) {
    td_buf *out = td_conn_out(&hc->conn, len);
    if (!out)
        return UV_ENOMEM;
    memcpy(out->data + out->len, line, len);
    out->len += len;
    return 0;
}

int td_http_head_end(td_http_conn *hc, int64_t content_length) {
    td_http_req *rq = hc->rq;
    td_buf *out = td_conn_out(&hc->conn, 160);
    if (!out)
        return UV_ENOMEM;
    if (!rq->user_date) {
        APPEND_LIT(out, "Date: ");
        td_buf_append(out, td_clock_http_date(hc->conn.tcp.loop), 29);
        APPEND_LIT(out, "\r\n");
    }
    if (!rq->user_server)
        APPEND_LIT(out, "Server: tendril\r\n");
    int status = rq->status;
    if (status < 200 || status == 204 || status == 304) {
        rq->no_body = 1;
    } else if (rq->user_length) {
        /* the handler's own framing */
    } else if (content_length >= 0) {
        APPEND_LIT(out, "Content-Length: ");
        td_buf_append_uint(out, (uint64_t)content_length);
        APPEND_LIT(out, "\r\n");
    } else if (td_http_minor(hc) == 1) {
        APPEND_LIT(out, "Transfer-Encoding: chunked\r\n");
        rq->chunked = 1;
    } else {
        rq->close_after = 1; /* HTTP/1.0: the body ends when the connection does */
    }
    if (closing(hc)) {
        rq->close_after = 1;
        APPEND_LIT(out, "Connection: close\r\n\r\n");
    } else if (td_http_minor(hc) == 0) {
        APPEND_LIT(out, "Connection: keep-alive\r\n\r\n");
    } else {
        APPEND_LIT(out, "\r\n");
    }
    rq->head_sent = 1;
    return 0;
}

/* What both writers check first: TD_ECLOSED; 0, nothing goes out (an empty
 * piece, or an answer without a body: HEAD, 204, 304); or 1. */
static int body_piece(td_http_conn *hc, size_t len) {
    td_http_req *rq = hc->rq;
    if (!td_http_is_live(hc) || !rq->head_sent)
        return TD_ECLOSED;
    if (len == 0)
        return 0;
    if (rq->user_length && !rq->no_body && rq->body_sent + len > rq->declared_length)
        return TD_ETOOLARGE;
    rq->body_sent += len;
    return rq->no_body ? 0 : 1;
}

int td_http_write(td_http_conn *hc, const char *data, size_t len) {
    td_http_req *rq = hc->rq;
    int rc = body_piece(hc, len);
    if (rc <= 0)
        return rc;
    td_buf *out = td_conn_out(&hc->conn, len + 24);
    if (!out)
        return UV_ENOMEM;
    if (rq->chunked)
        td_buf_printf(out, "%zx\r\n", len);
    memcpy(out->data + out->len, data, len);
    out->len += len;
    if (rq->chunked)
        APPEND_LIT(out, "\r\n");
    return 0;
}

int td_http_write_ref(td_http_conn *hc, const char *data, size_t len, void (*release)(void *ud), void *ud) {
    td_http_req *rq = hc->rq;
    int rc = body_piece(hc, len);
    if (rc <= 0)
        return rc;
    if (rq->chunked) {
        td_buf *out = td_conn_out(&hc->conn, 24);
        if (!out)
            return UV_ENOMEM;
        td_buf_printf(out, "%zx\r\n", len);
    }
    rc = td_conn_write_ref(&hc->conn, data, len, release, ud);
    if (rc >= 0 && rq->chunked) {
        /* After the data: the next write (or the flush) sends it behind. */
        td_buf *out = td_conn_out(&hc->conn, 2);
        if (!out)
            return rc;
        APPEND_LIT(out, "\r\n");
    }
    return rc;
}

int td_http_short(const td_http_conn *hc) {
    const td_http_req *rq = hc->rq;
    return rq->user_length && !rq->no_body && rq->body_sent < rq->declared_length;
}

void td_http_fail(td_http_conn *hc) {
    if (!td_http_is_live(hc))
        return;
    td_http_req *rq = hc->rq;
    if (rq->head_sent && hc->conn.out_epoch == rq->resp_epoch && !hc->conn.closing) {
        /* Nothing of the answer has left yet: it becomes a 500. */
        hc->conn.out.len = rq->resp_mark;
        rq->head_sent = 0;
        rq->chunked = 0;
        rq->body_sent = 0;
        rq->no_body = rq->parser.method == HTTP_HEAD;
    }
    if (rq->head_sent) {
        /* The client has part of a response: only closing tells it so.
         * Ending (not closing) writes out what is queued first, so answers
         * pipelined before this one still reach a slow reader whole. */
        td_http__access_log(hc);
        td_http__request_over(hc, 0);
        td_conn_end(&hc->conn);
        return;
    }
    static const char body[] = "Internal Server Error\n";
    if (td_http_head_begin(hc, 500) != 0 || td_http_head_add(hc, "Content-Type", 12, "text/plain", 10) != 0 ||
        td_http_head_end(hc, sizeof body - 1) != 0 || td_http_write(hc, body, sizeof body - 1) != 0) {
        td_http__request_over(hc, 0);
        td_conn_close(&hc->conn);
        return;
    }
    td_http_response_end(hc);
}

void td_http__error_response(td_http_conn *hc, int status) {
    td_conn *c = &hc->conn;
    if (c->closed)
        return;
    const char *reason = td_http_reason(status);
    td_buf *out = td_conn_out(c, 256);
    if (out) {
        td_buf_printf(out,
                      "HTTP/1.1 %d %s\r\nDate: %s\r\nServer: tendril\r\nContent-Type: text/plain\r\n"
                      "Content-Length: %zu\r\nConnection: close\r\n\r\n%s\n",
                      status, reason, td_clock_http_date(c->tcp.loop), strlen(reason) + 1, reason);
    }
    if (hc->rq) {
        hc->rq->status = status;
        hc->rq->body_sent = strlen(reason) + 1;
    }
    td_http__access_log(hc);
    td_http__request_over(hc, TD_ECLOSED);
    td_conn_end(c);
}

/* Quotes and control bytes in the request line are escaped as \xHH, so a
 * line can be split on its quotes. */
static void append_escaped(td_buf *b, const char *p, size_t n) {
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)p[i];
        if (ch == '"' || ch == '\\' || ch < 0x20 || ch >= 0x7f)
            td_buf_printf(b, "\\x%02X", ch);
        else
            td_buf_append(b, p + i, 1);
    }
}

/* The first value of a request header, or NULL (the access log's referer
 * and user agent). */
static const char *header_value(const td_http_req *rq, const char *name, size_t nlen, size_t *vlen) {
    const td_http_header *h = td_http_fields_at(&rq->fields);
    for (size_t i = 0, n = td_http_fields_count(&rq->fields); i < n; i++) {
        if (h[i].name_len == nlen && memcmp(rq->fields.text.data + h[i].name, name, nlen) == 0) {
            *vlen = h[i].value_len;
            return rq->fields.text.data + h[i].value;
        }
    }
    return NULL;
}

/* A quoted field of the combined format: escaped as the request line is,
 * "-" when absent. */
static void append_quoted(td_buf *b, const char *p, size_t n) {
    td_buf_append(b, " \"", 2);
    if (p)
        append_escaped(b, p, n > 1024 ? 1024 : n);
    else
        td_buf_append(b, "-", 1);
    td_buf_append(b, "\"", 1);
}

/* A JSON string: quotes, backslashes and control bytes escaped, and bytes
 * of 0x80 or more as \u00XX, so that the line is valid JSON whatever the
 * client sent (a non-UTF-8 byte would not be). */
static void append_json_string(td_buf *b, const char *p, size_t n) {
    td_buf_append(b, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)p[i];
        if (ch == '"' || ch == '\\')
            td_buf_printf(b, "\\%c", ch);
        else if (ch < 0x20 || ch >= 0x7f)
            td_buf_printf(b, "\\u%04x", ch);
        else
            td_buf_append(b, (const char *)&ch, 1);
    }
    td_buf_append(b, "\"", 1);
}

static void append_json_field(td_buf *b, const char *key, const char *p, size_t n) {
    td_buf_printf(b, ",\"%s\":", key);
    if (p)
        append_json_string(b, p, n > 2048 ? 2048 : n);
    else
        td_buf_append(b, "null", 4);
}

/* The body's bytes that went out: none for HEAD (its handler's body is
 * counted, to frame the head, but not sent). */
static uint64_t body_bytes(const td_http_req *rq) { return rq->no_body ? 0 : rq->body_sent; }

/* ,"key":seconds (to the microsecond), or 0: most kinds are, and short
 * lines are cheaper to write and to read. The first key of an object has
 * no comma: a "{" ends the buffer then. */
static void append_seconds(td_buf *b, const char *key, uint64_t ns) {
    const char *comma = b->len > 0 && b->data[b->len - 1] == '{' ? "" : ",";
    if (ns == 0)
        td_buf_printf(b, "%s\"%s\":0", comma, key);
    else
        td_buf_printf(b, "%s\"%s\":%.6f", comma, key, (double)ns / 1e9);
}

static void json_line(td_buf *b, td_http_conn *hc, const char *peer, uint64_t now_ns) {
    td_http_req *rq = hc->rq;
    uv_loop_t *loop = hc->conn.tcp.loop;
    double now = td_clock_now(loop);
    time_t sec = (time_t)now;
    struct tm tm;
    char when[40];
    gmtime_r(&sec, &tm);
    size_t wl = strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(when + wl, sizeof when - wl, ".%03dZ", (int)((now - (double)sec) * 1000.0) % 1000);
    td_buf_printf(b, "{\"time\":\"%s\",\"remote\":", when);
    append_json_string(b, peer, strlen(peer));
    if (rq->target_len > 0) {
        size_t tlen;
        const char *target = td_http_target(hc, &tlen);
        const char *method = td_http_method(hc);
        append_json_field(b, "method", method, strlen(method));
        append_json_field(b, "target", target, tlen);
        td_buf_printf(b, ",\"version\":\"1.%d\"", td_http_minor(hc));
    } else {
        td_buf_printf(b, ",\"method\":null,\"target\":null,\"version\":null");
    }
    td_buf_printf(b, ",\"status\":%d,\"bytes\":%" PRIu64 ",\"request_time\":%.6f", rq->status, body_bytes(rq),
                  (double)(now_ns - rq->started) / 1e9);
    /* Where the time went (timings.h), in seconds to the microsecond; the
     * upstream time, nginx's name, is the wait on tendril.http. */
    const td_timings *tg = &rq->timings;
    append_seconds(b, "upstream_time", tg->wait_ns[TD_WAIT_HTTP]);
    td_buf_append(b, ",\"timings\":{", 12);
    append_seconds(b, "lua", tg->lua_ns);
    for (int k = 0; k < TD_WAIT_KINDS; k++)
        append_seconds(b, td_wait_kind_name(k), tg->wait_ns[k]);
    td_buf_append(b, "}", 1);
    size_t vlen = 0;
    const char *v = header_value(rq, "referer", 7, &vlen);
    append_json_field(b, "referer", v, vlen);
    v = header_value(rq, "user-agent", 10, &vlen);
    append_json_field(b, "user_agent", v, vlen);
    td_buf_printf(b, ",\"worker\":%d}", td_log_worker() > 0 ? td_log_worker() : 1);
}

const uint32_t td_http_latency_ms[TD_HTTP_LATENCY_BUCKETS - 1] = {5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000,
                                                                    10000};

/* The request ended: counted by status class and time. */
static void count(td_http_conn *hc, uint64_t now_ns) {
    td_http_req *rq = hc->rq;
    td_http_counts *c = &td_http__server(hc)->counts;
    int cls = rq->status / 100;
    c->by_class[cls >= 1 && cls <= 5 ? cls : 0]++;
    uint64_t ns = now_ns - rq->started;
    c->latency_ns_sum += ns;
    size_t b = 0;
    while (b < TD_HTTP_LATENCY_BUCKETS - 1 && ns > (uint64_t)td_http_latency_ms[b] * 1000000)
        b++;
    c->latency[b]++;
}

void td_http__access_log(td_http_conn *hc) {
    td_http_req *rq = hc->rq;
    td_http_server *hs = td_http__server(hc);
    uint64_t now_ns = uv_hrtime();
    if (rq && hs->on_log)
        hs->on_log(hc, hs->ud, now_ns);
    if (rq && hc->conn.owner)
        count(hc, now_ns);
    if (!td_log_access_enabled() || !rq)
        return;
    /* One line buffer for the process, grown once. */
    static td_buf b;
    char peer[64] = "-";
    td_conn_peer(&hc->conn, peer, sizeof peer);
    b.len = 0;
    td_access_format format = td_log_access_format();
    if (format == TD_ACCESS_JSON) {
        json_line(&b, hc, peer, now_ns);
        td_log_access(b.data, b.len);
        return;
    }
    td_buf_printf(&b, "%s - - [%s] \"", peer, td_clock_log_time(hc->conn.tcp.loop));
    if (rq->target_len > 0) {
        size_t tlen;
        const char *target = td_http_target(hc, &tlen);
        td_buf_printf(&b, "%s ", td_http_method(hc));
        append_escaped(&b, target, tlen > 2048 ? 2048 : tlen);
        td_buf_printf(&b, " HTTP/1.%d\" %d ", td_http_minor(hc), rq->status);
    } else {
        td_buf_printf(&b, "-\" %d ", rq->status);
    }
    if (body_bytes(rq))
        td_buf_printf(&b, "%" PRIu64, body_bytes(rq));
    else
        td_buf_append(&b, "-", 1);
    if (format == TD_ACCESS_COMBINED) {
        size_t vlen = 0;
        const char *v = header_value(rq, "referer", 7, &vlen);
        append_quoted(&b, v, vlen);
        v = header_value(rq, "user-agent", 10, &vlen);
        append_quoted(&b, v, vlen);
    }
    if (td_log_worker() > 0)
        td_buf_printf(&b, " worker=%d", td_log_worker());
    td_log_access(b.data, b.len);
}
