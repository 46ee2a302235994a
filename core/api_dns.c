/* Name resolution on libuv's thread pool (getaddrinfo honours /etc/hosts).
 * lua/tendril.lua caches answers and joins concurrent lookups of one name,
 * so the small thread pool is not flooded (app.c also sizes it). */
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "errors.h"

typedef struct dns_wait {
    td_wait wait;
    uv_getaddrinfo_t req;
    int cancelled;
} dns_wait;

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
    dns_wait *w = req->data;
    if (w->cancelled) {
        uv_freeaddrinfo(res);
        free(w);
        return;
    }
    td_task *t = w->wait.task;
    lua_State *co = td_vm_wait_end(&w->wait);
    int n = 1;
    if (status == 0) {
        lua_newtable(co);
        int i = 0;
        for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
            char ip[64];
            if (ai->ai_family == AF_INET)
                uv_ip4_name((struct sockaddr_in *)ai->ai_addr, ip, sizeof ip);
            else if (ai->ai_family == AF_INET6)
                uv_ip6_name((struct sockaddr_in6 *)ai->ai_addr, ip, sizeof ip);
            else
                continue;
            /* getaddrinfo repeats an address per socket type at times. */
            int dup = 0;
            for (int j = 1; j <= i && !dup; j++) {
                lua_rawgeti(co, -1, j);
                dup = strcmp(lua_tostring(co, -1), ip) == 0;
                lua_pop(co, 1);
            }
            if (!dup) {
                lua_pushstring(co, ip);
                lua_rawseti(co, -2, ++i);
            }
        }
    } else {
        n = td_api_fail(co, status);
    }
    uv_freeaddrinfo(res);
    free(w);
    td_vm_resume(t, n);
}

static void cancel_dns(td_wait *wait) {
    dns_wait *w = td_container_of(wait, dns_wait, wait);
    /* A lookup already running in a worker cannot be stopped: the callback
     * frees the record when it comes. */
    w->cancelled = 1;
    uv_cancel((uv_req_t *)&w->req);
}

/* [-1, +1|2] resolve(name) -> { address, ... } | nil, err; yields */
static int resolve(lua_State *L) {
    td_vm *vm = lua_touserdata(L, lua_upvalueindex(1));
    const char *name = luaL_checkstring(L, 1);
    td_task *t = td_api_wait_start(L, "tendril.resolve", 0);
    if (!t)
        return 2;
    dns_wait *w = calloc(1, sizeof *w);
    if (!w)
        return luaL_error(L, "tendril.resolve: out of memory");
    w->req.data = w;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    int rc = uv_getaddrinfo(td_vm_loop(vm), &w->req, on_resolved, name, NULL, &hints);
    if (rc) {
        free(w);
        return td_api_fail(L, rc);
    }
    td_vm_wait_begin(t, &w->wait, cancel_dns, 0, TD_WAIT_DNS);
    return lua_yield(L, 0);
}

void td_api_dns_open(lua_State *L, td_vm *vm) {
    lua_pushlightuserdata(L, vm);
    lua_pushcclosure(L, resolve, 1);
    lua_setfield(L, -2, "resolve");
}
