/* Owns the OpenSSL objects: server contexts (certificates, SNI, ALPN,
 * tickets), the client contexts' cache, and each connection's SSL with its
 * BIO and wire buffer. */
#include "tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "errors.h"

struct td_tls_server {
    int refs;
    size_t n;
    SSL_CTX **ctx; /* one per certificate; ctx[0] is the default */
    X509 **cert;   /* each context's leaf, for SNI (owned by the context) */
};

struct td_tls {
    SSL *ssl;
    td_tls_server *server; /* a reference, server side */
    td_buf_pool *pool;
    td_buf wire;
    const char *in; /* ciphertext not yet taken by OpenSSL */
    size_t in_len;
    const char *refusal;
    size_t refusal_len;
    void *user;
    char *session_key; /* client: where its session is kept for the next connection */
    char *err;
    unsigned client : 1;
    unsigned established : 1;
    unsigned fresh : 1;
    unsigned verify : 1;
    unsigned notified : 1;
};

static size_t live;
static BIO_METHOD *bio_method;
static unsigned char ticket_keys[80];
static int ticket_keys_set;

/* ---- errors ---- */

/* The reason of the oldest error queued, and the queue emptied. */
static const char *queued_reason(void) {
    unsigned long e = ERR_get_error();
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    ERR_clear_error();
    return r;
}

static void set_error(td_tls *t, const char *fmt, const char *arg) {
    char msg[256];
    snprintf(msg, sizeof msg, fmt, arg);
    free(t->err);
    t->err = strdup(msg);
}

/* After a failed SSL call: why, in the words a user can act on. */
static int failed(td_tls *t, int ssl_error) {
    long v = t->client && t->verify ? SSL_get_verify_result(t->ssl) : X509_V_OK;
    if (v == X509_V_ERR_HOSTNAME_MISMATCH || v == X509_V_ERR_IP_ADDRESS_MISMATCH) {
        ERR_clear_error();
        set_error(t, "%s", "host name mismatch");
    } else if (v != X509_V_OK) {
        ERR_clear_error();
        set_error(t, "certificate verify failed: %s", X509_verify_cert_error_string(v));
    } else {
        const char *r = queued_reason();
        if (r && t->client && strcmp(r, "wrong version number") == 0)
            set_error(t, "%s", "wrong version number (the server does not seem to speak TLS)");
        else if (r)
            set_error(t, "%s", r);
        else if (ssl_error == SSL_ERROR_SYSCALL)
            set_error(t, "%s", "unexpected end of the handshake");
        else
            set_error(t, "%s", "protocol error");
    }
    return TD_ETLS;
}

const char *td_tls_error(const td_tls *t) { return t->err ? t->err : ""; }

/* ---- the BIO: OpenSSL's I/O over the transport's buffers ---- */

static int bio_read(BIO *b, char *out, int len) {
    td_tls *t = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (t->in_len == 0) {
        BIO_set_retry_read(b);
        return -1;
    }
    size_t n = t->in_len < (size_t)len ? t->in_len : (size_t)len;
    memcpy(out, t->in, n);
    t->in += n;
    t->in_len -= n;
    return (int)n;
}

static int bio_write(BIO *b, const char *data, int len) {
    td_tls *t = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (!t->wire.data && td_buf_pool_take(t->pool, &t->wire) != 0)
        return -1;
    if (td_buf_append(&t->wire, data, (size_t)len) != 0)
        return -1;
    return len;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr) {
    (void)b, (void)num, (void)ptr;
    /* Writes land in the wire buffer at once: nothing to flush. */
    return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static int bio_create(BIO *b) {
    BIO_set_init(b, 1);
    return 1;
}

static int init_bio_method(void) {
    if (bio_method)
        return 0;
    bio_method = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "tendril");
    if (!bio_method || !BIO_meth_set_read(bio_method, bio_read) || !BIO_meth_set_write(bio_method, bio_write) ||
        !BIO_meth_set_ctrl(bio_method, bio_ctrl) || !BIO_meth_set_create(bio_method, bio_create))
        return -1;
    return 0;
}

/* ---- contexts ---- */

