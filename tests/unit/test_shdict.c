/* td_shdict: every operation, expiry, LRU eviction, a randomized run held to
 * a model, several processes at once, a holder killed with the lock, a
 * damaged heap, the change ring, processes killed at every step of each
 * kind of change and at random instants; then the cost of an incr and a
 * get. Built with its own copy of shdict.c and TD_SHDICT_TESTING (kill
 * points), see tests/CMakeLists.txt. */
#include "check.h"
#include "log.h"
#include "shdict.h"

#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static td_buf gbuf;

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
    }
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int put(td_shdict *d, td_shd_mode mode, const char *k, const char *v, uint64_t ttl, int *evicted) {
    td_shvalue sv = {.type = TD_SHV_STRING, .str = v, .len = strlen(v)};
    return td_shdict_store(d, mode, k, strlen(k), &sv, ttl, evicted);
}

static int put_num(td_shdict *d, const char *k, double n) {
    td_shvalue sv = {.type = TD_SHV_NUMBER, .num = n};
    return td_shdict_store(d, TD_SHD_SET, k, strlen(k), &sv, 0, NULL);
}

static int get(td_shdict *d, const char *k, td_shvalue *out) {
    return td_shdict_get(d, k, strlen(k), out, &gbuf);
}

/* The string value of k, or "(absent)" / "(not a string)". */
static const char *get_str(td_shdict *d, const char *k) {
    static char copy[4096];
    td_shvalue v;
    if (get(d, k, &v) != TD_SHD_OK)
        return "(absent)";
    if (v.type != TD_SHV_STRING || v.len >= sizeof copy)
        return "(not a string)";
    memcpy(copy, v.str, v.len);
    copy[v.len] = 0;
    return copy;
}

static int has(td_shdict *d, const char *k) {
    td_shvalue v;
    return get(d, k, &v) == TD_SHD_OK;
}

static size_t count_of(td_shdict *d) {
    td_shdict_stats st;
    td_shdict_stats_get(d, &st);
    return st.count;
}

/* The i-th record of a keys/changes buffer, or NULL past the end. */
static const char *record(const td_buf *b, size_t i, uint32_t *len) {
    size_t off = 0;
    while (off + 4 <= b->len) {
        memcpy(len, b->data + off, 4);
        if (i-- == 0)
            return b->data + off + 4;
        off += 4 + *len;
    }
    return NULL;
}

#define CHECK_RECORD(buf, i, lit)                                                                    \
    do {                                                                                             \
        uint32_t rlen_ = 0;                                                                          \
        const char *r_ = record((buf), (i), &rlen_);                                                 \
        CHECK(r_ != NULL);                                                                           \
        if (r_)                                                                                      \
            CHECK_EQ_MEM(r_, rlen_, lit);                                                            \
    } while (0)

static void test_basic(void) {
    errno = 0;
    CHECK(td_shdict_new("small", TD_SHDICT_MIN_SIZE - 1) == NULL);
    CHECK_EQ_INT(errno, EINVAL);

    td_shdict *d = td_shdict_new("basic", TD_SHDICT_MIN_SIZE);
    CHECK(d != NULL);
    CHECK_STR(td_shdict_name(d), "basic");
    td_shvalue v;
    CHECK_EQ_INT(get(d, "a", &v), TD_SHD_NOT_FOUND);
    CHECK_EQ_INT(v.type, TD_SHV_NIL);

    /* Types. */
    CHECK_EQ_INT(put(d, TD_SHD_SET, "s", "hello", 0, NULL), TD_SHD_OK);
    CHECK_STR(get_str(d, "s"), "hello");
    CHECK_EQ_INT(put(d, TD_SHD_SET, "empty", "", 0, NULL), TD_SHD_OK);
    CHECK_EQ_INT(get(d, "empty", &v), TD_SHD_OK);
    CHECK_EQ_INT(v.type, TD_SHV_STRING);
    CHECK_EQ_INT(v.len, 0);
    CHECK(v.str != NULL);
    CHECK_EQ_INT(put_num(d, "n", 3.5), TD_SHD_OK);
    CHECK_EQ_INT(get(d, "n", &v), TD_SHD_OK);
    CHECK(v.type == TD_SHV_NUMBER && v.num == 3.5);
    td_shvalue yes = {.type = TD_SHV_BOOLEAN, .boolean = 1}, no = {.type = TD_SHV_BOOLEAN, .boolean = 0};
    CHECK_EQ_INT(td_shdict_store(d, TD_SHD_SET, "t", 1, &yes, 0, NULL), TD_SHD_OK);
    CHECK_EQ_INT(td_shdict_store(d, TD_SHD_SET, "f", 1, &no, 0, NULL), TD_SHD_OK);
    CHECK_EQ_INT(get(d, "t", &v), TD_SHD_OK);
    CHECK(v.type == TD_SHV_BOOLEAN && v.boolean == 1);
    CHECK_EQ_INT(get(d, "f", &v), TD_SHD_OK);
    CHECK(v.type == TD_SHV_BOOLEAN && v.boolean == 0);
    CHECK_EQ_INT(count_of(d), 5);

    /* A value of one type replaced by another, longer, then shorter. */
    CHECK_EQ_INT(put(d, TD_SHD_SET, "n", "now a string", 0, NULL), TD_SHD_OK);
    CHECK_STR(get_str(d, "n"), "now a string");
    char longv[1500];
    memset(longv, 'x', sizeof longv - 1);
    longv[sizeof longv - 1] = 0;
    CHECK_EQ_INT(put(d, TD_SHD_SET, "s", longv, 0, NULL), TD_SHD_OK);
    CHECK_STR(get_str(d, "s"), longv);
    CHECK_EQ_INT(put(d, TD_SHD_SET, "s", "short", 0, NULL), TD_SHD_OK);
    CHECK_STR(get_str(d, "s"), "short");
    CHECK_EQ_INT(put_num(d, "s", -2), TD_SHD_OK);
    CHECK_EQ_INT(get(d, "s", &v), TD_SHD_OK);
    CHECK(v.type == TD_SHV_NUMBER && v.num == -2);
    CHECK_EQ_INT(count_of(d), 5);
    CHECK_EQ_INT(td_shdict__check(d), 0);

    /* Modes. */
    CHECK_EQ_INT(put(d, TD_SHD_ADD, "n", "other", 0, NULL), TD_SHD_EXISTS);
    CHECK_STR(get_str(d, "n"), "now a string");
    CHECK_EQ_INT(put(d, TD_SHD_ADD, "new", "added", 0, NULL), TD_SHD_OK);
    CHECK_STR(get_str(d, "new"), "added");
    CHECK_EQ_INT(put(d, TD_SHD_REPLACE, "nobody", "x", 0, NULL), TD_SHD_NOT_FOUND);
    CHECK(!has(d, "nobody"));
    CHECK_EQ_INT(put(d, TD_SHD_REPLACE, "new", "replaced", 0, NULL), TD_SHD_OK);
    CHECK_STR(get_str(d, "new"), "replaced");

    /* A nil value removes, under the mode's conditions. */
    td_shvalue nil = {.type = TD_SHV_NIL};
    CHECK_EQ_INT(td_shdict_store(d, TD_SHD_ADD, "new", 3, &nil, 0, NULL), TD_SHD_EXISTS);
    CHECK(has(d, "new"));
    CHECK_EQ_INT(td_shdict_store(d, TD_SHD_REPLACE, "nobody", 6, &nil, 0, NULL), TD_SHD_NOT_FOUND);
    CHECK_EQ_INT(td_shdict_store(d, TD_SHD_SET, "new", 3, &nil, 0, NULL), TD_SHD_OK);
    CHECK(!has(d, "new"));
    CHECK_EQ_INT(td_shdict_store(d, TD_SHD_SET, "new", 3, &nil, 0, NULL), TD_SHD_OK);

    /* incr. */
    double out = -1;
    CHECK_EQ_INT(td_shdict_incr(d, "c", 1, 1, 0, 0, 0, &out, NULL), TD_SHD_NOT_FOUND);
    CHECK(!has(d, "c"));
    CHECK_EQ_INT(td_shdict_incr(d, "c", 1, 1, 1, 10, 0, &out, NULL), TD_SHD_OK);
    CHECK(out == 11);
    CHECK_EQ_INT(td_shdict_incr(d, "c", 1, 2.5, 1, 100, 0, &out, NULL), TD_SHD_OK);
    CHECK(out == 13.5);
    CHECK_EQ_INT(td_shdict_incr(d, "c", 1, -20, 0, 0, 0, &out, NULL), TD_SHD_OK);
    CHECK(out == -6.5);
    CHECK_EQ_INT(get(d, "c", &v), TD_SHD_OK);
    CHECK(v.type == TD_SHV_NUMBER && v.num == -6.5);
    CHECK_EQ_INT(td_shdict_incr(d, "n", 1, 1, 1, 0, 0, &out, NULL), TD_SHD_NOT_NUMBER);
    CHECK_STR(get_str(d, "n"), "now a string");
    CHECK_EQ_INT(td_shdict_incr(d, "t", 1, 1, 0, 0, 0, &out, NULL), TD_SHD_NOT_NUMBER);

    /* delete and ttl of a key that never expires. */
    uint64_t left = 99;
    CHECK_EQ_INT(td_shdict_ttl(d, "c", 1, &left), TD_SHD_OK);
    CHECK_EQ_INT(left, 0);
    CHECK_EQ_INT(td_shdict_ttl(d, "zz", 2, &left), TD_SHD_NOT_FOUND);
    CHECK_EQ_INT(td_shdict_delete(d, "c", 1), TD_SHD_OK);
    CHECK_EQ_INT(td_shdict_delete(d, "c", 1), TD_SHD_NOT_FOUND);
    CHECK(!has(d, "c"));

    /* Binary keys: a NUL inside a key is a byte like another. */
    td_shvalue v1 = {.type = TD_SHV_STRING, .str = "one", .len = 3};
    td_shvalue v2 = {.type = TD_SHV_STRING, .str = "two\0two", .len = 7};
    CHECK_EQ_INT(td_shdict_store(d, TD_SHD_SET, "a\0b", 3, &v1, 0, NULL), TD_SHD_OK);
    CHECK_EQ_INT(td_shdict_store(d, TD_SHD_SET, "a\0c", 3, &v2, 0, NULL), TD_SHD_OK);
    CHECK_EQ_INT(td_shdict_get(d, "a\0b", 3, &v, &gbuf), TD_SHD_OK);
    CHECK_EQ_MEM(v.str, v.len, "one");
    CHECK_EQ_INT(td_shdict_get(d, "a\0c", 3, &v, &gbuf), TD_SHD_OK);
    CHECK(v.len == 7 && memcmp(v.str, "two\0two", 7) == 0);
    CHECK_EQ_INT(td_shdict_get(d, "a", 1, &v, &gbuf), TD_SHD_NOT_FOUND);
    CHECK_EQ_INT(td_shdict_delete(d, "a\0b", 3), TD_SHD_OK);
    CHECK_EQ_INT(td_shdict_get(d, "a\0c", 3, &v, &gbuf), TD_SHD_OK);

    /* Key lengths out of range are refused, not stored. */
    static char huge[TD_SHDICT_MAX_KEY + 2];
    memset(huge, 'k', sizeof huge);
    CHECK_EQ_INT(td_shdict_store(d, TD_SHD_SET, huge, 0, &v1, 0, NULL), TD_SHD_NOT_FOUND);
    CHECK_EQ_INT(td_shdict_store(d, TD_SHD_SET, huge, sizeof huge, &v1, 0, NULL), TD_SHD_TOO_LARGE);
    CHECK_EQ_INT(td_shdict_get(d, huge, sizeof huge, &v, &gbuf), TD_SHD_NOT_FOUND);
    /* The longest key is legal but cannot fit the smallest dictionary. */
    CHECK_EQ_INT(td_shdict_incr(d, huge, TD_SHDICT_MAX_KEY, 1, 1, 0, 0, &out, NULL), TD_SHD_TOO_LARGE);

    /* keys: most recently used first; reads count as use. */
    td_shdict_flush_all(d);
    CHECK_EQ_INT(count_of(d), 0);
    CHECK(!has(d, "n"));
    size_t n = 99;
    CHECK_EQ_INT(td_shdict_keys(d, 0, &gbuf, &n), TD_SHD_OK);
    CHECK_EQ_INT(n, 0);
    CHECK_EQ_INT(gbuf.len, 0);
    put(d, TD_SHD_SET, "k1", "1", 0, NULL);
    put(d, TD_SHD_SET, "k2", "2", 0, NULL);
    put(d, TD_SHD_SET, "k3", "3", 0, NULL);
    CHECK(has(d, "k1"));
    CHECK_EQ_INT(td_shdict_incr(d, "k4", 2, 1, 1, 0, 0, &out, NULL), TD_SHD_OK);
    put(d, TD_SHD_SET, "k2", "two", 0, NULL);
    CHECK_EQ_INT(td_shdict_keys(d, 0, &gbuf, &n), TD_SHD_OK);
    CHECK_EQ_INT(n, 4);
    CHECK_EQ_INT(gbuf.len, 4 * 6);
    CHECK_RECORD(&gbuf, 0, "k2");
    CHECK_RECORD(&gbuf, 1, "k4");
    CHECK_RECORD(&gbuf, 2, "k1");
    CHECK_RECORD(&gbuf, 3, "k3");
    CHECK_EQ_INT(td_shdict_keys(d, 2, &gbuf, &n), TD_SHD_OK);
    CHECK_EQ_INT(n, 2);
    CHECK_EQ_INT(gbuf.len, 2 * 6);
    CHECK_RECORD(&gbuf, 1, "k4");
    /* incr touches too; ttl does not. */
    uint64_t ms;
    CHECK_EQ_INT(td_shdict_ttl(d, "k3", 2, &ms), TD_SHD_OK);
    CHECK_EQ_INT(td_shdict_incr(d, "k4", 2, 1, 0, 0, 0, &out, NULL), TD_SHD_OK);
    CHECK_EQ_INT(td_shdict_keys(d, 1, &gbuf, &n), TD_SHD_OK);
    CHECK_RECORD(&gbuf, 0, "k4");

    td_shdict_stats st;
    td_shdict_stats_get(d, &st);
    CHECK_EQ_INT(st.capacity, TD_SHDICT_MIN_SIZE);
    CHECK_EQ_INT(st.count, 4);
    CHECK(st.used >= 4 * 56 && st.used < 4 * 128);
    CHECK_EQ_INT(st.evictions, 0);
    CHECK_EQ_INT(st.repairs, 0);
    td_shdict_flush_all(d);
    td_shdict_stats_get(d, &st);
    CHECK_EQ_INT(st.used, 0);
    CHECK_EQ_INT(put(d, TD_SHD_ADD, "k1", "again", 0, NULL), TD_SHD_OK);
    CHECK_STR(get_str(d, "k1"), "again");
    CHECK_EQ_INT(td_shdict__check(d), 0);
    td_shdict_free(d);
}

