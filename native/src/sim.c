/* The simulated SGX provider: Gramine's RA-TLS library ABI on a machine without SGX. It plays the part of
 * /dev/attestation + the quoting enclave: quotes are real DCAP v3 layout, the ISV report signed by an attestation
 * key, the QE report signed by a PCK key whose chain ends in a simulation root CA (made by
 * `python -m ratls sim-ca init`). Configured for TDX (ratls_sim_configure_tdx) it plays a TD and the TD quoting
 * enclave instead: TDX quotes v4 (TD report 1.0) or v5 (body type 3, TD report 1.5) in Intel's layout, with the
 * QE report, its signature, auth data and PCK chain in certification data type 6, under the same keys. Verification accepts that root, says so loudly, and otherwise applies exactly
 * the checks the real path applies. Like Gramine's libraries, configuration is process-global. */
#include <errno.h>
#include <openssl/pem.h>
#include <openssl/core_names.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"
#include "ra_tls.h"

#define EXPORT __attribute__((visibility("default")))
#define DEFAULT_VALIDITY_BEFORE 3600
#define DEFAULT_VALIDITY_AFTER (365 * 24 * 3600)
#define SIM_QE_SVN 1
#define SIM_PCE_SVN 1
#define SIM_TDX_MODULE_SVN 1
#define SIM_TD_SEPT_VE_DISABLE (1ull << 28)

static const uint8_t qe_auth_data[32] = {0,  1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12, 13, 14, 15,
                                         16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31};

typedef struct {
    int loaded;
    EVP_PKEY *pck_key;
    EVP_PKEY *attestation_key;
    uint8_t attestation_pub[64];
    char *chain_pem; /* leaf || PCK CA || root, NUL-terminated as real quotes carry it */
    size_t chain_len;
    uint8_t mrsigner[32];
    uint8_t sim_root_der[4096];
    size_t sim_root_len;
    uint8_t mrenclave[32];
    uint16_t isv_prod_id, isv_svn;
    int debug;
    int64_t not_before, not_after; /* 0 = default, relative to the time of creation */
    int tee;                       /* RATLS_TEE_SGX, or RATLS_TEE_TDX: a TD with `td` (report_data aside) */
    uint16_t tdx_version;          /* 4 or 5 */
    ratls_td_report td;
} sim_config;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static sim_config config;
static verify_measurements_cb_t measurement_cb;

static void config_clear(sim_config *c) {
    EVP_PKEY_free(c->pck_key);
    EVP_PKEY_free(c->attestation_key);
    free(c->chain_pem);
    memset(c, 0, sizeof *c);
}

static char *read_text(const char *dir, const char *name, size_t *len) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    size_t cap = 0, n = 0;
    for (;;) {
        if (n + 4096 + 1 > cap) {
            cap = cap ? cap * 2 : 8192;
            char *p = realloc(buf, cap);
            if (!p) break;
            buf = p;
        }
        size_t r = fread(buf + n, 1, 4096, f);
        n += r;
        if (r == 0) break;
    }
    fclose(f);
    if (buf) buf[n] = 0;
    if (len) *len = n;
    return buf;
}

static EVP_PKEY *read_key(const char *dir, const char *name) {
    char *pem = read_text(dir, name, NULL);
    if (!pem) return NULL;
    BIO *bio = BIO_new_mem_buf(pem, -1);
    EVP_PKEY *key = bio ? PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL) : NULL;
    BIO_free(bio);
    OPENSSL_cleanse(pem, strlen(pem));
    free(pem);
    return key;
}

/* SGX MRSIGNER: SHA-256 of the signer's RSA modulus, little-endian. */
static int mrsigner_of(EVP_PKEY *signer, uint8_t out[32]) {
    BIGNUM *n = NULL;
    uint8_t mod[512];
    int len;
    if (!EVP_PKEY_get_bn_param(signer, OSSL_PKEY_PARAM_RSA_N, &n)) return 0;
    len = BN_num_bytes(n);
    int ok = len > 0 && len <= (int)sizeof mod && BN_bn2lebinpad(n, mod, len) == len && ratls_sha256(mod, (size_t)len, out);
    BN_free(n);
    return ok;
}

