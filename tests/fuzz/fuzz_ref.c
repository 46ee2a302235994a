/* The reference decoders (see fuzz_ref.h): straight-line code over the
 * grammar of RFC 9112, restricted where llhttp is allowed to differ. */
#include "fuzz_ref.h"

#include <stdint.h>
#include <string.h>

static int is_tchar(unsigned char c) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return 1;
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static int is_hex(unsigned char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static unsigned hex_value(unsigned char c) {
    return c <= '9' ? (unsigned)(c - '0') : (unsigned)((c | 0x20) - 'a' + 10);
}

static int is_vchar(unsigned char c) { return c >= 0x21 && c <= 0x7e; }

int fuzz_ref_is(const char *p, size_t n, const char *lit) {
    if (strlen(lit) != n)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c >= 'A' && c <= 'Z')
            c = (unsigned char)(c + 32);
        if (c != (unsigned char)lit[i])
            return 0;
    }
    return 1;
}

/* CRLF at p[*i]: FUZZ_REF_OK (and *i moves past it), INCOMPLETE or INVALID. */
static int crlf(const char *p, size_t n, size_t *i) {
    if (*i >= n)
        return FUZZ_REF_INCOMPLETE;
    if (p[*i] != '\r')
        return FUZZ_REF_INVALID;
    if (*i + 1 >= n)
        return FUZZ_REF_INCOMPLETE;
    if (p[*i + 1] != '\n')
        return FUZZ_REF_INVALID;
    *i += 2;
    return FUZZ_REF_OK;
}

long fuzz_ref_field(const char *p, size_t n, const char **name, size_t *nlen, const char **value, size_t *vlen) {
    size_t i = 0;
    while (i < n && is_tchar((unsigned char)p[i]))
        i++;
    if (i == n)
        return 0;
    if (i == 0 || p[i] != ':')
        return -1;
    *name = p;
    *nlen = i;
    i++;
    while (i < n && (p[i] == ' ' || p[i] == '\t'))
        i++;
    size_t vstart = i, vend = i;
    for (; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (is_vchar(c))
            vend = i + 1;
        else if (c != ' ' && c != '\t')
            break;
    }
    int rc = crlf(p, n, &i);
    if (rc != FUZZ_REF_OK)
        return rc == FUZZ_REF_INCOMPLETE ? 0 : -1;
    *value = p + vstart;
    *vlen = vend - vstart;
    return (long)i;
}

/* Field names whose meaning is framing or the connection: the subsets
 * leave them out, so that what the references accept means one thing. */
static int special_name(const char *name, size_t n) {
    static const char *const names[] = {"content-length", "transfer-encoding", "connection", "proxy-connection",
                                        "upgrade",        "expect",            "host",       "keep-alive"};
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++)
        if (fuzz_ref_is(name, n, names[k]))
            return 1;
    return 0;
}

/* A field line of a response's head cut short (fuzz_ref_field said 0): can
 * it still become one the subset accepts? llhttp judges some fields before
 * their line ends (a Content-Length's digits, a second one, framing that
 * conflicts), so a start it refuses must not be called valid. lengths and
 * chunked say what came before. */
static int partial_field(const char *p, size_t n, int lengths, int chunked) {
    const char *colon = memchr(p, ':', n);
    if (!colon)
        return FUZZ_REF_INCOMPLETE;
    size_t nlen = (size_t)(colon - p), i = nlen + 1;
    if (fuzz_ref_is(p, nlen, "connection") || fuzz_ref_is(p, nlen, "proxy-connection") ||
        fuzz_ref_is(p, nlen, "upgrade"))
        return FUZZ_REF_OUTSIDE;
    while (i < n && (p[i] == ' ' || p[i] == '\t'))
        i++;
    if (fuzz_ref_is(p, nlen, "content-length")) {
        int significant = 0;
        if (lengths || chunked)
            return FUZZ_REF_OUTSIDE;
        for (; i < n; i++) {
            if (p[i] < '0' || p[i] > '9')
                return FUZZ_REF_OUTSIDE;
            if ((significant || p[i] != '0') && ++significant > 15)
                return FUZZ_REF_OUTSIDE; /* llhttp refuses what overflows 64 bits */
        }
    } else if (fuzz_ref_is(p, nlen, "transfer-encoding")) {
        static const char want[] = "chunked";
        if (lengths || chunked)
            return FUZZ_REF_OUTSIDE;
        for (size_t k = 0; i < n; i++, k++) {
            char c = p[i] >= 'A' && p[i] <= 'Z' ? (char)(p[i] + 32) : p[i];
            if (k >= sizeof want - 1 || c != want[k])
                return FUZZ_REF_OUTSIDE;
        }
    }
    return FUZZ_REF_INCOMPLETE;
}

