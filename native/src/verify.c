/* The whole RA-TLS verification: certificate, evidence, quote signature chain, then the policy. Checks run from
 * the cheapest and most basic to the policy, so the reason reported is the most fundamental one. */
#include <openssl/err.h>
#include <string.h>

#include "internal.h"

static void fill_from_quote(ratls_evidence *ev, const ratls_quote *q) {
    ev->tee = q->tee;
    ev->qe_svn = q->qe_svn;
    ev->pce_svn = q->pce_svn;
    memcpy(ev->report_data, ratls_quote_report_data(q), 64);
    if (q->tee == RATLS_TEE_TDX) {
        const ratls_td_report *td = &q->td;
        memcpy(ev->mrtd, td->mrtd, 48);
        memcpy(ev->rtmr, td->rtmr, sizeof ev->rtmr);
        memcpy(ev->mrseam, td->mrseam, 48);
        memcpy(ev->mrsignerseam, td->mrsignerseam, 48);
        ev->td_attributes = td->td_attributes;
        ev->xfam = td->xfam;
        memcpy(ev->tee_tcb_svn, td->tee_tcb_svn, 16);
        return;
    }
    memcpy(ev->mrenclave, q->body.mrenclave, 32);
    memcpy(ev->mrsigner, q->body.mrsigner, 32);
    ev->isv_prod_id = q->body.isv_prod_id;
    ev->isv_svn = q->body.isv_svn;
    ev->flags = q->body.flags;
    ev->xfrm = q->body.xfrm;
    memcpy(ev->cpu_svn, q->body.cpu_svn, 16);
}

/* A measurement against a policy set of them (RATLS_OK when the set is empty: any value): RATLS_OK, or `code` with a
 * message giving the value found and the first allowed one. */
static int check_measurement(const ratls_digest_set *set, const uint8_t *found, int code, const char *field,
                             char *msg, size_t msg_len) {
    if (set->n == 0) return RATLS_OK;
    for (size_t i = 0; i < set->n; i++)
        if (memcmp(set->values + i * set->size, found, set->size) == 0) return RATLS_OK;
    char want[2 * RATLS_DIGEST_MAX + 1], got[2 * RATLS_DIGEST_MAX + 1];
    ratls_hex(set->values, set->size, want);
    ratls_hex(found, set->size, got);
    return ratls_fail(msg, msg_len, code, "%s %s is not allowed by the policy (expected %s%s)", field, got, want,
                      set->n > 1 ? " or one of the other allowed values" : "");
}

static const char *tee_name(int tee) { return tee == RATLS_TEE_TDX ? "TDX" : "SGX"; }

/* The policy's TCB rule, the last check of a verification; also applied by the attestation handshake to the
 * status its collateral evaluator reports (attest.c). */
int ratls_policy_check_tcb(const ratls_policy *p, int tcb_status, char *msg, size_t msg_len) {
    /* Revoked means the platform's keys may be in other hands: no policy can admit it (Gramine neither). */
    if (tcb_status == RATLS_TCB_REVOKED)
        return ratls_fail(msg, msg_len, RATLS_ERR_TCB_STATUS,
                          "TCB status Revoked is never allowed: the platform's attestation keys are revoked");
    if (tcb_status < 0 || tcb_status > RATLS_TCB_REVOKED || !(p->tcb_mask & (1u << tcb_status)))
        return ratls_fail(msg, msg_len, RATLS_ERR_TCB_STATUS, "TCB status %s is not allowed by the policy%s",
                          ratls_tcb_status_name(tcb_status),
                          tcb_status == RATLS_TCB_UNKNOWN ? " (no collateral was evaluated)" : "");
    return RATLS_OK;
}

