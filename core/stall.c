/* Owns the watchdog thread, the signal it sends, and the one-shot hook. */
#include "stall.h"

#include <lauxlib.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

/* The watchdog looks this many times per threshold: the reported duration
 * is short by at most one look. */
#define TD_STALL_LOOKS 8
/* Looks are this far apart at most (the shutdown watch, a long threshold). */
#define TD_STALL_LOOK_MAX_MS 100
/* While a stall lasts it is reported again this often. */
#define TD_STALL_REPEAT_MS 5000
/* At the shutdown deadline, a resume running this long is stuck: a loop
 * that is merely busy reaches its own shutdown timer. */
#define TD_STALL_STUCK_MS 250
#define TD_STALL_SIGNAL SIGURG

struct td_stall {
    lua_State *L;
    uint64_t threshold_ms; /* 0: no stall warnings */
    uint64_t shutdown_ms;
    pthread_t thread;
    pthread_t loop_thread;
    pthread_mutex_t lock; /* where, who, where_seq, stop */
    pthread_cond_t wake;
    int stop;
    /* Odd while Lua runs; bumped at each enter and leave (loop thread). */
    atomic_uint_fast64_t seq;
    /* Set by the watchdog for the resume `stalled_seq`: it began at
     * stalled_since (monotonic ms). */
    atomic_uint_fast64_t stalled_seq;
    atomic_uint_fast64_t stalled_since;
    /* Stop signals so far, and when the first came (monotonic ms). */
    atomic_uint stop_signals;
    atomic_uint_fast64_t stop_at;
    td_stall_describe describe;
    void *describe_ud;
    /* Written by the hook on the loop thread. */
    char where[TD_STALL_TEXT];
    char who[TD_STALL_TEXT];
    uint64_t where_seq;
};

/* The signal handlers and the hook reach the guard through this: there is
 * one Lua state, hence one guard, per process. */
static td_stall *_Atomic active;

static char *publish_buf;
static size_t publish_size;

void td_stall_publish(char *buf, size_t size) {
    publish_buf = buf;
    publish_size = size;
    if (buf && size)
        buf[0] = '\0';
}

static void publish(const char *who, const char *where) {
    if (!publish_buf)
        return;
    char text[2 * TD_STALL_TEXT + 8];
    snprintf(text, sizeof text, "%s%s%s", who, where[0] ? ", at " : "", where);
    snprintf(publish_buf, publish_size, "%s", text);
}

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
    char where[TD_STALL_TEXT] = "", who[TD_STALL_TEXT];
    if (lua_getinfo(L, "Sl", ar) && ar->currentline > 0)
        snprintf(where, sizeof where, "%s:%d", ar->short_src, ar->currentline);
    s->describe(s->describe_ud, who, sizeof who);
    pthread_mutex_lock(&s->lock);
    memcpy(s->where, where, sizeof where);
    memcpy(s->who, who, sizeof who);
    s->where_seq = seq;
    pthread_mutex_unlock(&s->lock);
}

static void on_stall_signal(int sig) {
    (void)sig;
    td_stall *s = active;
    if (s)
        lua_sethook(s->L, stall_hook, LUA_MASKCOUNT, 1);
}

void td_stall_stop_signal(void) {
    td_stall *s = active;
    if (!s)
        return;
    if (atomic_fetch_add(&s->stop_signals, 1) == 0)
        atomic_store(&s->stop_at, mono_ms());
}

/* What the stall `seq` is, for the watchdog's lines: the hook's record, or
 * (compiled code: no hook ran) the watchdog's own description. Called with
 * the lock held. */
static void stall_text(td_stall *s, uint64_t seq, char *who, char *where) {
    if (s->where_seq == seq) {
        memcpy(who, s->who, TD_STALL_TEXT);
        snprintf(where, TD_STALL_TEXT, "%s", s->where[0] ? s->where : "");
        return;
    }
    s->describe(s->describe_ud, who, TD_STALL_TEXT);
    where[0] = '\0';
}

static void report_ongoing(td_stall *s, uint64_t seq, uint64_t held) {
    char who[TD_STALL_TEXT], where[TD_STALL_TEXT];
    stall_text(s, seq, who, where);
    publish(who, where);
    if (where[0])
        td_log(TD_LOG_WARN, "stall: %s has held the event loop for %llu ms and is still running, at %s", who,
               (unsigned long long)held, where);
    else
        td_log(TD_LOG_WARN, "stall: %s has held the event loop for %llu ms and is still running (no line yet: "
                            "JIT-compiled code runs no hooks)",
               who, (unsigned long long)held);
}

/* The loop is stuck in Lua past the shutdown deadline (or a second stop
 * signal came): nothing else can end the process. */
static void give_up(td_stall *s, uint64_t seq, uint64_t held) {
    char who[TD_STALL_TEXT], where[TD_STALL_TEXT];
    stall_text(s, seq, who, where);
    td_log(TD_LOG_CRIT, "shutdown: %s has held the event loop for %llu ms%s%s; exiting without draining", who,
           (unsigned long long)held, where[0] ? ", at " : "", where);
    _exit(1);
}

static void *watch(void *arg) {
    td_stall *s = arg;
    uint64_t interval = s->threshold_ms ? s->threshold_ms / TD_STALL_LOOKS : TD_STALL_LOOK_MAX_MS;
    if (interval < 5)
        interval = 5;
    if (interval > TD_STALL_LOOK_MAX_MS)
        interval = TD_STALL_LOOK_MAX_MS;
    uint64_t seen_seq = 0, seen_at = 0, reported_at = 0;
    int signalled = 0;
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
            signalled = 0;
            reported_at = 0;
            continue;
        }
        uint64_t held = now - seen_at + interval;
        if (s->threshold_ms && held >= s->threshold_ms) {
            if (!signalled) {
                /* The hook records the place; the report waits one look
                 * for it. */
                signalled = 1;
                atomic_store(&s->stalled_since, seen_at - interval);
                atomic_store(&s->stalled_seq, seq);
                pthread_kill(s->loop_thread, TD_STALL_SIGNAL);
            } else if (!reported_at || now - reported_at >= TD_STALL_REPEAT_MS) {
                reported_at = now;
                report_ongoing(s, seq, held);
            }
        }
        unsigned stops = atomic_load(&s->stop_signals);
        if (stops && held >= TD_STALL_STUCK_MS &&
            (stops > 1 || now >= atomic_load(&s->stop_at) + s->shutdown_ms))
            give_up(s, seq, held);
    }
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

td_stall *td_stall_start(lua_State *L, uint64_t threshold_ms, uint64_t shutdown_ms, td_stall_describe describe,
                         void *ud) {
    if (active)
        return NULL;
    td_stall *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->L = L;
    s->threshold_ms = threshold_ms;
    s->shutdown_ms = shutdown_ms;
    s->describe = describe;
    s->describe_ud = ud;
    s->loop_thread = pthread_self();
    atomic_init(&s->seq, 0);
    atomic_init(&s->stalled_seq, 0);
    atomic_init(&s->stalled_since, 0);
    atomic_init(&s->stop_signals, 0);
    atomic_init(&s->stop_at, 0);
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
    if (publish_buf)
        publish_buf[0] = '\0';
    pthread_mutex_lock(&s->lock);
    if (s->where_seq == seq) {
        memcpy(where, s->where, TD_STALL_TEXT);
        memcpy(who, s->who, TD_STALL_TEXT);
    } else {
        where[0] = who[0] = '\0';
    }
    pthread_mutex_unlock(&s->lock);
    return 1;
}
