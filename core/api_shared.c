/* tendril.shared: the dictionaries of --shared as userdata with C methods,
 * and the one wait behind their watches.
 *
 * A dictionary's userdata holds its pointer: the mapping lives as long as
 * the process, so no handle check is needed. One userdata per dictionary,
 * kept in the registry, so shared.dict(name) returns the same object.
 *
 * Watches (lua/tendril/shared.lua keeps the subscriptions): the process
 * sets its slot's bit on each watched dictionary; a change in any process
 * writes this worker's eventfd (shared.h); the poll callback only wakes
 * the pump, a detached Lua task that then reads the changes in its own
 * run (core.shared_changes) and hands each key to the subscriptions. One
 * pump at most; it ends when the last watch goes, or at shutdown. */
#include <lauxlib.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"

#define DICT_MT "tendril.shared.dict"
/* keys() without a count lists at most this many, as OpenResty does. */
#define DEFAULT_KEYS 1024

static struct {
    td_vm *vm;
    td_shared *sh;
    uv_poll_t poll;
    int poll_ready;
    unsigned watching[TD_SHARED_MAX_DICTS]; /* subscriptions per dictionary */
    unsigned nwatching;
    uint64_t pos[TD_SHARED_MAX_DICTS];
    td_wait wait; /* the pump's, while it waits */
    int waiting;
    int woken;   /* a wake-up came while the pump was busy */
    int stopped; /* shutdown: no more watches */
    td_buf buf;
} S;

static td_shdict *check_dict(lua_State *L) {
    td_shdict **p = luaL_checkudata(L, 1, DICT_MT);
    return *p;
}

static const char *check_key(lua_State *L, int idx, const char *fname, size_t *len) {
    if (lua_type(L, idx) != LUA_TSTRING)
        luaL_error(L, "%s: a key is a string, got %s", fname, luaL_typename(L, idx));
    const char *k = lua_tolstring(L, idx, len);
    if (*len == 0 || *len > TD_SHDICT_MAX_KEY)
        luaL_error(L, "%s: a key is 1 to 65535 bytes, got %d", fname, (int)*len);
    return k;
}

/* ttl in seconds at idx (none or 0: no expiry) as ms. */
static uint64_t check_ttl(lua_State *L, int idx, const char *fname) {
    if (lua_isnoneornil(L, idx))
        return 0;
    if (lua_type(L, idx) != LUA_TNUMBER)
        luaL_error(L, "%s: a ttl is a number of seconds >= 0, got %s", fname, luaL_typename(L, idx));
    double s = lua_tonumber(L, idx);
    if (!(s >= 0) || isinf(s))
        luaL_error(L, "%s: a ttl is a number of seconds >= 0, got %f", fname, s);
    if (s == 0)
        return 0;
    double ms = ceil(s * 1000.0);
    return ms > 1e15 ? (uint64_t)1e15 : (uint64_t)ms;
}

static void push_value(lua_State *L, const td_shvalue *v) {
    switch (v->type) {
    case TD_SHV_STRING: lua_pushlstring(L, v->str, v->len); break;
    case TD_SHV_NUMBER: lua_pushnumber(L, v->num); break;
    case TD_SHV_BOOLEAN: lua_pushboolean(L, v->boolean); break;
    default: lua_pushnil(L); break;
    }
}

/* A result the caller's convention maps to nil, err. */
static int fail(lua_State *L, const char *err) {
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
}

static int result_error(lua_State *L, int rc) {
    switch (rc) {
    case TD_SHD_NOT_FOUND: return fail(L, "not found");
    case TD_SHD_EXISTS: return fail(L, "exists");
    case TD_SHD_TOO_LARGE: return fail(L, "too large");
    case TD_SHD_NOT_NUMBER: return fail(L, "not a number");
    default: return fail(L, "no memory");
    }
}

/* After the result on the stack: nil, "evicted" when live entries went to
 * make room. Returns the number of results. */
static int evicted_tail(lua_State *L, int evicted) {
    if (!evicted)
        return 1;
    lua_pushnil(L);
    lua_pushliteral(L, "evicted");
    return 3;
}