/* The TD policy: debug attribute, MRTD, RTMR0..3, then the TDX module: MRSEAM and the minimum TEE_TCB_SVN. */
static int check_td_policy(const ratls_policy *p, const ratls_td_report *td, char *msg, size_t msg_len) {
    if ((td->td_attributes & RATLS_TD_ATTRIBUTES_DEBUG) && !p->allow_debug)
        return ratls_fail(msg, msg_len, RATLS_ERR_DEBUG_ENCLAVE,
                          "peer is a DEBUG TD (TDATTRIBUTES 0x%016llx); its memory is readable by the host and the "
                          "policy does not allow debug TDs",
                          (unsigned long long)td->td_attributes);
    int rc = check_measurement(&p->mrtds, td->mrtd, RATLS_ERR_MRTD, "MRTD", msg, msg_len);
    static const char *const names[4] = {"RTMR0", "RTMR1", "RTMR2", "RTMR3"};
    for (int i = 0; i < 4 && rc == RATLS_OK; i++)
        rc = check_measurement(&p->rtmrs[i], td->rtmr[i], RATLS_ERR_RTMR, names[i], msg, msg_len);
    if (rc == RATLS_OK) rc = check_measurement(&p->mrseams, td->mrseam, RATLS_ERR_MRSEAM, "MRSEAM", msg, msg_len);
    for (int i = 0; i < 16 && rc == RATLS_OK && p->has_min_tee_tcb_svn; i++)
        if (td->tee_tcb_svn[i] < p->min_tee_tcb_svn[i])
            rc = ratls_fail(msg, msg_len, RATLS_ERR_TEE_TCB_SVN,
                            "TEE_TCB_SVN[%d] is %u, the policy requires at least %u", i, td->tee_tcb_svn[i],
                            p->min_tee_tcb_svn[i]);
    return rc;
}

/* The policy's TEE rule, then the enclave (SGX: attributes, then measurements in Gramine's order) or TD policy,
 * then the TCB status. */
static int check_enclave_policy(const ratls_policy *p, const ratls_quote *q, int tcb_status, char *msg,
                                size_t msg_len) {
    if (!(p->tee_mask & (uint32_t)q->tee))
        return ratls_fail(msg, msg_len, RATLS_ERR_TEE_TYPE,
                          "evidence comes from %s, which the policy does not accept (it accepts %s)",
                          tee_name(q->tee),
                          (p->tee_mask & RATLS_TEE_SGX) && (p->tee_mask & RATLS_TEE_TDX) ? "SGX and TDX"
                          : (p->tee_mask & RATLS_TEE_TDX) ? "TDX only"
                          : (p->tee_mask & RATLS_TEE_SGX) ? "SGX only" : "no TEE");
    if (q->tee == RATLS_TEE_TDX) {
        int rc = check_td_policy(p, &q->td, msg, msg_len);
        return rc == RATLS_OK ? ratls_policy_check_tcb(p, tcb_status, msg, msg_len) : rc;
    }
    uint64_t flags = q->body.flags;
    if (!(flags & RATLS_SGX_FLAGS_INIT) || !(flags & RATLS_SGX_FLAGS_MODE64BIT))
        return ratls_fail(msg, msg_len, RATLS_ERR_ENCLAVE_ATTRIBUTES,
                          "enclave attributes 0x%llx lack INIT (0x1) or MODE64BIT (0x4)", (unsigned long long)flags);
    if (flags & (RATLS_SGX_FLAGS_PROVISION_KEY | RATLS_SGX_FLAGS_EINITTOKEN_KEY))
        return ratls_fail(msg, msg_len, RATLS_ERR_ENCLAVE_ATTRIBUTES,
                          "enclave attributes 0x%llx grant PROVISION_KEY or EINITTOKEN_KEY, which an application "
                          "enclave must not have",
                          (unsigned long long)flags);
    if ((flags & RATLS_SGX_FLAGS_DEBUG) && !p->allow_debug)
        return ratls_fail(msg, msg_len, RATLS_ERR_DEBUG_ENCLAVE,
                          "peer is a DEBUG enclave (attributes 0x%llx); its memory is readable by the host and the "
                          "policy does not allow debug enclaves",
                          (unsigned long long)flags);
    int rc = check_measurement(&p->mrenclaves, q->body.mrenclave, RATLS_ERR_MRENCLAVE, "MRENCLAVE", msg, msg_len);
    if (rc == RATLS_OK)
        rc = check_measurement(&p->mrsigners, q->body.mrsigner, RATLS_ERR_MRSIGNER, "MRSIGNER", msg, msg_len);
    if (rc != RATLS_OK) return rc;
    if (p->isv_prod_id >= 0 && q->body.isv_prod_id != p->isv_prod_id)
        return ratls_fail(msg, msg_len, RATLS_ERR_ISV_PROD_ID, "ISV_PROD_ID is %u, the policy expects %d",
                          q->body.isv_prod_id, p->isv_prod_id);
    if (p->min_isv_svn >= 0 && q->body.isv_svn < p->min_isv_svn)
        return ratls_fail(msg, msg_len, RATLS_ERR_ISV_SVN, "ISV_SVN is %u, the policy requires at least %d",
                          q->body.isv_svn, p->min_isv_svn);
    return ratls_policy_check_tcb(p, tcb_status, msg, msg_len);
}

