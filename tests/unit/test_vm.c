/* The task model: waits that end, are cancelled or fail at once; scopes
 * (a client that leaves, a deadline, a finished answer); a coroutine kept
 * by one task and resumed by another acting for the one that resumes it;
 * pooled tasks; and teardown with nothing left (Lua's bytes back to 0). */
#include "api.h"
#include "check.h"
#include "vm.h"

#include <lauxlib.h>
#include <stdlib.h>

static uv_loop_t loop;
static td_vm *vm;

/* park(transfer): a wait nothing ends but a cancel; wake() ends the last. */
typedef struct park_wait {
    td_wait wait;
} park_wait;

static park_wait *last_park;
static int cancels;

static void cancel_park(td_wait *w) {
    cancels++;
    if (last_park == (park_wait *)w)
        last_park = NULL;
    free(w);
}

static int park(lua_State *L) {
    td_task *t = td_api_wait_start(L, "park", lua_toboolean(L, 1));
    if (!t)
        return 2;
    /* Garbage in the record, as malloc may leave it: td_vm_wait_begin sets
     * what the vm reads (a stray "transfer" bit once spared waits from
     * their request's deadline). */
    park_wait *w = malloc(sizeof *w);
    memset(w, 0xff, sizeof *w);
    td_vm_wait_begin(t, &w->wait, cancel_park, lua_toboolean(L, 1), TD_WAIT_OTHER);
    last_park = w;
    return lua_yield(L, 0);
}

/* Ends the last parked wait with "woken". */
static void wake(void) {
    park_wait *w = last_park;
    last_park = NULL;
    td_task *t = w->wait.task;
    lua_State *co = td_vm_wait_end(&w->wait);
    lua_pushliteral(co, "woken");
    free(w);
    td_vm_resume(t, 1);
}

/* What the tasks' functions returned, joined. */
static char results[256];
static int ended;

static void on_end(td_task *t, int status) {
    ended++;
    if (status != 0) {
        snprintf(results, sizeof results, "error");
        return;
    }
    lua_State *co = t->co;
    int n = lua_gettop(co);
    if (results[0]) {
        size_t used = strlen(results);
        snprintf(results + used, sizeof results - used, " | ");
    }
    for (int i = 1; i <= n; i++) {
        const char *s = lua_tostring(co, i);
        size_t used = strlen(results);
        snprintf(results + used, sizeof results - used, "%s%s", i > 1 ? " " : "", s ? s : "nil");
    }
}

/* results_of_use(a, b): what the generator gave its resumer. */
static int results_of_use(lua_State *L) {
    snprintf(results, sizeof results, "gen got %s %s", luaL_optstring(L, 1, "nil"), luaL_optstring(L, 2, "nil"));
    return 0;
}

static void reset(void) {
    ended = 0;
    results[0] = '\0';
}

/* A task running the global function `name`. */
static td_task *start(const char *name) {
    lua_State *L = td_vm_state(vm);
    lua_getglobal(L, name);
    td_task *t = td_vm_task_new(vm, on_end);
    CHECK(t != NULL);
    return t;
}

static void run(const char *code) {
    lua_State *L = td_vm_state(vm);
    if (luaL_dostring(L, code) != 0) {
        fprintf(stderr, "lua: %s\n", lua_tostring(L, -1));
        CHECK(0);
        lua_pop(L, 1);
    }
}

static void stats(td_vm_stats *st) { td_vm_stats_get(vm, st); }

static void test_wait_and_wake(void) {
    reset();
    td_task *t = start("once");
    td_vm_resume(t, 0);
    CHECK(last_park != NULL);
    td_vm_stats st;
    stats(&st);
    CHECK_EQ_INT(st.waits, 1);
    wake();
    CHECK_EQ_INT(ended, 1);
    CHECK(strcmp(results, "woken") == 0);
    stats(&st);
    CHECK_EQ_INT(st.waits, 0);
    CHECK_EQ_INT(st.tasks, 0);
    CHECK_EQ_INT(st.anchored, 0);
}

static void test_scope_kill(void) {
    reset();
    cancels = 0;
    td_task *lead = start("twice");
    td_scope *s = td_vm_scope_open(lead);
    td_vm_resume(lead, 0);
    /* A thread in the same fate. */
    td_task *thread = start("once");
    td_vm_task_inherit(thread, lead);
    td_vm_resume(thread, 0);
    td_vm_stats st;
    stats(&st);
    CHECK_EQ_INT(st.waits, 2);
    td_vm_scope_kill(s, TD_ECLOSED);
    /* Both waits were cancelled; both tasks resumed with nil, "closed";
     * the lead's second wait failed at once. */
    CHECK_EQ_INT(cancels, 2);
    CHECK_EQ_INT(ended, 2);
    CHECK(strcmp(results, "nil closed nil closed | nil closed") == 0);
    stats(&st);
    CHECK_EQ_INT(st.waits, 0);
    CHECK_EQ_INT(st.tasks, 0);
}

static void test_scope_deadline_spares_transfers(void) {
    reset();
    td_task *lead = start("transfer_then_wait");
    td_scope *s = td_vm_scope_open(lead);
    td_vm_scope_deadline(s, 30);
    td_vm_resume(lead, 0);
    /* Past the deadline, a transfer goes on. */
    for (int i = 0; i < 100; i++)
        uv_run(&loop, UV_RUN_NOWAIT), uv_sleep(1);
    CHECK_EQ_INT(ended, 0);
    CHECK(last_park != NULL);
    wake(); /* the transfer ends; the next wait fails at once */
    CHECK_EQ_INT(ended, 1);
    CHECK(strcmp(results, "woken nil timeout") == 0);
}

