/* The size classes and free lists of Lua's allocator. */
#include "lalloc.h"

#include <stdlib.h>
#include <string.h>

/* Cached bytes at most: enough for the collector's bursts of frees to meet
 * the next allocations (4 MiB counted no fewer instructions per request),
 * and little held off malloc, which reuses freed memory for anything. */
#define TD_LALLOC_CACHE_MAX ((size_t)1 << 20)

#ifdef TD_SANITIZE
#define CACHING 0
#else
#define CACHING 1
#endif

/* The class of a size (1..TD_LALLOC_CLASSES), or 0 for a large one. */
static inline unsigned size_class(size_t n) { return CACHING && n <= TD_LALLOC_SMALL ? (unsigned)((n + 15) >> 4) : 0; }

/* malloc failed: the reserve goes, so the error path finds memory. */
static void over(td_lalloc *a) {
    if (a->failed)
        return;
    a->failed = 1;
    a->cap = a->limit + TD_LALLOC_HEADROOM_OF(a->limit);
    if (a->on_over)
        a->on_over(a->over_ud);
}

static int fail_system(td_lalloc *a) {
    over(a);
    if (!a->reserve)
        return 0;
    free(a->reserve);
    a->reserve = NULL;
    return 1;
}

static void *sys_malloc(td_lalloc *a, size_t n) {
    void *p = malloc(n);
    while (!p && fail_system(a))
        p = malloc(n);
    if (!p)
        a->refused = 1;
    return p;
}

/* On failure ptr is still the caller's (realloc leaves it alone). */
static void *sys_realloc(td_lalloc *a, void *ptr, size_t n) {
    void *p;
    do
        p = realloc(ptr, n);
    while (!p && fail_system(a));
    if (!p)
        a->refused = 1;
    return p;
}

static void *take(td_lalloc *a, size_t n) {
    unsigned c = size_class(n);
    if (!c)
        return sys_malloc(a, n);
    void *p = a->free[c];
    if (p) {
        a->free[c] = *(void **)p;
        a->cached -= (size_t)c << 4;
        return p;
    }
    return sys_malloc(a, (size_t)c << 4);
}

/* Growth by `more` bytes would pass the limit in force: the first time,
 * the headroom opens; past the headroom, refused. */
static int over_limit(td_lalloc *a, size_t more) {
    if (!a->enforce || a->live + more <= a->cap)
        return 0;
    over(a);
    if (a->live + more <= a->cap)
        return 0;
    a->refused = 1;
    return 1;
}

static void give(td_lalloc *a, void *p, size_t n) {
    unsigned c = size_class(n);
    if (!c || a->cached + ((size_t)c << 4) > TD_LALLOC_CACHE_MAX) {
        free(p);
        return;
    }
    *(void **)p = a->free[c];
    a->free[c] = p;
    a->cached += (size_t)c << 4;
}

void *td_lalloc_f(void *ud, void *ptr, size_t osize, size_t nsize) {
    td_lalloc *a = ud;
    if (!ptr)
        osize = 0;
    if (nsize == 0) {
        if (ptr) {
            give(a, ptr, osize);
            a->live -= osize;
        }
        return NULL;
    }
    if (nsize > osize && a->limit && over_limit(a, nsize - osize))
        return NULL;
    unsigned oc = ptr ? size_class(osize) : 0, nc = size_class(nsize);
    void *p;
    if (ptr && oc && oc == nc) {
        p = ptr; /* the block has room already */
    } else if (ptr && !oc && !nc) {
        p = sys_realloc(a, ptr, nsize);
        if (!p)
            return NULL;
    } else {
        p = take(a, nsize);
        if (!p)
            return NULL;
        if (ptr) {
            memcpy(p, ptr, osize < nsize ? osize : nsize);
            give(a, ptr, osize);
        }
    }
    a->live += nsize - osize;
    return p;
}

void td_lalloc_limit(td_lalloc *a, size_t limit) {
    a->limit = limit;
    a->cap = limit;
    if (!a->reserve)
        a->reserve = malloc(TD_LALLOC_HEADROOM);
}

void td_lalloc_recovered(td_lalloc *a) {
    a->failed = 0;
    a->refused = 0;
    a->cap = a->limit;
    if (!a->reserve)
        a->reserve = malloc(TD_LALLOC_HEADROOM);
}

void td_lalloc_drain(td_lalloc *a) {
    for (unsigned c = 1; c <= TD_LALLOC_CLASSES; c++) {
        while (a->free[c]) {
            void *p = a->free[c];
            a->free[c] = *(void **)p;
            free(p);
        }
    }
    a->cached = 0;
}

void td_lalloc_free_reserve(td_lalloc *a) {
    free(a->reserve);
    a->reserve = NULL;
}
