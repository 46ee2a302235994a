/* Stream sockets for the Lua I/O APIs (TCP clients and tcp.listen
 * connections): connect, buffered reads, writes, one deadline per wait, and
 * an idle mode for keep-alive pools. No Lua here.
 *
 * Ownership: a td_sock has two owners, the Lua userdata that names it and
 * its libuv handles. td_sock_close starts closing the handles; the memory
 * is freed only when the handles are closed AND the owner has let go
 * (td_sock_release, from the userdata's __gc), so a userdata never points
 * at freed memory and a close callback never touches a freed socket.
 *
 * At most one operation (connect, read, write) waits at a time; its
 * callback runs exactly once: when it is done, when it failed, when the
 * deadline passed (TD_ETIMEOUT) or when the socket closed (TD_ECLOSED). */
#ifndef TD_SOCK_H
#define TD_SOCK_H

#include <stdint.h>
#include <uv.h>

#include "buf.h"
#include "list.h"

typedef struct td_sock td_sock;
/* status: 0, a libuv error, TD_ETIMEOUT or TD_ECLOSED. */
typedef void (*td_sock_cb)(td_sock *s, int status, void *ud);

enum td_sock_op { TD_SOCK_IDLE, TD_SOCK_CONNECT, TD_SOCK_READ, TD_SOCK_WRITE };

struct td_sock {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_connect_t connect_req;
    td_buf in;     /* received and not yet consumed */
    int read_end;  /* 0 while the stream may deliver more; else UV_EOF or an error */
    int op;        /* the operation waiting */
    td_sock_cb cb;
    void *cb_ud;
    size_t write_pending; /* bytes in uv_write requests */
    int handles;          /* libuv handles not yet closed */
    void *owner_data;     /* for the owner (e.g. its parser) */
    void (*owner_free)(void *owner_data);
    td_list pool_link; /* all pooled sockets, for td_sock_close_pooled */
    unsigned connected : 1;
    unsigned closing : 1;
    unsigned released : 1;
    unsigned reading : 1;
    unsigned pooled : 1; /* idle in a keep-alive pool */
};

/* A new, unconnected socket, or NULL. */
td_sock *td_sock_new(uv_loop_t *loop);
/* A socket for a connection accepted on `server`; NULL on failure. */
td_sock *td_sock_accept(uv_loop_t *loop, uv_stream_t *server);
void td_sock_connect(td_sock *s, const struct sockaddr *addr, uint64_t timeout_ms, td_sock_cb cb, void *ud);
/* Waits until more bytes are in s->in (status 0), the stream ended
 * (UV_EOF or an error: s->read_end), or the deadline passed. */
void td_sock_read(td_sock *s, uint64_t timeout_ms, td_sock_cb cb, void *ud);
/* Writes all of data (copied when the kernel does not take it at once);
 * cb runs when the kernel has it all. */
void td_sock_write(td_sock *s, const char *data, size_t len, uint64_t timeout_ms, td_sock_cb cb, void *ud);
/* Drops the waiting operation without calling its callback. */
void td_sock_cancel(td_sock *s);
/* Idle in a pool: any input or the end of the stream closes the socket, so
 * does the idle deadline. */
void td_sock_pool(td_sock *s, uint64_t idle_ms);
/* Takes the socket out of a pool: 0 if it is still usable, TD_ECLOSED if not. */
int td_sock_unpool(td_sock *s);
/* Closes every pooled socket (shutdown: idle connections hold nothing). */
void td_sock_close_pooled(void);
void td_sock_close(td_sock *s);
/* The owner lets go; the memory goes once the handles are closed. */
void td_sock_release(td_sock *s);
static inline int td_sock_usable(const td_sock *s) { return s->connected && !s->closing; }

#endif