static void common_options(SSL_CTX *ctx) {
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    /* A TLS 1.2 renegotiation would run SNI again after the connection let
     * go of its certificates (and costs the server a handshake at will). */
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION);
    /* Record buffers are freed whenever they are empty: idle connections
     * hold none. Output is always written whole (the BIO never refuses). */
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
}

void td_tls_set_ticket_keys(const unsigned char keys[80]) {
    memcpy(ticket_keys, keys, sizeof ticket_keys);
    ticket_keys_set = 1;
}

static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in,
                       unsigned int inlen, void *arg) {
    (void)ssl, (void)arg;
    for (unsigned i = 0; i < inlen; i += 1u + in[i]) {
        if (in[i] == 8 && i + 9 <= inlen && memcmp(in + i + 1, "http/1.1", 8) == 0) {
            *out = in + i + 1;
            *outlen = 8;
            return SSL_TLSEXT_ERR_OK;
        }
    }
    /* No protocol in common: go on without ALPN (curl offering only h2
     * still gets HTTP/1.1 answers it understands). */
    return SSL_TLSEXT_ERR_NOACK;
}

/* SNI: the first certificate that covers the name the client sent. */
static int select_certificate(SSL *ssl, int *alert, void *arg) {
    td_tls_server *s = arg;
    (void)alert;
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    if (!name || s->n < 2)
        return SSL_TLSEXT_ERR_OK;
    for (size_t i = 0; i < s->n; i++) {
        if (X509_check_host(s->cert[i], name, 0, 0, NULL) == 1) {
            if (i > 0)
                SSL_set_SSL_CTX(ssl, s->ctx[i]);
            break;
        }
    }
    return SSL_TLSEXT_ERR_OK;
}

/* 0, or -1 and why (the file cannot be opened, or is a directory). With
 * encrypted set, also whether it holds an encrypted PEM key. */
static int readable(const char *path, char *err, size_t errsize, const char *what, int *encrypted) {
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errsize, "cannot read the %s %s: %s", what, path, strerror(errno));
        return -1;
    }
    char buf[4096];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    int failed = ferror(f);
    int e = errno;
    fclose(f);
    if (failed) {
        snprintf(err, errsize, "cannot read the %s %s: %s", what, path, strerror(e));
        return -1;
    }
    buf[n] = '\0';
    if (encrypted)
        *encrypted = strstr(buf, "ENCRYPTED") != NULL;
    return 0;
}

/* A key with a passphrase would make OpenSSL ask on the terminal, blocking
 * the loop: tendril takes keys without one. */
static int no_passphrase(char *buf, int size, int rwflag, void *ud) {
    (void)buf, (void)size, (void)rwflag, (void)ud;
    return -1;
}

static SSL_CTX *server_context(td_tls_server *s, const char *cert, const char *key, int alpn_http, char *err,
                               size_t errsize) {
    int encrypted = 0;
    if (readable(cert, err, errsize, "certificate", NULL) != 0 || readable(key, err, errsize, "key", &encrypted) != 0)
        return NULL;
    if (encrypted) {
        snprintf(err, errsize, "the key %s is encrypted: tendril needs it without a passphrase", key);
        return NULL;
    }
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        snprintf(err, errsize, "cannot make a TLS context: %s", queued_reason());
        return NULL;
    }
    common_options(ctx);
    SSL_CTX_set_default_passwd_cb(ctx, no_passphrase);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
        snprintf(err, errsize, "cannot load the certificate %s: %s", cert, queued_reason());
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
        /* Loading checks the key against the certificate already. */
        int mismatch = ERR_GET_REASON(ERR_peek_error()) == X509_R_KEY_VALUES_MISMATCH;
        const char *why = queued_reason();
        if (mismatch)
            snprintf(err, errsize, "the key %s does not match the certificate %s", key, cert);
        else
            snprintf(err, errsize, "cannot load the key %s: %s", key, why);
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        ERR_clear_error();
        snprintf(err, errsize, "the key %s does not match the certificate %s", key, cert);
        goto fail;
    }
    /* Resumption by tickets only: no per-session memory on the server. */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    if (!ticket_keys_set) {
        if (RAND_bytes(ticket_keys, sizeof ticket_keys) != 1) {
            snprintf(err, errsize, "cannot make session-ticket keys: %s", queued_reason());
            goto fail;
        }
        ticket_keys_set = 1;
    }
    SSL_CTX_set_tlsext_ticket_keys(ctx, ticket_keys, sizeof ticket_keys);
    SSL_CTX_set_tlsext_servername_callback(ctx, select_certificate);
    SSL_CTX_set_tlsext_servername_arg(ctx, s);
    if (alpn_http)
        SSL_CTX_set_alpn_select_cb(ctx, alpn_select, NULL);
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

