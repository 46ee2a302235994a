/* Owns the lua_State, the anchors table, the task pool, the list of active
 * waits and the posted resumes. Nothing here knows HTTP. */
#include "vm.h"

#include <assert.h>
#include <lauxlib.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "embedded_lua.h"
#include "errors.h"
#include "lalloc.h"
#include "log.h"
#include "stall.h"

/* Idle tasks kept for reuse: creating a coroutine costs far more than
 * resuming one. */
#define TD_POOL_MAX 256
/* Released task records kept for reuse; the rest go back to malloc, so a
 * burst's peak is not kept. */
#define TD_TASK_SPARE_MAX 256

struct td_vm {
    lua_State *L;
    uv_loop_t *loop;
    int anchors;   /* registry ref of the anchors table */
    int pool_func; /* registry ref of the function pooled tasks run */
    int relay;     /* registry ref: coroutine -> true when its resumer can pass a yield up */
    int error_slot; /* registry ref: where td_vm_log_error puts the error value */
    td_task **pool;
    size_t npool;
    td_list alive;   /* every task alive (td_task.alive_link), freed by td_vm_close */
    td_task **spare; /* released ones kept for reuse, TD_TASK_SPARE_MAX at most */
    size_t nspare;
    td_list waits;
    td_list posted;
    size_t ntasks;
    size_t ndaemons;
    size_t nwaits;
    uint64_t nstalls;
    int depth; /* lua_resume calls on the C stack */
    int held;  /* td_vm_hold calls not yet released: resumes are posted */
    td_stall *stall;
    /* The task td_vm_resume is running, NULL between resumes. Resumes never
     * nest (they are posted while one runs), so this is the one task any
     * tendril call made now can act for (see td_vm_task_of). */
    td_task *current;
    uint64_t run_since; /* uv_hrtime() at the current run's start (or last td_vm_account), if it is timed; else 0 */
    uint32_t next_run; /* numbers the runs of tasks: td_task.run */
    td_deadlines deadlines; /* of scopes (td_scope.timer) */
    td_lalloc *alloc; /* Lua's memory (lalloc.h); its own block, freed after the state */
    unsigned closing : 1;
    unsigned daemons_stopped : 1; /* td_vm_stop_daemons came: a new daemon is doomed at birth */
    unsigned mem_raised : 1; /* mem_hook raised since the last recovery */
};

static void on_scope_due(td_deadlines *d, td_heap_node *n, uint64_t now);
static void on_memory_over(void *ud);

/* Its address is the pool marker. */
static const char pool_marker = 0;

static int vm_panic(lua_State *L) {
    td_log(TD_LOG_CRIT, "unprotected Lua error: %s", lua_tostring(L, -1));
    abort();
}

static int load_embedded(lua_State *L) {
    const td_embedded_module *m = &td_embedded_modules[lua_tointeger(L, lua_upvalueindex(1))];
    if (luaL_loadbuffer(L, m->source, m->len, m->chunkname) != 0)
        return lua_error(L);
    lua_pushstring(L, m->name);
    lua_call(L, 1, 1);
    return 1;
}

/* package.preload gets one loader per embedded module: the library is
 * found wherever the binary runs from. */
static void register_embedded(lua_State *L) {
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "preload");
    for (int i = 0; td_embedded_modules[i].name; i++) {
        lua_pushinteger(L, i);
        lua_pushcclosure(L, load_embedded, 1);
        lua_setfield(L, -2, td_embedded_modules[i].name);
    }
    lua_pop(L, 2);
}

