/* Shared by http.c (parsing, request lifecycle) and http_response.c (the
 * response head, error responses, the access log). Nothing else includes it. */
#ifndef TD_HTTP_PRIVATE_H
#define TD_HTTP_PRIVATE_H

#include "http.h"

static inline td_http_server *td_http__server(td_http_conn *hc) { return hc->conn.owner; }

/* Answers with a short server-made response and ends the connection; the
 * live request, if any, is over. */
void td_http__error_response(td_http_conn *hc, int status);
/* The request that just ended: counted (td_http_counts), and its access
 * log line written. */
void td_http__access_log(td_http_conn *hc);
/* Ends the live request's bookkeeping (serial, counts) and tells the layer
 * above (status as in td_http_over_cb); no I/O. */
void td_http__request_over(td_http_conn *hc, int status);

#endif
