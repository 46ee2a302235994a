/* The shared dictionary engine: a hash table, an LRU list, a boundary-tag
 * allocator and a change ring, all inside one shared mapping.
 *
 * The mapping: the header (struct td_shdict), the bucket array, the heap
 * (SIZE minus the header and the buckets), then the change ring. Every
 * reference inside it is a uint32_t count of 8-byte units from the start of
 * the mapping (0: none), so 32 bits reach 32 GiB and an entry's bookkeeping
 * stays at 48 bytes.
 *
 * The heap is a sequence of blocks, each led by a 64-bit tag: its size (a
 * multiple of 8) with two flags, USED and PREV_USED. A free block also ends
 * with its size, so the block after it can find its start and merge with it
 * when it is freed; a used block does not need that footer since its
 * successor's PREV_USED says it is not free. Free blocks sit in lists by
 * power-of-two class of their size. A used tag of size 0 ends the heap. */
#include "shdict.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

#ifdef TD_SHDICT_TESTING
#include <signal.h>
#endif

#define MAGIC 0x7464736864696374ull /* "tdshdict" */
#define UNIT 8u                     /* the granule of blocks and references */
#define USED 1u
#define PREV_USED 2u
#define TAG_FLAGS ((uint64_t)7)
#define NCLASS 40 /* 2^39 > any heap: 32-bit references in 8-byte units */
/* A remainder smaller than this stays with its block: the smallest entry
 * (48 bytes of bookkeeping and a 1-byte key) takes 56. */
#define MIN_SPLIT 64
#define MIN_BLOCK 56
/* How many entries from the LRU tail an allocation that failed looks at for
 * expired ones before it evicts live ones. */
#define EXPIRE_SCAN 64

/* The dictionary's ring size (every use has d in scope). */
#define RING (d->ring_size)
#define RING_WRAP 0xffffffffu /* the rest of the ring up to its end is unused */
#define RING_LOST 0xfffffffeu /* a change that could not be recorded */
/* A record (4-byte length, key, padding) larger than this is recorded as a
 * loss: one huge key would push every other record out for all readers. */
#define RING_MAX_RECORD (RING / 4)

struct td_shdict {
    uint64_t magic;
    char name[64];
    size_t map_len;
    uint64_t size;
    uint64_t bucket_off;
    uint64_t heap_off;
    uint64_t heap_end; /* the end tag is the last 8 bytes */
    uint64_t heap_cap; /* the block an empty heap is: the largest entry */
    uint64_t ring_off;
    uint64_t ring_size; /* td_shdict_ring_size(size) */
    uint64_t seed[2]; /* the key of hash_key, random per dictionary */
    uint32_t bucket_mask;
    _Atomic uint32_t dirty;
    pthread_mutex_t mutex;
    uint64_t used, count, evictions, repairs;
    uint32_t lru_head, lru_tail; /* head: the most recently used */
    uint64_t free_bits;          /* bit c: free_head[c] is not empty */
    uint32_t free_head[NCLASS];
    /* Absolute byte positions in the ring: head is where the next record
     * goes, tail the oldest record still whole. head - tail <= RING. */
    uint64_t ring_head, ring_tail;
    _Atomic uint64_t watch;
};

/* A used block. The key follows, then a string value's bytes. */
struct ent {
    uint64_t tag;
    uint64_t hash;
    uint64_t expire; /* CLOCK_MONOTONIC ms; 0: never */
    uint32_t hnext;
    uint32_t lprev, lnext;
    uint16_t klen;
    uint8_t type;
    uint8_t flags; /* WRITING while a value is rewritten in place */
    union {
        double num;
        uint64_t len; /* a string's length, or a boolean */
    } v;
};
_Static_assert(sizeof(struct ent) == 48, "the bookkeeping the header promises");
#define WRITING 1u
_Static_assert(TD_SHDICT_MAX_KEY <= UINT16_MAX, "klen is 16 bits");
_Static_assert(TD_SHDICT_RING % UNIT == 0, "records are whole units");

/* A free block: its links in its class's list follow the tag. */
struct fblk {
    uint64_t tag;
    uint32_t next, prev;
};

static void (*change_fn)(td_shdict *d, uint64_t mask);
/* A repair to log once the lock is released. */
enum { NOTE_NONE, NOTE_INTACT, NOTE_REPAIRED, NOTE_EMPTIED };
static _Thread_local int repair_note;
static _Thread_local long repair_kept;

static inline uint64_t align_up(uint64_t n, uint64_t a) { return (n + a - 1) & ~(a - 1); }

static inline uint64_t *tagp(td_shdict *d, uint32_t b) { return (uint64_t *)((char *)d + (uint64_t)b * UNIT); }
static inline uint64_t bsize(td_shdict *d, uint32_t b) { return *tagp(d, b) & ~TAG_FLAGS; }
static inline struct fblk *fb(td_shdict *d, uint32_t b) { return (struct fblk *)tagp(d, b); }
static inline struct ent *E(td_shdict *d, uint32_t r) { return (struct ent *)tagp(d, r); }
static inline uint32_t *buckets(td_shdict *d) { return (uint32_t *)((char *)d + d->bucket_off); }
static inline char *ekey(struct ent *e) { return (char *)(e + 1); }
static inline char *evalue(struct ent *e) { return (char *)(e + 1) + e->klen; }
static inline unsigned size_class(uint64_t size) { return 63u - (unsigned)__builtin_clzll(size); }
static inline uint64_t entry_need(size_t klen, size_t vlen) {
    return align_up(sizeof(struct ent) + klen + vlen, UNIT);
}

/* ---- the lock ---- */

/* The dirty mark must be in memory before the change it covers and stay
 * until the change is: a kill can land between any two instructions, so
 * the compiler must not move stores across it (the CPU's own order is what
 * the next locker sees once the killed process is gone). */
static inline void begin(td_shdict *d) {
    atomic_store_explicit(&d->dirty, 1, memory_order_relaxed);
    atomic_signal_fence(memory_order_seq_cst);
}

static inline void end(td_shdict *d) {
    atomic_signal_fence(memory_order_seq_cst);
    atomic_store_explicit(&d->dirty, 0, memory_order_relaxed);
}

static void repair(td_shdict *d);

static void lock(td_shdict *d) {
    int rc = pthread_mutex_lock(&d->mutex);
    if (__builtin_expect(rc == 0, 1))
        return;
    if (rc == EOWNERDEAD) {
        repair(d);
        pthread_mutex_consistent(&d->mutex);
        return;
    }
    /* ENOTRECOVERABLE: only a locker that unlocked without making the
     * mutex consistent leaves that, and lock() always makes it so. */
    td_log(TD_LOG_CRIT, "shared dictionary \"%s\": cannot lock: %s", d->name, strerror(rc));
    abort();
}

