/* The array and the sifting of a td_heap. */
#include "heap.h"

#include <errno.h>
#include <stdlib.h>

static void place(td_heap *h, uint32_t i, td_heap_node *n) {
    h->items[i] = n;
    n->index = i;
}

static void sift_up(td_heap *h, uint32_t i) {
    td_heap_node *n = h->items[i];
    while (i > 0) {
        uint32_t parent = (i - 1) / 2;
        if (h->items[parent]->key <= n->key)
            break;
        place(h, i, h->items[parent]);
        i = parent;
    }
    place(h, i, n);
}

static void sift_down(td_heap *h, uint32_t i) {
    td_heap_node *n = h->items[i];
    for (;;) {
        uint32_t child = 2 * i + 1;
        if (child >= h->count)
            break;
        if (child + 1 < h->count && h->items[child + 1]->key < h->items[child]->key)
            child++;
        if (n->key <= h->items[child]->key)
            break;
        place(h, i, h->items[child]);
        i = child;
    }
    place(h, i, n);
}

int td_heap_reserve(td_heap *h, uint32_t total) {
    if (total <= h->cap)
        return 0;
    uint32_t cap = h->cap ? h->cap : 64;
    while (cap < total)
        cap *= 2;
    td_heap_node **items = realloc(h->items, (size_t)cap * sizeof *items);
    if (!items)
        return -ENOMEM;
    h->items = items;
    h->cap = cap;
    return 0;
}

void td_heap_set(td_heap *h, td_heap_node *n, uint64_t key) {
    if (td_heap_contains(n)) {
        uint64_t old = n->key;
        n->key = key;
        if (key < old)
            sift_up(h, n->index);
        else if (key > old)
            sift_down(h, n->index);
        return;
    }
    n->key = key;
    place(h, h->count++, n);
    sift_up(h, n->index);
}

void td_heap_remove(td_heap *h, td_heap_node *n) {
    if (!td_heap_contains(n))
        return;
    uint32_t i = n->index;
    n->index = TD_HEAP_OUT;
    td_heap_node *last = h->items[--h->count];
    if (last == n)
        return;
    place(h, i, last);
    /* The moved node may belong above or below its new place. */
    if (i > 0 && h->items[(i - 1) / 2]->key > last->key)
        sift_up(h, i);
    else
        sift_down(h, i);
}

void td_heap_destroy(td_heap *h) {
    free(h->items);
    h->items = NULL;
    h->count = h->cap = 0;
}