static int root_der_of(const char *dir, uint8_t *der, size_t cap, size_t *len) {
    char *pem = read_text(dir, "root.crt.pem", NULL);
    if (!pem) return 0;
    BIO *bio = BIO_new_mem_buf(pem, -1);
    X509 *x = bio ? PEM_read_bio_X509(bio, NULL, NULL, NULL) : NULL;
    BIO_free(bio);
    free(pem);
    int n = x ? i2d_X509(x, NULL) : 0;
    unsigned char *p = der;
    int ok = n > 0 && (size_t)n <= cap && i2d_X509(x, &p) == n;
    X509_free(x);
    *len = ok ? (size_t)n : 0;
    return ok;
}

static int load_ca(sim_config *c, const char *dir, char *msg, size_t msg_len) {
    c->pck_key = read_key(dir, "pck.key.pem");
    c->attestation_key = read_key(dir, "attestation.key.pem");
    EVP_PKEY *signer = read_key(dir, "signer.key.pem");
    size_t l1 = 0, l2 = 0, l3 = 0;
    char *leaf = read_text(dir, "pck.crt.pem", &l1), *ca = read_text(dir, "pck_ca.crt.pem", &l2),
         *root = read_text(dir, "root.crt.pem", &l3);
    int rc = RATLS_OK;
    if (!c->pck_key || !c->attestation_key || !signer || !leaf || !ca || !root) {
        rc = ratls_fail(msg, msg_len, RATLS_ERR_PROVIDER,
                        "sim CA directory %s is incomplete or unreadable (needs pck.key.pem, attestation.key.pem, "
                        "signer.key.pem, pck.crt.pem, pck_ca.crt.pem, root.crt.pem; make one with "
                        "`python -m ratls sim-ca init DIR`)",
                        dir);
    } else if (!ratls_p256_to_raw(c->attestation_key, c->attestation_pub) || !mrsigner_of(signer, c->mrsigner) ||
               !root_der_of(dir, c->sim_root_der, sizeof c->sim_root_der, &c->sim_root_len)) {
        rc = ratls_fail(msg, msg_len, RATLS_ERR_PROVIDER,
                        "sim CA directory %s: attestation key must be P-256, signer key RSA, root a PEM certificate",
                        dir);
    } else if ((c->chain_pem = malloc(l1 + l2 + l3 + 1))) {
        memcpy(c->chain_pem, leaf, l1);
        memcpy(c->chain_pem + l1, ca, l2);
        memcpy(c->chain_pem + l1 + l2, root, l3);
        c->chain_pem[l1 + l2 + l3] = 0;
        c->chain_len = l1 + l2 + l3 + 1;
        c->loaded = 1;
    } else {
        rc = ratls_fail(msg, msg_len, RATLS_ERR_INTERNAL, "out of memory");
    }
    EVP_PKEY_free(signer);
    free(leaf);
    free(ca);
    free(root);
    return rc;
}

/* Loads the CA directory into `next` and makes it the configuration. */
static int configure(sim_config *next, const char *ca_dir, char *msg, size_t msg_len) {
    int rc = load_ca(next, ca_dir, msg, msg_len);
    if (rc != RATLS_OK) {
        config_clear(next);
        return rc;
    }
    pthread_mutex_lock(&lock);
    config_clear(&config);
    config = *next;
    pthread_mutex_unlock(&lock);
    return RATLS_OK;
}