td_vm *td_vm_new(uv_loop_t *loop) {
    td_vm *vm = calloc(1, sizeof *vm);
    if (!vm)
        return NULL;
    vm->alloc = calloc(1, sizeof *vm->alloc);
    if (vm->alloc) {
        td_lalloc_limit(vm->alloc, 0);
        vm->alloc->on_over = on_memory_over;
        vm->alloc->over_ud = vm;
    }
    vm->L = vm->alloc ? lua_newstate(td_lalloc_f, vm->alloc) : NULL;
    if (!vm->L) {
        if (vm->alloc)
            td_lalloc_free_reserve(vm->alloc);
        free(vm->alloc);
        free(vm);
        return NULL;
    }
    vm->pool = malloc(TD_POOL_MAX * sizeof *vm->pool);
    vm->spare = malloc(TD_TASK_SPARE_MAX * sizeof *vm->spare);
    if (!vm->pool || !vm->spare || td_deadlines_init(&vm->deadlines, loop, on_scope_due) != 0) {
        free(vm->spare);
        free(vm->pool);
        lua_close(vm->L);
        td_lalloc_drain(vm->alloc);
        td_lalloc_free_reserve(vm->alloc);
        free(vm->alloc);
        free(vm);
        return NULL;
    }
    vm->loop = loop;
    vm->deadlines.before = td_vm_hold;
    vm->deadlines.after = td_vm_release;
    vm->deadlines.ud = vm;
    td_list_init(&vm->waits);
    td_list_init(&vm->posted);
    td_list_init(&vm->alive);
    lua_atpanic(vm->L, vm_panic);
    /* Every coroutine inherits this: it finds the vm, never a task (a
     * coroutine may outlive the task it was created in). */
    lua_setexdata(vm->L, vm);
    luaL_openlibs(vm->L);
    lua_newtable(vm->L);
    vm->anchors = luaL_ref(vm->L, LUA_REGISTRYINDEX);
    vm->pool_func = LUA_NOREF;
    lua_newtable(vm->L);
    lua_createtable(vm->L, 0, 1);
    lua_pushliteral(vm->L, "k");
    lua_setfield(vm->L, -2, "__mode");
    lua_setmetatable(vm->L, -2);
    vm->relay = luaL_ref(vm->L, LUA_REGISTRYINDEX);
    lua_pushboolean(vm->L, 0);
    vm->error_slot = luaL_ref(vm->L, LUA_REGISTRYINDEX);
    register_embedded(vm->L);
    return vm;
}

lua_State *td_vm_state(td_vm *vm) { return vm->L; }

uv_loop_t *td_vm_loop(td_vm *vm) { return vm->loop; }

void td_vm_stats_get(td_vm *vm, td_vm_stats *st) {
    lua_State *L = vm->L;
    size_t n = 0;
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->anchors);
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        /* luaL_ref keeps its free list in slot 0, as a number. */
        if (lua_type(L, -1) == LUA_TTHREAD)
            n++;
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    st->anchored = n;
    st->tasks = vm->ntasks;
    st->pooled = vm->npool;
    st->daemons = vm->ndaemons;
    st->waits = vm->nwaits;
    st->stalls = vm->nstalls;
}

/* ---- tasks ---- */

static td_task *task_memory(td_vm *vm) {
    if (vm->nspare > 0)
        return vm->spare[--vm->nspare];
    return malloc(sizeof(td_task));
}

td_task *td_vm_task_new(td_vm *vm, td_task_end_cb on_end) {
    lua_State *L = vm->L;
    td_task *t = task_memory(vm);
    if (!t) {
        lua_pop(L, 1);
        return NULL;
    }
    memset(t, 0, sizeof *t);
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->anchors); /* fn anchors */
    lua_State *co = lua_newthread(L);               /* fn anchors co */
    lua_pushvalue(L, -3);
    lua_xmove(L, co, 1);
    t->ref = luaL_ref(L, -2); /* fn anchors */
    lua_pop(L, 2);
    t->vm = vm;
    t->co = co;
    t->on_end = on_end;
    t->alive = 1;
    t->fresh = 1;
    t->run = ++vm->next_run;
    td_list_init(&t->link);
    td_list_push_back(&vm->alive, &t->alive_link);
    td_list_init(&t->scope_link);
    td_list_init(&t->lead.tasks);
    td_heap_node_init(&t->lead.timer);
    t->lead.vm = vm;
    vm->ntasks++;
    return t;
}

