/* td_heap: the order holds through inserts, moves and removals. */
#include "check.h"
#include "heap.h"

#include <stdlib.h>

#define N 500

static td_heap_node nodes[N];

static int heap_ok(const td_heap *h) {
    for (uint32_t i = 0; i < h->count; i++) {
        if (h->items[i]->index != i)
            return 0;
        if (i > 0 && h->items[(i - 1) / 2]->key > h->items[i]->key)
            return 0;
    }
    return 1;
}

int main(void) {
    td_heap h;
    td_heap_init(&h);
    CHECK(td_heap_min(&h) == NULL);
    CHECK_EQ_INT(td_heap_reserve(&h, N), 0);
    srand(7);
    for (int i = 0; i < N; i++) {
        td_heap_node_init(&nodes[i]);
        td_heap_set(&h, &nodes[i], (uint64_t)(rand() % 1000));
    }
    CHECK_EQ_INT(h.count, N);
    CHECK(heap_ok(&h));
    /* Moves both ways, and removals from anywhere. */
    for (int i = 0; i < N; i += 3)
        td_heap_set(&h, &nodes[i], (uint64_t)(rand() % 1000));
    CHECK(heap_ok(&h));
    for (int i = 0; i < N; i += 4)
        td_heap_remove(&h, &nodes[i]);
    CHECK(heap_ok(&h));
    td_heap_remove(&h, &nodes[0]); /* not in: harmless */
    CHECK(!td_heap_contains(&nodes[0]));
    /* Popping gives the keys in order. */
    uint64_t last = 0;
    int popped = 0;
    td_heap_node *n;
    while ((n = td_heap_min(&h))) {
        CHECK(n->key >= last);
        last = n->key;
        td_heap_remove(&h, n);
        popped++;
    }
    CHECK_EQ_INT(popped, N - (N + 3) / 4);
    td_heap_destroy(&h);
    return check_result("test_heap");
}
