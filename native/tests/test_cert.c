/* RA-TLS certificate building and parsing without a provider: a stand-in quoter returns a quote-shaped buffer
 * carrying the requested report_data, so the certificate layout, the evidence extraction (from the DER, which
 * must be DER) and both key bindings can be checked in C (signature chains are covered by test_quote and the
 * Python suite). */
#include <openssl/evp.h>
#include <openssl/x509v3.h>

#include "cbor.h"
#include "internal.h"
#include "testutil.h"

static int calls;

static int fake_quote(void *ctx, const uint8_t report_data[64], uint8_t **quote, size_t *quote_len, char *msg,
                      size_t msg_len) {
    (void)ctx;
    (void)msg;
    (void)msg_len;
    calls++;
    *quote_len = 1000;
    *quote = calloc(1, *quote_len);
    if (!*quote) return RATLS_ERR_INTERNAL;
    (*quote)[0] = 3;
    memcpy(*quote + 368, report_data, 64);
    return RATLS_OK;
}

/* Copies the DER elements of `in` to `out`, the one starting at offset `target` of `base` with its length in a needless
 * extra byte (BER, which OpenSSL reads but DER forbids) and the lengths around it grown to match. */
static int reencode(cbs in, cbb *out, const uint8_t *base, size_t target) {
    while (cbs_len(&in) > 0) {
        size_t off = cbs_offset(&in, base);
        uint8_t tag = cbs_data(&in)[0];
        cbs contents;
        cbb child, *dest = &child;
        if (!cbs_get_der(&in, tag, &contents)) return 0;
        if (off == target) {
            size_t n = cbs_len(&contents), bytes = 0;
            for (size_t v = n; v; v >>= 8) bytes++;
            uint8_t head[8] = {tag, (uint8_t)(0x80 | (bytes + 1)), 0x00};
            for (size_t i = 0; i < bytes; i++) head[3 + i] = (uint8_t)(n >> (8 * (bytes - 1 - i)));
            cbb_add(out, head, 3 + bytes);
            dest = out;
        } else {
            cbb_add_der(out, &child, tag);
        }
        if (!(tag & DER_CONSTRUCTED)) cbb_add(dest, cbs_data(&contents), cbs_len(&contents));
        else if (!reencode(contents, dest, base, target)) return 0;
        if (dest == &child && !cbb_close(&child)) return 0;
    }
    return !out->failed;
}

/* ratls_cert_inspect of `der` with the length of the element at `target` made BER. */
static int inspect_ber(const uint8_t *der, size_t len, size_t target, char *msg) {
    cbs in;
    cbb out;
    cbs_init(&in, der, len);
    cbb_init(&out);
    ratls_cert_info info;
    int rc = reencode(in, &out, der, target) ? ratls_cert_inspect(out.data, out.len, &info, msg, RATLS_MSG_SIZE) : -1;
    cbb_cleanup(&out);
    return rc;
}

/* The spans come from walking the DER, which must be DER: every BER length OpenSSL would accept is refused. */
static void test_der_walk(EVP_PKEY *key, const uint8_t *der, size_t len, const ratls_cert_info *info) {
    uint8_t *spki = NULL;
    size_t spki_len = 0;
    CHECK(ratls_spki_der(key, &spki, &spki_len));
    CHECK(info->spki.len == spki_len && memcmp(der + info->spki.off, spki, spki_len) == 0);
    OPENSSL_free(spki);
    /* The legacy quote is the contents of its extension's OCTET STRING, 04 82 03 e8 (1000 bytes). */
    const uint8_t *legacy_head = der + info->legacy_quote.off - 4;
    CHECK(legacy_head[0] == 0x04 && legacy_head[1] == 0x82 && legacy_head[2] == 0x03 && legacy_head[3] == 0xe8);
    CHECK(der[info->legacy_quote.off] == 3);

    char msg[RATLS_MSG_SIZE];
    CHECK_EQ(inspect_ber(der, len, SIZE_MAX, msg), RATLS_OK); /* no target: the same bytes */
    const size_t targets[] = {0, info->spki.off, info->legacy_quote.off - 4};
    for (size_t i = 0; i < sizeof targets / sizeof *targets; i++) {
        CHECK_EQ(inspect_ber(der, len, targets[i], msg), RATLS_ERR_CERT_MALFORMED);
        CHECK(strstr(msg, "not a DER X.509 certificate (BER") != NULL);
    }

    /* The indefinite form: 30 80 <contents> 00 00. */
    size_t header = 2 + (der[1] & 0x7f);
    uint8_t *indefinite = malloc(len - header + 4);
    CHECK(indefinite != NULL);
    indefinite[0] = 0x30;
    indefinite[1] = 0x80;
    memcpy(indefinite + 2, der + header, len - header);
    indefinite[len - header + 2] = indefinite[len - header + 3] = 0;
    ratls_cert_info ignored;
    CHECK_EQ(ratls_cert_inspect(indefinite, len - header + 4, &ignored, msg, sizeof msg), RATLS_ERR_CERT_MALFORMED);
    CHECK(strstr(msg, "not a DER X.509 certificate (BER") != NULL); /* OpenSSL reads it; the walk does not */
    free(indefinite);
}

