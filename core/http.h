/* HTTP/1.x over td_conn: parsing with llhttp, request framing, keep-alive,
 * pipelining, limits and timeouts, and the response head.
 *
 * A connection serves one request at a time. When a valid head has arrived
 * the server calls on_request; from then on the request is "live" and the
 * layer above owns its response, which it must end with
 * td_http_response_end (or td_http_fail). Input that follows a complete
 * message waits, unparsed, until that response has ended: pipelined requests
 * are answered in order.
 *
 * Identity: a live request is named by (connection, serial). The serial
 * changes when the request ends and when the connection closes, and the
 * connection's memory is never reused for anything else (see conn.h), so
 * td_http_live(hc, serial) is a safe test for a handle held by Lua.
 *
 * Waiters (Lua coroutines waiting for the body or for the socket to drain)
 * are records the waiter owns, kept in a list per event on the connection:
 * any number may wait for the same thing. Each is called once and unlinked
 * first; every waiter is called when the connection closes. */
#ifndef TD_HTTP_H
#define TD_HTTP_H

#include <llhttp.h>
#include <stdint.h>

#include "conn.h"

typedef struct td_http_config {
    size_t max_header_bytes;
    size_t max_body_bytes;
    uint64_t header_timeout_ms;
    uint64_t body_timeout_ms;
    uint64_t keepalive_timeout_ms;
    uint64_t send_timeout_ms;
} td_http_config;

typedef struct td_http_server td_http_server;
typedef struct td_http_conn td_http_conn;

typedef void (*td_http_request_cb)(td_http_conn *hc, void *ud);
/* status: 0 (ready), or TD_ECLOSED, TD_ETIMEOUT, TD_ETOOLARGE. */
typedef void (*td_http_wait_cb)(td_http_conn *hc, int status, void *ud);

typedef struct td_http_waiter {
    td_list link;
    td_http_wait_cb cb;
    void *ud;
} td_http_waiter;

struct td_http_server {
    td_server srv;
    td_http_config cfg;
    td_http_request_cb on_request;
    void *ud;
    td_buf_pool head_pool;
    int q_keepalive, q_header, q_body;
    size_t live; /* requests whose response has not ended */
    unsigned draining : 1;
};

enum td_http_phase {
    TD_HTTP_IDLE,     /* between requests: keep-alive timeout */
    TD_HTTP_HEAD,     /* reading a head: header timeout */
    TD_HTTP_BODY,     /* reading a body: body timeout */
    TD_HTTP_AWAITING, /* message complete, its response not yet ended */
};

typedef struct td_http_header {
    uint32_t name, name_len, value, value_len; /* offsets into head */
} td_http_header;

struct td_http_conn {
    td_conn conn;
    llhttp_t parser;
    td_buf head;    /* the target, then names and values */
    td_buf headers; /* td_http_header[] */
    td_buf body;
    td_buf pending; /* input after a complete message */
    td_list body_waiters;  /* td_http_waiter */
    td_list drain_waiters; /* td_http_waiter */
    const char *feed_start; /* the buffer llhttp is parsing */
    size_t head_bytes;
    uint64_t body_sent;
    uint32_t target_len;
    int status;
    int error_status; /* set by a parser callback that rejects the request */
    int body_status;  /* 1 pending, 0 ready, or a TD_E* code */
    uint8_t phase;
    uint8_t event;   /* what paused the parser */
    uint8_t last_cb; /* header field or value, to join split callbacks */
    uint8_t hosts;
    char prev_byte; /* last byte of the previous buffer: detects line folding */
    unsigned live : 1;
    unsigned head_sent : 1;
    unsigned chunked : 1;
    unsigned no_body : 1; /* HEAD, 204, 304 */
    unsigned message_complete : 1;
    unsigned keep_alive : 1;
    unsigned close_after : 1;
    unsigned user_date : 1;
    unsigned user_server : 1;
    unsigned user_length : 1;
    unsigned user_type : 1;
};

int td_http_server_init(td_http_server *hs, uv_loop_t *loop, const td_http_config *cfg, size_t max_conns,
                        td_http_request_cb on_request, void *ud);
/* After td_server_close and the loop's close callbacks. */
void td_http_server_destroy(td_http_server *hs);
/* Stops accepting, closes idle connections at once, and lets live requests
 * finish; their responses carry Connection: close. */
void td_http_server_drain(td_http_server *hs);

/* ---- the live request ---- */
static inline int td_http_live(const td_http_conn *hc, uint32_t serial) {
    return hc->live && hc->conn.serial == serial;
}
const char *td_http_method(const td_http_conn *hc);
const char *td_http_target(const td_http_conn *hc, size_t *len);
/* 0 for HTTP/1.0, 1 for HTTP/1.1. */
int td_http_minor(const td_http_conn *hc);
size_t td_http_header_count(const td_http_conn *hc);
/* The i-th header; names are lower-case. */
void td_http_header_at(const td_http_conn *hc, size_t i, const char **name, size_t *nlen, const char **value,
                       size_t *vlen);
/* 0 and the body when it is complete; 1 while it is arriving; or a TD_E*. */
int td_http_body(td_http_conn *hc, const char **data, size_t *len);
/* Links w (its cb and ud set) to be called once the body is complete or
 * failed. */
void td_http_wait_body(td_http_conn *hc, td_http_waiter *w);
/* Unlinks a waiter that will not be called after all. */
static inline void td_http_unwait(td_http_waiter *w) { td_list_remove(&w->link); }

/* ---- the response ---- */
/* Starts the head. Returns 0, or TD_ECLOSED if the head went already. */
int td_http_head_begin(td_http_conn *hc, int status);
/* Returns 0, or TD_EBADARG (CR, LF or NUL in it; nothing was added). */
int td_http_head_add(td_http_conn *hc, const char *name, size_t nlen, const char *value, size_t vlen);
/* Ends the head. content_length < 0: unknown (chunked for HTTP/1.1, ended by
 * closing for HTTP/1.0), unless a Content-Length header was added. */
int td_http_head_end(td_http_conn *hc, int64_t content_length);
/* Drops the head begun (a header was refused). */
void td_http_head_abort(td_http_conn *hc, size_t mark);
size_t td_http_head_mark(td_http_conn *hc);
/* Returns 0 or TD_ECLOSED. */
int td_http_write(td_http_conn *hc, const char *data, size_t len);
/* Bytes waiting to be written: buffered and queued. */
size_t td_http_unsent(td_http_conn *hc);
/* Links w to be called once the unsent output fell to the low-water mark. */
void td_http_wait_drain(td_http_conn *hc, td_http_waiter *w);
void td_http_response_end(td_http_conn *hc);
/* The handler failed: a 500 if no head was sent, else the connection closes. */
void td_http_fail(td_http_conn *hc);

/* The rules for what tendril sends, in either direction: a header name (or
 * a method) is printable ASCII without spaces or colons; a value holds no
 * CR, LF or NUL. Return 1 when valid. */
int td_http_valid_name(const char *p, size_t n);
int td_http_valid_value(const char *p, size_t n);

/* Lower-cases an ASCII header name in place. */
static inline void td_http_lower(char *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (p[i] >= 'A' && p[i] <= 'Z')
            p[i] = (char)(p[i] + 32);
}

/* The length of the n bytes at p without their trailing spaces and tabs. */
static inline size_t td_http_trim_end(const char *p, size_t n) {
    while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t'))
        n--;
    return n;
}

/* The reason phrase for status ("Not Found"), or "Unknown". */
const char *td_http_reason(int status);

#endif
