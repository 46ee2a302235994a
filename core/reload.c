/* Owns the app's file watchers, the debounce timer, SIGHUP, and the state
 * of the load attempt in progress. Which change matters and how a
 * generation loads is decided in lua/tendril/generation.lua. */
#include "reload.h"

#include <lauxlib.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "list.h"
#include "log.h"

/* An editor's save is a burst of events (write, rename, chmod): gather
 * them for this long after the first, well inside the 300 ms a save may
 * take to show. */
#define TD_DEBOUNCE_MS 40
/* Changed paths remembered between checks; past it, reload anyway. */
#define TD_MAX_PENDING 256

typedef struct watcher {
    uv_fs_event_t handle;
    td_list link;
    td_reload *owner;
    int keep;
    char dir[];
} watcher;

struct td_reload {
    td_vm *vm;
    uv_loop_t *loop;
    int load_ref;    /* generation.load */
    int changed_ref; /* generation.changed */
    int watch;
    uv_timer_t debounce;
    uv_signal_t sighup;
    td_list watchers;
    char *pending[TD_MAX_PENDING];
    int npending;
    int overflow;
    int running;       /* a load attempt's task is running */
    int again;         /* changes arrived during it */
    int sighup_again;  /* SIGHUP arrived during it */
    int first;         /* the attempt is generation 1's */
    int first_ok;
    char first_err[512];
    uint64_t started;
    const char *why;
    int closing;
    void (*on_reload)(void *ud);
    void *on_reload_ud;
};

static void start_attempt(td_reload *r, const char *why);
static void check(td_reload *r);

/* ---- the attempt ---- */

static void on_attempt_end(td_task *t, int status) {
    td_reload *r = t->data;
    lua_State *co = t->co;
    int ok = status == 0 && lua_toboolean(co, 1);
    const char *msg = status == 0 ? lua_tostring(co, 2) : lua_tostring(co, -1);
    double ms = (double)(uv_hrtime() - r->started) / 1e6;
    r->running = 0;
    if (r->first) {
        r->first = 0;
        r->first_ok = ok;
        if (!ok)
            snprintf(r->first_err, sizeof r->first_err, "%s", msg ? msg : "the app's top level failed");
        return;
    }
    if (ok)
        td_log(TD_LOG_NOTICE, "reload: generation %d in %.1f ms (%s)", (int)lua_tointeger(co, 2), ms, r->why);
    else
        td_log(TD_LOG_ERROR, "reload failed, the previous generation keeps serving: %s",
               msg ? msg : "the app's top level failed");
    if (r->again || r->sighup_again) {
        r->again = 0;
        check(r);
    }
}

static void start_attempt(td_reload *r, const char *why) {
    if (r->closing)
        return;
    lua_State *L = td_vm_state(r->vm);
    lua_rawgeti(L, LUA_REGISTRYINDEX, r->load_ref);
    td_task *t = td_vm_task_new(r->vm, on_attempt_end);
    if (!t) {
        td_log(TD_LOG_ERROR, "reload: out of memory");
        return;
    }
    if (!r->first && r->on_reload)
        r->on_reload(r->on_reload_ud);
    t->data = r;
    t->silent = 1;
    t->label = "the app's top level";
    r->running = 1;
    r->why = why;
    r->started = uv_hrtime();
    td_vm_resume(t, 0);
}

/* ---- changes ---- */

static void clear_pending(td_reload *r) {
    for (int i = 0; i < r->npending; i++)
        free(r->pending[i]);
    r->npending = 0;
    r->overflow = 0;
}

/* Asks generation.changed whether the pending paths matter. */
static int pending_matters(td_reload *r) {
    if (r->overflow)
        return 1;
    if (r->npending == 0)
        return 0;
    lua_State *L = td_vm_state(r->vm);
    lua_rawgeti(L, LUA_REGISTRYINDEX, r->changed_ref);
    lua_createtable(L, r->npending, 0);
    for (int i = 0; i < r->npending; i++) {
        lua_pushstring(L, r->pending[i]);
        lua_rawseti(L, -2, i + 1);
    }
    int matters = 1;
    if (lua_pcall(L, 1, 1, 0) != 0) {
        td_log(TD_LOG_ERROR, "reload: checking changes failed: %s", lua_tostring(L, -1));
    } else {
        matters = lua_toboolean(L, -1);
    }
    lua_pop(L, 1);
    return matters;
}

static void check(td_reload *r) {
    if (r->running) {
        r->again = 1; /* coalesced: one more look when the attempt ends */
        return;
    }
    if (r->sighup_again) {
        r->sighup_again = 0;
        clear_pending(r);
        start_attempt(r, "SIGHUP");
        return;
    }
    int matters = pending_matters(r);
    clear_pending(r);
    if (matters)
        start_attempt(r, "a loaded file changed");
}

static void on_debounced(uv_timer_t *t) { check(t->data); }

