/* Client authentication by bearer key. */
#ifndef COE_AUTH_H
#define COE_AUTH_H

#include <stdbool.h>

#include "gateway/config.h"

/* True when the server needs no key, or authorization ("Bearer KEY", may be NULL)
 * holds one of its keys. Comparison takes time independent of where keys differ. */
bool coe_auth_check(const coe_server_cfg *s, const char *authorization);

#endif
