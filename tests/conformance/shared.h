/* Where the shared reference data is: COEGATE_SHARED (meson sets it to ../shared beside
 * the checkout). Exits the test with 77, meson's "skipped", and a message when
 * COEGATE_SHARED/SUB (such as "conformance/models" or "corpora") is not there. */
#ifndef COE_TEST_SHARED_H
#define COE_TEST_SHARED_H

#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

static const char *shared_dir_or_skip(const char *sub)
{
    const char *shared = getenv("COEGATE_SHARED");
    struct stat st;
    char probe[4096];
    snprintf(probe, sizeof probe, "%s/%s", shared ? shared : "../shared", sub);
    if (!shared || stat(probe, &st) != 0) {
        printf("skipped: %s not found (the reference data lives in ../shared beside the checkout)\n", probe);
        exit(77);
    }
    return shared;
}

#endif