/* d:get(key) -> value | nil */
static int dict_get(lua_State *L) {
    td_shdict *d = check_dict(L);
    size_t klen;
    const char *key = check_key(L, 2, "get", &klen);
    td_shvalue v;
    int rc = td_shdict_get(d, key, klen, &v, &S.buf);
    if (rc == TD_SHD_NO_MEMORY)
        return luaL_error(L, "get: out of memory");
    if (rc != TD_SHD_OK)
        v.type = TD_SHV_NIL;
    push_value(L, &v);
    return 1;
}

static int store(lua_State *L, td_shd_mode mode, const char *fname) {
    td_shdict *d = check_dict(L);
    size_t klen;
    const char *key = check_key(L, 2, fname, &klen);
    td_shvalue v = {.type = TD_SHV_NIL};
    switch (lua_type(L, 3)) {
    case LUA_TSTRING:
        v.type = TD_SHV_STRING;
        v.str = lua_tolstring(L, 3, &v.len);
        break;
    case LUA_TNUMBER:
        v.type = TD_SHV_NUMBER;
        v.num = lua_tonumber(L, 3);
        break;
    case LUA_TBOOLEAN:
        v.type = TD_SHV_BOOLEAN;
        v.boolean = lua_toboolean(L, 3);
        break;
    case LUA_TNIL:
    case LUA_TNONE:
        if (mode == TD_SHD_SET) { /* set(key, nil) deletes, as in OpenResty */
            td_shdict_delete(d, key, klen);
            lua_pushboolean(L, 1);
            return 1;
        }
        /* fall through */
    default:
        return luaL_error(L, "%s: a value is a string, a number or a boolean, got %s", fname,
                          luaL_typename(L, 3));
    }
    uint64_t ttl = check_ttl(L, 4, fname);
    int evicted = 0;
    int rc = td_shdict_store(d, mode, key, klen, &v, ttl, &evicted);
    if (rc != TD_SHD_OK)
        return result_error(L, rc);
    lua_pushboolean(L, 1);
    return evicted_tail(L, evicted);
}

/* d:set(key, value [, ttl]) -> true [, nil, "evicted"] | nil, "too large" */
static int dict_set(lua_State *L) { return store(L, TD_SHD_SET, "set"); }
/* d:add(...) as set, or nil, "exists" */
static int dict_add(lua_State *L) { return store(L, TD_SHD_ADD, "add"); }
/* d:replace(...) as set, or nil, "not found" */
static int dict_replace(lua_State *L) { return store(L, TD_SHD_REPLACE, "replace"); }

/* d:incr(key, n [, init [, init_ttl]]) -> the new value [, nil, "evicted"]
 * | nil, "not found" | nil, "not a number" */
static int dict_incr(lua_State *L) {
    td_shdict *d = check_dict(L);
    size_t klen;
    const char *key = check_key(L, 2, "incr", &klen);
    if (lua_type(L, 3) != LUA_TNUMBER)
        return luaL_error(L, "incr: the increment is a number, got %s", luaL_typename(L, 3));
    double delta = lua_tonumber(L, 3);
    int has_init = !lua_isnoneornil(L, 4);
    if (has_init && lua_type(L, 4) != LUA_TNUMBER)
        return luaL_error(L, "incr: the initial value is a number, got %s", luaL_typename(L, 4));
    double init = has_init ? lua_tonumber(L, 4) : 0;
    uint64_t ttl = check_ttl(L, 5, "incr");
    double out;
    int evicted = 0;
    int rc = td_shdict_incr(d, key, klen, delta, has_init, init, ttl, &out, &evicted);
    if (rc != TD_SHD_OK)
        return result_error(L, rc);
    lua_pushnumber(L, out);
    return evicted_tail(L, evicted);
}

/* d:delete(key) -> true */
static int dict_delete(lua_State *L) {
    td_shdict *d = check_dict(L);
    size_t klen;
    const char *key = check_key(L, 2, "delete", &klen);
    td_shdict_delete(d, key, klen);
    lua_pushboolean(L, 1);
    return 1;
}