EXPORT int ratls_sim_configure(const char *ca_dir, const uint8_t *mrenclave32, uint16_t isv_prod_id,
                               uint16_t isv_svn, int debug, int64_t not_before, int64_t not_after, char *msg,
                               size_t msg_len) {
    if (!ca_dir || !mrenclave32) return ratls_fail(msg, msg_len, RATLS_ERR_BAD_ARGUMENT, "ca_dir and mrenclave are required");
    sim_config next;
    memset(&next, 0, sizeof next);
    next.tee = RATLS_TEE_SGX;
    memcpy(next.mrenclave, mrenclave32, 32);
    next.isv_prod_id = isv_prod_id;
    next.isv_svn = isv_svn;
    next.debug = debug;
    next.not_before = not_before;
    next.not_after = not_after;
    return configure(&next, ca_dir, msg, msg_len);
}

/* A simulated TD: MRTD and RTMR0..3 as given, TDATTRIBUTES.DEBUG if debug (plus SEPT_VE_DISABLE, bit 28, as real
 * TDs run), quotes of version 4 or 5. MRSEAM is the hash of a fixed name (there is no TDX module to measure). */
EXPORT int ratls_sim_configure_tdx(const char *ca_dir, const uint8_t *mrtd48, const uint8_t *rtmrs192,
                                   uint16_t version, int debug, int64_t not_before, int64_t not_after, char *msg,
                                   size_t msg_len) {
    if (!ca_dir || !mrtd48 || !rtmrs192)
        return ratls_fail(msg, msg_len, RATLS_ERR_BAD_ARGUMENT, "ca_dir, mrtd and rtmrs are required");
    if (version != TDX_QUOTE_VERSION_4 && version != TDX_QUOTE_VERSION_5)
        return ratls_fail(msg, msg_len, RATLS_ERR_BAD_ARGUMENT, "TDX quote version must be 4 or 5, not %u", version);
    sim_config next;
    memset(&next, 0, sizeof next);
    next.tee = RATLS_TEE_TDX;
    next.tdx_version = version;
    memcpy(next.td.mrtd, mrtd48, 48);
    memcpy(next.td.rtmr, rtmrs192, sizeof next.td.rtmr);
    next.td.td_attributes = SIM_TD_SEPT_VE_DISABLE | (debug ? RATLS_TD_ATTRIBUTES_DEBUG : 0);
    next.td.xfam = 0x61ae7; /* x87, SSE, AVX, AVX-512, PKRU, AMX: what a TD on Sapphire Rapids reports */
    next.td.tee_tcb_svn[0] = SIM_TDX_MODULE_SVN;
    SHA384((const uint8_t *)"RATLS simulated TDX module", 26, next.td.mrseam);
    next.debug = debug;
    next.not_before = not_before;
    next.not_after = not_after;
    return configure(&next, ca_dir, msg, msg_len);
}

/* Without ratls_sim_configure, a C program using only Gramine's ABI configures us through the environment. */
static int configure_from_env(void) {
    const char *dir = getenv("RATLS_SIM_CA_DIR"), *mre = getenv("RATLS_SIM_MRENCLAVE");
    uint8_t m[32];
    char msg[RATLS_MSG_SIZE];
    if (!dir || !mre || strlen(mre) != 64 || !ratls_unhex(mre, m, 32)) {
        fprintf(stderr, "ratls-sim: not configured: call ratls_sim_configure or set RATLS_SIM_CA_DIR and "
                        "RATLS_SIM_MRENCLAVE (64 hex digits)\n");
        return 0;
    }
    if (ratls_sim_configure(dir, m, 0, 0, 0, 0, 0, msg, sizeof msg) != RATLS_OK) {
        fprintf(stderr, "ratls-sim: %s\n", msg);
        return 0;
    }
    return 1;
}

/* The header and body a quote signs: an SGX v3 header and enclave report body, or a TDX v4/v5 header and TD report
 * (v5: body type 3 and its size first). */
