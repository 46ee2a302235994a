/* Owns the listening sockets (for the life of the server: workers come and
 * go, their queued clients stay), the shared mapping, the worker table and
 * the signal descriptor. */
#include "supervisor.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/rand.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <netinet/in.h>

#include "app.h"
#include "conn.h"
#include "log.h"
#include "shared.h"
#include "tls.h"

/* How often the supervisor looks at the heartbeats, at the least. */
#define TD_SUP_TICK_MS 100
/* A worker that lived this long before it died is restarted at once. */
#define TD_SUP_STABLE_MS 5000
/* Back-off between restarts of a worker that keeps dying: doubling from
 * the first to the last. */
#define TD_SUP_BACKOFF_FIRST_MS 100
#define TD_SUP_BACKOFF_MAX_MS 10000
/* After the shutdown timeout, what a worker gets to finish before SIGKILL
 * (its own watchdog ends a stuck one at the timeout). */
#define TD_SUP_STOP_GRACE_MS 3000

typedef struct wslot {
    pid_t pid; /* 0: not running */
    int ready; /* it serves */
    int stuck; /* killed for a stall */
    uint64_t started;
    uint64_t restart_at; /* when a restart is due; 0: none */
    unsigned fails;      /* quick deaths in a row */
    uint64_t last_beat, beat_at;
    int http_fd, tls_fd; /* its own sockets (SO_REUSEPORT), or the shared ones */
    int ctl;             /* the supervisor's end of the worker's control socket; -1 */
    int hup;             /* the worker's end closed */
    int held_hup, held_usr1; /* came while it was starting: sent once it serves */
} wslot;

/* A tcp.listen socket the supervisor made for the workers: held for the
 * life of the server, so a worker that comes back gets the same one. */
typedef struct held_socket {
    char host[256];
    int port;     /* as asked */
    unsigned nth; /* for port 0: the first, second... of a load of the app */
    int fd;
} held_socket;
#define TD_SUP_MAX_HELD 64

typedef struct sup {
    const td_config *cfg;
    int n;
    wslot w[TD_CLI_MAX_WORKERS];
    td_shared *shared;
    int sigfd;
    int ready_r, ready_w;
    sigset_t old_mask;
    pid_t self;
    int reuseport;
    int started;   /* every worker served once: URLs printed */
    int stopping;  /* 1 after the first SIGTERM/SIGINT */
    uint64_t stop_deadline;
    int failed;    /* the exit code will be 1 */
    held_socket held[TD_SUP_MAX_HELD];
    int nheld;
} sup;

static uint64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

int td_supervisor_workers(const td_config *cfg) {
    if (cfg->workers > 0)
        return cfg->workers;
    /* The CPUs this process may run on (taskset, a container's cpuset). */
    cpu_set_t set;
    long n = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > TD_CLI_MAX_WORKERS ? TD_CLI_MAX_WORKERS : (int)n;
}

static int socket_port(int fd) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (fd < 0 || getsockname(fd, (struct sockaddr *)&ss, &len) != 0)
        return -1;
    if (ss.ss_family == AF_INET)
        return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
}

/* The sockets of one side (port; -1: off): one for all, or one per worker
 * with SO_REUSEPORT, every one on the port the first got. 0, or -1 after
 * saying why. */
static int make_sockets(sup *s, int port, int tls) {
    int first = -1;
    for (int i = 0; i < s->n; i++) {
        int *fd = tls ? &s->w[i].tls_fd : &s->w[i].http_fd;
        if (port < 0) {
            *fd = -1;
            continue;
        }
        if (i > 0 && !s->reuseport) {
            *fd = first;
            continue;
        }
        *fd = td_listen_socket(s->cfg->host, i > 0 ? socket_port(first) : port, s->reuseport);
        if (*fd < 0) {
            fprintf(stderr, "tendril: cannot listen on %s port %d: %s\n", s->cfg->host, port, uv_strerror(*fd));
            return -1;
        }
        if (i == 0)
            first = *fd;
    }
    return 0;
}

