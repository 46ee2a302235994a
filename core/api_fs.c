/* Files on libuv's thread pool: each call is one piece of work that opens,
 * reads or writes, and closes in a worker thread, so a slow disk never
 * blocks the loop and a read costs one round trip to the pool. */
#include <errno.h>
#include <fcntl.h>
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "api.h"
#include "errors.h"

enum { FS_READ, FS_WRITE, FS_APPEND, FS_STAT, FS_MKDIR };

/* Largest file fs.read returns: a bound, so one call cannot exhaust memory. */
#define TD_FS_MAX_READ ((size_t)1 << 30)

typedef struct fs_work {
    td_wait wait;
    uv_work_t req;
    int op;
    int result; /* 0 or a negative errno */
    int cancelled;
    char *path;
    char *data;
    size_t len;
    struct stat st;
} fs_work;

static void free_work(fs_work *w) {
    free(w->path);
    free(w->data);
    free(w);
}

static int read_file(fs_work *w) {
    int fd = open(w->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int rc = 0;
    if (fstat(fd, &w->st) != 0) {
        rc = -errno;
        goto done;
    }
    if (S_ISDIR(w->st.st_mode)) {
        rc = -EISDIR;
        goto done;
    }
    size_t cap = w->st.st_size > 0 ? (size_t)w->st.st_size : 4096;
    for (;;) {
        if (cap > TD_FS_MAX_READ) {
            rc = TD_ETOOLARGE;
            goto done;
        }
        char *p = realloc(w->data, cap);
        if (!p) {
            rc = -ENOMEM;
            goto done;
        }
        w->data = p;
        ssize_t n = read(fd, w->data + w->len, cap - w->len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            rc = -errno;
            goto done;
        }
        if (n == 0)
            break;
        w->len += (size_t)n;
        if (w->len == cap)
            cap *= 2; /* the file grew, or its size was not known */
    }
done:
    close(fd);
    return rc;
}

static int write_file(fs_work *w) {
    int mode = w->op == FS_APPEND ? O_APPEND : O_TRUNC;
    int fd = open(w->path, O_WRONLY | O_CREAT | mode | O_CLOEXEC, 0644);
    if (fd < 0)
        return -errno;
    size_t done = 0;
    while (done < w->len) {
        ssize_t n = write(fd, w->data + done, w->len - done);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            int rc = -errno;
            close(fd);
            return rc;
        }
        done += (size_t)n;
    }
    return close(fd) == 0 ? 0 : -errno;
}

static void work(uv_work_t *req) {
    fs_work *w = req->data;
    switch (w->op) {
    case FS_READ:
        w->result = read_file(w);
        break;
    case FS_WRITE:
    case FS_APPEND:
        w->result = write_file(w);
        break;
    case FS_MKDIR:
        /* A directory there already is what was asked for. */
        if (mkdir(w->path, 0755) == 0 || (errno == EEXIST && stat(w->path, &w->st) == 0 && S_ISDIR(w->st.st_mode)))
            w->result = 0;
        else
            w->result = -errno;
        break;
    default:
        w->result = stat(w->path, &w->st) == 0 ? 0 : -errno;
        break;
    }
}

static int push_results(lua_State *L, fs_work *w) {
    if (w->result != 0)
        return td_api_fail(L, w->result);
    switch (w->op) {
    case FS_READ:
        lua_pushlstring(L, w->data ? w->data : "", w->len);
        return 1;
    case FS_WRITE:
    case FS_APPEND:
    case FS_MKDIR:
        lua_pushboolean(L, 1);
        return 1;
    default:
        lua_createtable(L, 0, 3);
        lua_pushnumber(L, (lua_Number)w->st.st_size);
        lua_setfield(L, -2, "size");
        lua_pushnumber(L, (lua_Number)w->st.st_mtim.tv_sec + (lua_Number)w->st.st_mtim.tv_nsec / 1e9);
        lua_setfield(L, -2, "mtime");
        lua_pushstring(L, S_ISREG(w->st.st_mode)   ? "file"
                          : S_ISDIR(w->st.st_mode) ? "directory"
                                                   : "other");
        lua_setfield(L, -2, "type");
        return 1;
    }
}

static void after_work(uv_work_t *req, int status) {
    fs_work *w = req->data;
    if (w->cancelled) {
        free_work(w);
        return;
    }
    td_task *t = w->wait.task;
    lua_State *co = td_vm_wait_end(&w->wait);
    if (status == UV_ECANCELED)
        w->result = UV_ECANCELED;
    int n = push_results(co, w);
    free_work(w);
    td_vm_resume(t, n);
}

static void cancel_fs(td_wait *wait) {
    fs_work *w = td_container_of(wait, fs_work, wait);
    w->cancelled = 1; /* after_work frees it, cancelled or not */
    uv_cancel((uv_req_t *)&w->req);
}

static int start(lua_State *L, int op, const char *fname) {
    td_vm *vm = lua_touserdata(L, lua_upvalueindex(1));
    const char *path = luaL_checkstring(L, 1);
    size_t len = 0;
    const char *data = op == FS_WRITE || op == FS_APPEND ? luaL_checklstring(L, 2, &len) : NULL;
    td_task *t = td_api_wait_start(L, fname, 0);
    if (!t)
        return 2;
    fs_work *w = calloc(1, sizeof *w);
    if (!w || !(w->path = strdup(path)) || (data && !(w->data = malloc(len ? len : 1)))) {
        if (w)
            free_work(w);
        return luaL_error(L, "%s: out of memory", fname);
    }
    if (data) {
        memcpy(w->data, data, len);
        w->len = len;
    }
    w->op = op;
    w->req.data = w;
    int rc = uv_queue_work(td_vm_loop(vm), &w->req, work, after_work);
    if (rc) {
        free_work(w);
        return td_api_fail(L, rc);
    }
    td_vm_wait_begin(t, &w->wait, cancel_fs, 0, TD_WAIT_FS);
    return lua_yield(L, 0);
}

/* [-1, +1|2] fs_read(path) -> contents | nil, err; yields */
static int fs_read(lua_State *L) { return start(L, FS_READ, "fs.read"); }
/* [-2, +1|2] fs_write(path, data) -> true | nil, err; yields */
static int fs_write(lua_State *L) { return start(L, FS_WRITE, "fs.write"); }
/* [-2, +1|2] fs_append(path, data) -> true | nil, err; yields */
static int fs_append(lua_State *L) { return start(L, FS_APPEND, "fs.append"); }
/* [-1, +1|2] fs_mkdir(path) -> true | nil, err; yields */
static int fs_mkdir(lua_State *L) { return start(L, FS_MKDIR, "fs.mkdir"); }
/* [-1, +1|2] fs_stat(path) -> {size, mtime, type} | nil, err; yields */
static int fs_stat(lua_State *L) { return start(L, FS_STAT, "fs.stat"); }

void td_api_fs_open(lua_State *L, td_vm *vm) {
    static const luaL_Reg funcs[] = {
        {"fs_read", fs_read},
        {"fs_write", fs_write},
        {"fs_append", fs_append},
        {"fs_mkdir", fs_mkdir},
        {"fs_stat", fs_stat},
        {NULL, NULL},
    };
    lua_pushlightuserdata(L, vm);
    luaL_setfuncs(L, funcs, 1);
}
