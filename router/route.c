#include "router/route.h"

#include "common/err.h"

int coe_route_resolve(const coe_config *cfg, const coe_request *req, coe_route_decision *out)
{
    int r = coe_config_find_route(cfg, req->model);
    if (r >= 0) {
        out->route = r;
        out->expert = cfg->routes[r].default_expert;
        out->rule = "default";
        return 0;
    }
    int e = coe_config_find_expert(cfg, req->model);
    if (e >= 0) {
        out->route = -1;
        out->expert = e;
        out->rule = "direct";
        return 0;
    }
    return COE_ENOTFOUND;
}
