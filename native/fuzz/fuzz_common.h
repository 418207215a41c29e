/* Shared set-up of the libFuzzer targets: the policies inputs are verified under, and checks of the C API's
 * contract that turn a silent violation into a crash the fuzzer reports.
 *
 * Environment: RATLS_SIM_CA_DIR, a sim-ca directory (`python -m ratls sim-ca init DIR`), adds its simulation root
 * to the permissive policy, so sim quotes and certificates (the seed corpus has some) verify all the way to the
 * policy checks. native/fuzz/run.py sets it up. */
#ifndef RATLS_FUZZ_COMMON_H
#define RATLS_FUZZ_COMMON_H

#include <openssl/err.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"

#define FUZZ_REQUIRE(cond)                                                                \
    do {                                                                                  \
        if (!(cond)) {                                                                    \
            fprintf(stderr, "%s:%d: fuzz invariant violated: %s\n", __FILE__, __LINE__, #cond); \
            abort();                                                                      \
        }                                                                                 \
    } while (0)

/* A span lies inside a buffer of `len` bytes. */
static inline int fuzz_span_ok(ratls_span s, size_t len) { return s.off <= len && s.len <= len - s.off; }

/* The core leaves OpenSSL's (per-thread) error queue empty: its messages say what failed, and errors left behind
 * hold memory and mislead the next OpenSSL call's error report on the thread. */
#define FUZZ_REQUIRE_NO_OPENSSL_ERRORS() FUZZ_REQUIRE(ERR_peek_error() == 0)

/* A failing call returned a known reason and wrote a non-empty, NUL-terminated message. */
static inline void fuzz_check_failure(int rc, const char *msg) {
    FUZZ_REQUIRE(strcmp(ratls_reason_name(rc), "UNKNOWN") != 0);
    FUZZ_REQUIRE(memchr(msg, '\0', RATLS_MSG_SIZE) != NULL);
    FUZZ_REQUIRE(msg[0] != '\0');
}

/* The DER of the simulation root in $RATLS_SIM_CA_DIR/root.crt.pem (malloc'ed), or NULL when unset. Exits when the
 * variable is set but the file is unusable: a misconfigured campaign should not silently fuzz less. */
static inline uint8_t *fuzz_sim_root(size_t *len) {
    const char *dir = getenv("RATLS_SIM_CA_DIR");
    if (!dir) return NULL;
    char path[4096];
    snprintf(path, sizeof path, "%s/root.crt.pem", dir);
    FILE *f = fopen(path, "r");
    X509 *root = f ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
    if (f) fclose(f);
    uint8_t *der = NULL;
    int n = root ? i2d_X509(root, &der) : -1;
    X509_free(root);
    if (n <= 0) {
        fprintf(stderr, "RATLS_SIM_CA_DIR=%s: cannot read the simulation root %s\n", dir, path);
        exit(2);
    }
    *len = (size_t)n;
    return der;
}

/* Accepts everything a real or simulated enclave can show (Intel root, the sim root if configured, debug, any
 * TCB status), so inputs get as deep into verification as their bytes allow. */
static inline ratls_policy *fuzz_permissive_policy(void) {
    ratls_policy *p = ratls_policy_new();
    FUZZ_REQUIRE(p != NULL);
    ratls_policy_set_allow_debug(p, 1);
    ratls_policy_set_allowed_tcb_mask(p, 0xffu);
    ratls_policy_set_allowed_tees(p, RATLS_TEE_SGX | RATLS_TEE_TDX);
    size_t len = 0;
    uint8_t *root = fuzz_sim_root(&len);
    if (root) {
        char msg[RATLS_MSG_SIZE];
        FUZZ_REQUIRE(ratls_policy_set_sim_root(p, root, len, msg, sizeof msg) == RATLS_OK);
        ratls_policy_set_allow_simulated(p, 1);
        OPENSSL_free(root);
    }
    return p;
}

/* The time inputs are verified at: fixed per process, so a run is reproducible within a campaign. */
static inline int64_t fuzz_now(void) {
    static int64_t now;
    if (!now) now = (int64_t)time(NULL);
    return now;
}

#endif