static void tell(td_shdict *d, uint64_t mask);

static void unlock(td_shdict *d) {
    pthread_mutex_unlock(&d->mutex);
    if (__builtin_expect(repair_note != NOTE_NONE, 0)) {
        /* The ring holds a loss (or the dead holder's last record): its
         * watchers hear it now, not at some later change. */
        tell(d, atomic_load(&d->watch));
        if (repair_note == NOTE_EMPTIED)
            td_log(TD_LOG_ERROR,
                   "shared dictionary \"%s\": a process died while changing it; emptied (could not be repaired)",
                   d->name);
        else if (repair_note == NOTE_REPAIRED)
            td_log(TD_LOG_WARN,
                   "shared dictionary \"%s\": a process died while changing it; repaired (%ld entries kept)",
                   d->name, repair_kept);
        else
            td_log(TD_LOG_NOTICE, "shared dictionary \"%s\": a process died holding its lock; it is intact",
                   d->name);
        repair_note = NOTE_NONE;
    }
}

/* ---- time ---- */

static uint64_t clock_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t ms = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
    return ms ? ms : 1; /* 0 means "not read yet" to the callers */
}

/* *now is read from the clock the first time it is needed, then reused. */
static inline int is_expired(const struct ent *e, uint64_t *now) {
    if (!e->expire)
        return 0;
    if (!*now)
        *now = clock_ms();
    return *now >= e->expire;
}

static uint64_t deadline(uint64_t ttl_ms, uint64_t *now) {
    if (!ttl_ms)
        return 0;
    if (!*now)
        *now = clock_ms();
    return ttl_ms > UINT64_MAX - *now ? UINT64_MAX : *now + ttl_ms;
}

/* ---- the allocator ----
 *
 * A repair (see repair()) trusts nothing but the heap: it walks the blocks
 * by their tags and rebuilds everything else from the used ones. So every
 * change below is ordered so that a kill at any instruction leaves tags that
 * still walk, each USED tag in front of a whole entry: a new entry is
 * written inside a block still tagged free, then made live by one 8-byte
 * store of its tag; a block is freed, merged with its free neighbours, by
 * one store of the merged block's tag; a block is split or shrunk by
 * writing the tag of its rest inside it first, where no walk reaches it
 * yet, then its own. Footers, PREV_USED bits, the free lists, the chains,
 * the LRU list and the counts are derived: a repair makes them again. */

/* A kill point (KP) marks a place between two steps of a change where the
 * unit test stops and kills a process; nothing outside that test's build. */
#ifdef TD_SHDICT_TESTING
long td_shdict__stop_after = -1;
unsigned td_shdict__spin;
uint64_t td_shdict__intact, td_shdict__repaired, td_shdict__emptied;
static void kill_point(void) {
    if (td_shdict__stop_after >= 0 && td_shdict__stop_after-- == 0)
        raise(SIGSTOP);
    for (volatile unsigned i = 0; i < td_shdict__spin; i++) {
    }
}
#define KP()                                                                                              \
    do {                                                                                                  \
        if (__builtin_expect(td_shdict__stop_after >= 0 || td_shdict__spin, 0))                           \
            kill_point();                                                                                 \
    } while (0)
#else
#define KP() ((void)0)
#endif

/* Nothing written before it may move after it, or the reverse: a kill can
 * land between any two instructions, and the next locker must find the
 * program's order (the CPU's own order is settled by the time it can lock:
 * the holder is gone). */
static inline void order(void) { atomic_signal_fence(memory_order_seq_cst); }

/* The one store that commits a change to the heap: whole (a compiler may
 * split a plain 64-bit store of a constant in two), and in order. */
static inline void set_tag(td_shdict *d, uint32_t b, uint64_t tag) {
    order();
    __atomic_store_n(tagp(d, b), tag, __ATOMIC_RELAXED);
    order();
}

static void free_insert(td_shdict *d, uint32_t b, uint64_t size) {
    unsigned c = size_class(size);
    struct fblk *f = fb(d, b);
    f->prev = 0;
    f->next = d->free_head[c];
    if (f->next)
        fb(d, f->next)->prev = b;
    d->free_head[c] = b;
    d->free_bits |= (uint64_t)1 << c;
}

static void free_unlink(td_shdict *d, uint32_t b) {
    struct fblk *f = fb(d, b);
    if (f->prev) {
        fb(d, f->prev)->next = f->next;
    } else {
        unsigned c = size_class(bsize(d, b));
        d->free_head[c] = f->next;
        if (!f->next)
            d->free_bits &= ~((uint64_t)1 << c);
    }
    if (f->next)
        fb(d, f->next)->prev = f->prev;
}

static inline void set_footer(td_shdict *d, uint32_t b, uint64_t size) {
    *(uint64_t *)((char *)tagp(d, b) + size - sizeof(uint64_t)) = size;
}

/* What derives from b having become a free block of size bytes (its tag
 * already says so): its footer, the next block's PREV_USED, its list. The
 * PREV_USED store changes one bit, so even a torn one cannot change a size. */
static void free_fix(td_shdict *d, uint32_t b, uint64_t size) {
    set_footer(d, b, size);
    *tagp(d, b + (uint32_t)(size / UNIT)) &= ~(uint64_t)PREV_USED;
    free_insert(d, b, size);
}

/* Makes b a free block of size bytes (b's predecessor is used) and lists it. */
static void make_free(td_shdict *d, uint32_t b, uint64_t size) {
    set_tag(d, b, size | PREV_USED);
    KP();
    free_fix(d, b, size);
}

/* A free block of at least need bytes, taken off its list but still tagged
 * free, or 0: the caller writes the entry's body into it, then
 * commit_alloc. First fit in need's own class (whose blocks may be smaller
 * than need), else the first block of the smallest larger class (all of
 * them fit). */
static uint32_t heap_alloc(td_shdict *d, uint64_t need) {
    unsigned c = size_class(need);
    if (d->free_bits & ((uint64_t)1 << c)) {
        for (uint32_t b = d->free_head[c]; b; b = fb(d, b)->next)
            if (bsize(d, b) >= need) {
                free_unlink(d, b);
                return b;
            }
    }
    uint64_t higher = d->free_bits & ~(((uint64_t)2 << c) - 1);
    if (!higher)
        return 0;
    uint32_t b = d->free_head[__builtin_ctzll(higher)];
    free_unlink(d, b);
    return b;
}

/* Turns the block from heap_alloc, its body written, into a used block of
 * need bytes; the rest becomes a free block when it is worth one. */
