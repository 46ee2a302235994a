/* The HTTP client's response reader: llhttp parsing a td_sock's input into
 * a status, headers and body pieces, for lua/tendril/http.lua (which owns
 * requests, pools, redirects and retries).
 *
 * The reader (core/http_client.c) hangs off the socket (td_sock.owner_data)
 * and dies with it. A read waits the way every socket primitive does (see
 * api_tcp.c): a malloc'd record from the yield to the wake-up. */
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "errors.h"
#include "sock.h"

typedef struct httpc_wait {
    td_wait wait;
    td_sock *s;
    uint64_t timeout_ms;
    int want_body;
} httpc_wait;

static td_transport *transport; /* the loop's, set by td_api_http_client_open */

static void free_reader(void *p) {
    td_http_reader_free(p);
    free(p);
}

/* Feeds what the socket holds to the reader. Returns 0 or a TD_E code. */
static int parse(td_sock *s, td_http_reader *r) {
    if (r->message_done || r->error)
        return r->error;
    if (s->in.len > 0) {
        ssize_t used = td_http_reader_feed(r, s->in.data, s->in.len);
        if (used < 0)
            return (int)used;
        td_sock_consume(s, (size_t)used);
    }
    if (!r->message_done && s->read_end)
        return td_http_reader_eof(r, s->read_end);
    return 0;
}

static int push_fail3(lua_State *L, int code, int got_bytes) {
    td_api_fail(L, code);
    lua_pushboolean(L, got_bytes);
    return 3;
}

/* status, headers */
static int push_head(lua_State *L, td_http_reader *r) {
    lua_pushinteger(L, r->parser.status_code);
    td_api_push_headers(L, r->fields.text.data, td_http_fields_at(&r->fields), td_http_fields_count(&r->fields));
    td_api_set_cookie_list(L, r->fields.text.data, td_http_fields_at(&r->fields), td_http_fields_count(&r->fields));
    return 2;
}

/* A body piece (and true, keep_alive when it ends the message); or false,
 * keep_alive at the end. The buffer goes back to malloc once emptied if it
 * grew large: a reader between pieces holds next to nothing. */
static int push_body(lua_State *L, td_http_reader *r) {
    if (r->body.len > 0) {
        lua_pushlstring(L, r->body.data, r->body.len);
        r->body.len = 0;
        if (r->body.cap > 16384)
            td_buf_free(&r->body);
        if (!r->message_done)
            return 1;
        lua_pushboolean(L, 1);
        lua_pushboolean(L, llhttp_should_keep_alive(&r->parser));
        return 3;
    }
    lua_pushboolean(L, 0);
    lua_pushboolean(L, llhttp_should_keep_alive(&r->parser));
    return 2;
}

static int ready(td_http_reader *r, int want_body) {
    if (r->error)
        return 1;
    return want_body ? (r->body.len > 0 || r->message_done) : r->head_done;
}

/* The reader is gone with a socket that closed: only the status is left. */
static int results(lua_State *L, td_http_reader *r, int want_body, int status) {
    if (status == 0 && (!r || r->error))
        status = r ? r->error : TD_ECLOSED;
    if (status != 0)
        return push_fail3(L, status, r && r->got_bytes);
    return want_body ? push_body(L, r) : push_head(L, r);
}

static void on_sock_event(td_sock *s, int status, void *ud) {
    httpc_wait *w = ud;
    td_http_reader *r = s->owner_data;
    int rc;
    if (status == TD_ETIMEOUT || status == TD_ECLOSED || !r) {
        rc = status ? status : TD_ECLOSED;
    } else {
        /* New bytes (0) or the end of the stream (s->read_end is set). */
        rc = parse(s, r);
        if (!rc && !ready(r, w->want_body)) {
            if (status == 0) {
                td_sock_read(s, w->timeout_ms, on_sock_event, w);
                return;
            }
            rc = status;
        }
    }
    td_task *t = w->wait.task;
    lua_State *co = td_vm_wait_end(&w->wait);
    /* A closing socket still holds its reader until its on_close ends; got_bytes is read now. */
    int n = results(co, s->owner_data, w->want_body, rc);
    free(w);
    td_vm_resume(t, n);
}

static void cancel_httpc_wait(td_wait *wait) {
    httpc_wait *w = td_container_of(wait, httpc_wait, wait);
    td_sock_cancel(w->s);
    free(w);
}

/* The socket a "tendril.socket" names, or NULL once it closed. */
static td_sock *check_sock(lua_State *L) {
    td_api_socket *box = luaL_checkudata(L, 1, "tendril.socket");
    return td_sock_find(transport, box->slot, box->serial);
}

/* Shared by head and body: answer now if the buffer holds enough, else wait. */
static int read_response(lua_State *L, int want_body, const char *fname) {
    td_sock *s = check_sock(L);
    uint64_t timeout_ms = (uint64_t)(luaL_checknumber(L, 2) * 1000.0);
    if (!s)
        return push_fail3(L, TD_ECLOSED, 0);
    td_http_reader *r = s->owner_data;
    if (!r)
        return luaL_error(L, "%s: no response was started on this socket", fname);
    if (s->op != TD_SOCK_IDLE)
        return luaL_error(L, "%s: another coroutine is using this socket", fname);
    int rc = parse(s, r);
    if (rc || ready(r, want_body))
        return results(L, r, want_body, rc);
    if (!td_sock_usable(s))
        return push_fail3(L, TD_ECLOSED, r->got_bytes);
    td_task *t = td_api_wait_start(L, fname, 0);
    if (!t)
        return 2;
    httpc_wait *w = malloc(sizeof *w);
    if (!w)
        return luaL_error(L, "%s: out of memory", fname);
    w->s = s;
    w->timeout_ms = timeout_ms ? timeout_ms : 1;
    w->want_body = want_body;
    td_vm_wait_begin(t, &w->wait, cancel_httpc_wait, 0, TD_WAIT_HTTP);
    /* td_sock_read never ends in the call for a usable, unended socket. */
    td_sock_read(s, w->timeout_ms, on_sock_event, w);
    return lua_yield(L, 0);
}

/* [-2, +0] httpc_begin(sock, skip_body): a new response starts on sock
 * (skip_body for the answer to HEAD). */
static int httpc_begin(lua_State *L) {
    td_sock *s = check_sock(L);
    /* The socket is tendril.http's from now on (it may have come from the
     * pool tcp.connect shares): its waits count as http. */
    ((td_api_socket *)lua_touserdata(L, 1))->kind = TD_WAIT_HTTP;
    if (!s)
        return 0; /* the read that follows says "closed" */
    td_http_reader *r = s->owner_data;
    if (!r) {
        r = calloc(1, sizeof *r);
        if (!r)
            return luaL_error(L, "http: out of memory");
        s->owner_data = r;
        s->owner_free = free_reader;
    }
    td_http_reader_begin(r, lua_toboolean(L, 2));
    return 0;
}

/* [-2, +2|3] httpc_head(sock, timeout) -> status, headers | nil, err, got_bytes */
static int httpc_head(lua_State *L) { return read_response(L, 0, "http"); }

/* [-2, +1|2|3] httpc_body(sock, timeout) -> piece [, true, keep_alive] |
 * false, keep_alive | nil, err */
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

void td_api_http_client_open(lua_State *L, td_vm *vm, td_transport *tp) {
    transport = tp;
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
