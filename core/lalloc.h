/* Lua's memory allocator: malloc behind a bounded cache of freed blocks per
 * size class. The collector frees garbage in bursts and the next requests
 * allocate the same sizes again; the cache lets them meet without malloc's
 * slow path, and its bound lets a burst's peak go back to malloc (and,
 * trimmed, to the system), which LuaJIT's own allocator never does. It
 * counts the bytes Lua holds. Under the sanitizers it is plain realloc, so
 * that AddressSanitizer sees every block. No libuv. */
#ifndef TD_LALLOC_H
#define TD_LALLOC_H

#include <stddef.h>
#include <stdint.h>

/* Blocks up to this size are cached, in classes of 16 bytes. */
#define TD_LALLOC_SMALL 512
#define TD_LALLOC_CLASSES (TD_LALLOC_SMALL / 16)

/* Room past the limit, from the allocation that passes it to the next
 * full collection: the running code goes on until its next interpreted
 * instruction raises, then the error path (traceback, 500) runs. As large
 * as the limit: refusing an allocation is the last resort, for code that
 * never reaches the interpreter (a compiled loop), because LuaJIT
 * 2.1-20230119 (Debian 12) can crash when an allocation fails on a trace
 * (fixed upstream later in 2023). At least TD_LALLOC_HEADROOM, also the
 * size of the reserve freed when malloc itself fails. */
#define TD_LALLOC_HEADROOM ((size_t)2 << 20)
#define TD_LALLOC_HEADROOM_OF(limit) ((limit) > TD_LALLOC_HEADROOM ? (limit) : TD_LALLOC_HEADROOM)

/* The limit and the failure state. Passing the limit (or a malloc
 * failure) calls on_over once: the owner (vm.c) makes the running code
 * raise "not enough memory" at its next instruction, a runtime error that
 * tracebacks show with file:line. Meanwhile allocations go on within the
 * headroom; past it they fail (LuaJIT's memory error, which carries no
 * position). Lua has no emergency collection: the state stays full of the
 * failed task's garbage until a full collection, so the owner collects
 * fully, outside any resume, whenever `failed` is set, then calls
 * td_lalloc_recovered. */
typedef struct td_lalloc {
    size_t live;   /* bytes Lua holds */
    size_t cached; /* bytes in the free lists */
    size_t limit;  /* bytes Lua may hold while `enforce` (0: no limit) */
    size_t cap;    /* the limit in force: limit, plus the headroom after a failure */
    void *reserve; /* TD_LALLOC_HEADROOM of malloc's, freed when malloc fails */
    unsigned enforce; /* the limit applies: Lua code runs (the vm's own calls between
                         resumes are never refused, so they never raise outside a
                         protected call) */
    unsigned failed;  /* over the limit (or malloc failed) since the last full collection */
    unsigned refused; /* and an allocation was refused: LuaJIT's memory error is on its way */
    void (*on_over)(void *ud);
    void *over_ud;
    void *free[TD_LALLOC_CLASSES + 1];
} td_lalloc;

/* A lua_Alloc; ud is the td_lalloc (zeroed to start). */
void *td_lalloc_f(void *ud, void *ptr, size_t osize, size_t nsize);
/* Sets the limit (0: none) and takes the reserve. */
void td_lalloc_limit(td_lalloc *a, size_t limit);
/* After the full collection that follows a failure: the headroom ends and
 * the reserve is taken again. */
void td_lalloc_recovered(td_lalloc *a);
/* Gives every cached block back to malloc. */
void td_lalloc_drain(td_lalloc *a);
/* At the end: the reserve goes too. */
void td_lalloc_free_reserve(td_lalloc *a);

#endif
