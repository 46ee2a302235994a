/* PostgreSQL for Lua on libpq's asynchronous API, its socket watched by
 * libuv: connecting, queries with $n parameters (text in, text out, turned
 * into Lua values by type), a query timeout that cancels on the server,
 * and LISTEN/NOTIFY. lua/tendril/pg.lua holds the policy (pools,
 * transactions, JSON).
 *
 * Ownership: a connection (pg_conn) belongs to its Lua userdata; pg_close
 * or the userdata's __gc closes it: PQfinish, then its libuv handles, and
 * the record is freed when the last handle has closed. At most one task
 * waits on it (the Lua side keeps a connection to one task); the wait
 * record is inside pg_conn. A wait cancelled (its request gone, teardown)
 * leaves the connection broken when a query was in flight: Lua closes it
 * instead of pooling it. libpq's PQcancel blocks (it connects to the
 * server): it runs on libuv's thread pool, with its own PGcancel, at most
 * MAX_CANCELS at once. A query that was asked to stop is given up (the
 * connection broken) unless its end says the cancel took: a cancel that
 * came late would stop whatever ran next on that connection.
 *
 * A failed connect closes its libpq connection (and socket) at once, as
 * does an idle timeout in the pool (pg_park); the userdata is then empty
 * (pg_conn.box points back at it to empty it). */
#include <lauxlib.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "clock.h"
#include "errors.h"
#include "log.h"

#define PG_MT "tendril.pg"

enum { OP_NONE, OP_CONNECT, OP_QUERY, OP_NOTIFY };

/* Cancels in flight on the thread pool (each holds a worker while it
 * connects): past it a timed-out query's connection is given up without
 * one. */
#define MAX_CANCELS 8
/* After a cancel, the wait for the query's end: at most this, or the query
 * timeout when shorter; then the connection is given up. */
#define CANCEL_GRACE_MS 5000
/* Notifications waiting for db:recv, a connection's; past it the oldest
 * are dropped. */
#define MAX_NOTES 10000

static int cancels; /* in flight */

typedef struct pg_box pg_box;

typedef struct pg_conn {
    PGconn *pq;
    pg_box *box;     /* the userdata's, while it refers to this connection */
    td_vm *vm;
    uv_poll_t *poll; /* on PQsocket; a new one when the socket changes */
    int fd;
    uv_timer_t timer;
    td_wait wait;
    int op;          /* what the waiting task waits for */
    int writing;     /* the poll waits for writability (connecting, flushing) */
    int armed;       /* the events the poll is started with (0: stopped) */
    int timed_out;   /* the query's timeout passed: a cancel went to the server */
    int gave_up;     /* ... and no end came within the grace: the wait ended without one */
    int cancel_sent; /* a cancel went out during this query */
    int cancels_pending; /* cancels of ours still on the thread pool (each holds c: see handles) */
    int ended;           /* the query's results are all in, the wait ends when the cancel is back */
    uint64_t timeout_ms; /* the wait's */
    int broken;      /* abandoned mid-query: not fit for reuse */
    int closing;
    int handles;     /* libuv handles not yet closed, and cancels in flight */
    PGresult *result; /* the query's result so far (the last one) */
    PGresult *error;  /* its first error result */
    int copy;         /* the statement started a COPY: not supported, the connection is done for */
    PGnotify *note;   /* the notification that ends a wait */
    PGnotify *notes, *notes_tail; /* read while nobody waited (linked by ->next) */
    int nnotes;
    int self_ref;     /* connecting: the userdata, to hand back at the end */
} pg_conn;

struct pg_box {
    pg_conn *c;
};

static int null_ref = LUA_NOREF; /* pg.null, set by pg.lua */

static void free_if_done(pg_conn *c) {
    if (c->closing && c->handles == 0)
        free(c);
}

static void on_handle_closed(uv_handle_t *h) {
    pg_conn *c = h->data;
    if (h != (uv_handle_t *)&c->timer)
        free(h);
    c->handles--;
    free_if_done(c);
}

static void stop_poll(pg_conn *c) {
    c->armed = 0;
    if (c->poll) {
        uv_close((uv_handle_t *)c->poll, on_handle_closed);
        c->poll = NULL;
    }
}

static void clear_results(pg_conn *c) {
    if (c->result)
        PQclear(c->result);
    if (c->error)
        PQclear(c->error);
    c->result = c->error = NULL;
}

static void on_poll(uv_poll_t *p, int status, int events);

