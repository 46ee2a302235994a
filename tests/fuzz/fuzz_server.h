/* The server side under a fuzzer: tendril's HTTP layer (http.c,
 * http_response.c over conn.c) on a real loopback connection, with a
 * stand-in for the Lua layer that answers in C.
 *
 * The fake connection is a real one: the harness listens on 127.0.0.1
 * with td_http_server_listen, connects a plain client socket and writes the
 * input in pieces, running the loop after each until the server has read
 * it, so every cut becomes one read (one on_data). No seam in core/ is
 * needed, and the path is the one clients take: accept, reads, the turn's
 * deferred work and writes, lingering close. The client closes with a
 * reset (SO_LINGER 0), so no connection lingers in TIME_WAIT between runs.
 *
 * The stand-in handler is what td_api_http_dispatch would run: requests
 * are answered from the transport's leave hook, as the vm's posted resumes
 * are, never inside a parser callback. What it does with each request
 * (answer at once, in chunks, after reading the body, later, fail, close,
 * a body over the high-water mark, never) comes from the input.
 *
 * After each run, fuzz_server_run checks what a client relies on, and
 * aborts (a crash for libFuzzer) when it does not hold:
 * - the output is a sequence of well-formed responses, the k-th one the
 *   answer to the k-th request handed over (or the server's error answer,
 *   which comes last), each after at most one interim 100 Continue;
 * - a response with Connection: close is the last thing sent and the
 *   server then closes; the server closes only after one, or when a
 *   handler failed after its head (then the output may be cut short);
 * - without such a failure, every answer a handler finished arrives whole;
 * - every request handed over is over exactly once, every body waiter is
 *   called, every buffer written by reference is released once, and the
 *   connection's memory is gone at the end (LeakSanitizer does the rest). */
#ifndef FUZZ_SERVER_H
#define FUZZ_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include "fuzz.h"
#include "http.h"

/* What the stand-in handler does with a request. */
enum fuzz_behaviour {
    FUZZ_ANSWER,          /* 200 with a Content-Length, at once */
    FUZZ_ANSWER_CHUNKED,  /* 200 of unknown length: two pieces, one by reference */
    FUZZ_READ_BODY,       /* waits for the whole body, then echoes it */
    FUZZ_LATER,           /* answers once the next piece of input was read */
    FUZZ_FAIL,            /* td_http_fail before the head: the server's 500 */
    FUZZ_FAIL_AFTER_HEAD, /* a head and part of the body, then td_http_fail */
    FUZZ_CLOSE,           /* answers with Connection: close */
    FUZZ_LARGE,           /* a body over the high-water mark, by reference */
    FUZZ_NO_CONTENT,      /* 204 */
    FUZZ_NEVER,           /* never answers: the client's close ends it */
    FUZZ_NBEHAVIOURS
};

typedef struct fuzz_server_input {
    const char *data; /* what the client sends */
    size_t len;
    const size_t *cuts; /* ascending offsets in data where a new write starts */
    size_t ncuts;
    const uint8_t *behaviours; /* request i gets behaviours[i % n] (mod FUZZ_NBEHAVIOURS); none: FUZZ_ANSWER */
    size_t nbehaviours;
    size_t max_header_bytes, max_body_bytes;
} fuzz_server_input;

/* A request the server handed over. */
typedef struct fuzz_server_req {
    int behaviour;
    int method; /* llhttp's number */
    int minor;
    char target[256]; /* its first bytes */
    size_t target_len;
    td_buf body;     /* as td_http_body gave it (FUZZ_READ_BODY) */
    int body_status; /* 1 never complete, 0 read, or what the waiter was told */
    int over;        /* times on_over came: must end at 1 */
    int over_status;
    uint32_t slot, serial;
    td_http_waiter waiter;
    unsigned answered : 1; /* the handler finished a response while it was live */
    unsigned early : 1;    /* over before its body was all in */
} fuzz_server_req;

typedef struct fuzz_server_result {
    fuzz_server_req *reqs; /* valid until the next run */
    size_t nreqs;
    td_buf output;         /* what the client received */
    size_t responses;      /* final responses in it, whole */
    int last_status;       /* of the last of them */
    int server_closed;     /* the server ended the connection before the client did */
    int abrupt;            /* a handler failed after its head, or a body failed after it */
    /* What must not depend on where the input was cut: the requests handed
     * over; and, unless a request was over before its body was all in
     * (early: an error later in the body races the handler's answer), how
     * each ended, the bodies read, the responses. */
    td_buf requests, outcome;
    int early;
    int trailer_close; /* a request's trailers said Connection: close (a known defect, fuzz.h) */
} fuzz_server_result;

/* Runs one connection: listens the first time, then connects, writes, lets
 * the handler answer, closes and checks (see above). */
void fuzz_server_run(const fuzz_server_input *in, fuzz_server_result *res);

/* Fails when the run of an input in pieces and its run at once differ in
 * what must not depend on the cuts. */
void fuzz_server_compare(const fuzz_server_result *cut, const fuzz_server_result *whole);

/* The well-formed requests at the start of data (fuzz_ref_request, heads
 * of at most limit bytes) must be res's requests first, first+1, ... in
 * order, with their method and target, up to the first whose handler ends
 * the connection or never answers. known: the name of a known defect that
 * would explain a request missing (fuzz.h), or NULL. */
void fuzz_check_handed_over(const char *data, size_t len, size_t limit, const fuzz_server_result *res, size_t first,
                            const char *known);

#endif
