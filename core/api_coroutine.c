/* What lua/tendril/coroutine.lua needs to let a tendril call yield inside a
 * coroutine the script created: whether the running task is waiting in a
 * tendril call, and a record of which resumers can pass a yield up. */
#include <lauxlib.h>

#include "api.h"

/* [-0, +1] task_waiting() -> boolean: the task is suspended in a tendril call */
static int task_waiting(lua_State *L) {
    td_task *t = td_vm_task_of(L);
    lua_pushboolean(L, t && t->alive && t->wait != NULL);
    return 1;
}

/* [-1, +0] relay_mark(co): the running coroutine is about to resume co */
static int relay_mark(lua_State *L) {
    luaL_checktype(L, 1, LUA_TTHREAD);
    td_vm_relay_mark(L, 1);
    return 0;
}

/* [-0, +1] task_coroutine() -> the running task's own coroutine | nil */
static int task_coroutine(lua_State *L) {
    td_task *t = td_vm_task_of(L);
    if (!t || !t->alive)
        return 0;
    lua_pushthread(t->co);
    lua_xmove(t->co, L, 1);
    return 1;
}

void td_api_coroutine_open(lua_State *L, td_vm *vm) {
    (void)vm;
    lua_pushcfunction(L, task_coroutine);
    lua_setfield(L, -2, "task_coroutine");
    lua_pushcfunction(L, task_waiting);
    lua_setfield(L, -2, "task_waiting");
    lua_pushcfunction(L, relay_mark);
    lua_setfield(L, -2, "relay_mark");
}
