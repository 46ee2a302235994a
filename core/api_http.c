/* The request and response primitives behind lua/tendril/server.lua, and
 * the dispatch of each request to a pooled task.
 *
 * Lua holds a request as its connection's handle (slot, serial); every
 * primitive finds the live request again (td_http_find), so a handle kept
 * after its request ended, or whose client went away, answers nil,
 * "closed" and never touches another request. Waits (for the body, for
 * output to drain) own a small record from the yield to the wake-up; the
 * request calls its waiters when it ends or its connection closes, so none
 * is left behind.
 *
 * Output: a handler's write waits (res_room) while more than the
 * high-water mark is unsent, before the chunk is taken; a chunk of
 * TD_API_WRITE_BY_REF bytes or more is not copied but written from the Lua
 * string, which a registry reference keeps alive until libuv is done. */
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>

#include "tls.h"
#include <string.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <errno.h>
#include <limits.h>
#include <dirent.h>
#include <linux/openat2.h>
#include <sys/syscall.h>

#include "api.h"
#include "errors.h"

enum { WAIT_DRAIN, WAIT_BODY, WAIT_PIECE };

typedef struct http_wait {
    td_wait wait;
    td_http_waiter waiter;
    int kind;   /* WAIT_* */
    size_t max; /* WAIT_PIECE: the largest piece wanted */
} http_wait;

static td_http_server *server;
static lua_State *main_L; /* for the references of chunks written by reference; NULL after teardown */
static uint64_t request_timeout_ms;
static int time_requests = 1; /* td_api_http_set_timings */
/* Registry reference of the table of method names (by llhttp's number) and
 * versions ("1.1" at -1, "1.0" at -2). */
static int names_ref = LUA_NOREF;

static td_http_conn *live_conn(lua_State *L) {
    return td_http_find(server, (uint32_t)lua_tointeger(L, 1), (uint32_t)lua_tointeger(L, 2));
}

/* ---- dispatch ---- */

/* A request task names its request by handle: t->data holds the slot,
 * t->serial the serial. */
static td_http_conn *task_conn(td_task *t) { return td_http_find(server, (uint32_t)(uintptr_t)t->data, t->serial); }

static void request_task_end(td_task *t, int status) {
    /* The driver itself failed (its handler's errors are caught inside). */
    td_http_conn *hc = task_conn(t);
    if (hc)
        td_http_fail(hc);
}

static void describe_request(td_task *t, char *buf, size_t size) {
    td_http_conn *hc = task_conn(t);
    size_t len;
    if (!hc) {
        snprintf(buf, size, "a request (answered already)");
        return;
    }
    const char *target = td_http_target(hc, &len);
    snprintf(buf, size, "%s %.*s", td_http_method(hc), (int)(len > 200 ? 200 : len), target);
}

void td_api_http_dispatch(td_http_conn *hc, void *ud) {
    td_vm *vm = ud;
    td_task *t = td_vm_task_pooled(vm, request_task_end);
    if (!t) {
        td_http_fail(hc);
        return;
    }
    uint32_t serial = td_conn_serial(&hc->conn);
    t->data = (void *)(uintptr_t)hc->conn.slot;
    t->serial = serial;
    t->describe = describe_request;
    /* The request's fate: its handler and the threads it spawns. */
    td_scope *scope = td_vm_scope_open(t);
    if (scope && request_timeout_ms)
        td_vm_scope_deadline(scope, request_timeout_ms);
    hc->rq->user = scope;
    if (scope) {
        scope->ref = &hc->rq->user; /* a scope that ends first (its task ended) lets go */
        if (time_requests)
            scope->timings = &hc->rq->timings;
    }
    /* The request line comes along: nearly every handler reads it, and one
     * C call fewer per request is one trace stitch fewer. Method and
     * version strings are kept (names_ref), not interned per request. */
    size_t len;
    const char *target = td_http_target(hc, &len);
    lua_State *co = t->co;
    lua_pushinteger(co, hc->conn.slot);
    lua_pushinteger(co, serial);
    lua_rawgeti(co, LUA_REGISTRYINDEX, names_ref);
    lua_rawgeti(co, -1, hc->rq->parser.method);
    lua_pushlstring(co, target, len);
    lua_rawgeti(co, -3, td_http_minor(hc) ? -1 : -2);
    lua_remove(co, -4);
    td_vm_resume(t, 5);
}

/* The request is over: its tasks run on detached (the response was
 * finished), or their waits fail now and later (it was not). */
void td_api_http_over(td_http_conn *hc, int status, void *ud) {
    (void)ud;
    td_scope *scope = hc->rq ? hc->rq->user : NULL;
    if (!scope)
        return;
    hc->rq->user = NULL;
    if (status == 0)
        td_vm_scope_close(scope);
    else
        td_vm_scope_kill(scope, status);
}