static void test_expiry(void) {
    td_shdict *d = td_shdict_new("expiry", TD_SHDICT_MIN_SIZE);
    uint64_t left1 = 0, left2 = 0;
    double out = 0;
    CHECK_EQ_INT(put(d, TD_SHD_SET, "t", "soon gone", 30, NULL), TD_SHD_OK);
    CHECK_EQ_INT(put(d, TD_SHD_SET, "keep", "stays", 0, NULL), TD_SHD_OK);
    CHECK_EQ_INT(put(d, TD_SHD_SET, "later", "has time", 10000, NULL), TD_SHD_OK);
    CHECK_STR(get_str(d, "t"), "soon gone");
    CHECK_EQ_INT(td_shdict_ttl(d, "t", 1, &left1), TD_SHD_OK);
    CHECK(left1 > 0 && left1 <= 30);
    sleep_ms(10);
    CHECK_EQ_INT(td_shdict_ttl(d, "t", 1, &left2), TD_SHD_OK);
    CHECK(left2 < left1);
    /* A key created by incr gets init's ttl; incr keeps it. */
    CHECK_EQ_INT(td_shdict_incr(d, "ci", 2, 1, 1, 0, 30, &out, NULL), TD_SHD_OK);
    CHECK_EQ_INT(td_shdict_incr(d, "ci", 2, 1, 1, 0, 0, &out, NULL), TD_SHD_OK);
    CHECK(out == 2);
    CHECK_EQ_INT(td_shdict_ttl(d, "ci", 2, &left1), TD_SHD_OK);
    CHECK(left1 > 0 && left1 <= 30);
    /* An existing key keeps its (lack of) expiry. */
    put_num(d, "cn", 5);
    CHECK_EQ_INT(td_shdict_incr(d, "cn", 2, 1, 1, 0, 30, &out, NULL), TD_SHD_OK);
    CHECK_EQ_INT(td_shdict_ttl(d, "cn", 2, &left1), TD_SHD_OK);
    CHECK_EQ_INT(left1, 0);
    /* A store without ttl drops the old one. */
    put(d, TD_SHD_SET, "re", "x", 30, NULL);
    put(d, TD_SHD_SET, "re", "y", 0, NULL);
    put(d, TD_SHD_SET, "add", "x", 30, NULL);
    put(d, TD_SHD_SET, "rep", "x", 30, NULL);
    put(d, TD_SHD_SET, "del", "x", 30, NULL);
    CHECK_EQ_INT(count_of(d), 9);

    sleep_ms(60);
    CHECK(!has(d, "t"));
    CHECK_EQ_INT(td_shdict_ttl(d, "t", 1, &left1), TD_SHD_NOT_FOUND);
    CHECK_STR(get_str(d, "keep"), "stays");
    CHECK_STR(get_str(d, "re"), "y");
    CHECK_EQ_INT(td_shdict_ttl(d, "later", 5, &left1), TD_SHD_OK);
    CHECK(left1 > 9000 && left1 <= 10000);
    /* keys skips the expired ones not reclaimed yet. */
    size_t n = 0;
    CHECK_EQ_INT(td_shdict_keys(d, 0, &gbuf, &n), TD_SHD_OK);
    CHECK_EQ_INT(n, 4); /* the gets above touched re and keep */
    CHECK_RECORD(&gbuf, 0, "re");
    CHECK_RECORD(&gbuf, 1, "keep");
    CHECK_RECORD(&gbuf, 2, "cn");
    CHECK_RECORD(&gbuf, 3, "later");
    CHECK_EQ_INT(td_shdict_incr(d, "ci", 2, 1, 0, 0, 0, &out, NULL), TD_SHD_NOT_FOUND);
    CHECK_EQ_INT(td_shdict_incr(d, "ci", 2, 1, 1, 40, 0, &out, NULL), TD_SHD_OK);
    CHECK(out == 41);
    CHECK_EQ_INT(td_shdict_ttl(d, "ci", 2, &left1), TD_SHD_OK);
    CHECK_EQ_INT(left1, 0);
    CHECK_EQ_INT(put(d, TD_SHD_ADD, "add", "fresh", 0, NULL), TD_SHD_OK);
    CHECK_STR(get_str(d, "add"), "fresh");
    CHECK_EQ_INT(put(d, TD_SHD_REPLACE, "rep", "fresh", 0, NULL), TD_SHD_NOT_FOUND);
    CHECK_EQ_INT(td_shdict_delete(d, "del", 3), TD_SHD_NOT_FOUND);
    /* Every expired entry met is gone: t, ci (made again), rep, del. */
    CHECK_EQ_INT(count_of(d), 6);
    CHECK_EQ_INT(td_shdict__check(d), 0);
    td_shdict_free(d);
}

#define VAL_SIZE 1000

static int put_big(td_shdict *d, int i, uint64_t ttl, int *evicted) {
    static char val[VAL_SIZE + 1];
    char key[16];
    snprintf(key, sizeof key, "key%03d", i);
    memset(val, 'a' + i % 26, VAL_SIZE);
    return put(d, TD_SHD_SET, key, val, ttl, evicted);
}

