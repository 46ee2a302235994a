/* TLS on OpenSSL, as an engine over buffers: it never touches a socket and
 * knows nothing of libuv. The transport (conn.c) hands it the ciphertext a
 * read brought (td_tls_input) and takes the ciphertext to send from its
 * wire buffer (td_tls_wire); OpenSSL reads and writes through a BIO of our
 * own over exactly those two, so no connection keeps a BIO's buffers, and
 * with SSL_MODE_RELEASE_BUFFERS an idle connection keeps no record buffer
 * either: an idle TLS connection is the SSL object and this struct.
 *
 * Ownership:
 * - A td_tls_server (the certificates a listener serves, one context per
 *   certificate, chosen by SNI) is reference-counted: the listener holds
 *   one reference and every connection it accepted holds one, so a reload
 *   can swap a listener's certificates while connections made with the old
 *   ones (and handshakes in flight) go on.
 * - A td_tls belongs to its connection and is freed with it (td_tls_free);
 *   its wire buffer's block comes from, and goes back to, the transport's
 *   pool given at creation, which must outlive it.
 * - Client contexts (trust stores) are cached per CA file, a few at most;
 *   connections hold their own reference, so an evicted one lives on.
 *
 * Errors: functions return 0 (or a count) or a negative code: TD_ETLS with
 * the reason in td_tls_error ("certificate verify failed: ...", "host name
 * mismatch", OpenSSL's reason text), UV_ENOMEM, or UV_EOF (the peer's
 * close_notify). OpenSSL's error queue is left empty after every call. */
#ifndef TD_TLS_H
#define TD_TLS_H

#include <stddef.h>
#include <sys/types.h>

#include "buf.h"

typedef struct td_tls_server td_tls_server;
typedef struct td_tls td_tls;

/* ---- serving ---- */
/* The n certificate (chain) and key files, the first the default for
 * clients that send no name or a name none of them covers. alpn_http:
 * select "http/1.1" when the client offers it (ALPN). NULL and a one-line
 * reason in err when a file is missing or unreadable or a key does not
 * match its certificate. */
td_tls_server *td_tls_server_new(const char *const *certs, const char *const *keys, size_t n, int alpn_http,
                                 char *err, size_t errsize);
void td_tls_server_ref(td_tls_server *s);
void td_tls_server_unref(td_tls_server *s);

/* Session-ticket keys (80 bytes): every server context made after this call
 * uses them, so resumption survives reloads (and, given the same keys,
 * works across processes). Made at random on first use otherwise. */
void td_tls_set_ticket_keys(const unsigned char keys[80]);

/* A server-side connection of s. NULL when out of memory. */
td_tls *td_tls_accept(td_tls_server *s, td_buf_pool *pool);

/* ---- calling out ---- */
/* A client-side connection: server_name is sent by SNI (unless it is an IP
 * address) and checked against the certificate when verify is set (an IP
 * address against the certificate's IP addresses); the certificate is
 * verified against ca_file, or the system's store when ca_file is NULL.
 * alpn: a protocol to offer, or NULL. session_key (NULL: none) names where
 * the session goes for the next connection with the same key to resume
 * (it must say everything that makes two connections alike: address,
 * name, trust); a session kept under it is resumed now. NULL and a reason
 * in err when the CA file cannot be loaded or memory ran out. */
td_tls *td_tls_connect(const char *server_name, int verify, const char *ca_file, const char *alpn,
                       const char *session_key, td_buf_pool *pool, char *err, size_t errsize);

/* The trust a verifying client needs: the store of ca_file (NULL: the
 * system's). td_tls_connect loads it when it is not kept yet, but loading
 * takes tens of milliseconds (the system's store): a caller on the loop
 * asks td_tls_trust_ready, loads on a worker thread (td_tls_trust_load: an
 * opaque context, or NULL and why) and keeps the result on the loop thread
 * (td_tls_trust_keep takes it; a context kept meanwhile wins). */
int td_tls_trust_ready(const char *ca_file);
void *td_tls_trust_load(const char *ca_file, char *err, size_t errsize);
void td_tls_trust_keep(const char *ca_file, void *ctx);

/* ---- one connection ---- */
void td_tls_free(td_tls *t);
/* Server side: what the transport sends unencrypted to a client whose first
 * bytes are not a TLS handshake (the listener's; it outlives t). */
void td_tls_set_refusal(td_tls *t, const char *reply, size_t len);
const char *td_tls_refusal(const td_tls *t, size_t *len);
/* A failure the transport saw (the peer left mid-handshake). */
void td_tls_set_error(td_tls *t, const char *reason);
/* The ciphertext waiting to be sent (empty, with no block, when none). */
td_buf *td_tls_wire(td_tls *t);
/* Ciphertext that arrived, valid until the next call on t. */
void td_tls_input(td_tls *t, const char *data, size_t len);
/* 1 when the handshake is done (now or before), 0 when it needs more
 * input (its output is in the wire buffer), or an error. */
int td_tls_handshake(td_tls *t);
/* Plaintext into buf: a count > 0, 0 when the input is used up, UV_EOF at
 * the peer's close_notify, or an error. */
ssize_t td_tls_read(td_tls *t, char *buf, size_t cap);
/* Encrypts all of data into the wire buffer (after the handshake). */
int td_tls_write(td_tls *t, const char *data, size_t len);
/* Adds a close_notify alert to the wire buffer (after the handshake;
 * once). */
void td_tls_close_notify(td_tls *t);
/* A pointer the transport keeps with the connection's TLS state (its queue
 * of output still to encrypt); td_tls_free leaves it alone. */
void **td_tls_user(td_tls *t);

int td_tls_established(const td_tls *t);
int td_tls_is_client(const td_tls *t);
/* Server side: no input has come yet. */
int td_tls_fresh(const td_tls *t);
/* Why the last call failed (no "tls: " prefix); "" when nothing failed. */
const char *td_tls_error(const td_tls *t);
/* After the handshake, OpenSSL's names: "TLSv1.3", "TLS_AES_256_GCM_SHA384",
 * the SNI name the client sent (NULL: none), the ALPN protocol (NULL). */
const char *td_tls_version(const td_tls *t);
const char *td_tls_cipher(const td_tls *t);
const char *td_tls_server_name(const td_tls *t);
const char *td_tls_alpn(const td_tls *t, size_t *len);
/* Whether the session was resumed. */
int td_tls_resumed(const td_tls *t);

/* TLS connection states alive now (the exit report checks for leftovers). */
size_t td_tls_live(void);
/* Frees the cached client contexts (at exit). */
void td_tls_shutdown(void);

#endif