/* A task that ends leaves its fate and lets go of the scope it led (its
 * request's response ended before, except after a failure). */
static void leave_scopes(td_task *t) {
    if (t->lead.open)
        td_vm_scope_close(&t->lead);
    td_list_remove(&t->scope_link);
    t->scope = NULL;
    t->doom = 0;
}

static void task_release(td_task *t) {
    td_vm *vm = t->vm;
    if (!t->alive)
        return;
    assert(!t->wait && !t->pooled);
    leave_scopes(t);
    td_deadlines_exact(&vm->deadlines, &t->lead.timer, 0);
    td_list_remove(&t->link);
    lua_rawgeti(vm->L, LUA_REGISTRYINDEX, vm->anchors);
    luaL_unref(vm->L, -1, t->ref);
    lua_pop(vm->L, 1);
    t->ref = LUA_NOREF;
    t->co = NULL;
    t->alive = 0;
    td_list_remove(&t->alive_link);
    vm->ntasks--;
    if (t->daemon)
        vm->ndaemons--;
    /* Nothing points at a released task: waits, posts and scopes let go
     * above, and coroutines find their task through the vm (see vm.h). */
    if (vm->nspare < TD_TASK_SPARE_MAX)
        vm->spare[vm->nspare++] = t;
    else
        free(t);
}

void td_vm_set_pool_function(td_vm *vm) {
    luaL_unref(vm->L, LUA_REGISTRYINDEX, vm->pool_func);
    vm->pool_func = luaL_ref(vm->L, LUA_REGISTRYINDEX);
}

td_task *td_vm_task_pooled(td_vm *vm, td_task_end_cb on_end) {
    td_task *t;
    if (vm->npool > 0) {
        t = vm->pool[--vm->npool];
        t->pooled = 0;
        /* A new run: relay marks made for the last one no longer count. */
        t->run = ++vm->next_run;
    } else {
        lua_rawgeti(vm->L, LUA_REGISTRYINDEX, vm->pool_func);
        t = td_vm_task_new(vm, on_end);
        if (!t)
            return NULL;
        t->from_pool = 1;
    }
    t->on_end = on_end;
    return t;
}

static void pool_put(td_task *t) {
    td_vm *vm = t->vm;
    assert(t->alive && !t->pooled && !t->wait);
    leave_scopes(t);
    lua_settop(t->co, 0);
    t->data = NULL;
    if (vm->npool < TD_POOL_MAX && !vm->closing) {
        t->pooled = 1;
        vm->pool[vm->npool++] = t;
    } else {
        task_release(t);
    }
}

/* ---- resuming ---- */

struct error_log {
    lua_State *co;
    const char *what;
};

/* The text of an error value: a string or number as it is, anything else
 * through its __tostring, or its type. */
static const char *error_text(lua_State *L, int idx) {
    int t = lua_type(L, idx);
    if (t == LUA_TSTRING || t == LUA_TNUMBER)
        return lua_tostring(L, idx);
    if (luaL_callmeta(L, idx, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
        return lua_tostring(L, -1);
    return lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, idx));
}

/* Under lua_cpcall: a __tostring that raises, or memory that runs out,
 * cannot escape. */
static int log_error_cb(lua_State *L) {
    struct error_log *e = lua_touserdata(L, 1);
    td_vm *vm = lua_getexdata(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->error_slot);
    luaL_traceback(L, e->co, error_text(L, -1), 0);
    const char *tb = lua_tostring(L, -1);
    if (e->what)
        td_log(TD_LOG_ERROR, "%s: %s", e->what, tb);
    else
        td_log_raw(TD_LOG_ERROR, tb, strlen(tb));
    return 0;
}

