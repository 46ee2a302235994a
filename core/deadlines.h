/* Deadlines of many objects on one libuv timer: a heap of nodes that live
 * inside the objects (heap.h), the timer armed for the earliest.
 *
 * Lazy by design: an entry only has to come no later than its object's
 * deadline. A deadline that moves later or goes leaves the entry where it
 * is; when it comes early, the owner's callback sees nothing due and puts
 * it right. Keep-alive connections and pooled request tasks move their
 * deadlines later all the time, so most of those moves touch the heap not
 * at all.
 *
 * Ownership: the owner embeds the td_deadlines and the nodes; the timer is
 * the set's own memory, freed in its close callback (td_deadlines_close
 * may run just before the owner itself is freed). */
#ifndef TD_DEADLINES_H
#define TD_DEADLINES_H

#include <stdint.h>
#include <uv.h>

#include "heap.h"

typedef struct td_deadlines td_deadlines;

/* A node's key has come (now >= key). The callback must take the node out
 * (td_deadlines_exact with 0) or move it past now (td_deadlines_exact),
 * and may then act: whatever is due for its object. */
typedef void (*td_deadline_cb)(td_deadlines *d, td_heap_node *n, uint64_t now);

struct td_deadlines {
    td_heap heap;
    uv_timer_t *timer;
    uint64_t armed; /* when the timer fires; UINT64_MAX: not armed */
    td_deadline_cb on_due;
    /* Around the callbacks of one firing (a layer that must not run Lua
     * inside them holds it meanwhile); may be NULL. */
    void (*before)(void *ud);
    void (*after)(void *ud);
    void *ud;
};

/* Returns 0 or UV_ENOMEM. The timer does not keep the loop alive. */
int td_deadlines_init(td_deadlines *d, uv_loop_t *loop, td_deadline_cb on_due);
/* Closes the timer and frees the heap (every node must be out of it, or
 * never looked at again). */
void td_deadlines_close(td_deadlines *d);
/* Room for `total` nodes: setting one never fails after that. */
static inline int td_deadlines_reserve(td_deadlines *d, uint32_t total) { return td_heap_reserve(&d->heap, total); }
/* n comes no later than key (loop time; 0: no deadline, nothing to do). */
void td_deadlines_lazy(td_deadlines *d, td_heap_node *n, uint64_t key);
/* n comes exactly at key; 0 takes it out. */
void td_deadlines_exact(td_deadlines *d, td_heap_node *n, uint64_t key);
static inline uint64_t td_deadlines_now(const td_deadlines *d) { return uv_now(d->timer->loop); }

#endif
