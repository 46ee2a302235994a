/* A minimal test harness: CHECK records a failure and goes on; the test's
 * main returns check_result(), non-zero when anything failed. */
#ifndef TD_CHECK_H
#define TD_CHECK_H

#include <stdio.h>
#include <string.h>

static int check_failures;
static int check_count;

#define CHECK(cond)                                                                \
    do {                                                                           \
        check_count++;                                                             \
        if (!(cond)) {                                                             \
            check_failures++;                                                      \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
        }                                                                          \
    } while (0)

#define CHECK_EQ_INT(a, b)                                                                           \
    do {                                                                                             \
        long long check_a_ = (long long)(a), check_b_ = (long long)(b);                              \
        check_count++;                                                                               \
        if (check_a_ != check_b_) {                                                                  \
            check_failures++;                                                                        \
            fprintf(stderr, "%s:%d: %s == %s failed: %lld != %lld\n", __FILE__, __LINE__, #a, #b,  \
                    check_a_, check_b_);                                                             \
        }                                                                                            \
    } while (0)

#define CHECK_EQ_MEM(data, len, lit)                                                                  \
    do {                                                                                              \
        size_t check_len_ = (len);                                                                    \
        check_count++;                                                                                \
        if (check_len_ != strlen(lit) || memcmp((data), (lit), check_len_) != 0) {                    \
            check_failures++;                                                                         \
            fprintf(stderr, "%s:%d: expected \"%s\", got \"%.*s\"\n", __FILE__, __LINE__, (lit),     \
                    (int)check_len_, (const char *)(data));                                           \
        }                                                                                             \
    } while (0)

#define CHECK_STR(got, lit)                                                                          \
    do {                                                                                             \
        const char *check_s_ = (got);                                                                \
        CHECK_EQ_MEM(check_s_ ? check_s_ : "(null)", strlen(check_s_ ? check_s_ : "(null)"), lit);   \
    } while (0)

static inline int check_result(const char *name) {
    fprintf(stderr, "%s: %d checks, %d failed\n", name, check_count, check_failures);
    return check_failures ? 1 : 0;
}

#endif
