/* The transport: TCP streams for every protocol tendril speaks, knowing
 * nothing of the protocol. Accepted connections (HTTP, tcp.listen
 * sessions) and connections this side opens (tcp.connect, the HTTP
 * client) are the same td_conn: reading, output written with try-write
 * then a queued write, the high-water mark and back-pressure, every
 * deadline, lingering close, and the count of accepted connections that
 * --max-connections bounds. Written once, here.
 *
 * Protocols: each connection carries a pointer to its own table of
 * callbacks (td_conn_ops), so a connection can change protocol in place
 * (HTTP, then raw frames after an upgrade).
 *
 * TLS sits under any protocol, here: a connection with a td_tls (tls.h)
 * gives its protocol plaintext in on_data and takes plaintext in its output
 * buffer; the transport feeds ciphertext to the engine and writes the
 * engine's wire buffer. A listener given certificates (td_listener_set_tls)
 * accepts TLS connections; a connection this side opens gets its td_tls
 * before connecting (td_conn_start_tls), or later to upgrade (STARTTLS).
 * For a client, on_connect comes when the handshake is done (or failed:
 * TD_ETLS, the reason in td_tls_error). One read may bring several pieces
 * of plaintext, also after the protocol paused reading during that read.
 *
 * Ownership:
 * - The transport owns every td_conn's memory. td_conn_close (or the end of
 *   td_conn_end) starts closing; on_close runs once, at once; the memory is
 *   freed in the uv_close callback, after libuv finished every write.
 * - Other layers keep a connection across loop turns only as a handle
 *   (slot, serial): td_conn_lookup gives the connection while that serial is
 *   current, NULL once it changed (td_conn_bump, a close) or the memory went.
 *   A pointer may be held only by something on_close detaches (a wait record
 *   the protocol ends there).
 * - Output given by reference (td_conn_write_ref) stays the caller's until
 *   the release callback runs, which it does exactly once.
 *
 * Lua: the transport never calls Lua. Around each callback into a protocol
 * it calls the enter/leave hooks, so the layer that runs Lua (the vm) can
 * hold what the callbacks posted until the callback returned. */
#ifndef TD_CONN_H
#define TD_CONN_H

#include <stdint.h>
#include <uv.h>

#include "buf.h"
#include "deadlines.h"
#include "list.h"

#define TD_CONN_READ_BUFFER 65536
/* Output blocks: most responses fit in one. */
#define TD_CONN_OUT_BLOCK 16384

typedef struct td_transport td_transport;
typedef struct td_listener td_listener;
typedef struct td_conn td_conn;
struct td_tls;
struct td_tls_server;

typedef struct td_conn_ops {
    /* on_drain comes once unsent output is down to this many bytes. */
    size_t low_water;
    /* Bytes arrived, in the transport's shared buffer: valid during the
     * call only (the protocol keeps what it needs). */
    void (*on_data)(td_conn *c, const char *data, size_t len);
    /* The peer closed its side (err is UV_EOF) or reading failed. */
    void (*on_eof)(td_conn *c, int err);
    /* The deadline set by td_conn_set_deadline passed. */
    void (*on_timeout)(td_conn *c);
    /* After td_conn_want_drain: unsent output fell to the low-water mark. */
    void (*on_drain)(td_conn *c);
    /* After td_conn_defer: the loop turn is ending (before output leaves). */
    void (*on_deferred)(td_conn *c);
    /* After td_conn_connect: 0 or a libuv error; with TLS, when the
     * handshake is done (0) or failed (TD_ETLS). After td_conn_start_tls
     * on an open connection: the same, for the upgrade. */
    void (*on_connect)(td_conn *c, int status);
    /* The connection stopped being usable (a close or an end began): drop
     * every pointer to it. Once; no callback follows. c->close_reason says
     * why: 0 (this side closed it), TD_ETIMEOUT (the send timeout) or a
     * libuv error (writing failed). */
    void (*on_close)(td_conn *c);
} td_conn_ops;

/* Sized for an idle keep-alive connection to cost what nginx's does: the
 * transport is found through the loop (tcp.loop->data), the slot table
 * lists the connections, one list serves deferred work and output, and the
 * low-water mark is the protocol's. */
