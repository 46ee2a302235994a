/* The WebSocket codec: headers, masking, UTF-8, the accept key. */
#include "ws.h"

#include <string.h>

#include <openssl/evp.h>
#include <openssl/sha.h>

int td_ws_parse_header(const uint8_t *p, size_t n, const td_ws_rules *rules, td_ws_frame *f) {
    if (n < 2)
        return 0;
    f->fin = p[0] >> 7;
    f->rsv = (p[0] >> 4) & 7;
    f->opcode = p[0] & 0x0F;
    f->masked = p[1] >> 7;
    uint64_t len = p[1] & 0x7F;
    size_t need = 2 + (len == 126 ? 2 : len == 127 ? 8 : 0) + (f->masked ? 4 : 0);
    /* What the first two bytes say is checked before waiting for more. */
    if (f->rsv & ~rules->rsv_allowed)
        return -TD_WS_PROTOCOL;
    int control = f->opcode >= 8;
    if ((f->opcode > TD_WS_BINARY && f->opcode < TD_WS_CLOSE) || f->opcode > TD_WS_PONG)
        return -TD_WS_PROTOCOL; /* reserved opcodes */
    if (control && (!f->fin || len > 125 || f->rsv))
        return -TD_WS_PROTOCOL; /* control frames are whole, short, and no extension's */
    if (f->masked != rules->want_masked)
        return -TD_WS_PROTOCOL;
    if (n < need)
        return 0;
    size_t at = 2;
    if (len == 126) {
        len = (uint64_t)p[2] << 8 | p[3];
        at = 4;
        if (len < 126)
            return -TD_WS_PROTOCOL; /* the minimal encoding must be used */
    } else if (len == 127) {
        len = 0;
        for (int i = 0; i < 8; i++)
            len = len << 8 | p[2 + i];
        at = 10;
        if (len >> 63)
            return -TD_WS_PROTOCOL;
        if (len <= 0xFFFF)
            return -TD_WS_PROTOCOL;
    }
    if (len > rules->max_payload)
        return -TD_WS_TOO_BIG;
    if (f->masked) {
        memcpy(f->mask, p + at, 4);
        at += 4;
    }
    f->len = len;
    f->header_len = (uint8_t)at;
    return (int)at;
}

void td_ws_unmask(uint8_t *p, size_t n, const uint8_t mask[4], uint64_t offset) {
    uint8_t m[4];
    for (int i = 0; i < 4; i++)
        m[i] = mask[(offset + (uint64_t)i) & 3];
    size_t i = 0;
    /* Eight bytes at a time: the mask rotated to this offset, twice. */
    uint64_t m8;
    uint8_t mm[8] = {m[0], m[1], m[2], m[3], m[0], m[1], m[2], m[3]};
    memcpy(&m8, mm, 8);
    for (; i + 8 <= n; i += 8) {
        uint64_t v;
        memcpy(&v, p + i, 8);
        v ^= m8;
        memcpy(p + i, &v, 8);
    }
    for (; i < n; i++)
        p[i] ^= m[i & 3];
}

size_t td_ws_write_header(uint8_t *out, int fin, int rsv, int opcode, uint64_t len, const uint8_t *mask) {
    size_t at = 2;
    out[0] = (uint8_t)((fin ? 0x80 : 0) | (rsv & 7) << 4 | (opcode & 0x0F));
    uint8_t mbit = mask ? 0x80 : 0;
    if (len < 126) {
        out[1] = (uint8_t)(mbit | len);
    } else if (len <= 0xFFFF) {
        out[1] = mbit | 126;
        out[2] = (uint8_t)(len >> 8);
        out[3] = (uint8_t)len;
        at = 4;
    } else {
        out[1] = mbit | 127;
        for (int i = 0; i < 8; i++)
            out[2 + i] = (uint8_t)(len >> (56 - 8 * i));
        at = 10;
    }
    if (mask) {
        memcpy(out + at, mask, 4);
        at += 4;
    }
    return at;
}

int td_ws_utf8_feed(td_ws_utf8 *u, const uint8_t *p, size_t n) {
    size_t i = 0;
    while (i < n) {
        if (u->need == 0) {
            /* ASCII runs, eight bytes at a time. */
            while (i + 8 <= n) {
                uint64_t v;
                memcpy(&v, p + i, 8);
                if (v & 0x8080808080808080ull)
                    break;
                i += 8;
            }
            if (i == n)
                break;
            uint8_t b = p[i++];
            if (b < 0x80)
                continue;
            u->lo = 0x80, u->hi = 0xBF;
            if (b >= 0xC2 && b <= 0xDF) {
                u->need = 1;
            } else if (b >= 0xE0 && b <= 0xEF) {
                u->need = 2;
                if (b == 0xE0)
                    u->lo = 0xA0; /* below: an overlong form */
                else if (b == 0xED)
                    u->hi = 0x9F; /* above: a surrogate */
            } else if (b >= 0xF0 && b <= 0xF4) {
                u->need = 3;
                if (b == 0xF0)
                    u->lo = 0x90; /* below: overlong */
                else if (b == 0xF4)
                    u->hi = 0x8F; /* above: past U+10FFFF */
            } else {
                return -1; /* a continuation byte, C0, C1 or F5..FF */
            }
            continue;
        }
        uint8_t b = p[i++];
        if (b < u->lo || b > u->hi)
            return -1;
        u->need--;
        u->lo = 0x80, u->hi = 0xBF;
    }
    return 0;
}

int td_ws_accept_key(const char *key, size_t len, char out[29]) {
    static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    unsigned char digest[SHA_DIGEST_LENGTH];
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    if (!md)
        return -1;
    int ok = EVP_DigestInit_ex(md, EVP_sha1(), NULL) == 1 && EVP_DigestUpdate(md, key, len) == 1 &&
             EVP_DigestUpdate(md, guid, sizeof guid - 1) == 1 && EVP_DigestFinal_ex(md, digest, NULL) == 1;
    EVP_MD_CTX_free(md);
    if (!ok)
        return -1;
    EVP_EncodeBlock((unsigned char *)out, digest, SHA_DIGEST_LENGTH); /* 28 characters and a NUL */
    return 0;
}
