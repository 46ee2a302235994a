/* Owns every connection's memory, its libuv handle, its output, its
 * deadlines and its handle slot; the listeners' accepting and the count of
 * accepted connections. */
#include "conn.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <unistd.h>

#include "errors.h"
#include "log.h"
#include "tls.h"

/* A lingering close waits this long for the peer to close. Two seconds lets
 * a client that is still sending see the answer; nginx waits up to five. */
#define TD_LINGER_MS 2000
/* Output blocks kept for reuse. Answers leave at the end of the read
 * callback, so few are in use at once; the spares only spare malloc calls
 * and must not keep a burst's peak for ever. */
#define TD_OUT_SPARE_MAX 128

typedef struct td_write {
    uv_write_t req;
    td_conn *conn;
    td_buf block; /* owned: back to the pool when the write ends */
    void (*release)(void *ud);
    void *ud;
} td_write;

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);
static void close_with(td_conn *c, int reason);

/* What goes to the socket as it is: the output, or under TLS the engine's
 * ciphertext (the output is plaintext then). */
static inline td_buf *wire_of(td_conn *c) { return c->tls ? td_tls_wire(c->tls) : &c->out; }

/* TLS: plaintext waiting to be encrypted, in order, ahead of c->out:
 * output given by reference (released once encrypted), and output blocks
 * that were in c->out when such a reference came. It is encrypted a slice
 * at a time as the wire buffer empties, so a large body costs neither a
 * second copy of itself nor one long stall of the loop. */
#define TD_TLS_SLICE (64 * 1024)
/* Unsent output past which a TLS connection stops reading: what the peer's
 * own records make us send (alerts, key updates) must stay bounded when it
 * does not read. */
#define TD_TLS_READ_BOUND (1024 * 1024)

typedef struct tls_piece {
    struct tls_piece *next;
    const char *data;
    size_t len, off;
    void (*release)(void *ud); /* NULL: data is block's */
    void *ud;
    td_buf block;
    unsigned in_call : 1; /* td_conn_write_ref has not returned yet */
    unsigned done : 1;    /* ... and it was all encrypted meanwhile */
} tls_piece;

typedef struct tls_queue {
    tls_piece *head, *tail;
    size_t bytes; /* not yet encrypted */
} tls_queue;

/* Output is buffered (or under TLS, ciphertext the handshake made). */
static inline int output_waiting(td_conn *c) { return c->want_flush || (c->tls && td_tls_wire(c->tls)->len > 0); }

static inline tls_queue *queue_of(td_conn *c) { return c->tls ? *td_tls_user(c->tls) : NULL; }
static inline size_t queued(td_conn *c) {
    tls_queue *q = queue_of(c);
    return q ? q->bytes : 0;
}

static inline void enter(td_transport *tp) {
    if (tp->enter)
        tp->enter(tp->hook_ud);
}

static inline void leave(td_transport *tp) {
    if (tp->leave)
        tp->leave(tp->hook_ud);
}

/* ---- handles ------------------------------------------------------------ */

#define NO_SLOT UINT32_MAX

static int slot_take(td_transport *tp, td_conn *c) {
    if (tp->free_slot == NO_SLOT) {
        uint32_t n = tp->nslots ? tp->nslots * 2 : 256;
        td_conn_slot *slots = realloc(tp->slots, (size_t)n * sizeof *slots);
        if (!slots)
            return -1;
        for (uint32_t i = tp->nslots; i < n; i++)
            slots[i] = (td_conn_slot){NULL, 1, i + 1 < n ? i + 1 : NO_SLOT};
        tp->free_slot = tp->nslots;
        tp->slots = slots;
        tp->nslots = n;
    }
    uint32_t i = tp->free_slot;
    tp->free_slot = tp->slots[i].next_free;
    tp->slots[i].conn = c;
    c->slot = i;
    return 0;
}

/* The serial moves on, so no handle to this connection finds the slot's
 * next tenant. */
static void slot_give(td_transport *tp, td_conn *c) {
    td_conn_slot *s = &tp->slots[c->slot];
    s->conn = NULL;
    s->serial++;
    s->next_free = tp->free_slot;
    tp->free_slot = c->slot;
}

/* ---- deadlines ---------------------------------------------------------- */

static uint64_t due_at(const td_conn *c) {
    uint64_t a = c->io_deadline, b = c->send_deadline;
    return !a ? b : !b ? a : a < b ? a : b;
}

/* The heap entry follows the earlier of the two deadlines, lazily (see
 * deadlines.h): a keep-alive connection's deadlines move later at every
 * request, which then costs no heap operation. */
static void rekey(td_conn *c) { td_deadlines_lazy(&td_conn_tp(c)->deadlines, &c->timer, due_at(c)); }

/* Exactly, when the entry has come (or the connection closes). */
static void rekey_exact(td_conn *c) { td_deadlines_exact(&td_conn_tp(c)->deadlines, &c->timer, due_at(c)); }

void td_conn_set_deadline(td_conn *c, uint64_t ms) {
    if (c->closing)
        return;
    c->io_deadline = uv_now(td_conn_tp(c)->loop) + (ms ? ms : 1);
    rekey(c);
}

void td_conn_clear_deadline(td_conn *c) {
    if (!c->io_deadline)
        return;
    c->io_deadline = 0;
    rekey(c);
}

void td_conn_set_send_timeout(td_conn *c, uint64_t ms) {
    c->send_timeout_ms = (uint32_t)(ms > UINT32_MAX ? UINT32_MAX : ms);
}

/* Output is queued, or some of it just left: the send timeout starts over. */
static void watch_sending(td_conn *c) {
    if (!c->send_timeout_ms)
        return;
    c->send_deadline = uv_now(td_conn_tp(c)->loop) + c->send_timeout_ms;
    rekey(c);
}

static void expire(td_conn *c, uint64_t now) {
    if (c->send_deadline && c->send_deadline <= now) {
        /* The peer has not taken a byte for the whole send timeout. */
        c->send_deadline = 0;
        close_with(c, TD_ETIMEOUT);
        return;
    }
    if (c->io_deadline && c->io_deadline <= now) {
        c->io_deadline = 0;
        rekey_exact(c);
        if (c->ending)
            td_conn_close(c); /* the linger is over */
        else if (!c->closed)
            c->ops->on_timeout(c);
        return;
    }
    rekey_exact(c); /* an entry that came early: nothing is due yet */
}