/* Moves the notifications libpq has read into c's queue, which keeps the
 * newest MAX_NOTES: a LISTEN nobody reads holds no more than that. */
static void stash_notes(pg_conn *c) {
    PGnotify *n;
    while (c->pq && (n = PQnotifies(c->pq)) != NULL) {
        n->next = NULL;
        if (c->notes_tail)
            c->notes_tail->next = n;
        else
            c->notes = n;
        c->notes_tail = n;
        if (++c->nnotes > MAX_NOTES) {
            PGnotify *old = c->notes;
            c->notes = old->next;
            PQfreemem(old);
            c->nnotes--;
        }
    }
}

/* The oldest notification waiting, or NULL. */
static PGnotify *next_note(pg_conn *c) {
    stash_notes(c);
    PGnotify *n = c->notes;
    if (n) {
        c->notes = n->next;
        if (!c->notes)
            c->notes_tail = NULL;
        c->nnotes--;
    }
    return n;
}

static void free_notes(pg_conn *c) {
    while (c->notes) {
        PGnotify *n = c->notes;
        c->notes = n->next;
        PQfreemem(n);
    }
    c->notes_tail = NULL;
    c->nnotes = 0;
}

/* Watches the connection's socket for what the current step needs. */
static int watch(pg_conn *c, int writing) {
    int fd = PQsocket(c->pq);
    if (fd < 0)
        return TD_ECLOSED;
    if (c->poll && fd != c->fd)
        stop_poll(c); /* libpq moved to another socket (connecting: next address) */
    if (!c->poll) {
        c->poll = malloc(sizeof *c->poll);
        if (!c->poll)
            return UV_ENOMEM;
        int rc = uv_poll_init(td_vm_loop(c->vm), c->poll, fd);
        if (rc) {
            free(c->poll);
            c->poll = NULL;
            return rc;
        }
        c->poll->data = c;
        c->handles++;
        c->fd = fd;
    }
    c->writing = writing;
    int events = writing ? UV_WRITABLE : UV_READABLE;
    if (c->armed == events)
        return 0; /* uv_poll_start would take it out of epoll and put it back */
    c->armed = events;
    return uv_poll_start(c->poll, events, on_poll);
}

/* The operation's end: no timer; the socket stays watched for reading
 * (an idle connection's end shows at once, notifications are buffered,
 * and the next query changes no epoll registration). */
static void idle(pg_conn *c) {
    if (c->poll && (PQstatus(c->pq) != CONNECTION_OK || PQsocket(c->pq) != c->fd)) {
        /* libpq dropped the connection and closed its socket: a poll left
         * on that descriptor would see whatever opens on it next. */
        stop_poll(c);
        c->broken = 1;
    }
    if (c->poll && c->writing)
        watch(c, 0);
    uv_timer_stop(&c->timer);
    c->op = OP_NONE;
    stash_notes(c);
}

/* [-0, +1] msg on one line: libpq's end with a newline and put hints on
 * lines of their own ("...failed: Connection refused\n\tIs the server
 * running..."); each line break and the blanks after it become "; ". */
static void push_one_line(lua_State *L, const char *msg, size_t n) {
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (size_t i = 0; i < n; i++) {
        if (msg[i] == '\n') {
            while (i + 1 < n && (msg[i + 1] == '\t' || msg[i + 1] == ' ' || msg[i + 1] == '\n'))
                i++;
            luaL_addstring(&b, "; ");
        } else {
            luaL_addchar(&b, msg[i]);
        }
    }
    luaL_pushresult(&b);
}

static int push_error(lua_State *L, const char *msg, const char *sqlstate) {
    lua_pushnil(L);
    size_t n = msg ? strlen(msg) : 0;
    while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == ' '))
        n--; /* libpq's messages end with a newline */
    if (n)
        push_one_line(L, msg, n);
    else
        lua_pushliteral(L, "closed");
    if (sqlstate) {
        lua_pushstring(L, sqlstate);
        return 3;
    }
    return 2;
}

/* ---- values ---- */