static int has_big(td_shdict *d, int i) {
    char key[16];
    snprintf(key, sizeof key, "key%03d", i);
    td_shvalue v;
    if (get(d, key, &v) != TD_SHD_OK)
        return 0;
    return v.len == VAL_SIZE && v.str[0] == 'a' + i % 26 && v.str[VAL_SIZE - 1] == 'a' + i % 26;
}

static void test_lru(void) {
    td_shdict *d = td_shdict_new("lru", TD_SHDICT_MIN_SIZE);
    /* How many entries of this size fit. */
    int fit = -1, evicted = 0;
    for (int i = 0; i < 200; i++) {
        CHECK_EQ_INT(put_big(d, i, 0, &evicted), TD_SHD_OK);
        if (evicted) {
            fit = i;
            break;
        }
    }
    CHECK(fit > 40 && fit < 64);
    CHECK(!has_big(d, 0));
    CHECK(has_big(d, 1));
    td_shdict_stats st;
    td_shdict_stats_get(d, &st);
    CHECK_EQ_INT(st.evictions, 1);
    CHECK(st.used > st.capacity * 9 / 10);

    /* The touched key survives; the oldest untouched goes, one at a time. */
    td_shdict_flush_all(d);
    for (int i = 0; i < fit; i++) {
        CHECK_EQ_INT(put_big(d, i, 0, &evicted), TD_SHD_OK);
        CHECK_EQ_INT(evicted, 0);
    }
    CHECK(has_big(d, 0));
    CHECK_EQ_INT(put_big(d, fit, 0, &evicted), TD_SHD_OK);
    CHECK_EQ_INT(evicted, 1);
    CHECK(has_big(d, 0));
    CHECK(!has_big(d, 1));
    for (int i = 2; i <= fit; i++)
        CHECK(has_big(d, i));
    CHECK_EQ_INT(put_big(d, fit + 1, 0, &evicted), TD_SHD_OK);
    CHECK_EQ_INT(evicted, 1);
    /* Checking 2..fit above touched them after 0: 0 is now the oldest. */
    CHECK(!has_big(d, 0));
    CHECK(has_big(d, 2));
    td_shdict_stats_get(d, &st);
    CHECK_EQ_INT(st.evictions, 3);
    CHECK_EQ_INT(st.count, (size_t)fit);
    CHECK_EQ_INT(td_shdict__check(d), 0);

    /* An expired entry near the tail makes room before a live one goes. */
    td_shdict_flush_all(d);
    for (int i = 0; i < fit; i++)
        CHECK_EQ_INT(put_big(d, i, i == 5 ? 30 : 0, &evicted), TD_SHD_OK);
    sleep_ms(60);
    CHECK_EQ_INT(put_big(d, fit, 0, &evicted), TD_SHD_OK);
    CHECK_EQ_INT(evicted, 0);
    CHECK(has_big(d, 0));
    CHECK(!has_big(d, 5));
    td_shdict_stats_get(d, &st);
    CHECK_EQ_INT(st.evictions, 3);
    CHECK_EQ_INT(st.count, (size_t)fit);

    /* Too large: refused, nothing evicted. The largest value an empty heap
     * holds is found on another dictionary; one byte more is too large. */
    static char big[TD_SHDICT_MIN_SIZE + 1];
    memset(big, 'B', sizeof big - 1);
    CHECK_EQ_INT(put(d, TD_SHD_SET, "big", big, 0, &evicted), TD_SHD_TOO_LARGE);
    CHECK_EQ_INT(evicted, 0);
    td_shdict *empty = td_shdict_new("empty", TD_SHDICT_MIN_SIZE);
    size_t lo = 0, hi = TD_SHDICT_MIN_SIZE; /* lo fits, hi does not */
    while (hi - lo > 1) {
        size_t mid = (lo + hi) / 2;
        td_shvalue sv = {.type = TD_SHV_STRING, .str = big, .len = mid};
        int rc = td_shdict_store(empty, TD_SHD_SET, "big", 3, &sv, 0, &evicted);
        CHECK_EQ_INT(evicted, 0);
        *(rc == TD_SHD_OK ? &lo : &hi) = mid;
    }
    CHECK(lo > TD_SHDICT_MIN_SIZE * 9 / 10);
    td_shdict_free(empty);
    td_shvalue toobig = {.type = TD_SHV_STRING, .str = big, .len = lo + 1};
    CHECK_EQ_INT(td_shdict_store(d, TD_SHD_SET, "big", 3, &toobig, 0, &evicted), TD_SHD_TOO_LARGE);
    CHECK_EQ_INT(evicted, 0);
    td_shdict_stats_get(d, &st);
    CHECK_EQ_INT(st.evictions, 3);
    CHECK_EQ_INT(st.count, (size_t)fit);
    CHECK(has_big(d, 0) && has_big(d, fit));
    /* Only an empty heap holds this one: everything else goes. */
    td_shvalue largest = {.type = TD_SHV_STRING, .str = big, .len = lo};
    CHECK_EQ_INT(td_shdict_store(d, TD_SHD_SET, "big", 3, &largest, 0, &evicted), TD_SHD_OK);
    CHECK_EQ_INT(evicted, 1);
    CHECK_EQ_INT(count_of(d), 1);
    td_shvalue v;
    CHECK_EQ_INT(get(d, "big", &v), TD_SHD_OK);
    CHECK(v.len == lo && v.str[0] == 'B' && v.str[lo - 1] == 'B');
    /* Shrunk in place, it gives the rest back. */
    CHECK_EQ_INT(put(d, TD_SHD_SET, "big", "small now", 0, &evicted), TD_SHD_OK);
    CHECK_STR(get_str(d, "big"), "small now");
    td_shdict_stats_get(d, &st);
    CHECK(st.used < 128);
    CHECK_EQ_INT(td_shdict__check(d), 0);
    CHECK_EQ_INT(td_shdict__check(d), 0);
    /* Freed, the heap is one block again: as many entries fit as at first. */
    CHECK_EQ_INT(td_shdict_delete(d, "big", 3), TD_SHD_OK);
    for (int i = 0; i < fit; i++) {
        CHECK_EQ_INT(put_big(d, i, 0, &evicted), TD_SHD_OK);
        CHECK_EQ_INT(evicted, 0);
    }
    CHECK_EQ_INT(count_of(d), (size_t)fit);
    CHECK_EQ_INT(td_shdict__check(d), 0);
    td_shdict_free(d);
}

/* ---- randomized, against a model ---- */

#define NKEYS 500
#define MAXV 3000

enum { ABSENT, PRESENT, MAYBE /* present unless evicted since */ };

struct model {
    int state;
    td_shv_type type;
    double num;
    int boolean;
    size_t len;
    char val[MAXV];
    char key[48];
    size_t klen;
};

static struct model model[NKEYS];
static uint64_t rng_state;

