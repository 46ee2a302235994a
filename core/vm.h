/* The Lua bridge: one lua_State, the coroutines that run in it ("tasks"),
 * and the one function that resumes them.
 *
 * Ownership:
 * - Every task's coroutine is anchored in one private table (the "anchors"
 *   table, a registry reference) from creation until td_vm_task_release;
 *   td_vm_stats counts its entries, so tests can prove nothing is left.
 * - A suspended task waits on exactly one td_wait. The module that starts
 *   the wait owns the record and its libuv handle; the vm keeps a list of
 *   them only to cancel them at teardown.
 * - A task ends in td_vm_resume and nowhere else: when its function returns
 *   or raises, its on_end hook runs and the task is released; when a pooled
 *   task yields the pool marker it goes back to the pool.
 * - td_task memory is freed (or kept as a bounded spare) when the task is
 *   released: nothing keeps a task pointer past that (below).
 *
 * Fate (td_scope): a request's tasks (its handler's and the threads they
 * spawn) share a scope until its response is finished. When the client
 * goes away the scope is killed: every wait of its tasks is cancelled at
 * once (the libuv work stopped, the record freed) and returns nil,
 * "closed", and every later wait of those tasks fails the same way. When
 * the request's deadline passes, every wait but a transfer with its own
 * client (reading the body, writing the answer) fails with nil, "timeout",
 * now and later. When the response is finished the scope closes and its
 * tasks run on, detached, bounded only by their own timeouts.
 *
 * Identity: a coroutine does not know its task. Every coroutine's LuaJIT
 * exdata is the vm; a tendril call acts for the task td_vm_resume is
 * running, and only when the calling coroutine is that task's own or was
 * resumed, through the coroutine relay, by that same run of it. A
 * coroutine a script keeps across requests therefore waits on behalf of
 * whichever task resumes it, never of the task that created it. */
#ifndef TD_VM_H
#define TD_VM_H

#include <lua.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "deadlines.h"
#include "list.h"
#include "timings.h"

typedef struct td_vm td_vm;
typedef struct td_task td_task;
typedef struct td_wait td_wait;

struct td_wait {
    td_task *task;
    /* Stops the libuv work and frees what the wait owns; the callback that
     * would have ended the wait never comes. The vm resumes the task with
     * nil, err itself (or never, at teardown). */
    void (*cancel)(td_wait *w);
    td_list link;
    /* A transfer with the request's own client: outside its deadline (set
     * by td_vm_wait_begin). */
    unsigned transfer : 1;
    unsigned kind : 4; /* enum td_wait_kind: where a request's time went */
};

/* A request's fate, shared by the tasks bound to it (see above). Lives in
 * the task that leads it (td_task.lead); open from the request's start
 * until it is closed or killed. */
typedef struct td_scope {
    td_vm *vm;
    td_list tasks;     /* td_task.scope_link */
    td_heap_node timer; /* in the vm's heap, no later than `due` (see td_vm_scope_deadline) */
    uint64_t due;       /* its deadline, loop time; 0: none */
    int doom;           /* TD_ETIMEOUT once the deadline passed */
    void **ref;         /* the owner's pointer to it, set to NULL when it ends */
    /* The request's time by where it went (timings.h), or NULL: its tasks'
     * runs and waits add to it while the scope is open. Set by the owner
     * after td_vm_scope_open; cleared when the scope ends. */
    td_timings *timings;
    unsigned open : 1;
} td_scope;

typedef void (*td_task_end_cb)(td_task *t, int status);