static void close_sockets(sup *s) {
    for (int i = 0; i < s->n; i++) {
        if (s->w[i].http_fd >= 0 && (s->reuseport || i == 0))
            close(s->w[i].http_fd);
        if (s->w[i].tls_fd >= 0 && (s->reuseport || i == 0))
            close(s->w[i].tls_fd);
    }
}

/* ---- tcp.listen sockets ----
 * A worker's td_listener_open asks the supervisor over its control socket
 * (SOCK_SEQPACKET: one message each way): "PORT HOST" out, an int (0 or a
 * negative error) back with the descriptor attached. It blocks the worker
 * for a round trip, at its top level or a reload. */

static int ctl_fd = -1; /* in a worker: its end */

static int ask_listen(const char *host, int port, unsigned nth, void *ud) {
    (void)ud;
    char req[300];
    int n = snprintf(req, sizeof req, "%d %u %s", port, nth, host);
    if (n < 0 || (size_t)n >= sizeof req)
        return UV_EINVAL;
    if (send(ctl_fd, req, (size_t)n, MSG_NOSIGNAL) < 0)
        return -errno;
    int rc;
    char cbuf[CMSG_SPACE(sizeof(int))];
    struct iovec iov = {.iov_base = &rc, .iov_len = sizeof rc};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf};
    ssize_t got;
    do
        got = recvmsg(ctl_fd, &msg, MSG_CMSG_CLOEXEC);
    while (got < 0 && errno == EINTR);
    if (got != (ssize_t)sizeof rc)
        return got < 0 ? -errno : UV_EPIPE;
    if (rc < 0)
        return rc;
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    if (!c || c->cmsg_type != SCM_RIGHTS)
        return UV_EPIPE;
    int fd;
    memcpy(&fd, CMSG_DATA(c), sizeof fd);
    return fd;
}

/* A request from worker i's control socket. */
static void serve_listen(sup *s, int i) {
    char req[301];
    ssize_t n = recv(s->w[i].ctl, req, sizeof req - 1, MSG_DONTWAIT);
    if (n == 0)
        s->w[i].hup = 1; /* it went: not polled until it is reaped */
    if (n <= 0)
        return;
    req[n] = '\0';
    int port = 0, at = 0;
    unsigned nth = 0;
    if (sscanf(req, "%d %u %n", &port, &nth, &at) != 2 || at == 0)
        return;
    const char *host = req + at;
    int rc = 0, fd = -1;
    for (int k = 0; k < s->nheld && fd < 0; k++)
        if (s->held[k].port == port && s->held[k].nth == nth && strcmp(s->held[k].host, host) == 0)
            fd = s->held[k].fd;
    if (fd < 0) {
        if (s->nheld == TD_SUP_MAX_HELD || strlen(host) >= sizeof s->held[0].host) {
            rc = UV_ENOBUFS;
        } else if ((rc = td_listen_socket(host, port, 0)) >= 0) {
            held_socket *h = &s->held[s->nheld++];
            snprintf(h->host, sizeof h->host, "%s", host);
            h->port = port;
            h->nth = nth;
            h->fd = fd = rc;
            rc = 0;
        }
    }
    char cbuf[CMSG_SPACE(sizeof(int))];
    memset(cbuf, 0, sizeof cbuf);
    struct iovec iov = {.iov_base = &rc, .iov_len = sizeof rc};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    if (rc == 0) {
        msg.msg_control = cbuf;
        msg.msg_controllen = sizeof cbuf;
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd, sizeof fd);
    }
    sendmsg(s->w[i].ctl, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
}

