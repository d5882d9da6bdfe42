/* A circuit breaker per expert, so that a dead upstream cannot multiply load: after
 * `breaker_failures` failed attempts in a row the circuit opens for
 * `breaker_cooldown_ms`, during which requests skip the expert (its fallbacks, else
 * 503) and no retry is made; then one trial request goes through (half-open), and its
 * outcome closes or reopens the circuit. Lock-free: any worker thread may call. */
#ifndef COE_BREAKER_H
#define COE_BREAKER_H

#include <stdatomic.h>
#include <stdbool.h>

typedef struct coe_breaker {
    atomic_int failures;          /* failed attempts in a row */
    atomic_llong open_until_ms;   /* 0: closed; else open until then, half-open after */
    atomic_bool trial;            /* half-open: the trial request is out */
} coe_breaker;

/* Whether an attempt may go to the expert now. *trial is set when it is the half-open
 * trial (report its outcome with that flag). */
bool coe_breaker_allow(coe_breaker *b, long long now_ms, bool *trial);
void coe_breaker_success(coe_breaker *b, bool trial);
/* Returns true when this failure opened the circuit. threshold 0: never opens. */
bool coe_breaker_failure(coe_breaker *b, bool trial, int threshold, long cooldown_ms, long long now_ms);
bool coe_breaker_is_open(coe_breaker *b, long long now_ms);

#endif