static void add_signed_region(cbb *b, const sim_config *c, const uint8_t report_data[64]) {
    int tdx = c->tee == RATLS_TEE_TDX;
    cbb_add_u16le(b, tdx ? c->tdx_version : SGX_QUOTE_VERSION_3);
    cbb_add_u16le(b, SGX_ATT_KEY_TYPE_ECDSA_P256);
    cbb_add_u32le(b, tdx ? TDX_TEE_TYPE : 0);
    cbb_add_u16le(b, SIM_QE_SVN);
    cbb_add_u16le(b, SIM_PCE_SVN);
    cbb_add(b, ratls_intel_qe_vendor_id, 16);
    cbb_add_zeros(b, 20);
    if (tdx) {
        ratls_td_report td = c->td;
        memcpy(td.report_data, report_data, 64);
        size_t size = TD_REPORT_10_SIZE;
        if (c->tdx_version == TDX_QUOTE_VERSION_5) {
            size = TD_REPORT_15_SIZE;
            td.tee_tcb_svn2[0] = SIM_TDX_MODULE_SVN;
            cbb_add_u16le(b, RATLS_BODY_TD_REPORT_15);
            cbb_add_u32le(b, (uint32_t)size);
        }
        ratls_td_report_encode(b, size, &td);
        return;
    }
    ratls_report_body body;
    memset(&body, 0, sizeof body);
    body.flags = RATLS_SGX_FLAGS_INIT | RATLS_SGX_FLAGS_MODE64BIT | (c->debug ? RATLS_SGX_FLAGS_DEBUG : 0);
    body.xfrm = 0x3; /* x87 + SSE, the minimum an enclave runs with */
    memcpy(body.mrenclave, c->mrenclave, 32);
    memcpy(body.mrsigner, c->mrsigner, 32);
    body.isv_prod_id = c->isv_prod_id;
    body.isv_svn = c->isv_svn;
    memcpy(body.report_data, report_data, 64);
    ratls_report_body_encode(b, &body);
}

/* What the quoting enclave would return for this report_data: a DCAP v3 quote (cert data type 5), or for a TD a
 * TDX quote (cert data type 6 around the QE report and the type-5 PCK chain). */
static int sim_quote(void *ctx, const uint8_t report_data[64], uint8_t **quote, size_t *quote_len, char *msg,
                     size_t msg_len) {
    const sim_config *c = ctx;
    int tdx = c->tee == RATLS_TEE_TDX;
    cbb b;
    cbb_init(&b);
    add_signed_region(&b, c, report_data);
    if (b.failed) goto fail;

    uint8_t isv_sig[64], qe_sig[64];
    if (!ratls_ecdsa_sign_raw(c->attestation_key, b.data, b.len, isv_sig, 32)) goto fail;

    /* QE report: its report_data binds the attestation key and the QE auth data. */
    ratls_report_body qe;
    memset(&qe, 0, sizeof qe);
    qe.flags = RATLS_SGX_FLAGS_INIT | RATLS_SGX_FLAGS_MODE64BIT | RATLS_SGX_FLAGS_PROVISION_KEY;
    qe.xfrm = 0x3;
    ratls_sha256("RATLS simulated quoting enclave", 31, qe.mrenclave);
    ratls_sha256("RATLS simulated QE signer", 25, qe.mrsigner);
    qe.isv_prod_id = tdx ? 2 : 1; /* Intel's TD QE has ISVPRODID 2, the SGX QE 1 */
    qe.isv_svn = SIM_QE_SVN;
    uint8_t binding[64 + sizeof qe_auth_data];
    memcpy(binding, c->attestation_pub, 64);
    memcpy(binding + 64, qe_auth_data, sizeof qe_auth_data);
    ratls_sha256(binding, sizeof binding, qe.report_data);
    cbb qe_raw;
    cbb_init(&qe_raw);
    ratls_report_body_encode(&qe_raw, &qe);
    int ok = !qe_raw.failed && qe_raw.len == SGX_REPORT_BODY_SIZE &&
             ratls_ecdsa_sign_raw(c->pck_key, qe_raw.data, qe_raw.len, qe_sig, 32);
    if (ok) {
        /* The signature data, and in it the QE auth data and the certification data, each behind its length
         * (for a TD all of it from the QE report on inside certification data type 6). A failed write fails the
         * children and, as they close, the quote; so only the last close is checked. */
        cbb sig, qe_cert, auth, chain;
        cbb_add_u32le_prefixed(&b, &sig);
        cbb_add(&sig, isv_sig, 64);
        cbb_add(&sig, c->attestation_pub, 64);
        cbb *qe_part = &sig;
        if (tdx) {
            cbb_add_u16le(&sig, CERT_DATA_QE_REPORT);
            cbb_add_u32le_prefixed(&sig, &qe_cert);
            qe_part = &qe_cert;
        }
        cbb_add(qe_part, qe_raw.data, qe_raw.len);
        cbb_add(qe_part, qe_sig, 64);
        cbb_add_u16le_prefixed(qe_part, &auth);
        cbb_add(&auth, qe_auth_data, sizeof qe_auth_data);
        cbb_close(&auth);
        cbb_add_u16le(qe_part, SGX_CERT_DATA_PCK_CHAIN);
        cbb_add_u32le_prefixed(qe_part, &chain);
        cbb_add(&chain, c->chain_pem, c->chain_len);
        cbb_close(&chain);
        if (tdx) cbb_close(&qe_cert);
        ok = cbb_close(&sig);
    }
    cbb_cleanup(&qe_raw);
    if (!ok) goto fail;
    *quote = cbb_finish(&b, quote_len);
    if (!*quote) return ratls_fail(msg, msg_len, RATLS_ERR_INTERNAL, "out of memory");
    return RATLS_OK;
fail:
    cbb_cleanup(&b);
    return ratls_fail(msg, msg_len, RATLS_ERR_INTERNAL, "simulated quote generation failed");
}