static void commit_alloc(td_shdict *d, uint32_t b, uint64_t need) {
    uint64_t tag = *tagp(d, b), size = tag & ~TAG_FLAGS, prev = tag & PREV_USED;
    if (size - need >= MIN_SPLIT) {
        uint32_t rest = b + (uint32_t)(need / UNIT);
        /* Inside b: nothing walks here until b's tag says need. The block
         * after b already knows its predecessor is free. */
        *tagp(d, rest) = (size - need) | PREV_USED;
        set_footer(d, rest, size - need);
        KP();
        set_tag(d, b, need | USED | prev);
        KP();
        free_insert(d, rest, size - need);
    } else {
        set_tag(d, b, size | USED | prev);
        KP();
        *tagp(d, b + (uint32_t)(size / UNIT)) |= PREV_USED;
    }
}

/* Frees the used block b, merged with free neighbours; returns the free
 * block it ended in. */
static uint32_t heap_free(td_shdict *d, uint32_t b) {
    uint64_t tag = *tagp(d, b);
    uint64_t size = tag & ~TAG_FLAGS;
    uint32_t next = b + (uint32_t)(size / UNIT);
    if (!(*tagp(d, next) & USED)) {
        size += bsize(d, next);
        free_unlink(d, next);
    }
    if (!(tag & PREV_USED)) {
        uint64_t psize = *(uint64_t *)((char *)tagp(d, b) - sizeof(uint64_t));
        b -= (uint32_t)(psize / UNIT);
        free_unlink(d, b);
        size += psize;
    }
    KP();
    /* Two free blocks are never neighbours, so b's predecessor is used. */
    make_free(d, b, size);
    return b;
}

/* Gives the end of the used block b past need bytes back, if worth it; the
 * entry's new value already fits in need. */
static void heap_shrink(td_shdict *d, uint32_t b, uint64_t need) {
    uint64_t tag = *tagp(d, b), size = tag & ~TAG_FLAGS;
    if (size - need < MIN_SPLIT)
        return;
    uint32_t rest = b + (uint32_t)(need / UNIT), next = b + (uint32_t)(size / UNIT);
    uint64_t rsize = size - need;
    if (!(*tagp(d, next) & USED)) {
        rsize += bsize(d, next);
        free_unlink(d, next);
    }
    /* As in commit_alloc: the rest's tag first, where no walk reaches. */
    *tagp(d, rest) = rsize | PREV_USED;
    KP();
    set_tag(d, b, need | USED | (tag & PREV_USED));
    KP();
    free_fix(d, rest, rsize);
    d->used -= size - need;
}

static void reset_entries(td_shdict *d) {
    memset(buckets(d), 0, ((size_t)d->bucket_mask + 1) * sizeof(uint32_t));
    d->lru_head = d->lru_tail = 0;
    d->used = d->count = 0;
    d->free_bits = 0;
    memset(d->free_head, 0, sizeof d->free_head);
    set_tag(d, (uint32_t)((d->heap_end - UNIT) / UNIT), USED);
    KP();
    /* The one store that drops every entry at once. */
    make_free(d, (uint32_t)(d->heap_off / UNIT), d->heap_cap);
}

/* ---- entries ---- */

/* SipHash-1-3 (Aumasson and Bernstein) keyed with the dictionary's random
 * seed: the bucket of a key cannot be predicted without the seed, so keys
 * that an application takes from requests cannot be chosen to pile up in
 * one chain, which every worker would then walk under the one lock. */
static inline uint64_t rotl(uint64_t x, unsigned b) { return (x << b) | (x >> (64 - b)); }

#define SIPROUND                                                                                          \
    do {                                                                                                  \
        v0 += v1;                                                                                         \
        v1 = rotl(v1, 13) ^ v0;                                                                           \
        v0 = rotl(v0, 32);                                                                                \
        v2 += v3;                                                                                         \
        v3 = rotl(v3, 16) ^ v2;                                                                           \
        v0 += v3;                                                                                         \
        v3 = rotl(v3, 21) ^ v0;                                                                           \
        v2 += v1;                                                                                         \
        v1 = rotl(v1, 17) ^ v2;                                                                           \
        v2 = rotl(v2, 32);                                                                                \
    } while (0)

static uint64_t hash_key(const td_shdict *d, const char *k, size_t n) {
    uint64_t v0 = d->seed[0] ^ 0x736f6d6570736575ull, v1 = d->seed[1] ^ 0x646f72616e646f6dull;
    uint64_t v2 = d->seed[0] ^ 0x6c7967656e657261ull, v3 = d->seed[1] ^ 0x7465646279746573ull;
    uint64_t last = (uint64_t)n << 56, m;
    for (; n >= 8; k += 8, n -= 8) {
        memcpy(&m, k, 8);
        v3 ^= m;
        SIPROUND;
        v0 ^= m;
    }
    m = 0;
    memcpy(&m, k, n);
    last |= m;
    v3 ^= last;
    SIPROUND;
    v0 ^= last;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}
#undef SIPROUND

/* The link that holds key's entry (a bucket, or the hnext of the entry
 * before it in the chain), or the 0 that ends the chain. */
static uint32_t *find(td_shdict *d, uint64_t h, const char *key, size_t klen) {
    uint32_t *link = &buckets(d)[h & d->bucket_mask];
    while (*link) {
        struct ent *e = E(d, *link);
        if (e->hash == h && e->klen == klen && memcmp(ekey(e), key, klen) == 0)
            break;
        link = &e->hnext;
    }
    return link;
}

static void lru_unlink(td_shdict *d, struct ent *e) {
    if (e->lprev)
        E(d, e->lprev)->lnext = e->lnext;
    else
        d->lru_head = e->lnext;
    if (e->lnext)
        E(d, e->lnext)->lprev = e->lprev;
    else
        d->lru_tail = e->lprev;
}

static void lru_push(td_shdict *d, uint32_t r, struct ent *e) {
    e->lprev = 0;
    e->lnext = d->lru_head;
    if (e->lnext)
        E(d, e->lnext)->lprev = r;
    else
        d->lru_tail = r;
    d->lru_head = r;
}

static inline void lru_touch(td_shdict *d, uint32_t r, struct ent *e) {
    if (d->lru_head == r)
        return;
    lru_unlink(d, e);
    KP();
    lru_push(d, r, e);
}

/* Unlinks the entry *link holds from its chain and the LRU list and frees
 * it; returns the free block it ended in. Until heap_free's one store the
 * entry is whole in the heap, and a repair keeps it. */
static uint32_t entry_remove(td_shdict *d, uint32_t *link) {
    uint32_t r = *link;
    struct ent *e = E(d, r);
    *link = e->hnext;
    KP();
    lru_unlink(d, e);
    d->used -= bsize(d, r);
    d->count--;
    return heap_free(d, r);
}