static void on_due(td_deadlines *d, td_heap_node *n, uint64_t now) {
    (void)d;
    expire(td_container_of(n, td_conn, timer), now);
}

static void hold(void *ud) { enter(ud); }
static void release_hold(void *ud) { leave(ud); }

/* ---- output ------------------------------------------------------------- */

static void link_pending(td_conn *c) {
    if (!td_list_linked(&c->plink))
        td_list_push_back(&td_conn_tp(c)->pending, &c->plink);
}

/* Nothing is due for c at the turn's end any more. */
static void unlink_pending(td_conn *c) {
    if (c->want_defer) {
        c->want_defer = 0;
        td_conn_tp(c)->ndeferred--;
    }
    if (c->want_flush)
        td_conn_tp(c)->nflush--;
    c->want_flush = 0;
    td_list_remove(&c->plink);
}

/* Output waiting for the turn's end holds an output block per connection.
 * A fan-out (one message to thousands of WebSockets or event streams in
 * one run of Lua) would hold thousands at once: past TD_FLUSH_EARLY the
 * output waiting is written now, and the blocks go back to the pool as the
 * fan-out goes. (skip: the connection asking, whose output comes next.) */
#define TD_FLUSH_EARLY 64

/* Writes the output waiting at the turn's end, but skip's; deferred work
 * stays due. Works on a list of its own: a flush may link and unlink. */
static void write_pending(td_transport *tp, td_conn *skip) {
    td_list batch;
    td_list_init(&batch);
    td_list_splice(&tp->pending, &batch);
    while (!td_list_empty(&batch)) {
        td_conn *c = td_container_of(batch.next, td_conn, plink);
        td_list_remove(&c->plink);
        if (c->want_defer || c == skip)
            link_pending(c);
        if (c->want_flush && c != skip)
            td_conn_flush(c);
    }
}

static void flush_early(td_transport *tp, td_conn *skip) {
    enter(tp);
    write_pending(tp, skip);
    leave(tp);
}

td_buf *td_conn_out(td_conn *c, size_t extra) {
    /* The first output since the last flush takes a block and joins the
     * turn's work; the rest (a head's many pieces) only appends. */
    if (!c->want_flush) {
        td_transport *tp = td_conn_tp(c);
        if (tp->nflush >= TD_FLUSH_EARLY)
            flush_early(tp, c);
        if (!c->out.data && td_buf_pool_take(&tp->out_pool, &c->out) != 0)
            return NULL;
        tp->nflush++;
        c->want_flush = 1;
        link_pending(c);
    }
    if (c->out.cap - c->out.len < extra && td_buf_reserve(&c->out, extra) != 0)
        return NULL;
    return &c->out;
}

size_t td_conn_unsent(td_conn *c) {
    size_t n = c->out.len + uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp);
    return c->tls ? n + td_tls_wire(c->tls)->len + queued(c) : n;
}

void td_conn_want_drain(td_conn *c) { c->want_drain = 1; }

static void check_drain(td_conn *c) {
    if (c->want_drain && !c->closed && td_conn_unsent(c) <= c->ops->low_water) {
        c->want_drain = 0;
        enter(td_conn_tp(c));
        c->ops->on_drain(c);
        leave(td_conn_tp(c));
    }
}

/* TLS: the peer took enough of what it made us send: read again (if the
 * protocol wants to). */
static void unthrottle(td_conn *c) {
    if (c->throttled && !c->closing && td_conn_unsent(c) <= TD_TLS_READ_BOUND / 2) {
        c->throttled = 0;
        if (c->read_wanted)
            td_conn_resume_reading(c);
    }
}

static void on_write(uv_write_t *req, int status) {
    td_write *w = td_container_of(req, td_write, req);
    td_conn *c = w->conn;
    td_buf_pool_give(&td_conn_tp(c)->out_pool, &w->block);
    if (w->release)
        w->release(w->ud);
    free(w);
    if (c->closing)
        return;
    if (status < 0) {
        close_with(c, status);
        return;
    }
    if (uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) > 0) {
        watch_sending(c);
    } else {
        c->send_deadline = 0; /* the heap entry goes when it fires */
    }
    check_drain(c);
    if (c->out.len > 0 || (c->tls && (td_tls_wire(c->tls)->len > 0 || queued(c) > 0 || c->ending)))
        td_conn_flush(c);
    unthrottle(c);
}

/* After a partial try-write: queues the rest, the record owning the wire
 * buffer's block and holding the referenced data. Returns 0 or a libuv
 * error (the connection is closing then; nothing is held). */
static int queue_rest(td_conn *c, size_t done, const char *data, size_t len, void (*release)(void *), void *ud) {
    td_write *w = malloc(sizeof *w);
    if (!w) {
        close_with(c, UV_ENOMEM);
        return UV_ENOMEM;
    }
    td_buf *wire = wire_of(c);
    w->conn = c;
    w->block = *wire;
    c->out_epoch++;
    w->release = release;
    w->ud = ud;
    *wire = (td_buf){0};
    uv_buf_t b[2];
    int n = 0;
    size_t out_len = w->block.len;
    if (done < out_len) {
        b[n++] = uv_buf_init(w->block.data + done, (unsigned)(out_len - done));
        done = 0;
    } else {
        done -= out_len;
    }
    if (len > done)
        b[n++] = uv_buf_init((char *)data + done, (unsigned)(len - done));
    int rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, b, (unsigned)n, on_write);
    if (rc < 0) {
        td_buf_pool_give(&td_conn_tp(c)->out_pool, &w->block);
        free(w);
        close_with(c, rc);
        return rc;
    }
    watch_sending(c);
    return 0;
}

/* Tries to write the wire buffer (and data, if any) now. Returns the bytes
 * taken, or a libuv error other than EAGAIN (the caller closes). */
static ssize_t try_write(td_conn *c, const char *data, size_t len) {
    uv_buf_t b[2];
    unsigned n = 0;
    td_buf *wire = wire_of(c);
    if (wire->len)
        b[n++] = uv_buf_init(wire->data, (unsigned)wire->len);
    if (len)
        b[n++] = uv_buf_init((char *)data, (unsigned)len);
    int rc = uv_try_write((uv_stream_t *)&c->tcp, b, n);
    if (rc == UV_EAGAIN)
        return 0;
    return rc;
}

