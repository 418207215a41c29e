/* ECDSA quotes: SGX v3 and TDX v4/v5. The 384-byte report body and the TD report layouts (the only place they
 * live), the bounds-checked quote parser, and the signature chain check (PCK chain -> QE report signature -> QE
 * report_data binding of the attestation key -> ISV or TD quote signature), in the order of dcap-qvl's verify_impl
 * (ratls-reference.md §5). TDX layouts: Intel TDX DCAP Quote Generation Library spec (quote v4 and v5, TD report
 * 1.0 and 1.5, certification data type 6), as dcap-qvl src/quote.rs reads them. */
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <string.h>

#include "internal.h"

#define SIM_ROOT_CN_PREFIX "RATLS Simulated"

int ratls_report_body_decode(cbs *s, ratls_report_body *out) {
    ratls_report_body b;
    cbs body;
    if (!cbs_get_bytes(s, &body, SGX_REPORT_BODY_SIZE)) return 0;
    /* Cannot fail: body is exactly SGX_REPORT_BODY_SIZE bytes and the reads below add up to it. */
    cbs_copy(&body, b.cpu_svn, 16);
    cbs_get_u32le(&body, &b.misc_select);
    cbs_skip(&body, 12); /* reserved1 */
    cbs_copy(&body, b.isv_ext_prod_id, 16);
    cbs_get_u64le(&body, &b.flags);
    cbs_get_u64le(&body, &b.xfrm);
    cbs_copy(&body, b.mrenclave, 32);
    cbs_skip(&body, 32); /* reserved2 */
    cbs_copy(&body, b.mrsigner, 32);
    cbs_skip(&body, 32); /* reserved3 */
    cbs_copy(&body, b.config_id, 64);
    cbs_get_u16le(&body, &b.isv_prod_id);
    cbs_get_u16le(&body, &b.isv_svn);
    cbs_get_u16le(&body, &b.config_svn);
    cbs_skip(&body, 42); /* reserved4 */
    cbs_copy(&body, b.isv_family_id, 16);
    cbs_copy(&body, b.report_data, 64);
    *out = b;
    return 1;
}

int ratls_report_body_encode(cbb *b, const ratls_report_body *body) {
    cbb_add(b, body->cpu_svn, 16);
    cbb_add_u32le(b, body->misc_select);
    cbb_add_zeros(b, 12);
    cbb_add(b, body->isv_ext_prod_id, 16);
    cbb_add_u64le(b, body->flags);
    cbb_add_u64le(b, body->xfrm);
    cbb_add(b, body->mrenclave, 32);
    cbb_add_zeros(b, 32);
    cbb_add(b, body->mrsigner, 32);
    cbb_add_zeros(b, 32);
    cbb_add(b, body->config_id, 64);
    cbb_add_u16le(b, body->isv_prod_id);
    cbb_add_u16le(b, body->isv_svn);
    cbb_add_u16le(b, body->config_svn);
    cbb_add_zeros(b, 42);
    cbb_add(b, body->isv_family_id, 16);
    return cbb_add(b, body->report_data, 64); /* a failed cbb makes every later add fail too */
}

int ratls_td_report_decode(cbs *s, size_t size, ratls_td_report *out) {
    ratls_td_report t;
    cbs body;
    memset(&t, 0, sizeof t);
    if ((size != TD_REPORT_10_SIZE && size != TD_REPORT_15_SIZE) || !cbs_get_bytes(s, &body, size)) return 0;
    /* Cannot fail: body is exactly `size` bytes and the reads below add up to it. */
    cbs_copy(&body, t.tee_tcb_svn, 16);
    cbs_copy(&body, t.mrseam, 48);
    cbs_copy(&body, t.mrsignerseam, 48);
    cbs_get_u64le(&body, &t.seam_attributes);
    cbs_get_u64le(&body, &t.td_attributes);
    cbs_get_u64le(&body, &t.xfam);
    cbs_copy(&body, t.mrtd, 48);
    cbs_copy(&body, t.mrconfigid, 48);
    cbs_copy(&body, t.mrowner, 48);
    cbs_copy(&body, t.mrownerconfig, 48);
    for (int i = 0; i < 4; i++) cbs_copy(&body, t.rtmr[i], 48);
    cbs_copy(&body, t.report_data, 64);
    if (size == TD_REPORT_15_SIZE) {
        cbs_copy(&body, t.tee_tcb_svn2, 16);
        cbs_copy(&body, t.mrservicetd, 48);
    }
    *out = t;
    return 1;
}

