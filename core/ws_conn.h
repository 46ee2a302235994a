/* WebSocket connections: the protocol a td_conn speaks after the upgrade
 * (a server's connection, after td_http_upgrade) or after a client's
 * handshake (a socket's connection). It reads frames with the codec of
 * ws.h, reassembles messages and queues them for the layer above, answers
 * pings at once, runs the closing handshake, watches for dead peers
 * (idle timeout, pings) and writes frames (masked on a client), with
 * permessage-deflate when it was negotiated (ws_deflate.h). No Lua.
 *
 * Ownership:
 * - A td_ws_conn is its owner's memory (the API layer keeps it in a Lua
 *   userdata). td_ws_conn_attach makes the connection point to it (as its
 *   c->owner) until the connection is gone: then on_gone runs and w->c is
 *   NULL. The owner frees its record only after that, or after calling
 *   td_ws_conn_abort, which closes the connection without calling a hook.
 * - Complete messages are td_ws_msg records the queue owns until
 *   td_ws_conn_next hands one over (the caller frees it with free()).
 * - The hooks run inside transport callbacks: they must not run Lua (they
 *   post resumes).
 *
 * Bounds: a message is at most max_message bytes (else close 1009); the
 * queue of complete messages holds about one max_message: past it reading
 * pauses until the owner takes messages, so a peer that sends faster than
 * the handler reads is slowed by TCP, not buffered. */
#ifndef TD_WS_CONN_H
#define TD_WS_CONN_H

#include <stdint.h>

#include "buf.h"
#include "conn.h"
#include "list.h"
#include "ws.h"

/* Unsent output past which a sender waits; on_drain at the low mark. */
#define TD_WS_HIGH_WATER (256 * 1024)
#define TD_WS_LOW_WATER (64 * 1024)

typedef struct td_ws_conn td_ws_conn;

typedef struct td_ws_msg {
    struct td_ws_msg *next;
    size_t len;
    uint8_t opcode; /* TD_WS_TEXT or TD_WS_BINARY */
    char data[];
} td_ws_msg;

typedef struct td_ws_config {
    uint64_t max_message;      /* bytes */
    uint32_t idle_timeout_ms;  /* no frame from the peer for this long: closed (0: never) */
    uint32_t ping_interval_ms; /* a ping after this long without a frame; no answer by the next: closed (0: none) */
    uint32_t close_timeout_ms; /* after our close frame, the peer's close is awaited this long */
    /* permessage-deflate was negotiated: the window bits of what we
     * compress (9 to 15); 0: no compression. */
    uint8_t deflate_bits;
} td_ws_config;

typedef struct td_ws_hooks {
    /* A message was queued, or the stream ended (td_ws_conn_ended). */
    void (*on_message)(td_ws_conn *w);
    /* After td_ws_conn_want_drain: unsent output is down to the low mark. */
    void (*on_drain)(td_ws_conn *w);
    /* The deadline of td_ws_conn_set_recv_deadline passed. */
    void (*on_recv_timeout)(td_ws_conn *w);
    /* The connection is gone (w->c is NULL from now on): the end, if the
     * owner did not hear it yet, comes with on_message first. */
    void (*on_gone)(td_ws_conn *w);
} td_ws_hooks;

enum td_ws_state {
    TD_WS_OPEN,
    TD_WS_CLOSE_SENT,     /* our close frame went; the peer's is awaited */
    TD_WS_DONE,           /* the closing handshake is over, or the connection failed */
};

/* Kept small: ten thousand idle WebSockets hold one each. Buffers exist
 * only while something is in them. */
