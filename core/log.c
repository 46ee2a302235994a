/* Owns the two log file descriptors and the access log's buffer. */
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"

/* Past this many buffered bytes the access log is written without waiting
 * for the end of the loop turn. */
#define TD_ACCESS_FLUSH_BYTES 65536

static int error_fd = 2;
int td_log__access_fd = -1;
#define access_fd td_log__access_fd
static td_buf access_buf;

static int worker_id;

void td_log_set_worker(int id) { worker_id = id; }
int td_log_worker(void) { return worker_id; }

static td_access_format access_format;
void td_log_set_access_format(td_access_format f) { access_format = f; }
td_access_format td_log_access_format(void) { return access_format; }

static const char *const level_names[] = {"debug", "info", "notice", "warn", "error", "crit"};

static int open_append(const char *path) {
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    return fd < 0 ? -errno : fd;
}

/* The files to open again on td_log_reopen (NULL: stderr or stdout). */
static const char *error_path, *access_path;

int td_log_open_error(const char *path) {
    error_path = path;
    if (!path)
        return 0;
    int fd = open_append(path);
    if (fd < 0)
        return fd;
    if (error_fd > 2)
        close(error_fd);
    error_fd = fd;
    return 0;
}

int td_log_open_access(const char *path) {
    if (!path)
        return 0;
    if (strcmp(path, "-") == 0) {
        access_fd = 1;
        return 0;
    }
    access_path = path;
    int fd = open_append(path);
    if (fd < 0)
        return fd;
    access_fd = fd;
    return 0;
}

/* Opens path again in place of *fd; a file that cannot be opened keeps the
 * old descriptor (and says so). */
static void reopen(const char *path, int *fd, const char *what) {
    if (!path || *fd <= 2)
        return;
    int nfd = open_append(path);
    if (nfd < 0) {
        td_log(TD_LOG_ERROR, "cannot reopen the %s log %s: %s", what, path, strerror(-nfd));
        return;
    }
    close(*fd);
    *fd = nfd;
}

/* For logrotate: it renamed the files; new ones take their place. */
void td_log_reopen(void) {
    td_log_access_flush();
    reopen(access_path, &access_fd, "access");
    reopen(error_path, &error_fd, "error");
}

void td_log_close(void) {
    td_log_access_flush();
    td_buf_free(&access_buf);
    if (access_fd > 2)
        close(access_fd);
    access_fd = -1;
    if (error_fd > 2)
        close(error_fd);
    error_fd = 2;
}

int td_log_level_from_name(const char *name) {
    for (size_t i = 0; i < sizeof level_names / sizeof level_names[0]; i++)
        if (strcasecmp(name, level_names[i]) == 0)
            return (int)i;
    if (strcasecmp(name, "warning") == 0)
        return TD_LOG_WARN;
    if (strcasecmp(name, "err") == 0)
        return TD_LOG_ERROR;
    return -1;
}

const char *td_log_level_name(td_log_level level) { return level_names[level]; }

static void write_all(int fd, const char *p, size_t len) {
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return; /* nowhere left to report a failing log */
        }
        p += n;
        len -= (size_t)n;
    }
}

void td_log_raw(td_log_level level, const char *msg, size_t len) {
    char line[1024];
    time_t now = time(NULL);
    struct tm tm;
    localtime_r(&now, &tm);
    int n = (int)strftime(line, sizeof line, "%Y/%m/%d %H:%M:%S ", &tm);
    n += snprintf(line + n, sizeof line - (size_t)n, "[%s] ", level_names[level]);
    if (worker_id > 0)
        n += snprintf(line + n, sizeof line - (size_t)n, "worker %d: ", worker_id);
    else if (worker_id < 0)
        n += snprintf(line + n, sizeof line - (size_t)n, "supervisor: ");
    size_t room = sizeof line - (size_t)n - 1;
    if (len <= room) {
        memcpy(line + n, msg, len);
        line[n + (int)len] = '\n';
        write_all(error_fd, line, (size_t)n + len + 1);
        return;
    }
    write_all(error_fd, line, (size_t)n);
    write_all(error_fd, msg, len);
    write_all(error_fd, "\n", 1);
}

void td_log(td_log_level level, const char *fmt, ...) {
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof msg)
        n = sizeof msg - 1;
    td_log_raw(level, msg, (size_t)n);
}


void td_log_access(const char *line, size_t len) {
    if (access_fd < 0)
        return;
    if (td_buf_reserve(&access_buf, len + 1) != 0)
        return; /* out of memory: drop the line rather than the request */
    memcpy(access_buf.data + access_buf.len, line, len);
    access_buf.data[access_buf.len + len] = '\n';
    access_buf.len += len + 1;
    if (access_buf.len >= TD_ACCESS_FLUSH_BYTES)
        td_log_access_flush();
}

void td_log_access_flush(void) {
    if (access_buf.len == 0 || access_fd < 0)
        return;
    if (worker_id == 0) {
        write_all(access_fd, access_buf.data, access_buf.len);
        access_buf.len = 0;
        return;
    }
    /* Workers share the file or pipe: writes of whole lines, none past
     * PIPE_BUF (what a pipe keeps in one piece), so that lines never mix. */
    const char *p = access_buf.data, *end = p + access_buf.len;
    while (p < end) {
        size_t n = (size_t)(end - p);
        if (n > PIPE_BUF) {
            const char *nl = memrchr(p, '\n', PIPE_BUF);
            n = nl ? (size_t)(nl - p) + 1 : (size_t)((const char *)memchr(p + PIPE_BUF, '\n', n - PIPE_BUF) - p) + 1;
        }
        write_all(access_fd, p, n);
        p += n;
    }
    access_buf.len = 0;
}