/* In the child: it becomes worker i. Never returns. */
static void run_worker(sup *s, int i, int ctl) {
    close(s->sigfd);
    close(s->ready_r);
    for (int j = 0; j < s->n; j++)
        if (s->w[j].ctl >= 0)
            close(s->w[j].ctl);
    for (int k = 0; k < s->nheld; k++)
        close(s->held[k].fd);
    ctl_fd = ctl;
    td_listen_set_source(ask_listen, NULL);
    /* A supervisor killed outright takes its workers along (they drain). */
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != s->self)
        _exit(1);
    /* A process group of its own: a terminal's Ctrl-C (or a kill of the
     * group) reaches the supervisor alone, which passes on one SIGTERM;
     * a worker hearing both would count the second as "stop waiting". */
    setpgid(0, 0);
    td_log_set_worker(i + 1);
    /* Watches of the worker this one replaces ended with it. */
    for (size_t k = 0; k < s->shared->ndicts; k++)
        td_shdict_watch(s->shared->dicts[k], (unsigned)i, 0);
    if (s->reuseport) {
        for (int j = 0; j < s->n; j++) {
            if (j == i)
                continue;
            if (s->w[j].http_fd >= 0)
                close(s->w[j].http_fd);
            if (s->w[j].tls_fd >= 0)
                close(s->w[j].tls_fd);
        }
    }
    /* A Ctrl-C that came before the group changed is the supervisor's to
     * handle: ignored while the mask opens, it is dropped. */
    signal(SIGINT, SIG_IGN);
    sigprocmask(SIG_SETMASK, &s->old_mask, NULL);
    signal(SIGINT, SIG_DFL);
    s->shared->self = (unsigned)i;
    td_worker w = {
        .id = i + 1,
        .count = s->n,
        .http_fd = s->w[i].http_fd,
        .tls_fd = s->w[i].tls_fd,
        .ready_fd = s->ready_w,
        .shared = s->shared,
    };
    td_log_close();
    exit(td_app_run(s->cfg, &w));
}

static int spawn(sup *s, int i) {
    wslot *w = &s->w[i];
    /* Output buffered before the fork must not be written twice. */
    fflush(stdout);
    fflush(stderr);
    atomic_store(&s->shared->slots[i].beat, 0);
    atomic_store(&s->shared->slots[i].pending, 0);
    s->shared->slots[i].stall[0] = '\0';
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
        td_log(TD_LOG_ERROR, "cannot start worker %d: socketpair: %s", i + 1, strerror(errno));
        return -1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        td_log(TD_LOG_ERROR, "cannot start worker %d: fork: %s", i + 1, strerror(errno));
        close(sv[0]);
        close(sv[1]);
        return -1;
    }
    if (pid == 0) {
        close(sv[0]);
        run_worker(s, i, sv[1]);
    }
    /* Both sides set the group, so that it is set whichever runs first. */
    setpgid(pid, pid);
    close(sv[1]);
    w->ctl = sv[0];
    w->hup = w->held_hup = w->held_usr1 = 0;
    w->pid = pid;
    w->ready = 0;
    w->stuck = 0;
    w->started = w->beat_at = now_ms();
    w->last_beat = 0;
    w->restart_at = 0;
    return 0;
}

/* ready_only: a worker still starting has no handler for sig yet (its
 * default action would end it); it gets sig once it serves. */
static void signal_all(sup *s, int sig, int ready_only) {
    for (int i = 0; i < s->n; i++) {
        wslot *w = &s->w[i];
        if (w->pid <= 0)
            continue;
        if (w->ready || !ready_only)
            kill(w->pid, sig);
        else if (sig == SIGHUP)
            w->held_hup = 1;
        else if (sig == SIGUSR1)
            w->held_usr1 = 1;
    }
}

/* Drains every worker; sig: the signal that asked (0: a failure, logged
 * already). */
static void stop(sup *s, int sig) {
    if (s->stopping) {
        /* A second Ctrl-C: the workers stop waiting for their requests. */
        if (sig == SIGINT)
            signal_all(s, SIGINT, 0);
        return;
    }
    s->stopping = 1;
    s->stop_deadline = now_ms() + (uint64_t)(s->cfg->shutdown_timeout * 1000.0) + TD_SUP_STOP_GRACE_MS;
    if (sig)
        td_log(TD_LOG_NOTICE, "%s: shutting down %d worker(s)", sig == SIGINT ? "SIGINT" : "SIGTERM", s->n);
    /* SIGTERM to all, whichever came: a worker's second SIGINT means "stop
     * waiting" (they have their own process groups: a terminal's Ctrl-C
     * reaches the supervisor alone). */
    signal_all(s, SIGTERM, 0);
}