td_tls_server *td_tls_server_new(const char *const *certs, const char *const *keys, size_t n, int alpn_http,
                                 char *err, size_t errsize) {
    if (init_bio_method() != 0) {
        snprintf(err, errsize, "out of memory");
        return NULL;
    }
    td_tls_server *s = calloc(1, sizeof *s);
    if (!s || !(s->ctx = calloc(n, sizeof *s->ctx)) || !(s->cert = calloc(n, sizeof *s->cert))) {
        snprintf(err, errsize, "out of memory");
        goto fail;
    }
    s->refs = 1;
    for (size_t i = 0; i < n; i++) {
        s->ctx[i] = server_context(s, certs[i], keys[i], alpn_http, err, errsize);
        if (!s->ctx[i])
            goto fail;
        s->n = i + 1;
        s->cert[i] = SSL_CTX_get0_certificate(s->ctx[i]);
    }
    return s;
fail:
    if (s) {
        s->refs = 1;
        td_tls_server_unref(s);
    }
    return NULL;
}

void td_tls_server_ref(td_tls_server *s) { s->refs++; }

void td_tls_server_unref(td_tls_server *s) {
    if (!s || --s->refs > 0)
        return;
    for (size_t i = 0; i < s->n; i++)
        SSL_CTX_free(s->ctx[i]);
    free(s->ctx);
    free(s->cert);
    free(s);
}

/* Client contexts by trust: a CA file, "" for the system's store, or
 * NO_TRUST for connections that verify nothing. Loading a store costs tens
 * of milliseconds (the system's), so a handshake must not pay it and the
 * loop should not wait for it: td_tls_trust_load runs on a worker thread. */
#define CLIENT_CONTEXTS 8
#define NO_TRUST "\001"
static struct {
    char *key;
    SSL_CTX *ctx;
} clients[CLIENT_CONTEXTS];
static size_t next_evicted;

static const char *trust_key(const char *ca_file) { return ca_file ? ca_file : ""; }

static SSL_CTX *cached_context(const char *key) {
    for (size_t i = 0; i < CLIENT_CONTEXTS; i++)
        if (clients[i].ctx && strcmp(clients[i].key, key) == 0)
            return clients[i].ctx;
    return NULL;
}

/* ---- client sessions ----
 *
 * A new connection to a server this process spoke to resumes the last
 * session it got there (a ticket): no certificate chain to send and verify,
 * no signature. Sessions are kept per key (the caller's: the pool's key,
 * which holds the name, port and trust), a few dozen at most, and each is
 * used once (TLS 1.3 tickets are single-use; the resumed connection brings
 * a new one). */
#define CLIENT_SESSIONS 64
static struct {
    char *key;
    SSL_SESSION *sess;
    uint64_t used; /* when stored, for eviction */
} sessions[CLIENT_SESSIONS];
static uint64_t session_clock;

static void drop_session(size_t i) {
    SSL_SESSION_free(sessions[i].sess);
    free(sessions[i].key);
    sessions[i].sess = NULL;
    sessions[i].key = NULL;
}

/* Keeps sess (taking the reference: 1) under key, replacing the key's
 * older session; 0 when it cannot. */
