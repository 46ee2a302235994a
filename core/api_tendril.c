/* tendril.now, the error log for scripts, and the vm's counters. */
#include <lauxlib.h>

#include "api.h"
#include "clock.h"
#include "log.h"

/* [-0, +1] */
static int td_now(lua_State *L) {
    td_vm *vm = lua_touserdata(L, lua_upvalueindex(1));
    lua_pushnumber(L, td_clock_now(td_vm_loop(vm)));
    return 1;
}

/* [-2, +0] core.log(level, message): tendril.log joins its arguments. */
static int td_log_message(lua_State *L) {
    const char *name = luaL_checkstring(L, 1);
    size_t len;
    const char *msg = luaL_checklstring(L, 2, &len);
    int level = td_log_level_from_name(name);
    if (level < 0)
        return luaL_error(L, "tendril.log: unknown level '%s' (debug, info, notice, warn, error, crit)", name);
    td_log_raw((td_log_level)level, msg, len);
    return 0;
}

/* [-0, +1] A table of the vm's counters. */
static int td_vm_stats_lua(lua_State *L) {
    td_vm *vm = lua_touserdata(L, lua_upvalueindex(1));
    td_vm_stats st;
    td_vm_stats_get(vm, &st);
    lua_createtable(L, 0, 4);
    lua_pushinteger(L, (lua_Integer)st.anchored);
    lua_setfield(L, -2, "anchored");
    lua_pushinteger(L, (lua_Integer)st.tasks);
    lua_setfield(L, -2, "tasks");
    lua_pushinteger(L, (lua_Integer)st.pooled);
    lua_setfield(L, -2, "pooled");
    lua_pushinteger(L, (lua_Integer)st.waits);
    lua_setfield(L, -2, "waits");
    lua_pushnumber(L, (lua_Number)td_vm_memory(vm));
    lua_setfield(L, -2, "memory");
    lua_pushinteger(L, (lua_Integer)td_api_tcp_listeners());
    lua_setfield(L, -2, "listeners");
    lua_pushnumber(L, (lua_Number)st.stalls);
    lua_setfield(L, -2, "stalls");
    return 1;
}

/* [-0, +1] Says why LuaJIT's own memory error has no position. */
static int td_memory_note(lua_State *L) {
    td_vm *vm = lua_touserdata(L, lua_upvalueindex(1));
    size_t limit = td_vm_memory_limit(vm);
    if (limit)
        lua_pushfstring(L, "--lua-memory-limit %d MiB; no line: one allocation larger than the headroom, "
                           "or compiled code, which runs no hooks",
                        (int)(limit >> 20));
    else
        lua_pushliteral(L, "the system refused memory; no line");
    return 1;
}

void td_api_tendril_open(lua_State *L, td_vm *vm) {
    static const luaL_Reg funcs[] = {
        {"now", td_now},
        {"log", td_log_message},
        {"vm_stats", td_vm_stats_lua},
        {"memory_note", td_memory_note},
        {NULL, NULL},
    };
    lua_pushlightuserdata(L, vm);
    luaL_setfuncs(L, funcs, 1);
}