/* A certificate without extensions has no evidence (the walk's [3] is optional). */
static void test_no_extensions(EVP_PKEY *key) {
    X509 *x = X509_new();
    CHECK(x && ASN1_INTEGER_set(X509_get_serialNumber(x), 1) && X509_set_issuer_name(x, X509_get_subject_name(x)) &&
          ASN1_TIME_set(X509_getm_notBefore(x), 1700000000) && ASN1_TIME_set(X509_getm_notAfter(x), 1900000000) &&
          X509_set_pubkey(x, key) && X509_sign(x, key, EVP_sha256()) > 0);
    uint8_t *der = NULL;
    int len = i2d_X509(x, &der);
    CHECK(len > 0);
    ratls_cert_info info;
    char msg[RATLS_MSG_SIZE];
    CHECK_EQ(ratls_cert_inspect(der, (size_t)len, &info, msg, sizeof msg), RATLS_ERR_EVIDENCE_MISSING);
    OPENSSL_free(der);
    X509_free(x);
}

/* A quote-shaped buffer: the header of `version` with tee_type `tee_type`, report_data at `rd_off`. */
static uint8_t *shaped_quote(uint16_t version, uint32_t tee_type, size_t len, const uint8_t *report_data,
                             size_t rd_off) {
    uint8_t *q = calloc(1, len);
    if (!q) return NULL;
    q[0] = (uint8_t)version;
    q[2] = 2; /* ECDSA P-256 */
    memcpy(q + 4, &tee_type, 4); /* little-endian host */
    if (report_data) memcpy(q + rd_off, report_data, 64);
    return q;
}

/* A self-signed certificate of `key` whose DICE extension holds `value` (any bytes). */
static uint8_t *cert_with_dice_value(EVP_PKEY *key, const uint8_t *value, size_t value_len, size_t *len) {
    X509 *x = X509_new();
    ASN1_OBJECT *oid = OBJ_txt2obj("2.23.133.5.4.9", 1);
    ASN1_OCTET_STRING *os = ASN1_OCTET_STRING_new();
    int ok = x && oid && os && ASN1_OCTET_STRING_set(os, value, (int)value_len) &&
             ASN1_INTEGER_set(X509_get_serialNumber(x), 1) && X509_set_issuer_name(x, X509_get_subject_name(x)) &&
             ASN1_TIME_set(X509_getm_notBefore(x), 1700000000) && ASN1_TIME_set(X509_getm_notAfter(x), 1900000000) &&
             X509_set_pubkey(x, key);
    X509_EXTENSION *ext = ok ? X509_EXTENSION_create_by_OBJ(NULL, oid, 0, os) : NULL;
    ok = ext && X509_add_ext(x, ext, -1) && X509_sign(x, key, EVP_sha256()) > 0;
    uint8_t *der = NULL;
    int n = ok ? i2d_X509(x, &der) : 0;
    X509_EXTENSION_free(ext);
    ASN1_OCTET_STRING_free(os);
    ASN1_OBJECT_free(oid);
    X509_free(x);
    *len = n > 0 ? (size_t)n : 0;
    return n > 0 ? der : NULL;
}