/* Everything left: the block goes back, so a connection between writes
 * holds none (taking it again is a pointer off the pool's stack). */
static void all_written(td_conn *c) {
    td_buf *wire = wire_of(c);
    wire->len = 0;
    c->out_epoch++;
    td_buf_pool_give(&td_conn_tp(c)->out_pool, wire);
    /* No write callback will come to say it drained: say it now. */
    check_drain(c);
}

/* Output is being written: c stays pending only for deferred work. */
static void flushing(td_conn *c) {
    if (c->want_flush)
        td_conn_tp(c)->nflush--;
    c->want_flush = 0;
    if (!c->want_defer)
        td_list_remove(&c->plink);
}

/* A queued piece is all encrypted (or the connection went): its data is
 * the owner's again. */
static void piece_done(td_conn *c, tls_piece *p) {
    if (p->in_call) {
        p->done = 1; /* td_conn_write_ref frees it and says "taken at once" */
        return;
    }
    if (p->release)
        p->release(p->ud);
    td_buf_pool_give(&td_conn_tp(c)->out_pool, &p->block);
    free(p);
}

static void start_shutdown(td_conn *c);

/* TLS: encrypts into the wire buffer, in order, the queued pieces and then
 * the output, until the wire holds a slice (once the handshake is done:
 * until then everything waits). At a graceful end, close_notify follows
 * the last byte and the half-close follows it. Returns 0, or an error
 * (c is closing). */
static int tls_fill(td_conn *c) {
    td_tls *t = c->tls;
    if (!td_tls_established(t))
        return 0;
    td_buf *wire = td_tls_wire(t);
    tls_queue *q = queue_of(c);
    while (wire->len < TD_TLS_SLICE) {
        tls_piece *p = q ? q->head : NULL;
        int rc = 0;
        if (p) {
            size_t n = p->len - p->off < TD_TLS_SLICE ? p->len - p->off : TD_TLS_SLICE;
            rc = td_tls_write(t, p->data + p->off, n);
            p->off += n;
            q->bytes -= n;
            if (p->off == p->len) {
                q->head = p->next;
                if (!q->head)
                    q->tail = NULL;
                piece_done(c, p);
            }
        } else if (c->out.len > 0) {
            rc = td_tls_write(t, c->out.data, c->out.len);
            c->out.len = 0;
            td_buf_pool_give(&td_conn_tp(c)->out_pool, &c->out);
        } else {
            if (c->ending)
                td_tls_close_notify(t); /* once */
            break;
        }
        c->out_epoch++;
        if (rc < 0) {
            close_with(c, rc);
            return rc;
        }
    }
    return 0;
}

void td_conn_flush(td_conn *c) {
    flushing(c);
    for (;;) {
        if (c->closing)
            return;
        if (c->tls && tls_fill(c) < 0)
            return;
        td_buf *wire = wire_of(c);
        /* One write in flight at a time: what comes meanwhile gathers in
         * the wire buffer and leaves in one piece when that write ends
         * (on_write). A write per small answer would each hold a whole
         * output block. */
        if (wire->len == 0 || uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) > 0)
            break;
        ssize_t n = try_write(c, NULL, 0);
        if (n < 0) {
            close_with(c, (int)n);
            return;
        }
        if ((size_t)n < wire->len) {
            queue_rest(c, (size_t)n, NULL, 0, NULL, NULL);
            break;
        }
        all_written(c);
        if (!c->tls)
            return;
        unthrottle(c);
        /* TLS: more may wait to be encrypted now that the wire is empty. */
    }
    /* A TLS end half-closes once everything, close_notify last, is with
     * libuv (which runs the shutdown after its queued writes). */
    if (c->tls && c->ending && !c->closing && td_tls_wire(c->tls)->len == 0 &&
        (!td_tls_established(c->tls) || (queued(c) == 0 && c->out.len == 0)))
        start_shutdown(c);
}

/* TLS: the reference joins the queue (after what c->out holds, which
 * becomes a piece of its own), to be encrypted a slice at a time. */
static void enqueue(tls_queue *q, tls_piece *p) {
    if (q->tail)
        q->tail->next = p;
    else
        q->head = p;
    q->tail = p;
    q->bytes += p->len;
}

static int tls_write_ref(td_conn *c, const char *data, size_t len, void (*release)(void *ud), void *ud) {
    tls_queue *q = queue_of(c);
    if (!q && (q = calloc(1, sizeof *q)) != NULL)
        *td_tls_user(c->tls) = q;
    tls_piece *p = calloc(1, sizeof *p);
    tls_piece *before = c->out.len > 0 ? calloc(1, sizeof *before) : NULL;
    if (!q || !p || (c->out.len > 0 && !before)) {
        free(p);
        free(before);
        close_with(c, UV_ENOMEM);
        return UV_ENOMEM;
    }
    if (before) { /* what the output holds goes first, as it is */
        before->block = c->out;
        before->data = before->block.data;
        before->len = before->block.len;
        c->out = (td_buf){0};
        enqueue(q, before);
    }
    *p = (tls_piece){.data = data, .len = len, .release = release, .ud = ud, .in_call = 1};
    enqueue(q, p);
    td_conn_flush(c);
    if (p->done) {
        free(p);
        return c->closing ? TD_ECLOSED : 0;
    }
    p->in_call = 0;
    return 1; /* released once encrypted, or when the connection's memory goes */
}

int td_conn_write_ref(td_conn *c, const char *data, size_t len, void (*release)(void *ud), void *ud) {
    if (c->closing)
        return TD_ECLOSED;
    if (c->tls)
        return tls_write_ref(c, data, len, release, ud);
    flushing(c);
    ssize_t n = try_write(c, data, len);
    if (n < 0) {
        close_with(c, (int)n);
        return (int)n;
    }
    if ((size_t)n == c->out.len + len) {
        all_written(c);
        return 0;
    }
    int rc = queue_rest(c, (size_t)n, data, len, release, ud);
    return rc < 0 ? rc : 1;
}

/* ---- files -------------------------------------------------------------- */

/* sendfile(2) stops after this much in one call of td_conn_send_file: a
 * client on a fast link would otherwise keep the loop for a whole file. */