static uint32_t entry_remove_ref(td_shdict *d, uint32_t r) {
    uint32_t *link = &buckets(d)[E(d, r)->hash & d->bucket_mask];
    while (*link != r)
        link = &E(d, *link)->hnext;
    return entry_remove(d, link);
}

/* A block of need bytes (need <= heap_cap), off its list and still tagged
 * free: expired entries near the LRU tail go first, then the least recently
 * used ones, one at a time. Only the block a removal ended in can newly
 * fit, so each removal is checked alone instead of searching the free lists
 * again. */
static uint32_t alloc_evicting(td_shdict *d, uint64_t need, uint64_t *now, int *evicted) {
    uint32_t b = heap_alloc(d, need);
    if (b)
        return b;
    uint32_t r = d->lru_tail;
    for (int i = 0; r && i < EXPIRE_SCAN; i++) {
        struct ent *e = E(d, r);
        uint32_t older_next = e->lprev;
        if (is_expired(e, now)) {
            b = entry_remove_ref(d, r);
            if (bsize(d, b) >= need) {
                free_unlink(d, b);
                return b;
            }
        }
        r = older_next;
    }
    while ((r = d->lru_tail)) {
        if (!is_expired(E(d, r), now)) {
            *evicted = 1;
            d->evictions++;
        }
        b = entry_remove_ref(d, r);
        if (bsize(d, b) >= need) {
            free_unlink(d, b);
            return b;
        }
    }
    return 0; /* not reached: an empty heap is one block of heap_cap */
}

/* Writes v and its expiry into e (the tag and the key stay). */
static void entry_fill(struct ent *e, const td_shvalue *v, uint64_t expire) {
    e->type = (uint8_t)v->type;
    e->expire = expire;
    switch (v->type) {
    case TD_SHV_NUMBER:
        e->v.num = v->num;
        break;
    case TD_SHV_BOOLEAN:
        e->v.len = v->boolean != 0;
        break;
    default:
        e->v.len = v->len;
        if (v->len)
            memcpy(evalue(e), v->str, v->len);
        break;
    }
}

/* A new entry for key holding v, in the block b from alloc_evicting: the
 * whole body first, then the tag that makes it live (until then a repair
 * sees a free block), then the links, first in its chain and the LRU list. */
static void entry_new(td_shdict *d, uint32_t b, uint64_t need, uint64_t h, const char *key, size_t klen,
                      const td_shvalue *v, uint64_t expire) {
    struct ent *e = E(d, b);
    e->hash = h;
    e->klen = (uint16_t)klen;
    e->flags = 0;
    memcpy(ekey(e), key, klen);
    KP();
    entry_fill(e, v, expire);
    commit_alloc(d, b, need);
    uint32_t *bucket = &buckets(d)[h & d->bucket_mask];
    e->hnext = *bucket;
    *bucket = b;
    KP();
    lru_push(d, b, e);
    d->used += bsize(d, b);
    d->count++;
}

/* Rewrites the value of the entry r in place (its block holds need bytes
 * or more), giving back what it no longer needs. Several stores: the entry
 * is marked WRITING meanwhile, and a repair drops an entry so marked
 * rather than keep a value half old, half new. */
static void entry_rewrite(td_shdict *d, uint32_t r, uint64_t need, const td_shvalue *v, uint64_t expire) {
    struct ent *e = E(d, r);
    e->flags = WRITING;
    order();
    KP();
    entry_fill(e, v, expire);
    KP();
    heap_shrink(d, r, need);
    order();
    e->flags = 0;
    lru_touch(d, r, e);
}

/* The number of e becomes n in one 8-byte store: a kill leaves the old
 * number or the new one, never a mix of their bytes. */
static inline void set_number(struct ent *e, double n) {
    uint64_t bits;
    memcpy(&bits, &n, sizeof bits);
    __atomic_store_n(&e->v.len, bits, __ATOMIC_RELAXED);
}

/* ---- the change ring ---- */

static inline unsigned char *ring(td_shdict *d) { return (unsigned char *)d + d->ring_off; }

static uint64_t ring_len_at(td_shdict *d, uint64_t pos) {
    uint32_t len;
    memcpy(&len, ring(d) + pos % RING, sizeof len);
    return len;
}

static uint64_t ring_record_size(td_shdict *d, uint64_t pos) {
    uint64_t len = ring_len_at(d, pos);
    if (len == RING_WRAP)
        return RING - pos % RING;
    if (len == RING_LOST)
        return UNIT;
    return align_up(4 + len, UNIT);
}

/* Drops the oldest records until n bytes from head can be written. The
 * tail moves a whole record at a time, before the bytes it gave up are
 * written over. */
static void ring_make_room(td_shdict *d, uint64_t n) {
    while (d->ring_tail + RING < d->ring_head + n)
        d->ring_tail += ring_record_size(d, d->ring_tail);
    order();
}

/* A record is written past the head, then the head moves over it: a kill
 * in between leaves the ring as it was, without the record (ring_ok). */
static void ring_put(td_shdict *d, uint32_t len, const char *key, size_t klen) {
    uint64_t size = align_up(4 + klen, UNIT);
    uint64_t off = d->ring_head % RING;
    if (off + size > RING) {
        /* Records never wrap, so a reader copies each in one piece. */
        ring_make_room(d, RING - off);
        uint32_t wrap = RING_WRAP;
        memcpy(ring(d) + off, &wrap, sizeof wrap);
        order();
        d->ring_head += RING - off;
        off = 0;
    }
    ring_make_room(d, size);
    KP();
    memcpy(ring(d) + off, &len, sizeof len);
    if (klen)
        memcpy(ring(d) + off + 4, key, klen);
    order();
    KP();
    d->ring_head += size;
}

static void ring_record(td_shdict *d, const char *key, size_t klen) {
    if (4 + klen > RING_MAX_RECORD)
        ring_put(d, RING_LOST, NULL, 0);
    else
        ring_put(d, (uint32_t)klen, key, klen);
}

/* The watchers to tell, after a change: read under the lock, so that a
 * watch that started before the change sees its record. */
static inline uint64_t note_change(td_shdict *d, const char *key, size_t klen) {
    uint64_t mask = atomic_load_explicit(&d->watch, memory_order_relaxed);
    if (__builtin_expect(mask != 0, 0))
        ring_record(d, key, klen);
    return mask;
}

static void tell(td_shdict *d, uint64_t mask) {
    void (*fn)(td_shdict *, uint64_t) = change_fn;
    if (mask && fn)
        fn(d, mask);
}

/* ---- repair ---- */

/* Whether e, in a used block of size bytes, is an entry as the code writes
 * them: a key and a value that fit, and the hash of that key. Any
 * instruction of a change leaves this true of every used block (see the
 * allocator); a stray write would likely make it false. */