/* tag ( [ bstr <1000-byte SGX-shaped quote>, bstr claims ] ); the claims are raw bytes given here. */
static int inspect_evidence(EVP_PKEY *key, uint64_t tag, const uint8_t *claims, size_t claims_len,
                            ratls_cert_info *info, char *msg) {
    uint8_t *quote = shaped_quote(3, 0, 1000, NULL, 0);
    cbb ev;
    cbb_init(&ev);
    int ok = quote && cbor_add_head(&ev, CBOR_TAG, tag) && cbor_add_head(&ev, CBOR_ARRAY, 2) &&
             cbor_add_string(&ev, CBOR_BYTES, quote, 1000) && cbor_add_string(&ev, CBOR_BYTES, claims, claims_len);
    size_t len = 0;
    uint8_t *der = ok ? cert_with_dice_value(key, ev.data, ev.len, &len) : NULL;
    int rc = der ? ratls_cert_inspect(der, len, info, msg, RATLS_MSG_SIZE) : -1;
    OPENSSL_free(der);
    cbb_cleanup(&ev);
    free(quote);
    return rc;
}

/* The DICE evidence parser on what rats-tls and the IRT documents allow, and on what they do not. */
static void test_dice_evidence(EVP_PKEY *key) {
    uint8_t *spki = NULL;
    size_t spki_len = 0;
    uint8_t h[32];
    CHECK(ratls_spki_der(key, &spki, &spki_len) && ratls_sha256(spki, spki_len, h));
    OPENSSL_free(spki);
    /* [1, bstr h] serialized, as the pubkey-hash value. */
    cbb entry;
    cbb_init(&entry);
    CHECK(cbor_add_head(&entry, CBOR_ARRAY, 2) && cbor_add_head(&entry, CBOR_UINT, 1) &&
          cbor_add_string(&entry, CBOR_BYTES, h, 32));
    ratls_cert_info info;
    char msg[RATLS_MSG_SIZE];

    /* rats-tls style: pubkey-hash among custom claims, here of other CBOR types too (a nonce, a nested map). */
    cbb c;
    cbb_init(&c);
    CHECK(cbor_add_head(&c, CBOR_MAP, 3) && cbor_add_string(&c, CBOR_TEXT, "nonce", 5) &&
          cbor_add_string(&c, CBOR_BYTES, "12345678", 8) && cbor_add_string(&c, CBOR_TEXT, "pubkey-hash", 11) &&
          cbor_add_string(&c, CBOR_BYTES, entry.data, entry.len) && cbor_add_string(&c, CBOR_TEXT, "meta", 4) &&
          cbor_add_head(&c, CBOR_MAP, 1) && cbor_add_string(&c, CBOR_TEXT, "v", 1) &&
          cbor_add_head(&c, CBOR_ARRAY, 2) && cbor_add_head(&c, CBOR_UINT, 7) && cbor_add_head(&c, CBOR_NEGINT, 0));
    CHECK_EQ(inspect_evidence(key, 60000, c.data, c.len, &info, msg), RATLS_OK);
    CHECK_EQ(info.tee, RATLS_TEE_SGX);
    CHECK_EQ(info.pubkey_hash_alg, 1);
    cbb_cleanup(&c);

    /* Reports (60001, 60002) and unknown tags, each refused with what it is. */
    static const char one_claim_prefix[] = {(char)0xa1, 0x6b, 'p', 'u', 'b', 'k', 'e', 'y', '-', 'h', 'a', 's', 'h'};
    cbb ok_claims;
    cbb_init(&ok_claims);
    CHECK(cbb_add(&ok_claims, one_claim_prefix, sizeof one_claim_prefix) &&
          cbor_add_string(&ok_claims, CBOR_BYTES, entry.data, entry.len));
    CHECK_EQ(inspect_evidence(key, 60000, ok_claims.data, ok_claims.len, &info, msg), RATLS_OK);
    CHECK_EQ(inspect_evidence(key, 60001, ok_claims.data, ok_claims.len, &info, msg), RATLS_ERR_EVIDENCE_MALFORMED);
    CHECK(strstr(msg, "tag 60001 is an Intel TEE report") != NULL);
    CHECK_EQ(inspect_evidence(key, 60002, ok_claims.data, ok_claims.len, &info, msg), RATLS_ERR_EVIDENCE_MALFORMED);
    CHECK(strstr(msg, "legacy SGX report") != NULL);
    CHECK_EQ(inspect_evidence(key, 0x1a7504, ok_claims.data, ok_claims.len, &info, msg),
             RATLS_ERR_EVIDENCE_MALFORMED); /* rats-tls's SEV-SNP tag */
    CHECK(strstr(msg, "CBOR tag 1733892 is not an evidence type") != NULL);

    /* A claim key that is not text; a pubkey-hash that is not a byte string; a custom claim nested too deep. */
    static const uint8_t int_key[] = {0xa1, 0x01, 0x40};
    CHECK_EQ(inspect_evidence(key, 60000, int_key, sizeof int_key, &info, msg), RATLS_ERR_EVIDENCE_MALFORMED);
    CHECK(strstr(msg, "key of entry 0 is not a text string") != NULL);
    cbb_init(&c);
    CHECK(cbb_add(&c, one_claim_prefix, sizeof one_claim_prefix) && cbb_add(&c, entry.data, entry.len));
    CHECK_EQ(inspect_evidence(key, 60000, c.data, c.len, &info, msg), RATLS_ERR_EVIDENCE_MALFORMED);
    CHECK(strstr(msg, "pubkey-hash value is not a byte string") != NULL);
    cbb_cleanup(&c);
    cbb_init(&c);
    CHECK(cbor_add_head(&c, CBOR_MAP, 2) && cbor_add_string(&c, CBOR_TEXT, "deep", 4));
    for (int i = 0; i <= CBOR_MAX_DEPTH; i++) CHECK(cbor_add_head(&c, CBOR_ARRAY, 1));
    CHECK(cbor_add_head(&c, CBOR_UINT, 0) && cbb_add(&c, one_claim_prefix + 1, sizeof one_claim_prefix - 1) &&
          cbor_add_string(&c, CBOR_BYTES, entry.data, entry.len));
    CHECK_EQ(inspect_evidence(key, 60000, c.data, c.len, &info, msg), RATLS_ERR_EVIDENCE_MALFORMED);
    CHECK(strstr(msg, "value of entry 0 is not one well-formed") != NULL);
    cbb_cleanup(&c);
    cbb_cleanup(&ok_claims);
    cbb_cleanup(&entry);
}