/* d:ttl(key) -> seconds left (0: never expires) | nil, "not found" */
static int dict_ttl(lua_State *L) {
    td_shdict *d = check_dict(L);
    size_t klen;
    const char *key = check_key(L, 2, "ttl", &klen);
    uint64_t ms;
    if (td_shdict_ttl(d, key, klen, &ms) != TD_SHD_OK)
        return fail(L, "not found");
    lua_pushnumber(L, (double)ms / 1000.0);
    return 1;
}

/* Pushes a table of the n records (4-byte length, bytes) in buf. */
static void push_records(lua_State *L, const td_buf *buf, size_t n) {
    lua_createtable(L, (int)n, 0);
    const char *p = buf->data;
    for (size_t i = 1; i <= n; i++) {
        uint32_t len;
        memcpy(&len, p, sizeof len);
        lua_pushlstring(L, p + sizeof len, len);
        lua_rawseti(L, -2, (int)i);
        p += sizeof len + len;
    }
}

/* d:keys([max]) -> array of keys, most recently used first (max 0: all;
 * default 1024) */
static int dict_keys(lua_State *L) {
    td_shdict *d = check_dict(L);
    lua_Number max = DEFAULT_KEYS;
    if (!lua_isnoneornil(L, 2)) {
        max = lua_tonumber(L, 2);
        if (lua_type(L, 2) != LUA_TNUMBER || max < 0 || max != floor(max))
            return luaL_error(L, "keys: max is a whole number >= 0 (0: all), got %s",
                              lua_type(L, 2) == LUA_TNUMBER ? lua_tostring(L, 2) : luaL_typename(L, 2));
        if (max >= 9007199254740992.0) /* 2^53: more than any dictionary holds */
            max = 0;
    }
    size_t n;
    if (td_shdict_keys(d, (size_t)max, &S.buf, &n) != TD_SHD_OK)
        return luaL_error(L, "keys: out of memory");
    push_records(L, &S.buf, n);
    return 1;
}

/* d:flush_all() -> true */
static int dict_flush_all(lua_State *L) {
    td_shdict_flush_all(check_dict(L));
    lua_pushboolean(L, 1);
    return 1;
}

/* d:stats() -> {capacity =, used =, count =, evictions =, repairs =} */
static int dict_stats(lua_State *L) {
    td_shdict_stats st;
    td_shdict_stats_get(check_dict(L), &st);
    lua_createtable(L, 0, 5);
    lua_pushnumber(L, (double)st.capacity);
    lua_setfield(L, -2, "capacity");
    lua_pushnumber(L, (double)st.used);
    lua_setfield(L, -2, "used");
    lua_pushnumber(L, (double)st.count);
    lua_setfield(L, -2, "count");
    lua_pushnumber(L, (double)st.evictions);
    lua_setfield(L, -2, "evictions");
    lua_pushnumber(L, (double)st.repairs);
    lua_setfield(L, -2, "repairs");
    return 1;
}

/* d:_hold(seconds, dirty): a test hook (TENDRIL_TEST_HOOKS=1 only) that
 * holds the dictionary's lock, blocking this worker, so that a test can
 * kill a worker that holds it. */
static int dict_hold(lua_State *L) {
    td_shdict *d = check_dict(L);
    if (!getenv("TENDRIL_TEST_HOOKS"))
        return luaL_error(L, "_hold: a test hook (TENDRIL_TEST_HOOKS=1)");
    double s = luaL_checknumber(L, 2);
    td_shdict__hold(d, (uint64_t)(s * 1000.0), lua_toboolean(L, 3));
    return 0;
}

/* d:name() -> the name it was declared with */
static int dict_name(lua_State *L) {
    lua_pushstring(L, td_shdict_name(check_dict(L)));
    return 1;
}

static int dict_tostring(lua_State *L) {
    lua_pushfstring(L, "tendril.shared.dict(%s)", td_shdict_name(check_dict(L)));
    return 1;
}