static void on_signal(sup *s, int sig) {
    switch (sig) {
    case SIGHUP:
        td_log(TD_LOG_NOTICE, "SIGHUP: every worker reloads");
        signal_all(s, SIGHUP, 1);
        break;
    case SIGUSR1:
        td_log_reopen();
        td_log(TD_LOG_NOTICE, "SIGUSR1: log files reopened; every worker reopens its own");
        signal_all(s, SIGUSR1, 1);
        break;
    case SIGTERM:
    case SIGINT:
        stop(s, sig);
        break;
    default:
        break; /* SIGCHLD: reaped below */
    }
}

static void describe_exit(int status, char *buf, size_t size) {
    if (WIFEXITED(status))
        snprintf(buf, size, "exited with status %d", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        snprintf(buf, size, "was killed by signal %d (%s)", WTERMSIG(status), strsignal(WTERMSIG(status)));
    else
        snprintf(buf, size, "ended (status %#x)", status);
}

static void reap(sup *s) {
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        int i = 0;
        while (i < s->n && s->w[i].pid != pid)
            i++;
        if (i == s->n)
            continue;
        wslot *w = &s->w[i];
        int was_ready = w->ready;
        close(w->ctl);
        w->ctl = -1;
        w->pid = 0;
        w->ready = 0;
        char how[96];
        describe_exit(status, how, sizeof how);
        if (s->stopping) {
            int clean = WIFEXITED(status) && WEXITSTATUS(status) == 0;
            /* One still starting ends at SIGTERM's default action. */
            if (!clean && !(WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM && !was_ready))
                s->failed = 1;
            td_log(clean ? TD_LOG_INFO : TD_LOG_WARN, "worker %d (pid %d) %s", i + 1, (int)pid, how);
            continue;
        }
        if (!s->started) {
            /* It failed to start (the app's own error went to the log): the
             * others would too. */
            td_log(TD_LOG_ERROR, "worker %d (pid %d) %s before it served; stopping", i + 1, (int)pid, how);
            s->failed = 1;
            stop(s, 0);
            continue;
        }
        uint64_t now = now_ms();
        if (now - w->started >= TD_SUP_STABLE_MS)
            w->fails = 0;
        uint64_t delay = 0;
        if (w->fails > 0) {
            delay = (uint64_t)TD_SUP_BACKOFF_FIRST_MS << (w->fails - 1 < 10 ? w->fails - 1 : 10);
            if (delay > TD_SUP_BACKOFF_MAX_MS)
                delay = TD_SUP_BACKOFF_MAX_MS;
        }
        w->fails++;
        w->restart_at = now + delay;
        if (delay)
            td_log(TD_LOG_ERROR, "worker %d (pid %d) %s%s; restarting it in %.1f s", i + 1, (int)pid, how,
                   w->stuck ? " (stuck)" : "", (double)delay / 1000.0);
        else
            td_log(TD_LOG_ERROR, "worker %d (pid %d) %s%s; restarting it", i + 1, (int)pid, how,
                   w->stuck ? " (stuck)" : "");
    }
}

/* A worker whose loop stood still for --stall-kill is killed; its death
 * brings the replacement. */
static void check_stalls(sup *s, uint64_t now) {
    if (s->cfg->stall_kill <= 0 || s->stopping)
        return;
    uint64_t limit = (uint64_t)(s->cfg->stall_kill * 1000.0);
    for (int i = 0; i < s->n; i++) {
        wslot *w = &s->w[i];
        /* One still starting counts too: a top level stuck in a loop. */
        if (w->pid <= 0 || w->stuck)
            continue;
        td_worker_slot *slot = &s->shared->slots[i];
        uint64_t beat = atomic_load_explicit(&slot->beat, memory_order_relaxed);
        if (beat != w->last_beat) {
            w->last_beat = beat;
            w->beat_at = now;
            continue;
        }
        if (now - w->beat_at < limit)
            continue;
        char what[TD_SHARED_STALL_TEXT];
        memcpy(what, slot->stall, sizeof what);
        what[sizeof what - 1] = '\0';
        td_log(TD_LOG_CRIT, "worker %d (pid %d): its event loop has not turned for %.1f s%s%s%s: killing it",
               i + 1, (int)w->pid, (double)(now - w->beat_at) / 1000.0, what[0] ? " (" : "", what,
               what[0] ? ")" : " (no request named: the stall guard is off or saw none)");
        w->stuck = 1;
        kill(w->pid, SIGKILL);
    }
}

