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
    COE_EP_EMBEDDINGS,  /* POST /v1/embeddings: passed through to an expert that serves them */
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

/* What a request may need of the expert that answers it (coe_request.needs,
 * coe_expert_cfg.capabilities). */
enum {
    COE_CAP_TOOLS = 1,           /* "tools": it offers functions to call */
    COE_CAP_RESPONSE_FORMAT = 2, /* "response_format": json_object (any JSON object) */
    COE_CAP_N = 4,               /* "n" > 1: several choices */
    COE_CAP_IMAGES = 8,          /* image parts in its messages */
    COE_CAP_EMBEDDINGS = 16,     /* it is a request for embeddings */
    COE_CAP_JSON_SCHEMA = 32,    /* "response_format": json_schema */
    COE_CAP_ALL = 63,
};
#define COE_CAP_COUNT 6
/* The configuration's name of capability i (bit 1 << i): tools, response_format, n,
 * images, embeddings, json_schema. */
extern const char *const coe_cap_names[COE_CAP_COUNT];

/* What response_format asks for. */
typedef enum { COE_FORMAT_TEXT, COE_FORMAT_JSON_OBJECT, COE_FORMAT_JSON_SCHEMA } coe_format;

/* The decoding fields, read and checked once by the parser, for the experts that
 * decode themselves (local ones); absent fields hold OpenAI's defaults. */
typedef struct coe_decoding {
    double temperature;        /* 1 */
    double top_p;              /* 1 */
    int top_k;                 /* 0: off */
    double min_p;              /* 0 */
    double presence_penalty, frequency_penalty;
    bool has_seed;
    long long seed;
    bool logprobs;             /* chat "logprobs": true, or the completions' "logprobs": N */
    int top_logprobs;          /* chat "top_logprobs", or the completions' N */
    const char *stop[4];       /* non-empty stop strings, borrowed from the body */
    int n_stop;
    coe_format format;
    const cJSON *schema;       /* response_format.json_schema.schema (borrowed), or NULL */
    int n_bias;                /* logit_bias, as token ids and biases (owned) */
    long *bias_ids;
    float *bias;
    bool fusion_trace;         /* coegate_fusion_trace: the expert of each token (fusion groups) */
} coe_decoding;

typedef struct coe_request {
    coe_endpoint endpoint;
    cJSON *body;          /* owned: the whole request, unknown fields included */
    /* POST /v1/responses: body is its chat-completions translation (what the experts
     * get, endpoint COE_EP_CHAT), answered in the Responses API's shapes; this is the
     * request as sent (owned), for what the answer repeats. NULL otherwise. */
    cJSON *responses;
    const char *model;    /* borrowed from body; "auto" when absent */
    bool stream;
    bool include_usage;   /* stream_options.include_usage */
    long max_tokens;      /* max_tokens or max_completion_tokens; -1 when absent */
    unsigned needs;       /* COE_CAP_* */
    coe_decoding decoding;
    char image_param[64]; /* the first image part's path, with COE_CAP_IMAGES */
} coe_request;

/* The request field that makes r need cap (one bit): the error's "param". */
const char *coe_request_cap_param(const coe_request *r, unsigned cap);

/* Parses and validates a body of len bytes. Known fields are type- and range-checked;
 * unknown fields are kept and passed on. On failure returns a negative coe_err and
 * fills err (status 400 naming the field). */
int coe_request_parse(const char *body, size_t len, coe_endpoint ep, int max_depth,
                      coe_request **out, coe_api_error *err);
/* POST /v1/responses (text input and output, streamed or not): checks the body and
 * translates it into a chat completions request. Errors name the Responses field.
 * Tools, stored conversations (previous_response_id) and background runs are refused
 * with 400 naming the field. */
int coe_request_parse_responses(const char *body, size_t len, int max_depth, coe_request **out,
                                coe_api_error *err);
void coe_request_free(coe_request **r);

/* The text of the last user message (chat) or of the prompt (completions), borrowed
 * from r; "" when there is none. */
const char *coe_request_last_user_text(const coe_request *r);

#endif
