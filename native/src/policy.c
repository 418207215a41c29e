/* Verification policies: which measurements, SVNs, debug/simulated evidence and TCB statuses a verifier
 * accepts, and which roots it trusts; plus Gramine's RA_TLS_* environment policy (v1.8+ semantics). */
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* A store holding exactly one trust anchor. */
static X509_STORE *store_with(X509 *root) {
    X509_STORE *store = X509_STORE_new();
    if (store && X509_STORE_add_cert(store, root) != 1) {
        X509_STORE_free(store);
        store = NULL;
    }
    return store;
}

ratls_policy *ratls_policy_new(void) {
    ratls_policy *p = calloc(1, sizeof(*p));
    if (!p) return NULL;
    p->isv_prod_id = -1;
    p->min_isv_svn = -1;
    p->mrenclaves.size = p->mrsigners.size = 32;
    p->mrtds.size = p->mrseams.size = 48;
    for (int i = 0; i < 4; i++) p->rtmrs[i].size = 48;
    p->tee_mask = RATLS_TEE_SGX;
    p->tcb_mask = 1u << RATLS_TCB_UP_TO_DATE;
    pthread_mutex_init(&p->cache_lock, NULL);
    BIO *bio = BIO_new_mem_buf(ratls_intel_root_ca_pem(), -1);
    X509 *root = bio ? PEM_read_bio_X509(bio, NULL, NULL, NULL) : NULL;
    p->trusted_store = root ? store_with(root) : NULL;
    X509_free(root);
    BIO_free(bio);
    if (!p->trusted_store) {
        ratls_policy_free(p);
        return NULL;
    }
    return p;
}

void ratls_policy_clear_cache(ratls_policy *p) {
    pthread_mutex_lock(&p->cache_lock);
    for (unsigned i = 0; i < RATLS_PCK_CACHE_SIZE; i++) {
        EVP_PKEY_free(p->cache[i].attestation_key);
        memset(&p->cache[i], 0, sizeof p->cache[i]);
    }
    pthread_mutex_unlock(&p->cache_lock);
}

void ratls_policy_free(ratls_policy *p) {
    if (!p) return;
    free(p->mrenclaves.values);
    free(p->mrsigners.values);
    free(p->mrtds.values);
    free(p->mrseams.values);
    for (int i = 0; i < 4; i++) free(p->rtmrs[i].values);
    X509_STORE_free(p->trusted_store);
    X509_STORE_free(p->sim_store);
    ratls_policy_clear_cache(p);
    pthread_mutex_destroy(&p->cache_lock);
    free(p);
}

static int add_measurement(ratls_digest_set *set, const uint8_t *value) {
    uint8_t *grown = realloc(set->values, (set->n + 1) * set->size);
    if (!grown) return RATLS_ERR_INTERNAL;
    memcpy(grown + set->n * set->size, value, set->size);
    set->values = grown;
    set->n++;
    return RATLS_OK;
}

int ratls_policy_add_mrenclave(ratls_policy *p, const uint8_t *mrenclave32) {
    if (!p || !mrenclave32) return RATLS_ERR_BAD_ARGUMENT;
    return add_measurement(&p->mrenclaves, mrenclave32);
}

int ratls_policy_add_mrsigner(ratls_policy *p, const uint8_t *mrsigner32) {
    if (!p || !mrsigner32) return RATLS_ERR_BAD_ARGUMENT;
    return add_measurement(&p->mrsigners, mrsigner32);
}

int ratls_policy_add_mrtd(ratls_policy *p, const uint8_t *mrtd48) {
    if (!p || !mrtd48) return RATLS_ERR_BAD_ARGUMENT;
    return add_measurement(&p->mrtds, mrtd48);
}

int ratls_policy_add_rtmr(ratls_policy *p, unsigned index, const uint8_t *rtmr48) {
    if (!p || !rtmr48 || index > 3) return RATLS_ERR_BAD_ARGUMENT;
    return add_measurement(&p->rtmrs[index], rtmr48);
}