struct td_conn {
    uv_tcp_t tcp;
    const td_conn_ops *ops; /* the protocol spoken now */
    void *owner;            /* who made it: a listener's owner, or the connector */
    td_list plink;          /* tp->pending: deferred work or output for the turn's end */
    td_heap_node timer;       /* keyed by the earlier of the two deadlines */
    uint32_t slot;
    uint32_t send_timeout_ms; /* 0: none */
    uint64_t io_deadline;     /* 0: none */
    uint64_t send_deadline;   /* 0: nothing queued, or no send timeout */
    td_buf out;          /* output: plaintext under TLS */
    struct td_tls *tls;  /* NULL: plain */
    uint32_t out_epoch; /* bumped whenever out's bytes leave for the socket */
    int16_t close_reason;
    /* The protocol's own state, where a struct of its own would cost a
     * word (HTTP keeps its phase and flags here). */
    uint8_t proto_state;
    uint8_t proto_flags;
    unsigned want_flush : 1; /* output waits in out */
    unsigned want_defer : 1; /* on_deferred is due */
    unsigned accepted : 1;   /* counts against max_conns */
    unsigned closed : 1;   /* on_close ran */
    unsigned closing : 1;  /* uv_close called */
    unsigned ending : 1;   /* graceful close: writing out, then lingering */
    unsigned reading : 1;
    unsigned want_drain : 1;
    unsigned connected : 1;
    unsigned read_wanted : 1;   /* the protocol wants to read (its last pause or resume) */
    unsigned throttled : 1;     /* TLS: reading stopped until the peer takes what it made us send */
    unsigned shutdown_sent : 1; /* the half-close of a graceful end was asked */
    unsigned held : 1;          /* reading held: a td_conn_hold in tp->holds watches for the peer's leaving */
};

/* A listener accepts with its own accept4 loop on a uv_poll_t: libuv's
 * listener answers EMFILE by accepting and closing every queued client
 * without telling anyone. Here EMFILE pauses accepting for a moment (one
 * log line per episode) and the clients wait in the backlog. */
struct td_listener {
    uv_poll_t poll;
    int fd;
    td_transport *tp;
    const td_conn_ops *ops;
    size_t conn_size; /* sizeof(td_conn) or a struct that starts with one */
    void *owner;
    /* A connection was accepted and reads are on. */
    void (*on_open)(td_listener *l, td_conn *c);
    td_list wlink; /* tp->waiting while max_conns holds it back */
    struct td_tls_server *tls; /* a reference: accepted connections speak TLS */
    /* Written as it is, then the connection ends, when a TLS listener's
     * client sends something other than a TLS handshake (an HTTP request). */
    const char *plain_reply;
    size_t plain_reply_len;
    uv_timer_t retry; /* after EMFILE */
    unsigned open : 1;     /* its handles are open */
    unsigned polling : 1;  /* the poll handle watches the socket */
    unsigned starved : 1;  /* EMFILE: retrying on the timer */
    int closing_parts;     /* handles still closing */
    void (*on_closed)(td_listener *l);
};

typedef struct td_conn_slot {
    td_conn *conn; /* NULL while free */
    uint32_t serial;
    uint32_t next_free;
} td_conn_slot;

struct td_transport {
    uv_loop_t *loop;
    uv_prepare_t turn; /* deferred work, then output, once per loop turn */
    td_deadlines deadlines; /* every connection's td_conn.timer */
    td_list pending;    /* td_conn.plink */
    size_t ndeferred;   /* of those, the ones with want_defer */
    size_t nflush;      /* ... and those with want_flush */
    td_list waiting;    /* listeners held back by max_conns */
    td_list holds;      /* td_conn_hold: connections whose reading is held */
    size_t nholds, max_holds;
    size_t nconns;      /* open, both kinds */
    size_t peak;        /* the most open since the owner last reset it */
    size_t naccepted;
    size_t max_conns; /* accepted connections; 0: no limit but the open-file limit */
    unsigned max_conns_auto : 1; /* max_conns follows the open-file limit (td_transport_fd_budget) */
    td_conn_slot *slots; /* also the list of every open connection */
    uint32_t nslots, free_slot;
    td_buf_pool out_pool;
    void (*enter)(void *ud);
    void (*leave)(void *ud);
    void *hook_ud;
    /* Called when the last accepted connection's memory went (a drain waits
     * for it). */
    void (*on_empty)(td_transport *tp);
    void *data;
    unsigned handles_open : 1;
    char *plain; /* TLS: decrypted input, TD_CONN_READ_BUFFER bytes, made on first use */
    char rbuf[TD_CONN_READ_BUFFER]; /* shared: protocols take what they need at once */
};

