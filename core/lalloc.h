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

typedef struct td_lalloc {
    size_t live;   /* bytes Lua holds */
    size_t cached; /* bytes in the free lists */
    void *free[TD_LALLOC_CLASSES + 1];
} td_lalloc;

/* A lua_Alloc; ud is the td_lalloc (zeroed to start). */
void *td_lalloc_f(void *ud, void *ptr, size_t osize, size_t nsize);
/* Gives every cached block back to malloc. */
void td_lalloc_drain(td_lalloc *a);

#endif
