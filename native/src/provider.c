/* Attestation providers are libraries exporting Gramine's RA-TLS ABI (ra_tls.h): Gramine's own
 * libra_tls_attest.so inside an enclave, or our simulated libratls_sim.so. Opened with dlopen, so the binding
 * runs the same code path for both. */
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "ra_tls.h"

typedef int (*create_fn)(uint8_t **, size_t *, uint8_t **, size_t *);
typedef int (*sim_configure_fn)(const char *, const uint8_t *, uint16_t, uint16_t, int, int64_t, int64_t, char *,
                                size_t);

typedef int (*sim_configure_tdx_fn)(const char *, const uint8_t *, const uint8_t *, uint16_t, int, int64_t, int64_t,
                                    char *, size_t);
typedef int (*sim_quote_fn)(const uint8_t *, uint8_t **, size_t *, char *, size_t);

struct ratls_provider {
    void *handle;
    create_fn create;
    sim_configure_fn sim_configure;
    sim_configure_tdx_fn sim_configure_tdx;
    sim_quote_fn sim_quote;
};

int ratls_provider_open(const char *attest_lib_path, ratls_provider **out, char *msg, size_t msg_len) {
    *out = NULL;
    if (!attest_lib_path) return ratls_fail(msg, msg_len, RATLS_ERR_BAD_ARGUMENT, "no provider library path");
    /* RTLD_LOCAL: the provider's symbols (and its statically linked crypto) stay out of the global scope.
     * RTLD_NODELETE: like Gramine's libraries it keeps process-wide state, which must outlive a close. */
    void *h = dlopen(attest_lib_path, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
    if (!h) return ratls_fail(msg, msg_len, RATLS_ERR_PROVIDER, "cannot load attestation library: %s", dlerror());
    ratls_provider *p = calloc(1, sizeof *p);
    if (!p) {
        dlclose(h);
        return ratls_fail(msg, msg_len, RATLS_ERR_INTERNAL, "out of memory");
    }
    p->handle = h;
    p->create = (create_fn)dlsym(h, "ra_tls_create_key_and_crt_der");
    p->sim_configure = (sim_configure_fn)dlsym(h, "ratls_sim_configure");
    p->sim_configure_tdx = (sim_configure_tdx_fn)dlsym(h, "ratls_sim_configure_tdx");
    p->sim_quote = (sim_quote_fn)dlsym(h, "ratls_sim_quote");
    if (!p->create) {
        ratls_provider_close(p);
        return ratls_fail(msg, msg_len, RATLS_ERR_PROVIDER,
                          "%s does not export ra_tls_create_key_and_crt_der (not a Gramine RA-TLS attest library)",
                          attest_lib_path);
    }
    *out = p;
    return RATLS_OK;
}

void ratls_provider_close(ratls_provider *p) {
    if (!p) return;
    dlclose(p->handle);
    free(p);
}

int ratls_provider_is_sim(const ratls_provider *p) { return p && p->sim_configure != NULL; }

int ratls_provider_sim_configure(ratls_provider *p, const char *ca_dir, const uint8_t *mrenclave32,
                                 uint16_t isv_prod_id, uint16_t isv_svn, int debug, int64_t not_before,
                                 int64_t not_after, char *msg, size_t msg_len) {
    if (!ratls_provider_is_sim(p))
        return ratls_fail(msg, msg_len, RATLS_ERR_PROVIDER, "this provider is not the simulated one");
    return p->sim_configure(ca_dir, mrenclave32, isv_prod_id, isv_svn, debug, not_before, not_after, msg, msg_len);
}

int ratls_provider_sim_configure_tdx(ratls_provider *p, const char *ca_dir, const uint8_t *mrtd48,
                                     const uint8_t *rtmrs192, uint16_t version, int debug, int64_t not_before,
                                     int64_t not_after, char *msg, size_t msg_len) {
    if (!ratls_provider_is_sim(p) || !p->sim_configure_tdx)
        return ratls_fail(msg, msg_len, RATLS_ERR_PROVIDER, "this provider is not the simulated one");
    return p->sim_configure_tdx(ca_dir, mrtd48, rtmrs192, version, debug, not_before, not_after, msg, msg_len);
}

int ratls_provider_sim_quote(ratls_provider *p, const uint8_t *report_data64, uint8_t **quote, size_t *quote_len,
                             char *msg, size_t msg_len) {
    if (!ratls_provider_is_sim(p) || !p->sim_quote)
        return ratls_fail(msg, msg_len, RATLS_ERR_PROVIDER, "this provider is not the simulated one");
    return p->sim_quote(report_data64, quote, quote_len, msg, msg_len);
}

int ratls_provider_create(ratls_provider *p, uint8_t **key_der, size_t *key_len, uint8_t **crt_der,
                          size_t *crt_len, char *msg, size_t msg_len) {
    *key_der = *crt_der = NULL;
    *key_len = *crt_len = 0;
    int rc = p->create(key_der, key_len, crt_der, crt_len);
    if (rc != 0)
        return ratls_fail(msg, msg_len, RATLS_ERR_PROVIDER,
                          "ra_tls_create_key_and_crt_der failed with %d (-0x%04x)%s", rc, (unsigned)-rc,
                          rc == RA_TLS_MBEDTLS_ERR_X509_FILE_IO_ERROR ? ": /dev/attestation is not usable here" : "");
    return RATLS_OK;
}