/* A column's text as the Lua value its type says. */
static void push_value(lua_State *L, const char *s, int len, Oid type) {
    char *end;
    switch (type) {
    case 16: /* bool */
        lua_pushboolean(L, s[0] == 't');
        return;
    case 21: /* int2 */
    case 23: /* int4 */
    case 26: /* oid */
        lua_pushnumber(L, (lua_Number)strtol(s, NULL, 10));
        return;
    case 20: { /* int8: a number when exact, else the text */
        long long v = strtoll(s, &end, 10);
        if (*end == '\0' && v <= (1LL << 53) && v >= -(1LL << 53))
            lua_pushnumber(L, (lua_Number)v);
        else
            lua_pushlstring(L, s, (size_t)len);
        return;
    }
    case 700: /* float4 */
    case 701: /* float8 */
        lua_pushnumber(L, strtod(s, NULL)); /* "NaN", "Infinity" too */
        return;
    default: /* text, numeric (exact as text), json (pg.lua decodes on request), ... */
        lua_pushlstring(L, s, (size_t)len);
    }
}

/* rows, affected: rows an array of { column = value }; also the column
 * names in order (rows.columns) and their type OIDs (rows.types), through
 * its metatable, so that the array holds rows only (tendril.json encodes
 * it as an array: __jsonarray, even empty). */
static int push_result(lua_State *L, PGresult *res) {
    int nrows = PQntuples(res), ncols = PQnfields(res);
    lua_createtable(L, nrows, 2);
    for (int r = 0; r < nrows; r++) {
        lua_createtable(L, 0, ncols);
        for (int col = 0; col < ncols; col++) {
            if (PQgetisnull(res, r, col))
                lua_rawgeti(L, LUA_REGISTRYINDEX, null_ref);
            else
                push_value(L, PQgetvalue(res, r, col), PQgetlength(res, r, col), PQftype(res, col));
            lua_setfield(L, -2, PQfname(res, col));
        }
        lua_rawseti(L, -2, r + 1);
    }
    lua_createtable(L, 0, 2); /* rows mt */
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, "__jsonarray");
    lua_createtable(L, 0, 2); /* rows mt index */
    lua_createtable(L, ncols, 0);
    for (int col = 0; col < ncols; col++) {
        lua_pushstring(L, PQfname(res, col));
        lua_rawseti(L, -2, col + 1);
    }
    lua_setfield(L, -2, "columns");
    lua_createtable(L, ncols, 0);
    for (int col = 0; col < ncols; col++) {
        lua_pushnumber(L, (lua_Number)PQftype(res, col));
        lua_rawseti(L, -2, col + 1);
    }
    lua_setfield(L, -2, "types");
    lua_setfield(L, -2, "__index");
    lua_setmetatable(L, -2);
    const char *tuples = PQcmdTuples(res);
    lua_pushnumber(L, tuples && *tuples ? strtod(tuples, NULL) : 0);
    return 2;
}

/* ---- the waits ---- */

static void close_conn(pg_conn *c);

/* A connect that failed or was abandoned: the userdata kept for it lets
 * go of c, and c closes now (its socket with it), not at the collector's
 * pace. */
static void drop_connecting(lua_State *L, pg_conn *c) {
    int ref = c->self_ref;
    c->self_ref = LUA_NOREF;
    lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
    pg_box *b = lua_touserdata(L, -1);
    if (b)
        b->c = NULL;
    c->box = NULL;
    lua_pop(L, 1);
    luaL_unref(L, LUA_REGISTRYINDEX, ref);
    c->broken = 1;
    close_conn(c);
}

static void finish(pg_conn *c, int nres_fn(lua_State *, pg_conn *)) {
    td_task *t = c->wait.task;
    idle(c);
    lua_State *co = td_vm_wait_end(&c->wait);
    int n = nres_fn(co, c);
    td_vm_resume(t, n);
}

static int connect_results(lua_State *L, pg_conn *c) {
    if (PQstatus(c->pq) == CONNECTION_OK && !c->timed_out) {
        int ref = c->self_ref;
        c->self_ref = LUA_NOREF;
        lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
        luaL_unref(L, LUA_REGISTRYINDEX, ref);
        return 1;
    }
    int n;
    if (c->timed_out) {
        lua_pushnil(L);
        lua_pushliteral(L, "timeout");
        n = 2;
    } else {
        n = push_error(L, PQerrorMessage(c->pq), NULL);
    }
    drop_connecting(L, c);
    return n;
}