static int keep_session(const char *key_wanted, SSL_SESSION *sess) {
    if (!SSL_SESSION_is_resumable(sess))
        return 0;
    size_t slot = CLIENT_SESSIONS;
    for (size_t i = 0; i < CLIENT_SESSIONS && slot == CLIENT_SESSIONS; i++)
        if (sessions[i].key && strcmp(sessions[i].key, key_wanted) == 0)
            slot = i; /* the key's older session gives way */
    if (slot == CLIENT_SESSIONS) {
        slot = 0;
        for (size_t i = 0; i < CLIENT_SESSIONS; i++) {
            if (!sessions[i].key) {
                slot = i; /* a free one */
                break;
            }
            if (sessions[i].used < sessions[slot].used)
                slot = i; /* else the oldest */
        }
        char *key = strdup(key_wanted);
        if (!key)
            return 0;
        drop_session(slot);
        sessions[slot].key = key;
    } else {
        SSL_SESSION_free(sessions[slot].sess);
    }
    sessions[slot].sess = sess;
    sessions[slot].used = ++session_clock;
    return 1;
}

/* OpenSSL's callback for a session (or ticket) the client received: kept
 * under the connection's key (returning 1 keeps OpenSSL's reference). */
static int on_new_session(SSL *ssl, SSL_SESSION *sess) {
    td_tls *t = SSL_get_app_data(ssl);
    return t && t->session_key ? keep_session(t->session_key, sess) : 0;
}

/* The session kept for key, taken out of the cache (one use), or NULL. */
static SSL_SESSION *take_session(const char *key) {
    for (size_t i = 0; i < CLIENT_SESSIONS; i++) {
        if (sessions[i].key && strcmp(sessions[i].key, key) == 0) {
            SSL_SESSION *s = sessions[i].sess;
            sessions[i].sess = NULL;
            free(sessions[i].key);
            sessions[i].key = NULL;
            return s;
        }
    }
    return NULL;
}