/* ---- the transport ---- */
/* One per loop: it takes loop->data. Returns 0 or UV_ENOMEM. */
int td_transport_init(td_transport *tp, uv_loop_t *loop, size_t max_conns);
/* Closes every connection (abruptly) and the transport's handles; run the
 * loop to let the close callbacks come, then td_transport_destroy. */
void td_transport_close(td_transport *tp);
void td_transport_destroy(td_transport *tp);
/* Calls fn for every open connection; fn may close it. */
void td_transport_foreach(td_transport *tp, void (*fn)(td_conn *c, void *ud), void *ud);

/* ---- listening ---- */
/* Connections the open-file limit allows while keeping a reserve of
 * descriptors for what handlers open themselves (sockets, files, pipes):
 * an eighth of the limit, 16 to 4096, plus 32 for the process. */
size_t td_transport_fd_budget(void);
/* A listening socket bound to host:port (a name is resolved, blocking)
 * with the system's largest backlog, non-blocking and close-on-exec;
 * reuseport sets SO_REUSEPORT first. The descriptor, or a negative libuv
 * error. */
int td_listen_socket(const char *host, int port, int reuseport);
/* Accepts on fd (a listening socket, which the listener now owns: closing
 * the listener closes it); accepted connections get ops and conn_size,
 * then on_open. A negative fd is td_listen_socket's error, returned.
 * Returns 0 or a libuv error (fd closed); either way
 * td_listener_close ends it. */
int td_listener_adopt(td_listener *l, td_transport *tp, int fd, const td_conn_ops *ops, size_t conn_size,
                      void (*on_open)(td_listener *l, td_conn *c), void *owner);
/* Where td_listener_open gets its sockets, for the process (NULL:
 * td_listen_socket): a worker asks its supervisor, which holds every
 * listening socket of the server (supervisor.h). nth numbers the port-0
 * listeners opened since td_listen_source_begin (a load of the app), so
 * that the k-th one is the same socket in every worker and every load. */
void td_listen_set_source(int (*source)(const char *host, int port, unsigned nth, void *ud), void *ud);
void td_listen_source_begin(void);
/* A socket from the source, then td_listener_adopt. */
int td_listener_open(td_listener *l, td_transport *tp, const char *host, int port, const td_conn_ops *ops,
                     size_t conn_size, void (*on_open)(td_listener *l, td_conn *c), void *owner);
/* The bound port, or -1. */
int td_listener_port(td_listener *l);
/* Connections accepted from now on speak TLS with s's certificates (the
 * listener takes a reference; NULL: plain again). plain_reply: see
 * td_listener; it must outlive the listener. */
void td_listener_set_tls(td_listener *l, struct td_tls_server *s, const char *plain_reply, size_t len);
/* Stops listening; connections carry on. l's memory is the caller's again
 * when on_closed runs (at once if l never opened; NULL: nobody needs to
 * know, l lives on in its owner). Once per td_listener_open, unless
 * on_closed is NULL. */
void td_listener_close(td_listener *l, void (*on_closed)(td_listener *l));

/* ---- connecting ---- */
/* A new connection to addr, speaking ops; on_connect follows (never inside
 * this call). NULL and *err on failure. */
td_conn *td_conn_connect(td_transport *tp, const struct sockaddr *addr, const td_conn_ops *ops, size_t conn_size,
                         void *owner, int *err);

/* TLS on a client connection, which takes t: before on_connect (from
 * td_conn_connect), or on an open connection with no output pending
 * (STARTTLS), when on_connect follows the handshake (never inside this
 * call). 0, or an error (t is freed; the connection carries on plain). */
int td_conn_start_tls(td_conn *c, struct td_tls *t);

/* The transport c belongs to (one per loop). */
static inline td_transport *td_conn_tp(const td_conn *c) { return c->tcp.loop->data; }