/* A quote over the given report_data from the configured enclave or TD (malloc'ed; free with ratls_free), for a
 * provider that binds its own data (e.g. a configfs-tsm-style interface: report_data in, quote out). */
EXPORT int ratls_sim_quote(const uint8_t *report_data64, uint8_t **quote, size_t *quote_len, char *msg,
                           size_t msg_len) {
    if (!report_data64 || !quote || !quote_len)
        return ratls_fail(msg, msg_len, RATLS_ERR_BAD_ARGUMENT, "report_data and outputs are required");
    *quote = NULL;
    *quote_len = 0;
    pthread_mutex_lock(&lock);
    int rc = config.loaded ? sim_quote(&config, report_data64, quote, quote_len, msg, msg_len)
                           : ratls_fail(msg, msg_len, RATLS_ERR_PROVIDER, "simulated provider is not configured");
    pthread_mutex_unlock(&lock);
    return rc;
}

EXPORT int ra_tls_create_key_and_crt_der(uint8_t **der_key, size_t *der_key_size, uint8_t **der_crt,
                                         size_t *der_crt_size) {
    if (!der_key || !der_key_size || !der_crt || !der_crt_size) return -EINVAL;
    pthread_mutex_lock(&lock);
    int configured = config.loaded;
    pthread_mutex_unlock(&lock);
    if (!configured && !configure_from_env()) return RA_TLS_MBEDTLS_ERR_X509_FILE_IO_ERROR;

    EVP_PKEY *key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
    if (!key) return RA_TLS_MBEDTLS_ERR_X509_FATAL_ERROR;
    char msg[RATLS_MSG_SIZE];
    uint8_t *crt = NULL;
    size_t crt_len = 0;
    pthread_mutex_lock(&lock);
    int64_t now = (int64_t)time(NULL);
    int64_t nb = config.not_before ? config.not_before : now - DEFAULT_VALIDITY_BEFORE;
    int64_t na = config.not_after ? config.not_after : now + DEFAULT_VALIDITY_AFTER;
    int rc = ratls_cert_build(key, nb, na, sim_quote, &config, &crt, &crt_len, msg, sizeof msg);
    pthread_mutex_unlock(&lock);
    unsigned char *k = NULL;
    int klen = rc == RATLS_OK ? i2d_PrivateKey(key, &k) : 0;
    EVP_PKEY_free(key);
    if (rc != RATLS_OK || klen <= 0) {
        fprintf(stderr, "ratls-sim: %s\n", rc != RATLS_OK ? msg : "cannot encode the private key");
        free(crt);
        OPENSSL_free(k);
        return RA_TLS_MBEDTLS_ERR_X509_FATAL_ERROR;
    }
    *der_key = k;
    *der_key_size = (size_t)klen;
    *der_crt = crt;
    *der_crt_size = crt_len;
    return 0;
}