static int query_results(lua_State *L, pg_conn *c) {
    int n;
    if (c->cancel_sent) {
        /* Unless the query ended by the cancel and the cancel is back, it
         * may still be on its way, to stop whatever this connection runs
         * next (a 57014 may be the server's statement_timeout). */
        const char *state = c->error ? PQresultErrorField(c->error, PG_DIAG_SQLSTATE) : NULL;
        if (c->gave_up || c->cancels_pending > 0 || !state || strcmp(state, "57014") != 0)
            c->broken = 1;
    }
    if (c->gave_up) {
        lua_pushnil(L);
        lua_pushliteral(L, "timeout");
        lua_pushliteral(L, "57014");
        n = 3;
    } else if (c->copy) {
        c->copy = 0;
        n = push_error(L, "COPY is not supported", "0A000");
    } else if (c->error) {
        const char *state = PQresultErrorField(c->error, PG_DIAG_SQLSTATE);
        if (c->timed_out && state && strcmp(state, "57014") == 0) {
            lua_pushnil(L);
            lua_pushliteral(L, "timeout");
            lua_pushstring(L, state);
            n = 3;
        } else {
            /* The primary message: libpq's full one adds "ERROR:" and the
             * statement's text with a caret. */
            const char *msg = PQresultErrorField(c->error, PG_DIAG_MESSAGE_PRIMARY);
            n = push_error(L, msg ? msg : PQresultErrorMessage(c->error), state);
        }
    } else if (c->result) {
        n = push_result(L, c->result);
    } else {
        c->broken = 1;
        n = push_error(L, PQerrorMessage(c->pq), NULL);
    }
    clear_results(c);
    c->cancel_sent = c->gave_up = 0;
    return n;
}

static void push_note(lua_State *L, PGnotify *note) {
    lua_createtable(L, 0, 3);
    lua_pushstring(L, note->relname);
    lua_setfield(L, -2, "channel");
    lua_pushstring(L, note->extra);
    lua_setfield(L, -2, "payload");
    lua_pushnumber(L, note->be_pid);
    lua_setfield(L, -2, "pid");
    PQfreemem(note);
}

static int notify_results(lua_State *L, pg_conn *c) {
    PGnotify *note = c->note;
    c->note = NULL;
    if (!note) {
        if (PQstatus(c->pq) != CONNECTION_OK) {
            c->broken = 1;
            return push_error(L, PQerrorMessage(c->pq), NULL);
        }
        lua_pushnil(L);
        lua_pushliteral(L, "timeout");
        return 2;
    }
    push_note(L, note);
    return 1;
}

/* Reads what came: the query's results until libpq says it is over.
 * Returns 1 when it is over (or failed), 0 to wait for more. */
static int collect(pg_conn *c) {
    if (!PQconsumeInput(c->pq))
        return 1;
    while (!PQisBusy(c->pq)) {
        PGresult *res = PQgetResult(c->pq);
        if (!res)
            return 1;
        ExecStatusType st = PQresultStatus(res);
        if (st == PGRES_COPY_IN || st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH) {
            /* PQgetResult would give this again and again: the connection
             * stays in COPY, so it is given up. */
            PQclear(res);
            c->copy = 1;
            c->broken = 1;
            return 1;
        }
        if (st == PGRES_FATAL_ERROR || st == PGRES_BAD_RESPONSE || st == PGRES_NONFATAL_ERROR) {
            if (!c->error)
                c->error = res;
            else
                PQclear(res);
        } else {
            if (c->result)
                PQclear(c->result);
            c->result = res;
        }
    }
    return 0;
}

static void step_connect(pg_conn *c) {
    /* libpq may close its socket and open the next one (another address,
     * a retry without SSL) under the same number: the poll is stopped
     * first and started afresh, so epoll learns of the new socket. */
    if (c->poll) {
        uv_poll_stop(c->poll);
        c->armed = 0;
    }
    PostgresPollingStatusType st = PQconnectPoll(c->pq);
    if (st == PGRES_POLLING_OK || st == PGRES_POLLING_FAILED) {
        finish(c, connect_results);
        return;
    }
    if (watch(c, st == PGRES_POLLING_WRITING) != 0)
        finish(c, connect_results);
}