void td_vm_log_error(lua_State *co, const char *what) {
    td_vm *vm = lua_getexdata(co);
    lua_State *L = vm->L;
    /* The value goes to a registry slot that exists already: no
     * allocation outside the protected call. */
    lua_pushvalue(co, -1);
    lua_xmove(co, L, 1);
    lua_rawseti(L, LUA_REGISTRYINDEX, vm->error_slot);
    struct error_log e = {co, what};
    if (lua_cpcall(L, log_error_cb, &e) != 0) {
        lua_pop(L, 1);
        const char *msg = lua_type(co, -1) == LUA_TSTRING ? lua_tostring(co, -1) : luaL_typename(co, -1);
        td_log(TD_LOG_ERROR, "%s%s%s (no traceback: it failed too)", what ? what : "", what ? ": " : "", msg);
    }
    lua_pushboolean(L, 0);
    lua_rawseti(L, LUA_REGISTRYINDEX, vm->error_slot);
}

static void describe_task(td_task *t, char *buf, size_t size) {
    if (t->describe)
        t->describe(t, buf, size);
    else
        snprintf(buf, size, "%s", t->label ? t->label : "a coroutine");
}

/* For the stall hook: what runs now. */
static void describe_current(void *ud, char *buf, size_t size) {
    td_vm *vm = ud;
    if (vm->current)
        describe_task(vm->current, buf, size);
    else
        snprintf(buf, size, "Lua code");
}

static void report_stall(td_task *t) {
    uint64_t ms;
    char where[TD_STALL_TEXT], who[TD_STALL_TEXT];
    if (!td_stall_leave(t->vm->stall, &ms, where, who))
        return;
    t->vm->nstalls++;
    if (!who[0])
        describe_task(t, who, sizeof who);
    if (where[0])
        td_log(TD_LOG_WARN, "stall: %s held the event loop for %llu ms, at %s", who, (unsigned long long)ms, where);
    else
        td_log(TD_LOG_WARN, "stall: %s held the event loop for %llu ms (in JIT-compiled code: no line)", who,
               (unsigned long long)ms);
}

static void task_end(td_task *t, int status) {
    if (t->on_end)
        t->on_end(t, status);
    task_release(t);
}

/* A count hook, set when Lua's memory passes the limit: the code running
 * gets a runtime error at its next interpreted instruction, so xpcall's
 * handler sees the stack and the log names file:line. (Compiled loops run
 * no hooks: they meet the end of the headroom, LuaJIT's plain memory
 * error.) */
static void mem_hook(lua_State *L, lua_Debug *ar) {
    td_vm *vm = lua_getexdata(L);
    lua_sethook(L, NULL, 0, 0);
    /* After a refusal LuaJIT's own error is unwinding: this instruction
     * already belongs to whoever caught it. */
    if (!vm || !vm->alloc->failed || vm->alloc->refused || !vm->alloc->enforce || vm->mem_raised)
        return;
    vm->mem_raised = 1;
    int located = 0;
    for (int level = 0; !located && lua_getstack(L, level, ar); level++) {
        if (lua_getinfo(L, "Sl", ar) && ar->currentline > 0) {
            lua_pushfstring(L, "%s:%d: ", ar->short_src, ar->currentline);
            located = 1;
        }
    }
    if (vm->alloc->limit)
        lua_pushfstring(L, "not enough memory (--lua-memory-limit %d MiB reached)", (int)(vm->alloc->limit >> 20));
    else
        lua_pushliteral(L, "not enough memory (the system refused more)");
    if (located)
        lua_concat(L, 2);
    lua_error(L);
}

static void on_memory_over(void *ud) {
    td_vm *vm = ud;
    lua_sethook(vm->L, mem_hook, LUA_MASKCOUNT, 1);
}

static int collect_cb(lua_State *L) {
    lua_gc(L, LUA_GCCOLLECT, 0);
    return 0;
}

/* A full collection, protected: a finalizer (__gc) that raises is logged,
 * never a panic. Only between resumes. */
static void full_collect(td_vm *vm) {
    if (lua_cpcall(vm->L, collect_cb, NULL) != 0) {
        td_vm_log_error(vm->L, "a full collection failed (a finalizer raised, or memory ran out)");
        lua_pop(vm->L, 1);
    }
}

/* An allocation failed during the last run: the state is full of the
 * failed task's garbage, and Lua would not collect it by itself before
 * refusing the next task too. Collect it now, before anything resumes. */