EXPORT void ra_tls_set_measurement_callback(verify_measurements_cb_t f_cb) {
    pthread_mutex_lock(&lock);
    measurement_cb = f_cb;
    pthread_mutex_unlock(&lock);
}

/* Gramine's error locations and mbedTLS-style return codes for our reason codes. */
static ra_tls_err_loc_t err_loc_of(int reason) {
    if (reason >= RATLS_ERR_CERT_MALFORMED && reason <= RATLS_ERR_EVIDENCE_MALFORMED) return AT_EXTRACT_QUOTE;
    if (reason == RATLS_ERR_REPORT_DATA_MISMATCH) return AT_EXTRACT_QUOTE;
    if (reason >= RATLS_ERR_QUOTE_MALFORMED && reason <= RATLS_ERR_QE_VENDOR) return AT_VERIFY_EXTERNAL;
    if (reason == RATLS_ERR_SIMULATED_DENIED || reason == RATLS_ERR_TCB_STATUS) return AT_VERIFY_EXTERNAL;
    if (reason == RATLS_ERR_ENCLAVE_ATTRIBUTES || reason == RATLS_ERR_DEBUG_ENCLAVE) return AT_VERIFY_ENCLAVE_ATTRS;
    if (reason >= RATLS_ERR_MRENCLAVE && reason <= RATLS_ERR_ISV_SVN) return AT_VERIFY_ENCLAVE_MEASUREMENTS;
    if (reason >= RATLS_ERR_TEE_TYPE && reason <= RATLS_ERR_TEE_TCB_SVN) return AT_VERIFY_ENCLAVE_MEASUREMENTS;
    return AT_INIT;
}

static int mbedtls_code_of(int reason) {
    if (reason == RATLS_ERR_CERT_MALFORMED || reason == RATLS_ERR_CERT_TOO_LARGE)
        return RA_TLS_MBEDTLS_ERR_X509_INVALID_FORMAT;
    if (reason >= RATLS_ERR_EVIDENCE_MISSING && reason <= RATLS_ERR_EVIDENCE_MALFORMED)
        return RA_TLS_MBEDTLS_ERR_X509_INVALID_EXTENSIONS;
    if (reason == RATLS_ERR_REPORT_DATA_MISMATCH) return RA_TLS_MBEDTLS_ERR_X509_SIG_MISMATCH;
    return RA_TLS_MBEDTLS_ERR_X509_CERT_VERIFY_FAILED;
}

/* The verifier-side policy of Gramine's libraries: RA_TLS_* variables, or only the callback when one is set.
 * The simulation root comes from the configured CA directory; sim evidence has no TCB collateral, so an
 * UNKNOWN status passes here where Gramine's DCAP library would have fetched collateral. */
