/* Owns the cached wall-clock reading and the strings formatted from it. */
#include "clock.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static uint64_t stamp_ms = (uint64_t)-1;
static double now_s;
static time_t date_sec = (time_t)-1;
static char http_date[32];
static time_t log_sec = (time_t)-1;
static char log_time[32];

double td_clock_now(uv_loop_t *loop) {
    uint64_t ms = uv_now(loop);
    if (ms != stamp_ms) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        now_s = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
        stamp_ms = ms;
    }
    return now_s;
}

const char *td_clock_http_date(uv_loop_t *loop) {
    time_t sec = (time_t)td_clock_now(loop);
    if (sec != date_sec) {
        struct tm tm;
        gmtime_r(&sec, &tm);
        strftime(http_date, sizeof http_date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
        date_sec = sec;
    }
    return http_date;
}

const char *td_clock_log_time(uv_loop_t *loop) {
    time_t sec = (time_t)td_clock_now(loop);
    if (sec != log_sec) {
        struct tm tm;
        localtime_r(&sec, &tm);
        strftime(log_time, sizeof log_time, "%d/%b/%Y:%H:%M:%S %z", &tm);
        log_sec = sec;
    }
    return log_time;
}

uint64_t td_clock_timer_ms(uv_loop_t *loop, uint64_t ms) {
    uint64_t now = uv_hrtime() / 1000000, then = uv_now(loop);
    uint64_t lag = now > then ? now - then : 0;
    return ms > UINT64_MAX - lag ? UINT64_MAX : ms + lag;
}
