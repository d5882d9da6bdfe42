/* One request structure shared by every stage: parsed, bounded and validated
 * once at the edge, then read by the router, dispatch and the backends. */
#ifndef COE_REQUEST_H
#define COE_REQUEST_H

#include <stdbool.h>
#include <stddef.h>

#include <cJSON.h>

typedef enum coe_endpoint {
    COE_EP_CHAT,        /* POST /v1/chat/completions */
    COE_EP_COMPLETIONS, /* POST /v1/completions */
} coe_endpoint;

/* An error for the client, in OpenAI's shape {"error":{message,type,param,code}}. */
typedef struct coe_api_error {
    int status;          /* HTTP status */
    const char *type;    /* static: invalid_request_error, authentication_error, ... */
    const char *code;    /* static or NULL */
    char param[96];      /* the offending field as a path, or "" */
    char message[1024];  /* room for an expert's failure and its fallbacks' */
} coe_api_error;

void coe_api_error_set(coe_api_error *e, int status, const char *type, const char *code,
                       const char *param, const char *fmt, ...) __attribute__((format(printf, 6, 7)));

typedef struct coe_request {
    coe_endpoint endpoint;
    cJSON *body;          /* owned: the whole request, unknown fields included */
    const char *model;    /* borrowed from body; "auto" when absent */
    bool stream;
    bool include_usage;   /* stream_options.include_usage */
    long max_tokens;      /* max_tokens or max_completion_tokens; -1 when absent */
} coe_request;

/* Parses and validates a body of len bytes. Known fields are type- and range-checked;
 * unknown fields are kept and passed on. On failure returns a negative coe_err and
 * fills err (status 400 naming the field). */
int coe_request_parse(const char *body, size_t len, coe_endpoint ep, int max_depth,
                      coe_request **out, coe_api_error *err);
void coe_request_free(coe_request **r);

/* The text of the last user message (chat) or of the prompt (completions), borrowed
 * from r; "" when there is none. */
const char *coe_request_last_user_text(const coe_request *r);

#endif