#define TD_SENDFILE_BURST (4 * 1024 * 1024)

/* Reads up to one output block of the file into c->out: the queued write
 * of it is how the transport waits for writability (and the send timeout
 * watches it). Returns the bytes read, TD_ESHORT at an early end, or an
 * error (c is closing). */
static int64_t read_block(td_conn *c, int fd, int64_t *offset, uint64_t left) {
    td_buf *out = td_conn_out(c, 0);
    if (!out) {
        close_with(c, UV_ENOMEM);
        return UV_ENOMEM;
    }
    size_t room = out->cap > out->len ? out->cap - out->len : 0;
    if (room < 4096) { /* a full block of other output: it goes first */
        td_conn_flush(c);
        return c->closing ? TD_ECLOSED : 0;
    }
    size_t want = left < room ? (size_t)left : room;
    ssize_t n;
    do
        n = pread(fd, out->data + out->len, want, (off_t)*offset);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return -errno;
    if (n == 0)
        return TD_ESHORT;
    out->len += (size_t)n;
    *offset += n;
    return n;
}

int64_t td_conn_send_file(td_conn *c, int fd, int64_t *offset, uint64_t len) {
    if (c->closing || c->ending)
        return TD_ECLOSED;
    uint64_t sent = 0;
    /* A small file after a head still buffered joins it: one write for
     * both instead of a write and a sendfile (the common static answer). */
    if (!c->tls && c->out.len > 0 && c->out.cap - c->out.len >= len)
        return read_block(c, fd, offset, len);
    if (c->out.len > 0) /* the head first */
        td_conn_flush(c);
    if (c->closing)
        return TD_ECLOSED;
    if (!c->tls) {
        if (td_conn_unsent(c) > 0)
            return 0; /* the queued write's end brings on_drain */
        int sock = -1;
        uv_fileno((uv_handle_t *)&c->tcp, &sock);
        while (sent < len && sent < TD_SENDFILE_BURST) {
            uint64_t want = len - sent;
            if (want > TD_SENDFILE_BURST - sent)
                want = TD_SENDFILE_BURST - sent;
            off_t off = (off_t)*offset;
            ssize_t n = sendfile(sock, fd, &off, (size_t)want);
            if (n > 0) {
                *offset = off;
                sent += (uint64_t)n;
                continue;
            }
            if (n == 0)
                return sent ? (int64_t)sent : TD_ESHORT;
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN)
                break;
            int err = -errno;
            if (err != UV_EINVAL && err != UV_ENOSYS) {
                close_with(c, err);
                return err;
            }
            break; /* a file sendfile cannot read: read it below */
        }
        if (sent == len)
            return (int64_t)sent;
        /* The socket is full (or the burst went): one block queued makes
         * the transport wait for writability and bring on_drain. */
        int64_t n = read_block(c, fd, offset, len - sent);
        if (n < 0)
            return sent && n == TD_ESHORT ? (int64_t)sent : n;
        return (int64_t)(sent + (uint64_t)n);
    }
    /* TLS: a block at a time, encrypted and written at once, while the
     * kernel takes everything; then the caller waits for on_drain. */
    while (sent < len && sent < TD_SENDFILE_BURST && td_conn_unsent(c) == 0) {
        int64_t n = read_block(c, fd, offset, len - sent);
        if (n < 0)
            return sent && n == TD_ESHORT ? (int64_t)sent : n;
        sent += (uint64_t)n;
        td_conn_flush(c);
        if (c->closing)
            return TD_ECLOSED;
    }
    return (int64_t)sent;
}

void td_conn_defer(td_conn *c) {
    if (c->closed || c->want_defer)
        return;
    c->want_defer = 1;
    td_conn_tp(c)->ndeferred++;
    link_pending(c);
}

/* Deferred work first: it may add output, which then leaves in the same
 * write (pipelined answers). Tasks the deferred work wakes run in leave()
 * and may defer more: go round until nothing is deferred, then write. */
static void on_turn(uv_prepare_t *p) {
    td_transport *tp = td_container_of(p, td_transport, turn);
    /* Each round works on a list of its own (callbacks link and unlink at
     * will) and runs inside the hooks; the tasks its callbacks woke run at
     * leave() and may add output or deferred work for another round. */
    while (tp->ndeferred > 0 || !td_list_empty(&tp->pending)) {
        td_list batch;
        enter(tp);
        td_list_init(&batch);
        td_list_splice(&tp->pending, &batch);
        while (!td_list_empty(&batch)) {
            td_conn *c = td_container_of(batch.next, td_conn, plink);
            td_list_remove(&c->plink);
            if (c->want_flush)
                link_pending(c);
            if (c->want_defer) {
                c->want_defer = 0;
                tp->ndeferred--;
                c->ops->on_deferred(c);
            }
        }
        write_pending(tp, NULL); /* what was deferred meanwhile: the next round */
        leave(tp);
    }
}

/* ---- reading ------------------------------------------------------------ */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    td_conn *c = td_container_of(h, td_conn, tcp);
    (void)suggested;
    buf->base = td_conn_tp(c)->rbuf;
    buf->len = sizeof td_conn_tp(c)->rbuf;
}

void td_conn_pause_reading(td_conn *c) {
    c->read_wanted = 0;
    if (c->reading && !c->closing) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = 0;
    }
}

/* A hold's watch. Owned by the transport's list from the hold until it
 * ends; its poll handle's close callback frees it. c is valid while the
 * handle is open: the connection's close ends the hold (hold_end) before
 * its own handle closes, and no poll callback comes after uv_close. */
typedef struct td_conn_hold {
    uv_poll_t poll;
    td_list link; /* tp->holds */
    td_conn *c;
    int fd; /* the second descriptor, closed with the handle */
} td_conn_hold;

static void hold_closed(uv_handle_t *h) {
    td_conn_hold *hd = h->data;
    close(hd->fd);
    free(hd);
}

static void hold_end(td_conn *c) {
    if (!c->held)
        return;
    c->held = 0;
    td_transport *tp = td_conn_tp(c);
    tp->nholds--;
    for (td_list *n = tp->holds.next; n != &tp->holds; n = n->next) {
        td_conn_hold *hd = td_container_of(n, td_conn_hold, link);
        if (hd->c == c) {
            td_list_remove(&hd->link);
            uv_close((uv_handle_t *)&hd->poll, hold_closed);
            return;
        }
    }
}