int ratls_td_report_encode(cbb *b, size_t size, const ratls_td_report *td) {
    if (size != TD_REPORT_10_SIZE && size != TD_REPORT_15_SIZE) return 0;
    cbb_add(b, td->tee_tcb_svn, 16);
    cbb_add(b, td->mrseam, 48);
    cbb_add(b, td->mrsignerseam, 48);
    cbb_add_u64le(b, td->seam_attributes);
    cbb_add_u64le(b, td->td_attributes);
    cbb_add_u64le(b, td->xfam);
    cbb_add(b, td->mrtd, 48);
    cbb_add(b, td->mrconfigid, 48);
    cbb_add(b, td->mrowner, 48);
    cbb_add(b, td->mrownerconfig, 48);
    for (int i = 0; i < 4; i++) cbb_add(b, td->rtmr[i], 48);
    cbb_add(b, td->report_data, 64);
    if (size == TD_REPORT_15_SIZE) {
        cbb_add(b, td->tee_tcb_svn2, 16);
        cbb_add(b, td->mrservicetd, 48);
    }
    return !b->failed; /* a failed cbb makes every later add fail too */
}

const uint8_t *ratls_quote_report_data(const ratls_quote *q) {
    return q->tee == RATLS_TEE_TDX ? q->td.report_data : q->body.report_data;
}

/* Splits the next n bytes off `s` as a span of `raw`. */
static int get_span(cbs *s, const uint8_t *raw, size_t n, ratls_span *out) {
    cbs part;
    if (!cbs_get_bytes(s, &part, n)) return 0;
    out->off = cbs_offset(&part, raw);
    out->len = n;
    return 1;
}

#define TRUNCATED(field, need, have)                                                                       \
    ratls_fail(msg, msg_len, RATLS_ERR_QUOTE_MALFORMED, "quote truncated in %s: needs %zu bytes, %zu remain", \
               field, (size_t)(need), (size_t)(have))

/* The quote body after the header: an SGX report body (v3), a TD report 1.0 (v4), or what a v5 quote's body type
 * and size say. */
static int parse_body(cbs *s, ratls_quote *q, char *msg, size_t msg_len) {
    if (q->version == SGX_QUOTE_VERSION_3) {
        q->tee = RATLS_TEE_SGX;
        q->body_type = RATLS_BODY_SGX_REPORT;
        if (!ratls_report_body_decode(s, &q->body)) return TRUNCATED("ISV report body", SGX_REPORT_BODY_SIZE, cbs_len(s));
        return RATLS_OK;
    }
    if (q->tee_type != TDX_TEE_TYPE)
        return ratls_fail(msg, msg_len, RATLS_ERR_QUOTE_UNSUPPORTED_VERSION,
                          "quote version %u with tee_type 0x%x: only TDX (tee_type 0x81) quotes of version 4 or 5 "
                          "are supported",
                          q->version, q->tee_type);
    q->tee = RATLS_TEE_TDX;
    size_t size = TD_REPORT_10_SIZE;
    q->body_type = RATLS_BODY_TD_REPORT_10;
    if (q->version == TDX_QUOTE_VERSION_5) {
        uint32_t body_size;
        if (!cbs_get_u16le(s, &q->body_type)) return TRUNCATED("body type", 2, cbs_len(s));
        if (!cbs_get_u32le(s, &body_size)) return TRUNCATED("body size", 4, cbs_len(s));
        if (q->body_type != RATLS_BODY_TD_REPORT_10 && q->body_type != RATLS_BODY_TD_REPORT_15)
            return ratls_fail(msg, msg_len, RATLS_ERR_QUOTE_UNSUPPORTED_VERSION,
                              "TDX quote v5 body type: expected 2 (TD report 1.0) or 3 (TD report 1.5), found %u",
                              q->body_type);
        size = q->body_type == RATLS_BODY_TD_REPORT_15 ? TD_REPORT_15_SIZE : TD_REPORT_10_SIZE;
        if (body_size != size)
            return ratls_fail(msg, msg_len, RATLS_ERR_QUOTE_MALFORMED,
                              "TDX quote v5 body size: body type %u is %zu bytes, the quote says %u", q->body_type,
                              size, body_size);
    }
    if (!ratls_td_report_decode(s, size, &q->td)) return TRUNCATED("TD report", size, cbs_len(s));
    return RATLS_OK;
}

