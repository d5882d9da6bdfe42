#include "gateway/breaker.h"

bool coe_breaker_allow(coe_breaker *b, long long now_ms, bool *trial)
{
    *trial = false;
    long long until = atomic_load(&b->open_until_ms);
    if (!until)
        return true;
    if (now_ms < until)
        return false;
    bool expected = false;
    if (!atomic_compare_exchange_strong(&b->trial, &expected, true))
        return false; /* another request is the trial */
    *trial = true;
    return true;
}

void coe_breaker_success(coe_breaker *b, bool trial)
{
    atomic_store(&b->failures, 0);
    atomic_store(&b->open_until_ms, 0);
    if (trial)
        atomic_store(&b->trial, false);
}

bool coe_breaker_failure(coe_breaker *b, bool trial, int threshold, long cooldown_ms, long long now_ms)
{
    if (threshold <= 0)
        return false;
    int n = atomic_fetch_add(&b->failures, 1) + 1;
    if (!trial && (n < threshold || atomic_load(&b->open_until_ms)))
        return false;
    atomic_store(&b->open_until_ms, now_ms + cooldown_ms);
    if (trial)
        atomic_store(&b->trial, false);
    return true;
}

bool coe_breaker_is_open(coe_breaker *b, long long now_ms)
{
    long long until = atomic_load(&b->open_until_ms);
    return until && (now_ms < until || atomic_load(&b->trial));
}
