/* The error name table. */
#include "errors.h"

#include <uv.h>

const char *td_err_name(int code) {
    switch (code) {
    case TD_ECLOSED:
    case UV_EOF:
    case UV_EPIPE:
    case UV_ECONNRESET:
    case UV_ECANCELED:
    case UV_ENOTCONN:
        return "closed";
    case TD_ETIMEOUT:
    case UV_ETIMEDOUT:
        return "timeout";
    case TD_ETOOLARGE:
        return "too large";
    case TD_EBADARG:
        return "bad argument";
    case TD_EPROTO:
        return "invalid response";
    case TD_ETLS:
        return "tls: failed";
    case TD_ESHORT:
        return "file shrank";
    case UV_ECONNREFUSED:
        return "connection refused";
    case UV_ENOENT:
        return "no such file or directory";
    case UV_EACCES:
        return "permission denied";
    case UV_EMFILE:
    case UV_ENFILE:
        return "too many open files";
    case UV_ENOMEM:
        return "out of memory";
    case UV_EADDRINUSE:
        return "address in use";
    case UV_EHOSTUNREACH:
        return "host unreachable";
    case UV_ENETUNREACH:
        return "network unreachable";
    case UV_EAI_NONAME:
        return "host not found";
    default:
        return uv_strerror(code);
    }
}