struct td_task {
    td_vm *vm;
    lua_State *co;
    int ref; /* in the anchors table; LUA_NOREF when released */
    td_wait *wait;
    td_list link;       /* vm->posted while a resume is posted */
    td_list alive_link; /* vm->alive */
    int posted_nargs;
    /* Called when the task's function returned (status 0, results on co's
     * stack) or raised (status LUA_ERR*, the error already logged). */
    td_task_end_cb on_end;
    td_scope *scope;    /* the fate it shares, or NULL */
    td_list scope_link; /* scope->tasks */
    int doom;           /* TD_ECLOSED once its request died: every wait fails at once */
    td_scope lead;      /* the scope of the request this task serves, if any */
    void *data;         /* the owner's */
    /* What the task is, for log lines: a callback (e.g. "GET /path") or a
     * fixed label ("a spawned thread"). */
    void (*describe)(td_task *t, char *buf, size_t size);
    const char *label;
    uint32_t serial; /* the owner's */
    uint32_t run;    /* new for each use of the task (pooled tasks are reused) */
    uint64_t waited_since; /* uv_hrtime() when its timed wait began; 0: none */
    uint8_t wait_kind;     /* that wait's kind */
    unsigned alive : 1;
    unsigned fresh : 1;
    unsigned pooled : 1;
    unsigned from_pool : 1; /* runs the pool function */
    unsigned silent : 1;    /* on_end reports errors itself (the message is on co's stack) */
    unsigned daemon : 1;    /* a runtime service (td_vm_task_daemon) */
};

typedef struct td_vm_stats {
    size_t anchored; /* entries in the anchors table */
    size_t tasks;    /* tasks alive, pooled ones included */
    size_t pooled;
    size_t daemons; /* alive, counted in tasks too */
    size_t waits;
    uint64_t stalls; /* resumes that held the loop past the stall guard's threshold */
} td_vm_stats;

/* Creates the Lua state: standard libraries, the embedded tendril library,
 * and a realloc-based allocator that counts Lua's bytes (leak checks see
 * them; malloc_trim can hand them back). NULL when out of memory. */
td_vm *td_vm_new(uv_loop_t *loop);
/* Teardown: cancels every wait, releases every task, closes the state.
 * Returns the bytes Lua still held after closing: any but 0 is a leak. */
size_t td_vm_close(td_vm *vm);
lua_State *td_vm_state(td_vm *vm);
/* A full collection, from outside any resume (after a burst, so that its
 * garbage goes back to malloc). */
void td_vm_collect(td_vm *vm);
/* The bytes Lua may hold while its code runs (0: no limit beyond the
 * system's). An allocation past it fails inside the task that made it
 * ("not enough memory", with headroom for the error path); after that run
 * the vm collects fully before anything else resumes (lalloc.h). */
void td_vm_set_memory_limit(td_vm *vm, size_t bytes);
/* The bytes Lua holds now, and the limit (0: none). */
size_t td_vm_memory(td_vm *vm);
size_t td_vm_memory_limit(td_vm *vm);
/* (Re)starts the loop-stall guard (see stall.h): warnings past threshold_ms
 * (0: none) and the shutdown watch, shutdown_ms after a stop signal. */
void td_vm_set_stall_guard(td_vm *vm, uint64_t threshold_ms, uint64_t shutdown_ms);
uv_loop_t *td_vm_loop(td_vm *vm);
void td_vm_stats_get(td_vm *vm, td_vm_stats *st);

/* [-1, +0] A new task running the function on top of L's stack (popped).
 * Start it with td_vm_resume after pushing its arguments on t->co. */
td_task *td_vm_task_new(td_vm *vm, td_task_end_cb on_end);
/* [-1, +0] Sets the function pooled tasks run. It is called, the first
 * time, with the pool marker (a light userdata) before the arguments, and
 * hands its task back by yielding that marker; the values the next
 * td_vm_resume pushes are that yield's results. */
void td_vm_set_pool_function(td_vm *vm);
/* A task from the pool (or a new one). */
td_task *td_vm_task_pooled(td_vm *vm, td_task_end_cb on_end);

/* The only caller of lua_resume. Runs t with the nargs values on top of
 * t->co's stack. When it returns:
 * - the task waits on a td_wait: nothing more happens here;
 * - it yielded the pool marker: back to the pool;
 * - it returned or raised: on_end runs, then the task is released; an
 *   error is logged with its traceback (the script's file:line) first;
 * - it yielded outside any tendril call: logged as an error, ended.
 * Called while Lua code runs (from a C function that a coroutine called),
 * the resume is posted and runs when the running one yields, so coroutines
 * never nest on the C stack; inside td_vm_hold it is posted and runs at the
 * release. After td_vm_close began it does nothing. */
void td_vm_resume(td_task *t, int nargs);

