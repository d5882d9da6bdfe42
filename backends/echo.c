/* The echo expert: answers with the last user message, word by word. It needs no
 * model and no network, so the demo, health checks and client integrations can run
 * anywhere; it goes through the same dispatch, streaming and limits as any expert. */
#include <stdlib.h>
#include <string.h>

#include "backends/backend.h"
#include "common/buf.h"
#include "common/err.h"

typedef struct echo_call {
    coe_loop *loop;
    coe_sink sink;
    const coe_expert_cfg *expert;
    const coe_request *req;
    char *text;       /* owned: what is echoed */
    size_t pos;       /* next byte of text to send */
    long sent;        /* words sent */
    long max_words;   /* -1: no limit */
    long prompt_words;
    coe_timer *timer;
} echo_call;

/* Length of the next word at s, with its leading spaces. */
static size_t next_word(const char *s)
{
    size_t n = 0;
    while (s[n] == ' ' || s[n] == '\n' || s[n] == '\t')
        n++;
    while (s[n] && s[n] != ' ' && s[n] != '\n' && s[n] != '\t')
        n++;
    return n;
}

static long count_words(const char *s)
{
    long n = 0;
    for (size_t k; (k = next_word(s)) > 0; s += k)
        n++;
    return n;
}

static void finish(echo_call *c)
{
    const char *reason = c->text[c->pos] && c->sent >= c->max_words ? "length" : "stop";
    coe_usage u = {c->prompt_words, c->sent, c->prompt_words + c->sent};
    const coe_sink sink = c->sink;
    if (c->req->stream) {
        coe_delta d = {0};
        d.finish_reason = reason;
        sink.ops->delta(sink.ctx, &d);
    } else {
        coe_delta whole = {.content = c->text, .content_len = c->pos, .finish_reason = reason};
        sink.ops->choice(sink.ctx, &whole);
    }
    sink.ops->usage(sink.ctx, &u);
    free(c->text);
    free(c);
    sink.ops->done(sink.ctx);
}

static void step(void *arg)
{
    echo_call *c = arg;
    c->timer = NULL;
    if (!c->req->stream) {
        /* The whole answer at once: take every word allowed. */
        size_t k;
        while ((c->max_words < 0 || c->sent < c->max_words) && (k = next_word(c->text + c->pos)) > 0) {
            c->pos += k;
            c->sent++;
        }
        finish(c);
        return;
    }
    size_t k = next_word(c->text + c->pos);
    if (k == 0 || (c->max_words >= 0 && c->sent >= c->max_words)) {
        finish(c);
        return;
    }
    coe_delta d = {0};
    d.content = c->text + c->pos;
    d.content_len = k;
    c->pos += k;
    c->sent++;
    c->sink.ops->delta(c->sink.ctx, &d);
    c->timer = coe_loop_after(c->loop, c->expert->delay_ms, step, c);
}

static int echo_start(coe_loop *loop, const coe_expert_cfg *e, const coe_request *req, const coe_sink *sink,
                      void **out)
{
    echo_call *c = calloc(1, sizeof *c);
    if (!c)
        return COE_ENOMEM;
    c->loop = loop;
    c->sink = *sink;
    c->expert = e;
    c->req = req;
    const char *text = coe_request_last_user_text(req);
    /* Skip leading blanks so the answer starts with a word. */
    while (*text == ' ' || *text == '\n' || *text == '\t')
        text++;
    c->text = strdup(text);
    c->max_words = coe_effective_max_tokens(e, req);
    c->prompt_words = count_words(text);
    c->timer = c->text ? coe_loop_after(loop, 0, step, c) : NULL;
    if (!c->timer) {
        free(c->text);
        free(c);
        return COE_ENOMEM;
    }
    *out = c;
    return 0;
}

static void echo_cancel(coe_loop *loop, void *call)
{
    echo_call *c = call;
    coe_loop_cancel(loop, c->timer);
    free(c->text);
    free(c);
}

const coe_backend_ops coe_echo_backend = {"echo", echo_start, echo_cancel, NULL};
