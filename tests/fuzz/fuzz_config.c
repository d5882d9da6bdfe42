/* Configuration files: any bytes give a configuration or diagnostics, never both,
 * never neither. */
#include <stdint.h>
#include <stdlib.h>

#include "common/buf.h"
#include "gateway/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    coe_buf diag = COE_BUF_INIT;
    coe_config *c = NULL;
    int rc = coe_config_parse((const char *)data, size, "fuzz.json", COE_CONFIG_CHECK, &c, &diag);
    if (rc ? (c != NULL || diag.len == 0) : (c == NULL))
        abort();
    coe_config_unref(&c);
    coe_buf_free(&diag);
    return 0;
}
