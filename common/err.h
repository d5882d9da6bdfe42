/* One error convention for the whole project: functions return 0 or a negative
 * coe_err; messages for people are built where the context is known. */
#ifndef COE_ERR_H
#define COE_ERR_H

typedef enum coe_err {
    COE_OK = 0,
    COE_ENOMEM = -1,       /* allocation failed */
    COE_EINVAL = -2,       /* invalid argument or input */
    COE_EIO = -3,          /* read, write or socket failure */
    COE_ENOTFOUND = -4,    /* no such file, key, expert or route */
    COE_ERANGE = -5,       /* a value or size out of its allowed range */
    COE_EUNSUPPORTED = -6, /* valid but not supported by this build */
    COE_EBUSY = -7,        /* a limit on concurrency was reached */
    COE_ETIMEDOUT = -8,
    COE_ECANCELED = -9,
    COE_EPARSE = -10,      /* malformed text: JSON, SSE, config */
} coe_err;

/* A static, never-NULL description of err. */
const char *coe_strerror(int err);

#endif
