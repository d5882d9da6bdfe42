/* GGUF files: any bytes give a file whose every tensor lies inside the input, or a
 * message; describing an accepted file never fails. */
#include <stdint.h>
#include <stdlib.h>

#include "common/buf.h"
#include "common/gguf.h"
#include "experts/model_info.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    coe_buf diag = COE_BUF_INIT;
    coe_gguf *g = NULL;
    if (coe_gguf_open_memory(&g, data, size, "fuzz.gguf", &diag) == 0) {
        for (uint64_t i = 0; i < g->n_tensors; i++) {
            const uint8_t *p = g->tensors[i].data;
            if (p < data || p + g->tensors[i].n_bytes > data + size)
                abort();
        }
        coe_model_info(g, &diag);
    } else if (diag.len == 0 || g) {
        abort();
    }
    coe_gguf_close(&g);
    coe_buf_free(&diag);
    return 0;
}
