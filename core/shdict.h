/* Shared dictionaries: key-value stores in memory that every worker process
 * shares (`--shared NAME=SIZE`, lua/tendril/shared.lua).
 *
 * Ownership: a dictionary is one anonymous shared mapping (MAP_SHARED),
 * made by td_shdict_new in the process that forks the workers, before it
 * forks: every process sees it at the same address, and it outlives any
 * worker (a worker's death, a reload). The creating process unmaps it with
 * td_shdict_free; workers never do. Everything inside the mapping is
 * addressed by offsets from its start, never by pointers.
 *
 * Concurrency: one process-shared robust mutex per dictionary guards all of
 * it. A process killed while it held the lock does not wedge the others:
 * the next locker gets EOWNERDEAD. When the dead holder was between
 * changes, the dictionary carries on as it was. When it was in the middle
 * of one (a `dirty` mark is set around every change, and around the move of
 * a read's entry in the LRU list too), the next locker repairs it: it
 * rebuilds the hash chains, the LRU list, the free space and the counts
 * from the entries themselves, which every change writes in an order that
 * leaves them whole whatever instruction it is killed at, and logs
 * "repaired (N entries kept)". Of the change the dead holder was making:
 *   - a delete, an add or a set of an absent key, an incr, a flush_all:
 *     done or not done, every other entry as it was (an incr writes its
 *     number in one 8-byte store, a flush drops every entry in one store);
 *   - a set or replace of a present key: done, not done, or the key gone.
 *     Gone when it died while rewriting the value in place (when the new
 *     entry fits the old one's memory; the entry is marked meanwhile, and
 *     a marked entry is dropped rather than kept half old, half new), or
 *     between freeing the old entry and writing the new one (when it does
 *     not fit);
 *   - expired or least recently used entries it was removing to make room:
 *     each gone or still there;
 *   - a get or a ttl: nothing lost.
 * Every repair loses the order of use, which starts again in memory order,
 * and tells watchers of a loss (the change may be done and not recorded).
 * The repair checks the structure and each key against its stored hash,
 * not the bytes of values: a stray write into a value (a bug elsewhere in
 * the process) goes unseen; one that breaks the structure or a key makes
 * it empty the dictionary instead and log "emptied (could not be
 * repaired)".
 *
 * Keys are hashed with SipHash-1-3 under a random key drawn per dictionary,
 * so that keys an attacker chooses cannot be made to share a hash chain.
 *
 * Memory: SIZE bytes hold the hash buckets and the entries (a key, its
 * value, and about 48 bytes of bookkeeping). When an entry does not fit,
 * the least recently used entries (and expired ones) are evicted until it
 * does; an entry that could never fit is refused (TD_SHD_TOO_LARGE) without
 * evicting anything. Reads count as use.
 *
 * Changes: a dictionary that some process watches (td_shdict_watch) records
 * the key of every set, add, replace, incr, delete and flush in a ring of
 * td_shdict_ring_size(SIZE) bytes; a reader that falls more than the ring
 * behind loses records and is told so. Expiry and eviction are not changes.
 *
 * No libuv, no Lua: the Lua side is api_shared.c. */
#ifndef TD_SHDICT_H
#define TD_SHDICT_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"

typedef struct td_shdict td_shdict;

/* Keys are 1 to TD_SHDICT_MAX_KEY bytes. */
#define TD_SHDICT_MAX_KEY 65535
/* The smallest SIZE (bytes) a dictionary may have. */
#define TD_SHDICT_MIN_SIZE ((size_t)64 << 10)
/* The largest: entries refer to each other by 32-bit offsets in 8-byte
 * units, which reach 32 GiB (31 leaves room for the header and buckets). */
#define TD_SHDICT_MAX_SIZE ((uint64_t)31 << 30)
/* The change ring, outside SIZE: a sixteenth of SIZE, from TD_SHDICT_RING
 * to TD_SHDICT_RING_MAX bytes (a burst of changes in one process, before
 * the watchers read, is what it must hold). */