static void recover_memory(td_vm *vm) {
    size_t before = vm->alloc->live;
    if (lua_gethook(vm->L) == mem_hook)
        lua_sethook(vm->L, NULL, 0, 0);
    vm->mem_raised = 0;
    full_collect(vm);
    td_lalloc_drain(vm->alloc);
    td_lalloc_recovered(vm->alloc);
    if (vm->alloc->limit)
        td_log(TD_LOG_WARN, "memory: Lua ran out of memory (--lua-memory-limit %zu); a full collection took it from %zu to %zu bytes",
               vm->alloc->limit, before, vm->alloc->live);
    else
        td_log(TD_LOG_WARN, "memory: the system refused Lua memory; a full collection took it from %zu to %zu bytes",
               before, vm->alloc->live);
}

static void run_once(td_task *t, int nargs);

static void run(td_task *t, int nargs) {
    td_vm *vm = t->vm;
    run_once(t, nargs);
    if (vm->alloc->failed)
        recover_memory(vm);
}

static void run_once(td_task *t, int nargs) {
    td_vm *vm = t->vm;
    lua_State *co = t->co;
    if (t->fresh) {
        t->fresh = 0;
        if (t->from_pool) {
            lua_pushlightuserdata(co, (void *)&pool_marker);
            lua_insert(co, -(nargs + 1));
            nargs++;
        }
    }
    /* A request's task is timed (td_scope.timings): the wait that ends
     * now, up to this resume, then the run. Two clock reads a run. */
    uint64_t since = t->waited_since;
    t->waited_since = 0;
    td_timings *tm = t->scope ? t->scope->timings : NULL;
    vm->run_since = 0;
    if (tm) {
        vm->run_since = uv_hrtime();
        if (since)
            tm->wait_ns[t->wait_kind] += vm->run_since - since;
    }
    vm->depth++;
    if (vm->stall)
        td_stall_enter(vm->stall);
    vm->current = t;
    vm->alloc->enforce = 1;
    int rc = lua_resume(co, nargs);
    vm->alloc->enforce = 0;
    vm->current = NULL;
    /* The scope may have closed meanwhile (the response was finished). */
    tm = t->scope ? t->scope->timings : NULL;
    if (tm && vm->run_since) {
        uint64_t now = uv_hrtime();
        tm->lua_ns += now - vm->run_since;
        if (rc == LUA_YIELD && t->wait) {
            t->waited_since = now;
            t->wait_kind = (uint8_t)t->wait->kind;
        }
    }
    vm->run_since = 0;
    if (vm->stall)
        report_stall(t);
    vm->depth--;
    if (rc == LUA_YIELD) {
        if (t->wait)
            return;
        if (lua_gettop(co) == 1 && lua_touserdata(co, 1) == &pool_marker) {
            pool_put(t);
            return;
        }
        lua_settop(co, 0);
        lua_pushliteral(co, "coroutine.yield outside a coroutine the script created (nothing would resume it)");
        td_vm_log_error(co, NULL);
        task_end(t, LUA_ERRRUN);
        return;
    }
    if (rc != 0 && !t->silent)
        td_vm_log_error(co, NULL);
    task_end(t, rc);
}

static void run_posted(td_vm *vm) {
    while (!td_list_empty(&vm->posted) && !vm->closing) {
        td_task *p = td_container_of(vm->posted.next, td_task, link);
        td_list_remove(&p->link);
        run(p, p->posted_nargs);
    }
}

void td_vm_resume(td_task *t, int nargs) {
    td_vm *vm = t->vm;
    if (vm->closing || !t->alive)
        return;
    if (vm->depth > 0 || vm->held > 0) {
        t->posted_nargs = nargs;
        td_list_push_back(&vm->posted, &t->link);
        return;
    }
    run(t, nargs);
    run_posted(vm);
}

void td_vm_hold(void *ud) {
    td_vm *vm = ud;
    vm->held++;
}