/* A chunked body's own grammar (RFC 9112 section 7.1), every byte sorted
 * into OK, not yet known (INCOMPLETE), against the grammar (INVALID, with
 * why), or outside the subset (OUTSIDE: BWS, bare LF, quoted pairs,
 * obs-text, framing names in trailers, llhttp 8.1's refusals). */
typedef struct chunk_reader {
    const char *p;
    size_t n, i;
    fuzz_ref_chunked_info *info;
} chunk_reader;

static int invalid(chunk_reader *c, const char *why) {
    c->info->why = why;
    return FUZZ_REF_INVALID;
}

/* The end of a line at c->i: CRLF; a bare LF is a leniency RFC 9112
 * allows. A CR followed by anything else is "lf-after-cr": llhttp 8.1
 * takes it for a line end at the end of a head, of a chunk-size line and
 * of the trailer section. */
static int line_end(chunk_reader *c, const char *why) {
    if (c->i >= c->n)
        return FUZZ_REF_INCOMPLETE;
    if (c->p[c->i] == '\n')
        return FUZZ_REF_OUTSIDE;
    if (c->p[c->i] != '\r')
        return invalid(c, why);
    if (c->i + 1 >= c->n)
        return FUZZ_REF_INCOMPLETE;
    if (c->p[c->i + 1] != '\n')
        return invalid(c, "lf-after-cr");
    c->i += 2;
    return FUZZ_REF_OK;
}

/* Bytes against the grammar inside a chunk extension: llhttp 8.1 lets
 * some through (an empty name, ";=x"). tendril ignores extensions, and
 * what is inside one does not move the framing while the line ends with
 * CRLF, which is checked: outside the subset rather than invalid. */
static int ext_lenient(chunk_reader *c) {
    (void)c;
    return FUZZ_REF_OUTSIDE;
}

/* What may follow a chunk-size or an extension: another extension, the
 * line's end, or BWS (outside). */
static int after_item(chunk_reader *c, int after_token_value) {
    if (c->i >= c->n)
        return FUZZ_REF_INCOMPLETE;
    char ch = c->p[c->i];
    if (ch == ';')
        /* llhttp 8.1 refuses ";a=1;b" ("Invalid character in chunk
         * size"), though RFC 9112 allows it. */
        return after_token_value ? FUZZ_REF_OUTSIDE : FUZZ_REF_OK;
    if (ch == '\r')
        return FUZZ_REF_OK;
    if (ch == ' ' || ch == '\t' || ch == '\n')
        return FUZZ_REF_OUTSIDE;
    return ext_lenient(c);
}

/* ;name, ;name=token, ;name="qdtext" */
static int chunk_extensions(chunk_reader *c) {
    int rc = after_item(c, 0);
    while (rc == FUZZ_REF_OK && c->p[c->i] == ';') {
        const char *p = c->p;
        size_t j = ++c->i;
        while (j < c->n && is_tchar((unsigned char)p[j]))
            j++;
        if (j == c->n)
            return FUZZ_REF_INCOMPLETE;
        if (j == c->i)
            return p[j] == ' ' || p[j] == '\t' ? FUZZ_REF_OUTSIDE : ext_lenient(c);
        c->i = j;
        if (p[j] != '=') {
            rc = after_item(c, 0);
            continue;
        }
        j++;
        if (j == c->n)
            return FUZZ_REF_INCOMPLETE;
        if (p[j] == '"') {
            for (j++;; j++) {
                if (j == c->n)
                    return FUZZ_REF_INCOMPLETE;
                unsigned char ch = (unsigned char)p[j];
                if (ch == '"')
                    break;
                if (ch == '\\' || ch >= 0x80)
                    return FUZZ_REF_OUTSIDE;
                if (ch != '\t' && ch != ' ' && !is_vchar(ch)) {
                    c->i = j;
                    return ext_lenient(c);
                }
            }
            c->i = j + 1;
            rc = after_item(c, 0);
        } else {
            size_t start = j;
            while (j < c->n && is_tchar((unsigned char)p[j]))
                j++;
            if (j == c->n)
                return FUZZ_REF_INCOMPLETE;
            if (j == start)
                return p[j] == ' ' || p[j] == '\t' ? FUZZ_REF_OUTSIDE : ext_lenient(c);
            c->i = j;
            rc = after_item(c, 1);
        }
    }
    return rc;
}

