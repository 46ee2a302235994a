/* td_buf and td_buf_pool. */
#include "buf.h"
#include "check.h"

#include <stdlib.h>

static void test_append_and_grow(void) {
    td_buf b = {0};
    for (int i = 0; i < 1000; i++)
        CHECK_EQ_INT(td_buf_append(&b, "abc", 3), 0);
    CHECK_EQ_INT(b.len, 3000);
    CHECK(b.cap >= 3000);
    CHECK(memcmp(b.data + 2997, "abc", 3) == 0);
    CHECK_EQ_INT(td_buf_append(&b, NULL, 0), 0);
    td_buf_free(&b);
    CHECK(b.data == NULL && b.len == 0 && b.cap == 0);
}

static void test_printf_grows_past_capacity(void) {
    td_buf b = {0};
    CHECK_EQ_INT(td_buf_printf(&b, "%d-%s", 42, "x"), 0);
    CHECK_EQ_MEM(b.data, b.len, "42-x");
    char big[3000];
    memset(big, 'q', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    CHECK_EQ_INT(td_buf_printf(&b, "[%s]", big), 0);
    CHECK_EQ_INT(b.len, 4 + 2 + 2999);
    CHECK(b.data[b.len - 1] == ']');
    td_buf_free(&b);
}

static void test_consume(void) {
    td_buf b = {0};
    td_buf_append(&b, "hello world", 11);
    td_buf_consume(&b, 6);
    CHECK_EQ_MEM(b.data, b.len, "world");
    td_buf_consume(&b, 100);
    CHECK_EQ_INT(b.len, 0);
    td_buf_free(&b);
}

static void test_pool_reuses_blocks(void) {
    td_buf_pool p;
    td_buf_pool_init(&p, 512, 2);
    td_buf a = {0}, b = {0}, c = {0};
    CHECK_EQ_INT(td_buf_pool_take(&p, &a), 0);
    CHECK_EQ_INT(a.cap, 512);
    char *first = a.data;
    td_buf_pool_give(&p, &a);
    CHECK(a.data == NULL);
    CHECK_EQ_INT(p.count, 1);
    CHECK_EQ_INT(td_buf_pool_take(&p, &b), 0);
    CHECK(b.data == first);
    /* A block that grew is freed, not pooled. */
    td_buf_append(&b, "x", 1);
    td_buf_reserve(&b, 4096);
    td_buf_pool_give(&p, &b);
    CHECK_EQ_INT(p.count, 0);
    /* The pool keeps at most max blocks. */
    td_buf_pool_take(&p, &a);
    td_buf_pool_take(&p, &b);
    td_buf_pool_take(&p, &c);
    td_buf_pool_give(&p, &a);
    td_buf_pool_give(&p, &b);
    td_buf_pool_give(&p, &c);
    CHECK_EQ_INT(p.count, 2);
    td_buf_pool_destroy(&p);
}

int main(void) {
    test_append_and_grow();
    test_printf_grows_past_capacity();
    test_consume();
    test_pool_reuses_blocks();
    return check_result("test_buf");
}