static void test_scope_deadline_cancels_a_wait(void) {
    reset();
    cancels = 0;
    td_task *lead = start("twice");
    td_scope *s = td_vm_scope_open(lead);
    td_vm_scope_deadline(s, 20);
    td_vm_resume(lead, 0);
    for (int i = 0; i < 200 && !ended; i++)
        uv_run(&loop, UV_RUN_NOWAIT), uv_sleep(1);
    CHECK_EQ_INT(cancels, 1);
    CHECK_EQ_INT(ended, 1);
    CHECK(strcmp(results, "nil timeout nil timeout") == 0);
}

static void test_closed_scope_detaches(void) {
    reset();
    td_task *lead = start("once");
    td_scope *s = td_vm_scope_open(lead);
    td_vm_scope_deadline(s, 20);
    td_vm_resume(lead, 0);
    td_vm_scope_close(s); /* the answer was finished */
    for (int i = 0; i < 60; i++)
        uv_run(&loop, UV_RUN_NOWAIT), uv_sleep(1);
    CHECK_EQ_INT(ended, 0); /* the deadline no longer applies */
    wake();
    CHECK(strcmp(results, "woken") == 0);
}

/* Finding 1: a generator started in one pooled task's request and resumed
 * in a later request by another task, while the first task (recycled)
 * waits for something else. */
static void test_coroutine_acts_for_its_resumer(void) {
    reset();
    lua_State *L = td_vm_state(vm);
    lua_getglobal(L, "serve");
    td_vm_set_pool_function(vm);
    /* Request 1 starts the generator (it parks inside it), is woken, ends:
     * its task goes back to the pool. */
    td_task *a = td_vm_task_pooled(vm, on_end);
    lua_pushstring(a->co, "make");
    td_vm_resume(a, 1);
    CHECK(last_park && last_park->wait.task == a);
    wake();
    CHECK(a->pooled);
    /* Request 2 takes the same task and parks in it. */
    td_task *b = td_vm_task_pooled(vm, on_end);
    CHECK(b == a);
    lua_pushstring(b->co, "park");
    td_vm_resume(b, 1);
    park_wait *b_wait = last_park;
    /* Request 3, another task, resumes the generator: its wait is c's. */
    td_task *c = td_vm_task_pooled(vm, on_end);
    CHECK(c != b);
    td_scope *s = td_vm_scope_open(c);
    lua_pushstring(c->co, "use");
    td_vm_resume(c, 1);
    CHECK(last_park && last_park->wait.task == c);
    CHECK(b->wait == &b_wait->wait); /* b still waits on its own */
    /* Killing c's scope ends the generator's wait; b waits on. */
    td_vm_scope_kill(s, TD_ECLOSED);
    CHECK(b->wait == &b_wait->wait);
    CHECK(strcmp(results, "gen got nil closed") == 0);
    last_park = b_wait;
    wake();
    CHECK(b->pooled);
}

static void test_pool(void) {
    lua_State *L = td_vm_state(vm);
    lua_getglobal(L, "serve");
    td_vm_set_pool_function(vm);
    reset();
    td_vm_stats before, st;
    stats(&before);
    for (int i = 0; i < 3; i++) {
        td_task *t = td_vm_task_pooled(vm, on_end);
        lua_pushstring(t->co, "park");
        td_vm_resume(t, 1);
        wake();
    }
    stats(&st);
    /* One coroutine served all three: no task more than before. */
    CHECK_EQ_INT(st.tasks, before.tasks > 0 ? before.tasks : 1);
    CHECK_EQ_INT(st.pooled, st.tasks);
    CHECK_EQ_INT(st.anchored, st.tasks);
    CHECK_EQ_INT(ended, 0);
}

static void never(uv_timer_t *t) { (void)t; }

int main(void) {
    uv_loop_init(&loop);
    /* The vm's timer does not keep a loop alive (a server's listener
     * does): this one stands in for it. */
    uv_timer_t alive;
    uv_timer_init(&loop, &alive);
    uv_timer_start(&alive, never, 1000000, 0);
    vm = td_vm_new(&loop);
    lua_State *L = td_vm_state(vm);
    /* tendril.core, as much of it as the relay needs, plus park. */
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "loaded");
    lua_newtable(L);
    td_api_coroutine_open(L, vm);
    lua_pushcfunction(L, park);
    lua_setfield(L, -2, "park");
    lua_setfield(L, -2, "tendril.core");
    lua_pop(L, 2);
    lua_register(L, "results_of_use", results_of_use);
    run("require('tendril.coroutine').install()\n"
        "local core = require 'tendril.core'\n"
        "park = core.park\n"
        "function once() return park() end\n"
        "function twice() local a, b = park() local c, d = park() return a, b, c, d end\n"
        "function transfer_then_wait() local a = park(true) local b, c = park() return a, b, c end\n"
        "function serve(marker, what)\n"
        "  while true do\n"
        "    if what == 'make' then\n"
        "      gen = coroutine.wrap(function() while true do coroutine.yield(park()) end end)\n"
        "      gen()\n"
        "    elseif what == 'park' then park()\n"
        "    else local a, b = gen() results_of_use(a, b) end\n"
        "    what = coroutine.yield(marker)\n"
        "  end\n"
        "end\n"
        "");
    test_wait_and_wake();
    test_scope_kill();
    test_scope_deadline_spares_transfers();
    test_scope_deadline_cancels_a_wait();
    test_closed_scope_detaches();
    test_coroutine_acts_for_its_resumer();
    test_pool();
    CHECK_EQ_INT(td_vm_close(vm), 0); /* every byte Lua held is back */
    uv_close((uv_handle_t *)&alive, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_EQ_INT(uv_loop_close(&loop), 0);
    return check_result("test_vm");
}
