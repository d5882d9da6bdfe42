/* `coegate forge` alone, linked with the engine's libraries only (no libcurl): the GPU
 * bundle forges its benchmark models with it on machines that have none of the
 * gateway's libraries (scripts/gpu-check.sh). usage: as `coegate forge`. */
#include "experts/forge.h"

int main(int argc, char **argv)
{
    return coe_forge_main(argc - 1, argv + 1);
}
