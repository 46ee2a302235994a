/* libFuzzer harness: the request path. The input's bytes go into tendril's
 * HTTP server over a loopback connection (fuzz_server.h), pipelined, cut
 * into reads at points derived from the input, while a stand-in handler
 * answers each request in a way the input chooses.
 *
 * Input: 7 control bytes, then what the client sends.
 *   [0]    limits: bits 0-1 pick max_header_bytes, bits 2-3 max_body_bytes
 *   [1..2] the cut seed (fuzz_cuts: its low 2 bits are the mode)
 *   [3..6] the behaviours of requests 0..3, 4..7, ... (enum fuzz_behaviour)
 * A digit stands for its value, so seeds can be written as text
 * ("0000000GET / HTTP/1.1...").
 *
 * Besides fuzz_server_run's checks:
 * - the well-formed requests the input starts with (fuzz_ref_request) are
 *   all handed over, in order, with their method and target, up to the
 *   first whose handler ends the connection or never answers;
 * - what does not depend on timing does not depend on where the input was
 *   cut either (fuzz_server_compare): the input runs again in one piece. */
#include <stdint.h>
#include <string.h>

#include "fuzz_server.h"

#define CONTROL 7
#define MAX_CUTS 64

static const size_t header_limits[4] = {65536, 8192, 256, 64};
static const size_t body_limits[4] = {1 << 20, 4096, 16, 0};

static fuzz_server_result split_run, whole_run;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < CONTROL)
        return 0;
    unsigned config = fuzz_digit(data[0]);
    uint32_t cut_seed = (uint32_t)data[1] | (uint32_t)data[2] << 8;
    uint8_t behaviours[4];
    for (int i = 0; i < 4; i++)
        behaviours[i] = (uint8_t)fuzz_digit(data[3 + i]);
    size_t cuts[MAX_CUTS];
    fuzz_server_input in = {
        .data = (const char *)data + CONTROL,
        .len = size - CONTROL,
        .cuts = cuts,
        .behaviours = behaviours,
        .nbehaviours = 4,
        .max_header_bytes = header_limits[config & 3],
        .max_body_bytes = body_limits[(config >> 2) & 3],
    };
    in.ncuts = fuzz_cuts(cut_seed, in.len, cuts, MAX_CUTS);
    fuzz_server_run(&in, &split_run);
    fuzz_check_handed_over(in.data, in.len, in.max_header_bytes, &split_run, 0,
                           split_run.trailer_close ? "trailer-close" : NULL);
    if (in.ncuts > 0) {
        in.ncuts = 0;
        fuzz_server_run(&in, &whole_run);
        fuzz_server_compare(&split_run, &whole_run);
    }
    return 0;
}