static void on_poll(uv_poll_t *p, int status, int events) {
    (void)events;
    pg_conn *c = p->data;
    if (status < 0)
        c->armed = 0; /* libuv stopped the poll itself (EPOLLERR): start it again */
    /* otherwise an error shows in what libpq reads next */
    if (c->op == OP_NONE) {
        /* Idle: what the server sends is read (a notification, or its
         * end); a connection that ended is watched no more. */
        if (!PQconsumeInput(c->pq) || PQstatus(c->pq) != CONNECTION_OK) {
            c->broken = 1;
            stop_poll(c); /* its descriptor may be closed already */
        }
        stash_notes(c);
        return;
    }
    if (c->op == OP_CONNECT) {
        step_connect(c);
        return;
    }
    if (c->op == OP_QUERY) {
        if (c->writing) {
            int f = PQflush(c->pq);
            if (f == 1)
                return; /* more to send */
            if (f == 0 && watch(c, 0) == 0)
                return;
            finish(c, query_results);
            return;
        }
        if (collect(c)) {
            if (c->cancels_pending > 0 && !c->copy && PQstatus(c->pq) == CONNECTION_OK) {
                /* Over, but our cancel is still on its way: the wait ends
                 * when it is back (cancel_done), so that it cannot land on
                 * the next query. */
                c->ended = 1;
                return;
            }
            finish(c, query_results);
        }
        return;
    }
    /* OP_NOTIFY */
    if (!PQconsumeInput(c->pq) || PQstatus(c->pq) != CONNECTION_OK) {
        finish(c, notify_results);
        return;
    }
    c->note = next_note(c);
    if (c->note)
        finish(c, notify_results);
}

/* PQcancel, off the loop. It keeps its connection's record alive (counted
 * in handles) until it is back, so that the connection knows whether a
 * cancel of its own is still on its way. */
typedef struct cancel_work {
    uv_work_t req;
    PGcancel *cancel;
    pg_conn *c;
} cancel_work;

static void do_cancel(uv_work_t *req) {
    /* (libpq's PQcancel uses the connect timeout of the connection string,
     * if any: a server that does not answer holds a worker that long) */
    cancel_work *w = req->data;
    char err[256];
    PQcancel(w->cancel, err, sizeof err);
}

static void cancel_done(uv_work_t *req, int status) {
    (void)status;
    cancel_work *w = req->data;
    pg_conn *c = w->c;
    PQfreeCancel(w->cancel);
    free(w);
    cancels--;
    c->cancels_pending--;
    c->handles--;
    if (!c->closing && c->op == OP_QUERY && c->ended && c->cancels_pending == 0)
        finish(c, query_results);
    free_if_done(c);
}

/* Asks the server to stop the query running on c: 0 when the request went
 * out (to the thread pool), else an error (too many in flight). */
static int send_cancel(pg_conn *c) {
    if (cancels >= MAX_CANCELS)
        return UV_EBUSY;
    cancel_work *w = calloc(1, sizeof *w);
    if (!w)
        return UV_ENOMEM;
    w->cancel = PQgetCancel(c->pq);
    if (!w->cancel) {
        free(w);
        return UV_ENOMEM;
    }
    w->req.data = w;
    w->c = c;
    if (uv_queue_work(td_vm_loop(c->vm), &w->req, do_cancel, cancel_done) != 0) {
        PQfreeCancel(w->cancel);
        free(w);
        return UV_EINVAL;
    }
    cancels++;
    c->cancels_pending++;
    c->handles++;
    c->cancel_sent = 1;
    return 0;
}

static void on_timeout(uv_timer_t *timer) {
    pg_conn *c = timer->data;
    if (c->op == OP_NONE) {
        /* Idle in its pool past idle_timeout (pg_park): it ends now, the
         * server's backend with it; the pool finds its userdata empty. */
        if (c->box)
            c->box->c = NULL;
        c->box = NULL;
        close_conn(c);
        return;
    }
    if (c->op == OP_QUERY) {
        if (!c->timed_out) {
            c->timed_out = 1;
            if (send_cancel(c) == 0) {
                /* The server stops it; its error result ends the wait,
                 * unless the server does not answer within the grace. */
                uint64_t grace = c->timeout_ms < CANCEL_GRACE_MS ? c->timeout_ms : CANCEL_GRACE_MS;
                uv_timer_start(&c->timer, on_timeout, grace, 0);
                return;
            }
        }
        /* No end after the cancel (or no cancel could go): the wait ends
         * now, and the connection, mid-query, is given up. */
        c->gave_up = 1;
        c->broken = 1;
        finish(c, query_results);
        return;
    }
    c->timed_out = 1;
    if (c->op == OP_CONNECT || c->op == OP_NOTIFY)
        finish(c, c->op == OP_CONNECT ? connect_results : notify_results);
}

static void cancel_wait(td_wait *w) {
    pg_conn *c = td_container_of(w, pg_conn, wait);
    if (c->op == OP_QUERY) {
        /* Its results would come to no one: the connection is done for. */
        c->broken = 1;
        if (!c->closing)
            send_cancel(c);
    } else if (c->op == OP_CONNECT) {
        idle(c);
        drop_connecting(td_vm_state(c->vm), c);
        return;
    }
    idle(c);
    clear_results(c);
}

