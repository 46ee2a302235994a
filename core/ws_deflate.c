/* Owns the process's zlib streams for permessage-deflate. */
#include "ws_deflate.h"

#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "errors.h"

#include <uv.h>

static z_stream *deflaters[16]; /* by window bits */
static z_stream *inflater;

static z_stream *deflater(int bits) {
    if (bits < 9 || bits > 15)
        bits = 15;
    z_stream *z = deflaters[bits];
    if (z)
        return deflateReset(z) == Z_OK ? z : NULL;
    z = calloc(1, sizeof *z);
    /* A raw stream (negative bits): no zlib header or checksum. */
    if (!z || deflateInit2(z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -bits, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
        free(z);
        return NULL;
    }
    deflaters[bits] = z;
    return z;
}

int td_ws_deflate(const char *data, size_t len, int window_bits, td_buf *out) {
    z_stream *z = deflater(window_bits);
    if (!z)
        return UV_ENOMEM;
    out->len = 0;
    if (td_buf_reserve(out, deflateBound(z, (uLong)len) + 16) != 0)
        return UV_ENOMEM;
    z->next_in = (Bytef *)(uintptr_t)data;
    z->avail_in = (uInt)len;
    z->next_out = (Bytef *)out->data;
    z->avail_out = (uInt)(out->cap);
    /* A sync flush ends on an empty stored block (00 00 FF FF), which the
     * receiver adds back. The bound leaves room for it. */
    if (deflate(z, Z_SYNC_FLUSH) != Z_OK || z->avail_in != 0)
        return UV_ENOMEM;
    out->len = out->cap - z->avail_out;
    if (out->len >= 4 && memcmp(out->data + out->len - 4, "\x00\x00\xff\xff", 4) == 0)
        out->len -= 4;
    return 0;
}

int td_ws_inflate(const char *data, size_t len, size_t max, td_buf *out) {
    if (!inflater) {
        inflater = calloc(1, sizeof *inflater);
        if (!inflater || inflateInit2(inflater, -15) != Z_OK) {
            free(inflater);
            inflater = NULL;
            return UV_ENOMEM;
        }
    } else if (inflateReset(inflater) != Z_OK) {
        return UV_ENOMEM;
    }
    static const unsigned char tail[4] = {0x00, 0x00, 0xff, 0xff};
    z_stream *z = inflater;
    out->len = 0;
    for (int part = 0; part < 2; part++) {
        z->next_in = part ? (Bytef *)(uintptr_t)tail : (Bytef *)(uintptr_t)data;
        z->avail_in = part ? 4 : (uInt)len;
        while (z->avail_in > 0) {
            if (out->cap - out->len < 4096 && td_buf_reserve(out, out->cap < 65536 ? 16384 : out->cap) != 0)
                return UV_ENOMEM;
            size_t room = out->cap - out->len;
            if (out->len + room > max + 1)
                room = max + 1 - out->len; /* one byte past max tells "too large" */
            z->next_out = (Bytef *)out->data + out->len;
            z->avail_out = (uInt)room;
            int rc = inflate(z, Z_SYNC_FLUSH);
            out->len += room - z->avail_out;
            if (out->len > max)
                return TD_ETOOLARGE;
            /* A sender may end on a final block: the four bytes added
             * after it are not part of the stream; anything else is. */
            if (rc == Z_STREAM_END)
                return part == 0 && z->avail_in > 0 ? TD_EPROTO : 0;
            if (rc != Z_OK && rc != Z_BUF_ERROR)
                return rc == Z_MEM_ERROR ? UV_ENOMEM : TD_EPROTO;
            if (rc == Z_BUF_ERROR && z->avail_out > 0)
                return TD_EPROTO; /* no progress with room left */
        }
    }
    return 0;
}

void td_ws_deflate_shutdown(void) {
    for (int i = 0; i < 16; i++) {
        if (deflaters[i]) {
            deflateEnd(deflaters[i]);
            free(deflaters[i]);
            deflaters[i] = NULL;
        }
    }
    if (inflater) {
        inflateEnd(inflater);
        free(inflater);
        inflater = NULL;
    }
}
