/* RA-TLS certificate building and parsing without a provider: a stand-in quoter returns a quote-shaped buffer
 * carrying the requested report_data, so the certificate layout, the evidence extraction and both key
 * bindings can be checked in C (signature chains are covered by test_quote and the Python suite). */
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
    X509_free(x);

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
