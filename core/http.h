/* HTTP/1.x over the transport, both directions: the server side (parsing
 * requests with llhttp, framing, keep-alive, pipelining, limits and
 * timeouts, the response head) and the client's response reader. Both
 * collect header fields with one td_http_fields.
 *
 * A server connection serves one request at a time. When a valid head has
 * arrived the server calls on_request; from then on the request is "live"
 * and the layer above owns its response, which it must end with
 * td_http_response_end (or td_http_fail). Input that follows a complete
 * message waits, unparsed, until that response has ended and its output
 * fell below the high-water mark: pipelined requests are answered in order,
 * and a client that never reads cannot make the server queue answers
 * without bound.
 *
 * Identity: a live request is named by its connection's handle (slot,
 * serial), bumped when the request starts, when it ends and when the
 * connection closes; td_http_find gives the connection only while that
 * request is live.
 *
 * Memory: an idle keep-alive connection is a td_http_conn and nothing
 * else. A request's state (parser, head, body, pipelined input, waiters)
 * lives in a td_http_req from its first byte until the connection is idle
 * again; spares are kept, boundedly.
 *
 * Waiters (coroutines waiting for the body or for output to drain) are
 * records the waiter owns, kept in a list per event: any number may wait
 * for the same thing. Each is unlinked, then called, once; every waiter is
 * called when the request ends or the connection closes. */
#ifndef TD_HTTP_H
#define TD_HTTP_H

#include <llhttp.h>
#include <stdint.h>
#include <string.h>

#include "timings.h"
#include "conn.h"

/* Unsent output past which a handler's write waits and pipelined requests
 * wait unparsed. */
#define TD_HTTP_HIGH_WATER (256 * 1024)
/* on_drain fires once unsent output is down to this. */
#define TD_HTTP_LOW_WATER (64 * 1024)
/* Body bytes buffered before reading pauses, while the handler reads the
 * body in pieces or has not asked for it yet (one read more may come on
 * top: the transport's read buffer). */
#define TD_HTTP_BODY_WINDOW (64 * 1024)

/* ---- header fields, for both directions ---- */

typedef struct td_http_header {
    uint32_t name, name_len, value, value_len; /* offsets into the text */
} td_http_header;

enum { TD_HTTP_LAST_NONE, TD_HTTP_LAST_NAME, TD_HTTP_LAST_VALUE };

/* Names (lower-cased) and values as llhttp delivers them in pieces. */
typedef struct td_http_fields {
    td_buf text;    /* (the server's target first,) then names and values */
    td_buf headers; /* td_http_header[] */
    size_t limit;   /* bytes of text at most */
    int error;      /* why a callback failed: TD_ETOOLARGE or UV_ENOMEM */
    uint8_t last;   /* TD_HTTP_LAST_*: the last piece, a name or a value not yet done */
} td_http_fields;

/* Each returns 0, or -1 with f->error set. */
int td_http_fields_name(td_http_fields *f, const char *at, size_t len);
int td_http_fields_name_done(td_http_fields *f);
int td_http_fields_value(td_http_fields *f, const char *at, size_t len);
int td_http_fields_value_done(td_http_fields *f);
static inline size_t td_http_fields_count(const td_http_fields *f) { return f->headers.len / sizeof(td_http_header); }
static inline const td_http_header *td_http_fields_at(const td_http_fields *f) {
    return (const td_http_header *)(const void *)f->headers.data;
}
static inline void td_http_fields_reset(td_http_fields *f) {
    f->text.len = f->headers.len = 0;
    f->error = 0;
    f->last = 0;
}
void td_http_fields_free(td_http_fields *f);

/* The rules for what tendril sends, in either direction: a header name (or
 * a method) is printable ASCII without spaces or colons; a value holds no
 * CR, LF or NUL. Return 1 when valid. */
int td_http_valid_name(const char *p, size_t n);
int td_http_valid_value(const char *p, size_t n);

/* ---- the server ---- */

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
typedef struct td_http_req td_http_req;

