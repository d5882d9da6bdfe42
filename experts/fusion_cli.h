/* `coegate fusion train|eval`: learning a fusion group's selector, and measuring
 * every way of combining its experts (experts/fusion.h). */
#ifndef COE_FUSION_CLI_H
#define COE_FUSION_CLI_H

int coe_fusion_main(int argc, char **argv);

#endif