/* Thread-safe: touches no shared state but OpenSSL's. */
static SSL_CTX *load_context(const char *key, char *err, size_t errsize) {
    int system = key[0] == '\0', none = strcmp(key, NO_TRUST) == 0;
    if (!system && !none && readable(key, err, errsize, "CA file", NULL) != 0)
        return NULL;
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        snprintf(err, errsize, "out of memory");
        ERR_clear_error();
        return NULL;
    }
    common_options(ctx);
    /* Sessions go to on_new_session, not to OpenSSL's own client cache. */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(ctx, on_new_session);
    int ok = none ? 1 : system ? SSL_CTX_set_default_verify_paths(ctx) : SSL_CTX_load_verify_locations(ctx, key, NULL);
    if (ok != 1) {
        snprintf(err, errsize, "cannot load the CA file %s: %s", system ? "(the system's)" : key, queued_reason());
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

/* Keeps ctx (taken) under key, unless one is kept already. */
static SSL_CTX *keep_context(const char *key, SSL_CTX *ctx) {
    SSL_CTX *old = cached_context(key);
    char *name = old ? NULL : strdup(key);
    if (old || !name) {
        free(name);
        SSL_CTX_free(ctx);
        return old;
    }
    size_t i = next_evicted;
    next_evicted = (next_evicted + 1) % CLIENT_CONTEXTS;
    SSL_CTX_free(clients[i].ctx); /* connections hold their own reference */
    free(clients[i].key);
    clients[i].ctx = ctx;
    clients[i].key = name;
    return ctx;
}

static SSL_CTX *client_context(const char *key, char *err, size_t errsize) {
    SSL_CTX *ctx = cached_context(key);
    if (ctx)
        return ctx;
    ctx = load_context(key, err, errsize);
    return ctx ? keep_context(key, ctx) : NULL;
}

int td_tls_trust_ready(const char *ca_file) { return cached_context(trust_key(ca_file)) != NULL; }

void *td_tls_trust_load(const char *ca_file, char *err, size_t errsize) {
    return load_context(trust_key(ca_file), err, errsize);
}

void td_tls_trust_keep(const char *ca_file, void *ctx) {
    if (ctx)
        keep_context(trust_key(ca_file), ctx);
}

void td_tls_shutdown(void) {
    for (size_t i = 0; i < CLIENT_CONTEXTS; i++) {
        SSL_CTX_free(clients[i].ctx);
        free(clients[i].key);
        clients[i].ctx = NULL;
        clients[i].key = NULL;
    }
    BIO_meth_free(bio_method);
    bio_method = NULL;
    for (size_t i = 0; i < CLIENT_SESSIONS; i++)
        drop_session(i);
}

/* ---- connections ---- */

static td_tls *tls_new(SSL_CTX *ctx, td_buf_pool *pool) {
    td_tls *t = calloc(1, sizeof *t);
    SSL *ssl = t ? SSL_new(ctx) : NULL;
    BIO *bio = ssl ? BIO_new(bio_method) : NULL;
    if (!bio) {
        SSL_free(ssl);
        free(t);
        ERR_clear_error();
        return NULL;
    }
    BIO_set_data(bio, t);
    SSL_set_bio(ssl, bio, bio);
    t->ssl = ssl;
    t->pool = pool;
    live++;
    return t;
}

td_tls *td_tls_accept(td_tls_server *s, td_buf_pool *pool) {
    td_tls *t = tls_new(s->ctx[0], pool);
    if (!t)
        return NULL;
    SSL_set_accept_state(t->ssl);
    td_tls_server_ref(s);
    t->server = s;
    t->fresh = 1;
    return t;
}

static int is_ip(const char *name) {
    unsigned char buf[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, name, buf) == 1 || inet_pton(AF_INET6, name, buf) == 1;
}

td_tls *td_tls_connect(const char *server_name, int verify, const char *ca_file, const char *alpn,
                       const char *session_key, td_buf_pool *pool, char *err, size_t errsize) {
    if (init_bio_method() != 0) {
        snprintf(err, errsize, "out of memory");
        return NULL;
    }
    /* Verifying nothing needs no trust store at all. */
    SSL_CTX *ctx = client_context(verify ? trust_key(ca_file) : NO_TRUST, err, errsize);
    if (!ctx)
        return NULL;
    td_tls *t = tls_new(ctx, pool);
    if (!t) {
        snprintf(err, errsize, "out of memory");
        return NULL;
    }
    if (verify && (!server_name || !*server_name)) {
        /* Verifying a chain without a name proves nothing about the peer. */
        snprintf(err, errsize, "a server name is needed to verify the certificate (or verify = false)");
        td_tls_free(t);
        return NULL;
    }
    t->client = 1;
    t->verify = verify ? 1 : 0;
    SSL_set_connect_state(t->ssl);
    int ok = 1;
    if (server_name && *server_name) {
        int ip = is_ip(server_name);
        if (!ip)
            ok = SSL_set_tlsext_host_name(t->ssl, server_name) == 1;
        if (ok && verify) {
            X509_VERIFY_PARAM *param = SSL_get0_param(t->ssl);
            ok = ip ? X509_VERIFY_PARAM_set1_ip_asc(param, server_name) == 1 : SSL_set1_host(t->ssl, server_name) == 1;
            SSL_set_hostflags(t->ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        }
    }
    SSL_set_verify(t->ssl, verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, NULL);
    if (ok && alpn) {
        unsigned char protos[256];
        size_t n = strlen(alpn);
        if (n > 0 && n < 255) {
            protos[0] = (unsigned char)n;
            memcpy(protos + 1, alpn, n);
            ok = SSL_set_alpn_protos(t->ssl, protos, (unsigned)n + 1) == 0;
        }
    }
    if (!ok) {
        snprintf(err, errsize, "invalid server name '%s'", server_name);
        ERR_clear_error();
        td_tls_free(t);
        return NULL;
    }
    if (session_key && *session_key) {
        if (!(t->session_key = strdup(session_key))) {
            snprintf(err, errsize, "out of memory");
            td_tls_free(t);
            return NULL;
        }
        SSL_set_app_data(t->ssl, t);
        SSL_SESSION *sess = take_session(session_key);
        if (sess) {
            if (SSL_set_session(t->ssl, sess) != 1)
                ERR_clear_error(); /* a full handshake then */
            SSL_SESSION_free(sess);
        }
    }
    return t;
}

void td_tls_free(td_tls *t) {
    if (!t)
        return;
    /* Freeing a connection that sent no close_notify would mark its session
     * (the last ticket, kept for the next connection) not resumable; since
     * TLS 1.1 an unclean close no longer forbids resumption. A failure
     * (a fatal alert) has marked it already. */
    if (t->client && t->established && !t->err)
        SSL_set_shutdown(t->ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
    SSL_free(t->ssl); /* frees the BIO */
    td_tls_server_unref(t->server);
    td_buf_pool_give(t->pool, &t->wire);
    free(t->err);
    free(t->session_key);
    free(t);
    live--;
}

td_buf *td_tls_wire(td_tls *t) { return &t->wire; }

void td_tls_set_refusal(td_tls *t, const char *reply, size_t len) {
    t->refusal = reply;
    t->refusal_len = len;
}

const char *td_tls_refusal(const td_tls *t, size_t *len) {
    *len = t->refusal_len;
    return t->refusal;
}

void td_tls_set_error(td_tls *t, const char *reason) { set_error(t, "%s", reason); }

void td_tls_input(td_tls *t, const char *data, size_t len) {
    t->in = data;
    t->in_len = len;
    t->fresh = 0;
}

int td_tls_handshake(td_tls *t) {
    if (t->established)
        return 1;
    int rc = SSL_do_handshake(t->ssl);
    if (rc == 1) {
        t->established = 1;
        /* Before TLS 1.3 a session serves many connections, and a resumed
         * one brings no new session to on_new_session: keep it again. */
        if (t->client && t->session_key && SSL_version(t->ssl) < TLS1_3_VERSION) {
            SSL_SESSION *sess = SSL_get1_session(t->ssl);
            if (sess && !keep_session(t->session_key, sess))
                SSL_SESSION_free(sess);
        }
        /* The handshake's buffers are gone; the server reference is only
         * needed for SNI, which is over. */
        td_tls_server_unref(t->server);
        t->server = NULL;
        return 1;
    }
    int e = SSL_get_error(t->ssl, rc);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
        return 0;
    return failed(t, e);
}

ssize_t td_tls_read(td_tls *t, char *buf, size_t cap) {
    size_t n = 0;
    int rc = SSL_read_ex(t->ssl, buf, cap, &n);
    if (rc == 1)
        return (ssize_t)n;
    int e = SSL_get_error(t->ssl, rc);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
        return 0;
    if (e == SSL_ERROR_ZERO_RETURN)
        return UV_EOF;
    return failed(t, e);
}

int td_tls_write(td_tls *t, const char *data, size_t len) {
    while (len > 0) {
        size_t n = 0;
        int rc = SSL_write_ex(t->ssl, data, len, &n);
        if (rc != 1) {
            int e = SSL_get_error(t->ssl, rc);
            if (e == SSL_ERROR_SYSCALL && !ERR_peek_error())
                return UV_ENOMEM; /* the BIO could not grow the wire buffer */
            return failed(t, e);
        }
        data += n;
        len -= n;
    }
    return 0;
}

void td_tls_close_notify(td_tls *t) {
    if (!t->established || t->notified)
        return;
    t->notified = 1;
    if (SSL_shutdown(t->ssl) < 0)
        ERR_clear_error();
}

void **td_tls_user(td_tls *t) { return &t->user; }

int td_tls_established(const td_tls *t) { return t->established; }
int td_tls_is_client(const td_tls *t) { return t->client; }
int td_tls_fresh(const td_tls *t) { return t->fresh; }
const char *td_tls_version(const td_tls *t) { return SSL_get_version(t->ssl); }
const char *td_tls_cipher(const td_tls *t) { return SSL_get_cipher_name(t->ssl); }
const char *td_tls_server_name(const td_tls *t) { return SSL_get_servername(t->ssl, TLSEXT_NAMETYPE_host_name); }
int td_tls_resumed(const td_tls *t) { return SSL_session_reused(t->ssl); }

const char *td_tls_alpn(const td_tls *t, size_t *len) {
    const unsigned char *p = NULL;
    unsigned n = 0;
    SSL_get0_alpn_selected(t->ssl, &p, &n);
    *len = n;
    return n ? (const char *)p : NULL;
}

size_t td_tls_live(void) { return live; }
