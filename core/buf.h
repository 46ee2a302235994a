/* Growable byte buffers and a free list of buffer blocks.
 *
 * A td_buf owns its data. Buffers that pass through a td_buf_pool come back
 * to it on release, so a connection that is idle holds no buffer at all and
 * a busy one does not call malloc per request. No libuv, no Lua. */
#ifndef TD_BUF_H
#define TD_BUF_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct td_buf {
    char *data;
    size_t len;
    size_t cap;
} td_buf;

/* A stack of spare blocks of one size; blocks of another size are freed. */
typedef struct td_buf_pool {
    char **blocks;
    size_t count;
    size_t max;
    size_t block_size;
} td_buf_pool;

/* Ensures room for `extra` more bytes. Returns 0, or -ENOMEM (b unchanged). */
int td_buf_reserve(td_buf *b, size_t extra);
/* The slow path of td_buf_append: grows, then appends. */
int td_buf_append_grow(td_buf *b, const void *data, size_t len);

/* Returns 0, or -ENOMEM (b unchanged). Inline: it runs for every piece of
 * every request head. */
static inline int td_buf_append(td_buf *b, const void *data, size_t len) {
    if (len == 0)
        return 0;
    if (b->cap - b->len < len || !b->data)
        return td_buf_append_grow(b, data, len);
    memcpy(b->data + b->len, data, len);
    b->len += len;
    return 0;
}

/* Appends n in decimal. Returns 0 or -ENOMEM. */
int td_buf_append_uint(td_buf *b, uint64_t n);
/* Appends a formatted string. Returns 0, or -ENOMEM (b unchanged). */
int td_buf_printf(td_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Removes the first n bytes. */
void td_buf_consume(td_buf *b, size_t n);
void td_buf_free(td_buf *b);

static inline void td_buf_reset(td_buf *b) { b->len = 0; }

void td_buf_pool_init(td_buf_pool *p, size_t block_size, size_t max_blocks);
/* Gives b a block from the pool when it has none. Returns 0 or -ENOMEM. */
int td_buf_pool_take(td_buf_pool *p, td_buf *b);
/* Returns b's block to the pool (or frees it) and leaves b empty. */
void td_buf_pool_give(td_buf_pool *p, td_buf *b);
void td_buf_pool_destroy(td_buf_pool *p);

#endif