void td_vm_release(void *ud) {
    td_vm *vm = ud;
    if (--vm->held == 0 && vm->depth == 0)
        run_posted(vm);
}

/* The run of the current task that last resumed L through the coroutine
 * relay, if that resume could pass a yield up (td_vm_relay_mark); 0 if
 * none. A mark made by another task, or by an earlier run of this one,
 * never matches the current run. */
static uint32_t relay_run(td_vm *vm, lua_State *L) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->relay);
    lua_pushthread(L);
    lua_rawget(L, -2);
    uint32_t run = (uint32_t)lua_tointeger(L, -1);
    lua_pop(L, 2);
    return run;
}

td_task *td_vm_task_of(lua_State *L) {
    td_vm *vm = lua_getexdata(L);
    td_task *t = vm ? vm->current : NULL;
    if (!t || !t->alive)
        return NULL;
    if (L == t->co || relay_run(vm, L) == t->run)
        return t;
    return NULL;
}

void td_vm_relay_mark(lua_State *L, int co_idx) {
    td_task *t = td_vm_task_of(L);
    if (!t || !lua_tothread(L, co_idx))
        return;
    uint32_t run = lua_isyieldable(L) ? t->run : 0;
    lua_rawgeti(L, LUA_REGISTRYINDEX, t->vm->relay);
    lua_pushvalue(L, co_idx);
    lua_pushinteger(L, run);
    lua_rawset(L, -3);
    lua_pop(L, 1);
}

td_task *td_vm_check_yieldable(lua_State *L, const char *fname) {
    td_vm *vm = lua_getexdata(L);
    td_task *t = vm ? vm->current : NULL;
    if (!t || !t->alive)
        luaL_error(L, "%s: cannot yield here: not inside a request, a spawned thread or the app's top level", fname);
    if (!lua_isyieldable(L))
        luaL_error(L, "%s: cannot yield across a C call (a metamethod, iterator or callback run by C)", fname);
    if (L != t->co && relay_run(vm, L) != t->run)
        luaL_error(L, "%s: cannot yield here: a coroutine on the way to the request was resumed from C", fname);
    return t;
}

int td_vm_doom(td_task *t, int transfer) {
    if (t->doom)
        return t->doom;
    if (t->scope && t->scope->doom && !transfer)
        return t->scope->doom;
    return 0;
}

/* Ends t's wait early: the work is stopped, and t resumes with nil, err
 * (posted: callers hold the vm). */
static void cancel_wait(td_task *t, int code) {
    td_wait *w = t->wait;
    if (!w)
        return;
    lua_State *co = td_vm_wait_end(w);
    w->cancel(w);
    lua_pushnil(co);
    lua_pushstring(co, td_err_name(code));
    td_vm_resume(t, 2);
}

void td_vm_task_daemon(td_task *t) {
    if (!t->daemon) {
        t->daemon = 1;
        t->vm->ndaemons++;
        if (t->vm->daemons_stopped)
            t->doom = TD_ECLOSED; /* started during the drain: it ends at its first wait */
    }
}

void td_vm_stop_daemons(td_vm *vm) {
    vm->daemons_stopped = 1;
    td_vm_hold(vm);
    td_list *pos, *tmp;
    td_list_foreach_safe(pos, tmp, &vm->alive) {
        td_task *t = td_container_of(pos, td_task, alive_link);
        if (t->daemon && !t->doom) {
            t->doom = TD_ECLOSED;
            cancel_wait(t, TD_ECLOSED);
        }
    }
    td_vm_release(vm);
}

/* ---- scopes ---- */

/* The deadline passed: every wait but a transfer with the client fails. */
static void expire(td_scope *s) {
    s->doom = TD_ETIMEOUT;
    td_list *pos, *tmp;
    td_list_foreach_safe(pos, tmp, &s->tasks) {
        td_task *t = td_container_of(pos, td_task, scope_link);
        if (t->wait && !t->wait->transfer)
            cancel_wait(t, TD_ETIMEOUT);
    }
}