/* One trailer field line at c->i, or the empty line that ends them
 * (*done). */
static int trailer_line(chunk_reader *c, int *done) {
    const char *p = c->p;
    size_t i = c->i;
    if (i >= c->n)
        return FUZZ_REF_INCOMPLETE;
    if (p[i] == '\r' || p[i] == '\n') {
        *done = 1;
        return line_end(c, "trailer");
    }
    if (p[i] == ' ' || p[i] == '\t')
        return FUZZ_REF_OUTSIDE; /* obs-fold, or white space before the first field */
    size_t start = i;
    while (i < c->n && is_tchar((unsigned char)p[i]))
        i++;
    if (i == c->n)
        return FUZZ_REF_INCOMPLETE;
    if (i == start || p[i] != ':') {
        c->i = i;
        /* llhttp 8.1 takes "A B" for a name (not " :", which tendril
         * refuses itself). */
        return invalid(c, i > start && (p[i] == ' ' || p[i] == '\t') ? "name-space" : "trailer");
    }
    /* llhttp judges some of these before their line ends. A Connection
     * field is let through when it says close, alone: llhttp acts on it
     * (the harnesses check what the server does then). */
    int connection = fuzz_ref_is(p + start, i - start, "connection");
    if (special_name(p + start, i - start) && !connection)
        return FUZZ_REF_OUTSIDE;
    size_t value = i + 1;
    for (i++; i < c->n; i++) {
        unsigned char ch = (unsigned char)p[i];
        if (ch >= 0x80)
            return FUZZ_REF_OUTSIDE; /* obs-text */
        if (!is_vchar(ch) && ch != ' ' && ch != '\t')
            break;
    }
    c->i = i;
    int rc = line_end(c, "trailer");
    if (rc == FUZZ_REF_OK && connection) {
        size_t end = i;
        while (value < end && (p[value] == ' ' || p[value] == '\t'))
            value++;
        while (end > value && (p[end - 1] == ' ' || p[end - 1] == '\t'))
            end--;
        if (!fuzz_ref_is(p + value, end - value, "close"))
            return FUZZ_REF_OUTSIDE;
        c->info->connection_close = 1;
    }
    return rc;
}

int fuzz_ref_chunked(const char *p, size_t n, td_buf *body, fuzz_ref_chunked_info *info) {
    chunk_reader c = {.p = p, .n = n, .info = info};
    memset(info, 0, sizeof *info);
    info->why = "";
    for (;;) {
        size_t start = c.i;
        uint64_t size = 0;
        int significant = 0;
        while (c.i < n && is_hex((unsigned char)p[c.i])) {
            if (significant || p[c.i] != '0')
                significant++;
            /* llhttp keeps sizes in 64 bits; the subset stays far below. */
            if (significant > 15)
                return FUZZ_REF_OUTSIDE;
            size = size * 16 + hex_value((unsigned char)p[c.i]);
            c.i++;
        }
        if (c.i == n)
            return FUZZ_REF_INCOMPLETE;
        if (c.i == start)
            return invalid(&c, "chunk-size");
        int rc = chunk_extensions(&c);
        if (rc == FUZZ_REF_OK)
            rc = line_end(&c, "chunk-size");
        if (rc != FUZZ_REF_OK)
            return rc;
        if (size == 0)
            break;
        if (n - c.i < size)
            return FUZZ_REF_INCOMPLETE;
        if (td_buf_append(body, p + c.i, (size_t)size) != 0)
            return FUZZ_REF_OUTSIDE;
        c.i += (size_t)size;
        /* Exactly CRLF: the defect llhttp 8.1 has is not checking it. */
        if (c.i < n && p[c.i] != '\r')
            return invalid(&c, "data-crlf");
        if (c.i + 1 < n && p[c.i + 1] != '\n')
            return invalid(&c, "data-crlf");
        if (c.i + 2 > n)
            return FUZZ_REF_INCOMPLETE;
        c.i += 2;
    }
    info->trailers = c.i;
    for (int done = 0; !done;) {
        int rc = trailer_line(&c, &done);
        if (rc != FUZZ_REF_OK)
            return rc;
    }
    info->end = c.i;
    return FUZZ_REF_OK;
}

static int known_method(const char *p, size_t n) {
    static const char *const methods[] = {"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"};
    for (size_t k = 0; k < sizeof methods / sizeof methods[0]; k++)
        if (strlen(methods[k]) == n && memcmp(methods[k], p, n) == 0)
            return 1;
    return 0;
}

