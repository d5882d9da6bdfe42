/* Dispatch: answers one request with an expert, on the loop thread. It owns the
 * attempt state: concurrency slots, retries with jittered backoff before anything
 * reached the client, then the expert's fallbacks, and the commit point after which
 * failures become an error event in the stream. */
#ifndef COE_DISPATCH_H
#define COE_DISPATCH_H

#include "common/loop.h"
#include "gateway/config.h"
#include "gateway/exchange.h"
#include "gateway/request.h"

/* Takes over req and a reference to cfg and ex; the answer goes to ex. id is the
 * request id, repeated in the response ids. On loop's thread the expert is asked at
 * once (it never reports from inside this call); from another thread it is posted. */
int coe_dispatch_start(coe_loop *loop, coe_config *cfg, coe_request *req, int expert, const char *id,
                       coe_exchange *ex);
/* Loop thread: the client has gone; stop whatever answers ex, at once. */
void coe_dispatch_cancel(coe_exchange *ex);

/* The OpenAI error type for an HTTP status. */
const char *coe_error_type(int status);

/* Appends the circuit breakers' gauge (Prometheus text) for cfg's experts. */
void coe_dispatch_metrics(coe_config *cfg, coe_buf *out);

#endif