/* The request's events for the layer above: it started (a valid head
 * came), and it is over: status 0 when its response was finished (or
 * failed with a 500), TD_ECLOSED when it ended otherwise (the client went
 * away, the send timeout, an error answer the server made). */
typedef void (*td_http_request_cb)(td_http_conn *hc, void *ud);
typedef void (*td_http_over_cb)(td_http_conn *hc, int status, void *ud);
/* status: 0 (ready), or TD_ECLOSED, TD_ETIMEOUT, TD_ETOOLARGE. */
typedef void (*td_http_wait_cb)(td_http_conn *hc, int status, void *ud);

typedef struct td_http_waiter {
    td_list link;
    td_http_wait_cb cb;
    void *ud;
} td_http_waiter;

/* A request's time to its answer's end, in these buckets (ms; the last is
 * everything longer): tendril.metrics' histogram. */
#define TD_HTTP_LATENCY_BUCKETS 12
extern const uint32_t td_http_latency_ms[TD_HTTP_LATENCY_BUCKETS - 1];

/* Requests ended, counted as they end (the access log's moment). */
typedef struct td_http_counts {
    uint64_t by_class[6]; /* [1..5]: 1xx..5xx; [0]: anything else */
    uint64_t latency[TD_HTTP_LATENCY_BUCKETS];
    uint64_t latency_ns_sum;
} td_http_counts;

struct td_http_server {
    td_transport *tp;
    td_listener listener;     /* plain HTTP */
    td_listener tls_listener; /* HTTPS */
    td_http_config cfg;
    td_http_request_cb on_request;
    td_http_over_cb on_over;
    /* Called (with ud) as a request's access log line is made and it is
     * counted, whatever ended it, with uv_hrtime() then: the layer above
     * settles what the line reports (the Lua bridge adds the running task's
     * time so far). */
    void (*on_log)(td_http_conn *hc, void *ud, uint64_t now_ns);
    void *ud;
    td_http_req **spare; /* request states kept for reuse */
    size_t nspare;
    size_t nconns; /* open connections */
    size_t live;   /* requests whose response has not ended */
    td_http_counts counts;
    unsigned draining : 1;
};

enum td_http_phase {
    TD_HTTP_IDLE,     /* between requests: keep-alive timeout */
    TD_HTTP_HEAD,     /* reading a head: header timeout */
    TD_HTTP_BODY,     /* reading a body: body timeout */
    TD_HTTP_AWAITING, /* message complete, its response not yet ended */
};

struct td_http_req {
    llhttp_t parser; /* parser.data: the td_http_conn */
    void *user;      /* the layer above's record of the request */
    td_http_fields fields;
    td_buf body;          /* from body_off: arrived, not yet handed out */
    size_t body_off;      /* bytes of body handed out by td_http_body_read */
    td_buf pending;       /* input after a complete message */
    td_list body_waiters; /* td_http_waiter */
    td_list drain_waiters;
    const char *feed_start; /* the buffer llhttp is parsing */
    const char *feed_end;
    uint64_t started;   /* uv_hrtime() at the request's first byte: its time in the log, metrics, req:timings() */
    td_timings timings; /* where its time went (timings.h), for the access log and req:timings() */
    uint64_t body_seen; /* body bytes parsed, kept or not: bounded by body_limit */
    uint64_t body_limit; /* max_body_bytes unless the handler set another */
    int64_t body_declared; /* Content-Length, or -1 */
    size_t head_bytes;
    uint64_t body_sent;
    uint64_t declared_length; /* the handler's Content-Length (user_length) */
    size_t resp_mark;         /* where the response's head starts in conn.out */
    uint32_t resp_epoch;      /* conn.out_epoch then: while equal, nothing of it has left */
    uint32_t target_len;
    int status;
    int error_status; /* set by a parser callback that rejects the request */
    int body_status;  /* 1 pending, 0 ready, or a TD_E* code */
    uint8_t event;    /* what paused the parser */
    uint8_t hosts;
    uint8_t te_seen; /* a Transfer-Encoding field came, flagged by llhttp or not (an empty one is not) */
    uint8_t crlf_left; /* bytes of the CRLF after a chunk's data still to check */
    uint8_t cr_pending; /* the last framing byte read was a CR: an LF must follow */
    const char *scan_from; /* framing bytes from here are not checked yet (see scan_framing) */
    char prev_byte; /* last byte of the previous buffer: detects line folding */
    unsigned head_sent : 1;
    unsigned chunked : 1;
    unsigned no_body : 1; /* HEAD, 204, 304 */
    unsigned message_complete : 1;
    unsigned keep_alive : 1;
    unsigned close_after : 1;
    unsigned user_date : 1;
    unsigned user_server : 1;
    unsigned user_length : 1;
    /* How the handler takes the body: whole (td_http_body) or in pieces
     * (td_http_body_read); neither yet: buffered up to the window. */
    unsigned body_whole : 1;
    unsigned body_pieces : 1;
    /* The body passes the limit (declared, or seen before the handler
     * read any): held unread, so that the handler may raise the limit;
     * a read refuses it (413). */
    unsigned body_over : 1;
    unsigned body_paused : 1;   /* reading paused by the window or the hold */
    unsigned continue_owed : 1; /* 100 Continue, once the held body is wanted */
};

