/* libFuzzer harness: URL and query decoding, which lives in Lua
 * (lua/tendril/url.lua). The harness embeds LuaJIT, loads the module the
 * binary embeds (td_embedded_modules, so what runs is what ships; or the
 * file TD_FUZZ_URL_MODULE names, to try a version in progress), and calls
 * each function on the input, compared with a reference written here in C
 * from the module's documented contract:
 * - decode(s): every %XX (two hex digits) becomes its byte, left to right,
 *   nothing else changes ("+" stays);
 * - decode_component(s): "+" becomes a space, then as decode;
 * - parse_query(q): the non-empty pieces between "&", split at the first
 *   "=", both sides decode_component'ed; a name seen twice gets an array of
 *   its values in order, a name without "=" gets "", an empty name is
 *   dropped;
 * - remove_dot_segments(p), where the module has it: RFC 3986's algorithm
 *   (section 5.2.4) on an absolute path; what comes out starts with "/",
 *   has no "." or ".." segment left, and does not change again;
 * - split_target(t): the decoded path before the first "?", and the raw
 *   query after it, without a "#fragment"; where the module removes dot
 *   segments, also the host of an absolute-form target ("http://h/x") and
 *   a path without dot segments.
 * And for any input: none of them raises, and decoding what a percent- or
 * form-encoder made of the input gives the input back.
 *
 * Coverage: libFuzzer sees the C reference's branches, not the Lua code
 * (LuaJIT is not instrumented); the dictionary (url.dict) makes up for it
 * with the tokens the module looks for. */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <sanitizer/lsan_interface.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "embedded_lua.h"
#include "fuzz.h"

enum { F_DECODE, F_DECODE_COMPONENT, F_PARSE_QUERY, F_SPLIT_TARGET, F_REMOVE_DOT_SEGMENTS, F_COUNT };
static const char *const names[F_COUNT] = {"decode", "decode_component", "parse_query", "split_target",
                                           "remove_dot_segments"};

static lua_State *L;
static int refs[F_COUNT];

/* Plain realloc, so that AddressSanitizer sees Lua's every block. LuaJIT
 * (GC64) refers to its objects by tagged words LeakSanitizer cannot read,
 * so the leak check libFuzzer runs after an input would take them all for
 * leaks: they are left out of it, and lua_close at exit frees them. */
static void *lua_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
    (void)ud, (void)osize;
    if (nsize == 0) {
        free(ptr);
        return NULL;
    }
    __lsan_disable();
    void *p = realloc(ptr, nsize);
    __lsan_enable();
    return p;
}

static void stop(void) {
    lua_close(L);
    L = NULL;
}

static void start(void) {
    L = lua_newstate(lua_alloc, NULL);
    FUZZ_CHECK(L != NULL, "lua_newstate");
    luaL_openlibs(L);
    const char *file = getenv("TD_FUZZ_URL_MODULE");
    int rc;
    if (file) {
        rc = luaL_loadfile(L, file);
    } else {
        const td_embedded_module *m = td_embedded_modules;
        while (m->name && strcmp(m->name, "tendril.url") != 0)
            m++;
        FUZZ_CHECK(m->name != NULL, "tendril.url is not embedded");
        rc = luaL_loadbuffer(L, m->source, m->len, m->chunkname);
    }
    FUZZ_CHECK(rc == 0 && lua_pcall(L, 0, 1, 0) == 0, "loading tendril.url: %s", lua_tostring(L, -1));
    for (int f = 0; f < F_COUNT; f++) {
        lua_getfield(L, -1, names[f]);
        /* remove_dot_segments came later than the rest. */
        if (f == F_REMOVE_DOT_SEGMENTS && lua_isnil(L, -1)) {
            lua_pop(L, 1);
            refs[f] = LUA_NOREF;
            continue;
        }
        FUZZ_CHECK(lua_isfunction(L, -1), "tendril.url.%s is not a function", names[f]);
        refs[f] = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    lua_pop(L, 1);
    atexit(stop);
}

/* [-0, +nres] Calls url.<f>(s); it must not raise. */
static void call(int f, const char *s, size_t n, int nres) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, refs[f]);
    lua_pushlstring(L, s, n);
    FUZZ_CHECK(lua_pcall(L, 1, nres, 0) == 0, "url.%s(%s) raised: %s", names[f], fuzz_show(s, n),
               lua_tostring(L, -1));
}