static void on_fs_event(uv_fs_event_t *h, const char *filename, int events, int status) {
    watcher *w = td_container_of(h, watcher, handle);
    td_reload *r = w->owner;
    (void)events;
    if (status < 0 || !filename)
        return;
    size_t n = strlen(filename);
    if (n < 5 || strcmp(filename + n - 4, ".lua") != 0)
        return; /* logs, data files, editor swap files */
    size_t len = strlen(w->dir) + 1 + n + 1;
    char *path = malloc(len);
    if (!path)
        return;
    snprintf(path, len, "%s/%s", w->dir, filename);
    for (int i = 0; i < r->npending; i++) {
        if (strcmp(r->pending[i], path) == 0) {
            free(path);
            path = NULL;
            break;
        }
    }
    if (path) {
        if (r->npending < TD_MAX_PENDING)
            r->pending[r->npending++] = path;
        else {
            free(path);
            r->overflow = 1;
        }
    }
    /* A window from the first event, not from the last: saves that keep
     * coming must not postpone the reload forever. */
    if (!uv_is_active((uv_handle_t *)&r->debounce))
        uv_timer_start(&r->debounce, on_debounced, TD_DEBOUNCE_MS, 0);
}

static void on_sighup(uv_signal_t *s, int signum) {
    td_reload *r = s->data;
    (void)signum;
    r->sighup_again = 1;
    check(r);
}

/* ---- watchers ---- */

static void free_watcher(uv_handle_t *h) { free(td_container_of((uv_fs_event_t *)h, watcher, handle)); }

/* [-1, +0] watch_dirs({dir, ...}): watch exactly these directories */
static int watch_dirs(lua_State *L) {
    td_reload *r = lua_touserdata(L, lua_upvalueindex(1));
    luaL_checktype(L, 1, LUA_TTABLE);
    /* Every attempt ends by naming its directories: a good moment to look
     * at what came in meanwhile. */
    if (!r->watch || r->closing)
        return 0;
    td_list *pos, *tmp;
    for (pos = r->watchers.next; pos != &r->watchers; pos = pos->next)
        td_container_of(pos, watcher, link)->keep = 0;
    int n = (int)lua_objlen(L, 1);
    for (int i = 1; i <= n; i++) {
        lua_rawgeti(L, 1, i);
        const char *dir = lua_tostring(L, -1);
        int found = 0;
        for (pos = r->watchers.next; dir && pos != &r->watchers && !found; pos = pos->next) {
            watcher *w = td_container_of(pos, watcher, link);
            if (strcmp(w->dir, dir) == 0)
                found = w->keep = 1;
        }
        if (dir && !found) {
            watcher *w = malloc(sizeof *w + strlen(dir) + 1);
            if (w) {
                strcpy(w->dir, dir);
                w->owner = r;
                w->keep = 1;
                uv_fs_event_init(r->loop, &w->handle);
                int rc = uv_fs_event_start(&w->handle, on_fs_event, dir, 0);
                if (rc == 0) {
                    td_list_push_back(&r->watchers, &w->link);
                } else {
                    /* A directory that does not exist holds nothing to load. */
                    if (rc != UV_ENOENT)
                        td_log(TD_LOG_WARN, "reload: cannot watch %s: %s", dir, uv_strerror(rc));
                    uv_close((uv_handle_t *)&w->handle, free_watcher);
                }
            }
        }
        lua_pop(L, 1);
    }
    td_list_foreach_safe(pos, tmp, &r->watchers) {
        watcher *w = td_container_of(pos, watcher, link);
        if (!w->keep) {
            td_list_remove(&w->link);
            uv_close((uv_handle_t *)&w->handle, free_watcher);
        }
    }
    return 0;
}

/* ---- life ---- */

td_reload *td_reload_new(td_vm *vm, int gen_idx, int watch) {
    td_reload *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    lua_State *L = td_vm_state(vm);
    r->vm = vm;
    r->loop = td_vm_loop(vm);
    r->watch = watch;
    td_list_init(&r->watchers);
    lua_getfield(L, gen_idx, "load");
    r->load_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_getfield(L, gen_idx, "changed");
    r->changed_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    uv_timer_init(r->loop, &r->debounce);
    r->debounce.data = r;
    uv_signal_init(r->loop, &r->sighup);
    r->sighup.data = r;
    return r;
}

void td_reload_open_api(lua_State *L, td_reload *r) {
    lua_pushlightuserdata(L, r);
    lua_pushcclosure(L, watch_dirs, 1);
    lua_setfield(L, -2, "watch_dirs");
}

int td_reload_first(td_reload *r, char *err, size_t size) {
    r->first = 1;
    start_attempt(r, "start");
    while (r->running && uv_run(r->loop, UV_RUN_ONCE))
        ;
    if (r->running) {
        snprintf(err, size, "the app's top level is waiting for something that never comes");
        return -1;
    }
    if (!r->first_ok) {
        snprintf(err, size, "%s", r->first_err);
        return -1;
    }
    return 0;
}

void td_reload_on_reload(td_reload *r, void (*fn)(void *ud), void *ud) {
    r->on_reload = fn;
    r->on_reload_ud = ud;
}

void td_reload_arm(td_reload *r) { uv_signal_start(&r->sighup, on_sighup, SIGHUP); }

static void free_reload(uv_handle_t *h) { free(h->data); }

void td_reload_stop(td_reload *r) {
    if (!r || r->closing)
        return;
    r->closing = 1;
    clear_pending(r);
    while (!td_list_empty(&r->watchers)) {
        watcher *w = td_container_of(r->watchers.next, watcher, link);
        td_list_remove(&w->link);
        uv_close((uv_handle_t *)&w->handle, free_watcher);
    }
    uv_close((uv_handle_t *)&r->sighup, NULL);
    uv_timer_stop(&r->debounce);
}

void td_reload_free(td_reload *r) {
    if (!r)
        return;
    td_reload_stop(r);
    uv_close((uv_handle_t *)&r->debounce, free_reload);
}
