/* The host emulation of experts/cuda.h (host_device.c): settings of the test. */
#ifndef COE_HOST_DEVICE_H
#define COE_HOST_DEVICE_H

#include <stddef.h>

extern size_t host_device_free_bytes; /* what coe_cuda_memory reports free */
extern int host_device_count;         /* devices found: 1, or 0 for none */
/* Allocations of device memory not yet released. */
int host_device_live(void);

#endif
