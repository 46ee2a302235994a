/* The trust store a verifying TLS client needs, loaded on libuv's thread
 * pool: the system's store takes tens of milliseconds to read and parse,
 * which the loop (every other client) must not wait for. lua/tendril/tcp.lua
 * asks for it before connecting; once kept (tls.c), asking costs a lookup.
 *
 * One load per CA file at a time: the tasks that ask while it runs wait on
 * it. A waiter is a malloc'd record its task owns (cancelled: unlinked and
 * freed); the load is owned by the list of loads and freed in its
 * after-work callback, whoever still waits. */
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "list.h"
#include "tls.h"

typedef struct trust_load {
    uv_work_t req;
    td_list link;    /* loads */
    td_list waiters; /* trust_wait */
    char *ca_file;   /* NULL: the system's store */
    void *ctx;       /* the result, or NULL */
    char err[300];
} trust_load;

typedef struct trust_wait {
    td_wait wait;
    td_list link;
} trust_wait;

static td_list loads = {&loads, &loads};

static int same_file(const char *a, const char *b) { return a == b || (a && b && strcmp(a, b) == 0); }

static void load(uv_work_t *req) {
    trust_load *l = req->data;
    l->ctx = td_tls_trust_load(l->ca_file, l->err, sizeof l->err);
}

static int trust_results(lua_State *L, const char *err) {
    if (!err) {
        lua_pushboolean(L, 1);
        return 1;
    }
    lua_pushnil(L);
    lua_pushfstring(L, "tls: %s", err);
    return 2;
}

static void loaded(uv_work_t *req, int status) {
    trust_load *l = req->data;
    (void)status;
    td_list_remove(&l->link);
    td_tls_trust_keep(l->ca_file, l->ctx);
    int ok = l->ctx != NULL;
    while (!td_list_empty(&l->waiters)) {
        trust_wait *w = td_container_of(l->waiters.next, trust_wait, link);
        td_list_remove(&w->link);
        td_task *t = w->wait.task;
        lua_State *co = td_vm_wait_end(&w->wait);
        int n = trust_results(co, ok ? NULL : l->err);
        free(w);
        td_vm_resume(t, n);
    }
    free(l->ca_file);
    free(l);
}

static void cancel_trust_wait(td_wait *wait) {
    trust_wait *w = td_container_of(wait, trust_wait, wait);
    td_list_remove(&w->link);
    free(w);
}

/* [-1, +1|2] tls_trust(ca_file | nil) -> true | nil, err; may yield */
static int tls_trust(lua_State *L) {
    td_vm *vm = lua_touserdata(L, lua_upvalueindex(1));
    const char *ca_file = luaL_optstring(L, 1, NULL);
    if (td_tls_trust_ready(ca_file)) {
        lua_pushboolean(L, 1);
        return 1;
    }
    td_task *t = td_api_wait_start(L, "tls", 0);
    if (!t)
        return 2;
    trust_load *l = NULL;
    for (td_list *p = loads.next; p != &loads; p = p->next) {
        trust_load *x = td_container_of(p, trust_load, link);
        if (same_file(x->ca_file, ca_file)) {
            l = x;
            break;
        }
    }
    trust_wait *w = calloc(1, sizeof *w);
    if (!w)
        return luaL_error(L, "tls: out of memory");
    if (!l) {
        l = calloc(1, sizeof *l);
        if (!l || (ca_file && !(l->ca_file = strdup(ca_file)))) {
            free(l);
            free(w);
            return luaL_error(L, "tls: out of memory");
        }
        td_list_init(&l->waiters);
        l->req.data = l;
        int rc = uv_queue_work(td_vm_loop(vm), &l->req, load, loaded);
        if (rc) {
            free(l->ca_file);
            free(l);
            free(w);
            return td_api_fail(L, rc);
        }
        td_list_push_back(&loads, &l->link);
    }
    td_list_push_back(&l->waiters, &w->link);
    td_vm_wait_begin(t, &w->wait, cancel_trust_wait, 0, TD_WAIT_FS);
    return lua_yield(L, 0);
}

void td_api_tls_open(lua_State *L, td_vm *vm) {
    static const luaL_Reg funcs[] = {
        {"tls_trust", tls_trust},
        {NULL, NULL},
    };
    lua_pushlightuserdata(L, vm);
    luaL_setfuncs(L, funcs, 1);
}
