/* The timer and the firing loop of a td_deadlines. */
#include "deadlines.h"

#include <stdlib.h>

static void on_timer(uv_timer_t *t);

static void arm(td_deadlines *d, uint64_t due) {
    if (due >= d->armed)
        return;
    d->armed = due;
    uint64_t now = uv_now(d->timer->loop);
    uv_timer_start(d->timer, on_timer, due > now ? due - now : 0, 0);
}

static void on_timer(uv_timer_t *t) {
    td_deadlines *d = t->data;
    uint64_t now = uv_now(t->loop);
    d->armed = UINT64_MAX;
    if (d->before)
        d->before(d->ud);
    td_heap_node *n;
    while ((n = td_heap_min(&d->heap)) && n->key <= now)
        d->on_due(d, n, now);
    if (d->after)
        d->after(d->ud);
    if ((n = td_heap_min(&d->heap)))
        arm(d, n->key);
}

int td_deadlines_init(td_deadlines *d, uv_loop_t *loop, td_deadline_cb on_due) {
    td_heap_init(&d->heap);
    d->timer = malloc(sizeof *d->timer);
    if (!d->timer)
        return UV_ENOMEM;
    uv_timer_init(loop, d->timer);
    uv_unref((uv_handle_t *)d->timer);
    d->timer->data = d;
    d->armed = UINT64_MAX;
    d->on_due = on_due;
    d->before = d->after = NULL;
    d->ud = NULL;
    return 0;
}

static void free_timer(uv_handle_t *h) { free(h); }

void td_deadlines_close(td_deadlines *d) {
    if (d->timer) {
        uv_close((uv_handle_t *)d->timer, free_timer);
        d->timer = NULL;
    }
    td_heap_destroy(&d->heap);
}

void td_deadlines_lazy(td_deadlines *d, td_heap_node *n, uint64_t key) {
    if (!key || (td_heap_contains(n) && n->key <= key))
        return;
    td_heap_set(&d->heap, n, key);
    arm(d, key);
}

void td_deadlines_exact(td_deadlines *d, td_heap_node *n, uint64_t key) {
    if (!key) {
        td_heap_remove(&d->heap, n);
        return;
    }
    td_heap_set(&d->heap, n, key);
    arm(d, key);
}