/* A scope's entry came: its deadline passed, or it came early (the
 * deadline moved later, or the scope closed: see td_vm_scope_deadline). */
static void on_scope_due(td_deadlines *d, td_heap_node *n, uint64_t now) {
    td_scope *s = td_container_of(n, td_scope, timer);
    if (s->open && s->due && s->due <= now) {
        s->due = 0;
        td_deadlines_exact(d, n, 0);
        expire(s);
    } else {
        td_deadlines_exact(d, n, s->open ? s->due : 0);
    }
}

td_scope *td_vm_scope_open(td_task *t) {
    td_scope *s = &t->lead;
    td_vm *vm = t->vm;
    assert(!s->open);
    /* Room for every task's deadline is reserved: inserting never fails. */
    s->open = td_deadlines_reserve(&vm->deadlines, (uint32_t)vm->ntasks + 1) == 0;
    if (!s->open)
        return NULL;
    s->doom = 0;
    s->due = 0;
    s->ref = NULL;
    s->timings = NULL;
    td_vm_scope_join(s, t);
    return s;
}

void td_vm_scope_join(td_scope *s, td_task *t) {
    if (!s || !s->open)
        return;
    td_list_remove(&t->scope_link);
    t->scope = s;
    td_list_push_back(&s->tasks, &t->scope_link);
}

/* Lazily, as the transport's deadlines: the heap entry only has to come no
 * later than the deadline. A pooled task leads a new request's scope with
 * a later deadline, so most requests touch the heap not at all; an entry
 * that fires early is put right then. */
void td_vm_scope_deadline(td_scope *s, uint64_t ms) {
    if (!s->open)
        return;
    s->due = ms ? uv_now(s->vm->loop) + ms : 0;
    td_deadlines_lazy(&s->vm->deadlines, &s->timer, s->due);
}

/* The entry stays in the heap until it fires (or the task is freed). */
static void scope_end(td_scope *s) {
    s->open = 0;
    s->due = 0;
    if (s->ref)
        *s->ref = NULL;
    s->ref = NULL;
    s->timings = NULL;
}

void td_vm_scope_kill(td_scope *s, int code) {
    if (!s || !s->open)
        return;
    td_vm *vm = s->vm;
    td_vm_hold(vm);
    while (!td_list_empty(&s->tasks)) {
        td_task *t = td_container_of(s->tasks.next, td_task, scope_link);
        td_list_remove(&t->scope_link);
        t->scope = NULL;
        t->doom = code;
        cancel_wait(t, code);
    }
    scope_end(s);
    td_vm_release(vm);
}

void td_vm_scope_kill_threads(td_scope *s, int code, int interrupt_lead) {
    if (!s || !s->open)
        return;
    td_task *lead = td_container_of(s, td_task, lead);
    td_vm_hold(s->vm);
    if (lead->scope == s) {
        td_list_remove(&lead->scope_link);
        lead->scope = NULL;
        if (interrupt_lead)
            cancel_wait(lead, code);
    }
    td_vm_scope_kill(s, code);
    td_vm_release(s->vm);
}

void td_vm_scope_close(td_scope *s) {
    if (!s || !s->open)
        return;
    while (!td_list_empty(&s->tasks)) {
        td_task *t = td_container_of(s->tasks.next, td_task, scope_link);
        td_list_remove(&t->scope_link);
        t->scope = NULL;
    }
    scope_end(s);
}

void td_vm_scope_census(const td_scope *s, size_t *tasks, size_t *waits) {
    *tasks = *waits = 0;
    if (!s || !s->open)
        return;
    const td_task *lead = td_container_of(s, td_task, lead);
    for (const td_list *l = s->tasks.next; l != &s->tasks; l = l->next) {
        const td_task *t = td_container_of(l, td_task, scope_link);
        if (t == lead)
            continue;
        (*tasks)++;
        if (t->wait)
            (*waits)++;
    }
}

void td_vm_task_inherit(td_task *child, td_task *parent) {
    if (!parent)
        return;
    child->doom = parent->doom;
    td_vm_scope_join(parent->scope, child);
}