/* The DICE-only layout around a TDX-shaped quote: what a TD presents. The quote is handed, unparsed, to the quote
 * verification every certificate goes through. */
static void test_dice_only(EVP_PKEY *key) {
    unsigned char *key_der = NULL;
    int key_len = i2d_PrivateKey(key, &key_der);
    CHECK(key_len > 0);
    uint8_t rd[64], zero[32] = {0};
    char msg[RATLS_MSG_SIZE];
    CHECK_EQ(ratls_dice_report_data(key_der, (size_t)key_len, rd, msg, sizeof msg), RATLS_OK);
    CHECK(memcmp(rd + 32, zero, 32) == 0);
    enum { TDX_V4_REPORT_DATA = 48 + 520, QUOTE_LEN = 1200 };
    uint8_t *quote = shaped_quote(4, 0x81, QUOTE_LEN, rd, TDX_V4_REPORT_DATA);
    uint8_t *der = NULL;
    size_t len = 0;
    CHECK_EQ(ratls_dice_cert_create(key_der, (size_t)key_len, quote, QUOTE_LEN, 1700000000, 1900000000, &der, &len,
                                    msg, sizeof msg),
             RATLS_OK);
    ratls_cert_info info;
    CHECK_EQ(ratls_cert_inspect(der, len, &info, msg, sizeof msg), RATLS_OK);
    CHECK_EQ(info.format, RATLS_FORMAT_DICE);
    CHECK(info.has_dice && !info.has_legacy);
    CHECK_EQ(info.tee, RATLS_TEE_TDX);
    CHECK(info.quote.len == QUOTE_LEN && memcmp(der + info.quote.off, quote, QUOTE_LEN) == 0);
    uint8_t claims_hash[32];
    CHECK(ratls_sha256(der + info.claims.off, info.claims.len, claims_hash) && memcmp(claims_hash, rd, 32) == 0);
    CHECK_EQ(ratls_cert_check_binding(der, &info, quote + TDX_V4_REPORT_DATA, msg, sizeof msg), RATLS_OK);
    /* basicConstraints, SKI, AKI, the DICE evidence, subjectAltName: no legacy quote extension. */
    const unsigned char *p = der;
    X509 *x = d2i_X509(NULL, &p, (long)len);
    CHECK(x && X509_get_ext_count(x) == 5 && X509_get_ext_by_NID(x, NID_subject_alt_name, -1) == 4);
    X509_free(x);
    /* The certificate path ends where the bare quote's does: the same quote parser decides. */
    ratls_policy *policy = ratls_policy_new();
    ratls_evidence ev;
    ratls_quote q;
    char quote_msg[RATLS_MSG_SIZE];
    int quote_rc = ratls_quote_parse(quote, QUOTE_LEN, &q, quote_msg, sizeof quote_msg);
    int cert_rc = ratls_verify_cert(policy, der, len, 1800000000, RATLS_TCB_UNKNOWN, &ev, msg, sizeof msg);
    if (quote_rc != RATLS_OK) {
        CHECK_EQ(cert_rc, quote_rc);
        CHECK(strcmp(msg, quote_msg) == 0);
    } else {
        CHECK(cert_rc != RATLS_OK); /* a zero-filled quote has no valid signature chain */
    }
    ratls_policy_free(policy);
    ratls_free(der);

    /* An SGX v4 header (tee_type 0) is SGX. */
    uint8_t *sgx4 = shaped_quote(4, 0, QUOTE_LEN, rd, TDX_V4_REPORT_DATA);
    CHECK_EQ(ratls_dice_cert_create(key_der, (size_t)key_len, sgx4, QUOTE_LEN, 1700000000, 1900000000, &der, &len,
                                    msg, sizeof msg),
             RATLS_OK);
    CHECK_EQ(ratls_cert_inspect(der, len, &info, msg, sizeof msg), RATLS_OK);
    CHECK_EQ(info.tee, RATLS_TEE_SGX);
    ratls_free(der);
    free(sgx4);

    /* Bad arguments, each named. */
    CHECK_EQ(ratls_dice_cert_create(key_der, (size_t)key_len, quote, 100, 1700000000, 1900000000, &der, &len, msg,
                                    sizeof msg),
             RATLS_ERR_BAD_ARGUMENT);
    CHECK(strstr(msg, "quote is 100 bytes") != NULL);
    CHECK_EQ(ratls_dice_cert_create(key_der, (size_t)key_len, quote, QUOTE_LEN, 1900000000, 1700000000, &der, &len,
                                    msg, sizeof msg),
             RATLS_ERR_BAD_ARGUMENT);
    CHECK_EQ(ratls_dice_report_data(key_der, (size_t)key_len - 1, rd, msg, sizeof msg), RATLS_ERR_BAD_ARGUMENT);
    CHECK(strstr(msg, "not a DER private key") != NULL);
    EVP_PKEY *rsa = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    unsigned char *rsa_der = NULL;
    int rsa_len = i2d_PrivateKey(rsa, &rsa_der);
    CHECK_EQ(ratls_dice_report_data(rsa_der, (size_t)rsa_len, rd, msg, sizeof msg), RATLS_ERR_CERT_KEY_UNSUPPORTED);
    OPENSSL_free(rsa_der);
    EVP_PKEY_free(rsa);
    OPENSSL_free(key_der);
    free(quote);
}

