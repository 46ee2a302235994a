/* The error log and the access log: process-wide sinks, like nginx's.
 *
 * The error log is written at once (errors are rare and must not be lost if
 * the process dies). The access log is buffered and written by
 * td_log_access_flush, which the loop calls once per turn, so a busy server
 * makes one write for many requests. No libuv, no Lua. */
#ifndef TD_LOG_H
#define TD_LOG_H

#include <stddef.h>

typedef enum td_log_level {
    TD_LOG_DEBUG,
    TD_LOG_INFO,
    TD_LOG_NOTICE,
    TD_LOG_WARN,
    TD_LOG_ERROR,
    TD_LOG_CRIT,
} td_log_level;

/* path NULL means stderr. Returns 0 or a negative errno. */
int td_log_open_error(const char *path);
/* path NULL turns the access log off; "-" means stdout. Returns 0 or a negative errno. */
int td_log_open_access(const char *path);
/* Opens the log files again by name (SIGUSR1, after logrotate). */
void td_log_reopen(void);
void td_log_close(void);

/* With more than one worker, every line names its process: the error log's
 * with a prefix ("worker 2: ", "supervisor: " for id -1), the access
 * log's with a last field (" worker=2"). 0: the only process, no mark. */
void td_log_set_worker(int id);
int td_log_worker(void);

/* Returns the level for a name ("debug" ... "crit", also "warning"), or -1. */
int td_log_level_from_name(const char *name);
const char *td_log_level_name(td_log_level level);

void td_log(td_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Logs msg as it is (it may hold newlines, e.g. a traceback). */
void td_log_raw(td_log_level level, const char *msg, size_t len);

/* The access log's line format (--access-log-format). */
typedef enum td_access_format { TD_ACCESS_COMMON, TD_ACCESS_COMBINED, TD_ACCESS_JSON } td_access_format;
void td_log_set_access_format(td_access_format f);
td_access_format td_log_access_format(void);

/* Asked for every request: inline. */
extern int td_log__access_fd;
static inline int td_log_access_enabled(void) { return td_log__access_fd >= 0; }
/* Appends one line (without its newline) to the access log buffer. */
void td_log_access(const char *line, size_t len);
void td_log_access_flush(void);

#endif
