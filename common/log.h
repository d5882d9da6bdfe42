/* Logging to stderr, one line per call, safe from any thread. Never pass secrets. */
#ifndef COE_LOG_H
#define COE_LOG_H

typedef enum { COE_LOG_DEBUG, COE_LOG_INFO, COE_LOG_WARN, COE_LOG_ERROR } coe_log_level;

void coe_log_set_level(coe_log_level level);
void coe_log(coe_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define coe_debug(...) coe_log(COE_LOG_DEBUG, __VA_ARGS__)
#define coe_info(...) coe_log(COE_LOG_INFO, __VA_ARGS__)
#define coe_warn(...) coe_log(COE_LOG_WARN, __VA_ARGS__)
#define coe_error(...) coe_log(COE_LOG_ERROR, __VA_ARGS__)

/* Monotonic milliseconds and microseconds, and wall-clock seconds. */
long long coe_now_ms(void);
long long coe_now_us(void);
long long coe_wall_s(void);
long long coe_wall_ms(void);

#endif
