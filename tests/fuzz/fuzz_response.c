/* libFuzzer harness: the HTTP client's response reader (td_http_reader in
 * http_client.c), fed the input as a server's bytes, in pieces cut at
 * points derived from the input, then in one piece, as the client's socket
 * code feeds it (api_http_client.c: feed what there is, keep what it did
 * not use, tell it when the stream ended).
 *
 * Input: 3 control bytes, then the bytes.
 *   [0]    bit 0: the answer to HEAD (skip_body)
 *   [1..2] the cut seed (fuzz_cuts)
 * A digit stands for its value, as in fuzz_request.
 *
 * What must hold, besides no crash, leak or undefined behaviour:
 * - feed never claims more than it was given, takes nothing once the
 *   message ended, and an error sticks; a body piece comes only after the
 *   head, and the message ends only after it;
 * - cutting the input anywhere changes nothing: the same status, fields,
 *   body, bytes used, error and end-of-stream verdict;
 * - a response in the strict subset of fuzz_ref_response is read exactly:
 *   its status, its fields (names lower-cased, values trimmed), its decoded
 *   body, and the bytes it took, so what follows is left for the next one;
 *   one delimited by the close ends at the end of the stream; a valid
 *   start is neither an error nor complete, and the end of the stream then
 *   is an error. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "errors.h"
#include "fuzz.h"
#include "fuzz_ref.h"
#include "http.h"

#define CONTROL 3
#define MAX_CUTS 256

typedef struct outcome {
    int rc;     /* 0, or the error feed returned */
    size_t used; /* bytes feed took */
    int eof_rc; /* what td_http_reader_eof said, if it was asked */
} outcome;

static td_http_reader whole, split;
static td_buf expected;

static int same(const td_buf *a, const td_buf *b) { return fuzz_same(a->data, a->len, b->data, b->len); }

static void read_all(td_http_reader *r, int skip_body, const char *p, size_t len, const size_t *cuts, size_t ncuts,
                     outcome *o) {
    td_http_reader_begin(r, skip_body);
    o->rc = 0;
    o->used = 0;
    o->eof_rc = 0;
    size_t from = 0;
    for (size_t c = 0; c <= ncuts && !r->message_done && !o->rc; c++) {
        size_t to = c < ncuts ? cuts[c] : len;
        /* The client feeds what its socket holds until the reader stops
         * taking it: at the end of the message, or on an error. */
        while (from < to) {
            ssize_t n = td_http_reader_feed(r, p + from, to - from);
            if (n < 0) {
                o->rc = (int)n;
                FUZZ_CHECK(n == r->error, "feed returned %zd, the reader's error is %d", n, r->error);
                FUZZ_CHECK(td_http_reader_feed(r, p + from, to - from) == n, "an error that does not stick");
                break;
            }
            FUZZ_CHECK((size_t)n <= to - from, "feed took %zd of %zu bytes", n, to - from);
            FUZZ_KNOWN("interim-body", !r->body.len || r->head_done, "a body piece before the head");
            FUZZ_CHECK(!r->message_done || r->head_done, "a message that ended before its head");
            FUZZ_CHECK(n > 0 || r->message_done, "feed took nothing and the message goes on");
            from += (size_t)n;
            o->used += (size_t)n;
            if (r->message_done)
                break;
        }
    }
    if (r->message_done) {
        FUZZ_CHECK(td_http_reader_feed(r, "HTTP/1.1 200 OK\r\n", 17) == 0, "bytes taken after the message ended");
    } else if (!o->rc) {
        o->eof_rc = td_http_reader_eof(r, UV_EOF);
        FUZZ_CHECK(o->eof_rc == 0 ? r->message_done : !r->message_done, "the end of the stream said %d, done %d",
                   o->eof_rc, r->message_done);
    }
}

/* Field lines from p[i] up to p[end] must be the reader's fields from *k
 * on, in order, names lower-cased. */
static void check_fields(const td_http_reader *r, const char *p, size_t i, size_t end, size_t *k) {
    const td_http_header *h = td_http_fields_at(&r->fields);
    size_t n = td_http_fields_count(&r->fields);
    const char *text = r->fields.text.data;
    while (i < end) {
        const char *name, *value;
        size_t nlen, vlen;
        long len = fuzz_ref_field(p + i, end - i, &name, &nlen, &value, &vlen);
        FUZZ_CHECK(len > 0, "the reference's field does not parse again");
        FUZZ_CHECK(*k < n, "field %zu (%s) is missing", *k, fuzz_show(name, nlen));
        const td_http_header *f = &h[*k];
        FUZZ_CHECK(f->name_len == nlen, "field %zu's name", *k);
        for (size_t j = 0; j < nlen; j++) {
            char c = name[j] >= 'A' && name[j] <= 'Z' ? (char)(name[j] + 32) : name[j];
            FUZZ_CHECK(text[f->name + j] == c, "field %zu is named %s", *k, fuzz_show(text + f->name, nlen));
        }
        FUZZ_CHECK(fuzz_same(text + f->value, f->value_len, value, vlen),
                   "field %zu's value is %s, not %s", *k, fuzz_show(text + f->value, f->value_len),
                   fuzz_show(value, vlen));
        i += (size_t)len;
        ++*k;
    }
}