int main(void) {
    EVP_PKEY *key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
    CHECK(key != NULL);
    uint8_t *der = NULL;
    size_t len = 0;
    char msg[RATLS_MSG_SIZE];
    CHECK_EQ(ratls_cert_build(key, 1700000000, 1900000000, fake_quote, NULL, &der, &len, msg, sizeof msg), RATLS_OK);
    CHECK_EQ(calls, 2); /* one quote for the legacy extension, one for the DICE evidence */

    ratls_cert_info info;
    CHECK_EQ(ratls_cert_inspect(der, len, &info, msg, sizeof msg), RATLS_OK);
    CHECK_EQ(info.format, RATLS_FORMAT_DICE);
    CHECK(info.has_dice && info.has_legacy);
    CHECK_EQ(info.tee, RATLS_TEE_SGX);
    CHECK_EQ(info.quote.len, 1000);
    CHECK_EQ(info.legacy_quote.len, 1000);
    CHECK_EQ(info.pubkey_hash_alg, 1);
    CHECK_EQ(info.not_before, 1700000000);
    CHECK_EQ(info.not_after, 1900000000);
    /* Both bindings hold: the DICE quote binds the claims, the legacy quote binds the SPKI. */
    CHECK_EQ(ratls_cert_check_binding(der, &info, der + info.quote.off + 368, msg, sizeof msg), RATLS_OK);
    ratls_cert_info legacy = info;
    legacy.format = RATLS_FORMAT_LEGACY;
    CHECK_EQ(ratls_cert_check_binding(der, &legacy, der + info.legacy_quote.off + 368, msg, sizeof msg), RATLS_OK);
    /* Crossed over, neither binds. */
    CHECK_EQ(ratls_cert_check_binding(der, &info, der + info.legacy_quote.off + 368, msg, sizeof msg),
             RATLS_ERR_REPORT_DATA_MISMATCH);
    CHECK_EQ(ratls_cert_check_binding(der, &legacy, der + info.quote.off + 368, msg, sizeof msg),
             RATLS_ERR_REPORT_DATA_MISMATCH);

    /* The key identifiers as mbedTLS writes them: SKI 04 14 <SHA-1>, AKI 30 16 80 14 <the same SHA-1>. */
    const unsigned char *p = der;
    X509 *x = d2i_X509(NULL, &p, (long)len);
    CHECK(x != NULL);
    const ASN1_OCTET_STRING *ski = X509_get0_subject_key_id(x), *aki = X509_get0_authority_key_id(x);
    CHECK(ski && aki && ASN1_STRING_length(ski) == 20 && ASN1_OCTET_STRING_cmp(ski, aki) == 0);
    X509_EXTENSION *ext = X509_get_ext(x, X509_get_ext_by_NID(x, NID_subject_key_identifier, -1));
    CHECK(ext && ASN1_STRING_length(X509_EXTENSION_get_data(ext)) == 22);
    ext = X509_get_ext(x, X509_get_ext_by_NID(x, NID_authority_key_identifier, -1));
    CHECK(ext && ASN1_STRING_length(X509_EXTENSION_get_data(ext)) == 24);
    /* The subjectAltName: last (after Gramine's five), non-critical, exactly one dNSName equal to the CN, so that a
     * hostname check that never looks at the subject (as Go's) accepts the CN's value. */
    char cn[32];
    CHECK_EQ(X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, cn, sizeof cn), 22);
    CHECK_EQ(X509_get_ext_count(x), 6);
    CHECK_EQ(X509_get_ext_by_NID(x, NID_subject_alt_name, -1), 5);
    int critical = -1;
    GENERAL_NAMES *names = X509_get_ext_d2i(x, NID_subject_alt_name, &critical, NULL);
    CHECK(names && critical == 0 && sk_GENERAL_NAME_num(names) == 1);
    const GENERAL_NAME *dns = sk_GENERAL_NAME_value(names, 0);
    CHECK(dns->type == GEN_DNS && ASN1_STRING_length(dns->d.dNSName) == 22 &&
          memcmp(ASN1_STRING_get0_data(dns->d.dNSName), cn, 22) == 0);
    GENERAL_NAMES_free(names);
    CHECK_EQ(X509_check_host(x, cn, 0, X509_CHECK_FLAG_NEVER_CHECK_SUBJECT, NULL), 1);
    CHECK_EQ(X509_check_host(x, "RATLS-0000000000000000", 0, 0, NULL), 0);
    X509_free(x);

    test_der_walk(key, der, len, &info);
    test_no_extensions(key);
    test_dice_evidence(key);
    test_dice_only(key);

    /* Every truncation of the certificate is rejected cleanly. */
    int all_rejected = 1;
    for (size_t cut = 0; cut < len; cut += test_sweep_step())
        if (ratls_cert_inspect(der, cut, &info, msg, sizeof msg) == RATLS_OK) all_rejected = 0;
    CHECK(all_rejected);
    CHECK_EQ(ratls_cert_inspect(der, RATLS_MAX_CERT_SIZE + 1, &info, msg, sizeof msg), RATLS_ERR_CERT_TOO_LARGE);

    /* An RSA key is not an RA-TLS key. */
    EVP_PKEY *rsa = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    uint8_t *rsa_der = NULL;
    size_t rsa_len = 0;
    CHECK_EQ(ratls_cert_build(rsa, 1700000000, 1900000000, fake_quote, NULL, &rsa_der, &rsa_len, msg, sizeof msg),
             RATLS_OK);
    CHECK_EQ(ratls_cert_inspect(rsa_der, rsa_len, &info, msg, sizeof msg), RATLS_ERR_CERT_KEY_UNSUPPORTED);

    ratls_free(der);
    ratls_free(rsa_der);
    EVP_PKEY_free(key);
    EVP_PKEY_free(rsa);
    return test_summary();
}
