/* Hot reload: watches the directories that hold the app's loaded files,
 * debounces what an editor's save produces, asks lua/tendril/generation.lua
 * whether a loaded file's content changed, and runs the app's top level
 * again as a new generation in a task of its own. SIGHUP reloads on
 * demand, watching or not. Edits that arrive during a reload make one more
 * reload when it ends.
 *
 * Ownership: a td_reload owns its fs-event handles (one per directory),
 * its debounce timer and its SIGHUP handle. A load attempt's task points
 * at it, so it lives until the vm is closed: td_reload_stop closes the
 * watchers and the signal, td_reload_free the timer, whose close callback
 * frees it. */
#ifndef TD_RELOAD_H
#define TD_RELOAD_H

#include <stddef.h>

#include "vm.h"

typedef struct td_reload td_reload;

/* gen_idx: the stack index of the loaded tendril.generation module. */
td_reload *td_reload_new(td_vm *vm, int gen_idx, int watch);
/* Adds core.watch_dirs to the table on top of the stack. */
void td_reload_open_api(lua_State *L, td_reload *r);
/* Loads generation 1, running the loop until it is done. Returns 0, or -1
 * with a one-line message in err. */
int td_reload_first(td_reload *r, char *err, size_t size);
/* fn runs as each reload begins (not the first load): what else the app
 * rereads (its certificates). */
void td_reload_on_reload(td_reload *r, void (*fn)(void *ud), void *ud);
/* Starts watching for edits and SIGHUP (after the server listens). */
void td_reload_arm(td_reload *r);
/* Stops watching and reloading (shutdown); an attempt in flight may end. */
void td_reload_stop(td_reload *r);
/* After td_vm_close (no attempt can end any more): frees r once its last
 * handle has closed. */
void td_reload_free(td_reload *r);

#endif