static void start_wait(lua_State *L, td_task *t, pg_conn *c, int op, double timeout) {
    c->op = op;
    c->timed_out = c->gave_up = c->cancel_sent = c->ended = 0;
    c->timeout_ms = timeout > 0 ? (uint64_t)(timeout * 1000.0) + 1 : 0;
    if (c->timeout_ms)
        uv_timer_start(&c->timer, on_timeout, td_clock_timer_ms(td_vm_loop(c->vm), c->timeout_ms), 0);
    else
        uv_timer_stop(&c->timer); /* (an idle timeout, had pg_unpark not come) */
    td_vm_wait_begin(t, &c->wait, cancel_wait, 0, TD_WAIT_DB);
    (void)L;
}

/* ---- Lua ---- */

static pg_conn *check_conn(lua_State *L, const char *fname) {
    pg_box *b = luaL_checkudata(L, 1, PG_MT);
    if (!b->c || b->c->closing)
        luaL_error(L, "%s: the connection is closed", fname);
    if (b->c->op != OP_NONE)
        luaL_error(L, "%s: the connection is busy (one task at a time)", fname);
    return b->c;
}

static int closed_results(lua_State *L, pg_conn *c) {
    (void)c;
    return push_error(L, "closed", NULL);
}

static void close_conn(pg_conn *c) {
    if (c->closing)
        return;
    if (c->op != OP_NONE) {
        /* A task waits on it (closed by another task, or by the end of the
         * task that took it while a thread still queries): that wait ends
         * now with nil, "closed", never later into freed memory. */
        if (c->op == OP_QUERY)
            send_cancel(c);
        if (c->op == OP_CONNECT && c->self_ref != LUA_NOREF) {
            luaL_unref(td_vm_state(c->vm), LUA_REGISTRYINDEX, c->self_ref);
            c->self_ref = LUA_NOREF;
        }
        finish(c, closed_results);
    }
    c->closing = 1;
    clear_results(c);
    if (c->note)
        PQfreemem(c->note);
    c->note = NULL;
    free_notes(c);
    stop_poll(c);
    PQfinish(c->pq);
    c->pq = NULL;
    uv_close((uv_handle_t *)&c->timer, on_handle_closed);
}

/* The server's notices and warnings ("NOTICE:  table ... does not exist,
 * skipping") go to the error log, not to stderr as libpq's default does. */
static void log_notice(void *arg, const char *msg) {
    (void)arg;
    size_t n = strlen(msg);
    while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == ' '))
        n--;
    td_log(TD_LOG_NOTICE, "postgres: %.*s", (int)n, msg);
}

/* [-2, +1|2] pg_connect(conninfo, timeout) -> conn | nil, err; yields */
static int pg_connect(lua_State *L) {
    td_vm *vm = lua_touserdata(L, lua_upvalueindex(1));
    const char *info = luaL_checkstring(L, 1);
    double timeout = luaL_optnumber(L, 2, 10);
    td_task *t = td_api_wait_start(L, "pg.connect", 0);
    if (!t)
        return 2;
    pg_conn *c = calloc(1, sizeof *c);
    if (!c)
        return luaL_error(L, "pg.connect: out of memory");
    c->vm = vm;
    c->fd = -1;
    c->self_ref = LUA_NOREF;
    uv_timer_init(td_vm_loop(vm), &c->timer);
    c->timer.data = c;
    c->handles = 1;
    pg_box *b = lua_newuserdata(L, sizeof *b);
    b->c = c;
    c->box = b;
    luaL_getmetatable(L, PG_MT);
    lua_setmetatable(L, -2);
    c->pq = PQconnectStart(info);
    if (!c->pq || PQstatus(c->pq) == CONNECTION_BAD) {
        int n = push_error(L, c->pq ? PQerrorMessage(c->pq) : "out of memory", NULL);
        close_conn(c);
        b->c = NULL;
        return n;
    }
    PQsetnonblocking(c->pq, 1);
    PQsetNoticeProcessor(c->pq, log_notice, NULL);
    if (watch(c, 1) != 0) {
        int n = push_error(L, PQerrorMessage(c->pq), NULL);
        close_conn(c);
        b->c = NULL;
        return n;
    }
    /* Kept until the end of the connecting: connect_results returns it. */
    c->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    start_wait(L, t, c, OP_CONNECT, timeout);
    return lua_yield(L, 0);
}

enum { SEND_QUERY, SEND_PREPARED };