/* A connection's HTTP state beyond rq is in its td_conn's protocol bytes:
 * the phase (conn.proto_state) and these flags (conn.proto_flags). */
enum {
    TD_HTTP_F_LIVE = 1,          /* a request's response has not ended */
    TD_HTTP_F_WAITING_DRAIN = 2, /* pipelined input waits for output to drain */
    TD_HTTP_F_STREAM = 4,        /* an endless response (an event stream): a drain ends it */
};

struct td_http_conn {
    td_conn conn;
    td_http_req *rq; /* NULL while idle */
};

static inline int td_http_is_live(const td_http_conn *hc) { return hc->conn.proto_flags & TD_HTTP_F_LIVE; }

int td_http_server_init(td_http_server *hs, td_transport *tp, const td_http_config *cfg,
                        td_http_request_cb on_request, td_http_over_cb on_over, void *ud);
/* Serves on fd, a listening socket (td_listen_socket; the server owns it
 * now). Returns 0 or a libuv error; td_http_server_drain closes the
 * listener either way. */
int td_http_server_listen(td_http_server *hs, int fd);
/* The same for HTTPS with tls's certificates (a reference is taken). */
int td_http_server_listen_tls(td_http_server *hs, int fd, struct td_tls_server *tls);
/* Another plain listener for the same server (a test's app, served in
 * the test's process), on fd. The caller owns it and ends it with
 * td_http_server_unlisten, before the transport closes (the drain leaves it
 * open: connections it accepts while draining are closed at once). NULL
 * (fd closed) on failure. */
typedef struct td_http_listener td_http_listener;
td_http_listener *td_http_server_listen_more(td_http_server *hs, int fd, int *err);
int td_http_listener_port(td_http_listener *hl);
/* Closes it; its memory goes once libuv is done. Open connections stay. */
void td_http_server_unlisten(td_http_listener *hl);
/* New HTTPS connections use tls from now on (a reload renewed them). */
void td_http_server_set_tls(td_http_server *hs, struct td_tls_server *tls);
/* The bound ports, or -1. */
static inline int td_http_server_port(td_http_server *hs) { return td_listener_port(&hs->listener); }
static inline int td_http_server_tls_port(td_http_server *hs) { return td_listener_port(&hs->tls_listener); }
/* After the transport closed and the loop ran its close callbacks. */
void td_http_server_destroy(td_http_server *hs);
/* Stops accepting, closes idle connections at once, and lets live requests
 * finish; their responses carry Connection: close. A stream's response
 * (td_http_mark_stream) is ended here: a chunked body gets its last chunk,
 * and the request is over with TD_ECLOSED, so that its waits end. */