/* [-1, +1] shared_dict(name) -> the dictionary | nil */
static int shared_dict(lua_State *L) {
    const char *name = luaL_checkstring(L, 1);
    td_shdict *d = td_shared_dict(S.sh, name);
    if (!d) {
        lua_pushnil(L);
        return 1;
    }
    lua_getfield(L, LUA_REGISTRYINDEX, "tendril.shared.dicts");
    lua_pushlightuserdata(L, d);
    lua_rawget(L, -2);
    if (!lua_isnil(L, -1))
        return 1;
    lua_pop(L, 1);
    td_shdict **p = lua_newuserdata(L, sizeof *p);
    *p = d;
    luaL_getmetatable(L, DICT_MT);
    lua_setmetatable(L, -2);
    lua_pushlightuserdata(L, d);
    lua_pushvalue(L, -2);
    lua_rawset(L, -4);
    return 1;
}

/* [-0, +1] shared_names() -> the names declared, in order */
static int shared_names(lua_State *L) {
    size_t n = S.sh ? S.sh->ndicts : 0;
    lua_createtable(L, (int)n, 0);
    for (size_t i = 0; i < n; i++) {
        lua_pushstring(L, td_shdict_name(S.sh->dicts[i]));
        lua_rawseti(L, -2, (int)i + 1);
    }
    return 1;
}

/* ---- watches ---- */

static int dict_index(td_shdict *d) {
    for (size_t i = 0; i < S.sh->ndicts; i++)
        if (S.sh->dicts[i] == d)
            return (int)i;
    return -1;
}

/* Ends the pump's wait: with true (changes to read), or nil, why ("idle":
 * no watch is left; "closed": shutdown). */
static void wake_pump(const char *why) {
    if (!S.waiting)
        return;
    S.waiting = 0;
    td_task *t = S.wait.task;
    lua_State *co = td_vm_wait_end(&S.wait);
    if (!why) {
        lua_pushboolean(co, 1);
        td_vm_resume(t, 1);
        return;
    }
    lua_pushnil(co);
    lua_pushstring(co, why);
    td_vm_resume(t, 2);
}

static void on_notify(uv_poll_t *p, int status, int events) {
    (void)p, (void)status, (void)events;
    td_shared_notified(S.sh);
    if (S.waiting)
        wake_pump(NULL);
    else
        S.woken = 1;
}

/* [-2, +1] shared_watch(dict, on) -> true | nil, "closed" (shutdown) */
static int shared_watch(lua_State *L) {
    td_shdict *d = check_dict(L);
    int on = lua_toboolean(L, 2);
    int i = dict_index(d);
    if (on && S.stopped)
        return td_api_fail(L, TD_ECLOSED);
    if (on) {
        if (S.watching[i]++ == 0)
            S.pos[i] = td_shdict_watch(d, S.sh->self, 1);
        if (S.nwatching++ == 0) {
            if (!S.poll_ready) {
                uv_poll_init(td_vm_loop(S.vm), &S.poll, S.sh->slots[S.sh->self].notify_fd);
                S.poll_ready = 1;
            }
            uv_poll_start(&S.poll, UV_READABLE, on_notify);
        }
    } else if (S.watching[i] > 0) {
        if (--S.watching[i] == 0)
            td_shdict_watch(d, S.sh->self, 0);
        if (--S.nwatching == 0) {
            uv_poll_stop(&S.poll);
            wake_pump("idle"); /* it ends, unless a watch came meanwhile */
        }
    }
    lua_pushboolean(L, 1);
    return 1;
}

static void cancel_pump(td_wait *w) {
    (void)w;
    S.waiting = 0;
}

/* [-0, +1|2] shared_wait() -> true (changes may be there) | nil, "idle"
 * (nothing is watched) | nil, "closed" (shutdown); yields until a watched
 * dictionary changes. */
static int shared_wait(lua_State *L) {
    if (S.stopped)
        return td_api_fail(L, TD_ECLOSED);
    if (S.nwatching == 0) {
        lua_pushnil(L);
        lua_pushliteral(L, "idle");
        return 2;
    }
    if (S.woken) {
        S.woken = 0;
        lua_pushboolean(L, 1);
        return 1;
    }
    if (S.waiting)
        return luaL_error(L, "shared_wait: the pump runs already");
    td_task *t = td_api_wait_start(L, "shared_wait", 0);
    if (!t)
        return 2;
    S.waiting = 1;
    td_vm_wait_begin(t, &S.wait, cancel_pump, 0, TD_WAIT_OTHER);
    return lua_yield(L, 0);
}

