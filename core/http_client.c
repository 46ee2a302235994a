/* Owns the client's response reader: llhttp over the bytes of a stream this
 * side opened, the status, the header fields and the decoded body not yet
 * taken. Requests are written by lua/tendril/http.lua with the same
 * validators the server uses. */
#include "errors.h"
#include "http.h"

/* A response head this large is not worth reading. */
#define TD_CLIENT_MAX_HEAD 65536

static td_http_reader *reader_of(llhttp_t *p) { return td_container_of(p, td_http_reader, parser); }

static int fields_failed(td_http_reader *r) {
    r->error = r->fields.error == TD_ETOOLARGE ? TD_ETOOLARGE : UV_ENOMEM;
    return HPE_USER;
}

static int on_field(llhttp_t *p, const char *at, size_t len) {
    td_http_reader *r = reader_of(p);
    return td_http_fields_name(&r->fields, at, len) == 0 ? 0 : fields_failed(r);
}

static int on_field_done(llhttp_t *p) { return td_http_fields_name_done(&reader_of(p)->fields); }

static int on_value(llhttp_t *p, const char *at, size_t len) {
    td_http_reader *r = reader_of(p);
    return td_http_fields_value(&r->fields, at, len) == 0 ? 0 : fields_failed(r);
}

static int on_value_done(llhttp_t *p) { return td_http_fields_value_done(&reader_of(p)->fields); }

static int on_headers_done(llhttp_t *p) {
    td_http_reader *r = reader_of(p);
    /* 1xx, 204 and 304 have no body whatever their head says (RFC 9112
     * section 6.3); llhttp 8 would read one and desync the connection. */
    int status = p->status_code;
    int no_body = (status >= 100 && status < 200) || status == 204 || status == 304;
    if (status >= 100 && status < 200 && status != 101)
        return 1; /* an interim response: the real one follows */
    r->head_done = 1;
    return r->skip_body || no_body ? 1 : 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len) {
    td_http_reader *r = reader_of(p);
    if (td_buf_append(&r->body, at, len) != 0) {
        r->error = UV_ENOMEM;
        return HPE_USER;
    }
    return 0;
}

static int on_message_done(llhttp_t *p) {
    td_http_reader *r = reader_of(p);
    if (!r->head_done) {
        /* The end of an interim response: forget its headers. */
        td_http_fields_reset(&r->fields);
        return 0;
    }
    r->message_done = 1;
    return HPE_PAUSED;
}

static const llhttp_settings_t reader_settings = {
    .on_header_field = on_field,
    .on_header_field_complete = on_field_done,
    .on_header_value = on_value,
    .on_header_value_complete = on_value_done,
    .on_headers_complete = on_headers_done,
    .on_body = on_body,
    .on_message_complete = on_message_done,
};

void td_http_reader_begin(td_http_reader *r, int skip_body) {
    llhttp_init(&r->parser, HTTP_RESPONSE, &reader_settings);
    td_http_fields_reset(&r->fields);
    r->fields.limit = TD_CLIENT_MAX_HEAD;
    r->body.len = 0;
    r->error = 0;
    r->head_done = r->message_done = r->got_bytes = 0;
    r->skip_body = skip_body ? 1 : 0;
}

ssize_t td_http_reader_feed(td_http_reader *r, const char *data, size_t len) {
    if (r->error)
        return r->error;
    if (r->message_done || len == 0)
        return 0;
    r->got_bytes = 1;
    llhttp_errno_t err = llhttp_execute(&r->parser, data, len);
    if (err == HPE_OK)
        return (ssize_t)len;
    if (err == HPE_PAUSED) {
        size_t used = (size_t)(llhttp_get_error_pos(&r->parser) - data);
        llhttp_resume(&r->parser);
        return (ssize_t)used;
    }
    if (!r->error)
        r->error = TD_EPROTO;
    return r->error;
}

int td_http_reader_eof(td_http_reader *r, int read_end) {
    if (r->message_done)
        return 0;
    if (r->error)
        return r->error;
    /* Fine for a body that ends with the connection; "closed" for
     * anything cut short. (llhttp_finish passes on on_message_done's
     * pause.) */
    if (read_end == UV_EOF && r->got_bytes) {
        llhttp_errno_t err = llhttp_finish(&r->parser);
        if ((err == HPE_OK || err == HPE_PAUSED) && r->message_done)
            return 0;
    }
    r->error = read_end == UV_EOF ? TD_ECLOSED : read_end;
    return r->error;
}

void td_http_reader_free(td_http_reader *r) {
    td_http_fields_free(&r->fields);
    td_buf_free(&r->body);
}
