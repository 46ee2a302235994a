/* tendril.sleep: suspends the calling coroutine on a libuv timer. Owns the
 * timer and its wait record from the call until the timer's close callback. */
#include <lauxlib.h>
#include <math.h>
#include <stdlib.h>

#include "api.h"
#include "clock.h"

typedef struct sleep_wait {
    td_wait wait;
    uv_timer_t timer;
} sleep_wait;

static void free_sleep(uv_handle_t *h) { free(td_container_of(h, sleep_wait, timer)); }

static void on_timer(uv_timer_t *timer) {
    sleep_wait *sw = td_container_of(timer, sleep_wait, timer);
    td_task *t = sw->wait.task;
    lua_State *co = td_vm_wait_end(&sw->wait);
    uv_close((uv_handle_t *)timer, free_sleep);
    lua_pushboolean(co, 1);
    td_vm_resume(t, 1);
}

static void cancel_sleep(td_wait *w) {
    sleep_wait *sw = td_container_of(w, sleep_wait, wait);
    uv_close((uv_handle_t *)&sw->timer, free_sleep);
}

/* [-1, +1|2] tendril.sleep(seconds) -> true | nil, err (the request is over) */
static int td_sleep(lua_State *L) {
    td_vm *vm = lua_touserdata(L, lua_upvalueindex(1));
    double seconds = luaL_checknumber(L, 1);
    if (!(seconds >= 0) || isinf(seconds)) /* negative, NaN or infinite: a mistake, not a wait */
        return luaL_error(L, "tendril.sleep: expected a finite number of seconds >= 0, got %f", seconds);
    td_task *t = td_api_wait_start(L, "tendril.sleep", 0);
    if (!t)
        return 2;
    if (seconds > 1e9)
        seconds = 1e9;
    sleep_wait *sw = malloc(sizeof *sw);
    if (!sw)
        return luaL_error(L, "tendril.sleep: out of memory");
    uv_timer_init(td_vm_loop(vm), &sw->timer);
    td_vm_wait_begin(t, &sw->wait, cancel_sleep, 0, TD_WAIT_SLEEP);
    /* At least `seconds` from now, not from the loop turn's start. A zero
     * sleep only yields: it runs before the timers that came due during
     * the turn (a task that yields in a long loop keeps its place and,
     * holding memory, meets the limit before the tasks it let run:
     * test_faults). */
    uint64_t ms = (uint64_t)llround(seconds * 1000.0);
    uv_timer_start(&sw->timer, on_timer, ms > 0 ? td_clock_timer_ms(td_vm_loop(vm), ms) : 0, 0);
    return lua_yield(L, 0);
}

void td_api_sleep_open(lua_State *L, td_vm *vm) {
    lua_pushlightuserdata(L, vm);
    lua_pushcclosure(L, td_sleep, 1);
    lua_setfield(L, -2, "sleep");
}