/* [-0, +2] shared_changes() -> {name, key, name, key, ...}, {name = true
 * for each dictionary whose changes were partly lost} */
static int shared_changes(lua_State *L) {
    lua_newtable(L);
    lua_newtable(L);
    int n = 0;
    for (size_t i = 0; i < S.sh->ndicts; i++) {
        if (!S.watching[i])
            continue;
        size_t count;
        int rc = td_shdict_changes(S.sh->dicts[i], &S.pos[i], &S.buf, &count);
        const char *name = td_shdict_name(S.sh->dicts[i]);
        if (rc < 0) {
            /* No memory for the keys: they stay in the ring; read again. */
            S.woken = 1;
            continue;
        }
        if (rc != 0) {
            lua_pushboolean(L, 1);
            lua_setfield(L, -2, name);
        }
        const char *p = S.buf.data;
        for (size_t k = 0; k < count; k++) {
            uint32_t len;
            memcpy(&len, p, sizeof len);
            lua_pushstring(L, name);
            lua_rawseti(L, -3, ++n);
            lua_pushlstring(L, p + sizeof len, len);
            lua_rawseti(L, -3, ++n);
            p += sizeof len + len;
        }
    }
    return 2;
}

void td_api_shared_tick(void) {
    static unsigned seen;
    if (!S.sh || S.nwatching == 0 || S.stopped) {
        seen = 0;
        return;
    }
    /* A wake-up marked pending that did not come for two ticks: its writer
     * died between marking it and writing the eventfd, and no writer would
     * write again. */
    if (!atomic_load(&S.sh->slots[S.sh->self].pending)) {
        seen = 0;
        return;
    }
    if (++seen >= 2) {
        seen = 0;
        on_notify(NULL, 0, 0);
    }
}

void td_api_shared_stop(void) {
    S.stopped = 1;
    if (S.poll_ready)
        uv_poll_stop(&S.poll);
    wake_pump(td_err_name(TD_ECLOSED));
}

void td_api_shared_teardown(void) {
    if (S.poll_ready && !uv_is_closing((uv_handle_t *)&S.poll))
        uv_close((uv_handle_t *)&S.poll, NULL);
    S.poll_ready = 0;
    if (S.sh)
        for (size_t i = 0; i < S.sh->ndicts; i++)
            if (S.watching[i])
                td_shdict_watch(S.sh->dicts[i], S.sh->self, 0);
    td_buf_free(&S.buf);
}

void td_api_shared_open(lua_State *L, td_vm *vm, td_shared *shared) {
    memset(&S, 0, sizeof S);
    S.vm = vm;
    S.sh = shared;
    static const luaL_Reg methods[] = {
        {"get", dict_get}, {"set", dict_set}, {"add", dict_add}, {"replace", dict_replace},
        {"incr", dict_incr}, {"delete", dict_delete}, {"ttl", dict_ttl}, {"keys", dict_keys},
        {"flush_all", dict_flush_all}, {"stats", dict_stats}, {"name", dict_name}, {"_hold", dict_hold}, {NULL, NULL},
    };
    luaL_newmetatable(L, DICT_MT);
    lua_newtable(L);
    luaL_register(L, NULL, methods);
    lua_pushvalue(L, -1);
    lua_setfield(L, -4, "shared_methods"); /* shared.lua adds watch */
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, dict_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pop(L, 1);
    lua_newtable(L);
    lua_setfield(L, LUA_REGISTRYINDEX, "tendril.shared.dicts");
    static const luaL_Reg funcs[] = {
        {"shared_dict", shared_dict}, {"shared_names", shared_names}, {"shared_watch", shared_watch},
        {"shared_wait", shared_wait}, {"shared_changes", shared_changes}, {NULL, NULL},
    };
    luaL_register(L, NULL, funcs);
}
