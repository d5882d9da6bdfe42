/* The HTTP server: worker threads with an event loop each (gateway/http.c), the OpenAI-compatible
 * endpoints, limits, authentication and the access log. */
#ifndef COE_SERVER_H
#define COE_SERVER_H

#include "common/loop.h"
#include "gateway/config.h"

typedef struct coe_server coe_server;

/* Starts listening as cfg->server says, with server.threads workers (one per core
 * by default), each an event loop of its own. cfg is referenced. On failure a
 * message naming the cause is logged. */
int coe_server_open(coe_server **out, coe_config *cfg);
/* The port actually bound (useful with port 0). */
int coe_server_port(const coe_server *s);
/* Serves new requests with cfg (referenced); requests in flight keep theirs. Settings
 * that need a new socket or thread pool (host, port, threads, connection limits) are
 * reported and left as they were. */
void coe_server_set_config(coe_server *s, coe_config *cfg);
/* Stops accepting connections; new requests on open connections get 503. */
void coe_server_quiesce(coe_server *s);
/* Requests being answered now. */
int coe_server_inflight(coe_server *s);
/* Ends every request still open and stops the workers. */
void coe_server_stop(coe_server *s);
/* Stops (if need be) and frees the server. Sets *s to NULL. */
void coe_server_close(coe_server **s);

#endif