static uint64_t rnd(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static unsigned rnd_below(unsigned n) { return (unsigned)(rnd() % n); }

static void model_evicted(int except) {
    for (int i = 0; i < NKEYS; i++)
        if (i != except && model[i].state == PRESENT)
            model[i].state = MAYBE;
}

static int value_matches(const struct model *m, const td_shvalue *v) {
    if (v->type != m->type)
        return 0;
    switch (v->type) {
    case TD_SHV_NUMBER:
        return v->num == m->num;
    case TD_SHV_BOOLEAN:
        return v->boolean == m->boolean;
    default:
        return v->len == m->len && (m->len == 0 || memcmp(v->str, m->val, m->len) == 0);
    }
}

/* Strings are this many times longer in a run meant to evict. */
static size_t value_scale = 1;

static void random_value(td_shvalue *v, char *space) {
    unsigned r = rnd_below(100);
    if (r < 15) {
        *v = (td_shvalue){.type = TD_SHV_NUMBER, .num = (double)rnd_below(1000) - 500};
    } else if (r < 20) {
        *v = (td_shvalue){.type = TD_SHV_BOOLEAN, .boolean = (int)rnd_below(2)};
    } else {
        size_t len = r < 25 ? 0 : r < 90 ? rnd_below(120) : r < 99 ? rnd_below(800) : rnd_below(MAXV);
        len = len * value_scale < MAXV ? len * value_scale : MAXV;
        for (size_t i = 0; i < len; i++)
            space[i] = (char)rnd();
        *v = (td_shvalue){.type = TD_SHV_STRING, .str = space, .len = len};
    }
}

static void model_store(struct model *m, const td_shvalue *v) {
    m->state = PRESENT;
    m->type = v->type;
    m->num = v->num;
    m->boolean = v->boolean;
    m->len = v->len;
    if (v->type == TD_SHV_STRING && v->len)
        memcpy(m->val, v->str, v->len);
}

/* Returns the number of evictions the dictionary reported. */
static int stress(size_t size, size_t scale, int ops, uint64_t seed) {
    value_scale = scale;
    td_shdict *d = td_shdict_new("stress", size);
    rng_state = seed;
    for (int i = 0; i < NKEYS; i++) {
        struct model *m = &model[i];
        memset(m, 0, sizeof *m);
        /* Binary keys of 1 to 40 bytes, unique by their first two. */
        m->klen = 2 + rnd_below(39);
        m->key[0] = (char)(i & 0xff);
        m->key[1] = (char)(i >> 8);
        for (size_t j = 2; j < m->klen; j++)
            m->key[j] = (char)rnd();
    }
    /* Single-byte keys for the first few: no other key is 1 byte long. */
    for (int i = 0; i < 20; i++)
        model[i].klen = 1;
    static char space[MAXV];
    int evictions = 0, failed_before = check_failures;
    for (int op = 0; op < ops && check_failures - failed_before < 10; op++) {
        int i = (int)rnd_below(NKEYS);
        struct model *m = &model[i];
        unsigned what = rnd_below(100);
        td_shvalue v;
        int rc, ev = 0;
        if (what < 35) {
            rc = td_shdict_get(d, m->key, m->klen, &v, &gbuf);
            if (m->state == PRESENT || (m->state == MAYBE && rc == TD_SHD_OK)) {
                CHECK_EQ_INT(rc, TD_SHD_OK);
                CHECK(value_matches(m, &v));
                m->state = PRESENT;
            } else {
                CHECK_EQ_INT(rc, TD_SHD_NOT_FOUND);
                m->state = ABSENT;
            }
        } else if (what < 70) {
            td_shd_mode mode = what < 60 ? TD_SHD_SET : what < 65 ? TD_SHD_ADD : TD_SHD_REPLACE;
            random_value(&v, space);
            if (rnd_below(50) == 0)
                v.type = TD_SHV_NIL;
            rc = td_shdict_store(d, mode, m->key, m->klen, &v, rnd_below(20) == 0 ? 1000000 : 0, &ev);
            int was = m->state;
            if (mode == TD_SHD_ADD && (was == PRESENT || (was == MAYBE && rc == TD_SHD_EXISTS))) {
                CHECK_EQ_INT(rc, TD_SHD_EXISTS);
                m->state = PRESENT;
            } else if (mode == TD_SHD_REPLACE && (was == ABSENT || (was == MAYBE && rc == TD_SHD_NOT_FOUND))) {
                CHECK_EQ_INT(rc, TD_SHD_NOT_FOUND);
                m->state = ABSENT;
            } else {
                CHECK_EQ_INT(rc, TD_SHD_OK);
                if (v.type == TD_SHV_NIL)
                    m->state = ABSENT;
                else
                    model_store(m, &v);
            }
        } else if (what < 85) {
            int has_init = (int)rnd_below(2);
            double delta = (double)rnd_below(10), init = (double)rnd_below(100), out = 0;
            rc = td_shdict_incr(d, m->key, m->klen, delta, has_init, init, 0, &out, &ev);
            int there = m->state == PRESENT || (m->state == MAYBE && (rc == TD_SHD_NOT_NUMBER ||
                                                                      (rc == TD_SHD_OK && m->type == TD_SHV_NUMBER &&
                                                                       out == m->num + delta)));
            if (there && m->type != TD_SHV_NUMBER) {
                CHECK_EQ_INT(rc, TD_SHD_NOT_NUMBER);
                m->state = PRESENT;
            } else if (there) {
                CHECK_EQ_INT(rc, TD_SHD_OK);
                CHECK(out == m->num + delta);
                m->num = out;
                m->state = PRESENT;
            } else if (!has_init) {
                CHECK_EQ_INT(rc, TD_SHD_NOT_FOUND);
                m->state = ABSENT;
            } else {
                CHECK_EQ_INT(rc, TD_SHD_OK);
                CHECK(out == init + delta);
                td_shvalue nv = {.type = TD_SHV_NUMBER, .num = out};
                model_store(m, &nv);
            }
        } else if (what < 95) {
            rc = td_shdict_delete(d, m->key, m->klen);
            if (m->state == PRESENT)
                CHECK_EQ_INT(rc, TD_SHD_OK);
            else if (m->state == ABSENT)
                CHECK_EQ_INT(rc, TD_SHD_NOT_FOUND);
            m->state = ABSENT;
        } else if (what < 99) {
            uint64_t left;
            rc = td_shdict_ttl(d, m->key, m->klen, &left);
            if (m->state == PRESENT)
                CHECK_EQ_INT(rc, TD_SHD_OK);
            else if (m->state == ABSENT)
                CHECK_EQ_INT(rc, TD_SHD_NOT_FOUND);
            m->state = rc == TD_SHD_OK ? PRESENT : ABSENT;
        } else if (rnd_below(100) == 0) {
            td_shdict_flush_all(d);
            for (int k = 0; k < NKEYS; k++)
                model[k].state = ABSENT;
        } else {
            size_t n = 0, expect = 0;
            int exact = 1;
            for (int k = 0; k < NKEYS; k++) {
                expect += model[k].state == PRESENT;
                exact &= model[k].state != MAYBE;
            }
            CHECK_EQ_INT(td_shdict_keys(d, 0, &gbuf, &n), TD_SHD_OK);
            if (exact)
                CHECK_EQ_INT(n, expect);
            else
                CHECK(n >= expect);
        }
        if (ev) {
            evictions++;
            model_evicted(i);
        }
        if (op % 997 == 0)
            CHECK_EQ_INT(td_shdict__check(d), 0);
    }
    CHECK_EQ_INT(td_shdict__check(d), 0);
    /* Every key against the model at the end. */
    size_t present = 0;
    for (int i = 0; i < NKEYS; i++) {
        td_shvalue v;
        int rc = td_shdict_get(d, model[i].key, model[i].klen, &v, &gbuf);
        if (model[i].state == PRESENT) {
            CHECK_EQ_INT(rc, TD_SHD_OK);
            CHECK(value_matches(&model[i], &v));
        } else if (model[i].state == ABSENT) {
            CHECK_EQ_INT(rc, TD_SHD_NOT_FOUND);
        }
        present += rc == TD_SHD_OK;
    }
    CHECK_EQ_INT(count_of(d), present);
    td_shdict_free(d);
    return evictions;
}

static void test_stress(void) {
    /* Room for every key: the model is exact throughout. */
    CHECK_EQ_INT(stress(512 << 10, 1, 100000, 0x9e3779b97f4a7c15ull), 0);
    /* The smallest dictionary: evictions all along. */
    CHECK(stress(TD_SHDICT_MIN_SIZE, 4, 100000, 12345) > 500);
}

/* ---- processes ---- */

static void test_processes(void) {
    td_shdict *d = td_shdict_new("procs", TD_SHDICT_MIN_SIZE);
    pid_t kids[2];
    for (int k = 0; k < 2; k++) {
        kids[k] = fork();
        if (kids[k] == 0) {
            int bad = 0;
            double out;
            for (int i = 0; i < 100000; i++)
                bad += td_shdict_incr(d, "hits", 4, 1, 1, 0, 0, &out, NULL) != TD_SHD_OK;
            _exit(bad ? 1 : 0);
        }
        CHECK(kids[k] > 0);
    }
    for (int k = 0; k < 2; k++) {
        int status = -1;
        CHECK_EQ_INT(waitpid(kids[k], &status, 0), kids[k]);
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    td_shvalue v;
    CHECK_EQ_INT(get(d, "hits", &v), TD_SHD_OK);
    CHECK(v.type == TD_SHV_NUMBER);
    CHECK_EQ_INT((long long)v.num, 200000);
    CHECK_EQ_INT(td_shdict__check(d), 0);
    td_shdict_free(d);
}

/* A child takes the lock and is killed holding it; scribble: it damages
 * the heap first (TD_SHDICT__SCRIBBLE_*), marked dirty. */
static void kill_holder(td_shdict *d, int dirty, int scribble) {
    int ready[2];
    CHECK_EQ_INT(pipe(ready), 0);
    pid_t pid = fork();
    if (pid == 0) {
        close(ready[0]);
        if (write(ready[1], "x", 1) != 1)
            _exit(2);
        if (scribble)
            td_shdict__scribble(d, scribble, 5000);
        else
            td_shdict__hold(d, 5000, dirty);
        _exit(0);
    }
    close(ready[1]);
    char c;
    CHECK_EQ_INT(read(ready[0], &c, 1), 1);
    close(ready[0]);
    sleep_ms(100);
    CHECK_EQ_INT(kill(pid, SIGKILL), 0);
    int status = 0;
    CHECK_EQ_INT(waitpid(pid, &status, 0), pid);
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
}

static void test_robust(void) {
    td_shdict *d = td_shdict_new("robust", TD_SHDICT_MIN_SIZE);
    put(d, TD_SHD_SET, "a", "1", 0, NULL);
    put(d, TD_SHD_SET, "b", "2", 0, NULL);
    uint64_t pos = td_shdict_watch(d, 3, 1);
    put(d, TD_SHD_SET, "c", "3", 0, NULL);

    double t0 = now_s();
    kill_holder(d, 0, 0);
    CHECK_STR(get_str(d, "a"), "1");
    CHECK(now_s() - t0 < 2); /* not the 5 s the holder meant to sleep */
    CHECK_STR(get_str(d, "b"), "2");
    CHECK_EQ_INT(put(d, TD_SHD_SET, "d", "4", 0, NULL), TD_SHD_OK);
    CHECK_STR(get_str(d, "d"), "4");
    td_shdict_stats st;
    td_shdict_stats_get(d, &st);
    CHECK_EQ_INT(st.repairs, 1);
    CHECK_EQ_INT(st.count, 4);
    size_t n = 0;
    CHECK_EQ_INT(td_shdict_changes(d, &pos, &gbuf, &n), 0);
    CHECK_EQ_INT(n, 2);
    CHECK_EQ_INT(td_shdict__check(d), 0);

    /* Died marked dirty: the heap walks, so it is rebuilt, not emptied. */
    uint64_t repaired = td_shdict__repaired;
    kill_holder(d, 1, 0);
    CHECK_EQ_INT(td_shdict__check(d), 0);
    CHECK_EQ_INT(td_shdict__repaired, repaired + 1);
    CHECK_STR(get_str(d, "a"), "1");
    CHECK_STR(get_str(d, "b"), "2");
    CHECK_STR(get_str(d, "c"), "3");
    CHECK_STR(get_str(d, "d"), "4");
    td_shdict_stats_get(d, &st);
    CHECK_EQ_INT(st.repairs, 2);
    CHECK_EQ_INT(st.count, 4);
    /* A watcher learns that it may have missed a change: the dead process
     * could have made one without recording it. */
    CHECK_EQ_INT(td_shdict_changes(d, &pos, &gbuf, &n), 1);
    CHECK_EQ_INT(n, 0);
    CHECK_EQ_INT(put(d, TD_SHD_SET, "a", "again", 0, NULL), TD_SHD_OK);
    CHECK_STR(get_str(d, "a"), "again");
    CHECK_EQ_INT(td_shdict_changes(d, &pos, &gbuf, &n), 0);
    CHECK_EQ_INT(n, 1);
    CHECK_RECORD(&gbuf, 0, "a");
    CHECK_EQ_INT(td_shdict__check(d), 0);
    td_shdict_free(d);
}

/* A heap that does not walk as the code leaves it is emptied; an entry
 * caught rewriting its value is dropped alone. */
static void test_corrupt(void) {
    static const int how[] = {TD_SHDICT__SCRIBBLE_TAG, TD_SHDICT__SCRIBBLE_KEY, TD_SHDICT__SCRIBBLE_WRITING};
    for (size_t i = 0; i < sizeof how / sizeof how[0]; i++) {
        td_shdict *d = td_shdict_new("corrupt", TD_SHDICT_MIN_SIZE);
        put(d, TD_SHD_SET, "first", "1", 0, NULL);
        put(d, TD_SHD_SET, "second", "2", 0, NULL);
        put_num(d, "third", 3);
        uint64_t pos = td_shdict_watch(d, 0, 1);
        uint64_t repaired = td_shdict__repaired, emptied = td_shdict__emptied;
        kill_holder(d, 1, how[i]);
        CHECK_EQ_INT(td_shdict__check(d), 0);
        size_t n = 0;
        CHECK_EQ_INT(td_shdict_changes(d, &pos, &gbuf, &n), 1);
        td_shdict_stats st;
        td_shdict_stats_get(d, &st);
        CHECK_EQ_INT(st.repairs, 1);
        if (how[i] == TD_SHDICT__SCRIBBLE_WRITING) {
            CHECK_EQ_INT(td_shdict__repaired, repaired + 1);
            CHECK(!has(d, "first"));
            CHECK_STR(get_str(d, "second"), "2");
            CHECK(has(d, "third"));
            CHECK_EQ_INT(st.count, 2);
        } else {
            CHECK_EQ_INT(td_shdict__emptied, emptied + 1);
            CHECK(!has(d, "second") && !has(d, "third"));
            CHECK_EQ_INT(st.count, 0);
            CHECK_EQ_INT(st.used, 0);
        }
        /* Either way it works as before. */
        CHECK_EQ_INT(put(d, TD_SHD_SET, "first", "again", 0, NULL), TD_SHD_OK);
        CHECK_STR(get_str(d, "first"), "again");
        CHECK_EQ_INT(td_shdict__check(d), 0);
        td_shdict_free(d);
    }
}

/* ---- killed at every step ---- */

/* A process stops itself at the (k+1)-th kill point of op, holding the
 * lock, and is killed there. Returns 1 when it was, 0 when op ended
 * before (k is past its last kill point). */
static int kill_at(td_shdict *d, void (*op)(td_shdict *d), long k) {
    pid_t pid = fork();
    if (pid == 0) {
        td_shdict__stop_after = k;
        op(d);
        _exit(0);
    }
    int status = 0;
    CHECK_EQ_INT(waitpid(pid, &status, WUNTRACED), pid);
    if (WIFSTOPPED(status)) {
        CHECK_EQ_INT(kill(pid, SIGKILL), 0);
        CHECK_EQ_INT(waitpid(pid, &status, 0), pid);
        CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
        return 1;
    }
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    return 0;
}

/* The live entries of a dictionary: each key with its value's type and a
 * hash of its bytes. */
#define SNAP_MAX 200
struct snap {
    size_t n;
    struct {
        char key[40];
        uint32_t klen;
        td_shv_type type;
        uint64_t hash;
    } e[SNAP_MAX];
};

static uint64_t fnv(const void *p, size_t n, uint64_t h) {
    for (size_t i = 0; i < n; i++)
        h = (h ^ ((const unsigned char *)p)[i]) * 0x100000001b3ull;
    return h;
}

static td_buf snap_keys;

static void snap_take(td_shdict *d, struct snap *s) {
    td_buf *keys = &snap_keys;
    size_t n = 0;
    s->n = 0;
    CHECK_EQ_INT(td_shdict_keys(d, 0, keys, &n), TD_SHD_OK);
    CHECK(n <= SNAP_MAX);
    for (size_t i = 0; i < n && i < SNAP_MAX; i++) {
        uint32_t len = 0;
        const char *k = record(keys, i, &len);
        td_shvalue v;
        if (!k || len > sizeof s->e[0].key || td_shdict_get(d, k, len, &v, &gbuf) != TD_SHD_OK) {
            CHECK(!"a listed key could be read");
            continue;
        }
        memcpy(s->e[s->n].key, k, len);
        s->e[s->n].klen = len;
        s->e[s->n].type = v.type;
        s->e[s->n].hash = v.type == TD_SHV_STRING    ? fnv(v.str, v.len, 0xcbf29ce484222325ull ^ v.len)
                          : v.type == TD_SHV_NUMBER ? fnv(&v.num, sizeof v.num, 1)
                                                    : (uint64_t)v.boolean;
        s->n++;
    }
}

/* The index of key in s, or -1. */
static int snap_find(const struct snap *s, const char *key, uint32_t klen) {
    for (size_t i = 0; i < s->n; i++)
        if (s->e[i].klen == klen && memcmp(s->e[i].key, key, klen) == 0)
            return (int)i;
    return -1;
}

static int snap_same(const struct snap *a, int i, const struct snap *b, int j) {
    return i >= 0 && j >= 0 && a->e[i].type == b->e[j].type && a->e[i].hash == b->e[j].hash;
}

static int snap_equal(const struct snap *a, const struct snap *b) {
    if (a->n != b->n)
        return 0;
    for (size_t i = 0; i < a->n; i++)
        if (!snap_same(a, (int)i, b, snap_find(b, a->e[i].key, a->e[i].klen)))
            return 0;
    return 1;
}

/* Whether got, after a kill in the middle of the change from before to
 * after, holds each key as it was or as it became (absent counts when
 * it was or became absent), and may_lose, the one key the change may
 * lose, also absent. all: got is before or after as a whole. */
static int snap_allowed(const struct snap *before, const struct snap *after, const struct snap *got,
                        const char *may_lose, int all) {
    if (all)
        return snap_equal(got, before) || snap_equal(got, after);
    for (size_t i = 0; i < got->n; i++) {
        int b = snap_find(before, got->e[i].key, got->e[i].klen), a = snap_find(after, got->e[i].key, got->e[i].klen);
        if (!snap_same(got, (int)i, before, b) && !snap_same(got, (int)i, after, a))
            return 0;
    }
    for (size_t i = 0; i < before->n; i++) {
        const char *k = before->e[i].key;
        uint32_t klen = before->e[i].klen;
        int lose = may_lose && strlen(may_lose) == klen && memcmp(may_lose, k, klen) == 0;
        if (snap_find(after, k, klen) >= 0 && snap_find(got, k, klen) < 0 && !lose)
            return 0;
    }
    return 1;
}

static void put_fill(td_shdict *d, const char *k, char c, size_t len) {
    static char v[4000];
    memset(v, c, len);
    td_shvalue sv = {.type = TD_SHV_STRING, .str = v, .len = len};
    CHECK_EQ_INT(td_shdict_store(d, TD_SHD_SET, k, strlen(k), &sv, 0, NULL), TD_SHD_OK);
}

/* The dictionary every scenario starts from; "long" is last in the heap,
 * before the free rest. */
static void setup_base(td_shdict *d) {
    put_num(d, "n1", 1.5);
    put(d, TD_SHD_SET, "s1", "one", 0, NULL);
    put_fill(d, "s2", 'x', 300);
    td_shvalue yes = {.type = TD_SHV_BOOLEAN, .boolean = 1};
    td_shdict_store(d, TD_SHD_SET, "b1", 2, &yes, 0, NULL);
    put_num(d, "cnt", 10);
    put_fill(d, "long", 'L', 1000);
}

/* A 256-byte hole between used blocks, which a 232-byte entry fills
 * without a split. */
static void setup_hole(td_shdict *d) {
    setup_base(d);
    put_fill(d, "hole", 'h', 200);
    put_num(d, "after", 1);
    td_shdict_delete(d, "hole", 4);
}

/* y1 between two free blocks. */
static void setup_between(td_shdict *d) {
    setup_base(d);
    put_fill(d, "x1", 'x', 100);
    put_fill(d, "y1", 'y', 100);
    put_fill(d, "z1", 'z', 100);
    put_num(d, "w1", 1);
    td_shdict_delete(d, "x1", 2);
    td_shdict_delete(d, "z1", 2);
}

static void setup_expired(td_shdict *d) {
    setup_base(d);
    put(d, TD_SHD_SET, "exp", "soon", 1, NULL);
    sleep_ms(3);
}

/* Full of 1000-byte values: a new one evicts. */
static void setup_full(td_shdict *d) {
    setup_base(d);
    char k[16];
    for (int i = 0; i < 70; i++) {
        snprintf(k, sizeof k, "e%02d", i);
        put_fill(d, k, (char)('a' + i % 26), 1000);
    }
}

static void setup_watched(td_shdict *d) {
    setup_base(d);
    td_shdict_watch(d, 1, 1);
}

static void op_set_new(td_shdict *d) { put_fill(d, "new", 'N', 100); }
static void op_set_exact(td_shdict *d) { put_fill(d, "fit", 'F', 181); }
static void op_set_same(td_shdict *d) { put_fill(d, "s2", 'y', 300); }
static void op_shrink_used_next(td_shdict *d) { put_fill(d, "s2", 'y', 5); }
static void op_shrink_free_next(td_shdict *d) { put_fill(d, "long", 'y', 5); }
static void op_grow(td_shdict *d) { put_fill(d, "s1", 'G', 500); }
static void op_to_number(td_shdict *d) { put_num(d, "s1", 7); }
static void op_add(td_shdict *d) {
    td_shvalue v = {.type = TD_SHV_NUMBER, .num = 42};
    td_shdict_store(d, TD_SHD_ADD, "added", 5, &v, 0, NULL);
}
static void op_incr(td_shdict *d) {
    double out;
    td_shdict_incr(d, "cnt", 3, 5, 0, 0, 0, &out, NULL);
}
static void op_incr_new(td_shdict *d) {
    double out;
    td_shdict_incr(d, "newcnt", 6, 1, 1, 3, 0, &out, NULL);
}
static void op_delete_y1(td_shdict *d) { td_shdict_delete(d, "y1", 2); }
static void op_delete_long(td_shdict *d) { td_shdict_delete(d, "long", 4); }
static void op_get(td_shdict *d) {
    td_shvalue v;
    td_shdict_get(d, "n1", 2, &v, &gbuf);
}
static void op_get_expired(td_shdict *d) {
    td_shvalue v;
    td_shdict_get(d, "exp", 3, &v, &gbuf);
}
static void op_set_nil(td_shdict *d) {
    td_shvalue nil = {.type = TD_SHV_NIL};
    td_shdict_store(d, TD_SHD_SET, "s1", 2, &nil, 0, NULL);
}
static void op_flush(td_shdict *d) { td_shdict_flush_all(d); }
static void op_evict(td_shdict *d) { put_fill(d, "big", 'B', 3000); }
static void op_check(td_shdict *d) { td_shdict__check(d); }
static void op_get_c10(td_shdict *d) {
    td_shvalue v;
    td_shdict_get(d, "c10", 3, &v, &gbuf);
}

struct scenario {
    const char *name;
    void (*setup)(td_shdict *d);
    void (*op)(td_shdict *d);
    const char *may_lose; /* the key the op may lose (a value rewritten in place or moved) */
    int all;              /* all or nothing */
    int watched;          /* a watcher must be told of a loss */
};

static const struct scenario scenarios[] = {
    {"set a new key (split)", setup_base, op_set_new, NULL, 0, 0},
    {"set a new key (no split)", setup_hole, op_set_exact, NULL, 0, 0},
    {"set in place, same size", setup_base, op_set_same, "s2", 0, 0},
    {"set in place, shrink before a used block", setup_base, op_shrink_used_next, "s2", 0, 0},
    {"set in place, shrink before the free rest", setup_base, op_shrink_free_next, "long", 0, 0},
    {"set, grown out of its block", setup_base, op_grow, "s1", 0, 0},
    {"set a string to a number", setup_base, op_to_number, "s1", 0, 0},
    {"add", setup_base, op_add, NULL, 0, 0},
    {"incr", setup_base, op_incr, NULL, 0, 0},
    {"incr creating", setup_base, op_incr_new, NULL, 0, 0},
    {"delete between free blocks", setup_between, op_delete_y1, NULL, 0, 0},
    {"delete before the free rest", setup_base, op_delete_long, NULL, 0, 0},
    {"get", setup_base, op_get, NULL, 0, 0},
    {"get of an expired key", setup_expired, op_get_expired, NULL, 0, 0},
    {"set nil", setup_base, op_set_nil, NULL, 0, 0},
    {"flush_all, watched", setup_watched, op_flush, NULL, 1, 1},
    {"set evicting", setup_full, op_evict, NULL, 0, 0},
    {"set a new key, watched", setup_watched, op_set_new, NULL, 0, 1},
    {"incr, watched", setup_watched, op_incr, NULL, 0, 1},
};

static struct snap snap_before, snap_after, snap_got;

/* After a kill: the repair left a consistent dictionary holding what
 * the scenario allows, and it works. */
static int after_kill(td_shdict *d, const struct scenario *sc, uint64_t pos) {
    int failed = check_failures;
    uint64_t repaired = td_shdict__repaired, emptied = td_shdict__emptied;
    CHECK_EQ_INT(td_shdict__check(d), 0);
    CHECK_EQ_INT(td_shdict__repaired, repaired + 1);
    CHECK_EQ_INT(td_shdict__emptied, emptied);
    if (sc->watched) {
        size_t n = 0;
        CHECK_EQ_INT(td_shdict_changes(d, &pos, &gbuf, &n), 1);
    }
    snap_take(d, &snap_got);
    CHECK(snap_allowed(&snap_before, &snap_after, &snap_got, sc->may_lose, sc->all));
    /* The count includes an expired entry not reclaimed yet. */
    size_t count = count_of(d);
    CHECK(count == snap_got.n || (sc->setup == setup_expired && count == snap_got.n + 1));
    CHECK_EQ_INT(put(d, TD_SHD_SET, "probe", "works", 0, NULL), TD_SHD_OK);
    CHECK_STR(get_str(d, "probe"), "works");
    CHECK_EQ_INT(td_shdict__check(d), 0);
    return check_failures != failed;
}

/* Every scenario killed at each of its kill points in turn: every kill
 * repaired, none emptied. */
static void test_kill_points(void) {
    long total = 0, lost = 0;
    for (size_t i = 0; i < sizeof scenarios / sizeof scenarios[0]; i++) {
        const struct scenario *sc = &scenarios[i];
        td_shdict *d = td_shdict_new("before", TD_SHDICT_MIN_SIZE);
        sc->setup(d);
        snap_take(d, &snap_before);
        td_shdict_free(d);
        d = td_shdict_new("after", TD_SHDICT_MIN_SIZE);
        sc->setup(d);
        sc->op(d);
        snap_take(d, &snap_after);
        td_shdict_free(d);
        long k = 0;
        for (;; k++) {
            d = td_shdict_new("killed", TD_SHDICT_MIN_SIZE);
            sc->setup(d);
            uint64_t pos = td_shdict_watch(d, 2, 1);
            if (!sc->watched)
                td_shdict_watch(d, 2, 0);
            if (!kill_at(d, sc->op, k)) {
                td_shdict_free(d);
                break;
            }
            if (after_kill(d, sc, pos))
                fprintf(stderr, "kill points: \"%s\" killed at point %ld\n", sc->name, k);
            lost += sc->may_lose && snap_find(&snap_got, sc->may_lose, (uint32_t)strlen(sc->may_lose)) < 0;
            td_shdict_free(d);
        }
        CHECK(k > 0);
        total += k;
    }
    fprintf(stderr, "kill points: %zu scenarios, %ld kills, all repaired; %ld lost the key being rewritten\n",
            sizeof scenarios / sizeof scenarios[0], total, lost);
}

/* Killed in the middle of a change, then the process repairing it killed
 * at each step of the repair: the next one repairs it still. */
static void test_kill_repair(void) {
    const struct scenario *sc = &scenarios[4]; /* shrink before the free rest: a merge to redo */
    td_shdict *d = td_shdict_new("before", TD_SHDICT_MIN_SIZE);
    sc->setup(d);
    snap_take(d, &snap_before);
    td_shdict_free(d);
    d = td_shdict_new("after", TD_SHDICT_MIN_SIZE);
    sc->setup(d);
    sc->op(d);
    snap_take(d, &snap_after);
    td_shdict_free(d);
    long k = 0;
    for (;; k++) {
        d = td_shdict_new("killed twice", TD_SHDICT_MIN_SIZE);
        sc->setup(d);
        CHECK_EQ_INT(kill_at(d, sc->op, 1), 1); /* marked WRITING, value half written */
        if (!kill_at(d, op_check, k)) {
            td_shdict_free(d);
            break;
        }
        after_kill(d, sc, 0);
        td_shdict_free(d);
    }
    CHECK(k > 5);
    fprintf(stderr, "kill repair: %ld kills of a repair, all repaired\n", k);
}

/* A get moves its entry to the head of the LRU list: killed with the entry
 * out of the list, every entry is kept. */
static void test_kill_get(void) {
    td_shdict *d = td_shdict_new("kill get", TD_SHDICT_MIN_SIZE);
    char k[16];
    for (int i = 0; i < 50; i++) {
        snprintf(k, sizeof k, "c%02d", i);
        double out;
        td_shdict_incr(d, k, strlen(k), i, 1, 0, 0, &out, NULL);
    }
    snap_take(d, &snap_before);
    CHECK_EQ_INT(kill_at(d, op_get_c10, 0), 1);
    uint64_t repaired = td_shdict__repaired;
    CHECK_EQ_INT(td_shdict__check(d), 0);
    CHECK_EQ_INT(td_shdict__repaired, repaired + 1);
    snap_take(d, &snap_got);
    CHECK(snap_equal(&snap_got, &snap_before));
    CHECK_EQ_INT(snap_got.n, 50);
    td_shdict_free(d);
}

/* ---- killed at random ---- */

/* Values that say whether they are whole: a string is 0 bytes, or 4 or
 * more whose first 4 are a salt that, with the key, gives every other
 * byte; numbers are integers; keys are "f" and a number below FUZZ_KEYS. */
#define FUZZ_KEYS 150

static unsigned char fuzz_byte(uint32_t salt, int key, size_t i) {
    return (unsigned char)((salt >> (i % 4 * 8)) + (uint32_t)key * 31u + (uint32_t)i * 7u);
}

static void fuzz_child(td_shdict *d, uint64_t seed) {
    static char v[3000];
    rng_state = seed;
    for (;;) {
        int key = (int)rnd_below(FUZZ_KEYS);
        char k[16];
        size_t klen = (size_t)snprintf(k, sizeof k, "f%d", key);
        unsigned what = rnd_below(100);
        double out;
        int ev;
        if (what < 30) {
            td_shvalue sv;
            td_shdict_get(d, k, klen, &sv, &gbuf);
        } else if (what < 60) {
            td_shvalue sv = {.type = TD_SHV_NUMBER, .num = (double)rnd_below(1000)};
            unsigned r = rnd_below(10);
            if (r < 7) {
                size_t len = r < 2 ? 0 : r < 5 ? 4 + rnd_below(60) : r < 6 ? 4 + rnd_below(600) : 4 + rnd_below(2900);
                uint32_t salt = (uint32_t)rnd();
                for (size_t i = 0; i < len; i++)
                    v[i] = (char)fuzz_byte(salt, key, i);
                sv = (td_shvalue){.type = TD_SHV_STRING, .str = v, .len = len};
            } else if (r < 8) {
                sv = (td_shvalue){.type = TD_SHV_BOOLEAN, .boolean = (int)rnd_below(2)};
            }
            td_shd_mode mode = what < 50 ? TD_SHD_SET : what < 55 ? TD_SHD_ADD : TD_SHD_REPLACE;
            td_shdict_store(d, mode, k, klen, &sv, rnd_below(10) == 0 ? 1 + rnd_below(5) : 0, &ev);
        } else if (what < 80) {
            td_shdict_incr(d, k, klen, (double)rnd_below(5), (int)rnd_below(2), 1, 0, &out, &ev);
        } else if (what < 95) {
            td_shdict_delete(d, k, klen);
        } else if (what < 99) {
            uint64_t ms;
            td_shdict_ttl(d, k, klen, &ms);
        } else if (rnd_below(20) == 0) {
            td_shdict_flush_all(d);
        }
    }
}

/* Whether every entry holds a value fuzz_child could have written. */
static int fuzz_whole(td_shdict *d) {
    static td_buf keys;
    size_t n = 0, bad = 0;
    CHECK_EQ_INT(td_shdict_keys(d, 0, &keys, &n), TD_SHD_OK);
    for (size_t i = 0; i < n; i++) {
        uint32_t len = 0;
        const char *k = record(&keys, i, &len);
        char ks[16];
        int key = -1;
        if (k && len > 1 && len < sizeof ks) {
            memcpy(ks, k, len);
            ks[len] = 0;
            key = atoi(ks + 1);
        }
        td_shvalue v;
        if (key < 0 || key >= FUZZ_KEYS) {
            bad++;
            continue;
        }
        if (td_shdict_get(d, k, len, &v, &gbuf) != TD_SHD_OK)
            continue; /* expired since keys listed it */
        if (v.type == TD_SHV_NUMBER) {
            bad += v.num != (double)(int64_t)v.num || v.num < 0 || v.num > 1e9;
        } else if (v.type == TD_SHV_STRING) {
            if (v.len == 0)
                continue;
            uint32_t salt = 0;
            if (v.len < 4) {
                bad++;
                continue;
            }
            for (size_t j = 0; j < 4; j++)
                salt |= (uint32_t)((unsigned char)v.str[j] - (uint32_t)key * 31u - (uint32_t)j * 7u) % 256u << (j * 8);
            for (size_t j = 0; j < v.len; j++)
                bad += (unsigned char)v.str[j] != fuzz_byte(salt, key, j);
        } else {
            bad += v.type != TD_SHV_BOOLEAN;
        }
    }
    td_buf_free(&keys);
    return bad == 0;
}

/* A child changes a small dictionary as fast as it can and is killed
 * after 0 to 20 ms, over and over: every kill inside a change is
 * repaired, every value left is whole, and the dictionary goes on. Three
 * children in four spin at each kill point, so that most kills land inside
 * a change (making values takes the others' time, outside the lock). */
static void test_kill_fuzz(void) {
    td_shdict *d = td_shdict_new("kill fuzz", TD_SHDICT_MIN_SIZE);
    uint64_t pos = td_shdict_watch(d, 0, 1);
    uint64_t intact = td_shdict__intact, repaired = td_shdict__repaired, emptied = td_shdict__emptied;
    int kills = 150, outside = 0, bad = 0;
    rng_state = 99;
    for (int i = 0; i < kills; i++) {
        uint64_t seed = rnd() | 1;
        unsigned spin = i % 4 ? 4000 : 0;
        long delay_us = (long)rnd_below(20001);
        pid_t pid = fork();
        if (pid == 0) {
            td_shdict__spin = spin;
            fuzz_child(d, seed);
        }
        struct timespec ts = {0, delay_us * 1000L};
        while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
        }
        CHECK_EQ_INT(kill(pid, SIGKILL), 0);
        int status = 0;
        CHECK_EQ_INT(waitpid(pid, &status, 0), pid);
        uint64_t before = td_shdict__intact + td_shdict__repaired + td_shdict__emptied;
        int rc = td_shdict__check(d);
        if (rc)
            fprintf(stderr, "kill fuzz: kill %d: check failed at line %d\n", i, rc);
        bad += rc != 0;
        outside += td_shdict__intact + td_shdict__repaired + td_shdict__emptied == before;
        bad += !fuzz_whole(d);
        bad += put(d, TD_SHD_SET, "probe", "works", 0, NULL) != TD_SHD_OK;
        bad += strcmp(get_str(d, "probe"), "works") != 0;
        td_shdict_delete(d, "probe", 5);
        size_t n;
        bad += td_shdict_changes(d, &pos, &gbuf, &n) < 0;
    }
    CHECK_EQ_INT(bad, 0);
    CHECK_EQ_INT(td_shdict__check(d), 0);
    long nrep = (long)(td_shdict__repaired - repaired), nempty = (long)(td_shdict__emptied - emptied);
    fprintf(stderr, "kill fuzz: %d kills: %d outside the lock, %ld holding it between changes, %ld repaired, %ld emptied\n",
            kills, outside, (long)(td_shdict__intact - intact), nrep, nempty);
    CHECK_EQ_INT(nempty, 0);
    CHECK(nrep > kills / 4);
    td_shdict_free(d);
}

/* ---- the change ring ---- */

static int cb_calls;
static uint64_t cb_mask;
static td_shdict *cb_dict;

static void on_change(td_shdict *d, uint64_t mask) {
    cb_calls++;
    cb_mask = mask;
    cb_dict = d;
}

static void test_ring(void) {
    td_shdict *d = td_shdict_new("ring", TD_SHDICT_MIN_SIZE);
    td_shdict_on_change(on_change);
    size_t n = 0;
    double out;

    /* Nobody watches: nothing is recorded, nobody is called. */
    uint64_t p0 = td_shdict_watch(d, 0, 1);
    td_shdict_watch(d, 0, 0);
    put(d, TD_SHD_SET, "x", "1", 0, NULL);
    td_shdict_incr(d, "y", 1, 1, 1, 0, 0, &out, NULL);
    CHECK_EQ_INT(td_shdict_watch(d, 0, 1), p0);
    CHECK_EQ_INT(cb_calls, 0);

    /* Successful changes are recorded in order, failed ones are not. */
    uint64_t pos = td_shdict_watch(d, 5, 1);
    CHECK_EQ_INT(pos, p0);
    td_shvalue nil = {.type = TD_SHV_NIL};
    CHECK_EQ_INT(put(d, TD_SHD_SET, "a", "1", 0, NULL), TD_SHD_OK);
    CHECK_EQ_INT(cb_calls, 1);
    CHECK_EQ_INT(cb_mask, 0x21);
    CHECK(cb_dict == d);
    CHECK_EQ_INT(put(d, TD_SHD_ADD, "b", "2", 0, NULL), TD_SHD_OK);
    CHECK_EQ_INT(put(d, TD_SHD_REPLACE, "a", "3", 0, NULL), TD_SHD_OK);
    CHECK_EQ_INT(td_shdict_incr(d, "n", 1, 1, 1, 0, 0, &out, NULL), TD_SHD_OK);
    CHECK_EQ_INT(td_shdict_delete(d, "b", 1), TD_SHD_OK);
    CHECK_EQ_INT(cb_calls, 5);
    CHECK_EQ_INT(put(d, TD_SHD_ADD, "a", "4", 0, NULL), TD_SHD_EXISTS);
    CHECK_EQ_INT(put(d, TD_SHD_REPLACE, "zz", "4", 0, NULL), TD_SHD_NOT_FOUND);
    CHECK_EQ_INT(td_shdict_delete(d, "zz", 2), TD_SHD_NOT_FOUND);
    CHECK_EQ_INT(td_shdict_incr(d, "a", 1, 1, 0, 0, 0, &out, NULL), TD_SHD_NOT_NUMBER);
    CHECK_EQ_INT(td_shdict_incr(d, "zz", 2, 1, 0, 0, 0, &out, NULL), TD_SHD_NOT_FOUND);
    CHECK_EQ_INT(td_shdict_store(d, TD_SHD_SET, "zz", 2, &nil, 0, NULL), TD_SHD_OK);
    CHECK(has(d, "a"));
    CHECK_EQ_INT(cb_calls, 5);
    CHECK_EQ_INT(td_shdict_store(d, TD_SHD_SET, "a", 1, &nil, 0, NULL), TD_SHD_OK);
    CHECK_EQ_INT(cb_calls, 6);
    uint64_t before = pos;
    CHECK_EQ_INT(td_shdict_changes(d, &pos, &gbuf, &n), 0);
    CHECK_EQ_INT(n, 6);
    CHECK_RECORD(&gbuf, 0, "a");
    CHECK_RECORD(&gbuf, 1, "b");
    CHECK_RECORD(&gbuf, 2, "a");
    CHECK_RECORD(&gbuf, 3, "n");
    CHECK_RECORD(&gbuf, 4, "b");
    CHECK_RECORD(&gbuf, 5, "a");
    CHECK(pos > before);
    CHECK_EQ_INT(td_shdict_changes(d, &pos, &gbuf, &n), 0);
    CHECK_EQ_INT(n, 0);
    /* Expired keys are not changes to flush; live ones are, in one call. */
    put(d, TD_SHD_SET, "f1", "1", 0, NULL);
    put(d, TD_SHD_SET, "f2", "1", 20, NULL);
    put(d, TD_SHD_SET, "f3", "1", 0, NULL);
    CHECK_EQ_INT(td_shdict_changes(d, &pos, &gbuf, &n), 0);
    CHECK_EQ_INT(n, 3);
    sleep_ms(40);
    cb_calls = 0;
    td_shdict_flush_all(d);
    CHECK_EQ_INT(cb_calls, 1);
    CHECK_EQ_INT(td_shdict_changes(d, &pos, &gbuf, &n), 0);
    CHECK_EQ_INT(n, 5); /* x, y, n, f1, f3 */
    int seen = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t len = 0;
        const char *k = record(&gbuf, i, &len);
        seen |= (len == 2 && memcmp(k, "f1", 2) == 0) ? 1 : 0;
        seen |= (len == 2 && memcmp(k, "f3", 2) == 0) ? 2 : 0;
        seen |= (len == 2 && memcmp(k, "f2", 2) == 0) ? 4 : 0;
    }
    CHECK_EQ_INT(seen, 3);

    /* Records of every size, read in small steps, across many wraps. */
    char key[400], expect[40][400];
    size_t elen[40];
    int lost_any = 0, bad = 0;
    for (int round = 0; round < 300; round++) {
        int batch = 1 + (int)rnd_below(20);
        for (int j = 0; j < batch; j++) {
            elen[j] = 1 + rnd_below(300);
            for (size_t b = 0; b < elen[j]; b++)
                key[b] = (char)('a' + rnd_below(26));
            memcpy(expect[j], key, elen[j]);
            td_shvalue v = {.type = TD_SHV_NUMBER, .num = round};
            td_shdict_store(d, TD_SHD_SET, key, elen[j], &v, 0, NULL);
        }
        lost_any |= td_shdict_changes(d, &pos, &gbuf, &n);
        bad += n != (size_t)batch;
        for (int j = 0; j < batch && j < (int)n; j++) {
            uint32_t len = 0;
            const char *k = record(&gbuf, (size_t)j, &len);
            bad += !k || len != elen[j] || memcmp(k, expect[j], len) != 0;
        }
    }
    CHECK_EQ_INT(lost_any, 0);
    CHECK_EQ_INT(bad, 0);
    CHECK_EQ_INT(td_shdict__check(d), 0);

    /* A reader more than the ring behind is told, gets the newest, and is
     * then in step again. */
    td_shdict_flush_all(d);
    td_shdict_changes(d, &pos, &gbuf, &n);
    int total = 5000;
    for (int i = 0; i < total; i++) {
        snprintf(key, sizeof key, "behind-%012d", i); /* 19 bytes: 24-byte records */
        put_num(d, key, i);
    }
    CHECK_EQ_INT(td_shdict_changes(d, &pos, &gbuf, &n), 1);
    CHECK(n > 1000 && n < (size_t)total);
    CHECK(n <= TD_SHDICT_RING / 24);
    int in_order = 1;
    for (size_t i = 0; i < n; i++) {
        uint32_t len = 0;
        const char *k = record(&gbuf, i, &len);
        snprintf(key, sizeof key, "behind-%012d", total - (int)n + (int)i);
        in_order &= k && len == strlen(key) && memcmp(k, key, len) == 0;
    }
    CHECK(in_order);
    put(d, TD_SHD_SET, "after", "1", 0, NULL);
    CHECK_EQ_INT(td_shdict_changes(d, &pos, &gbuf, &n), 0);
    CHECK_EQ_INT(n, 1);
    CHECK_RECORD(&gbuf, 0, "after");

    /* A key too long for the ring is a loss, not a record. */
    static char longkey[20000];
    memset(longkey, 'L', sizeof longkey);
    td_shvalue one = {.type = TD_SHV_NUMBER, .num = 1};
    CHECK_EQ_INT(td_shdict_store(d, TD_SHD_SET, longkey, sizeof longkey, &one, 0, NULL), TD_SHD_OK);
    put(d, TD_SHD_SET, "after", "2", 0, NULL);
    CHECK_EQ_INT(td_shdict_changes(d, &pos, &gbuf, &n), 1);
    CHECK_EQ_INT(n, 1);
    CHECK_RECORD(&gbuf, 0, "after");
    /* A position from nowhere. */
    uint64_t bogus = pos + 4096;
    CHECK_EQ_INT(td_shdict_changes(d, &bogus, &gbuf, &n), 1);
    CHECK_EQ_INT(n, 0);
    CHECK_EQ_INT(bogus, pos);

    /* The last watcher gone, recording stops. */
    td_shdict_watch(d, 0, 0);
    uint64_t end = td_shdict_watch(d, 5, 0);
    cb_calls = 0;
    put(d, TD_SHD_SET, "quiet", "1", 0, NULL);
    CHECK_EQ_INT(cb_calls, 0);
    CHECK_EQ_INT(td_shdict_watch(d, 1, 1), end);
    td_shdict_on_change(NULL);
    CHECK_EQ_INT(td_shdict__check(d), 0);
    td_shdict_free(d);
}