/* The string at the top of the stack is want; pops it. */
static void expect_string(const char *what, const char *in, size_t inlen, const td_buf *want) {
    size_t len;
    const char *got = lua_tolstring(L, -1, &len);
    FUZZ_CHECK(lua_type(L, -1) == LUA_TSTRING, "url.%s(%s) gave a %s", what, fuzz_show(in, inlen),
               luaL_typename(L, -1));
    FUZZ_CHECK(fuzz_same(got, len, want->data, want->len), "url.%s(%s) gave %s", what,
               fuzz_show(in, inlen), fuzz_show(got, len));
    lua_pop(L, 1);
}

/* ---- the references ---- */

static int hex(unsigned char c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* decode (plus 0) or decode_component (plus 1): one pass is the same as
 * the module's two, since "+" is no hex digit. */
static void ref_decode(const char *s, size_t n, int plus, td_buf *out) {
    out->len = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '%' && i + 2 < n && hex((unsigned char)s[i + 1]) >= 0 && hex((unsigned char)s[i + 2]) >= 0) {
            c = (char)(hex((unsigned char)s[i + 1]) * 16 + hex((unsigned char)s[i + 2]));
            i += 2;
        } else if (plus && c == '+') {
            c = ' ';
        }
        td_buf_append(out, &c, 1);
    }
}

/* Percent-encodes every byte but unreserved ones, in upper or lower case
 * hex (by the byte), and spaces as "+" when form is set. */
static void encode(const char *s, size_t n, int form, td_buf *out) {
    static const char upper[] = "0123456789ABCDEF", lower[] = "0123456789abcdef";
    out->len = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || (c && strchr("-._~", c))) {
            td_buf_append(out, s + i, 1);
        } else if (form && c == ' ') {
            td_buf_append(out, "+", 1);
        } else {
            const char *digits = c & 1 ? lower : upper;
            char e[3] = {'%', digits[c >> 4], digits[c & 15]};
            td_buf_append(out, e, 3);
        }
    }
}

/* RFC 3986 section 5.2.4 for a path that starts with "/" (rules A and D
 * never apply then): into out. */
static void ref_remove_dot_segments(const char *p, size_t n, td_buf *out) {
    out->len = 0;
    size_t i = 0;
    while (i < n) {
        const char *in = p + i;
        size_t left = n - i;
        if (left >= 3 && memcmp(in, "/./", 3) == 0) {
            i += 2; /* B: "/./" becomes "/" */
        } else if (left == 2 && memcmp(in, "/.", 2) == 0) {
            td_buf_append(out, "/", 1); /* B: a final "/." becomes "/" */
            i = n;
        } else if ((left >= 4 && memcmp(in, "/../", 4) == 0) || (left == 3 && memcmp(in, "/..", 3) == 0)) {
            /* C: up one: the output's last segment goes, with its "/". */
            while (out->len > 0 && out->data[out->len - 1] != '/')
                out->len--;
            if (out->len > 0)
                out->len--;
            if (left == 3) {
                td_buf_append(out, "/", 1);
                i = n;
            } else {
                i += 3;
            }
        } else {
            /* E: the first segment, with its "/", moves to the output. */
            size_t j = 1;
            while (j < left && in[j] != '/')
                j++;
            td_buf_append(out, in, j);
            i += j;
        }
    }
}

/* What must hold of any path remove_dot_segments gave: it starts with "/"
 * and no segment of it is "." or "..". */
static int clean_path(const char *p, size_t n) {
    if (n == 0 || p[0] != '/')
        return 0;
    for (size_t i = 0; i < n;) {
        size_t j = i + 1;
        while (j < n && p[j] != '/')
            j++;
        size_t seg = j - i - 1;
        if ((seg == 1 && p[i + 1] == '.') || (seg == 2 && p[i + 1] == '.' && p[i + 2] == '.'))
            return 0;
        i = j;
    }
    return 1;
}

/* parse_query's result, built the documented way: names in the order
 * first seen, each with its values. */
typedef struct ref_pair {
    td_buf name;
    td_buf *values;
    size_t nvalues;
} ref_pair;