void td_vm_wait_begin(td_task *t, td_wait *w, void (*cancel)(td_wait *), int transfer, int kind) {
    assert(!t->wait && !t->pooled && kind >= 0 && kind < TD_WAIT_KINDS);
    w->task = t;
    w->cancel = cancel;
    w->transfer = transfer ? 1 : 0;
    w->kind = (unsigned)kind;
    td_list_push_back(&t->vm->waits, &w->link);
    t->vm->nwaits++;
    t->wait = w;
}

lua_State *td_vm_wait_end(td_wait *w) {
    td_task *t = w->task;
    td_list_remove(&w->link);
    t->vm->nwaits--;
    t->wait = NULL;
    return t->co;
}

void td_vm_account(td_vm *vm, uint64_t now) {
    td_task *t = vm->current;
    td_timings *tm = t && t->scope ? t->scope->timings : NULL;
    if (!tm || !vm->run_since || now < vm->run_since)
        return;
    tm->lua_ns += now - vm->run_since;
    vm->run_since = now;
}

void td_vm_settle(td_vm *vm, td_scope *s, uint64_t now) {
    td_vm_account(vm, now);
    if (!s || !s->open || !s->timings)
        return;
    for (td_list *l = s->tasks.next; l != &s->tasks; l = l->next) {
        td_task *t = td_container_of(l, td_task, scope_link);
        if (t->waited_since && t->waited_since < now) {
            s->timings->wait_ns[t->wait_kind] += now - t->waited_since;
            t->waited_since = now;
        }
    }
}

void td_vm_set_stall_guard(td_vm *vm, uint64_t threshold_ms, uint64_t shutdown_ms) {
    td_stall_stop(vm->stall);
    vm->stall = td_stall_start(vm->L, threshold_ms, shutdown_ms, describe_current, vm);
}

void td_vm_collect(td_vm *vm) {
    /* Twice: what has a finalizer (a WebSocket, a socket) is finalized by
     * one cycle and freed only by the next. */
    if (vm->depth == 0 && !vm->closing) {
        full_collect(vm);
        full_collect(vm);
    }
    td_lalloc_drain(vm->alloc);
}

void td_vm_set_memory_limit(td_vm *vm, size_t bytes) { td_lalloc_limit(vm->alloc, bytes); }

size_t td_vm_memory(td_vm *vm) { return vm->alloc->live; }

size_t td_vm_memory_limit(td_vm *vm) { return vm->alloc->limit; }

size_t td_vm_close(td_vm *vm) {
    if (!vm)
        return 0;
    vm->closing = 1;
    td_stall_stop(vm->stall);
    vm->stall = NULL;
    while (!td_list_empty(&vm->waits)) {
        td_wait *w = td_container_of(vm->waits.next, td_wait, link);
        td_vm_wait_end(w);
        w->cancel(w);
    }
    while (!td_list_empty(&vm->posted))
        td_list_remove(vm->posted.next);
    td_deadlines_close(&vm->deadlines);
    lua_close(vm->L);
#ifdef TD_SANITIZE
    /* The leak canary: a test sets this to prove that the leak check
     * reports task memory that teardown forgot to free. */
    if (getenv("TENDRIL_LEAK_CANARY"))
        td_list_init(&vm->alive);
#endif
    while (!td_list_empty(&vm->alive)) {
        td_task *t = td_container_of(vm->alive.next, td_task, alive_link);
        td_list_remove(&t->alive_link);
        free(t);
    }
    while (vm->nspare > 0)
        free(vm->spare[--vm->nspare]);
    free(vm->spare);
    free(vm->pool);
    /* LeakSanitizer cannot see a LuaJIT state that was never closed (the
     * library keeps pointers into it): the count must be back to zero. */
    size_t left = vm->alloc->live;
    td_lalloc_drain(vm->alloc);
    td_lalloc_free_reserve(vm->alloc);
    free(vm->alloc);
    free(vm);
    return left;
}