static void on_hold_event(uv_poll_t *p, int status, int events) {
    (void)events;
    td_conn_hold *hd = p->data;
    td_conn *c = hd->c;
    td_transport *tp = td_conn_tp(c);
    hold_end(c);
    if (c->closing || c->closed || c->ending)
        return;
    enter(tp);
    c->ops->on_eof(c, status < 0 ? UV_ECONNRESET : UV_EOF);
    leave(tp);
}

void td_conn_hold_reading(td_conn *c) {
    td_conn_pause_reading(c);
    td_transport *tp = td_conn_tp(c);
    if (c->held || c->closing || !c->connected || tp->nholds >= tp->max_holds)
        return;
    uv_os_fd_t fd;
    if (uv_fileno((uv_handle_t *)&c->tcp, &fd) != 0)
        return;
    td_conn_hold *hd = malloc(sizeof *hd);
    int dupfd = hd ? fcntl(fd, F_DUPFD_CLOEXEC, 0) : -1;
    if (dupfd < 0) {
        free(hd);
        return;
    }
    if (uv_poll_init_socket(tp->loop, &hd->poll, dupfd) != 0) {
        close(dupfd);
        free(hd);
        return;
    }
    hd->poll.data = hd;
    hd->c = c;
    hd->fd = dupfd;
    td_list_push_back(&tp->holds, &hd->link);
    tp->nholds++;
    c->held = 1;
    if (uv_poll_start(&hd->poll, UV_DISCONNECT, on_hold_event) != 0)
        hold_end(c);
}

void td_conn_resume_reading(td_conn *c) {
    hold_end(c);
    c->read_wanted = 1;
    if (c->throttled)
        return; /* once the peer has read what it made us send */
    if (!c->reading && !c->closing && c->connected) {
        if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0)
            c->reading = 1;
    }
}

/* ---- TLS ---------------------------------------------------------------- */

/* The handshake failed. A server logs it (at info: bad clients are
 * common, and each would otherwise be an error line) and closes; a client's
 * protocol hears it in on_connect. */
static void tls_failed(td_conn *c) {
    if (!td_tls_is_client(c->tls)) {
        char peer[64] = "?";
        td_conn_peer(c, peer, sizeof peer);
        td_log(TD_LOG_INFO, "tls: handshake with %s failed: %s", peer, td_tls_error(c->tls));
        td_conn_close(c);
        return;
    }
    c->close_reason = TD_ETLS;
    td_conn_pause_reading(c);
    c->ops->on_connect(c, TD_ETLS);
    td_conn_close(c);
}

/* Drives the handshake with what has arrived. 1 when it is done, 0 when it
 * waits for more, -1 when it failed (c is closed). */
static int tls_handshake(td_conn *c) {
    int rc = td_tls_handshake(c->tls);
    if (rc == 0)
        return 0;
    if (rc < 0) {
        td_conn_flush(c); /* the alert that says why, if the socket takes it */
        tls_failed(c);
        return -1;
    }
    /* Output the protocol gave during the handshake can go now (a TLS 1.2
     * resumption ends without the server writing anything to carry it). */
    if (c->out.len > 0 && !c->want_flush) {
        c->want_flush = 1;
        td_conn_tp(c)->nflush++;
    }
    if (td_tls_is_client(c->tls))
        c->ops->on_connect(c, 0);
    return c->closed ? -1 : 1;
}

/* Not a TLS handshake record: a plain HTTP request, most likely. */
static void tls_refuse_plain(td_conn *c, const char *reply, size_t len) {
    if (reply && td_buf_append(td_tls_wire(c->tls), reply, len) == 0) {
        td_conn_end(c);
        return;
    }
    td_conn_close(c);
}

/* Ciphertext arrived: the handshake, then plaintext for the protocol,
 * gathered into the transport's plaintext buffer between calls. */
static void tls_read(td_conn *c, const char *data, size_t len) {
    td_transport *tp = td_conn_tp(c);
    td_tls *t = c->tls;
    if (td_tls_fresh(t) && (unsigned char)data[0] != 0x16) { /* 0x16: a handshake record */
        size_t n;
        const char *reply = td_tls_refusal(t, &n);
        tls_refuse_plain(c, reply, n);
        return;
    }
    td_tls_input(t, data, len);
    if (!td_tls_established(t) && tls_handshake(c) <= 0)
        return;
    if (!tp->plain && !(tp->plain = malloc(TD_CONN_READ_BUFFER))) {
        close_with(c, UV_ENOMEM);
        return;
    }
    for (;;) {
        size_t got = 0;
        ssize_t n = 0;
        while (got < TD_CONN_READ_BUFFER && (n = td_tls_read(t, tp->plain + got, TD_CONN_READ_BUFFER - got)) > 0)
            got += (size_t)n;
        if (got > 0)
            c->ops->on_data(c, tp->plain, got);
        if (c->closed || c->ending)
            return;
        if (n > 0)
            continue; /* the buffer filled up: there may be more */
        if (n < 0) {
            if (n != UV_EOF) {
                char peer[64] = "?";
                td_conn_peer(c, peer, sizeof peer);
                td_log(TD_LOG_INFO, "tls: connection with %s failed: %s", peer, td_tls_error(t));
            }
            td_conn_pause_reading(c);
            c->ops->on_eof(c, n == UV_EOF ? UV_EOF : UV_ECONNRESET);
            return;
        }
        break;
    }
    /* Records that make us answer (key updates, alerts) from a peer that
     * does not read: stop reading until it takes what it made us send. */
    if (c->reading && td_conn_unsent(c) > TD_TLS_READ_BOUND) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = 0;
        c->throttled = 1;
    }
}

int td_conn_start_tls(td_conn *c, td_tls *t) {
    if (c->tls || c->closing || (c->connected && td_conn_unsent(c) > 0)) {
        td_tls_free(t);
        return c->closing ? TD_ECLOSED : UV_EBUSY;
    }
    c->tls = t;
    if (!c->connected)
        return 0; /* on_connected starts the handshake */
    td_conn_resume_reading(c);
    if (td_tls_handshake(t) < 0) {
        c->tls = NULL;
        td_tls_free(t);
        return TD_ETLS;
    }
    td_conn_flush(c);
    return c->closing ? TD_ECLOSED : 0;
}