/* After a PQsend*: the wait for its results (or the failure to send). */
static int sent(lua_State *L, td_task *t, pg_conn *c, int ok, double timeout) {
    if (!ok)
        return push_error(L, PQerrorMessage(c->pq), NULL);
    int f = PQflush(c->pq);
    if (f < 0 || watch(c, f == 1) != 0) {
        c->broken = 1;
        stop_poll(c); /* libpq may have closed its socket */
        return push_error(L, PQerrorMessage(c->pq), NULL);
    }
    start_wait(L, t, c, OP_QUERY, timeout);
    return lua_yield(L, 0);
}

/* [-(3+n), +2|3] pg_query(conn, timeout, sql, params...) -> rows, affected
 * | nil, message [, sqlstate]; yields. Parameters: strings (NULL for
 * pg.null); pg.lua turns other values into text. */
static int query(lua_State *L, int mode) {
    pg_conn *c = check_conn(L, "db:query");
    double timeout = luaL_optnumber(L, 2, 0);
    const char *sql = luaL_checkstring(L, 3);
    int n = lua_gettop(L) - 3;
    if (n > 65535)
        return luaL_error(L, "db:query: too many parameters");
    td_task *t = td_api_wait_start(L, "db:query", 0);
    if (!t)
        return 2;
    if (c->broken || PQstatus(c->pq) != CONNECTION_OK)
        return push_error(L, "closed", NULL);
    const char **values = n ? malloc(sizeof *values * (size_t)n) : NULL;
    if (n && !values)
        return luaL_error(L, "db:query: out of memory");
    lua_rawgeti(L, LUA_REGISTRYINDEX, null_ref);
    for (int i = 0; i < n; i++)
        values[i] = lua_rawequal(L, 4 + i, -1) ? NULL : lua_tostring(L, 4 + i);
    lua_pop(L, 1);
    int ok = mode == SEND_PREPARED ? PQsendQueryPrepared(c->pq, sql, n, values, NULL, NULL, 0)
                                   : PQsendQueryParams(c->pq, sql, n, NULL, values, NULL, NULL, 0);
    free(values);
    return sent(L, t, c, ok, timeout);
}

/* [-4, +2|3] pg_prepare(conn, timeout, name, sql) -> {}, 0 | nil, message
 * [, sqlstate]; yields. A named statement for pg_exec. */
static int pg_prepare(lua_State *L) {
    pg_conn *c = check_conn(L, "db:query");
    double timeout = luaL_optnumber(L, 2, 0);
    const char *name = luaL_checkstring(L, 3);
    const char *sql = luaL_checkstring(L, 4);
    td_task *t = td_api_wait_start(L, "db:query", 0);
    if (!t)
        return 2;
    if (c->broken || PQstatus(c->pq) != CONNECTION_OK)
        return push_error(L, "closed", NULL);
    return sent(L, t, c, PQsendPrepare(c->pq, name, sql, 0, NULL), timeout);
}

static int pg_query(lua_State *L) { return query(L, SEND_QUERY); }

/* [-(3+n), +2|3] pg_exec(conn, timeout, name, params...): pg_query's
 * results, running the statement pg_prepare named. */
static int pg_exec(lua_State *L) { return query(L, SEND_PREPARED); }

/* [-2, +1|2] pg_notification(conn, timeout) -> { channel =, payload =, pid
 * = } | nil, "timeout" | nil, err; yields until one comes. */
static int pg_notification(lua_State *L) {
    pg_conn *c = check_conn(L, "db:recv");
    double timeout = luaL_optnumber(L, 2, 0);
    td_task *t = td_api_wait_start(L, "db:recv", 0);
    if (!t)
        return 2;
    if (c->broken || PQstatus(c->pq) != CONNECTION_OK)
        return push_error(L, "closed", NULL);
    if (!PQconsumeInput(c->pq) || PQstatus(c->pq) != CONNECTION_OK) {
        c->broken = 1;
        stop_poll(c); /* libpq closed its socket */
        return push_error(L, "closed", NULL);
    }
    PGnotify *note = next_note(c);
    if (note) {
        push_note(L, note); /* one came already */
        return 1;
    }
    if (watch(c, 0) != 0) {
        c->broken = 1;
        stop_poll(c);
        return push_error(L, "closed", NULL);
    }
    start_wait(L, t, c, OP_NOTIFY, timeout);
    return lua_yield(L, 0);
}

/* [-1, +1] pg_usable(conn) -> boolean: open, idle, and the server has not
 * hung up. */
