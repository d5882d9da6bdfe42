/* A temporary folder for a test program's files, made by its group setup and removed
 * with what it holds by its teardown. */
#ifndef COE_TEST_TMPDIR_H
#define COE_TEST_TMPDIR_H

#include <stdio.h>
#include <stdlib.h>

/* dir (at least 64 bytes) becomes /tmp/coegate-NAME-XXXXXX, made; 0 or -1. */
static inline int test_tmpdir_make(char *dir, size_t size, const char *name)
{
    snprintf(dir, size, "/tmp/coegate-%s-XXXXXX", name);
    return mkdtemp(dir) ? 0 : -1;
}

static inline int test_tmpdir_remove(const char *dir)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

#endif