static int verify_parsed_quote(const ratls_policy *p, const uint8_t *raw, size_t len, const ratls_quote *q,
                               int64_t now, ratls_evidence *out, char *msg, size_t msg_len) {
    fill_from_quote(out, q);
    return ratls_quote_verify_signatures(p, raw, len, q, now, &out->root, msg, msg_len);
}

int ratls_verify_quote(const ratls_policy *policy, const uint8_t *raw, size_t len, int64_t now, int tcb_status,
                       ratls_evidence *out, char *msg, size_t msg_len) {
    memset(out, 0, sizeof *out);
    out->tcb_status = tcb_status;
    if (!policy) return ratls_fail(msg, msg_len, RATLS_ERR_BAD_ARGUMENT, "no policy given");
    ratls_quote q;
    int rc = ratls_quote_parse(raw, len, &q, msg, msg_len);
    if (rc == RATLS_OK) rc = verify_parsed_quote(policy, raw, len, &q, now, out, msg, msg_len);
    if (rc == RATLS_OK) rc = check_enclave_policy(policy, &q, tcb_status, msg, msg_len);
    return rc;
}

int ratls_verify_cert(const ratls_policy *policy, const uint8_t *der, size_t len, int64_t now, int tcb_status,
                      ratls_evidence *out, char *msg, size_t msg_len) {
    memset(out, 0, sizeof *out);
    out->tcb_status = tcb_status;
    if (!policy) return ratls_fail(msg, msg_len, RATLS_ERR_BAD_ARGUMENT, "no policy given");
    ratls_cert_info info;
    X509 *x = NULL;
    int rc = ratls_cert_parse(der, len, &info, &x, msg, msg_len);
    if (rc != RATLS_OK) return rc;
    out->format = info.format;
    memcpy(out->cert_sha256, info.cert_sha256, 32);
    memcpy(out->spki_sha256, info.spki_sha256, 32);
    out->not_before = info.not_before;
    out->not_after = info.not_after;

    if (now < info.not_before) {
        rc = ratls_fail(msg, msg_len, RATLS_ERR_CERT_NOT_YET_VALID,
                        "certificate is not valid before %lld (Unix time), now is %lld", (long long)info.not_before,
                        (long long)now);
    } else if (now > info.not_after) {
        rc = ratls_fail(msg, msg_len, RATLS_ERR_CERT_EXPIRED, "certificate expired at %lld (Unix time), now is %lld",
                        (long long)info.not_after, (long long)now);
    } else if (X509_verify(x, X509_get0_pubkey(x)) != 1) {
        rc = ratls_fail(msg, msg_len, RATLS_ERR_CERT_SIGNATURE, "certificate self-signature is invalid");
        ERR_clear_error();
    }
    X509_free(x);
    if (rc != RATLS_OK) return rc;

    const uint8_t *raw = der + info.quote.off;
    ratls_quote q;
    rc = ratls_quote_parse(raw, info.quote.len, &q, msg, msg_len);
    if (rc == RATLS_OK) rc = verify_parsed_quote(policy, raw, info.quote.len, &q, now, out, msg, msg_len);
    if (rc == RATLS_OK) rc = ratls_cert_check_binding(der, &info, ratls_quote_report_data(&q), msg, msg_len);
    if (rc == RATLS_OK) rc = check_enclave_policy(policy, &q, tcb_status, msg, msg_len);
    return rc;
}