static int entry_ok(td_shdict *d, struct ent *e, uint64_t size) {
    if (e->klen < 1 || e->type < TD_SHV_STRING || e->type > TD_SHV_BOOLEAN)
        return 0;
    uint64_t vlen = e->type == TD_SHV_STRING ? e->v.len : 0;
    if (vlen > size || entry_need(e->klen, vlen) > size)
        return 0;
    if (e->type == TD_SHV_BOOLEAN && e->v.len > 1)
        return 0;
    return e->hash == hash_key(d, ekey(e), e->klen);
}

/* Rebuilds the dictionary from its heap after a holder died in the middle
 * of a change. Returns the number of entries kept, or -1 when the heap does
 * not walk as the code leaves it (then it is untouched, for the caller to
 * empty). */
static long rebuild(td_shdict *d) {
    uint32_t first = (uint32_t)(d->heap_off / UNIT), end_ref = (uint32_t)((d->heap_end - UNIT) / UNIT);
    long kept = 0;
    /* First every block is checked, writing nothing. Each step stays in the
     * heap and moves forward, so the walk ends, and exactly on the end tag
     * when the sizes hold. Footers and PREV_USED bits are not trusted: a
     * kill may have left them behind their tags, and they are made again. */
    for (uint32_t b = first; b != end_ref;) {
        uint64_t tag = *tagp(d, b), size = tag & ~TAG_FLAGS;
        if ((tag & TAG_FLAGS & ~(uint64_t)(USED | PREV_USED)) || size < MIN_BLOCK || size % UNIT ||
            size > (uint64_t)(end_ref - b) * UNIT)
            return -1;
        if (tag & USED) {
            struct ent *e = E(d, b);
            if (e->flags == WRITING) {
                /* Caught rewriting its value: it goes (below). */
            } else if (e->flags || !entry_ok(d, e, size)) {
                return -1;
            } else {
                kept++;
            }
        }
        b += (uint32_t)(size / UNIT);
    }
    if ((*tagp(d, end_ref) & ~(uint64_t)PREV_USED) != USED)
        return -1;

    /* Then everything else is made from the blocks. Runs of free blocks
     * (and entries caught rewriting) merge into one free block, by one
     * store of its tag; used tags only get their PREV_USED bit. Killed at
     * any point of this, the heap still walks and the next locker rebuilds
     * again. The LRU list comes out in heap order, the last block the most
     * recently used: the order of use is not in the heap, and any order
     * keeps the list whole (a repair is rare). */
    memset(buckets(d), 0, ((size_t)d->bucket_mask + 1) * sizeof(uint32_t));
    d->lru_head = d->lru_tail = 0;
    d->used = d->count = 0;
    d->free_bits = 0;
    memset(d->free_head, 0, sizeof d->free_head);
    uint32_t run = 0;
    uint64_t run_size = 0;
    int prev_used = 1; /* the first block's predecessor counts as used */
    for (uint32_t b = first;;) {
        uint64_t tag = b == end_ref ? USED : *tagp(d, b), size = tag & ~TAG_FLAGS;
        if (b != end_ref && (!(tag & USED) || E(d, b)->flags)) {
            if (!run)
                run = b, run_size = 0;
            run_size += size;
            b += (uint32_t)(size / UNIT);
            continue;
        }
        if (run) {
            set_tag(d, run, run_size | PREV_USED);
            KP();
            set_footer(d, run, run_size);
            free_insert(d, run, run_size);
            run = 0;
            prev_used = 0;
        }
        /* Only the PREV_USED bit changes: a torn store cannot change a size. */
        *tagp(d, b) = size | USED | (prev_used ? PREV_USED : 0);
        if (b == end_ref)
            break;
        struct ent *e = E(d, b);
        uint32_t *bucket = &buckets(d)[e->hash & d->bucket_mask];
        e->hnext = *bucket;
        *bucket = b;
        lru_push(d, b, e);
        d->used += size;
        d->count++;
        KP();
        prev_used = 1;
        b += (uint32_t)(size / UNIT);
    }
    return kept;
}

/* Whether the ring holds whole records from its tail to its head, as
 * ring_put leaves it at any instruction. */
static int ring_ok(td_shdict *d) {
    uint64_t p = d->ring_tail, head = d->ring_head;
    if (p > head || head - p > RING || p % UNIT || head % UNIT)
        return 0;
    while (p < head) {
        uint64_t len = ring_len_at(d, p), off = p % RING, size;
        if (len == RING_WRAP)
            size = RING - off;
        else if (len == RING_LOST)
            size = UNIT;
        else if (4 + len > RING_MAX_RECORD)
            return 0;
        else
            size = align_up(4 + len, UNIT);
        if (off + size > RING)
            return 0;
        p += size;
    }
    return p == head;
}

/* The next locker after a holder died: nothing to do unless it died in
 * the middle of a change (dirty). Then the dictionary is rebuilt from its
 * heap, or emptied when the heap does not walk, which only memory written
 * out of turn (a bug, a stray write) should cause. */
static void repair(td_shdict *d) {
    d->repairs++;
    if (!atomic_load_explicit(&d->dirty, memory_order_relaxed)) {
        repair_note = NOTE_INTACT;
#ifdef TD_SHDICT_TESTING
        td_shdict__intact++;
#endif
        return;
    }
    long kept = rebuild(d);
    if (kept >= 0 && ring_ok(d)) {
        /* The change it was making may be done and not recorded yet. */
        ring_put(d, RING_LOST, NULL, 0);
    } else {
        /* Past every position a reader may hold, so each of them sees a loss. */
        d->ring_head = d->ring_tail = align_up(d->ring_head, UNIT) + RING;
    }
    if (kept < 0)
        reset_entries(d);
    end(d);
    repair_note = kept < 0 ? NOTE_EMPTIED : NOTE_REPAIRED;
    repair_kept = kept;
#ifdef TD_SHDICT_TESTING
    if (kept < 0)
        td_shdict__emptied++;
    else
        td_shdict__repaired++;
#endif
}

/* ---- the API ---- */

/* 16 random bytes for hash_key. getrandom does not block once the kernel's
 * pool is ready, which it is long before a server starts; should it fail
 * anyway, /dev/urandom, then (a last resort that never happens on Linux
 * 3.17 and later) the clock, the pid and the mapping's address, which an
 * attacker would have to guess. */
