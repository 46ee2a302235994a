/* permessage-deflate (RFC 7692) without context takeover, in either
 * direction: each message is compressed and decompressed on its own, so
 * no connection keeps a zlib stream between messages. The process keeps
 * one inflate stream and one deflate stream per window size, reset for
 * each message (a deflate stream is some 256 KiB: one per connection
 * would break any memory bound). No I/O, no Lua. */
#ifndef TD_WS_DEFLATE_H
#define TD_WS_DEFLATE_H

#include <stddef.h>

#include "buf.h"

/* Messages shorter than this are sent as they are: compressing them costs
 * more than it saves. */
#define TD_WS_DEFLATE_MIN 64

/* Compresses a message with a window of 2^window_bits (9 to 15) into out
 * (its previous content replaced), without the final empty block's four
 * bytes (RFC 7692, 7.2.1). 0, or UV_ENOMEM. */
int td_ws_deflate(const char *data, size_t len, int window_bits, td_buf *out);

/* Decompresses a message (the four bytes added back) into out (replaced):
 * 0; TD_ETOOLARGE when it would pass max bytes; TD_EPROTO when the data is
 * not a valid deflate stream; UV_ENOMEM. */
int td_ws_inflate(const char *data, size_t len, size_t max, td_buf *out);

/* Frees the process's streams (teardown). */
void td_ws_deflate_shutdown(void);

#endif
