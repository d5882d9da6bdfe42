/* Request bodies: any bytes are refused with a message or accepted whole; and the
 * JSON escaper's output always parses back as a string. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "common/buf.h"
#include "gateway/request.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    for (int ep = COE_EP_CHAT; ep <= COE_EP_EMBEDDINGS; ep++) {
        coe_request *r = NULL;
        coe_api_error err = {0};
        int rc = coe_request_parse((const char *)data, size, (coe_endpoint)ep, 32, &r, &err);
        if (rc) {
            if (r || err.status != 400 || !err.message[0])
                abort();
        } else {
            if (!r || !r->model)
                abort();
            (void)coe_request_last_user_text(r);
            coe_request_free(&r);
        }
    }
    coe_buf b = COE_BUF_INIT;
    coe_buf_json_string(&b, (const char *)data, size);
    cJSON *j = cJSON_ParseWithLength(b.data, b.len);
    if (!cJSON_IsString(j)) {
        fprintf(stderr, "escaper output is not a JSON string: %s\n", b.data);
        abort();
    }
    cJSON_Delete(j);
    coe_buf_free(&b);
    return 0;
}