/* ---- waits ---- */

/* A piece of the body for Lua: the piece, or nil when the body is over. */
static int push_piece(lua_State *L, const char *data, size_t len) {
    if (len > 0)
        lua_pushlstring(L, data, len);
    else
        lua_pushnil(L);
    return 1;
}

static void on_http_ready(td_http_conn *hc, int status, void *ud) {
    http_wait *hw = ud;
    const char *data = NULL;
    size_t len = 0;
    if (hw->kind == WAIT_PIECE && status == 0) {
        status = td_http_body_read(hc, hw->max, &data, &len);
        if (status == 1) {
            /* Another reader took the piece: wait for the next. */
            td_http_wait_body(hc, &hw->waiter);
            return;
        }
    }
    td_task *t = hw->wait.task;
    lua_State *co = td_vm_wait_end(&hw->wait);
    int nres;
    if (hw->kind == WAIT_PIECE && status == 0) {
        nres = push_piece(co, data, len);
    } else if (hw->kind == WAIT_BODY && status == 0) {
        td_http_body(hc, &data, &len);
        lua_pushlstring(co, data, len);
        nres = 1;
    } else if (status == 0) {
        lua_pushboolean(co, 1);
        nres = 1;
    } else {
        nres = td_api_fail(co, status);
    }
    free(hw);
    td_vm_resume(t, nres);
}

static void cancel_http_wait(td_wait *w) {
    http_wait *hw = td_container_of(w, http_wait, wait);
    td_http_unwait(&hw->waiter);
    free(hw);
}

/* Writing the answer and reading the body in pieces are transfers with
 * the client: the request's deadline leaves them alone (the send and body
 * timeouts watch them). Reading the body whole is not: it is bounded by
 * --max-body-bytes and the request's deadline. */
static int wait_for(lua_State *L, td_http_conn *hc, int kind, size_t max, const char *fname) {
    int transfer = kind != WAIT_BODY;
    td_task *t = td_api_wait_start(L, fname, transfer);
    if (!t)
        return 2;
    http_wait *hw = calloc(1, sizeof *hw);
    if (!hw)
        return luaL_error(L, "%s: out of memory", fname);
    hw->kind = kind;
    hw->max = max;
    hw->waiter.cb = on_http_ready;
    hw->waiter.ud = hw;
    td_vm_wait_begin(t, &hw->wait, cancel_http_wait, transfer, TD_WAIT_BODY);
    if (kind != WAIT_DRAIN)
        td_http_wait_body(hc, &hw->waiter);
    else
        td_http_wait_drain(hc, &hw->waiter);
    return lua_yield(L, 0);
}

/* ---- the request ---- */


typedef struct {
    const char *name;
    uint32_t len, index;
} header_ref;

static int by_name_then_index(const void *a, const void *b) {
    const header_ref *x = a, *y = b;
    uint32_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->name, y->name, n);
    if (c == 0)
        c = x->len == y->len ? 0 : x->len < y->len ? -1 : 1;
    if (c == 0)
        c = x->index < y->index ? -1 : 1;
    return c;
}

/* Repeated fields: sorted by name (in arrival order within a name), each
 * name's values joined with ", " in one buffer. One pass, however many
 * repeats a client sends. */
static void push_joined(lua_State *L, const char *text, const td_http_header *h, size_t n) {
    header_ref *refs = lua_newuserdata(L, n * sizeof *refs);
    for (size_t i = 0; i < n; i++)
        refs[i] = (header_ref){text + h[i].name, h[i].name_len, (uint32_t)i};
    qsort(refs, n, sizeof *refs, by_name_then_index);
    lua_createtable(L, 0, (int)n);
    for (size_t i = 0; i < n;) {
        size_t j = i + 1;
        while (j < n && refs[j].len == refs[i].len && memcmp(refs[j].name, refs[i].name, refs[i].len) == 0)
            j++;
        lua_pushlstring(L, refs[i].name, refs[i].len);
        luaL_Buffer b;
        luaL_buffinit(L, &b);
        for (size_t k = i; k < j; k++) {
            const td_http_header *f = &h[refs[k].index];
            if (k > i)
                luaL_addlstring(&b, ", ", 2);
            luaL_addlstring(&b, text + f->value, f->value_len);
        }
        luaL_pushresult(&b);
        lua_rawset(L, -3);
        i = j;
    }
    lua_remove(L, -2);
}