static ratls_policy *abi_policy(verify_measurements_cb_t cb, char *msg, size_t msg_len, int *rc) {
    ratls_policy *p = ratls_policy_new();
    if (!p) {
        *rc = ratls_fail(msg, msg_len, RATLS_ERR_INTERNAL, "out of memory");
        return NULL;
    }
    *rc = RATLS_OK;
    uint32_t mask = 1u << RATLS_TCB_UP_TO_DATE;
    if (!cb) {
        ratls_env_policy env;
        *rc = ratls_env_policy_read(&env, msg, msg_len);
        if (*rc == RATLS_OK) {
            if (!env.mrenclave_any) ratls_policy_add_mrenclave(p, env.mrenclave);
            if (!env.mrsigner_any) ratls_policy_add_mrsigner(p, env.mrsigner);
            ratls_policy_set_isv_prod_id(p, env.isv_prod_id_any ? -1 : env.isv_prod_id);
            ratls_policy_set_min_isv_svn(p, env.isv_svn_any ? -1 : env.isv_svn);
            ratls_policy_set_allow_debug(p, env.allow_debug_enclave);
            mask = ratls_env_policy_tcb_mask(&env);
        }
    }
    ratls_policy_set_allowed_tcb_mask(p, mask | (1u << RATLS_TCB_UNKNOWN));
    pthread_mutex_lock(&lock);
    int loaded = config.loaded;
    pthread_mutex_unlock(&lock);
    if (*rc == RATLS_OK && !loaded && !configure_from_env())
        *rc = ratls_fail(msg, msg_len, RATLS_ERR_PROVIDER, "simulated provider is not configured");
    if (*rc == RATLS_OK) {
        pthread_mutex_lock(&lock);
        *rc = ratls_policy_set_sim_root(p, config.sim_root_der, config.sim_root_len, msg, msg_len);
        pthread_mutex_unlock(&lock);
        ratls_policy_set_allow_simulated(p, 1);
    }
    return p;
}

EXPORT int ra_tls_verify_callback_extended_der(uint8_t *der_crt, size_t der_crt_size,
                                               struct ra_tls_verify_callback_results *results) {
    if (results) memset(results, 0, sizeof *results);
    if (results) results->err_loc = AT_INIT;
    if (!der_crt) return -EINVAL;
    pthread_mutex_lock(&lock);
    verify_measurements_cb_t cb = measurement_cb;
    pthread_mutex_unlock(&lock);
    char msg[RATLS_MSG_SIZE];
    int rc;
    ratls_policy *p = abi_policy(cb, msg, sizeof msg, &rc);
    ratls_evidence ev;
    if (rc == RATLS_OK) {
        if (results) results->attestation_scheme = RA_TLS_ATTESTATION_SCHEME_DCAP;
        rc = ratls_verify_cert(p, der_crt, der_crt_size, (int64_t)time(NULL), RATLS_TCB_UNKNOWN, &ev, msg, sizeof msg);
    }
    ratls_policy_free(p);
    if (rc == RATLS_OK && cb) {
        uint8_t prod[2] = {(uint8_t)ev.isv_prod_id, (uint8_t)(ev.isv_prod_id >> 8)};
        uint8_t svn[2] = {(uint8_t)ev.isv_svn, (uint8_t)(ev.isv_svn >> 8)};
        if (cb((const char *)ev.mrenclave, (const char *)ev.mrsigner, (const char *)prod, (const char *)svn) < 0) {
            if (results) results->err_loc = AT_VERIFY_ENCLAVE_MEASUREMENTS;
            fprintf(stderr, "ratls-sim: the measurement callback rejected the peer\n");
            return RA_TLS_MBEDTLS_ERR_X509_CERT_VERIFY_FAILED;
        }
    }
    if (rc != RATLS_OK) {
        if (results) results->err_loc = err_loc_of(rc);
        fprintf(stderr, "ratls-sim: certificate rejected (%s): %s\n", ratls_reason_name(rc), msg);
        return mbedtls_code_of(rc);
    }
    if (results) results->err_loc = AT_NONE;
    fprintf(stderr, "ratls-sim: WARNING: accepted SIMULATED SGX evidence; this is not a real enclave\n");
    return 0;
}

EXPORT int ra_tls_verify_callback_der(uint8_t *der_crt, size_t der_crt_size) {
    return ra_tls_verify_callback_extended_der(der_crt, der_crt_size, NULL);
}
