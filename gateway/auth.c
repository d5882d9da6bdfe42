#include "gateway/auth.h"

#include <string.h>
#include <strings.h>

/* Compares a (n bytes) with key in time that depends only on n: every byte is
 * visited whatever matches, and a length mismatch is folded into the result. */
static bool equal_ct(const char *a, size_t n, const char *key)
{
    size_t klen = strlen(key);
    volatile unsigned char diff = (unsigned char)(n != klen);
    for (size_t i = 0; i < n; i++)
        diff |= (unsigned char)(a[i] ^ key[i < klen ? i : 0]) | (unsigned char)(i >= klen);
    return diff == 0;
}

bool coe_auth_check(const coe_server_cfg *s, const char *authorization)
{
    if (s->n_api_keys == 0 && !s->api_keys_env)
        return true;
    if (!authorization || strncasecmp(authorization, "Bearer ", 7) != 0)
        return false;
    const char *tok = authorization + 7;
    while (*tok == ' ')
        tok++;
    size_t n = strlen(tok);
    while (n > 0 && tok[n - 1] == ' ')
        n--;
    bool ok = false;
    for (int i = 0; i < s->n_api_keys; i++)
        ok |= equal_ct(tok, n, s->api_keys[i]);
    return ok;
}
