/* The Lua-facing APIs, one file each. Every td_api_*_open adds its
 * functions to the table on top of the stack: the private module
 * "tendril.core", on which the modules in lua/tendril/ build the public API. */
#ifndef TD_API_H
#define TD_API_H

#include <lua.h>

#include "errors.h"
#include "http.h"
#include "shared.h"
#include "sock.h"
#include "vm.h"

/* The userdata "tendril.socket" (api_tcp.c): a socket's handle, never a
 * pointer, and its timeout. */
typedef struct td_api_socket {
    uint32_t slot, serial;
    uint64_t timeout_ms; /* each send and each read */
    int kind; /* enum td_wait_kind its waits count as: TD_WAIT_TCP, or TD_WAIT_HTTP for tendril.http's */
} td_api_socket;

/* [-0, +2] The failure half of the Lua I/O convention: nil, and the one
 * short name td_err_name gives the code. Returns 2. */
static inline int td_api_fail(lua_State *L, int code) {
    lua_pushnil(L);
    lua_pushstring(L, td_err_name(code));
    return 2;
}

/* The start of every waiting primitive: raises on misuse (see
 * td_vm_check_yieldable); returns the task, or NULL after pushing nil, err
 * (2 results) when the wait would fail at once because the task's request
 * is over (td_vm_doom). */
static inline td_task *td_api_wait_start(lua_State *L, const char *fname, int transfer) {
    td_task *t = td_vm_check_yieldable(L, fname);
    int doom = td_vm_doom(t, transfer);
    if (doom) {
        td_api_fail(L, doom);
        return NULL;
    }
    return t;
}

/* tendril.now, tendril.log, vm statistics. */
void td_api_tendril_open(lua_State *L, td_vm *vm);
/* tendril.sleep. */
void td_api_sleep_open(lua_State *L, td_vm *vm);
/* The request and response primitives, and http statistics; timeout_ms is
 * every request's deadline (--request-timeout; 0: none). */
void td_api_http_open(lua_State *L, td_vm *vm, td_http_server *hs, uint64_t timeout_ms);
/* Whether requests' time is counted (timings.h; on by default). */
void td_api_http_set_timings(int on);
/* Before the Lua state closes: output still held by reference lets go of
 * its strings without touching Lua. */
void td_api_http_teardown(void);
/* PostgreSQL connections (libpq), for lua/tendril/pg.lua. */
void td_api_pg_open(lua_State *L, td_vm *vm);
/* TCP client sockets and tcp.listen. */
void td_api_tcp_open(lua_State *L, td_vm *vm, td_transport *tp);
/* Closes every tcp.listen listener (shutdown and teardown). */
void td_api_tcp_close_listeners(void);
/* tcp.listen sessions running, and a callback for when the last ends:
 * shutdown waits for them as it waits for HTTP requests. */
size_t td_api_tcp_sessions(void);
/* tcp.listen listeners open (tendril run waits for them to close). */
size_t td_api_tcp_listeners(void);
void td_api_tcp_on_sessions_over(void (*cb)(void *ud), void *ud);
/* The HTTP client's response reader over TCP sockets. */
void td_api_http_client_open(lua_State *L, td_vm *vm, td_transport *tp);
/* Events and tendril.spawn. */
void td_api_thread_open(lua_State *L, td_vm *vm);
/* tendril.resolve. */
void td_api_dns_open(lua_State *L, td_vm *vm);
/* tls_trust: a verifying client's trust store, loaded off the loop. */
void td_api_tls_open(lua_State *L, td_vm *vm);
/* core.gzip_new: gzip streams for tendril.compress. */
void td_api_gzip_open(lua_State *L);
/* fs.read, fs.write, fs.stat. */
void td_api_fs_open(lua_State *L, td_vm *vm);
/* tendril.run. */
void td_api_process_open(lua_State *L, td_vm *vm);
/* Coroutine relay support: task_waiting, relay_set, isyieldable. */
void td_api_coroutine_open(lua_State *L, td_vm *vm);
/* [-0, +1] A table of headers: lower-case names (text + h[i].name) to
 * values; a repeated header's values joined with ", ". */
void td_api_push_headers(lua_State *L, const char *text, const td_http_header *h, size_t n);
/* [-0, +0] In the headers table on top, makes "set-cookie" a list of its
 * values in arrival order (a cookie's Expires holds a comma, so joining
 * them is lossy); absent stays absent. For answers the client reads. */
void td_api_set_cookie_list(lua_State *L, const char *text, const td_http_header *h, size_t n);
/* The td_http_request_cb that runs a request in a pooled task; ud is the vm. */
void td_api_http_dispatch(td_http_conn *hc, void *ud);
/* Output to a client of TD_API_WRITE_BY_REF bytes or more is written from
 * the Lua string itself (td_conn_write_ref), which a registry reference
 * keeps alive: td_api_ref_string takes it (the string at idx) and gives the
 * ud for td_api_release_ref, the release callback. */
#define TD_API_WRITE_BY_REF 16384
void *td_api_ref_string(lua_State *L, int idx);
void td_api_release_ref(void *ud);
/* After a write that did not hold the string after all (it returned 0 or
 * failed). */
void td_api_unref_string(lua_State *L, void *ud);

/* WebSockets (api_websocket.c). */
void td_api_websocket_open(lua_State *L, td_vm *vm, td_http_server *hs);
/* Shutdown: every WebSocket gets close 1001. */
void td_api_websocket_drain(void);
/* After the Lua state closed: what every WebSocket shares (zlib streams). */
void td_api_websocket_teardown(void);

/* tendril.shared: the dictionaries of `shared` (NULL: none) and their
 * watches. */
void td_api_shared_open(lua_State *L, td_vm *vm, td_shared *shared);
/* A worker's heartbeat (every 100 ms): a wake-up of its watches that was
 * marked but never written (the writer died in between) is taken. */
void td_api_shared_tick(void);
/* Shutdown: every watch's wait ends (its recv returns nil, "closed"). */
void td_api_shared_stop(void);
/* After the Lua state closed. */
void td_api_shared_teardown(void);

/* The td_http_over_cb: closes or kills the request's scope. */
void td_api_http_over(td_http_conn *hc, int status, void *ud);

#endif
