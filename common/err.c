#include "common/err.h"

const char *coe_strerror(int err)
{
    switch (err) {
    case COE_OK: return "success";
    case COE_ENOMEM: return "out of memory";
    case COE_EINVAL: return "invalid argument";
    case COE_EIO: return "input/output error";
    case COE_ENOTFOUND: return "not found";
    case COE_ERANGE: return "value out of range";
    case COE_EUNSUPPORTED: return "not supported";
    case COE_EBUSY: return "busy";
    case COE_ETIMEDOUT: return "timed out";
    case COE_ECANCELED: return "canceled";
    case COE_EPARSE: return "parse error";
    }
    return "unknown error";
}
