/* libFuzzer harness: the chunked decoder on the server's request path.
 * A fixed head announcing a chunked body is followed by the input's bytes,
 * through the same loopback connection and stand-in handler as
 * fuzz_request (fuzz_server.h); the first request's handler reads the whole
 * body and echoes it, later (pipelined) ones do what the input says.
 *
 * Input: 6 control bytes, then the body (and whatever follows it).
 *   [0]    bits 0-1: the head (plain, Expect: 100-continue, names and
 *          values in other cases, Connection: close); bit 2: a 16-byte body
 *          limit instead of 1 MiB
 *   [1..2] the cut seed (fuzz_cuts)
 *   [3..5] the behaviours of the requests after the first
 * A digit stands for its value, as in fuzz_request.
 *
 * Besides fuzz_server_run's checks, held against a strict decoder of RFC
 * 9112's chunked coding (fuzz_ref_chunked):
 * - a body the reference decodes is read, byte for byte the same (or
 *   refused with 413 when it is over the limit), and the well-formed
 *   requests after it are handed over;
 * - a body the reference finds unfinished is never complete;
 * - a body against the grammar is refused. llhttp 8.1 does not check the
 *   two bytes after a chunk's data (they should be CRLF): http.c does
 *   ("chunk-crlf"). Nor the LF after a CR at the end of a chunk-size line or of the
 *   trailers ("lf-after-cr"), nor white space inside a field name
 *   ("name-space"): both found by this harness, see docs/fuzzing.md;
 * - after a "Connection: close" trailer field the server answers the
 *   requests that follow, or closes; it swallows them ("trailer-close",
 *   found by this harness);
 * - what does not depend on timing does not depend on the cuts either
 *   (fuzz_server_compare): the input runs again in one piece. */
#include <stdint.h>
#include <string.h>

#include "errors.h"
#include "fuzz_ref.h"
#include "fuzz_server.h"

#define CONTROL 6
#define MAX_CUTS 64
#define MAX_BODY_INPUT 32768

static const char *const heads[4] = {
    "POST /upload HTTP/1.1\r\nHost: fuzz\r\nTransfer-Encoding: chunked\r\n\r\n",
    "POST /upload HTTP/1.1\r\nHost: fuzz\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n",
    "PUT /upload HTTP/1.1\r\nHost: fuzz\r\ntransfer-encoding: CHUNKED\r\n\r\n",
    "POST /upload HTTP/1.1\r\nHost: fuzz\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
};

static fuzz_server_result split_run, whole_run;
static char message[MAX_BODY_INPUT + 256];
static td_buf expected;

/* Returns 1 when the body has a "Connection: close" trailer field, whose
 * handling is a known defect ("trailer-close"). */
static int check_body(const fuzz_server_input *in, size_t head_len, const fuzz_server_result *res, int close) {
    const char *body = in->data + head_len;
    size_t len = in->len - head_len;
    fuzz_ref_chunked_info info;
    expected.len = 0;
    int rc = fuzz_ref_chunked(body, len, &expected, &info);
    FUZZ_CHECK(res->nreqs >= 1, "the fixed head was not handed over");
    const fuzz_server_req *r = &res->reqs[0];
    if (rc == FUZZ_REF_OK) {
        if (expected.len > in->max_body_bytes) {
            FUZZ_CHECK(r->body_status == TD_ETOOLARGE, "a body of %zu bytes over a limit of %zu: status %d",
                       expected.len, in->max_body_bytes, r->body_status);
            return 0;
        }
        FUZZ_CHECK(r->body_status == 0, "a valid chunked body was not read (status %d): %s", r->body_status,
                   fuzz_show(body, info.end));
        FUZZ_CHECK(fuzz_same(r->body.data, r->body.len, expected.data, expected.len),
                   "the body was decoded as %s", fuzz_show(r->body.data ? r->body.data : "", r->body.len));
        /* After "Connection: close" among the trailers the server may
         * close once it answered; but it must answer or close. */
        if (!close && !(info.connection_close && res->server_closed && res->nreqs == 1))
            fuzz_check_handed_over(body + info.end, len - info.end, in->max_header_bytes, res, 1,
                                   info.connection_close ? "trailer-close" : NULL);
        return info.connection_close;
    }
    if (rc == FUZZ_REF_INCOMPLETE) {
        FUZZ_CHECK(r->body_status != 0, "an unfinished body was read as complete: %s",
                   fuzz_show(r->body.data ? r->body.data : "", r->body.len));
    } else if (rc == FUZZ_REF_INVALID && strcmp(info.why, "data-crlf") == 0) {
        FUZZ_KNOWN("chunk-crlf", r->body_status != 0, "a chunk's data not followed by CRLF was accepted: %s",
                   fuzz_show(body, len));
    } else if (rc == FUZZ_REF_INVALID && strcmp(info.why, "lf-after-cr") == 0) {
        FUZZ_KNOWN("lf-after-cr", r->body_status != 0, "a line ended by CR and another byte was accepted: %s",
                   fuzz_show(body, len));
    } else if (rc == FUZZ_REF_INVALID && strcmp(info.why, "name-space") == 0) {
        FUZZ_KNOWN("name-space", r->body_status != 0, "a field name with white space was accepted: %s",
                   fuzz_show(body, len));
    } else if (rc == FUZZ_REF_INVALID) {
        FUZZ_CHECK(r->body_status != 0, "a body against RFC 9112's grammar (%s) was accepted: %s", info.why,
                   fuzz_show(body, len));
    }
    /* (The trailer may have come before what ends the subset.) */
    return info.connection_close;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < CONTROL || size - CONTROL > MAX_BODY_INPUT)
        return 0;
    unsigned config = fuzz_digit(data[0]);
    const char *head = heads[config & 3];
    size_t head_len = strlen(head);
    memcpy(message, head, head_len);
    memcpy(message + head_len, data + CONTROL, size - CONTROL);
    uint8_t behaviours[4] = {FUZZ_READ_BODY};
    for (int i = 1; i < 4; i++)
        behaviours[i] = (uint8_t)fuzz_digit(data[2 + i]);
    size_t cuts[MAX_CUTS];
    fuzz_server_input in = {
        .data = message,
        .len = head_len + size - CONTROL,
        .cuts = cuts,
        .behaviours = behaviours,
        .nbehaviours = 4,
        .max_header_bytes = 65536,
        .max_body_bytes = config & 4 ? 16 : 1 << 20,
    };
    uint32_t cut_seed = (uint32_t)data[1] | (uint32_t)data[2] << 8;
    in.ncuts = fuzz_cuts(cut_seed, in.len, cuts, MAX_CUTS);
    fuzz_server_run(&in, &split_run);
    int trailer_close = check_body(&in, head_len, &split_run, (config & 3) == 3);
    /* Whether llhttp swallows what follows a "Connection: close" trailer
     * depends on the cuts: stepping over that defect skips the comparison
     * (fuzz_server_compare sees it too, when a handler answered after the
     * trailers). */
    if (in.ncuts > 0 && !(trailer_close && fuzz_tolerated("trailer-close"))) {
        in.ncuts = 0;
        fuzz_server_run(&in, &whole_run);
        fuzz_server_compare(&split_run, &whole_run);
    }
    return 0;
}
