/* The loop-stall guard: a watchdog thread that notices when Lua code holds
 * the event loop for longer than a threshold, and that still stops the
 * process when a stop signal cannot reach a loop stuck in Lua.
 *
 * The loop thread only bumps a counter around each resume (no clock read,
 * no lock). The watchdog samples the counter; when one resume has lasted
 * past the threshold it signals the loop thread, whose handler sets a
 * one-shot Lua hook (as luajit.c does for Ctrl-C) so the next interpreted
 * instruction records the script's file:line and what runs. While the
 * stall lasts the watchdog warns at once and then every few seconds; when
 * the resume ends, one warning line gives the whole duration. Hooks never
 * fire inside JIT-compiled loops: those stalls are reported without a
 * place, and the watchdog names the task itself (describe is then called
 * on its thread: the resume it describes is still running, so what it
 * reads cannot change).
 *
 * Stop signals are handled by the event loop, which a stuck resume never
 * lets run: the app tells the guard of each one (td_stall_stop_signal),
 * and when the loop is still stuck in Lua at the shutdown deadline, or at
 * a second signal, the watchdog logs a last line and ends the process with
 * exit status 1. */
#ifndef TD_STALL_H
#define TD_STALL_H

#include <lua.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

typedef struct td_stall td_stall;

/* Names what is running (e.g. "GET /path"), on the loop thread. */
typedef void (*td_stall_describe)(void *ud, char *buf, size_t size);

/* Starts the watchdog for the state L: stall warnings past threshold_ms (0:
 * none), and the shutdown watch with shutdown_ms as the deadline after a
 * stop signal. describe names what runs (see above). NULL when it could
 * not start (the server runs without the guard). One per process. */
td_stall *td_stall_start(lua_State *L, uint64_t threshold_ms, uint64_t shutdown_ms, td_stall_describe describe,
                         void *ud);
void td_stall_stop(td_stall *s);

/* While a stall lasts, the watchdog also writes what holds the loop ("GET
 * /x, at app.lua:3") into buf (a worker's shared slot, read by the
 * supervisor that kills a stuck worker); "" when it ends. NULL: nowhere.
 * One per process; set before td_stall_start. */
void td_stall_publish(char *buf, size_t size);

/* From a signal handler (async-signal-safe): a stop signal came. */
void td_stall_stop_signal(void);

/* Around each lua_resume on the loop thread. */
void td_stall_enter(td_stall *s);
/* Returns 1 when the resume that just ended was a stall; then the duration,
 * the place (or "") and what was running (or "", if the hook never ran)
 * are filled in; each buffer holds TD_STALL_TEXT bytes. */
#define TD_STALL_TEXT 256
int td_stall_leave(td_stall *s, uint64_t *ms, char *where, char *who);

#endif
