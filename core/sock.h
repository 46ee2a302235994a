/* Byte streams for the Lua I/O APIs (tcp.connect, the HTTP client,
 * tcp.listen sessions): a protocol over the transport that buffers input
 * and runs one operation at a time (connect, read, write), each with its
 * own deadline, plus an idle mode for keep-alive pools. No Lua here.
 *
 * Ownership: a td_sock is a td_conn (the transport owns its memory). Lua
 * holds it as a handle (td_sock_find); the one operation waiting holds a
 * pointer, which is safe because closing ends that operation first. The
 * owner_data (a response reader) is freed when the socket closes.
 *
 * An operation's callback runs exactly once: when it is done, when it
 * failed, when its deadline passed (TD_ETIMEOUT) or when the socket closed
 * (TD_ECLOSED, or TD_ETIMEOUT after the send timeout). It never runs inside
 * the call that started the operation unless that call says so. */
#ifndef TD_SOCK_H
#define TD_SOCK_H

#include <stdint.h>
#include <uv.h>

#include "buf.h"
#include "conn.h"
#include "list.h"

typedef struct td_sock td_sock;
/* status: 0, a libuv error, TD_ETIMEOUT or TD_ECLOSED. */
typedef void (*td_sock_cb)(td_sock *s, int status, void *ud);

enum td_sock_op { TD_SOCK_IDLE, TD_SOCK_CONNECT, TD_SOCK_READ, TD_SOCK_WRITE };

struct td_sock {
    td_conn conn;
    td_buf in;    /* received and not yet consumed */
    int read_end; /* 0 while the stream may deliver more; else UV_EOF or an error */
    int op;       /* the operation waiting */
    td_sock_cb cb;
    void *cb_ud;
    void *owner_data; /* for the owner (e.g. its response reader) */
    void (*owner_free)(void *owner_data);
    td_list pool_link; /* every pooled socket, for td_sock_close_pooled */
    unsigned pooled : 1; /* idle in a keep-alive pool */
};

/* The tag in td_conn.owner of every socket. */
extern const char td_sock_owner;

/* The socket a handle names, or NULL once it closed. */
static inline td_sock *td_sock_find(td_transport *tp, uint32_t slot, uint32_t serial) {
    td_conn *c = td_conn_lookup(tp, slot, serial);
    return c && c->owner == &td_sock_owner ? (td_sock *)c : NULL;
}

/* Connects to addr; cb follows, never inside this call. NULL and *err when
 * the connection cannot start. */
td_sock *td_sock_connect(td_transport *tp, const struct sockaddr *addr, uint64_t timeout_ms, td_sock_cb cb,
                         void *ud, int *err);
/* Upgrades an open socket to TLS (STARTTLS), which takes t: cb follows the
 * handshake (0, TD_ETLS with the reason in td_tls_error, TD_ETIMEOUT,
 * TD_ECLOSED), maybe inside this call when it cannot start. */
void td_sock_starttls(td_sock *s, struct td_tls *t, uint64_t timeout_ms, td_sock_cb cb, void *ud);
/* Listens on ip:port; each accepted socket goes to on_open. */
int td_sock_listen(td_listener *l, td_transport *tp, const char *ip, int port,
                   void (*on_open)(td_listener *l, td_conn *c));
/* Waits until more bytes are in s->in (status 0), the stream ended
 * (UV_EOF or an error: s->read_end), or the deadline passed. */
void td_sock_read(td_sock *s, uint64_t timeout_ms, td_sock_cb cb, void *ud);
/* Writes all of data (copied); cb runs when the kernel has it all, maybe
 * inside this call. */
void td_sock_write(td_sock *s, const char *data, size_t len, uint64_t timeout_ms, td_sock_cb cb, void *ud);
/* Drops the waiting operation without calling its callback. */
void td_sock_cancel(td_sock *s);
/* Takes n bytes of input. */
void td_sock_consume(td_sock *s, size_t n);
/* Idle in a pool: any input or the end of the stream closes the socket, so
 * does the idle deadline. */
void td_sock_pool(td_sock *s, uint64_t idle_ms);
/* Takes the socket out of a pool: 0 if it is still usable, TD_ECLOSED if not. */
int td_sock_unpool(td_sock *s);
/* Closes every pooled socket (shutdown: idle connections hold nothing). */
void td_sock_close_pooled(void);
/* Hands the connection over to another protocol (a WebSocket after its
 * handshake): input not yet consumed moves to *rest (the caller's), the
 * owner data is freed, and the caller sets the connection's ops and owner
 * at once, so that the socket's handle stops finding it. No operation may
 * be waiting. */
void td_sock_release(td_sock *s, td_buf *rest);
static inline void td_sock_close(td_sock *s) { td_conn_close(&s->conn); }
static inline int td_sock_usable(const td_sock *s) { return s->conn.connected && !s->conn.closed; }

#endif