/* ---- reading ------------------------------------------------------------ */

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
    td_conn *c = td_container_of(stream, td_conn, tcp);
    td_transport *tp = td_conn_tp(c);
    if (nread == 0)
        return;
    if (c->ending) {
        /* Lingering: discard until the peer closes. */
        if (nread < 0)
            td_conn_close(c);
        return;
    }
    enter(tp);
    if (c->tls && (nread > 0 || !td_tls_established(c->tls))) {
        if (nread > 0) {
            tls_read(c, buf->base, (size_t)nread);
            td_tls_input(c->tls, NULL, 0); /* the buffer is the transport's again */
        } else if (td_tls_is_client(c->tls)) {
            td_conn_pause_reading(c);
            if (nread == UV_EOF) {
                td_tls_set_error(c->tls, "the peer closed the connection during the handshake");
                nread = TD_ETLS;
            }
            c->close_reason = (int16_t)nread;
            c->ops->on_connect(c, (int)nread);
            td_conn_close(c);
        } else {
            td_conn_close(c); /* gone before the handshake: nothing to tell */
        }
        leave(tp);
        if (!c->closing && output_waiting(c))
            td_conn_flush(c);
        return;
    }
    if (nread < 0) {
        td_conn_pause_reading(c);
        c->ops->on_eof(c, nread == UV_ENOBUFS ? UV_ENOMEM : (int)nread);
    } else {
        c->ops->on_data(c, buf->base, (size_t)nread);
    }
    leave(tp);
    /* Answer now, not at the end of the turn: the clients whose requests
     * came in the same batch would otherwise wait for every other one.
     * Pipelined answers from this read still leave in one write. */
    if (c->want_flush)
        td_conn_flush(c);
}

/* ---- creating and closing ----------------------------------------------- */

static td_conn *conn_new(td_transport *tp, size_t size, const td_conn_ops *ops, void *owner) {
    td_conn *c = calloc(1, size);
    if (!c)
        return NULL;
    if (td_deadlines_reserve(&tp->deadlines, (uint32_t)tp->nconns + 1) != 0 || slot_take(tp, c) != 0) {
        free(c);
        return NULL;
    }
    c->ops = ops;
    c->owner = owner;
    td_list_init(&c->plink);
    td_heap_node_init(&c->timer);
    uv_tcp_init(tp->loop, &c->tcp);
    if (++tp->nconns > tp->peak)
        tp->peak = tp->nconns;
    return c;
}

static void listen_start(td_listener *l);

static void on_closed(uv_handle_t *h) {
    td_conn *c = td_container_of(h, td_conn, tcp);
    td_transport *tp = td_conn_tp(c);
    int accepted = c->accepted;
    td_buf_pool_give(&tp->out_pool, &c->out);
    tls_queue *q = queue_of(c);
    while (q && q->head) {
        tls_piece *p = q->head;
        q->head = p->next;
        piece_done(c, p); /* references go back to their owners */
    }
    free(q);
    td_tls_free(c->tls);
    slot_give(tp, c);
    tp->nconns--;
    free(c);
    if (!accepted)
        return;
    tp->naccepted--;
    if (!td_list_empty(&tp->waiting)) {
        td_listener *l = td_container_of(tp->waiting.next, td_listener, wlink);
        td_list_remove(&l->wlink);
        listen_start(l);
    }
    if (tp->naccepted == 0 && tp->on_empty)
        tp->on_empty(tp);
}

static void notify_closed(td_conn *c) {
    if (c->closed)
        return;
    c->closed = 1;
    td_conn_bump(c);
    if (c->want_defer) {
        c->want_defer = 0;
        td_conn_tp(c)->ndeferred--;
        if (!c->want_flush)
            td_list_remove(&c->plink);
    }
    enter(td_conn_tp(c));
    c->ops->on_close(c);
    leave(td_conn_tp(c));
}

static void close_with(td_conn *c, int reason) {
    if (c->closing)
        return;
    if (!c->closed && reason)
        c->close_reason = (int16_t)reason; /* a protocol may have said why already */
    notify_closed(c);
    if (c->closing)
        return; /* what on_close ran closed it already (a closer's own close) */
    c->io_deadline = c->send_deadline = 0;
    rekey_exact(c); /* both deadlines are 0: out of the heap */
    unlink_pending(c);
    hold_end(c);
    c->closing = 1;
    c->reading = 0;
    uv_close((uv_handle_t *)&c->tcp, on_closed);
}

void td_conn_close(td_conn *c) { close_with(c, 0); }

static void on_shutdown(uv_shutdown_t *req, int status) {
    td_conn *c = req->data;
    free(req);
    if (c->closing)
        return;
    if (status < 0) {
        td_conn_close(c);
        return;
    }
    td_conn_resume_reading(c);
    c->io_deadline = uv_now(td_conn_tp(c)->loop) + TD_LINGER_MS;
    rekey(c);
}

void td_conn_end(td_conn *c) {
    if (c->closing || c->ending)
        return;
    notify_closed(c);
    if (c->closing)
        return;
    c->ending = 1;
    c->want_drain = 0;
    c->io_deadline = 0;
    rekey(c);
    /* Under TLS the flush half-closes once the last byte is encrypted. */
    td_conn_flush(c);
    if (!c->tls)
        start_shutdown(c);
}

static void start_shutdown(td_conn *c) {
    if (c->closing || c->shutdown_sent)
        return;
    c->shutdown_sent = 1;
    uv_shutdown_t *req = malloc(sizeof *req);
    if (!req) {
        td_conn_close(c);
        return;
    }
    req->data = c;
    /* libuv runs the shutdown after the queued writes. */
    if (uv_shutdown(req, (uv_stream_t *)&c->tcp, on_shutdown) < 0) {
        free(req);
        td_conn_close(c);
    }
}

/* ---- accepting ---------------------------------------------------------- */

/* After EMFILE, accepting is retried this often while descriptors stay
 * short (the clients wait in the backlog meanwhile). */
#define TD_ACCEPT_RETRY_MS 100

/* The descriptors kept back from connections, out of limit. */
static size_t fd_reserve(size_t limit) {
    size_t reserve = limit / 8;
    if (reserve < 16)
        reserve = 16;
    if (reserve > 4096)
        reserve = 4096;
    return reserve + 32;
}

