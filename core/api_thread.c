/* Light threads and events: tendril.spawn's primitive, and a one-shot event
 * that coroutines wait on (thread:join, a require waiting for another
 * coroutine's load, a DNS lookup already in flight).
 *
 * An event ("tendril.event" userdata) is set once; waiting on a set event
 * returns at once. Each waiter owns a record with a registry reference to
 * the event, so the event outlives its waiters, and a timer when it has a
 * timeout. */
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "clock.h"
#include "errors.h"

#define EVENT_MT "tendril.event"

typedef struct event {
    td_list waiters;
    int set;
} event;

typedef struct event_wait {
    td_wait wait;
    td_list link;
    td_vm *vm;
    int event_ref;
    uv_timer_t *timer; /* NULL: no timeout (a subscriber can wait for ever without one) */
} event_wait;

static void free_timer(uv_handle_t *h) { free(h); }

/* Detaches the waiter from its event and frees it. */
static void drop_waiter(event_wait *w) {
    td_list_remove(&w->link);
    luaL_unref(td_vm_state(w->vm), LUA_REGISTRYINDEX, w->event_ref);
    if (w->timer) {
        uv_timer_stop(w->timer);
        uv_close((uv_handle_t *)w->timer, free_timer);
    }
    free(w);
}

static void wake(event_wait *w, int status) {
    td_task *t = w->wait.task;
    lua_State *co = td_vm_wait_end(&w->wait);
    drop_waiter(w);
    int n = 1;
    if (status == 0)
        lua_pushboolean(co, 1);
    else
        n = td_api_fail(co, status);
    td_vm_resume(t, n);
}

static void on_wait_timeout(uv_timer_t *timer) { wake(timer->data, TD_ETIMEOUT); }

static void cancel_event_wait(td_wait *wait) { drop_waiter(td_container_of(wait, event_wait, wait)); }

/* [-0, +1] event_new() -> event */
static int event_new(lua_State *L) {
    event *ev = lua_newuserdata(L, sizeof *ev);
    td_list_init(&ev->waiters);
    ev->set = 0;
    luaL_getmetatable(L, EVENT_MT);
    lua_setmetatable(L, -2);
    return 1;
}

/* [-3, +1] event_wait(event, timeout | nil [, "db"]) -> true | nil,
 * "timeout"; may yield (without a timeout, until the event is set). "db":
 * the wait is a database client's (tendril.redis's shared connection), so
 * the request's timings count it as db, not other. */
static int event_wait_lua(lua_State *L) {
    td_vm *vm = lua_touserdata(L, lua_upvalueindex(1));
    event *ev = luaL_checkudata(L, 1, EVENT_MT);
    int forever = lua_isnoneornil(L, 2);
    double timeout = forever ? 0 : luaL_checknumber(L, 2);
    if (ev->set) {
        lua_pushboolean(L, 1);
        return 1;
    }
    td_task *t = td_api_wait_start(L, "wait", 0);
    if (!t)
        return 2;
    event_wait *w = malloc(sizeof *w);
    uv_timer_t *timer = forever ? NULL : malloc(sizeof *timer);
    if (!w || (!forever && !timer)) {
        free(w);
        free(timer);
        return luaL_error(L, "wait: out of memory");
    }
    w->vm = vm;
    w->timer = timer;
    lua_pushvalue(L, 1);
    w->event_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    td_list_push_back(&ev->waiters, &w->link);
    int kind = lua_type(L, 3) == LUA_TSTRING && strcmp(lua_tostring(L, 3), "db") == 0 ? TD_WAIT_DB : TD_WAIT_OTHER;
    td_vm_wait_begin(t, &w->wait, cancel_event_wait, 0, kind);
    if (timer) {
        uv_timer_init(td_vm_loop(vm), timer);
        timer->data = w;
        double ms = timeout > 0 ? timeout * 1000.0 : 0;
        /* From now, not from the turn's start (a wait begun late in a long
         * run lasts its full length, as tendril.sleep's). */
        uv_timer_start(timer, on_wait_timeout,
                       ms > 0 ? td_clock_timer_ms(td_vm_loop(vm), ms > 1e12 ? (uint64_t)1e12 : (uint64_t)ms) : 0, 0);
    }
    return lua_yield(L, 0);
}

