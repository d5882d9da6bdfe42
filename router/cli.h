/* The router's verbs: coegate router train | eval. */
#ifndef COE_ROUTER_CLI_H
#define COE_ROUTER_CLI_H

int coe_router_cli(int argc, char **argv);

#endif