/* From the QE report to the end of the certification data: directly in an SGX v3 quote's signature data, inside
 * the type-6 certification data of a TDX quote. */
static int parse_qe_part(cbs *sig, const uint8_t *raw, ratls_quote *q, char *msg, size_t msg_len) {
    cbs qe_report = *sig;
    if (!ratls_report_body_decode(sig, &q->qe_report))
        return TRUNCATED("QE report", SGX_REPORT_BODY_SIZE, cbs_len(sig));
    q->qe_report_raw.off = cbs_offset(&qe_report, raw);
    q->qe_report_raw.len = SGX_REPORT_BODY_SIZE;
    if (!get_span(sig, raw, 64, &q->qe_report_signature)) return TRUNCATED("QE report signature", 64, cbs_len(sig));
    uint16_t auth_len;
    if (!cbs_get_u16le(sig, &auth_len)) return TRUNCATED("qe_auth_data size", 2, cbs_len(sig));
    if (!get_span(sig, raw, auth_len, &q->qe_auth_data)) return TRUNCATED("qe_auth_data", auth_len, cbs_len(sig));
    if (!cbs_get_u16le(sig, &q->cert_data_type)) return TRUNCATED("certification data type", 2, cbs_len(sig));
    uint32_t cert_len;
    if (!cbs_get_u32le(sig, &cert_len)) return TRUNCATED("certification data size", 4, cbs_len(sig));
    if (!get_span(sig, raw, cert_len, &q->cert_data)) return TRUNCATED("certification data", cert_len, cbs_len(sig));
    return RATLS_OK;
}

