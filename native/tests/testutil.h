/* Tiny shared helpers for the C tests: CHECK macros that report file:line and count results, file reading,
 * and paths into shared/testdata (RATLS_TESTDATA, set by ctest). Each test's main ends with
 * `return test_summary();`, which prints "N passed, N failed" and gives a non-zero exit on any failure. */
#ifndef RATLS_TESTUTIL_H
#define RATLS_TESTUTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int test_passed, test_failed;

#define CHECK(cond)                                                                  \
    do {                                                                              \
        if (cond) {                                                                   \
            test_passed++;                                                            \
        } else {                                                                      \
            test_failed++;                                                            \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
        }                                                                             \
    } while (0)

/* Compares two integers and prints both on a mismatch. */
#define CHECK_EQ(actual, expected)                                                                        \
    do {                                                                                                  \
        long long check_a_ = (long long)(actual), check_e_ = (long long)(expected);                      \
        if (check_a_ == check_e_) {                                                                       \
            test_passed++;                                                                                \
        } else {                                                                                          \
            test_failed++;                                                                                \
            fprintf(stderr, "%s:%d: CHECK_EQ failed: %s == %lld, expected %s == %lld\n", __FILE__, __LINE__, \
                    #actual, check_a_, #expected, check_e_);                                              \
        }                                                                                                 \
    } while (0)

static inline int test_summary(void) {
    printf("%d passed, %d failed\n", test_passed, test_failed);
    return test_failed ? 1 : 0;
}

/* Whole file, malloc'ed (plus a NUL after the end); NULL if it cannot be read. */
static inline uint8_t *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    uint8_t *buf = NULL;
    long size;
    if (fseek(f, 0, SEEK_END) == 0 && (size = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0 &&
        (buf = malloc((size_t)size + 1)) && fread(buf, 1, (size_t)size, f) == (size_t)size) {
        buf[size] = 0;
        *len = (size_t)size;
    } else {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    return buf;
}

/* The stride of exhaustive sweeps (every bit flip, every truncation): 1, or 16 when RATLS_TEST_QUICK=1, which the
 * valgrind run sets because every verification there is ~50x slower. The sampled sweeps still cover each region. */
static inline size_t test_sweep_step(void) {
    const char *quick = getenv("RATLS_TEST_QUICK");
    return quick && strcmp(quick, "1") == 0 ? 16 : 1;
}

/* $RATLS_TESTDATA/rel in a static buffer (valid until the next call). */
static inline const char *testdata_path(const char *rel) {
    static char path[4096];
    const char *dir = getenv("RATLS_TESTDATA");
    snprintf(path, sizeof(path), "%s/%s", dir ? dir : "../shared/testdata", rel);
    return path;
}

/* A test data file that must exist: aborts the test binary with a clear message if it does not. */
static inline uint8_t *read_testdata(const char *rel, size_t *len) {
    uint8_t *buf = read_file(testdata_path(rel), len);
    if (!buf) {
        fprintf(stderr, "cannot read test data %s\n", testdata_path(rel));
        exit(2);
    }
    return buf;
}

#endif