struct td_ws_conn {
    td_conn *c; /* NULL once the connection is gone */
    const td_ws_hooks *hooks;
    td_list link; /* the owner's list of open WebSockets */
    td_ws_config cfg;
    td_ws_frame f;   /* the frame being read */
    uint64_t f_got;  /* its payload bytes so far */
    td_buf msg;      /* the data message so far, unmasked */
    td_ws_msg *head, *tail;
    size_t queued; /* bytes in the queue */
    /* Deadlines, loop time; 0: none. */
    uint64_t last_input, recv_due, close_due;
    uint8_t *ctl;  /* a control frame's payload so far (125 bytes, while one arrives) */
    char *reason;  /* the close reason (see close_code), NULL: none */
    /* How the connection ended: the peer's close code (1005: none given),
     * or ours when we failed it (1002, 1007, 1009), 1006 when it broke. */
    uint16_t close_code;
    uint8_t hdr[TD_WS_MAX_HEADER];
    uint8_t hdr_len;    /* header bytes kept from an earlier read */
    uint8_t ctl_len;
    uint8_t reason_len;
    uint8_t msg_op;     /* the data message being assembled, 0: none */
    uint8_t state;      /* td_ws_state */
    td_ws_utf8 utf8;
    unsigned in_frame : 1;     /* the header is parsed, its payload comes */
    unsigned msg_deflated : 1; /* the message is compressed (RSV1 on its first frame) */
    unsigned client : 1;       /* frames we send are masked */
    unsigned ping_out : 1;     /* a ping of ours is unanswered (no frame came since) */
    unsigned paused : 1;       /* reading stopped: the queue is full */
    unsigned ended : 1;        /* the owner heard the end (on_message after the end) */
    unsigned want_drain : 1;
};

/* Switches c to the WebSocket protocol with w (zeroed by the owner) as its
 * state (client: 1 on the side that opened the connection). `rest` is
 * input that came before the switch: it is read now, so hooks may run (the
 * owner must be ready for them); the buffer stays the caller's. Not inside
 * a callback of c's. */
void td_ws_conn_attach(td_ws_conn *w, td_conn *c, int client, const td_ws_config *cfg, const td_ws_hooks *hooks,
                       const td_buf *rest);

/* The next complete message, or NULL. The caller frees it. */
td_ws_msg *td_ws_conn_next(td_ws_conn *w);
/* 1 once no message will come (after the queue is empty): the peer's close
 * came, we failed the connection, or it is gone. */
static inline int td_ws_conn_ended(const td_ws_conn *w) { return w->state == TD_WS_DONE || !w->c; }

/* A frame: opcode and payload (a whole message), compressed when
 * permessage-deflate was negotiated and it is worth it. Copied (and masked
 * on a client) unless `release` is given, when a server's uncompressed
 * payload is written by reference (td_conn_write_ref: 0 when it left at
 * once, 1 when release(ud) will run). TD_ECLOSED once our close frame went
 * or the connection is gone. */
int td_ws_conn_send(td_ws_conn *w, int opcode, const char *data, size_t len, void (*release)(void *ud), void *ud);
/* Bytes not yet handed to the kernel. */
static inline size_t td_ws_conn_unsent(td_ws_conn *w) { return w->c ? td_conn_unsent(w->c) : 0; }
/* One on_drain once unsent output is down to TD_WS_LOW_WATER. */
void td_ws_conn_want_drain(td_ws_conn *w);
/* Starts the closing handshake with code (0: no code) and reason: the
 * connection closes when the peer's close comes, or after the close
 * timeout. Messages that come meanwhile are dropped. Nothing if our close
 * went already. */
void td_ws_conn_close(td_ws_conn *w, int code, const char *reason, size_t len);
/* on_recv_timeout once, `ms` from now; 0: none. */
void td_ws_conn_set_recv_deadline(td_ws_conn *w, uint64_t ms);
/* Closes the connection at once without a hook (the owner is going). */
void td_ws_conn_abort(td_ws_conn *w);
/* Frees what w holds (after the connection is gone): queued messages,
 * buffers. */
void td_ws_conn_free(td_ws_conn *w);
/* Frees what the process keeps for every connection (teardown). */
void td_ws_conn_shutdown(void);

#endif
