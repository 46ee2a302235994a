/* What the processes of one server share, mapped before the workers fork:
 * the dictionaries of `--shared NAME=SIZE` (shdict.h) and one slot per
 * worker with its loop's heartbeat, what its stall guard last saw, and
 * the eventfd that wakes it when a key it watches changes.
 *
 * Ownership: td_shared_new runs in the process that forks (the supervisor,
 * or the only process); that process alone frees it. Slots are indexed by
 * worker id - 1: a replacement worker takes over the slot (and eventfd) of
 * the worker it replaces. No libuv, no Lua. */
#ifndef TD_SHARED_H
#define TD_SHARED_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "shdict.h"

#define TD_SHARED_MAX_DICTS 32
#define TD_SHARED_STALL_TEXT 600

typedef struct td_worker_slot {
    /* Bumped by the worker's loop at every turn; the supervisor kills a
     * worker whose beat stands still for --stall-kill seconds. */
    _Atomic uint64_t beat;
    /* A wake-up is on its way: writers do not write the eventfd again
     * until the worker read it. */
    _Atomic uint32_t pending;
    /* What held the loop, as the worker's stall guard saw it ("GET /x, at
     * app.lua:3"), while a stall lasts; "" otherwise. */
    char stall[TD_SHARED_STALL_TEXT];
    int notify_fd; /* an eventfd */
} td_worker_slot;

typedef struct td_shared {
    td_shdict *dicts[TD_SHARED_MAX_DICTS];
    size_t ndicts;
    td_worker_slot *slots; /* nslots of them, in one shared mapping */
    unsigned nslots;
    unsigned self; /* this process's slot (worker id - 1) */
} td_shared;

/* The dictionaries (n names and sizes) and nslots worker slots; NULL after
 * writing why into err. Becomes the process's td_shared_get(). */
td_shared *td_shared_new(const char *const *names, const size_t *sizes, size_t n, unsigned nslots, char *err,
                         size_t errsize);
void td_shared_free(td_shared *s);
/* The process's shared state (inherited across fork), or NULL. */
td_shared *td_shared_get(void);
/* The dictionary called name, or NULL. */
td_shdict *td_shared_dict(td_shared *s, const char *name);
/* Wakes each worker whose bit is set in mask (bit i: slot i). */
void td_shared_notify(td_shared *s, uint64_t mask);
/* In a worker, after its eventfd woke it and before it reads the changes
 * (td_shdict_changes): takes the pending wake-up. */
void td_shared_notified(td_shared *s);

#endif
