/* gzip streams for Lua (tendril.compress): core.gzip_new(level) gives a
 * userdata whose :write(chunk) returns the compressed bytes so far and whose
 * :finish([chunk]) returns the last ones, gzip trailer included.
 *
 * Each write ends with Z_SYNC_FLUSH: a response written piece by piece (an
 * event stream, a progress log) must reach the client as it is written, not
 * when zlib's window fills; the flush costs a few bytes per write, nothing
 * for a body compressed in one call. Output goes straight into Lua's string
 * buffer (luaL_prepbuffer's bounded blocks), so no buffer of ours grows with
 * the body. The zlib state (about 256 KiB at the default memLevel) is freed
 * by finish, and by __gc for a stream dropped before it (a request that
 * raised mid-body). */
#include <lauxlib.h>
#include <lua.h>
#include <string.h>
#include <zlib.h>

#include "api.h"

#define GZIP_MT "tendril.gzip"

typedef struct gzip_box {
    z_stream z;
    int live; /* deflateInit2 succeeded and deflateEnd has not run */
} gzip_box;

static gzip_box *check_gzip(lua_State *L, const char *fname) {
    gzip_box *g = luaL_checkudata(L, 1, GZIP_MT);
    if (!g->live)
        luaL_error(L, "%s: the gzip stream is finished", fname);
    return g;
}

static void gzip_end(gzip_box *g) {
    if (g->live) {
        deflateEnd(&g->z);
        g->live = 0;
    }
}

/* Deflates `len` bytes of `data` with `flush`, pushing the output as one
 * string. Returns 0, or -1 when zlib fails (the stream is then ended). */
static int gzip_run(lua_State *L, gzip_box *g, const char *data, size_t len, int flush) {
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    g->z.next_in = (Bytef *)(uintptr_t)data;
    g->z.avail_in = (uInt)len;
    for (;;) {
        char *out = luaL_prepbuffer(&b);
        g->z.next_out = (Bytef *)out;
        g->z.avail_out = LUAL_BUFFERSIZE;
        int rc = deflate(&g->z, flush);
        luaL_addsize(&b, LUAL_BUFFERSIZE - g->z.avail_out);
        if (rc == Z_STREAM_END)
            break;
        /* Z_BUF_ERROR: no progress possible, i.e. the last round filled the
         * buffer exactly and nothing was left to flush. */
        if (rc != Z_OK && rc != Z_BUF_ERROR) {
            luaL_pushresult(&b);
            lua_pop(L, 1);
            gzip_end(g);
            return -1;
        }
        if (g->z.avail_out != 0 && g->z.avail_in == 0 && flush != Z_FINISH)
            break;
        if (rc == Z_BUF_ERROR && g->z.avail_out != 0)
            break;
    }
    luaL_pushresult(&b);
    return 0;
}

/* core.gzip_new([level]): level 1..9, or -1/nil for zlib's default (6).
 * nil, "out of memory" when zlib cannot allocate its state. */
static int gzip_new(lua_State *L) {
    int level = (int)luaL_optinteger(L, 1, Z_DEFAULT_COMPRESSION);
    if (level != Z_DEFAULT_COMPRESSION && (level < 1 || level > 9))
        return luaL_error(L, "gzip_new: expected a level from 1 to 9, got %d", level);
    gzip_box *g = lua_newuserdata(L, sizeof *g);
    memset(g, 0, sizeof *g);
    luaL_getmetatable(L, GZIP_MT);
    lua_setmetatable(L, -2);
    /* 15 + 16: the largest window, wrapped as gzip (header and CRC-32). */
    if (deflateInit2(&g->z, level, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
        lua_pushnil(L);
        lua_pushstring(L, "out of memory");
        return 2;
    }
    g->live = 1;
    return 1;
}

/* gz:write(chunk): the compressed bytes that chunk completes (flushed). */
static int gzip_write(lua_State *L) {
    gzip_box *g = check_gzip(L, "gzip:write");
    size_t len;
    const char *data = luaL_checklstring(L, 2, &len);
    if (len == 0) {
        lua_pushliteral(L, "");
        return 1;
    }
    if (gzip_run(L, g, data, len, Z_SYNC_FLUSH) != 0)
        return td_api_fail(L, UV_ENOMEM);
    return 1;
}

/* gz:finish([chunk]): the last bytes and the trailer; frees the state. */
static int gzip_finish(lua_State *L) {
    gzip_box *g = check_gzip(L, "gzip:finish");
    size_t len = 0;
    const char *data = luaL_optlstring(L, 2, "", &len);
    if (gzip_run(L, g, data, len, Z_FINISH) != 0)
        return td_api_fail(L, UV_ENOMEM);
    gzip_end(g);
    return 1;
}

static int gzip_gc(lua_State *L) {
    gzip_end(luaL_checkudata(L, 1, GZIP_MT));
    return 0;
}

void td_api_gzip_open(lua_State *L) {
    static const luaL_Reg methods[] = {{"write", gzip_write}, {"finish", gzip_finish}, {NULL, NULL}};
    luaL_newmetatable(L, GZIP_MT);
    lua_pushcfunction(L, gzip_gc);
    lua_setfield(L, -2, "__gc");
    lua_newtable(L);
    luaL_register(L, NULL, methods);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
    lua_pushcfunction(L, gzip_new);
    lua_setfield(L, -2, "gzip_new");
}