static void read_ready(sup *s, uint64_t now) {
    int recs[64][2]; /* id, pid: each written whole (less than PIPE_BUF) */
    ssize_t got = read(s->ready_r, recs, sizeof recs);
    for (ssize_t k = 0; k < got / (ssize_t)sizeof recs[0]; k++) {
        int i = recs[k][0] - 1;
        if (i < 0 || i >= s->n || s->w[i].pid != recs[k][1])
            continue; /* from a worker gone since */
        wslot *w = &s->w[i];
        w->ready = 1;
        if (w->held_hup)
            kill(w->pid, SIGHUP);
        if (w->held_usr1)
            kill(w->pid, SIGUSR1);
        w->held_hup = w->held_usr1 = 0;
        if (s->started)
            td_log(TD_LOG_NOTICE, "worker %d (pid %d) serves", i + 1, (int)w->pid);
    }
    if (s->started || s->stopping)
        return;
    for (int i = 0; i < s->n; i++)
        if (!s->w[i].ready)
            return;
    s->started = 1;
    int plain, tls;
    td_app_ports(s->cfg, &plain, &tls);
    if (plain >= 0)
        td_app_print_url("http", s->cfg->host, socket_port(s->w[0].http_fd));
    if (tls >= 0)
        td_app_print_url("https", s->cfg->host, socket_port(s->w[0].tls_fd));
    fflush(stdout);
    td_log(TD_LOG_INFO, "%d workers serve", s->n);
}

static int running(sup *s) {
    for (int i = 0; i < s->n; i++)
        if (s->w[i].pid > 0)
            return 1;
    return 0;
}

static void loop(sup *s) {
    for (;;) {
        uint64_t now = now_ms();
        if (s->stopping && !running(s))
            return;
        int timeout = TD_SUP_TICK_MS;
        for (int i = 0; i < s->n; i++) {
            wslot *w = &s->w[i];
            if (w->pid == 0 && w->restart_at && !s->stopping) {
                if (w->restart_at <= now) {
                    spawn(s, i);
                    if (w->pid == 0) /* fork failed: try again later */
                        w->restart_at = now + TD_SUP_BACKOFF_MAX_MS;
                } else if (w->restart_at - now < (uint64_t)timeout) {
                    timeout = (int)(w->restart_at - now);
                }
            }
        }
        struct pollfd pfd[2 + TD_CLI_MAX_WORKERS] = {{.fd = s->sigfd, .events = POLLIN},
                                                    {.fd = s->ready_r, .events = POLLIN}};
        for (int i = 0; i < s->n; i++)
            pfd[2 + i] = (struct pollfd){.fd = s->w[i].hup ? -1 : s->w[i].ctl, .events = POLLIN}; /* -1: ignored */
        int rc = poll(pfd, (nfds_t)(2 + s->n), timeout);
        if (rc < 0 && errno != EINTR) {
            td_log(TD_LOG_CRIT, "poll: %s", strerror(errno));
            s->failed = 1;
            stop(s, 0);
        }
        now = now_ms();
        if (rc > 0 && (pfd[0].revents & POLLIN)) {
            struct signalfd_siginfo si;
            while (read(s->sigfd, &si, sizeof si) == (ssize_t)sizeof si)
                on_signal(s, (int)si.ssi_signo);
        }
        if (rc > 0 && (pfd[1].revents & POLLIN))
            read_ready(s, now);
        for (int i = 0; rc > 0 && i < s->n; i++)
            if (pfd[2 + i].revents & POLLIN)
                serve_listen(s, i);
            else if (pfd[2 + i].revents & (POLLHUP | POLLERR))
                s->w[i].hup = 1; /* exiting: not polled until it is reaped */
        reap(s);
        check_stalls(s, now);
        if (s->stopping && now >= s->stop_deadline && running(s)) {
            td_log(TD_LOG_CRIT, "shutdown: worker(s) still running %.1f s after the shutdown timeout: killing them",
                   (double)TD_SUP_STOP_GRACE_MS / 1000.0);
            signal_all(s, SIGKILL, 0);
            s->failed = 1;
            s->stop_deadline = UINT64_MAX;
        }
    }
}

