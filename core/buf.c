/* Growable buffers and the block pool behind them. */
#include "buf.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int td_buf_reserve(td_buf *b, size_t extra) {
    if (b->cap - b->len >= extra)
        return 0;
    size_t need = b->len + extra;
    if (need < b->len)
        return -ENOMEM;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need) {
        if (cap > ((size_t)-1) / 2)
            return -ENOMEM;
        cap *= 2;
    }
    char *data = realloc(b->data, cap);
    if (!data)
        return -ENOMEM;
    b->data = data;
    b->cap = cap;
    return 0;
}

int td_buf_append_uint(td_buf *b, uint64_t n) {
    char digits[20];
    int i = sizeof digits;
    do {
        digits[--i] = (char)('0' + n % 10);
        n /= 10;
    } while (n);
    return td_buf_append(b, digits + i, sizeof digits - (size_t)i);
}

int td_buf_append_grow(td_buf *b, const void *data, size_t len) {
    if (len == 0)
        return 0;
    int rc = td_buf_reserve(b, len);
    if (rc)
        return rc;
    memcpy(b->data + b->len, data, len);
    b->len += len;
    return 0;
}

int td_buf_printf(td_buf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b->data ? b->data + b->len : NULL, b->cap - b->len, fmt, ap);
    va_end(ap);
    if (n < 0)
        return -ENOMEM;
    if ((size_t)n >= b->cap - b->len) {
        int rc = td_buf_reserve(b, (size_t)n + 1);
        if (rc)
            return rc;
        va_start(ap, fmt);
        vsnprintf(b->data + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
    }
    b->len += (size_t)n;
    return 0;
}

void td_buf_consume(td_buf *b, size_t n) {
    if (n >= b->len) {
        b->len = 0;
        return;
    }
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
}

void td_buf_free(td_buf *b) {
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

void td_buf_pool_init(td_buf_pool *p, size_t block_size, size_t max_blocks) {
    p->blocks = NULL;
    p->count = 0;
    p->max = max_blocks;
    p->block_size = block_size;
}

int td_buf_pool_take(td_buf_pool *p, td_buf *b) {
    if (b->data)
        return 0;
    if (p->count > 0) {
        b->data = p->blocks[--p->count];
    } else {
        b->data = malloc(p->block_size);
        if (!b->data)
            return -ENOMEM;
    }
    b->cap = p->block_size;
    b->len = 0;
    return 0;
}

void td_buf_pool_give(td_buf_pool *p, td_buf *b) {
    if (!b->data)
        return;
    if (b->cap == p->block_size && p->count < p->max) {
        if (!p->blocks) {
            p->blocks = malloc(p->max * sizeof *p->blocks);
            if (!p->blocks) {
                td_buf_free(b);
                return;
            }
        }
        p->blocks[p->count++] = b->data;
        b->data = NULL;
        b->len = b->cap = 0;
        return;
    }
    td_buf_free(b);
}

void td_buf_pool_destroy(td_buf_pool *p) {
    while (p->count > 0)
        free(p->blocks[--p->count]);
    free(p->blocks);
    p->blocks = NULL;
}
