/* What every harness shares: how control bytes are read, cut points, and
 * how a broken property is reported (an abort, which libFuzzer records as
 * a crash together with the input that caused it). */
#ifndef FUZZ_H
#define FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "buf.h"

/* libFuzzer's entry point, defined once per harness. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A control byte's value: a digit stands for itself, so seeds can be
 * written as text ("0000000GET / HTTP/1.1..."); any other byte for its
 * code. */
static inline unsigned fuzz_digit(uint8_t c) { return c >= '0' && c <= '9' ? (unsigned)(c - '0') : c; }

/* Cut points for len bytes from a seed: all at once, byte by byte, or
 * pieces of random sizes up to 16 or 256 bytes (the seed's low 2 bits).
 * Returns how many went into cuts (ascending, at most max). */
size_t fuzz_cuts(uint32_t seed, size_t len, size_t *cuts, size_t max);

#define FUZZ_CHECK(cond, ...)                                  \
    do {                                                       \
        if (!(cond))                                           \
            fuzz_fail(__FILE__, __LINE__, #cond, __VA_ARGS__); \
    } while (0)
void fuzz_fail(const char *file, int line, const char *cond, const char *fmt, ...)
    __attribute__((noreturn, format(printf, 4, 5)));

/* A known defect of the code under test, by name: a failure like
 * FUZZ_CHECK's unless TD_FUZZ_TOLERATE (names separated by commas) lists
 * it; then it is noted once on stderr and the run goes on, so that a long
 * run can look for other defects. Without TD_FUZZ_TOLERATE nothing is
 * tolerated: every defect named so far is fixed, and CI runs the checks.
 * docs/fuzzing.md lists the names. */
#define FUZZ_TOLERATED_BY_DEFAULT ""
#define FUZZ_KNOWN(name, cond, ...)                                  \
    do {                                                             \
        if (!(cond) && !fuzz_tolerated(name))                        \
            fuzz_fail(__FILE__, __LINE__, "[" name "] " #cond, __VA_ARGS__); \
    } while (0)
int fuzz_tolerated(const char *name);

/* Called by fuzz_fail before it aborts, to print what the harness knows
 * (NULL: nothing). */
extern void (*fuzz_fail_context)(void);

/* Whether two byte strings are equal; either may be NULL when empty. */
static inline int fuzz_same(const char *a, size_t alen, const char *b, size_t blen) {
    return alen == blen && (!alen || memcmp(a, b, alen) == 0);
}

/* A printable rendering of n bytes for messages (one static buffer). */
const char *fuzz_show(const char *p, size_t n);

/* Reads what has arrived on the non-blocking socket fd into out; *eof is
 * set once the peer closed or reset the connection. */
void fuzz_recv_all(int fd, td_buf *out, int *eof);

#endif
