/* The HTTP client's response reader: llhttp parsing a td_sock's input into
 * a status, headers and body pieces, for lua/tendril/http.lua (which owns
 * requests, pools, redirects and retries).
 *
 * The parser state hangs off the socket (td_sock.owner_data) and dies with
 * it. A reader waits the way every socket primitive does (see api_tcp.c):
 * a malloc'd record from the yield to the wake-up. */
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "errors.h"
#include "sock.h"

typedef struct httpc {
    llhttp_t parser;
    td_buf text;    /* header names and values */
    td_buf headers; /* td_http_header[] */
    td_buf body;    /* decoded body not yet handed to Lua */
    int last_field;
    int error;
    unsigned head_done : 1;
    unsigned message_done : 1;
    unsigned skip_body : 1;
    unsigned got_bytes : 1;
} httpc;

typedef struct httpc_wait {
    td_wait wait;
    td_sock *s;
    uint64_t timeout_ms;
    int want_body;
} httpc_wait;

static httpc *hc_of(llhttp_t *p) { return td_container_of(p, httpc, parser); }

static int add_text(httpc *h, const char *at, size_t len) {
    if (h->text.len + len > 65536 || td_buf_append(&h->text, at, len) != 0)
        return HPE_USER; /* a response head this large is not worth reading */
    return 0;
}

static int on_field(llhttp_t *p, const char *at, size_t len) {
    httpc *h = hc_of(p);
    if (!h->last_field) {
        td_http_header hd = {.name = (uint32_t)h->text.len};
        if (td_buf_append(&h->headers, &hd, sizeof hd) != 0)
            return HPE_USER;
        h->last_field = 1;
    }
    return add_text(h, at, len);
}

static td_http_header *last(httpc *h) { return (td_http_header *)(void *)(h->headers.data + h->headers.len) - 1; }

static int on_field_done(llhttp_t *p) {
    httpc *h = hc_of(p);
    td_http_header *hd = last(h);
    hd->name_len = (uint32_t)h->text.len - hd->name;
    td_http_lower(h->text.data + hd->name, hd->name_len);
    hd->value = (uint32_t)h->text.len;
    hd->value_len = 0;
    return 0;
}

static int on_value(llhttp_t *p, const char *at, size_t len) {
    httpc *h = hc_of(p);
    h->last_field = 0;
    return add_text(h, at, len);
}

static int on_value_done(llhttp_t *p) {
    httpc *h = hc_of(p);
    td_http_header *hd = last(h);
    hd->value_len = (uint32_t)td_http_trim_end(h->text.data + hd->value, h->text.len - hd->value);
    h->text.len = hd->value + hd->value_len;
    h->last_field = 0;
    return 0;
}

static int on_headers_done(llhttp_t *p) {
    httpc *h = hc_of(p);
    if (p->status_code >= 100 && p->status_code < 200 && p->status_code != 101)
        return 0; /* an interim response: the real one follows */
    h->head_done = 1;
    return h->skip_body ? 1 : 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len) {
    return td_buf_append(&hc_of(p)->body, at, len) == 0 ? 0 : HPE_USER;
}

static int on_message_done(llhttp_t *p) {
    httpc *h = hc_of(p);
    if (!h->head_done) {
        /* The end of an interim response: forget its headers. */
        h->text.len = 0;
        h->headers.len = 0;
        return 0;
    }
    h->message_done = 1;
    return HPE_PAUSED;
}

static const llhttp_settings_t client_settings = {
    .on_header_field = on_field,
    .on_header_field_complete = on_field_done,
    .on_header_value = on_value,
    .on_header_value_complete = on_value_done,
    .on_headers_complete = on_headers_done,
    .on_body = on_body,
    .on_message_complete = on_message_done,
};

static void free_httpc(void *p) {
    httpc *h = p;
    td_buf_free(&h->text);
    td_buf_free(&h->headers);
    td_buf_free(&h->body);
    free(h);
}

/* Feeds what the socket holds to the parser. Returns 0 or a TD_E code. */
static int parse(td_sock *s, httpc *h) {
    if (h->message_done || h->error)
        return h->error;
    if (s->in.len > 0) {
        h->got_bytes = 1;
        llhttp_errno_t err = llhttp_execute(&h->parser, s->in.data, s->in.len);
        size_t used = s->in.len;
        if (err == HPE_PAUSED) {
            used = (size_t)(llhttp_get_error_pos(&h->parser) - s->in.data);
            llhttp_resume(&h->parser);
        } else if (err != HPE_OK) {
            h->error = TD_EPROTO;
            return h->error;
        }
        td_buf_consume(&s->in, used);
    }
    if (!h->message_done && s->read_end) {
        /* The stream ended: fine for a body that ends with the connection,
         * "closed" for anything cut short. */
        if (s->read_end == UV_EOF && h->got_bytes && llhttp_finish(&h->parser) == HPE_OK && h->message_done)
            return 0;
        if (!h->message_done) {
            h->error = s->read_end == UV_EOF ? TD_ECLOSED : s->read_end;
            return h->error;
        }
    }
    return 0;
}

static int push_fail3(lua_State *L, int code, int got_bytes) {
    td_api_fail(L, code);
    lua_pushboolean(L, got_bytes);
    return 3;
}

/* status, headers */
static int push_head(lua_State *L, httpc *h) {
    lua_pushinteger(L, h->parser.status_code);
    td_api_push_headers(L, h->text.data, (const td_http_header *)(const void *)h->headers.data,
                        h->headers.len / sizeof(td_http_header));
    return 2;
}