void td_http_server_drain(td_http_server *hs);
/* The server's connections open now. */
static inline size_t td_http_server_conns(const td_http_server *hs) { return hs->nconns; }

/* ---- the live request ---- */
static inline td_http_conn *td_http_find(td_http_server *hs, uint32_t slot, uint32_t serial) {
    td_conn *c = td_conn_lookup(hs->tp, slot, serial);
    if (!c || c->owner != hs || !td_http_is_live((td_http_conn *)c))
        return NULL;
    return (td_http_conn *)c;
}
const char *td_http_method(const td_http_conn *hc);
const char *td_http_target(const td_http_conn *hc, size_t *len);
/* 0 for HTTP/1.0, 1 for HTTP/1.1. */
int td_http_minor(const td_http_conn *hc);
static inline size_t td_http_header_count(const td_http_conn *hc) { return td_http_fields_count(&hc->rq->fields); }
/* The body, whole: 0 and the body when it is complete; 1 while it is
 * arriving; or a TD_E*: TD_ETOOLARGE when it passes the limit (the 413
 * went, the request is over), TD_EBADARG when it is read in pieces. */
int td_http_body(td_http_conn *hc, const char **data, size_t *len);
/* The body in pieces, never held whole: 0 and up to max bytes not handed
 * out yet (*len 0: the body is over); 1 while none has arrived (wait with
 * td_http_wait_body, which then also wakes when a piece arrives); or a
 * TD_E* as td_http_body (TD_EBADARG: it was read whole). The piece is valid
 * until the next call into this layer. */
int td_http_body_read(td_http_conn *hc, size_t max, const char **data, size_t *len);
/* Links w (its cb and ud set) to be called once the body is complete or
 * failed, or (for a body read in pieces) a piece arrived. */
void td_http_wait_body(td_http_conn *hc, td_http_waiter *w);
/* This request's body limit instead of max_body_bytes: a body known to
 * pass it is held (reads refuse it with a 413), one held that it admits is
 * read from now on. Returns TD_EBADARG once part of the body was handed
 * out, else 0. */
int td_http_set_body_limit(td_http_conn *hc, uint64_t limit);
/* Unlinks a waiter that will not be called after all. */
static inline void td_http_unwait(td_http_waiter *w) { td_list_remove(&w->link); }

/* The live request's response is a stream that only its client or a
 * drain ends (Server-Sent Events). */
static inline void td_http_mark_stream(td_http_conn *hc) { hc->conn.proto_flags |= TD_HTTP_F_STREAM; }

/* ---- the response ---- */
/* Starts the head. Returns 0, or TD_ECLOSED if the head went already. */
int td_http_head_begin(td_http_conn *hc, int status);
/* Returns 0, or TD_EBADARG (CR, LF or NUL in it; nothing was added). */
int td_http_head_add(td_http_conn *hc, const char *name, size_t nlen, const char *value, size_t vlen);
/* Ends the head. content_length < 0: unknown (chunked for HTTP/1.1, ended by
 * closing for HTTP/1.0), unless a Content-Length header was added. */
int td_http_head_end(td_http_conn *hc, int64_t content_length);
/* A whole header line ("Name: value\r\n") the caller vouches for: a
 * constant that needs none of td_http_head_add's checks. Not Content-Length,
 * Connection, Date, Server or Transfer-Encoding. */
int td_http_head_add_line(td_http_conn *hc, const char *line, size_t len);
/* Drops the head begun (a header was refused). */
void td_http_head_abort(td_http_conn *hc, size_t mark);
size_t td_http_head_mark(td_http_conn *hc);
/* A piece of the body, copied. Returns 0 or TD_ECLOSED. */
int td_http_write(td_http_conn *hc, const char *data, size_t len);
/* A piece of the body by reference (see td_conn_write_ref): 0 when it left
 * at once, 1 when release(ud) will run, or a negative code. */
