/* The loop-stall guard: a watchdog thread that notices when Lua code holds
 * the event loop for longer than a threshold.
 *
 * The loop thread only bumps a counter around each resume (no clock read,
 * no lock). The watchdog samples the counter; when one resume has lasted
 * past the threshold it signals the loop thread, whose handler sets a
 * one-shot Lua hook (as luajit.c does for Ctrl-C) so the next interpreted
 * instruction records the script's file:line. When the resume ends, one
 * warning line names the task, the duration and, if the hook fired, the
 * place. Hooks never fire inside JIT-compiled loops: those stalls are
 * reported without a place. */
#ifndef TD_STALL_H
#define TD_STALL_H

#include <lua.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

typedef struct td_stall td_stall;

/* Names what is running (e.g. "GET /path"), on the loop thread. */
typedef void (*td_stall_describe)(void *ud, char *buf, size_t size);

/* Starts the watchdog (threshold_ms > 0) for the state L. The hook calls
 * describe while the stall lasts, when the request is surely still there.
 * NULL when it could not start (the server runs without the guard). */
td_stall *td_stall_start(lua_State *L, uint64_t threshold_ms, td_stall_describe describe, void *ud);
void td_stall_stop(td_stall *s);

/* Around each lua_resume on the loop thread. */
void td_stall_enter(td_stall *s);
/* Returns 1 when the resume that just ended was a stall; then the duration,
 * the place (or "") and what was running (or "", if the hook never ran)
 * are filled in; each buffer holds TD_STALL_TEXT bytes. */
#define TD_STALL_TEXT 256
int td_stall_leave(td_stall *s, uint64_t *ms, char *where, char *who);

#endif