static ref_pair *pairs;
static size_t npairs, cap_pairs;

static void ref_query_clear(void) {
    for (size_t i = 0; i < npairs; i++) {
        td_buf_free(&pairs[i].name);
        for (size_t v = 0; v < pairs[i].nvalues; v++)
            td_buf_free(&pairs[i].values[v]);
        free(pairs[i].values);
    }
    npairs = 0;
}

static void ref_query_add(const td_buf *name, const td_buf *value) {
    size_t i = 0;
    while (i < npairs && !fuzz_same(pairs[i].name.data, pairs[i].name.len, name->data, name->len))
        i++;
    if (i == npairs) {
        if (npairs == cap_pairs) {
            cap_pairs = cap_pairs ? cap_pairs * 2 : 16;
            pairs = realloc(pairs, cap_pairs * sizeof *pairs);
            FUZZ_CHECK(pairs != NULL, "out of memory");
        }
        pairs[npairs] = (ref_pair){{0}, NULL, 0};
        td_buf_append(&pairs[npairs].name, name->data, name->len);
        npairs++;
    }
    ref_pair *p = &pairs[i];
    p->values = realloc(p->values, (p->nvalues + 1) * sizeof *p->values);
    FUZZ_CHECK(p->values != NULL, "out of memory");
    p->values[p->nvalues] = (td_buf){0};
    td_buf_append(&p->values[p->nvalues], value->data, value->len);
    p->nvalues++;
}

static void ref_parse_query(const char *q, size_t n) {
    td_buf name = {0}, value = {0};
    ref_query_clear();
    for (size_t i = 0; i < n;) {
        size_t end = i;
        while (end < n && q[end] != '&')
            end++;
        if (end > i) {
            const char *eq = memchr(q + i, '=', end - i);
            size_t nlen = eq ? (size_t)(eq - (q + i)) : end - i;
            ref_decode(q + i, nlen, 1, &name);
            if (eq)
                ref_decode(eq + 1, (size_t)(q + end - (eq + 1)), 1, &value);
            else
                value.len = 0;
            if (name.len > 0)
                ref_query_add(&name, &value);
        }
        i = end + 1;
    }
    td_buf_free(&name);
    td_buf_free(&value);
}

static int is(const char *p, size_t n, const td_buf *b) { return fuzz_same(p, n, b->data, b->len); }