int td_http_write_ref(td_http_conn *hc, const char *data, size_t len, void (*release)(void *ud), void *ud);
/* Bytes waiting to be written: buffered and queued. */
static inline size_t td_http_unsent(td_http_conn *hc) { return td_conn_unsent(&hc->conn); }
/* Links w to be called once unsent output fell to the low-water mark. */
void td_http_wait_drain(td_http_conn *hc, td_http_waiter *w);
void td_http_response_end(td_http_conn *hc);
/* The handler failed: a 500 if no byte of its answer has left yet (a head
 * still in the output buffer is taken back), else the connection closes. */
void td_http_fail(td_http_conn *hc);
/* Switches the live request's connection to another protocol: writes
 * the 101 head ("Upgrade: <upgrade>", "Connection: Upgrade", then `lines`,
 * each "Name: value\r\n", which the caller vouches for), ends the request
 * (status 0: the layer above took what it keeps of it first) and lets go
 * of the connection: its request state is freed, input that came after
 * the head is moved to *rest (the caller's), and the server no longer
 * counts or finds it. The caller sets the connection's ops and owner at
 * once. TD_ECLOSED when the request is not live or its head went;
 * TD_EBADARG while a request body is still arriving. */
int td_http_upgrade(td_http_conn *hc, const char *upgrade, const char *lines, size_t len, td_buf *rest);
/* The body written is shorter than the Content-Length the handler set. */
int td_http_short(const td_http_conn *hc);

/* ---- the client's response reader ---- */

/* One response at a time on a stream this side opened: feed it bytes, it
 * says when the head is in, hands out body pieces (decoded), and when the
 * message ended. */
typedef struct td_http_reader {
    llhttp_t parser;
    td_http_fields fields;
    td_buf body; /* decoded body not yet taken */
    int error;   /* TD_EPROTO, TD_ETOOLARGE, UV_ENOMEM */
    unsigned head_done : 1;
    unsigned message_done : 1;
    unsigned skip_body : 1; /* the answer to HEAD */
    unsigned got_bytes : 1;
} td_http_reader;

/* A new response starts (skip_body for the answer to HEAD). */
void td_http_reader_begin(td_http_reader *r, int skip_body);
/* Parses data; returns the bytes used (the rest belongs to what follows
 * the message), or a negative code (r->error). */
ssize_t td_http_reader_feed(td_http_reader *r, const char *data, size_t len);
/* The stream ended (read_end: UV_EOF or an error): 0 if that ends the
 * message (a body delimited by the close), else the error for the caller. */
int td_http_reader_eof(td_http_reader *r, int read_end);
void td_http_reader_free(td_http_reader *r);

/* ---- helpers ---- */

/* Lower-cases an ASCII header name in place. */
static inline void td_http_lower(char *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (p[i] >= 'A' && p[i] <= 'Z')
            p[i] = (char)(p[i] + 32);
}

/* Lowers a field name in place; 0, or -1 when it holds white space or a
 * control byte (which llhttp 8 lets into a name). One pass for both,
 * eight bytes at a time (every request's names come through here). */
static inline int td_http_lower_name(char *p, size_t n) {
    const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
    uint64_t bad8 = 0;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t x;
        memcpy(&x, p + i, 8);
        /* A byte below 0x21 (a byte of 0x80 or more is not one). */
        bad8 |= (x - ones * 0x21) & ~x & highs;
        /* Bytes from 'A' to 'Z' (7-bit sums, so no carry crosses a byte). */
        uint64_t low7 = x & ~highs;
        uint64_t upper = (low7 + ones * (0x80 - 'A')) & ~(low7 + ones * (0x80 - 'Z' - 1)) & ~x & highs;
        x |= upper >> 2; /* 0x80 >> 2 is the case bit, 0x20 */
        memcpy(p + i, &x, 8);
    }
    unsigned bad = bad8 != 0;
    for (; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        bad |= c <= ' ';
        if ((unsigned)(c - 'A') < 26u)
            p[i] = (char)(c + 32);
    }
    return bad ? -1 : 0;
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