/* ---- handles ---- */
static inline uint32_t td_conn_serial(const td_conn *c) { return td_conn_tp(c)->slots[c->slot].serial; }
/* A new serial: handles given out so far stop finding c. */
static inline void td_conn_bump(td_conn *c) { td_conn_tp(c)->slots[c->slot].serial++; }
static inline td_conn *td_conn_lookup(td_transport *tp, uint32_t slot, uint32_t serial) {
    if (slot >= tp->nslots || tp->slots[slot].serial != serial)
        return NULL;
    return tp->slots[slot].conn;
}

/* ---- deadlines ---- */
/* on_timeout once `ms` from now (replaces the earlier deadline). */
void td_conn_set_deadline(td_conn *c, uint64_t ms);
void td_conn_clear_deadline(td_conn *c);
/* Queued output that makes no progress for this long closes the
 * connection (close_reason TD_ETIMEOUT). Progress, not completion: a slow
 * reader is fine. 0: never. */
void td_conn_set_send_timeout(td_conn *c, uint64_t ms);

/* ---- output ---- */
/* The output buffer, with room for `extra` more bytes; it leaves at the end
 * of the read callback or loop turn. NULL when out of memory. */
td_buf *td_conn_out(td_conn *c, size_t extra);
/* Writes what is buffered now. */
void td_conn_flush(td_conn *c);
/* Writes what is buffered, then len bytes at data without copying them.
 * Returns 0 when the kernel took it all at once (data is free now), 1 when
 * data is held: release(ud) runs once libuv is done with it (also when the
 * connection closes first), or a negative code (nothing is held; the
 * connection is closing). */
int td_conn_write_ref(td_conn *c, const char *data, size_t len, void (*release)(void *ud), void *ud);
/* Sends up to len bytes of the file fd from *offset (advanced by what was
 * taken), without blocking and holding at most one output block of it:
 * plain connections call sendfile(2) on the non-blocking socket until it
 * is full (or a burst went, so one fast client cannot hold the loop), then
 * read one block of the file into the output, whose queued write waits for
 * writability under the send timeout; TLS connections read the file a
 * block at a time into the output (plaintext) while the kernel takes what
 * the engine makes. The file is read on the loop thread: a regular file
 * served again and again is in the page cache (as nginx without aio does).
 * Returns the bytes taken (0 when output is still unsent: call again after
 * on_drain, see td_conn_want_drain), TD_ESHORT when the file ended before
 * len (it shrank: the caller ends the connection), or a negative error
 * (the connection is closing). fd stays the caller's. */
int64_t td_conn_send_file(td_conn *c, int fd, int64_t *offset, uint64_t len);
/* Bytes not yet handed to the kernel: buffered plus queued. */
size_t td_conn_unsent(td_conn *c);
/* One on_drain once td_conn_unsent(c) <= c->ops->low_water. */
void td_conn_want_drain(td_conn *c);
/* One on_deferred late in this loop turn, outside any callback c is in now. */
void td_conn_defer(td_conn *c);

/* ---- reading ---- */
void td_conn_pause_reading(td_conn *c);
/* Resumes reading (and ends a hold). */
void td_conn_resume_reading(td_conn *c);
/* Pauses reading for longer than a moment (a request body waiting for its
 * handler) while still seeing the peer leave: its FIN or a reset calls
 * on_eof, though what it sent stays unread in the kernel. A second
 * descriptor of the socket is watched for EPOLLRDHUP (libuv's
 * UV_DISCONNECT), which needs no read; the hold ends with
 * td_conn_resume_reading or the close. Holds are bounded (tp->max_holds:
 * half the descriptors kept back from connections); past that, or without
 * a descriptor to spare, it is a plain pause. */
void td_conn_hold_reading(td_conn *c);

/* ---- closing ---- */
/* Abrupt: pending output is dropped. */
void td_conn_close(td_conn *c);
/* Graceful: write what is buffered, half-close, discard input until the
 * peer closes or a short linger passes, then close. This keeps the kernel
 * from answering unread input with a reset that would destroy the answer in
 * flight. */
void td_conn_end(td_conn *c);

/* The peer's address ("127.0.0.1", "::1") into buf. 0 or a libuv error. */
int td_conn_peer(td_conn *c, char *buf, size_t size);

#endif