int td_supervisor_run(const td_config *cfg) {
    static sup s; /* large; one per process */
    memset(&s, 0, sizeof s);
    s.cfg = cfg;
    s.n = td_supervisor_workers(cfg);
    s.self = getpid();
    s.sigfd = s.ready_r = s.ready_w = -1;
    const char *mode = getenv("TENDRIL_REUSEPORT");
    s.reuseport = mode && strcmp(mode, "1") == 0;
    for (int i = 0; i < s.n; i++)
        s.w[i].http_fd = s.w[i].tls_fd = s.w[i].ctl = -1;
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_IGN);
    int rc = td_log_open_error(cfg->error_log);
    if (rc != 0) {
        fprintf(stderr, "tendril: cannot open the error log %s: %s\n", cfg->error_log, uv_strerror(rc));
        return 1;
    }
    td_log_set_worker(-1);
    int plain, tls;
    td_app_ports(cfg, &plain, &tls);
    if (make_sockets(&s, plain, 0) != 0 || make_sockets(&s, tls, 1) != 0) {
        close_sockets(&s);
        td_log_close();
        return 1;
    }
    if (tls >= 0) {
        /* One set of ticket keys for every worker: a session resumes
         * whichever worker accepts the next connection. */
        unsigned char keys[80];
        if (RAND_bytes(keys, sizeof keys) != 1) {
            fprintf(stderr, "tendril: tls: cannot make session-ticket keys\n");
            close_sockets(&s);
            td_log_close();
            return 1;
        }
        td_tls_set_ticket_keys(keys);
    }
    char err[256];
    const char *names[TD_CLI_MAX_SHARED];
    for (size_t i = 0; i < cfg->nshared; i++)
        names[i] = cfg->shared_names[i];
    s.shared = td_shared_new(names, cfg->shared_sizes, cfg->nshared, (unsigned)s.n, err, sizeof err);
    int fds[2];
    if (!s.shared || pipe2(fds, O_CLOEXEC | O_NONBLOCK) != 0) {
        fprintf(stderr, "tendril: %s\n", s.shared ? strerror(errno) : err);
        td_shared_free(s.shared);
        close_sockets(&s);
        td_log_close();
        return 1;
    }
    s.ready_r = fds[0];
    s.ready_w = fds[1];
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGUSR1);
    sigprocmask(SIG_BLOCK, &set, &s.old_mask);
    s.sigfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    if (s.sigfd < 0) {
        fprintf(stderr, "tendril: signalfd: %s\n", strerror(errno));
        s.failed = 1;
    } else {
        for (int i = 0; i < s.n && !s.failed; i++)
            if (spawn(&s, i) != 0)
                s.failed = 1;
        if (s.failed)
            stop(&s, 0);
        loop(&s);
        close(s.sigfd);
    }
    sigprocmask(SIG_SETMASK, &s.old_mask, NULL);
    close(s.ready_r);
    close(s.ready_w);
    close_sockets(&s);
    for (int k = 0; k < s.nheld; k++)
        close(s.held[k].fd);
    td_shared_free(s.shared);
    td_log(s.failed ? TD_LOG_WARN : TD_LOG_NOTICE, "every worker ended; exiting %d", s.failed ? 1 : 0);
    td_log_close();
    return s.failed ? 1 : 0;
}
