/* Wall-clock time, read once per loop turn.
 *
 * libuv refreshes its loop time once per turn; the wall clock is read again
 * only when that stamp moves, and the Date header and the access log's time
 * are formatted again only when the second changes. */
#ifndef TD_CLOCK_H
#define TD_CLOCK_H

#include <uv.h>

/* Seconds since the epoch, with microseconds. */
double td_clock_now(uv_loop_t *loop);
/* "Sun, 06 Nov 1994 08:49:37 GMT" (29 bytes, NUL-terminated). */
const char *td_clock_http_date(uv_loop_t *loop);
/* "06/Nov/1994:08:49:37 +0000" for the Common Log Format (26 bytes). */
const char *td_clock_log_time(uv_loop_t *loop);
/* The timeout to give uv_timer_start for a wait of ms from now: ms plus how
 * far the loop's time (its turn's start) lags behind the clock, so that a
 * wait started late in a long turn lasts its full length. The loop's time
 * is not updated: moving it inside the timers phase would make other
 * timers due again and again (libuv runs every due timer before leaving
 * the phase). */
uint64_t td_clock_timer_ms(uv_loop_t *loop, uint64_t ms);

#endif
