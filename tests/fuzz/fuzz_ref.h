/* Reference decoders the harnesses hold tendril's parsers to. Each accepts
 * a strict subset of HTTP/1.1 (RFC 9112) that any correct parser must
 * accept and decode the same way: when a reference accepts an input, the
 * code under test must agree with it; when it rejects one, the harness
 * asserts nothing (llhttp may be more lenient, within reason). They are
 * small on purpose: a second parser as clever as llhttp would share its
 * mistakes. */
#ifndef FUZZ_REF_H
#define FUZZ_REF_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"

/* OUTSIDE: valid HTTP (or a leniency RFC 9112 allows) that a subset
 * leaves out; INVALID: against the grammar. Harnesses assert nothing on
 * either, except where they say so. */
enum { FUZZ_REF_OUTSIDE = -2, FUZZ_REF_INVALID = -1, FUZZ_REF_INCOMPLETE = 0, FUZZ_REF_OK = 1 };

/* A chunked body (chunks, the last chunk, trailer fields, the final CRLF)
 * at p: FUZZ_REF_OK with the decoded data appended to body and info's end
 * (the bytes the body took) and trailers (where its trailer section starts:
 * field lines up to end - 2); FUZZ_REF_INCOMPLETE when the n bytes are a
 * valid start; FUZZ_REF_INVALID against RFC 9112's grammar, info's why
 * naming the rule ("data-crlf": the two bytes after a chunk's data are not
 * CRLF; "lf-after-cr": a line ends in CR and another byte; "name-space":
 * white space in a trailer field's name; "chunk-size", "trailer");
 * FUZZ_REF_OUTSIDE for what the subset leaves out: bytes against the
 * grammar inside an extension (they do not move the framing), white space
 * around extensions, bare LF line ends, quoted pairs and obs-text,
 * obs-fold, framing or connection fields among the trailers (but
 * "Connection: close", which sets connection_close), sizes of more than 15
 * significant digits, and an extension after a token value (llhttp 8.1
 * refuses that). */
typedef struct fuzz_ref_chunked_info {
    size_t end, trailers;
    const char *why;
    int connection_close; /* a "Connection: close" trailer field */
} fuzz_ref_chunked_info;
int fuzz_ref_chunked(const char *p, size_t n, td_buf *body, fuzz_ref_chunked_info *info);

/* One complete HTTP/1.1 request without a body at p: a known method, an
 * origin-form target of RFC 3986 characters (no %00 in its path), exactly
 * one Host field, no
 * field that changes framing or the connection (Content-Length,
 * Transfer-Encoding, Connection, Upgrade, Expect), and a head of at most
 * `limit` bytes. Returns its length (0 if there is none) and fills r. */
typedef struct fuzz_ref_req {
    const char *method, *target;
    size_t method_len, target_len;
} fuzz_ref_req;
size_t fuzz_ref_request(const char *p, size_t n, size_t limit, fuzz_ref_req *r);

/* An HTTP/1.x response at p, 200..599, after any interim responses (100,
 * 102, 103) that announce no body, framed by Content-Length, by
 * chunked, by nothing (204, 304, the answer to HEAD: skip_body) or by the
 * end of the stream. FUZZ_REF_OK: complete, its body appended to body and
 * r filled; when it is delimited by the stream's end, the body is
 * everything after the head. FUZZ_REF_INCOMPLETE: a valid start.
 * FUZZ_REF_INVALID: outside the subset. */
typedef struct fuzz_ref_resp {
    int status;
    int to_eof;        /* the body is all that follows the head */
    size_t head_start; /* where the final response starts, after interim ones */
    size_t head;       /* where its head ends */
    size_t trailers; /* where a chunked body's trailer section starts, or 0 */
    size_t end;      /* the response's length */
    int announced;   /* a 204 or 304 whose fields announce a body it does not have */
} fuzz_ref_resp;
int fuzz_ref_response(const char *p, size_t n, int skip_body, td_buf *body, fuzz_ref_resp *r);

/* The length of a field line "name: value\r\n" at p (name and value
 * reported), 0 when what is there is not one (or not all there), -1 when it
 * cannot become one. Names are tokens, values visible ASCII with inner
 * spaces and tabs; white space around the value is not part of it. */
long fuzz_ref_field(const char *p, size_t n, const char **name, size_t *nlen, const char **value, size_t *vlen);

/* ASCII case-insensitive comparison of a span with a lower-case literal. */
int fuzz_ref_is(const char *p, size_t n, const char *lit);

/* 1 when p[0..n) is well-formed UTF-8 (RFC 3629), read a whole character
 * at a time: its length from the lead byte's high bits, its code point,
 * then the range checks (overlong forms, surrogates, past U+10FFFF). */
int fuzz_ref_utf8(const uint8_t *p, size_t n);

#endif