void td_api_push_headers(lua_State *L, const char *text, const td_http_header *h, size_t n) {
    lua_createtable(L, 0, (int)n);
    for (size_t i = 0; i < n; i++) {
        lua_pushlstring(L, text + h[i].name, h[i].name_len);
        lua_pushvalue(L, -1);
        lua_rawget(L, -3);
        if (!lua_isnil(L, -1)) {
            /* A repeat: start again, joining (rare). */
            lua_pop(L, 3);
            push_joined(L, text, h, n);
            return;
        }
        lua_pop(L, 1);
        lua_pushlstring(L, text + h[i].value, h[i].value_len);
        lua_rawset(L, -3);
    }
}

void td_api_set_cookie_list(lua_State *L, const char *text, const td_http_header *h, size_t n) {
    static const char name[] = "set-cookie";
    int count = 0;
    for (size_t i = 0; i < n; i++) {
        if (h[i].name_len != sizeof name - 1 || memcmp(text + h[i].name, name, sizeof name - 1) != 0)
            continue;
        if (count == 0) {
            lua_pushlstring(L, name, sizeof name - 1);
            lua_createtable(L, 1, 0);
        }
        lua_pushlstring(L, text + h[i].value, h[i].value_len);
        lua_rawseti(L, -2, ++count);
    }
    if (count > 0)
        lua_rawset(L, -3);
}

/* [-2, +1] req_headers(slot, serial) -> {name = value} | nil */
static int req_headers(lua_State *L) {
    td_http_conn *hc = live_conn(L);
    if (!hc)
        return 0;
    const td_http_fields *f = &hc->rq->fields;
    td_api_push_headers(L, f->text.data, td_http_fields_at(f), td_http_fields_count(f));
    return 1;
}

/* [-(2+n), +n] req_header(slot, serial, name...) -> value | nil, ... for
 * each lower-case name (repeated fields joined with ", "), without making
 * the table of every header (a WebSocket handshake reads a few and then
 * lives long). */
static int req_header(lua_State *L) {
    td_http_conn *hc = live_conn(L);
    int n = lua_gettop(L) - 2;
    if (!hc)
        return 0;
    const td_http_fields *f = &hc->rq->fields;
    const td_http_header *h = td_http_fields_at(f);
    size_t count = td_http_fields_count(f);
    luaL_checkstack(L, n, "req_header");
    for (int i = 3; i <= n + 2; i++) {
        size_t nlen;
        const char *name = luaL_checklstring(L, i, &nlen);
        luaL_Buffer b;
        int found = 0;
        luaL_buffinit(L, &b);
        for (size_t j = 0; j < count; j++) {
            if (h[j].name_len != nlen || memcmp(f->text.data + h[j].name, name, nlen) != 0)
                continue;
            if (found++)
                luaL_addlstring(&b, ", ", 2);
            luaL_addlstring(&b, f->text.data + h[j].value, h[j].value_len);
        }
        if (found)
            luaL_pushresult(&b);
        else
            lua_pushnil(L);
    }
    return n;
}

/* [-2, +1] req_remote(slot, serial) -> address | nil */
static int req_remote(lua_State *L) {
    td_http_conn *hc = live_conn(L);
    char addr[64];
    if (!hc || td_conn_peer(&hc->conn, addr, sizeof addr) != 0)
        return 0;
    lua_pushstring(L, addr);
    return 1;
}

/* [-2, +1|3] req_tls(slot, serial) -> version, cipher, server_name | false
 * (a plain connection) | nil (the request is over) */
static int req_tls(lua_State *L) {
    td_http_conn *hc = live_conn(L);
    if (!hc)
        return 0;
    td_tls *t = hc->conn.tls;
    if (!t) {
        lua_pushboolean(L, 0);
        return 1;
    }
    lua_pushstring(L, td_tls_version(t));
    lua_pushstring(L, td_tls_cipher(t));
    const char *name = td_tls_server_name(t);
    if (name)
        lua_pushstring(L, name);
    else
        lua_pushnil(L);
    return 3;
}

/* [-2, +1|2] req_body(slot, serial) -> body | false (read in pieces
 * already) | nil, err; may yield */
static int req_body(lua_State *L) {
    td_http_conn *hc = live_conn(L);
    if (!hc)
        return td_api_fail(L, TD_ECLOSED);
    const char *data;
    size_t len;
    int st = td_http_body(hc, &data, &len);
    if (st == 0) {
        lua_pushlstring(L, data, len);
        return 1;
    }
    if (st == TD_EBADARG) {
        lua_pushboolean(L, 0);
        return 1;
    }
    if (st < 0)
        return td_api_fail(L, st);
    return wait_for(L, hc, WAIT_BODY, 0, "req:body");
}

/* [-3, +1|2] req_read(slot, serial, max) -> piece | nil (the body is over)
 * | false (read whole already) | nil, err; may yield */
