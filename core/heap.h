/* A binary min-heap of nodes that live inside other objects, keyed by a
 * 64-bit number (a deadline in loop milliseconds). It holds pointers only:
 * the node records its own place, so removing or moving any node is
 * O(log n) and no operation allocates, except growing the array in
 * td_heap_reserve. No libuv, no Lua. */
#ifndef TD_HEAP_H
#define TD_HEAP_H

#include <stddef.h>
#include <stdint.h>

#define TD_HEAP_OUT UINT32_MAX

typedef struct td_heap_node {
    uint64_t key;
    uint32_t index; /* TD_HEAP_OUT while not in a heap */
} td_heap_node;

typedef struct td_heap {
    td_heap_node **items;
    uint32_t count, cap;
} td_heap;

static inline void td_heap_init(td_heap *h) {
    h->items = NULL;
    h->count = h->cap = 0;
}
static inline void td_heap_node_init(td_heap_node *n) { n->index = TD_HEAP_OUT; }
static inline int td_heap_contains(const td_heap_node *n) { return n->index != TD_HEAP_OUT; }
static inline td_heap_node *td_heap_min(const td_heap *h) { return h->count ? h->items[0] : NULL; }

/* Ensures room for `total` nodes, so that inserting up to that many never
 * fails. Owners reserve when they create the object that holds a node.
 * Returns 0 or -ENOMEM. */
int td_heap_reserve(td_heap *h, uint32_t total);
/* Inserts n with key, or moves it if it is in the heap already. The room
 * must have been reserved. */
void td_heap_set(td_heap *h, td_heap_node *n, uint64_t key);
/* Takes n out; nothing happens if it is not in. */
void td_heap_remove(td_heap *h, td_heap_node *n);
/* Frees the array (the heap must be empty). */
void td_heap_destroy(td_heap *h);

#endif