#define TD_SHDICT_RING ((size_t)64 << 10)
#define TD_SHDICT_RING_MAX ((size_t)4 << 20)
size_t td_shdict_ring_size(size_t size);
/* Worker slots a watch can name (bits of a mask). */
#define TD_SHDICT_MAX_WATCHERS 64

typedef enum td_shv_type {
    TD_SHV_NIL = 0,
    TD_SHV_STRING,
    TD_SHV_NUMBER,
    TD_SHV_BOOLEAN,
} td_shv_type;

typedef struct td_shvalue {
    td_shv_type type;
    double num;      /* TD_SHV_NUMBER */
    int boolean;     /* TD_SHV_BOOLEAN */
    const char *str; /* TD_SHV_STRING: len bytes (into the caller's buffer for a result) */
    size_t len;
} td_shvalue;

enum {
    TD_SHD_OK = 0,
    TD_SHD_NOT_FOUND = 1,  /* no such key (or it expired) */
    TD_SHD_EXISTS = 2,     /* add: the key is there */
    TD_SHD_TOO_LARGE = 3,  /* the entry could never fit */
    TD_SHD_NOT_NUMBER = 4, /* incr of a value that is not a number */
    TD_SHD_NO_MEMORY = 5,  /* the caller's buffer could not grow */
};

/* A dictionary named `name` (copied, at most 63 bytes) with `size` bytes for
 * its entries (TD_SHDICT_MIN_SIZE to TD_SHDICT_MAX_SIZE, else EINVAL). NULL
 * with errno when the mapping or the mutex could not be made. */
td_shdict *td_shdict_new(const char *name, size_t size);
void td_shdict_free(td_shdict *d);
const char *td_shdict_name(const td_shdict *d);

/* The value of key, if present and not expired; a string value is copied
 * into buf (reset first) and out->str points into it. TD_SHD_OK,
 * TD_SHD_NOT_FOUND or TD_SHD_NO_MEMORY. */
int td_shdict_get(td_shdict *d, const char *key, size_t klen, td_shvalue *out, td_buf *buf);

/* What a store does when the key is there, or not. */
typedef enum td_shd_mode {
    TD_SHD_SET,     /* either way */
    TD_SHD_ADD,     /* only when absent (TD_SHD_EXISTS otherwise) */
    TD_SHD_REPLACE, /* only when present (TD_SHD_NOT_FOUND otherwise) */
} td_shd_mode;

/* Stores v under key; ttl_ms 0: no expiry. *evicted (may be NULL) is set to
 * 1 when live entries had to go to make room. TD_SHD_OK, TD_SHD_EXISTS,
 * TD_SHD_NOT_FOUND or TD_SHD_TOO_LARGE. A value of type TD_SHV_NIL removes
 * the key (as a set of nil does in OpenResty), the mode's conditions
 * holding as for any value. */
int td_shdict_store(td_shdict *d, td_shd_mode mode, const char *key, size_t klen, const td_shvalue *v,
                    uint64_t ttl_ms, int *evicted);

/* Adds delta to the number under key and gives the result in *out. An
 * absent key is TD_SHD_NOT_FOUND unless init is given (has_init): it is
 * then created as init + delta, expiring after init_ttl_ms (0: never); an
 * existing key keeps its expiry. TD_SHD_NOT_NUMBER for a value of another
 * type; TD_SHD_TOO_LARGE when a created entry could never fit (a key near
 * TD_SHDICT_MAX_KEY in the smallest dictionary). */
int td_shdict_incr(td_shdict *d, const char *key, size_t klen, double delta, int has_init, double init,
                   uint64_t init_ttl_ms, double *out, int *evicted);

/* TD_SHD_OK, or TD_SHD_NOT_FOUND. */
int td_shdict_delete(td_shdict *d, const char *key, size_t klen);

/* The ms left before key expires in *ms_left (0 when it never does).
 * TD_SHD_OK or TD_SHD_NOT_FOUND. */