static void print_reader(const char *what, const td_http_reader *r) {
    const td_http_header *h = td_http_fields_at(&r->fields);
    fprintf(stderr, "  %s: error %d, head %d, done %d, status %d, body %s\n", what, r->error, r->head_done,
            r->message_done, r->parser.status_code, fuzz_show(r->body.data ? r->body.data : "", r->body.len));
    for (size_t k = 0; k < td_http_fields_count(&r->fields); k++) {
        fprintf(stderr, "    [%s]", fuzz_show(r->fields.text.data + h[k].name, h[k].name_len));
        fprintf(stderr, " = [%s]\n", fuzz_show(r->fields.text.data + h[k].value, h[k].value_len));
    }
}

static void print_readers(void) {
    print_reader("in one piece", &whole);
    print_reader("in pieces", &split);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_fail_context = print_readers;
    if (size < CONTROL)
        return 0;
    int skip_body = fuzz_digit(data[0]) & 1;
    uint32_t cut_seed = (uint32_t)data[1] | (uint32_t)data[2] << 8;
    const char *p = (const char *)data + CONTROL;
    size_t len = size - CONTROL;
    size_t cuts[MAX_CUTS];
    size_t ncuts = fuzz_cuts(cut_seed, len, cuts, MAX_CUTS);

    outcome a, b;
    read_all(&whole, skip_body, p, len, NULL, 0, &a);
    read_all(&split, skip_body, p, len, cuts, ncuts, &b);
    /* (Bytes taken before an error are taken from pieces that went
     * before it, and count for nothing.) */
    FUZZ_CHECK(a.rc == b.rc && (a.rc || a.used == b.used) && a.eof_rc == b.eof_rc && whole.error == split.error,
               "cut in %zu pieces: feed %d/%d, used %zu/%zu, end %d/%d", ncuts + 1, a.rc, b.rc, a.used, b.used,
               a.eof_rc, b.eof_rc);
    FUZZ_CHECK(whole.head_done == split.head_done && whole.message_done == split.message_done,
               "cut in %zu pieces: head %d/%d, done %d/%d", ncuts + 1, whole.head_done, split.head_done,
               whole.message_done, split.message_done);
    FUZZ_CHECK(same(&whole.body, &split.body), "cut in %zu pieces, the body differs", ncuts + 1);
    /* After an error nobody reads the fields: a field cut off by it may
     * be half recorded. */
    if (whole.head_done && !a.rc) {
        FUZZ_CHECK(whole.parser.status_code == split.parser.status_code &&
                       same(&whole.fields.text, &split.fields.text) && same(&whole.fields.headers, &split.fields.headers),
                   "cut in %zu pieces, the head differs", ncuts + 1);
    }

    fuzz_ref_resp ref;
    expected.len = 0;
    int rc = fuzz_ref_response(p, len, skip_body, &expected, &ref);
    if (rc == FUZZ_REF_OK && ref.announced) {
        /* llhttp 8.1 reads the body a 204 or 304 announces: the bytes of
         * the next response on the connection. */
        FUZZ_KNOWN("no-body-status", a.rc == 0 && whole.message_done && a.used == ref.end && !whole.body.len,
                   "a %d that announces a body took %zu bytes, not %zu (error %d, done %d)", ref.status, a.used,
                   ref.end, a.rc, whole.message_done);
    } else if (rc == FUZZ_REF_OK) {
        FUZZ_CHECK(a.rc == 0 && whole.message_done, "a valid response was not read (error %d, end %d): %s", a.rc,
                   a.eof_rc, fuzz_show(p, ref.end));
        FUZZ_CHECK(ref.to_eof ? a.eof_rc == 0 && a.used == len : a.used == ref.end,
                   "a valid response of %zu bytes took %zu", ref.end, a.used);
        FUZZ_CHECK(whole.parser.status_code == ref.status, "status %d read as %d", ref.status,
                   whole.parser.status_code);
        FUZZ_CHECK(same(&whole.body, &expected), "the body was read as %s",
                   fuzz_show(whole.body.data ? whole.body.data : "", whole.body.len));
        /* The head's fields, then a chunked body's trailer fields: the
         * reader keeps them together. */
        size_t k = 0;
        const char *line_end = memchr(p + ref.head_start, '\n', ref.head - ref.head_start);
        check_fields(&whole, p, (size_t)(line_end - p) + 1, ref.head - 2, &k);
        if (ref.trailers)
            check_fields(&whole, p, ref.trailers, ref.end - 2, &k);
        FUZZ_CHECK(k == td_http_fields_count(&whole.fields), "%zu fields read, %zu in the response",
                   td_http_fields_count(&whole.fields), k);
    } else if (rc == FUZZ_REF_INCOMPLETE) {
        FUZZ_CHECK(a.rc == 0 && !whole.message_done, "a valid start was %s",
                   a.rc ? "refused" : "taken for a whole response");
        FUZZ_CHECK(a.eof_rc != 0, "the stream ended in a valid start, and the reader took it for a response");
    }
    return 0;
}