/* The log file holds n lines "repaired (N entries kept)", and no
 * "emptied". */
static void check_log(int fd, uint64_t n) {
    static char text[1 << 20];
    ssize_t len = pread(fd, text, sizeof text - 1, 0);
    CHECK(len > 0);
    text[len > 0 ? len : 0] = 0;
    uint64_t lines = 0;
    for (const char *p = text; (p = strstr(p, "; repaired (")) != NULL; p++)
        lines += strstr(p, " entries kept)\n") != NULL;
    CHECK_EQ_INT(lines, n);
    CHECK(strstr(text, "emptied") == NULL);
}

static void bench(void) {
    td_shdict *d = td_shdict_new("bench", (size_t)1 << 20);
    for (int i = 0; i < 1000; i++) {
        char key[16];
        snprintf(key, sizeof key, "filler%d", i);
        put_num(d, key, i);
    }
    put_num(d, "counter", 0);
    put_num(d, "short", 1);
    put(d, TD_SHD_SET, "str", "a short string", 0, NULL);
    const int N = 1000000;
    double out = 0, t0 = now_s();
    for (int i = 0; i < N; i++)
        td_shdict_incr(d, "counter", 7, 1, 0, 0, 0, &out, NULL);
    double t_incr = now_s() - t0;
    CHECK(out == N);
    td_shvalue v;
    t0 = now_s();
    for (int i = 0; i < N; i++)
        td_shdict_get(d, "short", 5, &v, &gbuf);
    double t_get = now_s() - t0;
    t0 = now_s();
    for (int i = 0; i < N; i++)
        td_shdict_get(d, "str", 3, &v, &gbuf);
    double t_gets = now_s() - t0;
    fprintf(stderr, "bench: %.1f ns/incr, %.1f ns/get (number), %.1f ns/get (14-byte string)\n",
            t_incr * 1e9 / N, t_get * 1e9 / N, t_gets * 1e9 / N);
    td_shdict_free(d);
}