/* [-1, +0] event_set(event): wakes every waiter (after the caller yields). */
static int event_set(lua_State *L) {
    event *ev = luaL_checkudata(L, 1, EVENT_MT);
    ev->set = 1;
    while (!td_list_empty(&ev->waiters))
        wake(td_container_of(ev->waiters.next, event_wait, link), 0);
    return 0;
}

/* [-1, +1] event_is_set(event) -> boolean */
static int event_is_set(lua_State *L) {
    event *ev = luaL_checkudata(L, 1, EVENT_MT);
    lua_pushboolean(L, ev->set);
    return 1;
}

/* [-(n+1), +0] spawn(fn, ...): runs fn(...) in a new task, which starts once
 * the caller yields or returns. The upvalue `mode`: SPAWN_ATTACHED, it
 * shares the fate of the request it was spawned in (see vm.h);
 * SPAWN_DETACHED, none; SPAWN_DAEMON, none, and it is a runtime service
 * (td_vm_task_daemon). */
enum { SPAWN_ATTACHED, SPAWN_DETACHED, SPAWN_DAEMON };
static int spawn(lua_State *L) {
    td_vm *vm = lua_touserdata(L, lua_upvalueindex(1));
    int mode = (int)lua_tointeger(L, lua_upvalueindex(2));
    int detached = mode != SPAWN_ATTACHED;
    luaL_checktype(L, 1, LUA_TFUNCTION);
    int nargs = lua_gettop(L) - 1;
    lua_State *main = td_vm_state(vm);
    lua_pushvalue(L, 1);
    lua_xmove(L, main, 1);
    td_task *t = td_vm_task_new(vm, NULL);
    if (!t)
        return luaL_error(L, "tendril.spawn: out of memory");
    t->label = "a spawned thread";
    if (!detached)
        td_vm_task_inherit(t, td_vm_task_of(L));
    if (mode == SPAWN_DAEMON) {
        t->label = "a runtime service";
        td_vm_task_daemon(t);
    }
    lua_checkstack(t->co, nargs + LUA_MINSTACK);
    for (int i = 2; i <= nargs + 1; i++)
        lua_pushvalue(L, i);
    lua_xmove(L, t->co, nargs);
    td_vm_resume(t, nargs);
    return 0;
}

/* [-0, +1] task_scope_open() -> true | false: the running task (one in
 * no request's scope) leads a scope of its own from now on, which the
 * threads it spawns share (tendril test: what a test started). */
static int task_scope_open(lua_State *L) {
    td_task *t = td_vm_task_of(L);
    lua_pushboolean(L, t && !t->scope && td_vm_scope_open(t) != NULL);
    return 1;
}

/* [-0, +2] task_scope_census() -> tasks, waits: the threads in the running
 * task's own scope (see task_scope_open), and how many of them wait. */
static int task_scope_census(lua_State *L) {
    td_task *t = td_vm_task_of(L);
    size_t tasks = 0, waits = 0;
    if (t && t->scope == &t->lead)
        td_vm_scope_census(&t->lead, &tasks, &waits);
    lua_pushinteger(L, (lua_Integer)tasks);
    lua_pushinteger(L, (lua_Integer)waits);
    return 2;
}

/* [-0, +0] task_scope_close(): its threads run on, detached. */
static int task_scope_close(lua_State *L) {
    td_task *t = td_vm_task_of(L);
    if (t && t->scope == &t->lead)
        td_vm_scope_close(&t->lead);
    return 0;
}

void td_api_thread_open(lua_State *L, td_vm *vm) {
    static const luaL_Reg funcs[] = {
        {"event_new", event_new}, {"event_wait", event_wait_lua}, {"event_set", event_set},
        {"event_is_set", event_is_set}, {"task_scope_open", task_scope_open},
        {"task_scope_census", task_scope_census}, {"task_scope_close", task_scope_close}, {NULL, NULL},
    };
    luaL_newmetatable(L, EVENT_MT);
    lua_pop(L, 1);
    lua_pushlightuserdata(L, vm);
    luaL_setfuncs(L, funcs, 1);
    static const char *const spawners[] = {"spawn", "spawn_detached", "spawn_daemon"};
    for (int mode = SPAWN_ATTACHED; mode <= SPAWN_DAEMON; mode++) {
        lua_pushlightuserdata(L, vm);
        lua_pushinteger(L, mode);
        lua_pushcclosure(L, spawn, 2);
        lua_setfield(L, -2, spawners[mode]);
    }
}
