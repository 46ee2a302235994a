/* Owns the watchdog thread, the signal it sends, and the one-shot hook. */
#include "stall.h"

#include <lauxlib.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"

/* The watchdog looks this many times per threshold: the reported duration
 * is short by at most one look. */
#define TD_STALL_LOOKS 8
/* A stall still going after this long is reported while it lasts. */
#define TD_STALL_ONGOING_MS 5000
#define TD_STALL_SIGNAL SIGURG

struct td_stall {
    lua_State *L;
    uint64_t threshold_ms;
    pthread_t thread;
    pthread_t loop_thread;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    int stop;
    /* Odd while Lua runs; bumped at each enter and leave (loop thread). */
    atomic_uint_fast64_t seq;
    /* Set by the watchdog for the resume `stalled_seq`: it began at
     * stalled_since (monotonic ms). */
    atomic_uint_fast64_t stalled_seq;
    atomic_uint_fast64_t stalled_since;
    td_stall_describe describe;
    void *describe_ud;
    /* Written by the hook on the loop thread only. */
    char where[TD_STALL_TEXT];
    char who[TD_STALL_TEXT];
    uint64_t where_seq;
};

/* The signal handler and the hook reach the guard through this: there is
 * one Lua state, hence one guard, per process. */
static td_stall *active;

static uint64_t mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void stall_hook(lua_State *L, lua_Debug *ar) {
    td_stall *s = active;
    lua_sethook(L, NULL, 0, 0);
    if (!s)
        return;
    uint64_t seq = atomic_load_explicit(&s->seq, memory_order_relaxed);
    if (seq != atomic_load_explicit(&s->stalled_seq, memory_order_relaxed))
        return; /* the stall ended before the hook ran */
    s->where[0] = '\0';
    if (lua_getinfo(L, "Sl", ar) && ar->currentline > 0)
        snprintf(s->where, sizeof s->where, "%s:%d", ar->short_src, ar->currentline);
    s->describe(s->describe_ud, s->who, sizeof s->who);
    s->where_seq = seq;
}

static void on_stall_signal(int sig) {
    (void)sig;
    td_stall *s = active;
    if (s)
        lua_sethook(s->L, stall_hook, LUA_MASKCOUNT, 1);
}

static void *watch(void *arg) {
    td_stall *s = arg;
    uint64_t interval = s->threshold_ms / TD_STALL_LOOKS;
    if (interval < 5)
        interval = 5;
    uint64_t seen_seq = 0, seen_at = 0;
    int ongoing_reported = 0;
    pthread_mutex_lock(&s->lock);
    while (!s->stop) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_nsec += (long)(interval % 1000) * 1000000L;
        until.tv_sec += (time_t)(interval / 1000) + until.tv_nsec / 1000000000L;
        until.tv_nsec %= 1000000000L;
        pthread_cond_timedwait(&s->wake, &s->lock, &until);
        if (s->stop)
            break;
        uint64_t seq = atomic_load_explicit(&s->seq, memory_order_relaxed);
        uint64_t now = mono_ms();
        if (!(seq & 1) || seq != seen_seq) {
            seen_seq = seq;
            seen_at = now;
            ongoing_reported = 0;
            continue;
        }
        uint64_t held = now - seen_at + interval;
        if (held >= s->threshold_ms && atomic_load(&s->stalled_seq) != seq) {
            atomic_store(&s->stalled_since, seen_at - interval);
            atomic_store(&s->stalled_seq, seq);
            pthread_kill(s->loop_thread, TD_STALL_SIGNAL);
        }
        if (held >= TD_STALL_ONGOING_MS && !ongoing_reported) {
            ongoing_reported = 1;
            td_log(TD_LOG_WARN, "stall: Lua code has held the event loop for %llu ms and is still running",
                   (unsigned long long)held);
        }
    }
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

td_stall *td_stall_start(lua_State *L, uint64_t threshold_ms, td_stall_describe describe, void *ud) {
    if (threshold_ms == 0 || active)
        return NULL;
    td_stall *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->L = L;
    s->threshold_ms = threshold_ms;
    s->describe = describe;
    s->describe_ud = ud;
    s->loop_thread = pthread_self();
    atomic_init(&s->seq, 0);
    atomic_init(&s->stalled_seq, 0);
    atomic_init(&s->stalled_since, 0);
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->wake, NULL);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stall_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(TD_STALL_SIGNAL, &sa, NULL);
    active = s;
    /* The watchdog must not take the process's signals. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&s->thread, NULL, watch, s);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        active = NULL;
        pthread_mutex_destroy(&s->lock);
        pthread_cond_destroy(&s->wake);
        free(s);
        return NULL;
    }
    return s;
}

void td_stall_stop(td_stall *s) {
    if (!s)
        return;
    pthread_mutex_lock(&s->lock);
    s->stop = 1;
    pthread_cond_signal(&s->wake);
    pthread_mutex_unlock(&s->lock);
    pthread_join(s->thread, NULL);
    active = NULL;
    signal(TD_STALL_SIGNAL, SIG_IGN);
    lua_sethook(s->L, NULL, 0, 0);
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->wake);
    free(s);
}

void td_stall_enter(td_stall *s) { atomic_fetch_add_explicit(&s->seq, 1, memory_order_relaxed); }

int td_stall_leave(td_stall *s, uint64_t *ms, char *where, char *who) {
    uint64_t seq = atomic_fetch_add_explicit(&s->seq, 1, memory_order_relaxed);
    if (atomic_load_explicit(&s->stalled_seq, memory_order_relaxed) != seq)
        return 0;
    /* The hook may be pending still (the stall ended in compiled code or
     * in C before returning here). */
    lua_sethook(s->L, NULL, 0, 0);
    *ms = mono_ms() - atomic_load(&s->stalled_since);
    if (s->where_seq == seq) {
        memcpy(where, s->where, TD_STALL_TEXT);
        memcpy(who, s->who, TD_STALL_TEXT);
    } else {
        where[0] = who[0] = '\0';
    }
    return 1;
}