size_t td_transport_fd_budget(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY)
        return 0;
    size_t limit = (size_t)rl.rlim_cur, reserve = fd_reserve(limit);
    return limit > reserve + 1 ? limit - reserve : 1;
}

static void listen_start(td_listener *l);
static void listen_stop(td_listener *l);

/* Takes one accepted socket as a connection; 0, or -1 (fd closed). */
static int adopt(td_listener *l, int fd) {
    td_transport *tp = l->tp;
    td_conn *c = conn_new(tp, l->conn_size, l->ops, l->owner);
    if (!c) {
        close(fd);
        td_log(TD_LOG_ERROR, "out of memory accepting a connection");
        return -1;
    }
    c->accepted = 1;
    tp->naccepted++;
    if (uv_tcp_open(&c->tcp, fd) != 0) {
        close(fd);
        c->closed = 1;
        close_with(c, 0);
        return -1;
    }
    c->connected = 1;
    uv_tcp_nodelay(&c->tcp, 1);
    if (l->tls) {
        if (!(c->tls = td_tls_accept(l->tls, &tp->out_pool))) {
            td_log(TD_LOG_ERROR, "out of memory accepting a TLS connection");
            c->closed = 1;
            close_with(c, 0);
            return -1;
        }
        td_tls_set_refusal(c->tls, l->plain_reply, l->plain_reply_len);
    }
    td_conn_resume_reading(c);
    enter(tp);
    l->on_open(l, c);
    leave(tp);
    return 0;
}

static void on_retry(uv_timer_t *t) {
    td_listener *l = td_container_of(t, td_listener, retry);
    if (l->open)
        listen_start(l);
}

/* Out of descriptors: stop for a moment; the limit may have changed. */
static void starve(td_listener *l, int err) {
    td_transport *tp = l->tp;
    if (tp->max_conns_auto)
        tp->max_conns = td_transport_fd_budget();
    if (!l->starved)
        td_log(TD_LOG_WARN,
               "accept: %s with %zu connection(s) open: accepting pauses (clients wait in the backlog) "
               "until descriptors are free",
               strerror(err), tp->naccepted);
    l->starved = 1;
    listen_stop(l);
    uv_timer_start(&l->retry, on_retry, TD_ACCEPT_RETRY_MS, 0);
}

static void on_listen_readable(uv_poll_t *p, int status, int events) {
    td_listener *l = td_container_of(p, td_listener, poll);
    td_transport *tp = l->tp;
    (void)events;
    if (status < 0) {
        td_log(TD_LOG_ERROR, "accept: %s", uv_strerror(status));
        return;
    }
    /* A bounded batch per wakeup: the loop serves the others between. */
    for (int n = 0; n < 128 && l->open; n++) {
        if (tp->max_conns && tp->naccepted >= tp->max_conns) {
            /* Further clients wait in the kernel's backlog until a
             * connection closes. */
            listen_stop(l);
            if (!td_list_linked(&l->wlink))
                td_list_push_back(&tp->waiting, &l->wlink);
            return;
        }
        int fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                starve(l, errno);
                return;
            }
            td_log(TD_LOG_ERROR, "accept: %s", strerror(errno));
            return;
        }
        if (l->starved) {
            l->starved = 0;
            td_log(TD_LOG_NOTICE, "accept: descriptors are free again; accepting");
        }
        adopt(l, fd);
    }
}

static void listen_start(td_listener *l) {
    if (l->polling || !l->open)
        return;
    l->polling = 1;
    uv_poll_start(&l->poll, UV_READABLE, on_listen_readable);
}

static void listen_stop(td_listener *l) {
    if (!l->polling)
        return;
    l->polling = 0;
    uv_poll_stop(&l->poll);
}

static int backlog_size(void) {
    int n = 511;
    FILE *f = fopen("/proc/sys/net/core/somaxconn", "r");
    if (f) {
        int v;
        if (fscanf(f, "%d", &v) == 1 && v > n)
            n = v;
        fclose(f);
    }
    return n;
}

static void on_listener_part_closed(uv_handle_t *h) {
    td_listener *l = h->data;
    if (--l->closing_parts > 0)
        return;
    close(l->fd);
    l->fd = -1;
    if (l->on_closed)
        l->on_closed(l);
}

static int bind_socket(const struct addrinfo *ai, int reuseport) {
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int on = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    if (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof on) != 0) {
        int err = -errno;
        close(fd);
        return err;
    }
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, backlog_size()) != 0) {
        int err = -errno;
        close(fd);
        return err;
    }
    return fd;
}

int td_listen_socket(const char *host, int port, int reuseport) {
    char portstr[16];
    snprintf(portstr, sizeof portstr, "%d", port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
    struct addrinfo *res;
    int rc = getaddrinfo(host, portstr, &hints, &res);
    if (rc)
        return rc == EAI_SYSTEM ? -errno : rc == EAI_AGAIN ? UV_EAI_AGAIN : rc == EAI_NONAME ? UV_EAI_NONAME : UV_EAI_FAIL;
    int fd = bind_socket(res, reuseport);
    freeaddrinfo(res);
    return fd; /* -errno is libuv's error code on Linux */
}

int td_listener_adopt(td_listener *l, td_transport *tp, int fd, const td_conn_ops *ops, size_t conn_size,
                      void (*on_open)(td_listener *l, td_conn *c), void *owner) {
    memset(l, 0, sizeof *l);
    l->tp = tp;
    l->ops = ops;
    l->conn_size = conn_size;
    l->on_open = on_open;
    l->owner = owner;
    l->fd = -1;
    td_list_init(&l->wlink);
    if (fd < 0)
        return fd; /* td_listen_socket's error */
    int rc = uv_poll_init_socket(tp->loop, &l->poll, fd);
    if (rc) {
        close(fd);
        return rc;
    }
    l->fd = fd;
    uv_timer_init(tp->loop, &l->retry);
    l->poll.data = l->retry.data = l;
    l->open = 1;
    listen_start(l);
    return 0;
}

static int (*listen_source)(const char *host, int port, unsigned nth, void *ud);
static void *listen_source_ud;
static unsigned listen_zero_count; /* port-0 listeners since td_listen_source_begin */

void td_listen_set_source(int (*source)(const char *host, int port, unsigned nth, void *ud), void *ud) {
    listen_source = source;
    listen_source_ud = ud;
}

void td_listen_source_begin(void) { listen_zero_count = 0; }

int td_listener_open(td_listener *l, td_transport *tp, const char *host, int port, const td_conn_ops *ops,
                     size_t conn_size, void (*on_open)(td_listener *l, td_conn *c), void *owner) {
    int fd = !listen_source ? td_listen_socket(host, port, 0)
                            : listen_source(host, port, port == 0 ? listen_zero_count++ : 0, listen_source_ud);
    return td_listener_adopt(l, tp, fd, ops, conn_size, on_open, owner);
}

int td_listener_port(td_listener *l) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (l->fd < 0 || getsockname(l->fd, (struct sockaddr *)&ss, &len) != 0)
        return -1;
    if (ss.ss_family == AF_INET)
        return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
}