/* Around a callback that must not run Lua (the transport's, whose state
 * is in flux): resumes asked for meanwhile are posted, and the outermost
 * td_vm_release runs them. ud is the vm (the signature of the transport's
 * hooks). */
void td_vm_hold(void *ud);
void td_vm_release(void *ud);

/* The running task, if L is its coroutine or a coroutine it resumed
 * through the relay in this run; else NULL. */
td_task *td_vm_task_of(lua_State *L);
/* For a C function about to yield: the task L can suspend, or raises an
 * error naming `fname` and why it cannot. L may be a coroutine the script
 * created inside the task: lua/tendril/coroutine.lua passes such a yield
 * up to the task and hands the results back down. */
td_task *td_vm_check_yieldable(lua_State *L, const char *fname);
/* [-0, +0] Called as a script's coroutine (at co_idx) is resumed from L:
 * records whether a yield of co's can be passed up through L to the task. */
void td_vm_relay_mark(lua_State *L, int co_idx);
/* What a waiting primitive checks before it starts: 0, or the code its
 * wait would fail with at once (the task's request is over or past its
 * deadline); the primitive then returns nil, err. `transfer` as in td_wait. */
int td_vm_doom(td_task *t, int transfer);
/* Records that t waits on w (before the C function yields). `transfer`: a
 * transfer with the request's own client, outside its deadline. `kind`
 * (enum td_wait_kind): what the request's timings count the wait as. */
void td_vm_wait_begin(td_task *t, td_wait *w, void (*cancel)(td_wait *), int transfer, int kind);
/* Ends the wait, before the callback pushes results and calls td_vm_resume.
 * Returns the coroutine to push them on. */
lua_State *td_vm_wait_end(td_wait *w);

/* ---- scopes ---- */
/* Opens t's own scope (t->lead) and binds t to it. */
td_scope *td_vm_scope_open(td_task *t);
/* t shares scope's fate from now on (a thread spawned in it). */
void td_vm_scope_join(td_scope *s, td_task *t);
/* The deadline: ms from now; 0 removes it. */
void td_vm_scope_deadline(td_scope *s, uint64_t ms);
/* The client went away: every task's wait fails now with `code`, later
 * waits too; the scope closes. */
void td_vm_scope_kill(td_scope *s, int code);
/* The response is finished: the tasks run on, detached. */
void td_vm_scope_close(td_scope *s);
/* Like td_vm_scope_kill for the threads of the scope, but the task that
 * leads it carries on, in no scope (a WebSocket ended: its handler goes on
 * to what it does after the end, its threads end). interrupt_lead: the
 * lead's current wait, if any, fails with code too (it had not heard of
 * the end); its later waits do not. */
void td_vm_scope_kill_threads(td_scope *s, int code, int interrupt_lead);
/* The tasks bound to s besides the one that leads it, and how many of
 * them wait (tendril test: what a test left running). */
void td_vm_scope_census(const td_scope *s, size_t *tasks, size_t *waits);
/* A thread starts: it shares its spawner's fate (and doom). */
void td_vm_task_inherit(td_task *child, td_task *parent);
/* t is a runtime service that runs for as long as the program (the bus
 * bridge's publisher and listener): it does not keep `tendril run` going,
 * and td_vm_stop_daemons ends it. */
void td_vm_task_daemon(td_task *t);
/* The shutdown: every daemon's wait, now and later, fails with "closed",
 * so that its loop ends (resumes are posted). */
void td_vm_stop_daemons(td_vm *vm);

/* Adds the running task's time in Lua until now (uv_hrtime()) to its
 * request's timings (they are otherwise added as the run ends): before
 * reading them, from inside the run (the access log of a response
 * finished now, req:timings()). */
void td_vm_account(td_vm *vm, uint64_t now);
/* td_vm_account, and the waits s's tasks are in now, counted so far (the
 * request's line is written: its scope ends next, and its tasks' waits
 * would not count when they end). s may be NULL. */
void td_vm_settle(td_vm *vm, td_scope *s, uint64_t now);

/* Logs the error on top of co's stack with a traceback, prefixed by what. */
void td_vm_log_error(lua_State *co, const char *what);

#endif
