/* The conventions every harness shares (fuzz.h). */
#include "fuzz.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

void (*fuzz_fail_context)(void);

/* ---- failing ---- */

const char *fuzz_show(const char *p, size_t n) {
    static char text[1024];
    size_t o = 0;
    for (size_t i = 0; i < n && o + 8 < sizeof text; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c >= 0x20 && c < 0x7f && c != '\\')
            text[o++] = (char)c;
        else
            o += (size_t)snprintf(text + o, sizeof text - o, "\\x%02x", c);
    }
    text[o] = '\0';
    return text;
}

void fuzz_fail(const char *file, int line, const char *cond, const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "\n%s:%d: property broken: %s\n  ", file, line, cond);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    if (fuzz_fail_context)
        fuzz_fail_context();
    abort();
}

int fuzz_tolerated(const char *name) {
    /* Names noted already: a handful at most. */
    static const char *noted[16];
    static size_t nnoted;
    const char *list = getenv("TD_FUZZ_TOLERATE");
    if (!list)
        list = FUZZ_TOLERATED_BY_DEFAULT;
    size_t n = strlen(name);
    for (const char *p = list; (p = strstr(p, name)) != NULL; p += n) {
        if ((p == list || p[-1] == ',') && (p[n] == ',' || p[n] == '\0')) {
            size_t i = 0;
            while (i < nnoted && strcmp(noted[i], name) != 0)
                i++;
            if (i == nnoted && nnoted < sizeof noted / sizeof noted[0]) {
                noted[nnoted++] = name;
                fprintf(stderr, "note: known defect [%s] seen (tolerated: TD_FUZZ_TOLERATE)\n", name);
            }
            return 1;
        }
    }
    return 0;
}

/* ---- cut points ---- */

size_t fuzz_cuts(uint32_t seed, size_t len, size_t *cuts, size_t max) {
    /* Low bits: the mode; the rest drive a xorshift generator. */
    static const size_t spans[4] = {0, 1, 16, 256};
    size_t span = spans[seed & 3];
    uint32_t x = (seed >> 2) * 2654435761u + 1;
    size_t n = 0, pos = 0;
    if (!span)
        return 0;
    while (n < max) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        pos += 1 + x % span;
        if (pos >= len)
            break;
        cuts[n++] = pos;
    }
    return n;
}

/* ---- a loopback client ---- */

void fuzz_recv_all(int fd, td_buf *out, int *eof) {
    char buf[65536];
    while (!*eof) {
        ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n > 0) {
            FUZZ_CHECK(td_buf_append(out, buf, (size_t)n) == 0, "out of memory");
            continue;
        }
        if (n == 0 || errno == ECONNRESET)
            *eof = 1;
        else
            FUZZ_CHECK(errno == EAGAIN || errno == EWOULDBLOCK, "recv: %s", strerror(errno));
        return;
    }
}