/* A body piece; or false, keep_alive at the end. */
static int push_body(lua_State *L, httpc *h) {
    if (h->body.len > 0) {
        lua_pushlstring(L, h->body.data, h->body.len);
        h->body.len = 0;
        if (h->body.cap > 1 << 20)
            td_buf_free(&h->body);
        return 1;
    }
    lua_pushboolean(L, 0);
    lua_pushboolean(L, llhttp_should_keep_alive(&h->parser));
    return 2;
}

static int ready(httpc *h, int want_body) {
    if (h->error)
        return 1;
    return want_body ? (h->body.len > 0 || h->message_done) : h->head_done;
}

static int results(lua_State *L, httpc *h, int want_body, int status) {
    if (status == 0 && h->error)
        status = h->error;
    if (status != 0)
        return push_fail3(L, status, h->got_bytes);
    return want_body ? push_body(L, h) : push_head(L, h);
}

static void on_sock_event(td_sock *s, int status, void *ud) {
    httpc_wait *w = ud;
    httpc *h = s->owner_data;
    int rc;
    if (status == TD_ETIMEOUT || status == TD_ECLOSED) {
        rc = status;
    } else {
        /* New bytes (0) or the end of the stream (s->read_end is set). */
        rc = parse(s, h);
        if (!rc && !ready(h, w->want_body)) {
            if (status == 0) {
                td_sock_read(s, w->timeout_ms, on_sock_event, w);
                return;
            }
            rc = status;
        }
    }
    td_task *t = w->wait.task;
    lua_State *co = td_vm_wait_end(&w->wait);
    int n = results(co, h, w->want_body, rc);
    free(w);
    td_vm_resume(t, n);
}

static void cancel_httpc_wait(td_wait *wait) {
    httpc_wait *w = td_container_of(wait, httpc_wait, wait);
    td_sock_cancel(w->s);
    free(w);
}

static td_sock *check_sock(lua_State *L) {
    td_sock **box = luaL_checkudata(L, 1, "tendril.socket");
    return *box;
}

/* Shared by head and body: answer now if the buffer holds enough, else wait. */
static int read_response(lua_State *L, int want_body, const char *fname) {
    td_sock *s = check_sock(L);
    uint64_t timeout_ms = (uint64_t)(luaL_checknumber(L, 2) * 1000.0);
    httpc *h = s->owner_data;
    if (!h)
        return luaL_error(L, "%s: no response was started on this socket", fname);
    if (s->op != TD_SOCK_IDLE)
        return luaL_error(L, "%s: another coroutine is using this socket", fname);
    int rc = parse(s, h);
    if (rc || ready(h, want_body))
        return results(L, h, want_body, rc);
    if (!td_sock_usable(s))
        return push_fail3(L, TD_ECLOSED, h->got_bytes);
    td_task *t = td_vm_check_yieldable(L, fname);
    httpc_wait *w = malloc(sizeof *w);
    if (!w)
        return luaL_error(L, "%s: out of memory", fname);
    w->s = s;
    w->timeout_ms = timeout_ms ? timeout_ms : 1;
    w->want_body = want_body;
    td_vm_wait_begin(t, &w->wait, cancel_httpc_wait);
    /* td_sock_read never ends in the call for a usable, unended socket. */
    td_sock_read(s, w->timeout_ms, on_sock_event, w);
    return lua_yield(L, 0);
}

/* [-2, +0] httpc_begin(sock, skip_body): a new response starts on sock
 * (skip_body for the answer to HEAD). */
static int httpc_begin(lua_State *L) {
    td_sock *s = check_sock(L);
    httpc *h = s->owner_data;
    if (!h) {
        h = calloc(1, sizeof *h);
        if (!h)
            return luaL_error(L, "http: out of memory");
        s->owner_data = h;
        s->owner_free = free_httpc;
    }
    llhttp_init(&h->parser, HTTP_RESPONSE, &client_settings);
    h->text.len = h->headers.len = h->body.len = 0;
    h->last_field = 0;
    h->error = 0;
    h->head_done = h->message_done = h->got_bytes = 0;
    h->skip_body = lua_toboolean(L, 2);
    return 0;
}

/* [-2, +2|3] httpc_head(sock, timeout) -> status, headers | nil, err, got_bytes */
static int httpc_head(lua_State *L) { return read_response(L, 0, "http"); }

/* [-2, +1|2|3] httpc_body(sock, timeout) -> piece | false, keep_alive | nil, err */
static int httpc_body(lua_State *L) { return read_response(L, 1, "http"); }

/* [-2, +0|1] http_bad_header(name, value) -> nil | what is wrong: the
 * request side of the rules the server applies to its own answers. */
static int http_bad_header(lua_State *L) {
    size_t nlen, vlen;
    const char *name = lua_tolstring(L, 1, &nlen);
    const char *value = lua_tolstring(L, 2, &vlen);
    if (!name || !td_http_valid_name(name, nlen))
        lua_pushliteral(L, "not a valid header name");
    else if (!value)
        lua_pushliteral(L, "its value is not a string or a number");
    else if (!td_http_valid_value(value, vlen))
        lua_pushliteral(L, "its value holds CR, LF or NUL");
    else
        return 0;
    return 1;
}

/* [-1, +1] http_valid_method(method) -> boolean */
static int http_valid_method(lua_State *L) {
    size_t len;
    const char *m = luaL_checklstring(L, 1, &len);
    lua_pushboolean(L, td_http_valid_name(m, len));
    return 1;
}

void td_api_http_client_open(lua_State *L, td_vm *vm) {
    static const luaL_Reg funcs[] = {
        {"http_bad_header", http_bad_header},
        {"http_valid_method", http_valid_method},
        {"httpc_begin", httpc_begin},
        {"httpc_head", httpc_head},
        {"httpc_body", httpc_body},
        {NULL, NULL},
    };
    lua_pushlightuserdata(L, vm);
    luaL_setfuncs(L, funcs, 1);
}
