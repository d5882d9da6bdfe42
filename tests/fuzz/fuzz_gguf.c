/* GGUF files: any bytes give a file whose every tensor lies inside the input, or a
 * message; describing an accepted file never fails. An accepted file then goes
 * through the vocabulary and model loaders, which either refuse it with a message or
 * give a vocabulary that tokenizes and a model that computes a token. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "common/gguf.h"
#include "experts/engine.h"
#include "experts/model_info.h"
#include "experts/tokenizer.h"

static void try_vocab(const coe_gguf *g)
{
    coe_vocab v;
    coe_buf diag = COE_BUF_INIT;
    if (coe_vocab_load(&v, g, &diag) != 0) {
        if (diag.len == 0)
            abort();
        coe_buf_free(&diag);
        return;
    }
    static const char text[] = "Hello <s> w\xC3\xB6rld 123 \xE4\xB8\xAD\n\xFF";
    int32_t *ids = NULL;
    size_t n = 0, cap = 0;
    if (coe_tokenize_prompt(&v, text, sizeof text - 1, &ids, &n, &cap) == 0)
        for (size_t i = 0; i < n; i++)
            if (ids[i] < 0 || ids[i] >= v.n || coe_token_bytes(&v, ids[i], &diag) != 0)
                abort();
    free(ids);
    coe_vocab_free(&v);
    coe_buf_free(&diag);
}

/* Takes g. */
static void try_model(coe_gguf *g)
{
    coe_model *m = NULL;
    coe_buf diag = COE_BUF_INIT;
    if (coe_model_from_gguf(&m, g, &diag) != 0) {
        if (diag.len == 0 || m)
            abort();
        coe_buf_free(&diag);
        return;
    }
    coe_engine *e = coe_engine_new(m, 1, 4);
    coe_kv *kv = coe_kv_new(m);
    float *logits = malloc((size_t)m->n_vocab * sizeof *logits);
    int32_t tok = 0;
    bool want = true;
    coe_batch b = {1, &tok, &kv, &want, NULL};
    if (e && kv && logits)
        coe_engine_forward(e, &b, logits, &diag);
    free(logits);
    coe_kv_free(&kv);
    coe_engine_free(&e);
    coe_model_close(&m);
    coe_buf_free(&diag);
}

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
        try_vocab(g);
        try_model(g); /* takes g */
        g = NULL;
    } else if (diag.len == 0 || g) {
        abort();
    }
    coe_gguf_close(&g);
    coe_buf_free(&diag);
    return 0;
}