/* The table at the top of the stack is the reference's; pops it. */
static void expect_query(const char *q, size_t n) {
    FUZZ_CHECK(lua_istable(L, -1), "url.parse_query(%s) gave a %s", fuzz_show(q, n), luaL_typename(L, -1));
    size_t keys = 0;
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        keys++;
        lua_pop(L, 1);
    }
    FUZZ_CHECK(keys == npairs, "url.parse_query(%s) gave %zu names, not %zu", fuzz_show(q, n), keys, npairs);
    for (size_t i = 0; i < npairs; i++) {
        const ref_pair *p = &pairs[i];
        lua_pushlstring(L, p->name.data ? p->name.data : "", p->name.len);
        lua_rawget(L, -2);
        size_t len;
        if (p->nvalues == 1) {
            const char *v = lua_tolstring(L, -1, &len);
            FUZZ_CHECK(lua_type(L, -1) == LUA_TSTRING && is(v, len, &p->values[0]), "url.parse_query(%s): name %s",
                       fuzz_show(q, n), fuzz_show(p->name.data, p->name.len));
        } else {
            FUZZ_CHECK(lua_istable(L, -1) && lua_objlen(L, -1) == p->nvalues,
                       "url.parse_query(%s): name %s should have %zu values", fuzz_show(q, n),
                       fuzz_show(p->name.data, p->name.len), p->nvalues);
            for (size_t v = 0; v < p->nvalues; v++) {
                lua_rawgeti(L, -1, (int)v + 1);
                const char *got = lua_tolstring(L, -1, &len);
                FUZZ_CHECK(lua_type(L, -1) == LUA_TSTRING && is(got, len, &p->values[v]),
                           "url.parse_query(%s): value %zu of %s", fuzz_show(q, n), v + 1,
                           fuzz_show(p->name.data, p->name.len));
                lua_pop(L, 1);
            }
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

/* remove_dot_segments("/" .. s): the reference's answer, which must be
 * clean and stay what it is when cleaned again. */
static void check_dot_segments(const char *s, size_t n) {
    static td_buf path, want;
    path.len = 0;
    td_buf_append(&path, "/", 1);
    td_buf_append(&path, s, n);
    call(F_REMOVE_DOT_SEGMENTS, path.data, path.len, 1);
    ref_remove_dot_segments(path.data, path.len, &want);
    size_t len;
    const char *got = lua_tolstring(L, -1, &len);
    FUZZ_CHECK(clean_path(got, len), "url.remove_dot_segments(%s) left %s", fuzz_show(path.data, path.len),
               fuzz_show(got, len));
    expect_string("remove_dot_segments", path.data, path.len, &want);
    call(F_REMOVE_DOT_SEGMENTS, want.data, want.len, 1);
    expect_string("remove_dot_segments (again)", want.data, want.len, &want);
}

/* split_target(s): path, query (and host, where dot segments go). */
static void check_split_target(const char *s, size_t n) {
    static td_buf target, want, clean;
    int modern = refs[F_REMOVE_DOT_SEGMENTS] != LUA_NOREF;
    call(F_SPLIT_TARGET, s, n, 3);
    target.len = 0;
    td_buf_append(&target, s, n);
    const char *scheme = modern ? memmem(s, n, "://", 3) : NULL;
    if (scheme && (n == 0 || s[0] != '/')) {
        size_t from = (size_t)(scheme - s) + 3, to = from;
        while (to < n && s[to] != '/' && s[to] != '?')
            to++;
        td_buf host = {(char *)s + from, to - from, to - from};
        expect_string("split_target (host)", s, n, &host);
        target.len = 0;
        if (to == n || s[to] != '/')
            td_buf_append(&target, "/", 1);
        td_buf_append(&target, s + to, n - to);
    } else {
        FUZZ_CHECK(lua_isnil(L, -1), "url.split_target(%s) gave a host", fuzz_show(s, n));
        lua_pop(L, 1);
    }
    const char *t = target.data ? target.data : "";
    size_t tlen = target.len;
    const char *q = memchr(t, '?', tlen);
    size_t plen = q ? (size_t)(q - t) : tlen;
    size_t qlen = q ? tlen - plen - 1 : 0;
    const char *hash = q ? memchr(q + 1, '#', qlen) : NULL;
    if (hash)
        qlen = (size_t)(hash - (q + 1));
    td_buf query = {(char *)(q ? q + 1 : ""), qlen, qlen};
    expect_string("split_target (query)", s, n, &query);
    ref_decode(t, plen, 0, &want);
    if (modern && want.len > 0 && want.data[0] == '/') {
        ref_remove_dot_segments(want.data, want.len, &clean);
        expect_string("split_target (path)", s, n, &clean);
    } else {
        expect_string("split_target (path)", s, n, &want);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static td_buf want, encoded;
    const char *s = (const char *)data;
    if (!L)
        start();

    call(F_DECODE, s, size, 1);
    ref_decode(s, size, 0, &want);
    expect_string("decode", s, size, &want);

    call(F_DECODE_COMPONENT, s, size, 1);
    ref_decode(s, size, 1, &want);
    expect_string("decode_component", s, size, &want);

    call(F_PARSE_QUERY, s, size, 1);
    ref_parse_query(s, size);
    expect_query(s, size);

    if (refs[F_REMOVE_DOT_SEGMENTS] != LUA_NOREF)
        check_dot_segments(s, size);
    check_split_target(s, size);

    /* What an encoder makes of any bytes decodes back to them. */
    td_buf input = {(char *)s, size, size};
    encode(s, size, 0, &encoded);
    call(F_DECODE, encoded.data ? encoded.data : "", encoded.len, 1);
    expect_string("decode of the percent-encoded input", s, size, &input);
    encode(s, size, 1, &encoded);
    call(F_DECODE_COMPONENT, encoded.data ? encoded.data : "", encoded.len, 1);
    expect_string("decode_component of the form-encoded input", s, size, &input);

    FUZZ_CHECK(lua_gettop(L) == 0, "the Lua stack holds %d values", lua_gettop(L));
    return 0;
}