void td_listener_set_tls(td_listener *l, td_tls_server *s, const char *plain_reply, size_t len) {
    if (s)
        td_tls_server_ref(s);
    td_tls_server_unref(l->tls);
    l->tls = s;
    l->plain_reply = plain_reply;
    l->plain_reply_len = len;
}

void td_listener_close(td_listener *l, void (*on_closed_cb)(td_listener *l)) {
    td_listener_set_tls(l, NULL, NULL, 0); /* connections keep their own reference */
    if (!l->open) {
        if (on_closed_cb)
            on_closed_cb(l);
        return;
    }
    l->open = 0;
    l->polling = 0;
    td_list_remove(&l->wlink);
    l->on_closed = on_closed_cb;
    l->closing_parts = 2;
    uv_close((uv_handle_t *)&l->poll, on_listener_part_closed);
    uv_close((uv_handle_t *)&l->retry, on_listener_part_closed);
}

/* ---- connecting --------------------------------------------------------- */

static void on_connected(uv_connect_t *req, int status) {
    td_conn *c = req->data;
    free(req);
    if (status == UV_ECANCELED || c->closing)
        return; /* closed while connecting: the closer told the protocol */
    if (status == 0) {
        c->connected = 1;
        uv_tcp_nodelay(&c->tcp, 1);
    }
    enter(td_conn_tp(c));
    if (status == 0 && c->tls) {
        /* The protocol hears of the connection when the handshake is done. */
        td_conn_resume_reading(c);
        if (tls_handshake(c) < 0) {
            leave(td_conn_tp(c));
            return;
        }
    } else {
        c->ops->on_connect(c, status);
    }
    leave(td_conn_tp(c));
    if (!c->closing && output_waiting(c))
        td_conn_flush(c);
}

td_conn *td_conn_connect(td_transport *tp, const struct sockaddr *addr, const td_conn_ops *ops, size_t conn_size,
                         void *owner, int *err) {
    uv_connect_t *req = malloc(sizeof *req);
    td_conn *c = req ? conn_new(tp, conn_size, ops, owner) : NULL;
    if (!c) {
        free(req);
        *err = UV_ENOMEM;
        return NULL;
    }
    req->data = c;
    int rc = uv_tcp_connect(req, &c->tcp, addr, on_connected);
    if (rc) {
        free(req);
        c->closed = 1; /* the protocol never saw it */
        close_with(c, rc);
        *err = rc;
        return NULL;
    }
    return c;
}

/* ---- the transport ------------------------------------------------------ */

int td_transport_init(td_transport *tp, uv_loop_t *loop, size_t max_conns) {
    memset(tp, 0, offsetof(td_transport, rbuf));
    tp->loop = loop;
    tp->max_conns = max_conns;
    if (max_conns == 0) {
        tp->max_conns = td_transport_fd_budget();
        tp->max_conns_auto = 1;
    }
    tp->free_slot = NO_SLOT;
    if (td_deadlines_init(&tp->deadlines, loop, on_due) != 0)
        return UV_ENOMEM;
    tp->deadlines.before = hold;
    tp->deadlines.after = release_hold;
    tp->deadlines.ud = tp;
    td_list_init(&tp->pending);
    td_list_init(&tp->waiting);
    td_list_init(&tp->holds);
    /* A hold's second descriptor comes out of the reserve kept for what
     * handlers open: half of it at most. */
    struct rlimit rl;
    tp->max_holds = getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY
                        ? fd_reserve((size_t)rl.rlim_cur) / 2
                        : 4096;
    loop->data = tp;
    td_buf_pool_init(&tp->out_pool, TD_CONN_OUT_BLOCK, TD_OUT_SPARE_MAX);
    uv_prepare_init(loop, &tp->turn);
    uv_prepare_start(&tp->turn, on_turn);
    uv_unref((uv_handle_t *)&tp->turn); /* it does not keep the loop alive */
    tp->handles_open = 1;
    return 0;
}

void td_transport_foreach(td_transport *tp, void (*fn)(td_conn *c, void *ud), void *ud) {
    /* A slot keeps its connection until the memory goes: closing ones are
     * visited too, and fn may close the one it is given. */
    for (uint32_t i = 0; i < tp->nslots; i++)
        if (tp->slots[i].conn)
            fn(tp->slots[i].conn, ud);
}

static void close_one(td_conn *c, void *ud) {
    (void)ud;
    td_conn_close(c);
}

void td_transport_close(td_transport *tp) {
    td_transport_foreach(tp, close_one, NULL);
    if (tp->handles_open) {
        td_deadlines_close(&tp->deadlines);
        uv_close((uv_handle_t *)&tp->turn, NULL);
        tp->handles_open = 0;
    }
}

void td_transport_destroy(td_transport *tp) {
    free(tp->plain);
    tp->plain = NULL;
    free(tp->slots);
    tp->slots = NULL;
    tp->nslots = 0;
    tp->free_slot = NO_SLOT;
    td_buf_pool_destroy(&tp->out_pool);
}

int td_conn_peer(td_conn *c, char *buf, size_t size) {
    struct sockaddr_storage ss;
    int len = sizeof ss;
    int rc = uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len);
    if (rc)
        return rc;
    if (ss.ss_family == AF_INET6)
        return uv_ip6_name((struct sockaddr_in6 *)&ss, buf, size);
    return uv_ip4_name((struct sockaddr_in *)&ss, buf, size);
}