/* RFC 3986 pchar and "/", "?", with "%" taken as it comes. */
static int target_char(unsigned char c) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return 1;
    return c != 0 && strchr("-._~!$&'()*+,;=:@/?%", c) != NULL;
}

size_t fuzz_ref_request(const char *p, size_t n, size_t limit, fuzz_ref_req *r) {
    size_t i = 0;
    while (i < n && p[i] >= 'A' && p[i] <= 'Z')
        i++;
    if (i == n || p[i] != ' ' || !known_method(p, i))
        return 0;
    r->method = p;
    r->method_len = i++;
    if (i == n || p[i] != '/')
        return 0;
    r->target = p + i;
    /* No %00 in the path: a NUL would cut the decoded path short, and
     * tendril refuses it. */
    int in_query = 0;
    while (i < n && target_char((unsigned char)p[i])) {
        in_query |= p[i] == '?';
        if (!in_query && p[i] == '%' && i + 2 < n && p[i + 1] == '0' && p[i + 2] == '0')
            return 0;
        i++;
    }
    r->target_len = (size_t)(p + i - r->target);
    static const char version[] = " HTTP/1.1\r\n";
    if (n - i < sizeof version - 1 || memcmp(p + i, version, sizeof version - 1) != 0)
        return 0;
    i += sizeof version - 1;
    int hosts = 0;
    for (;;) {
        if (i < n && p[i] == '\r')
            break;
        const char *name, *value;
        size_t nlen, vlen;
        long len = fuzz_ref_field(p + i, n - i, &name, &nlen, &value, &vlen);
        if (len <= 0)
            return 0;
        if (fuzz_ref_is(name, nlen, "host"))
            hosts++;
        else if (special_name(name, nlen))
            return 0;
        i += (size_t)len;
    }
    if (crlf(p, n, &i) != FUZZ_REF_OK || hosts != 1 || i > limit)
        return 0;
    return i;
}

/* One status line and head at p[*i]: the status, the framing fields. */
static int response_head(const char *p, size_t n, size_t *at, int *status, int *lengths, int *chunked,
                         uint64_t *length) {
    static const char proto[] = "HTTP/1.";
    size_t i = *at;
    /* "HTTP/1.x DDD reason\r\n", checked as far as it goes. */
    for (size_t k = 0; k < sizeof proto - 1; k++, i++) {
        if (i == n)
            return FUZZ_REF_INCOMPLETE;
        if (p[i] != proto[k])
            return FUZZ_REF_INVALID;
    }
    if (i == n)
        return FUZZ_REF_INCOMPLETE;
    if (p[i] != '0' && p[i] != '1')
        return FUZZ_REF_INVALID;
    int minor = p[i++] - '0';
    if (i == n)
        return FUZZ_REF_INCOMPLETE;
    if (p[i++] != ' ')
        return FUZZ_REF_INVALID;
    int code = 0;
    for (int k = 0; k < 3; k++, i++) {
        if (i == n)
            return FUZZ_REF_INCOMPLETE;
        if (p[i] < '0' || p[i] > '9')
            return FUZZ_REF_INVALID;
        code = code * 10 + (p[i] - '0');
    }
    /* Interim responses but 101 (a change of protocol), which HTTP/1.0
     * does not have, and final ones. */
    if (code < 100 || code > 599 || code == 101 || (code > 103 && code < 200) || (code < 200 && minor == 0))
        return FUZZ_REF_OUTSIDE;
    *status = code;
    if (i == n)
        return FUZZ_REF_INCOMPLETE;
    if (p[i++] != ' ')
        return FUZZ_REF_INVALID;
    size_t reason = i;
    while (i < n && (is_vchar((unsigned char)p[i]) || p[i] == ' ' || p[i] == '\t'))
        i++;
    if (i < n && i == reason)
        return FUZZ_REF_OUTSIDE;
    int rc = crlf(p, n, &i);
    if (rc != FUZZ_REF_OK)
        return rc;

    *lengths = *chunked = 0;
    *length = 0;
    for (;;) {
        if (i < n && p[i] == '\r')
            break;
        const char *name, *value;
        size_t nlen, vlen;
        long len = fuzz_ref_field(p + i, n - i, &name, &nlen, &value, &vlen);
        if (len <= 0)
            return len == 0 ? partial_field(p + i, n - i, *lengths, *chunked) : FUZZ_REF_INVALID;
        i += (size_t)len;
        if (fuzz_ref_is(name, nlen, "content-length")) {
            int significant = 0;
            if (vlen == 0 || (*lengths)++)
                return FUZZ_REF_OUTSIDE;
            /* llhttp 8.1 refuses a tab after the digits ("Invalid
             * character in Content-Length"), RFC 9110 allows it. */
            if (memchr(value + vlen, '\t', (size_t)(name + len - 2 - (value + vlen))))
                return FUZZ_REF_OUTSIDE;
            for (size_t k = 0; k < vlen; k++) {
                if (value[k] < '0' || value[k] > '9')
                    return FUZZ_REF_INVALID;
                if (significant || value[k] != '0')
                    significant++;
                if (significant > 15)
                    return FUZZ_REF_OUTSIDE;
                *length = *length * 10 + (uint64_t)(value[k] - '0');
            }
        } else if (fuzz_ref_is(name, nlen, "transfer-encoding")) {
            if ((*chunked)++ || !fuzz_ref_is(value, vlen, "chunked"))
                return FUZZ_REF_OUTSIDE;
            /* llhttp 8.1 does not take "chunked" followed by a tab for
             * chunked (the body is then read to the end of the stream). */
            if (memchr(value + vlen, '\t', (size_t)(name + len - 2 - (value + vlen))))
                return FUZZ_REF_OUTSIDE;
        } else if (fuzz_ref_is(name, nlen, "connection") || fuzz_ref_is(name, nlen, "proxy-connection") ||
                   fuzz_ref_is(name, nlen, "upgrade")) {
            return FUZZ_REF_OUTSIDE;
        }
    }
    if ((rc = crlf(p, n, &i)) != FUZZ_REF_OK)
        return rc;
    *at = i;
    return FUZZ_REF_OK;
}