static void random_seed(td_shdict *d) {
    unsigned char *p = (unsigned char *)d->seed;
    size_t got = 0;
    while (got < sizeof d->seed) {
        ssize_t n = getrandom(p + got, sizeof d->seed - got, GRND_NONBLOCK);
        if (n <= 0 && errno != EINTR)
            break;
        if (n > 0)
            got += (size_t)n;
    }
    if (got < sizeof d->seed) {
        int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
        while (fd >= 0 && got < sizeof d->seed) {
            ssize_t n = read(fd, p + got, sizeof d->seed - got);
            if (n <= 0 && errno != EINTR)
                break;
            if (n > 0)
                got += (size_t)n;
        }
        if (fd >= 0)
            close(fd);
    }
    if (got < sizeof d->seed) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        d->seed[0] ^= (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ull ^ (uint64_t)ts.tv_sec;
        d->seed[1] ^= (uint64_t)getpid() * 0xbf58476d1ce4e5b9ull ^ (uint64_t)(uintptr_t)d;
    }
}

td_shdict *td_shdict_new(const char *name, size_t size) {
    if (size < TD_SHDICT_MIN_SIZE || (uint64_t)size > TD_SHDICT_MAX_SIZE) {
        errno = EINVAL;
        return NULL;
    }
    uint64_t hdr = align_up(sizeof(struct td_shdict), 64);
    uint64_t nbuckets = 1;
    while (nbuckets * 2 <= size / 128)
        nbuckets *= 2;
    uint64_t heap_off = hdr + align_up(nbuckets * sizeof(uint32_t), 64);
    uint64_t heap_end = (hdr + size) & ~(uint64_t)(UNIT - 1);
    uint64_t ring_off = align_up(heap_end, 64);
    long page = sysconf(_SC_PAGESIZE);
    uint64_t ring_size = td_shdict_ring_size(size);
    size_t map_len = (size_t)align_up(ring_off + ring_size, page > 0 ? (uint64_t)page : 4096);
    void *p = mmap(NULL, map_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    td_shdict *d = p;
    pthread_mutexattr_t attr;
    int rc = pthread_mutexattr_init(&attr);
    if (!rc)
        rc = pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
    if (!rc)
        rc = pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
    if (!rc)
        rc = pthread_mutex_init(&d->mutex, &attr);
    pthread_mutexattr_destroy(&attr);
    if (rc) {
        munmap(p, map_len);
        errno = rc;
        return NULL;
    }
    d->magic = MAGIC;
    snprintf(d->name, sizeof d->name, "%s", name ? name : "");
    d->map_len = map_len;
    d->size = size;
    d->bucket_off = hdr;
    d->bucket_mask = (uint32_t)(nbuckets - 1);
    d->heap_off = heap_off;
    d->heap_end = heap_end;
    d->heap_cap = heap_end - sizeof(uint64_t) - heap_off;
    d->ring_off = ring_off;
    d->ring_size = ring_size;
    random_seed(d);
    reset_entries(d);
    return d;
}

size_t td_shdict_ring_size(size_t size) {
    size_t r = size / 16;
    r = r < TD_SHDICT_RING ? TD_SHDICT_RING : r > TD_SHDICT_RING_MAX ? TD_SHDICT_RING_MAX : r;
    return r & ~(size_t)(UNIT - 1);
}

void td_shdict_free(td_shdict *d) {
    if (!d)
        return;
    pthread_mutex_destroy(&d->mutex);
    munmap(d, d->map_len);
}

const char *td_shdict_name(const td_shdict *d) { return d->name; }

static inline int key_ok(size_t klen) { return klen >= 1 && klen <= TD_SHDICT_MAX_KEY; }

int td_shdict_get(td_shdict *d, const char *key, size_t klen, td_shvalue *out, td_buf *buf) {
    td_buf_reset(buf);
    memset(out, 0, sizeof *out);
    if (!key_ok(klen))
        return TD_SHD_NOT_FOUND;
    uint64_t h = hash_key(d, key, klen), now = 0;
    lock(d);
    uint32_t *link = find(d, h, key, klen);
    uint32_t r = *link;
    if (!r) {
        unlock(d);
        return TD_SHD_NOT_FOUND;
    }
    struct ent *e = E(d, r);
    if (is_expired(e, &now)) {
        begin(d);
        entry_remove(d, link);
        end(d);
        unlock(d);
        return TD_SHD_NOT_FOUND;
    }
    out->type = (td_shv_type)e->type;
    switch (out->type) {
    case TD_SHV_NUMBER:
        out->num = e->v.num;
        break;
    case TD_SHV_BOOLEAN:
        out->boolean = e->v.len != 0;
        break;
    default:
        if (e->v.len) {
            /* The one allocation under the lock: the copy must be taken
             * before another process changes the value. */
            if (td_buf_reserve(buf, e->v.len)) {
                unlock(d);
                memset(out, 0, sizeof *out);
                return TD_SHD_NO_MEMORY;
            }
            memcpy(buf->data, evalue(e), e->v.len);
            buf->len = e->v.len;
        }
        out->str = buf->data ? buf->data : "";
        out->len = e->v.len;
        break;
    }
    begin(d);
    lru_touch(d, r, e);
    end(d);
    unlock(d);
    return TD_SHD_OK;
}

/* The end of a store or an incr: the change is closed and the lock let go,
 * then the watchers are told (mask) and the caller learns of evictions. */
static int change_done(td_shdict *d, uint64_t mask, int rc, int ev, int *evicted) {
    end(d);
    unlock(d);
    tell(d, mask);
    if (evicted)
        *evicted = ev;
    return rc;
}

int td_shdict_store(td_shdict *d, td_shd_mode mode, const char *key, size_t klen, const td_shvalue *v,
                    uint64_t ttl_ms, int *evicted) {
    int ev = 0;
    if (evicted)
        *evicted = 0;
    if (klen == 0)
        return TD_SHD_NOT_FOUND;
    size_t vlen = v->type == TD_SHV_STRING ? v->len : 0;
    if (klen > TD_SHDICT_MAX_KEY || vlen > d->heap_cap)
        return TD_SHD_TOO_LARGE;
    uint64_t need = entry_need(klen, vlen);
    if (v->type != TD_SHV_NIL && need > d->heap_cap)
        return TD_SHD_TOO_LARGE;
    uint64_t h = hash_key(d, key, klen), now = 0, mask = 0;
    int rc = TD_SHD_OK;
    lock(d);
    begin(d);
    uint32_t *link = find(d, h, key, klen);
    uint32_t r = *link;
    if (r && is_expired(E(d, r), &now)) {
        entry_remove(d, link);
        r = 0;
    }
    if (mode == TD_SHD_ADD && r) {
        rc = TD_SHD_EXISTS;
    } else if (mode == TD_SHD_REPLACE && !r) {
        rc = TD_SHD_NOT_FOUND;
    } else if (v->type == TD_SHV_NIL) {
        if (r) {
            entry_remove(d, link);
            mask = note_change(d, key, klen);
        }
    } else {
        uint64_t expire = deadline(ttl_ms, &now);
        if (r && bsize(d, r) >= need) {
            entry_rewrite(d, r, need, v, expire);
        } else {
            if (r)
                entry_remove(d, link);
            uint32_t b = alloc_evicting(d, need, &now, &ev);
            if (b)
                entry_new(d, b, need, h, key, klen, v, expire);
            else
                rc = TD_SHD_TOO_LARGE;
        }
        if (rc == TD_SHD_OK)
            mask = note_change(d, key, klen);
    }
    return change_done(d, mask, rc, ev, evicted);
}

int td_shdict_incr(td_shdict *d, const char *key, size_t klen, double delta, int has_init, double init,
                   uint64_t init_ttl_ms, double *out, int *evicted) {
    int ev = 0;
    if (evicted)
        *evicted = 0;
    if (klen == 0)
        return TD_SHD_NOT_FOUND;
    if (klen > TD_SHDICT_MAX_KEY)
        return has_init ? TD_SHD_TOO_LARGE : TD_SHD_NOT_FOUND;
    uint64_t h = hash_key(d, key, klen), now = 0, mask = 0;
    int rc = TD_SHD_OK;
    lock(d);
    begin(d);
    uint32_t *link = find(d, h, key, klen);
    uint32_t r = *link;
    if (r && is_expired(E(d, r), &now)) {
        entry_remove(d, link);
        r = 0;
    }
    if (r) {
        struct ent *e = E(d, r);
        if (e->type == TD_SHV_NUMBER) {
            *out = e->v.num + delta;
            set_number(e, *out);
            lru_touch(d, r, e);
        } else {
            rc = TD_SHD_NOT_NUMBER;
        }
    } else if (!has_init) {
        rc = TD_SHD_NOT_FOUND;
    } else if (entry_need(klen, 0) > d->heap_cap) {
        rc = TD_SHD_TOO_LARGE;
    } else {
        uint64_t expire = deadline(init_ttl_ms, &now), need = entry_need(klen, 0);
        uint32_t b = alloc_evicting(d, need, &now, &ev);
        if (b) {
            td_shvalue v = {.type = TD_SHV_NUMBER, .num = init + delta};
            entry_new(d, b, need, h, key, klen, &v, expire);
            *out = v.num;
        } else {
            rc = TD_SHD_TOO_LARGE;
        }
    }
    if (rc == TD_SHD_OK)
        mask = note_change(d, key, klen);
    return change_done(d, mask, rc, ev, evicted);
}

int td_shdict_delete(td_shdict *d, const char *key, size_t klen) {
    if (!key_ok(klen))
        return TD_SHD_NOT_FOUND;
    uint64_t h = hash_key(d, key, klen), now = 0, mask = 0;
    int rc = TD_SHD_NOT_FOUND;
    lock(d);
    uint32_t *link = find(d, h, key, klen);
    if (*link) {
        begin(d);
        if (!is_expired(E(d, *link), &now)) {
            rc = TD_SHD_OK;
            mask = note_change(d, key, klen);
        }
        entry_remove(d, link);
        end(d);
    }
    unlock(d);
    tell(d, mask);
    return rc;
}

int td_shdict_ttl(td_shdict *d, const char *key, size_t klen, uint64_t *ms_left) {
    *ms_left = 0;
    if (!key_ok(klen))
        return TD_SHD_NOT_FOUND;
    uint64_t h = hash_key(d, key, klen), now = 0;
    int rc = TD_SHD_NOT_FOUND;
    lock(d);
    uint32_t *link = find(d, h, key, klen);
    if (*link) {
        struct ent *e = E(d, *link);
        if (is_expired(e, &now)) {
            begin(d);
            entry_remove(d, link);
            end(d);
        } else {
            rc = TD_SHD_OK;
            *ms_left = e->expire ? e->expire - now : 0;
        }
    }
    unlock(d);
    return rc;
}

int td_shdict_keys(td_shdict *d, size_t max, td_buf *buf, size_t *n) {
    td_buf_reset(buf);
    *n = 0;
    uint64_t now = 0, bytes = 0;
    size_t count = 0;
    lock(d);
    /* Counted first, so the buffer grows once. */
    for (uint32_t r = d->lru_head; r && (max == 0 || count < max); r = E(d, r)->lnext) {
        if (!is_expired(E(d, r), &now)) {
            bytes += 4 + E(d, r)->klen;
            count++;
        }
    }
    if (bytes && td_buf_reserve(buf, bytes)) {
        unlock(d);
        return TD_SHD_NO_MEMORY;
    }
    size_t done = 0;
    for (uint32_t r = d->lru_head; r && done < count; r = E(d, r)->lnext) {
        struct ent *e = E(d, r);
        if (is_expired(e, &now))
            continue;
        uint32_t len = e->klen;
        memcpy(buf->data + buf->len, &len, sizeof len);
        memcpy(buf->data + buf->len + 4, ekey(e), len);
        buf->len += 4 + len;
        done++;
    }
    unlock(d);
    *n = count;
    return TD_SHD_OK;
}

void td_shdict_flush_all(td_shdict *d) {
    uint64_t now = 0, mask = 0;
    lock(d);
    begin(d);
    if (atomic_load_explicit(&d->watch, memory_order_relaxed)) {
        for (uint32_t r = d->lru_tail; r; r = E(d, r)->lprev) {
            struct ent *e = E(d, r);
            if (!is_expired(e, &now))
                mask = note_change(d, ekey(e), e->klen);
        }
    }
    reset_entries(d);
    end(d);
    unlock(d);
    tell(d, mask);
}

void td_shdict_stats_get(td_shdict *d, td_shdict_stats *st) {
    lock(d);
    st->capacity = (size_t)d->size;
    st->used = (size_t)d->used;
    st->count = (size_t)d->count;
    st->evictions = d->evictions;
    st->repairs = d->repairs;
    unlock(d);
}

void td_shdict_on_change(void (*fn)(td_shdict *d, uint64_t mask)) { change_fn = fn; }

uint64_t td_shdict_watch(td_shdict *d, unsigned slot, int on) {
    lock(d);
    if (slot < TD_SHDICT_MAX_WATCHERS) {
        uint64_t bit = (uint64_t)1 << slot;
        if (on)
            atomic_fetch_or_explicit(&d->watch, bit, memory_order_relaxed);
        else
            atomic_fetch_and_explicit(&d->watch, ~bit, memory_order_relaxed);
    }
    uint64_t pos = d->ring_head;
    unlock(d);
    return pos;
}

int td_shdict_changes(td_shdict *d, uint64_t *pos, td_buf *buf, size_t *n) {
    td_buf_reset(buf);
    *n = 0;
    int lost = 0;
    uint64_t bytes = 0;
    size_t count = 0;
    lock(d);
    uint64_t start = *pos;
    if (start > d->ring_head) {
        lost = 1;
        start = d->ring_head;
    } else if (start < d->ring_tail || start % UNIT) {
        lost = 1;
        start = d->ring_tail;
    }
    for (uint64_t p = start; p < d->ring_head; p += ring_record_size(d, p)) {
        uint64_t len = ring_len_at(d, p);
        if (len == RING_LOST) {
            lost = 1;
        } else if (len != RING_WRAP) {
            bytes += 4 + len;
            count++;
        }
    }
    if (bytes && td_buf_reserve(buf, bytes)) {
        unlock(d);
        return -1;
    }
    for (uint64_t p = start; p < d->ring_head; p += ring_record_size(d, p)) {
        uint64_t len = ring_len_at(d, p);
        if (len == RING_LOST || len == RING_WRAP)
            continue;
        memcpy(buf->data + buf->len, ring(d) + p % RING, 4 + len);
        buf->len += 4 + len;
    }
    *pos = d->ring_head;
    unlock(d);
    *n = count;
    return lost;
}

void td_shdict__hold(td_shdict *d, uint64_t ms, int dirty) {
    lock(d);
    if (dirty)
        begin(d);
    struct timespec ts = {.tv_sec = (time_t)(ms / 1000), .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
    }
    if (dirty)
        end(d);
    unlock(d);
}

#ifdef TD_SHDICT_TESTING
void td_shdict__scribble(td_shdict *d, int how, uint64_t ms) {
    lock(d);
    begin(d);
    uint32_t first = (uint32_t)(d->heap_off / UNIT), end_ref = (uint32_t)((d->heap_end - UNIT) / UNIT), b = first;
    while (b != end_ref && !(*tagp(d, b) & USED))
        b += (uint32_t)(bsize(d, b) / UNIT);
    if (how == TD_SHDICT__SCRIBBLE_TAG)
        *tagp(d, first) = 2 * UNIT | (*tagp(d, first) & TAG_FLAGS);
    else if (how == TD_SHDICT__SCRIBBLE_KEY && b != end_ref)
        ekey(E(d, b))[0] ^= 1;
    else if (how == TD_SHDICT__SCRIBBLE_WRITING && b != end_ref)
        E(d, b)->flags = WRITING;
    struct timespec ts = {.tv_sec = (time_t)(ms / 1000), .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
    }
    end(d);
    unlock(d);
}
#endif

/* Every structure against the others; returns the line of the first check
 * that failed. The walks are bounded so a corrupt chain cannot loop. */
static int check_locked(td_shdict *d) {
#define EXPECT(c)                                                                                        \
    do {                                                                                                 \
        if (!(c))                                                                                        \
            return __LINE__;                                                                             \
    } while (0)
    EXPECT(d->magic == MAGIC);
    EXPECT(atomic_load(&d->dirty) == 0);
    uint32_t b = (uint32_t)(d->heap_off / UNIT), end_ref = (uint32_t)((d->heap_end - UNIT) / UNIT);
    uint64_t nused = 0, nfree = 0, used_bytes = 0, free_bytes = 0;
    int prev_used = 1;
    while (b != end_ref) {
        uint64_t tag = *tagp(d, b), size = tag & ~TAG_FLAGS;
        EXPECT(b < end_ref && size >= MIN_BLOCK && size % UNIT == 0);
        EXPECT((uint64_t)b * UNIT + size <= d->heap_end - UNIT);
        EXPECT(!!(tag & PREV_USED) == prev_used);
        if (tag & USED) {
            struct ent *e = E(d, b);
            EXPECT(e->klen >= 1 && e->type >= TD_SHV_STRING && e->type <= TD_SHV_BOOLEAN && e->flags == 0);
            EXPECT(size >= entry_need(e->klen, e->type == TD_SHV_STRING ? e->v.len : 0));
            EXPECT(e->hash == hash_key(d, ekey(e), e->klen));
            nused++;
            used_bytes += size;
        } else {
            EXPECT(prev_used); /* neighbours merge */
            EXPECT(*(uint64_t *)((char *)tagp(d, b) + size - sizeof(uint64_t)) == size);
            nfree++;
            free_bytes += size;
        }
        prev_used = (tag & USED) != 0;
        b += (uint32_t)(size / UNIT);
    }
    EXPECT((*tagp(d, end_ref) & ~(uint64_t)PREV_USED) == USED);
    EXPECT(!!(*tagp(d, end_ref) & PREV_USED) == prev_used);
    EXPECT(used_bytes + free_bytes == d->heap_cap);
    EXPECT(used_bytes == d->used && nused == d->count);
    uint64_t listed = 0;
    for (unsigned c = 0; c < NCLASS; c++) {
        EXPECT(!!(d->free_bits & ((uint64_t)1 << c)) == (d->free_head[c] != 0));
        uint32_t prev = 0;
        for (uint32_t f = d->free_head[c]; f; prev = f, f = fb(d, f)->next) {
            EXPECT(++listed <= nfree);
            EXPECT(!(*tagp(d, f) & USED) && size_class(bsize(d, f)) == c && fb(d, f)->prev == prev);
        }
    }
    EXPECT(listed == nfree);
    uint64_t chained = 0;
    for (uint64_t i = 0; i <= d->bucket_mask; i++) {
        for (uint32_t r = buckets(d)[i]; r; r = E(d, r)->hnext) {
            EXPECT(++chained <= nused);
            EXPECT(r >= d->heap_off / UNIT && r < end_ref && (*tagp(d, r) & USED));
            EXPECT((E(d, r)->hash & d->bucket_mask) == i);
        }
    }
    EXPECT(chained == nused);
    uint64_t in_lru = 0;
    uint32_t prev = 0;
    for (uint32_t r = d->lru_head; r; prev = r, r = E(d, r)->lnext) {
        EXPECT(++in_lru <= nused);
        EXPECT((*tagp(d, r) & USED) && E(d, r)->lprev == prev);
    }
    EXPECT(in_lru == nused && d->lru_tail == prev);
    EXPECT(d->ring_tail <= d->ring_head && d->ring_head - d->ring_tail <= RING);
    EXPECT(d->ring_tail % UNIT == 0 && d->ring_head % UNIT == 0);
    uint64_t p = d->ring_tail;
    while (p < d->ring_head)
        p += ring_record_size(d, p);
    EXPECT(p == d->ring_head);
    return 0;
#undef EXPECT
}

int td_shdict__check(td_shdict *d) {
    lock(d);
    int rc = check_locked(d);
    unlock(d);
    return rc;
}