static int req_read(lua_State *L) {
    td_http_conn *hc = live_conn(L);
    if (!hc)
        return td_api_fail(L, TD_ECLOSED);
    size_t max = (size_t)lua_tonumber(L, 3);
    const char *data;
    size_t len;
    int st = td_http_body_read(hc, max, &data, &len);
    if (st == 0)
        return push_piece(L, data, len);
    if (st == TD_EBADARG) {
        lua_pushboolean(L, 0);
        return 1;
    }
    if (st < 0)
        return td_api_fail(L, st);
    return wait_for(L, hc, WAIT_PIECE, max, "req:read");
}

/* [-3, +1|2] req_body_limit(slot, serial, bytes) -> true | false (the body
 * is being read already) | nil, "closed" */
static int req_body_limit(lua_State *L) {
    td_http_conn *hc = live_conn(L);
    if (!hc)
        return td_api_fail(L, TD_ECLOSED);
    /* Past 2^64 the conversion is undefined: that is no limit at all. */
    lua_Number n = lua_tonumber(L, 3);
    uint64_t limit = n >= 18446744073709551615.0 ? UINT64_MAX : (uint64_t)n;
    lua_pushboolean(L, td_http_set_body_limit(hc, limit) == 0);
    return 1;
}

/* ---- the response ---- */

static int add_header(lua_State *L, td_http_conn *hc, int name_idx, int value_idx) {
    size_t nlen, vlen;
    const char *name = lua_tolstring(L, name_idx, &nlen);
    const char *value = lua_tolstring(L, value_idx, &vlen);
    if (!name || !value)
        return TD_EBADARG;
    return td_http_head_add(hc, name, nlen, value, vlen);
}

/* Sends the head: headers is a flat array {name, value, ...} where a value
 * is a string, a number, an array of them (one header each), or false
 * (removed); or true: Content-Type text/plain alone. Raises on a header
 * that cannot be sent. */
static int send_head(lua_State *L, td_http_conn *hc, int status, int headers_idx, int64_t length) {
    static const char text_plain[] = "Content-Type: text/plain\r\n";
    size_t mark = td_http_head_mark(hc);
    int rc = td_http_head_begin(hc, status);
    if (rc)
        return rc;
    if (lua_type(L, headers_idx) == LUA_TBOOLEAN) {
        if (lua_toboolean(L, headers_idx))
            rc = td_http_head_add_line(hc, text_plain, sizeof text_plain - 1);
    } else if (lua_istable(L, headers_idx)) {
        int n = (int)lua_objlen(L, headers_idx);
        for (int i = 1; i + 1 <= n && rc == 0; i += 2) {
            lua_rawgeti(L, headers_idx, i);
            lua_rawgeti(L, headers_idx, i + 1);
            if (lua_istable(L, -1)) {
                int m = (int)lua_objlen(L, -1);
                for (int j = 1; j <= m && rc == 0; j++) {
                    lua_rawgeti(L, -1, j);
                    rc = add_header(L, hc, -3, -1);
                    lua_pop(L, 1);
                }
            } else if (lua_toboolean(L, -1)) {
                rc = add_header(L, hc, -2, -1);
            }
            lua_pop(L, 2);
        }
    }
    if (rc == 0)
        rc = td_http_head_end(hc, length);
    if (rc == TD_EBADARG) {
        td_http_head_abort(hc, mark);
        return luaL_error(L, "res: a header name or value is not a string or holds CR, LF or NUL");
    }
    return rc;
}

void *td_api_ref_string(lua_State *L, int idx) {
    lua_pushvalue(L, idx);
    return (void *)(intptr_t)luaL_ref(L, LUA_REGISTRYINDEX);
}

/* libuv is done with a string written by reference. */
void td_api_release_ref(void *ud) {
    if (main_L)
        luaL_unref(main_L, LUA_REGISTRYINDEX, (int)(intptr_t)ud);
}

void td_api_unref_string(lua_State *L, void *ud) { luaL_unref(L, LUA_REGISTRYINDEX, (int)(intptr_t)ud); }

/* Writes the string at idx, by reference when it is large. */
static int write_chunk(lua_State *L, td_http_conn *hc, int idx, const char *chunk, size_t len) {
    if (len < TD_API_WRITE_BY_REF)
        return td_http_write(hc, chunk, len);
    void *ref = td_api_ref_string(L, idx);
    int rc = td_http_write_ref(hc, chunk, len, td_api_release_ref, ref);
    if (rc != 1)
        td_api_unref_string(L, ref);
    return rc < 0 ? rc : 0;
}

/* [-6, +1|2] res_send(slot, serial, status, headers, chunk, final)
 * -> true | nil, err. Sends the head first if it has not gone; `final`
 * ends the response (with a Content-Length when the head goes with it).
 * Never waits: a writer calls res_room first. */