int fuzz_ref_response(const char *p, size_t n, int skip_body, td_buf *body, fuzz_ref_resp *r) {
    size_t i = 0;
    int code, lengths, chunked, rc;
    uint64_t length;
    memset(r, 0, sizeof *r);
    for (;;) {
        r->head_start = i;
        rc = response_head(p, n, &i, &code, &lengths, &chunked, &length);
        if (rc != FUZZ_REF_OK)
            return rc;
        if (code >= 200)
            break;
        /* An interim response ends with its head (RFC 9110 section 15.2);
         * llhttp 8.1 reads a body if it announces one: outside. */
        if (lengths || chunked)
            return FUZZ_REF_OUTSIDE;
    }
    r->status = code;
    r->head = i;
    if (lengths && chunked)
        return FUZZ_REF_OUTSIDE;
    /* RFC 9112 (section 6.3): 204 and 304 end with their head whatever
     * their fields say. */
    r->announced = (code == 204 || code == 304) && (lengths || chunked);
    if (skip_body || code == 204 || code == 304) {
        r->end = i;
        return FUZZ_REF_OK;
    }
    if (chunked) {
        fuzz_ref_chunked_info info;
        rc = fuzz_ref_chunked(p + i, n - i, body, &info);
        if (rc == FUZZ_REF_OK && info.connection_close)
            return FUZZ_REF_OUTSIDE;
        if (rc == FUZZ_REF_OK) {
            r->trailers = i + info.trailers;
            r->end = i + info.end;
        }
        return rc;
    }
    if (lengths) {
        if (n - i < length)
            return FUZZ_REF_INCOMPLETE;
        if (td_buf_append(body, p + i, (size_t)length) != 0)
            return FUZZ_REF_OUTSIDE;
        r->end = i + (size_t)length;
        return FUZZ_REF_OK;
    }
    if (td_buf_append(body, p + i, n - i) != 0)
        return FUZZ_REF_OUTSIDE;
    r->end = n;
    r->to_eof = 1;
    return FUZZ_REF_OK;
}

/* ---- UTF-8 ---- */

int fuzz_ref_utf8(const uint8_t *p, size_t n) {
    size_t i = 0;
    while (i < n) {
        uint8_t b = p[i];
        size_t len = b < 0x80 ? 1 : (b & 0xE0) == 0xC0 ? 2 : (b & 0xF0) == 0xE0 ? 3 : (b & 0xF8) == 0xF0 ? 4 : 0;
        if (len == 0 || i + len > n)
            return 0;
        uint32_t cp = len == 1 ? b : len == 2 ? (b & 0x1Fu) : len == 3 ? (b & 0x0Fu) : (b & 0x07u);
        for (size_t k = 1; k < len; k++) {
            if ((p[i + k] & 0xC0) != 0x80)
                return 0;
            cp = cp << 6 | (p[i + k] & 0x3Fu);
        }
        static const uint32_t min[5] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < min[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += len;
    }
    return 1;
}