static int pg_usable(lua_State *L) {
    pg_box *b = luaL_checkudata(L, 1, PG_MT);
    pg_conn *c = b->c;
    /* An idle connection's socket is watched: its end has set broken. */
    int ok = c && !c->closing && !c->broken && c->op == OP_NONE && PQstatus(c->pq) == CONNECTION_OK &&
             PQtransactionStatus(c->pq) == PQTRANS_IDLE; /* not inside a transaction someone left open */
    lua_pushboolean(L, ok);
    return 1;
}

/* [-1, +1] pg_state(conn) -> "idle" | "transaction" | "failed" (a
 * transaction a statement failed in) | "busy" (a query runs) | "closed" */
static int pg_state(lua_State *L) {
    pg_box *b = luaL_checkudata(L, 1, PG_MT);
    pg_conn *c = b->c;
    const char *s = "closed";
    if (c && !c->closing && !c->broken && PQstatus(c->pq) == CONNECTION_OK) {
        if (c->op != OP_NONE)
            s = "busy";
        else {
            PGTransactionStatusType ts = PQtransactionStatus(c->pq);
            s = ts == PQTRANS_IDLE ? "idle" : ts == PQTRANS_INERROR ? "failed" : ts == PQTRANS_INTRANS ? "transaction"
                                                                                                         : "busy";
        }
    }
    lua_pushstring(L, s);
    return 1;
}

/* [-1, +0] pg_close(conn) */
static int pg_close_lua(lua_State *L) {
    pg_box *b = luaL_checkudata(L, 1, PG_MT);
    if (b->c) {
        pg_conn *c = b->c;
        b->c = NULL;
        c->box = NULL;
        close_conn(c);
        free_if_done(c);
    }
    return 0;
}

/* [-2, +0] pg_park(conn, seconds): an idle connection put in its pool
 * closes after seconds (0: never) unless pg_unpark comes first. */
static int pg_park(lua_State *L) {
    pg_box *b = luaL_checkudata(L, 1, PG_MT);
    double seconds = luaL_checknumber(L, 2);
    pg_conn *c = b->c;
    if (c && !c->closing && c->op == OP_NONE && seconds > 0)
        uv_timer_start(&c->timer, on_timeout, (uint64_t)(seconds * 1000.0) + 1, 0);
    return 0;
}

/* [-1, +0] pg_unpark(conn): taken from its pool; no idle timeout. */
static int pg_unpark(lua_State *L) {
    pg_box *b = luaL_checkudata(L, 1, PG_MT);
    if (b->c && !b->c->closing && b->c->op == OP_NONE)
        uv_timer_stop(&b->c->timer);
    return 0;
}

/* [-1, +0] pg_set_null(value): the value that stands for SQL NULL. */
static int pg_set_null(lua_State *L) {
    luaL_checkany(L, 1);
    lua_pushvalue(L, 1);
    if (null_ref != LUA_NOREF)
        luaL_unref(L, LUA_REGISTRYINDEX, null_ref);
    null_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return 0;
}

/* [-1, +1] pg_escape_identifier(conn, name) -> "quoted" */
static int pg_escape_identifier(lua_State *L) {
    pg_conn *c = check_conn(L, "db:escape_identifier");
    size_t len;
    const char *s = luaL_checklstring(L, 2, &len);
    char *q = PQescapeIdentifier(c->pq, s, len);
    if (!q)
        return luaL_error(L, "db:escape_identifier: %s", PQerrorMessage(c->pq));
    lua_pushstring(L, q);
    PQfreemem(q);
    return 1;
}

void td_api_pg_open(lua_State *L, td_vm *vm) {
    static const luaL_Reg funcs[] = {
        {"pg_query", pg_query},           {"pg_notification", pg_notification},
        {"pg_prepare", pg_prepare},       {"pg_exec", pg_exec},
        {"pg_usable", pg_usable},         {"pg_close", pg_close_lua},       {"pg_state", pg_state},
        {"pg_set_null", pg_set_null},     {"pg_escape_identifier", pg_escape_identifier},
        {"pg_park", pg_park},             {"pg_unpark", pg_unpark},
        {NULL, NULL},
    };
    luaL_newmetatable(L, PG_MT);
    lua_pushcfunction(L, pg_close_lua);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);
    luaL_setfuncs(L, funcs, 0);
    lua_pushlightuserdata(L, vm);
    lua_pushcclosure(L, pg_connect, 1);
    lua_setfield(L, -2, "pg_connect");
}