/* The ring grows with the dictionary: a burst of 20,000 changes of short
 * keys fits the ring of a 16 MiB dictionary (1 MiB) and not the smallest. */
static void test_ring_size(void) {
    CHECK_EQ_INT(td_shdict_ring_size((size_t)64 << 10), TD_SHDICT_RING);
    CHECK_EQ_INT(td_shdict_ring_size((size_t)1 << 20), TD_SHDICT_RING);
    CHECK_EQ_INT(td_shdict_ring_size((size_t)16 << 20), (size_t)1 << 20);
    CHECK_EQ_INT(td_shdict_ring_size((size_t)1 << 30), TD_SHDICT_RING_MAX);
    size_t sizes[] = {(size_t)16 << 20, (size_t)1 << 20};
    for (int k = 0; k < 2; k++) {
        td_shdict *d = td_shdict_new("burst", sizes[k]);
        CHECK(d != NULL);
        if (!d)
            return;
        uint64_t pos = td_shdict_watch(d, 0, 1);
        char key[32];
        for (int i = 0; i < 20000; i++) {
            int n = snprintf(key, sizeof key, "k%d", i);
            td_shvalue v = {.type = TD_SHV_NUMBER, .num = i};
            CHECK_EQ_INT(td_shdict_store(d, TD_SHD_SET, key, (size_t)n, &v, 0, NULL), TD_SHD_OK);
        }
        td_buf buf = {0};
        size_t n = 0;
        int lost = td_shdict_changes(d, &pos, &buf, &n);
        CHECK_EQ_INT(lost, k == 0 ? 0 : 1);
        if (k == 0)
            CHECK_EQ_INT(n, 20000);
        else
            CHECK(n < 20000);
        td_buf_free(&buf);
        td_shdict_free(d);
    }
    /* A ring that is not a power of two (3 MiB: 196,608 bytes), wrapped many
     * times by a reader that keeps up. */
    td_shdict *d = td_shdict_new("odd", (size_t)3 << 20);
    CHECK(d != NULL);
    if (!d)
        return;
    CHECK_EQ_INT(td_shdict_ring_size((size_t)3 << 20), 196608);
    uint64_t pos = td_shdict_watch(d, 0, 1);
    td_buf buf = {0};
    size_t total = 0, lost = 0;
    char key[48];
    for (int i = 0; i < 60000; i++) {
        int n = snprintf(key, sizeof key, "odd-%0*d", 1 + i % 23, i);
        td_shvalue v = {.type = TD_SHV_NUMBER, .num = i};
        td_shdict_store(d, TD_SHD_SET, key, (size_t)n, &v, 0, NULL);
        if (i % 1000 == 999) {
            size_t got = 0;
            lost += (size_t)td_shdict_changes(d, &pos, &buf, &got);
            total += got;
        }
    }
    CHECK_EQ_INT(lost, 0);
    CHECK_EQ_INT(total, 60000);
    CHECK_EQ_INT(td_shdict__check(d), 0);
    td_buf_free(&buf);
    td_shdict_free(d);
}

int main(void) {
    rng_state = 42;
    test_basic();
    test_expiry();
    test_lru();
    test_stress();
    test_processes();
    test_robust();
    test_corrupt();
    rng_state = 7;
    test_ring();
    test_ring_size();
    /* The repairs below log a line each: into a file, which then holds
     * one line per repair. */
    char log_path[] = "/tmp/test_shdict.XXXXXX";
    int log_fd = mkstemp(log_path);
    CHECK(log_fd >= 0);
    CHECK_EQ_INT(td_log_open_error(log_path), 0);
    uint64_t repaired = td_shdict__repaired;
    test_kill_points();
    test_kill_repair();
    test_kill_get();
    test_kill_fuzz();
    /* And one more: the repair that test_kill_repair let finish, in the
     * child that made it. */
    check_log(log_fd, td_shdict__repaired - repaired + 1);
    unlink(log_path);
    close(log_fd);
    bench();
    td_buf_free(&snap_keys);
    td_buf_free(&gbuf);
    return check_result("test_shdict");
}