static int res_send(lua_State *L) {
    td_http_conn *hc = live_conn(L);
    if (!hc)
        return td_api_fail(L, TD_ECLOSED);
    size_t len = 0;
    const char *chunk = lua_tolstring(L, 5, &len);
    int final = lua_toboolean(L, 6);
    int rc = 0;
    size_t mark = td_http_head_mark(hc);
    int fresh = !hc->rq->head_sent;
    if (fresh) {
        int status = (int)luaL_optinteger(L, 3, 200);
        rc = send_head(L, hc, status, 4, final ? (int64_t)len : -1);
    }
    if (rc == 0 && chunk)
        rc = write_chunk(L, hc, 5, chunk, len);
    if (rc == TD_ETOOLARGE && fresh) {
        /* The piece passes the handler's Content-Length: the head it came
         * with is taken back, and the handler can still answer. */
        td_http_head_abort(hc, mark);
        hc->rq->head_sent = 0;
        return td_api_fail(L, rc);
    }
    if (rc) {
        /* A final answer that cannot go (out of memory) still ends the
         * request: nobody would end it otherwise. */
        if (final && rc != TD_ECLOSED)
            td_http_fail(hc);
        return td_api_fail(L, rc);
    }
    if (final) {
        if (td_http_short(hc)) {
            /* The client would read the next answer as the rest of this
             * body: the connection ends with it. The caller logs it. */
            uint64_t sent = hc->rq->body_sent, declared = hc->rq->declared_length;
            hc->rq->close_after = 1;
            td_http_response_end(hc);
            lua_pushboolean(L, 1);
            lua_pushnumber(L, (lua_Number)sent);
            lua_pushnumber(L, (lua_Number)declared);
            return 3;
        }
        td_http_response_end(hc);
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* [-2, +1|2] req_timings(slot, serial) -> {lua =, http =, ..., total =}
 * (seconds) | nil, "closed": where the request's time went so far. */
static int req_timings(lua_State *L) {
    td_http_conn *hc = live_conn(L);
    if (!hc)
        return td_api_fail(L, TD_ECLOSED);
    uint64_t now = uv_hrtime();
    td_vm_account(lua_getexdata(L), now);
    const td_timings *tm = &hc->rq->timings;
    lua_createtable(L, 0, TD_WAIT_KINDS + 2);
    lua_pushnumber(L, (lua_Number)tm->lua_ns / 1e9);
    lua_setfield(L, -2, "lua");
    for (int k = 0; k < TD_WAIT_KINDS; k++) {
        lua_pushnumber(L, (lua_Number)tm->wait_ns[k] / 1e9);
        lua_setfield(L, -2, td_wait_kind_name(k));
    }
    lua_pushnumber(L, (lua_Number)(now - hc->rq->started) / 1e9);
    lua_setfield(L, -2, "total");
    return 1;
}

/* [-2, +1|2] res_room(slot, serial) -> true | nil, err; may yield while
 * more than the high-water mark is unsent (a slower client than handler). */
static int res_room(lua_State *L) {
    td_http_conn *hc = live_conn(L);
    if (!hc)
        return td_api_fail(L, TD_ECLOSED);
    if (td_http_unsent(hc) > TD_HTTP_HIGH_WATER) {
        td_conn_flush(&hc->conn);
        if (!live_conn(L)) /* the flush failed and closed it */
            return td_api_fail(L, TD_ECLOSED);
        if (td_http_unsent(hc) > TD_HTTP_HIGH_WATER)
            return wait_for(L, hc, WAIT_DRAIN, 0, "res:write");
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* ---- files ---- */

/* A file to send, as a userdata that closes its descriptor when collected
 * (a handler that fails mid-send leaks nothing). The descriptor is the
 * userdata's alone; -1 once closed. */
#define FILE_MT "tendril.file"

static int *check_file(lua_State *L, int idx) {
    int *fd = luaL_checkudata(L, idx, FILE_MT);
    if (*fd < 0)
        luaL_error(L, "res:sendfile: the file was closed");
    return fd;
}

static int file_gc(lua_State *L) {
    int *fd = luaL_checkudata(L, 1, FILE_MT);
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
    return 0;
}

/* Whether the file open at fd lies under the directory `within` (a real
 * path, no trailing slash): asked of the descriptor, not the name, so a
 * symbolic link swapped in after the open cannot fool it. */
static int fd_within(int fd, const char *within) {
    char link[64], real[PATH_MAX];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, real, sizeof real - 1);
    if (n < 0)
        return 0;
    real[n] = 0;
    size_t wl = strlen(within);
    if (wl == 1 && within[0] == '/')
        return 1;
    return strncmp(real, within, wl) == 0 && (real[wl] == '/' || real[wl] == 0);
}

/* [-1, +1|2] realpath(path) -> the absolute path without symbolic links |
 * nil, err. */
static int api_realpath(lua_State *L) {
    char real[PATH_MAX];
    if (!realpath(luaL_checkstring(L, 1), real))
        return td_api_fail(L, -errno);
    lua_pushstring(L, real);
    return 1;
}

/* A descriptor for fd, which the userdata now owns (file_gc closes it). */
static void push_file(lua_State *L, int fd) {
    int *ud = lua_newuserdata(L, sizeof *ud);
    *ud = fd;
    luaL_getmetatable(L, FILE_MT);
    lua_setmetatable(L, -2);
}

/* [-1, +1|2] dir_open(path) -> dir | nil, err: a directory to open files
 * under (file_open's dir). */
static int dir_open(lua_State *L) {
    int fd = open(luaL_checkstring(L, 1), O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return td_api_fail(L, -errno);
    push_file(L, fd);
    return 1;
}

static int open_confined(lua_State *L, const char *path, int w, int flags);

/* The largest directory listed: a bound on one answer's work and size. */
#define TD_DIR_LIST_MAX 10000

/* [-4, +1|2] dir_list(path[, within[, dir, rel]]) -> { "name", "sub/", ... }
 * | nil, err: a directory's entries (subdirectories end in "/"; "." and ".."
 * left out), confined as file_open's path; at most TD_DIR_LIST_MAX. On the
 * loop thread, as file_open. */
static int dir_list(lua_State *L) {
    const char *path = luaL_checkstring(L, 1);
    int fd = open_confined(L, path, 2, O_DIRECTORY);
    if (fd < 0)
        return td_api_fail(L, fd);
    DIR *d = fdopendir(fd);
    if (!d) {
        int err = -errno;
        close(fd);
        return td_api_fail(L, err);
    }
    lua_newtable(L);
    int n = 0;
    struct dirent *e;
    while (n < TD_DIR_LIST_MAX && (e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        int is_dir = e->d_type == DT_DIR;
        if (e->d_type == DT_UNKNOWN || e->d_type == DT_LNK) {
            struct stat st;
            is_dir = fstatat(fd, e->d_name, &st, 0) == 0 && S_ISDIR(st.st_mode);
        }
        lua_pushstring(L, e->d_name);
        if (is_dir) {
            lua_pushliteral(L, "/");
            lua_concat(L, 2);
        }
        lua_rawseti(L, -2, ++n);
    }
    closedir(d);
    return 1;
}

/* Opens path (flags added to O_RDONLY | O_CLOEXEC), confined under `within`
 * when the Lua arguments give it (within at index w, then dir and rel):
 * openat2 under dir at once; what it will not open that way (an absolute
 * link, an old kernel) takes the open-then-check path. The descriptor, or
 * a negative errno (-ENOENT for a path that leaves). */
static int open_confined(lua_State *L, const char *path, int w, int flags) {
    const char *within = luaL_optstring(L, w, NULL);
    int fd = -1;
    if (within && lua_isuserdata(L, w + 1)) {
        struct open_how how = {
            .flags = (uint64_t)(O_RDONLY | O_CLOEXEC | flags),
            .resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS,
        };
        fd = (int)syscall(SYS_openat2, *check_file(L, w + 1), luaL_checkstring(L, w + 2), &how, sizeof how);
        if (fd < 0 && errno != EXDEV && errno != ENOSYS && errno != EPERM && errno != ELOOP)
            return -errno;
    }
    if (fd < 0) {
        fd = open(path, O_RDONLY | O_CLOEXEC | flags);
        if (fd < 0)
            return -errno;
        if (within && !fd_within(fd, within)) {
            close(fd);
            return -ENOENT;
        }
    }
    return fd;
}

/* [-4, +4|2] file_open(path[, within[, dir, rel]]) -> file, size, mtime,
 * kind | nil, err. With dir (dir_open(within)) and rel (path under it),
 * the path is opened confined (open_confined). open and fstat on the loop thread: a first version, cheap for
 * local files (the thread pool is what tendril.fs uses for whole reads).
 * kind: "file", "directory" or "other"; only a file stays open. within (a
 * real path): a file that is not under it (a symbolic link out) is
 * "no such file or directory". */
static int file_open(lua_State *L) {
    size_t plen;
    const char *path = luaL_checklstring(L, 1, &plen);
    if (strlen(path) != plen)
        return td_api_fail(L, UV_ENOENT);
    int fd = open_confined(L, path, 2, O_NONBLOCK);
    if (fd < 0)
        return td_api_fail(L, fd);
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int err = -errno;
        close(fd);
        return td_api_fail(L, err);
    }
    const char *kind = S_ISREG(st.st_mode) ? "file" : S_ISDIR(st.st_mode) ? "directory" : "other";
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        lua_pushboolean(L, 0);
    } else {
        push_file(L, fd);
    }
    lua_pushnumber(L, (lua_Number)st.st_size);
    lua_pushnumber(L, (lua_Number)st.st_mtime);
    lua_pushstring(L, kind);
    return 4;
}

/* [-5, +1|2] res_sendfile(slot, serial, file, offset, length) -> sent |
 * nil, err. Sends what the socket takes now of the file's bytes
 * [offset, offset + length), after the head (which must have gone, with a
 * Content-Length). Never waits: the caller waits with res_drain. A file
 * that shrank ends the connection (the client has part of a body). */
static int res_sendfile(lua_State *L) {
    td_http_conn *hc = live_conn(L);
    int fd = *check_file(L, 3);
    int64_t off = (int64_t)luaL_checknumber(L, 4);
    uint64_t len = (uint64_t)luaL_checknumber(L, 5);
    if (!hc || !hc->rq->head_sent)
        return td_api_fail(L, TD_ECLOSED);
    td_http_req *rq = hc->rq;
    if (rq->no_body || len == 0) {
        lua_pushnumber(L, (lua_Number)len);
        return 1;
    }
    if (rq->chunked || !rq->user_length || rq->body_sent + len > rq->declared_length)
        return luaL_error(L, "res:sendfile: the head must declare the file's Content-Length");
    int64_t n = td_conn_send_file(&hc->conn, fd, &off, len);
    if (n == TD_ESHORT) {
        td_http_fail(hc);
        return td_api_fail(L, TD_ESHORT);
    }
    if (n < 0)
        return td_api_fail(L, (int)n);
    rq->body_sent += (uint64_t)n;
    lua_pushnumber(L, (lua_Number)n);
    return 1;
}

/* [-2, +1|2] res_drain(slot, serial) -> true | nil, err; yields until the
 * client took what is unsent (down to the low-water mark), if anything
 * is. A transfer: outside the request's deadline, under the send
 * timeout. */
static int res_drain(lua_State *L) {
    td_http_conn *hc = live_conn(L);
    if (!hc)
        return td_api_fail(L, TD_ECLOSED);
    if (td_http_unsent(hc) > 0)
        return wait_for(L, hc, WAIT_DRAIN, 0, "res:sendfile");
    lua_pushboolean(L, 1);
    return 1;
}

/* [-3, +0] req_deadline(slot, serial, seconds | nil): the request's waits
 * fail with "timeout" that many seconds from now; nil: no deadline. */
static int req_deadline(lua_State *L) {
    td_http_conn *hc = live_conn(L);
    if (!hc || !hc->rq->user)
        return 0;
    double seconds = lua_isnoneornil(L, 3) ? 0 : luaL_checknumber(L, 3);
    uint64_t ms = seconds > 0 ? (seconds > 1e9 ? (uint64_t)1e12 : (uint64_t)(seconds * 1000.0)) : 0;
    if (!lua_isnoneornil(L, 3) && ms == 0)
        ms = 1; /* a deadline of 0 s has passed already */
    td_vm_scope_deadline(hc->rq->user, ms);
    return 0;
}

/* [-2, +1] req_stream(slot, serial) -> draining: the response is an
 * endless stream (Server-Sent Events): no deadline, and a shutdown ends
 * it. true when the shutdown began already (the caller ends it at once). */
static int req_stream(lua_State *L) {
    td_http_conn *hc = live_conn(L);
    if (!hc)
        return 0;
    td_http_mark_stream(hc);
    if (hc->rq->user)
        td_vm_scope_deadline(hc->rq->user, 0);
    lua_pushboolean(L, server->draining);
    return 1;
}

/* [-2, +0] res_fail(slot, serial): the handler raised. */
static int res_fail(lua_State *L) {
    td_http_conn *hc = live_conn(L);
    if (hc)
        td_http_fail(hc);
    return 0;
}

/* [-2, +1] res_head_sent(slot, serial) -> boolean */
static int res_head_sent(lua_State *L) {
    td_http_conn *hc = live_conn(L);
    lua_pushboolean(L, !hc || hc->rq->head_sent);
    return 1;
}

/* ---- more listeners (tendril.testing serves an app in its test's process) ---- */

#define LISTENER_MT "tendril.listener"

/* [-2, +2|2] serve_listen(host, port) -> listener, port | nil, err */
static int serve_listen(lua_State *L) {
    const char *host = luaL_checkstring(L, 1);
    int port = (int)luaL_checkinteger(L, 2);
    td_http_listener **ud = lua_newuserdata(L, sizeof *ud);
    *ud = NULL;
    luaL_getmetatable(L, LISTENER_MT);
    lua_setmetatable(L, -2);
    int err = 0;
    *ud = td_http_server_listen_more(server, td_listen_socket(host, port, 0), &err);
    if (!*ud)
        return td_api_fail(L, err);
    lua_pushinteger(L, td_http_listener_port(*ud));
    return 2;
}

/* [-1, +0] serve_unlisten(listener): closes it (again: nothing) */
static int serve_unlisten(lua_State *L) {
    td_http_listener **ud = luaL_checkudata(L, 1, LISTENER_MT);
    if (*ud && server)
        td_http_server_unlisten(*ud);
    *ud = NULL;
    return 0;
}

/* [-0, +1] http_stats() -> {connections=, requests=} */
static int http_stats(lua_State *L) {
    lua_createtable(L, 0, 2);
    lua_pushinteger(L, (lua_Integer)td_http_server_conns(server));
    lua_setfield(L, -2, "connections");
    lua_pushinteger(L, (lua_Integer)server->live);
    lua_setfield(L, -2, "requests");
    return 1;
}

/* [-0, +1] http_counts() -> { classes = {other, 1xx, ... 5xx}, buckets =
 * {n...}, bounds = {ms...}, sum = seconds } for tendril.metrics */
static int http_counts(lua_State *L) {
    const td_http_counts *c = &server->counts;
    lua_createtable(L, 0, 4);
    lua_createtable(L, 6, 0);
    for (int i = 0; i < 6; i++) {
        lua_pushnumber(L, (lua_Number)c->by_class[i]);
        lua_rawseti(L, -2, i + 1);
    }
    lua_setfield(L, -2, "classes");
    lua_createtable(L, TD_HTTP_LATENCY_BUCKETS, 0);
    for (int i = 0; i < TD_HTTP_LATENCY_BUCKETS; i++) {
        lua_pushnumber(L, (lua_Number)c->latency[i]);
        lua_rawseti(L, -2, i + 1);
    }
    lua_setfield(L, -2, "buckets");
    lua_createtable(L, TD_HTTP_LATENCY_BUCKETS - 1, 0);
    for (int i = 0; i < TD_HTTP_LATENCY_BUCKETS - 1; i++) {
        lua_pushnumber(L, (lua_Number)td_http_latency_ms[i]);
        lua_rawseti(L, -2, i + 1);
    }
    lua_setfield(L, -2, "bounds");
    lua_pushnumber(L, (lua_Number)c->latency_ns_sum / 1e9);
    lua_setfield(L, -2, "sum");
    return 1;
}

/* td_http_server.on_log: the Lua time of the run that ends the request
 * (answering, failing, refusing its body) and the waits still going on in
 * its tasks are counted before its line. */
static void account_for_log(td_http_conn *hc, void *ud, uint64_t now_ns) {
    td_vm_settle(ud, hc->rq ? hc->rq->user : NULL, now_ns);
}

void td_api_http_open(lua_State *L, td_vm *vm, td_http_server *hs, uint64_t timeout_ms) {
    static const luaL_Reg funcs[] = {
        {"req_headers", req_headers},     {"req_remote", req_remote},
        {"serve_listen", serve_listen}, {"serve_unlisten", serve_unlisten}, {"http_counts", http_counts},
        {"req_body", req_body},     {"req_read", req_read},     {"req_body_limit", req_body_limit},
        {"res_send", res_send},           {"res_room", res_room},
        {"res_fail", res_fail},     {"res_head_sent", res_head_sent}, {"http_stats", http_stats},
        {"req_deadline", req_deadline}, {"req_timings", req_timings}, {"req_tls", req_tls}, {"req_stream", req_stream}, {"req_header", req_header},
        {"file_open", file_open}, {"dir_open", dir_open}, {"dir_list", dir_list}, {"realpath", api_realpath}, {"file_close", file_gc}, {"res_sendfile", res_sendfile}, {"res_drain", res_drain}, {NULL, NULL},
    };
    server = hs;
    hs->on_log = account_for_log;
    request_timeout_ms = timeout_ms;
    main_L = td_vm_state(vm);
    luaL_setfuncs(L, funcs, 0);
    luaL_newmetatable(L, FILE_MT);
    lua_pushcfunction(L, file_gc);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);
    luaL_newmetatable(L, LISTENER_MT);
    lua_pushcfunction(L, serve_unlisten);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);
    lua_createtable(L, 64, 2);
#define TD_METHOD_NAME(num, name, string) \
    lua_pushliteral(L, #string);          \
    lua_rawseti(L, -2, num);
    HTTP_ALL_METHOD_MAP(TD_METHOD_NAME)
#undef TD_METHOD_NAME
    lua_pushliteral(L, "1.1");
    lua_rawseti(L, -2, -1);
    lua_pushliteral(L, "1.0");
    lua_rawseti(L, -2, -2);
    names_ref = luaL_ref(L, LUA_REGISTRYINDEX);
}

void td_api_http_teardown(void) { main_L = NULL; }

void td_api_http_set_timings(int on) { time_requests = on; }