int ratls_policy_add_mrseam(ratls_policy *p, const uint8_t *mrseam48) {
    if (!p || !mrseam48) return RATLS_ERR_BAD_ARGUMENT;
    return add_measurement(&p->mrseams, mrseam48);
}

void ratls_policy_set_min_tee_tcb_svn(ratls_policy *p, const uint8_t *svn16) {
    p->has_min_tee_tcb_svn = svn16 != NULL;
    if (svn16) memcpy(p->min_tee_tcb_svn, svn16, 16);
}

void ratls_policy_set_allowed_tees(ratls_policy *p, uint32_t mask) { p->tee_mask = mask; }

void ratls_policy_set_isv_prod_id(ratls_policy *p, int32_t isv_prod_id) { p->isv_prod_id = isv_prod_id; }
void ratls_policy_set_min_isv_svn(ratls_policy *p, int32_t min_isv_svn) { p->min_isv_svn = min_isv_svn; }
void ratls_policy_set_allow_debug(ratls_policy *p, int allow) { p->allow_debug = allow != 0; }
void ratls_policy_set_allow_simulated(ratls_policy *p, int allow) { p->allow_simulated = allow != 0; }
void ratls_policy_set_allowed_tcb_mask(ratls_policy *p, uint32_t mask) { p->tcb_mask = mask; }

/* Replaces *slot with a store trusting the self-signed CA certificate `der`; on bad input *slot is kept. */
static int set_root(X509_STORE **slot, const char *what, const uint8_t *der, size_t len, char *msg,
                    size_t msg_len) {
    if (!der || len == 0 || len > RATLS_MAX_CERT_SIZE)
        return ratls_fail(msg, msg_len, RATLS_ERR_POLICY,
                          "%s root: expected a DER certificate of 1..%d bytes, got %zu", what, RATLS_MAX_CERT_SIZE,
                          der ? len : 0);
    const uint8_t *p = der;
    X509 *cert = d2i_X509(NULL, &p, (long)len);
    int rc = RATLS_OK;
    if (!cert)
        rc = ratls_fail(msg, msg_len, RATLS_ERR_POLICY, "%s root: not a DER X.509 certificate", what);
    else if (p != der + len)
        rc = ratls_fail(msg, msg_len, RATLS_ERR_POLICY, "%s root: %zu trailing bytes after the certificate", what,
                        (size_t)(der + len - p));
    else if (X509_self_signed(cert, 1) != 1)
        rc = ratls_fail(msg, msg_len, RATLS_ERR_POLICY, "%s root: certificate is not self-signed", what);
    else if (X509_check_ca(cert) < 1)
        rc = ratls_fail(msg, msg_len, RATLS_ERR_POLICY, "%s root: certificate is not a CA", what);
    X509_STORE *store = rc == RATLS_OK ? store_with(cert) : NULL;
    if (rc == RATLS_OK && !store) rc = ratls_fail(msg, msg_len, RATLS_ERR_INTERNAL, "%s root: out of memory", what);
    X509_free(cert);
    ERR_clear_error();
    if (rc != RATLS_OK) return rc;
    X509_STORE_free(*slot);
    *slot = store;
    return RATLS_OK;
}

int ratls_policy_set_trusted_root(ratls_policy *p, const uint8_t *der, size_t len, char *msg, size_t msg_len) {
    if (!p) return ratls_fail(msg, msg_len, RATLS_ERR_BAD_ARGUMENT, "policy is NULL");
    ratls_policy_clear_cache(p);
    return set_root(&p->trusted_store, "trusted", der, len, msg, msg_len);
}

int ratls_policy_set_sim_root(ratls_policy *p, const uint8_t *der, size_t len, char *msg, size_t msg_len) {
    if (!p) return ratls_fail(msg, msg_len, RATLS_ERR_BAD_ARGUMENT, "policy is NULL");
    ratls_policy_clear_cache(p);
    return set_root(&p->sim_store, "simulation", der, len, msg, msg_len);
}

/* --- Gramine's RA_TLS_* variables --- */

static const char *required_env(const char *name, char *msg, size_t msg_len, int *rc) {
    const char *v = getenv(name);
    if (!v) *rc = ratls_fail(msg, msg_len, RATLS_ERR_POLICY, "A required environment variable %s is not set", name);
    return v;
}