int ratls_quote_parse(const uint8_t *raw, size_t len, ratls_quote *out, char *msg, size_t msg_len) {
    if (!raw || !out) return ratls_fail(msg, msg_len, RATLS_ERR_BAD_ARGUMENT, "quote or output is NULL");
    if (len > SGX_QUOTE_MAX_SIZE)
        return ratls_fail(msg, msg_len, RATLS_ERR_QUOTE_MALFORMED, "quote is %zu bytes, more than the %d allowed", len,
                          SGX_QUOTE_MAX_SIZE);
    ratls_quote q;
    memset(&q, 0, sizeof(q));
    cbs s;
    cbs_init(&s, raw, len);
    if (cbs_len(&s) < SGX_QUOTE_HEADER_SIZE) return TRUNCATED("header", SGX_QUOTE_HEADER_SIZE, cbs_len(&s));
    cbs_get_u16le(&s, &q.version);
    cbs_get_u16le(&s, &q.att_key_type);
    cbs_get_u32le(&s, &q.tee_type);
    cbs_get_u16le(&s, &q.qe_svn);
    cbs_get_u16le(&s, &q.pce_svn);
    cbs_copy(&s, q.qe_vendor_id, 16);
    cbs_copy(&s, q.user_data, 20);
    if (q.version != SGX_QUOTE_VERSION_3 && q.version != TDX_QUOTE_VERSION_4 && q.version != TDX_QUOTE_VERSION_5)
        return ratls_fail(msg, msg_len, RATLS_ERR_QUOTE_UNSUPPORTED_VERSION,
                          "quote version: expected 3 (SGX ECDSA), 4 or 5 (TDX), found %u (tee_type 0x%x)", q.version,
                          q.tee_type);
    if (q.att_key_type != SGX_ATT_KEY_TYPE_ECDSA_P256)
        return ratls_fail(msg, msg_len, RATLS_ERR_QUOTE_UNSUPPORTED_KEY_TYPE,
                          "attestation key type: expected 2 (ECDSA-256-with-P-256), found %u", q.att_key_type);
    if (memcmp(q.qe_vendor_id, ratls_intel_qe_vendor_id, 16) != 0) {
        char hex[33];
        ratls_hex(q.qe_vendor_id, 16, hex);
        return ratls_fail(msg, msg_len, RATLS_ERR_QE_VENDOR,
                          "QE vendor id: expected Intel's 939a7233f79c4ca9940a0db3957f0607, found %s", hex);
    }

    int rc = parse_body(&s, &q, msg, msg_len);
    if (rc != RATLS_OK) return rc;
    q.signed_region.off = 0;
    q.signed_region.len = cbs_offset(&s, raw);

    uint32_t sig_len;
    if (!cbs_get_u32le(&s, &sig_len)) return TRUNCATED("signature_data_len", 4, cbs_len(&s));
    if (sig_len > cbs_len(&s))
        return ratls_fail(msg, msg_len, RATLS_ERR_QUOTE_MALFORMED,
                          "signature_data_len %u points past the end of the quote (%zu bytes remain)", sig_len,
                          cbs_len(&s));
    if (sig_len < cbs_len(&s))
        return ratls_fail(msg, msg_len, RATLS_ERR_QUOTE_MALFORMED,
                          "%zu trailing bytes after signature_data_len (%u) ends the quote", cbs_len(&s) - sig_len,
                          sig_len);
    cbs sig;
    cbs_get_bytes(&s, &sig, sig_len);

    if (!get_span(&sig, raw, 64, &q.isv_signature))
        return TRUNCATED(q.tee == RATLS_TEE_TDX ? "TD quote signature" : "ISV report signature", 64, cbs_len(&sig));
    if (!get_span(&sig, raw, 64, &q.attestation_key)) return TRUNCATED("attestation key", 64, cbs_len(&sig));
    if (q.tee == RATLS_TEE_SGX) {
        rc = parse_qe_part(&sig, raw, &q, msg, msg_len);
    } else {
        /* TDX: certification data type 6 holding the QE report, its signature, the auth data and the PCK chain. */
        uint16_t outer_type;
        uint32_t outer_len;
        cbs outer;
        if (!cbs_get_u16le(&sig, &outer_type)) return TRUNCATED("certification data type", 2, cbs_len(&sig));
        if (outer_type != CERT_DATA_QE_REPORT)
            return ratls_fail(msg, msg_len, RATLS_ERR_QUOTE_UNSUPPORTED_CERT_DATA,
                              "TDX certification data type: expected 6 (QE report certification data), found %u",
                              outer_type);
        if (!cbs_get_u32le(&sig, &outer_len)) return TRUNCATED("certification data size", 4, cbs_len(&sig));
        if (!cbs_get_bytes(&sig, &outer, outer_len))
            return TRUNCATED("QE report certification data", outer_len, cbs_len(&sig));
        rc = parse_qe_part(&outer, raw, &q, msg, msg_len);
        if (rc == RATLS_OK && cbs_len(&outer) != 0)
            return ratls_fail(msg, msg_len, RATLS_ERR_QUOTE_MALFORMED,
                              "%zu bytes left in the QE report certification data after the PCK certification data",
                              cbs_len(&outer));
    }
    if (rc != RATLS_OK) return rc;
    if (cbs_len(&sig) != 0)
        return ratls_fail(msg, msg_len, RATLS_ERR_QUOTE_MALFORMED,
                          "%zu bytes left in the signature data after the certification data", cbs_len(&sig));
    q.total_len = len;
    *out = q;
    return RATLS_OK;
}

static const char PEM_BEGIN[] = "-----BEGIN CERTIFICATE-----";
static const char PEM_END[] = "-----END CERTIFICATE-----";
#define PCK_CHAIN_LENGTH 3

