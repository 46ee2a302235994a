/* Header fields as llhttp delivers them, for requests and responses alike,
 * and the rules for what tendril sends. */
#include <errno.h>

#include "errors.h"
#include "http.h"

static int append(td_http_fields *f, const char *at, size_t len) {
    if (f->text.len + len > f->limit) {
        f->error = TD_ETOOLARGE;
        return -1;
    }
    if (td_buf_append(&f->text, at, len) != 0) {
        f->error = UV_ENOMEM;
        return -1;
    }
    return 0;
}

static td_http_header *last_header(td_http_fields *f) {
    return (td_http_header *)(void *)(f->headers.data + f->headers.len) - 1;
}

int td_http_fields_name(td_http_fields *f, const char *at, size_t len) {
    if (f->last != TD_HTTP_LAST_NAME) {
        td_http_header h = {.name = (uint32_t)f->text.len};
        if (td_buf_append(&f->headers, &h, sizeof h) != 0) {
            f->error = UV_ENOMEM;
            return -1;
        }
        f->last = TD_HTTP_LAST_NAME;
    }
    return append(f, at, len);
}

int td_http_fields_name_done(td_http_fields *f) {
    td_http_header *h = last_header(f);
    h->name_len = (uint32_t)f->text.len - h->name;
    int rc = td_http_lower_name(f->text.data + h->name, h->name_len);
    h->value = (uint32_t)f->text.len;
    h->value_len = 0;
    return rc;
}

int td_http_fields_value(td_http_fields *f, const char *at, size_t len) {
    f->last = TD_HTTP_LAST_VALUE;
    return append(f, at, len);
}

int td_http_fields_value_done(td_http_fields *f) {
    td_http_header *h = last_header(f);
    h->value_len = (uint32_t)td_http_trim_end(f->text.data + h->value, f->text.len - h->value);
    f->text.len = h->value + h->value_len;
    f->last = TD_HTTP_LAST_NONE;
    return 0;
}

void td_http_fields_free(td_http_fields *f) {
    td_buf_free(&f->text);
    td_buf_free(&f->headers);
}

int td_http_valid_name(const char *p, size_t n) {
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)p[i];
        if (ch <= ' ' || ch == ':' || ch >= 127)
            return 0;
    }
    return 1;
}

int td_http_valid_value(const char *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (p[i] == '\r' || p[i] == '\n' || p[i] == '\0')
            return 0;
    return 1;
}
