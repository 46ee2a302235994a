/* TCP servers and their connections, knowing nothing of the protocol spoken.
 *
 * Ownership: a td_server owns its listener and every td_conn it accepted.
 * A connection's memory is released only in its uv_close callback, and then
 * goes back to the server's free list, not to malloc: a higher layer that
 * hands out (pointer, serial) pairs can always read `serial` to find out
 * whether the connection it meant is still the one there. The memory is
 * freed by td_server_destroy, after every Lua reference is gone.
 *
 * Output is appended to the connection's `out` buffer and written once per
 * loop turn (uv_try_write first, a queued uv_write for what the socket did
 * not take), so a response built in several pieces costs one write. */
#ifndef TD_CONN_H
#define TD_CONN_H

#include <stdint.h>
#include <uv.h>

#include "buf.h"
#include "list.h"

#define TD_CONN_MAX_QUEUES 4
#define TD_CONN_READ_BUFFER 65536

typedef struct td_server td_server;
typedef struct td_conn td_conn;

typedef struct td_conn_ops {
    /* Bytes to allocate per connection: sizeof(td_conn) or a struct that
     * starts with a td_conn. */
    size_t conn_size;
    /* A connection was accepted and reads are on. */
    void (*on_open)(td_conn *c);
    /* Bytes arrived; `data` is valid during the call only. */
    void (*on_data)(td_conn *c, const char *data, size_t len);
    /* The peer closed its side (err is UV_EOF) or reading failed. */
    void (*on_eof)(td_conn *c, int err);
    /* The deadline set by td_conn_set_timeout passed. */
    void (*on_timeout)(td_conn *c);
    /* After td_conn_defer: the loop turn is ending (before output is written). */
    void (*on_deferred)(td_conn *c);
    /* After td_conn_want_drain: the write queue fell to the low-water mark. */
    void (*on_drain)(td_conn *c);
    /* The connection stopped being usable (close or end began): drop every
     * reference to it. Called exactly once; no callback follows. */
    void (*on_close)(td_conn *c);
} td_conn_ops;

struct td_conn {
    uv_tcp_t tcp;
    td_server *server;
    td_list link;  /* server->conns */
    td_list tlink; /* a timeout queue */
    td_list flink; /* server->flush: output waiting */
    td_list dlink; /* server->deferred */
    td_list wlink; /* server->sending: output queued in libuv */
    uint64_t send_deadline;
    uint64_t deadline;
    td_buf out;
    /* Never reset while the server lives: bumped when the connection
     * closes and by protocols at each request (see the ownership note). */
    uint32_t serial;
    uint8_t queue;
    unsigned closed : 1;  /* on_close ran */
    unsigned closing : 1; /* uv_close called */
    unsigned ending : 1;  /* graceful close: writing out, then lingering */
    unsigned reading : 1;
    unsigned want_drain : 1;
};

typedef struct td_timeout_queue {
    td_list conns; /* ordered by deadline: every entry has the same duration */
    uint64_t ms;
} td_timeout_queue;

struct td_server {
    uv_loop_t *loop;
    const td_conn_ops *ops;
    void *data; /* the protocol's */
    uv_tcp_t listener;
    uv_prepare_t flusher;
    uv_timer_t sweeper;
    uint64_t sweep_due;
    td_list conns;
    td_list flush;
    td_list deferred;
    td_list sending; /* ordered by send_deadline (one duration for all) */
    uint64_t send_timeout_ms; /* 0: none */
    size_t nconns;
    size_t max_conns; /* 0: no limit but the open-file limit */
    td_timeout_queue queues[TD_CONN_MAX_QUEUES];
    int nqueues;
    void **spare; /* connection memory kept for reuse */
    size_t nspare, spare_cap;
    td_buf_pool out_pool;
    /* Called when the last connection's memory came back (shutdown waits for it). */
    void (*on_empty)(td_server *s);
    unsigned listening : 1;
    unsigned accept_waiting : 1;
    unsigned handles_open : 2;
    char rbuf[TD_CONN_READ_BUFFER]; /* shared: read callbacks hand data over at once */
};

/* Returns 0 or a libuv error. */
int td_server_init(td_server *s, uv_loop_t *loop, const td_conn_ops *ops, size_t max_conns);
/* A connection whose queued output makes no progress for this long is
 * closed (0: never). Progress, not completion: a slow reader is fine. */
void td_server_set_send_timeout(td_server *s, uint64_t ms);
/* Adds a deadline queue whose entries expire after `ms`; returns its index. */
int td_server_add_queue(td_server *s, uint64_t ms);
/* Binds host:port (a name is resolved) and listens with the system's largest
 * backlog. Returns 0 or a libuv error. */
int td_server_listen(td_server *s, const char *host, int port);
/* The bound port, or -1. */
int td_server_port(td_server *s);
/* Closes the listener; connections carry on. */
void td_server_stop_listening(td_server *s);
/* Closes the listener, every connection (abruptly) and the server's handles.
 * The memory goes once the loop has run the close callbacks; then call
 * td_server_destroy. */
void td_server_close(td_server *s);
void td_server_destroy(td_server *s);

/* Sets up the links of zeroed connection memory for server s (accepting
 * does it; unit tests that build a connection by hand call it too). */
void td_conn_init(td_conn *c, td_server *s);

/* Arms (or moves) c's deadline: now + the queue's duration. */
void td_conn_set_timeout(td_conn *c, int queue);
void td_conn_clear_timeout(td_conn *c);

/* The output buffer, with room ensured for `extra` bytes; written at the end
 * of the loop turn. NULL when out of memory. */
td_buf *td_conn_out(td_conn *c, size_t extra);
/* Calls on_deferred once, late in this loop turn, outside of any callback
 * the connection is in now. */
void td_conn_defer(td_conn *c);
/* Writes the output buffer now. */
void td_conn_flush(td_conn *c);
/* Bytes libuv still holds for writing. */
size_t td_conn_write_queue(td_conn *c);
/* Asks for one on_drain call once the write queue has fallen low. */
void td_conn_want_drain(td_conn *c);
void td_conn_pause_reading(td_conn *c);
void td_conn_resume_reading(td_conn *c);

/* Abrupt close: pending output is dropped. */
void td_conn_close(td_conn *c);
/* Graceful close: write what is buffered, half-close, discard input until
 * the peer closes or a short linger time passes, then close. This keeps the
 * kernel from answering unread input with a reset that would destroy the
 * response in flight. */
void td_conn_end(td_conn *c);

/* Writes the peer's address ("127.0.0.1", "::1") into buf. Returns 0 or a
 * libuv error. */
int td_conn_peer(td_conn *c, char *buf, size_t size);

#endif
