/* The Lua-facing APIs, one file each. Every td_api_*_open adds its
 * functions to the table on top of the stack: the private module
 * "tendril.core", on which the modules in lua/tendril/ build the public API. */
#ifndef TD_API_H
#define TD_API_H

#include <lua.h>

#include "http.h"
#include "vm.h"

/* tendril.now, tendril.log, vm statistics. */
void td_api_tendril_open(lua_State *L, td_vm *vm);
/* tendril.sleep. */
void td_api_sleep_open(lua_State *L, td_vm *vm);
/* The request and response primitives, and http statistics. */
void td_api_http_open(lua_State *L, td_vm *vm, td_http_server *hs);
/* The td_http_request_cb that runs a request in a pooled task; ud is the vm. */
void td_api_http_dispatch(td_http_conn *hc, void *ud);

#endif
