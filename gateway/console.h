/* The web console (GET /console): one page embedded in the binary (gateway/console.html,
 * no build step, nothing from a CDN), and the state it shows, as JSON: the requests
 * answered last, each expert's load and health, the routing table. */
#ifndef COE_CONSOLE_H
#define COE_CONSOLE_H

#include <stddef.h>

#include "common/buf.h"
#include "gateway/config.h"

/* One answered request, as the access log says it (strings are copied, cut to fit). */
typedef struct coe_console_entry {
    char id[40];
    long long at_ms;          /* wall clock, milliseconds */
    char method[8];
    char path[64];
    char model[COE_NAME_MAX + 1];
    char rule[32];
    char category[COE_NAME_MAX + 1];
    char confidence[16];
    char expert[COE_NAME_MAX + 1];
    int status;
    double ms;
    long prompt_tokens, completion_tokens; /* -1: unknown */
} coe_console_entry;

/* Any thread: keeps e among the last requests (a ring of 200). */
void coe_console_record(const coe_console_entry *e);
/* The state document: requests (newest first), experts, routes; inflight is the
 * server's count of requests being answered. */
int coe_console_state(coe_buf *out, const coe_config *cfg, int inflight);

extern const char coe_console_html[];
extern const size_t coe_console_html_len;

#endif