static int is_pem_space(uint8_t c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

/* A root certificate of `store` whose DER equals `der` (up-ref'ed), or NULL. Parsing a certificate costs
 * ~250 us in OpenSSL 3.0 (the provider key decoder), so a chain's copy of a known root is not parsed again. */
static X509 *known_root(X509_STORE *store, const uint8_t *der, long len) {
    X509 *found = NULL;
    if (!store || !X509_STORE_lock(store)) return NULL;
    STACK_OF(X509_OBJECT) *objects = X509_STORE_get0_objects(store);
    for (int i = 0; i < sk_X509_OBJECT_num(objects) && !found; i++) {
        X509 *cert = X509_OBJECT_get0_X509(sk_X509_OBJECT_value(objects, i));
        uint8_t *enc = NULL;
        int n = cert ? i2d_X509(cert, &enc) : -1;
        if (n == len && memcmp(enc, der, (size_t)n) == 0 && X509_up_ref(cert)) found = cert;
        OPENSSL_free(enc);
    }
    X509_STORE_unlock(store);
    return found;
}

/* One PEM block "-----BEGIN CERTIFICATE----- ... -----END CERTIFICATE-----" to an X509. */
static X509 *pem_block_to_x509(const ratls_policy *policy, const uint8_t *block, size_t block_len, int is_root) {
    BIO *bio = BIO_new_mem_buf(block, (int)block_len);
    char *name = NULL, *header = NULL;
    uint8_t *der = NULL;
    long der_len = 0;
    X509 *cert = NULL;
    if (bio && PEM_read_bio(bio, &name, &header, &der, &der_len) == 1 && strcmp(name, "CERTIFICATE") == 0 &&
        header[0] == '\0') {
        if (is_root) cert = known_root(policy->trusted_store, der, der_len);
        if (is_root && !cert) cert = known_root(policy->sim_store, der, der_len);
        if (!cert) {
            const uint8_t *p = der;
            cert = d2i_X509(NULL, &p, der_len);
            if (cert && p != der + der_len) { /* trailing bytes inside the PEM body */
                X509_free(cert);
                cert = NULL;
            }
        }
    }
    OPENSSL_free(name);
    OPENSSL_free(header);
    OPENSSL_free(der);
    BIO_free(bio);
    return cert;
}

/* The type-5 certification data: PEM certificates leaf, intermediate, root, separated by whitespace only,
 * optionally NUL-terminated (as AESM and Gramine write it). Anything else is malformed. */
static int parse_pck_chain(const ratls_policy *policy, const uint8_t *data, size_t len, STACK_OF(X509) **out,
                           char *msg, size_t msg_len) {
    if (len && data[len - 1] == '\0') len--;
    if (memchr(data, '\0', len))
        return ratls_fail(msg, msg_len, RATLS_ERR_PCK_CHAIN_MALFORMED, "PCK chain: NUL byte inside the PEM text");
    STACK_OF(X509) *chain = sk_X509_new_null();
    if (!chain) return ratls_fail(msg, msg_len, RATLS_ERR_INTERNAL, "out of memory");
    int rc = RATLS_OK;
    size_t pos = 0;
    for (;;) {
        while (pos < len && is_pem_space(data[pos])) pos++;
        if (pos == len) break;
        const uint8_t *end;
        if (len - pos < sizeof(PEM_BEGIN) - 1 || memcmp(data + pos, PEM_BEGIN, sizeof(PEM_BEGIN) - 1) != 0 ||
            !(end = memmem(data + pos, len - pos, PEM_END, sizeof(PEM_END) - 1))) {
            rc = ratls_fail(msg, msg_len, RATLS_ERR_PCK_CHAIN_MALFORMED,
                            "PCK chain: expected a PEM certificate at byte %zu of the certification data", pos);
            break;
        }
        size_t block_len = (size_t)(end - (data + pos)) + sizeof(PEM_END) - 1;
        int index = sk_X509_num(chain);
        if (index == PCK_CHAIN_LENGTH) {
            rc = ratls_fail(msg, msg_len, RATLS_ERR_PCK_CHAIN_MALFORMED,
                            "PCK chain: more than %d certificates (expected leaf, intermediate, root)",
                            PCK_CHAIN_LENGTH);
            break;
        }
        X509 *cert = pem_block_to_x509(policy, data + pos, block_len, index == PCK_CHAIN_LENGTH - 1);
        if (!cert || !sk_X509_push(chain, cert)) {
            X509_free(cert);
            rc = ratls_fail(msg, msg_len, RATLS_ERR_PCK_CHAIN_MALFORMED,
                            "PCK chain: certificate %d does not parse as X.509", index + 1);
            break;
        }
        pos += block_len;
    }
    if (rc == RATLS_OK && sk_X509_num(chain) != PCK_CHAIN_LENGTH)
        rc = ratls_fail(msg, msg_len, RATLS_ERR_PCK_CHAIN_MALFORMED,
                        "PCK chain: expected %d certificates (leaf, intermediate, root), found %d", PCK_CHAIN_LENGTH,
                        sk_X509_num(chain));
    ERR_clear_error();
    if (rc != RATLS_OK) {
        sk_X509_pop_free(chain, X509_free);
        return rc;
    }
    *out = chain;
    return RATLS_OK;
}

/* 1 if leaf verifies through `untrusted` to a root in `store` at time now (root_cn: that root's CN), 0 if not
 * (*err says why), -1 on an internal error. */
static int chain_verifies(X509_STORE *store, X509 *leaf, STACK_OF(X509) *untrusted, int64_t now, int *err,
                          char *root_cn, size_t root_cn_len) {
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    int result = -1;
    if (ctx && X509_STORE_CTX_init(ctx, store, leaf, untrusted) == 1) {
        X509_VERIFY_PARAM_set_time(X509_STORE_CTX_get0_param(ctx), (time_t)now);
        result = X509_verify_cert(ctx) == 1;
        *err = X509_STORE_CTX_get_error(ctx);
        STACK_OF(X509) *verified = result == 1 ? X509_STORE_CTX_get0_chain(ctx) : NULL;
        if (verified && sk_X509_num(verified) > 0)
            X509_NAME_get_text_by_NID(X509_get_subject_name(sk_X509_value(verified, sk_X509_num(verified) - 1)),
                                      NID_commonName, root_cn, (int)root_cn_len);
    }
    X509_STORE_CTX_free(ctx);
    ERR_clear_error();
    return result;
}

static int is_simulation_root(const char *cn) {
    return strncmp(cn, SIM_ROOT_CN_PREFIX, strlen(SIM_ROOT_CN_PREFIX)) == 0;
}

static int verify_pck_chain(const ratls_policy *policy, STACK_OF(X509) *chain, int64_t now, int *root, char *msg,
                            size_t msg_len) {
    X509 *leaf = sk_X509_value(chain, 0);
    STACK_OF(X509) *untrusted = sk_X509_dup(chain);
    if (!untrusted) return ratls_fail(msg, msg_len, RATLS_ERR_INTERNAL, "out of memory");
    sk_X509_shift(untrusted); /* the leaf is the target, not a candidate issuer */
    int trusted_err = X509_V_OK, sim_err = X509_V_OK;
    char root_cn[128] = "";
    int trusted = policy->trusted_store ? chain_verifies(policy->trusted_store, leaf, untrusted, now, &trusted_err,
                                                         root_cn, sizeof(root_cn))
                                        : 0;
    int sim = trusted == 0 && policy->sim_store
                  ? chain_verifies(policy->sim_store, leaf, untrusted, now, &sim_err, root_cn, sizeof(root_cn))
                  : 0;
    sk_X509_free(untrusted);
    if (trusted < 0 || sim < 0) return ratls_fail(msg, msg_len, RATLS_ERR_INTERNAL, "PCK chain: verifier setup failed");
    /* A simulation root stays one wherever the policy lists it: naming it as trusted_root must not make its
     * evidence pass as real SGX without allow_simulated. */
    if (trusted && is_simulation_root(root_cn)) {
        *root = RATLS_ROOT_SIMULATED;
        if (!policy->allow_simulated)
            return ratls_fail(msg, msg_len, RATLS_ERR_SIMULATED_DENIED,
                              "evidence comes from the simulated provider: the policy's trusted_root \"%s\" is a "
                              "simulation root, and the policy does not allow simulated evidence",
                              root_cn);
        return RATLS_OK;
    }
    if (trusted) {
        *root = RATLS_ROOT_TRUSTED;
        return RATLS_OK;
    }
    if (sim) {
        *root = RATLS_ROOT_SIMULATED;
        if (!policy->allow_simulated)
            return ratls_fail(msg, msg_len, RATLS_ERR_SIMULATED_DENIED,
                              "evidence comes from the simulated provider (PCK chain verifies to the simulation "
                              "root); the policy does not allow simulated evidence");
        return RATLS_OK;
    }
    char top_cn[128] = "";
    X509_NAME_get_text_by_NID(X509_get_subject_name(sk_X509_value(chain, sk_X509_num(chain) - 1)), NID_commonName,
                              top_cn, sizeof(top_cn));
    ERR_clear_error();
    /* The chain's own claim to be simulated is untrusted, so it only ever explains a rejection. */
    if (!policy->allow_simulated && is_simulation_root(top_cn))
        return ratls_fail(msg, msg_len, RATLS_ERR_SIMULATED_DENIED,
                          "evidence comes from the simulated provider (chain root \"%s\"); the policy does not "
                          "allow simulated evidence",
                          top_cn);
    if (!policy->trusted_store)
        return ratls_fail(msg, msg_len, RATLS_ERR_PCK_CHAIN_UNTRUSTED,
                          "PCK chain: the policy trusts no root (chain root \"%s\")", top_cn);
    return ratls_fail(msg, msg_len, RATLS_ERR_PCK_CHAIN_UNTRUSTED,
                      "PCK chain does not verify to the trusted root (chain root \"%s\"): %s", top_cn,
                      X509_verify_cert_error_string(trusted_err));
}

/* The cached attestation key (a new reference) of platform evidence that verified under this policy and is
 * valid at now. */
static EVP_PKEY *platform_cache_lookup(ratls_policy *p, const uint8_t hash[32], int64_t now, int *root) {
    EVP_PKEY *key = NULL;
    pthread_mutex_lock(&p->cache_lock);
    for (unsigned i = 0; i < RATLS_PCK_CACHE_SIZE && !key; i++) {
        ratls_pck_cache_entry *e = &p->cache[i];
        if (e->attestation_key && memcmp(e->platform_sha256, hash, 32) == 0 && e->valid_from <= now &&
            now <= e->valid_until && EVP_PKEY_up_ref(e->attestation_key)) {
            key = e->attestation_key;
            *root = e->root;
        }
    }
    pthread_mutex_unlock(&p->cache_lock);
    return key;
}

static void platform_cache_store(ratls_policy *p, const uint8_t hash[32], int root, STACK_OF(X509) *chain,
                                 EVP_PKEY *attestation_key) {
    int64_t from = INT64_MIN, until = INT64_MAX;
    for (int i = 0; i < sk_X509_num(chain); i++) {
        int64_t nb, na;
        X509 *c = sk_X509_value(chain, i);
        if (!ratls_asn1_time_to_unix(X509_get0_notBefore(c), &nb) ||
            !ratls_asn1_time_to_unix(X509_get0_notAfter(c), &na))
            return;
        if (nb > from) from = nb;
        if (na < until) until = na;
    }
    if (!EVP_PKEY_up_ref(attestation_key)) return;
    pthread_mutex_lock(&p->cache_lock);
    ratls_pck_cache_entry *e = &p->cache[p->cache_next++ % RATLS_PCK_CACHE_SIZE];
    EVP_PKEY_free(e->attestation_key);
    memcpy(e->platform_sha256, hash, 32);
    e->root = root;
    e->valid_from = from;
    e->valid_until = until;
    e->attestation_key = attestation_key;
    pthread_mutex_unlock(&p->cache_lock);
}

/* What the platform vouches for, checked in order: PCK chain to a root of the policy, QE report signed by the PCK
 * leaf, QE report_data binding the attestation key. On success *attestation_key is a new reference. */
static int verify_platform(const ratls_policy *policy, const uint8_t *raw, const ratls_quote *q, int64_t now,
                           STACK_OF(X509) **chain_out, EVP_PKEY **attestation_key, int *root, char *msg,
                           size_t msg_len) {
    STACK_OF(X509) *chain = NULL;
    int rc = parse_pck_chain(policy, raw + q->cert_data.off, q->cert_data.len, &chain, msg, msg_len);
    if (rc != RATLS_OK) return rc;
    rc = verify_pck_chain(policy, chain, now, root, msg, msg_len);
    if (rc != RATLS_OK) goto done;

    int ok = ratls_ecdsa_verify_raw(X509_get0_pubkey(sk_X509_value(chain, 0)), raw + q->qe_report_raw.off,
                                    q->qe_report_raw.len, raw + q->qe_report_signature.off, 32);
    if (ok != 1) {
        rc = ratls_fail(msg, msg_len, ok < 0 ? RATLS_ERR_INTERNAL : RATLS_ERR_QE_REPORT_SIGNATURE,
                        "QE report signature does not verify under the PCK leaf key");
        goto done;
    }

    /* The QE vouches for the attestation key by putting SHA-256(key || auth data) into its report_data. */
    uint8_t binding[32];
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned int n = 0;
    ok = md && EVP_DigestInit_ex(md, EVP_sha256(), NULL) == 1 &&
         EVP_DigestUpdate(md, raw + q->attestation_key.off, q->attestation_key.len) == 1 &&
         EVP_DigestUpdate(md, raw + q->qe_auth_data.off, q->qe_auth_data.len) == 1 &&
         EVP_DigestFinal_ex(md, binding, &n) == 1;
    EVP_MD_CTX_free(md);
    if (!ok) {
        rc = ratls_fail(msg, msg_len, RATLS_ERR_INTERNAL, "SHA-256 failed");
        goto done;
    }
    if (memcmp(binding, q->qe_report.report_data, 32) != 0) {
        rc = ratls_fail(msg, msg_len, RATLS_ERR_QE_REPORT_DATA,
                        "QE report_data[0:32] is not SHA-256(attestation key || qe_auth_data)");
        goto done;
    }
    if (!(*attestation_key = ratls_p256_from_raw(raw + q->attestation_key.off)))
        rc = ratls_fail(msg, msg_len, RATLS_ERR_QUOTE_SIGNATURE, "attestation key is not a P-256 point");
done:
    if (rc == RATLS_OK)
        *chain_out = chain;
    else
        sk_X509_pop_free(chain, X509_free);
    return rc;
}

int ratls_quote_verify_signatures(const ratls_policy *policy, const uint8_t *raw, size_t len,
                                  const ratls_quote *q, int64_t now, int *root, char *msg, size_t msg_len) {
    if (!policy || !raw || !q || !root)
        return ratls_fail(msg, msg_len, RATLS_ERR_BAD_ARGUMENT, "policy, quote or output is NULL");
    if (q->total_len != len)
        return ratls_fail(msg, msg_len, RATLS_ERR_BAD_ARGUMENT, "parsed quote is %zu bytes, buffer is %zu",
                          q->total_len, len);
    *root = RATLS_ROOT_NONE;
    if (q->cert_data_type != SGX_CERT_DATA_PCK_CHAIN)
        return ratls_fail(msg, msg_len, RATLS_ERR_QUOTE_UNSUPPORTED_CERT_DATA,
                          "certification data type: expected 5 (PCK certificate chain), found %u",
                          q->cert_data_type);
    /* The platform's part (attestation key, QE report and signature, auth data, PCK chain) is the same in every
     * quote of one platform and is contiguous after the ISV signature: verified once per policy and validity
     * window, then only the per-quote ISV signature is checked. The policy is const to callers; only its
     * lock-protected cache is written. */
    ratls_policy *cache_owner = (ratls_policy *)policy;
    uint8_t platform_hash[32];
    if (!ratls_sha256(raw + q->attestation_key.off, len - q->attestation_key.off, platform_hash))
        return ratls_fail(msg, msg_len, RATLS_ERR_INTERNAL, "SHA-256 failed");
    int chain_root = RATLS_ROOT_NONE;
    EVP_PKEY *att_key = platform_cache_lookup(cache_owner, platform_hash, now, &chain_root);
    if (!att_key) {
        STACK_OF(X509) *chain = NULL;
        int rc = verify_platform(policy, raw, q, now, &chain, &att_key, &chain_root, msg, msg_len);
        if (rc != RATLS_OK) return rc;
        platform_cache_store(cache_owner, platform_hash, chain_root, chain, att_key);
        sk_X509_pop_free(chain, X509_free);
    }
    int ok = ratls_ecdsa_verify_raw(att_key, raw + q->signed_region.off, q->signed_region.len,
                                    raw + q->isv_signature.off, 32);
    EVP_PKEY_free(att_key);
    if (ok != 1)
        return ratls_fail(msg, msg_len, ok < 0 ? RATLS_ERR_INTERNAL : RATLS_ERR_QUOTE_SIGNATURE,
                          "%s signature does not verify under the attestation key",
                          q->tee == RATLS_TEE_TDX ? "TD quote" : "ISV report");
    *root = chain_root;
    return RATLS_OK;
}
