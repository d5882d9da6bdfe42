/* Small helpers shared by the command-line verbs. */
#ifndef COE_CLI_H
#define COE_CLI_H

#include <stdbool.h>

/* True when any argument is --help or -h. */
bool coe_cli_wants_help(int argc, char **argv);

#endif