static int env_measurement(const char *name, int *any, uint8_t out[32], char *msg, size_t msg_len) {
    int rc = RATLS_OK;
    const char *v = required_env(name, msg, msg_len, &rc);
    if (!v) return rc;
    *any = strcmp(v, "any") == 0;
    if (*any || ratls_unhex(v, out, 32)) return RATLS_OK;
    return ratls_fail(msg, msg_len, RATLS_ERR_POLICY, "%s must be 64 hex digits or \"any\", found \"%.80s\"", name, v);
}

static int env_u16(const char *name, int *any, uint16_t *out, char *msg, size_t msg_len) {
    int rc = RATLS_OK;
    const char *v = required_env(name, msg, msg_len, &rc);
    if (!v) return rc;
    *any = strcmp(v, "any") == 0;
    if (*any) return RATLS_OK;
    unsigned long value = 0;
    size_t i = 0;
    for (; v[i] >= '0' && v[i] <= '9' && value <= UINT16_MAX; i++) value = value * 10 + (unsigned long)(v[i] - '0');
    if (i == 0 || v[i] != '\0' || value > UINT16_MAX)
        return ratls_fail(msg, msg_len, RATLS_ERR_POLICY,
                          "%s must be a decimal number 0..65535 or \"any\", found \"%.80s\"", name, v);
    *out = (uint16_t)value;
    return RATLS_OK;
}

/* Gramine turns an ALLOW flag on only for the exact value "1". */
static int env_flag(const char *name) {
    const char *v = getenv(name);
    return v && strcmp(v, "1") == 0;
}

int ratls_env_policy_read(ratls_env_policy *out, char *msg, size_t msg_len) {
    if (!out) return ratls_fail(msg, msg_len, RATLS_ERR_BAD_ARGUMENT, "output is NULL");
    ratls_env_policy e;
    memset(&e, 0, sizeof(e));
    int rc;
    if ((rc = env_measurement("RA_TLS_MRENCLAVE", &e.mrenclave_any, e.mrenclave, msg, msg_len)) ||
        (rc = env_measurement("RA_TLS_MRSIGNER", &e.mrsigner_any, e.mrsigner, msg, msg_len)) ||
        (rc = env_u16("RA_TLS_ISV_PROD_ID", &e.isv_prod_id_any, &e.isv_prod_id, msg, msg_len)) ||
        (rc = env_u16("RA_TLS_ISV_SVN", &e.isv_svn_any, &e.isv_svn, msg, msg_len)))
        return rc;
    e.allow_outdated_tcb = env_flag("RA_TLS_ALLOW_OUTDATED_TCB_INSECURE");
    e.allow_hw_config_needed = env_flag("RA_TLS_ALLOW_HW_CONFIG_NEEDED");
    e.allow_sw_hardening_needed = env_flag("RA_TLS_ALLOW_SW_HARDENING_NEEDED");
    e.allow_debug_enclave = env_flag("RA_TLS_ALLOW_DEBUG_ENCLAVE_INSECURE");
    *out = e;
    return RATLS_OK;
}

/* Gramine's qv_result acceptance table (ratls-reference.md §2.4 step 3); Revoked is never accepted. */
uint32_t ratls_env_policy_tcb_mask(const ratls_env_policy *env) {
    uint32_t mask = 1u << RATLS_TCB_UP_TO_DATE;
    int hw = env->allow_hw_config_needed, sw = env->allow_sw_hardening_needed, old = env->allow_outdated_tcb;
    if (hw) mask |= 1u << RATLS_TCB_CONFIGURATION_NEEDED;
    if (old) mask |= 1u << RATLS_TCB_OUT_OF_DATE;
    if (old && hw) mask |= 1u << RATLS_TCB_OUT_OF_DATE_CONFIGURATION_NEEDED;
    if (sw) mask |= 1u << RATLS_TCB_SW_HARDENING_NEEDED;
    if (hw && sw) mask |= 1u << RATLS_TCB_CONFIGURATION_AND_SW_HARDENING_NEEDED;
    return mask;
}
