/* A request's time, by where it went: running Lua (and the C it calls),
 * and waiting, by kind. The HTTP layer keeps one per request (td_http_req)
 * for the access log; the Lua bridge adds to it while the request's tasks
 * run and wait (td_scope.timings); req:timings() reads it.
 *
 * Ownership: the record lives in the request state; the scope's pointer to
 * it is cleared when the scope ends (the request is over first, before its
 * state is reused) or outlives the request (a WebSocket takes the scope at
 * the upgrade and clears it). */
#ifndef TD_TIMINGS_H
#define TD_TIMINGS_H

#include <stdint.h>

/* What a task waits on. The order is the access log's and req:timings()'. */
enum td_wait_kind {
    TD_WAIT_HTTP,  /* tendril.http: connecting, sending, reading the answer */
    TD_WAIT_TCP,   /* tcp sockets */
    TD_WAIT_SLEEP, /* tendril.sleep */
    TD_WAIT_FS,    /* tendril.fs, loading a trust store */
    TD_WAIT_DNS,   /* tendril.resolve */
    TD_WAIT_RUN,   /* tendril.run: a child process */
    TD_WAIT_BODY,  /* the request's own client: its body, or draining the answer */
    TD_WAIT_WS,    /* a WebSocket's messages */
    TD_WAIT_DB,    /* tendril.pg; tendril.redis's shared connection */
    TD_WAIT_OTHER, /* joining a thread, an event, the shared pump */
    TD_WAIT_KINDS
};

typedef struct td_timings {
    uint64_t lua_ns;                  /* running the request's tasks */
    uint64_t wait_ns[TD_WAIT_KINDS];  /* their waits, summed over tasks */
} td_timings;

static inline const char *td_wait_kind_name(int kind) {
    static const char *const names[TD_WAIT_KINDS] = {"http", "tcp", "sleep", "fs", "dns",
                                                      "run",  "body", "ws",  "db",  "other"};
    return kind >= 0 && kind < TD_WAIT_KINDS ? names[kind] : "other";
}

#endif
