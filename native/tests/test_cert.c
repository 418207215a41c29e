/* RA-TLS certificate building and parsing without a provider: a stand-in quoter returns a quote-shaped buffer
 * carrying the requested report_data, so the certificate layout, the evidence extraction (from the DER, which
 * must be DER) and both key bindings can be checked in C (signature chains are covered by test_quote and the
 * Python suite). */
#include <openssl/evp.h>
#include <openssl/x509v3.h>

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
