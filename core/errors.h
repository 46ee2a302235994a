/* Error codes shared by every module, and the one table of their names.
 *
 * C functions return 0 or a negative code: libuv's UV_E* (negated errno) or
 * one of tendril's own below. The short text Lua sees ("timeout", "closed",
 * "connection refused") is made from the code in td_err_name and nowhere
 * else; C never compares error text. */
#ifndef TD_ERRORS_H
#define TD_ERRORS_H

enum {
    /* Below libuv's range (it ends near -4096). */
    TD_ECLOSED = -5001,   /* the connection or request is over */
    TD_ETIMEOUT = -5002,  /* a deadline passed */
    TD_ETOOLARGE = -5003, /* a size limit was exceeded */
    TD_EBADARG = -5004,   /* a value that cannot be sent, e.g. CR/LF in a header */
    TD_EPROTO = -5005,    /* the peer broke the protocol (an invalid HTTP response) */
    TD_ETLS = -5006,      /* TLS failed: the reason is the connection's (td_tls_error) */
    TD_ESHORT = -5007,    /* a file ended before the bytes asked of it (it shrank) */
};

/* A short lower-case name for code: "closed", "timeout", "too large",
 * "connection refused", ... Never NULL. */
const char *td_err_name(int code);

#endif