int td_shdict_ttl(td_shdict *d, const char *key, size_t klen, uint64_t *ms_left);

/* Up to max live keys (0: all), most recently used first, into buf (reset
 * first) as records of a 4-byte length (native order) then the key bytes;
 * the count in *n. TD_SHD_OK or TD_SHD_NO_MEMORY. */
int td_shdict_keys(td_shdict *d, size_t max, td_buf *buf, size_t *n);

/* Removes every entry. */
void td_shdict_flush_all(td_shdict *d);

typedef struct td_shdict_stats {
    size_t capacity; /* SIZE */
    size_t used;     /* bytes entries take, bookkeeping included */
    size_t count;    /* live entries (expired ones not yet reclaimed included) */
    uint64_t evictions;
    uint64_t repairs; /* times a dead holder's lock was taken over, whatever it left */
} td_shdict_stats;
void td_shdict_stats_get(td_shdict *d, td_shdict_stats *st);

/* ---- changes ---- */

/* Called in the changing process, after the lock is released, when a change
 * was recorded: mask holds the watcher bits set on d. NULL: none. One per
 * process. */
void td_shdict_on_change(void (*fn)(td_shdict *d, uint64_t mask));
/* Sets (on) or clears the watcher bit `slot` (0..TD_SHDICT_MAX_WATCHERS-1)
 * of d. While any bit is set, changes are recorded. Returns the ring
 * position from which the new watcher reads (the current end). */
uint64_t td_shdict_watch(td_shdict *d, unsigned slot, int on);
/* The keys changed since *pos, into buf (reset first) as in
 * td_shdict_keys, *n of them; *pos moves to the end. Returns 1 when records
 * were lost (the reader fell more than the ring behind), else 0; -1 when
 * buf could not grow (*pos unchanged). A change of a key longer than
 * a quarter of the ring less 4 bytes is not recorded: its readers are told of a
 * loss instead, as one such key would push every other record out. When a
 * dead process's change made the dictionary start empty, its readers are
 * told of a loss too. */
int td_shdict_changes(td_shdict *d, uint64_t *pos, td_buf *buf, size_t *n);

/* ---- for tests ---- */

/* Holds the lock for ms milliseconds, marked dirty (as in the middle of a
 * change) when dirty is set: a test kills the holder meanwhile. */
void td_shdict__hold(td_shdict *d, uint64_t ms, int dirty);
/* Walks the heap, the free lists, the chains, the LRU list and the ring
 * against each other: 0 when they agree, else the source line of the first
 * check that failed. */
int td_shdict__check(td_shdict *d);

#ifdef TD_SHDICT_TESTING
/* Only in the unit test's own build of shdict.c (-DTD_SHDICT_TESTING):
 * production code has none of this, not even a branch.
 *
 * Between every two steps of a change the engine passes a kill point.
 * stop_after >= 0: that many kill points are passed, then the process
 * stops itself (SIGSTOP) at the next, holding the lock, for the test to
 * kill. spin: iterations spun at every kill point, so that a kill at a
 * random instant lands inside changes more often. */
extern long td_shdict__stop_after;
extern unsigned td_shdict__spin;
/* How the EOWNERDEADs this process met ended. */
extern uint64_t td_shdict__intact, td_shdict__repaired, td_shdict__emptied;
/* Takes the lock, marks it dirty, damages the heap as `how` says, and
 * holds it for ms milliseconds for the test to kill the holder. */
enum {
    TD_SHDICT__SCRIBBLE_TAG = 1,     /* the first block's size: the heap no longer walks */
    TD_SHDICT__SCRIBBLE_KEY = 2,     /* a byte of the first entry's key: its hash no longer matches */
    TD_SHDICT__SCRIBBLE_WRITING = 3, /* the first entry marked as caught rewriting its value */
};
void td_shdict__scribble(td_shdict *d, int how, uint64_t ms);
#endif

#endif
