/* Quote parsing and signature-chain verification on real DCAP quotes (dcap-qvl, Gramine, Intel's QVL
 * sample) and on a simulation-style chain built here; the crypto helpers; policies and Gramine's RA_TLS_*
 * environment policy. `test_quote --bench` prints the median parse+verify time instead of testing. */
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <time.h>

#include "quote_testutil.h"

/* Inside the validity of every PCK chain below (dcap-qvl's own test time for its sample). */
#define NOW 1752919277

static const char *DCAP_QVL_QUOTE = "sgx/dcap-qvl/sgx_quote";
static const char *GRAMINE_QUOTES[] = {"sgx/gramine/gramine-cert.legacy_oid_quote.bin",
                                       "sgx/gramine/gramine-cert.dice_evidence_quote.bin"};

static void check_hex(const uint8_t *data, size_t len, const char *expected) {
    char hex[129];
    ratls_hex(data, len, hex);
    if (strcmp(hex, expected) != 0) fprintf(stderr, "  got %s\n  expected %s\n", hex, expected);
    CHECK(strcmp(hex, expected) == 0);
}

static uint8_t *pem_file_to_der(const char *rel, size_t *len) {
    FILE *f = fopen(testdata_path(rel), "r");
    X509 *cert = f ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
    if (f) fclose(f);
    uint8_t *der = NULL;
    int n = cert ? i2d_X509(cert, &der) : -1;
    X509_free(cert);
    if (n <= 0) {
        fprintf(stderr, "cannot read certificate %s\n", rel);
        exit(2);
    }
    *len = (size_t)n;
    return der;
}

static void test_names_and_root_pem(void) {
    CHECK(strcmp(ratls_reason_name(RATLS_OK), "OK") == 0);
    CHECK(strcmp(ratls_reason_name(RATLS_ERR_MRENCLAVE), "MRENCLAVE") == 0);
    CHECK(strcmp(ratls_reason_name(RATLS_ERR_QUOTE_UNSUPPORTED_CERT_DATA), "QUOTE_UNSUPPORTED_CERT_DATA") == 0);
    CHECK(strcmp(ratls_reason_name(RATLS_ERR_IO), "IO") == 0);
    CHECK(strcmp(ratls_reason_name(3), "UNKNOWN") == 0);
    CHECK(strcmp(ratls_reason_name(-1), "UNKNOWN") == 0);
    CHECK(strcmp(ratls_tcb_status_name(RATLS_TCB_UP_TO_DATE), "UpToDate") == 0);
    CHECK(strcmp(ratls_tcb_status_name(RATLS_TCB_CONFIGURATION_AND_SW_HARDENING_NEEDED),
                 "ConfigurationAndSWHardeningNeeded") == 0);
    CHECK(strcmp(ratls_tcb_status_name(RATLS_TCB_OUT_OF_DATE_CONFIGURATION_NEEDED), "OutOfDateConfigurationNeeded") ==
          0);
    CHECK(strcmp(ratls_tcb_status_name(RATLS_TCB_REVOKED), "Revoked") == 0);
    CHECK(strcmp(ratls_tcb_status_name(RATLS_TCB_UNKNOWN), "Unknown") == 0);
    CHECK(strcmp(ratls_tcb_status_name(99), "Unknown") == 0);

    size_t len;
    uint8_t *file = read_testdata("sgx/intel_sgx_root_ca.pem", &len);
    CHECK_EQ(strlen(ratls_intel_root_ca_pem()), len);
    CHECK(memcmp(ratls_intel_root_ca_pem(), file, len) == 0);
    free(file);

    char msg[RATLS_MSG_SIZE];
    CHECK_EQ(ratls_fail(msg, sizeof(msg), RATLS_ERR_ISV_SVN, "svn %d < %d", 1, 2), RATLS_ERR_ISV_SVN);
    CHECK(strcmp(msg, "svn 1 < 2") == 0);
    CHECK_EQ(ratls_fail(NULL, 0, RATLS_ERR_IO, "ignored"), RATLS_ERR_IO);
    char tiny[4];
    ratls_fail(tiny, sizeof(tiny), RATLS_ERR_IO, "truncated message");
    CHECK(strcmp(tiny, "tru") == 0);
}

static void test_hex_and_hash(void) {
    uint8_t bytes[3] = {0x00, 0xab, 0xff}, out[3] = {1, 2, 3};
    char hex[7];
    ratls_hex(bytes, 3, hex);
    CHECK(strcmp(hex, "00abff") == 0);
    CHECK(ratls_unhex("00ABff", out, 3) && memcmp(out, bytes, 3) == 0);
    uint8_t untouched[3] = {7, 7, 7};
    CHECK(!ratls_unhex("00abf", untouched, 3));   /* short */
    CHECK(!ratls_unhex("00abff0", untouched, 3)); /* long */
    CHECK(!ratls_unhex("00abgf", untouched, 3));  /* not hex */
    CHECK(!ratls_unhex(NULL, untouched, 3));
    CHECK(untouched[0] == 7 && untouched[1] == 7 && untouched[2] == 7);
    CHECK(ratls_unhex("", out, 0));

    uint8_t digest[32];
    CHECK(ratls_sha256("abc", 3, digest));
    check_hex(digest, 32, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

static void test_ecdsa_helpers(void) {
    EVP_PKEY *key = EVP_EC_gen("P-256");
    CHECK(key != NULL);
    uint8_t xy[64], sig[64];
    CHECK(ratls_p256_to_raw(key, xy));
    EVP_PKEY *pub = ratls_p256_from_raw(xy);
    CHECK(pub != NULL);
    uint8_t xy2[64];
    CHECK(ratls_p256_to_raw(pub, xy2) && memcmp(xy, xy2, 64) == 0);

    const uint8_t message[] = "report body";
    CHECK(ratls_ecdsa_sign_raw(key, message, sizeof(message), sig, 32));
    CHECK_EQ(ratls_ecdsa_verify_raw(pub, message, sizeof(message), sig, 32), 1);
    CHECK_EQ(ratls_ecdsa_verify_raw(pub, message, sizeof(message) - 1, sig, 32), 0);
    sig[40] ^= 1;
    CHECK_EQ(ratls_ecdsa_verify_raw(pub, message, sizeof(message), sig, 32), 0);
    uint8_t zero_sig[64] = {0}, max_sig[64];
    memset(max_sig, 0xff, sizeof(max_sig)); /* r, s >= the group order */
    CHECK_EQ(ratls_ecdsa_verify_raw(pub, message, sizeof(message), zero_sig, 32), 0);
    CHECK_EQ(ratls_ecdsa_verify_raw(pub, message, sizeof(message), max_sig, 32), 0);
    CHECK_EQ(ratls_ecdsa_verify_raw(NULL, message, sizeof(message), sig, 32), -1);

    xy[63] ^= 1; /* (x, y+-1) is not on the curve */
    CHECK(ratls_p256_from_raw(xy) == NULL);
    uint8_t zeros[64] = {0};
    CHECK(ratls_p256_from_raw(zeros) == NULL);

    EVP_PKEY *p384 = EVP_EC_gen("P-384");
    CHECK(p384 != NULL && !ratls_p256_to_raw(p384, xy2));
    EVP_PKEY_free(p384);
    EVP_PKEY_free(pub);
    EVP_PKEY_free(key);

    /* Intel root validity, 2018-05-21T10:45:10Z .. 2049-12-31T23:59:59Z */
    BIO *bio = BIO_new_mem_buf(ratls_intel_root_ca_pem(), -1);
    X509 *root = PEM_read_bio_X509(bio, NULL, NULL, NULL);
    int64_t t = 0;
    CHECK(root != NULL);
    CHECK(ratls_asn1_time_to_unix(X509_get0_notBefore(root), &t) && t == 1526899510);
    CHECK(ratls_asn1_time_to_unix(X509_get0_notAfter(root), &t) && t == 2524607999);
    ASN1_TIME *gt = ASN1_TIME_new();
    CHECK(ASN1_TIME_set_string(gt, "19691231235959Z") && ratls_asn1_time_to_unix(gt, &t) && t == -1);
    CHECK(ASN1_TIME_set_string(gt, "99991231235959Z") && ratls_asn1_time_to_unix(gt, &t) && t == 253402300799);
    ASN1_TIME_free(gt);
    X509_free(root);
    BIO_free(bio);
}

static void test_report_body_roundtrip(void) {
    size_t len;
    uint8_t *raw = read_testdata(DCAP_QVL_QUOTE, &len);
    cbs s;
    cbs_init(&s, raw + SGX_QUOTE_HEADER_SIZE, SGX_REPORT_BODY_SIZE);
    ratls_report_body body;
    CHECK(ratls_report_body_decode(&s, &body));
    CHECK_EQ(cbs_len(&s), 0);
    cbb b;
    cbb_init(&b);
    CHECK(ratls_report_body_encode(&b, &body));
    size_t out_len;
    uint8_t *out = cbb_finish(&b, &out_len);
    CHECK_EQ(out_len, SGX_REPORT_BODY_SIZE);
    CHECK(out && memcmp(out, raw + SGX_QUOTE_HEADER_SIZE, SGX_REPORT_BODY_SIZE) == 0);
    ratls_free(out);
    cbs_init(&s, raw, SGX_REPORT_BODY_SIZE - 1);
    CHECK(!ratls_report_body_decode(&s, &body));
    CHECK_EQ(cbs_len(&s), SGX_REPORT_BODY_SIZE - 1);
    free(raw);
}

static void test_dcap_qvl_quote(const ratls_policy *pol) {
    size_t len;
    uint8_t *raw = read_testdata(DCAP_QVL_QUOTE, &len);
    ratls_quote q;
    char msg[RATLS_MSG_SIZE] = "";
    CHECK_EQ(ratls_quote_parse(raw, len, &q, msg, sizeof(msg)), RATLS_OK);
    CHECK_EQ(q.version, 3);
    CHECK_EQ(q.att_key_type, 2);
    CHECK_EQ(q.qe_svn, 10);
    CHECK_EQ(q.pce_svn, 15);
    check_hex(q.body.mrenclave, 32, "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb");
    check_hex(q.body.mrsigner, 32, "815f42f11cf64430c30bab7816ba596a1da0130c3b028b673133a66cf9a3e0e6");
    CHECK_EQ(q.body.isv_prod_id, 0);
    CHECK_EQ(q.body.isv_svn, 0);
    CHECK_EQ(q.body.flags, 0x05);
    CHECK_EQ(q.body.xfrm, 0xe7);
    uint8_t expected_rd[64] = "Hello, world!";
    CHECK(memcmp(q.body.report_data, expected_rd, 64) == 0);
    CHECK_EQ(q.signed_region.off, 0);
    CHECK_EQ(q.signed_region.len, 432);
    CHECK_EQ(q.isv_signature.off, 436);
    CHECK_EQ(q.attestation_key.off, 500);
    CHECK_EQ(q.qe_report_raw.off, 564);
    CHECK_EQ(q.qe_report_signature.off, 948);
    CHECK_EQ(q.qe_auth_data.off, 1014);
    CHECK_EQ(q.qe_auth_data.len, 32);
    CHECK_EQ(q.cert_data_type, 5);
    CHECK_EQ(q.cert_data.off, 1052);
    CHECK_EQ(q.cert_data.off + q.cert_data.len, len);
    CHECK_EQ(q.total_len, len);

    int root = -1;
    int rc = ratls_quote_verify_signatures(pol, raw, len, &q, NOW, &root, msg, sizeof(msg));
    if (rc) fprintf(stderr, "  dcap-qvl quote: %s: %s\n", ratls_reason_name(rc), msg);
    CHECK_EQ(rc, RATLS_OK);
    CHECK_EQ(root, RATLS_ROOT_TRUSTED);
    /* The PCK leaf expires 2030-09-20, the intermediate is valid from 2018-05-21. */
    CHECK_EQ(ratls_quote_verify_signatures(pol, raw, len, &q, 1926000000, &root, msg, sizeof(msg)),
             RATLS_ERR_PCK_CHAIN_UNTRUSTED);
    CHECK(strstr(msg, "expired") != NULL);
    CHECK_EQ(ratls_quote_verify_signatures(pol, raw, len, &q, 1500000000, &root, msg, sizeof(msg)),
             RATLS_ERR_PCK_CHAIN_UNTRUSTED);
    CHECK(strstr(msg, "not yet valid") != NULL);
    CHECK_EQ(root, RATLS_ROOT_NONE);
    CHECK_EQ(ratls_quote_verify_signatures(pol, raw, len - 1, &q, NOW, &root, msg, sizeof(msg)),
             RATLS_ERR_BAD_ARGUMENT);
    free(raw);
}

static void test_gramine_quotes(const ratls_policy *pol) {
    for (size_t i = 0; i < 2; i++) {
        size_t len;
        uint8_t *raw = read_testdata(GRAMINE_QUOTES[i], &len);
        ratls_quote q;
        char msg[RATLS_MSG_SIZE] = "";
        CHECK_EQ(ratls_quote_parse(raw, len, &q, msg, sizeof(msg)), RATLS_OK);
        check_hex(q.body.mrenclave, 32, "0866e7ca11b9f4efe4bf39b2607f4e1299f111920d96d95719080f01b62b7585");
        check_hex(q.body.mrsigner, 32, "adc53501f21ced9b998e37a7a18e061c63e00315045fa57a49c18ef0a30d02ca");
        CHECK_EQ(q.body.isv_prod_id, 0);
        CHECK_EQ(q.body.isv_svn, 0);
        CHECK_EQ(q.body.flags, 0x07);
        CHECK_EQ(q.cert_data_type, 5);
        int root = -1;
        int rc = ratls_quote_verify_signatures(pol, raw, len, &q, NOW, &root, msg, sizeof(msg));
        if (rc) fprintf(stderr, "  %s: %s: %s\n", GRAMINE_QUOTES[i], ratls_reason_name(rc), msg);
        CHECK_EQ(rc, RATLS_OK);
        CHECK_EQ(root, RATLS_ROOT_TRUSTED);
        free(raw);
    }
}

static int expect_header_or_body(size_t off, uint8_t flipped) {
    (void)flipped;
    if (off < 2) return RATLS_ERR_QUOTE_UNSUPPORTED_VERSION;
    if (off < 4) return RATLS_ERR_QUOTE_UNSUPPORTED_KEY_TYPE;
    if (off >= 12 && off < 28) return RATLS_ERR_QE_VENDOR;
    return RATLS_ERR_QUOTE_SIGNATURE;
}

static void test_bit_flips(const ratls_policy *pol) {
    size_t len;
    uint8_t *raw = read_testdata(DCAP_QVL_QUOTE, &len);
    ratls_quote q;
    CHECK_EQ(ratls_quote_parse(raw, len, &q, NULL, 0), RATLS_OK);
    flip_region(pol, "header+body", raw, len, NOW, 0, SGX_QUOTE_SIGNED_SIZE, expect_header_or_body);
    flip_region(pol, "ISV signature", raw, len, NOW, q.isv_signature.off, 64, expect_quote_signature);
    flip_region(pol, "attestation key", raw, len, NOW, q.attestation_key.off, 64, expect_qe_report_data);
    flip_region(pol, "QE report", raw, len, NOW, q.qe_report_raw.off, SGX_REPORT_BODY_SIZE,
                expect_qe_report_signature);
    flip_region(pol, "QE report signature", raw, len, NOW, q.qe_report_signature.off, 64,
                expect_qe_report_signature);
    flip_region(pol, "qe_auth_data", raw, len, NOW, q.qe_auth_data.off, q.qe_auth_data.len,
                expect_qe_report_data);
    free(raw);
}


static void test_malformed(void) {
    size_t len;
    uint8_t *raw = read_testdata(DCAP_QVL_QUOTE, &len);
    char msg[RATLS_MSG_SIZE];
    size_t wrong = 0;
    for (size_t n = 0; n < len; n += test_sweep_step()) {
        /* A fresh exact-size copy, so ASan catches any read past the truncated end. */
        uint8_t *cut = malloc(n ? n : 1);
        memcpy(cut, raw, n);
        int rc = parse_reason(cut, n, msg);
        if (rc != RATLS_ERR_QUOTE_MALFORMED && wrong++ == 0)
            fprintf(stderr, "  truncation to %zu bytes gave %s\n", n, ratls_reason_name(rc));
        free(cut);
    }
    CHECK_EQ(wrong, 0);
    CHECK_EQ(parse_reason(raw, 100, msg), RATLS_ERR_QUOTE_MALFORMED);
    CHECK(strstr(msg, "ISV report body") != NULL);
    CHECK_EQ(parse_reason(raw, 3000, msg), RATLS_ERR_QUOTE_MALFORMED);
    CHECK(strstr(msg, "signature_data_len") != NULL);

    uint8_t *big = calloc(1, SGX_QUOTE_MAX_SIZE + 1);
    memcpy(big, raw, len);
    CHECK_EQ(parse_reason(big, len + 1, msg), RATLS_ERR_QUOTE_MALFORMED); /* trailing garbage */
    CHECK(strstr(msg, "trailing") != NULL);
    put_u32(big + 432, SGX_QUOTE_MAX_SIZE + 1 - 436);
    CHECK_EQ(parse_reason(big, SGX_QUOTE_MAX_SIZE + 1, msg), RATLS_ERR_QUOTE_MALFORMED); /* too large */
    CHECK(strstr(msg, "8192") != NULL);
    free(big);

    uint8_t *copy = malloc(len);
    ratls_quote q;
    CHECK_EQ(ratls_quote_parse(raw, len, &q, NULL, 0), RATLS_OK);
    struct {
        size_t off;
        int width;
        uint32_t value;
        const char *field;
    } cases[] = {
        {432, 4, 0xffffffffu, "signature_data_len"},
        {432, 4, (uint32_t)(len - 436 + 1), "signature_data_len"},
        {432, 4, (uint32_t)(len - 436 - 1), "trailing"},
        {q.qe_auth_data.off - 2, 2, 0xffff, "qe_auth_data"},
        {q.qe_auth_data.off - 2, 2, 33, "certification data"},
        {q.cert_data.off - 4, 4, (uint32_t)q.cert_data.len + 1, "certification data"},
        {q.cert_data.off - 4, 4, 0xffffffffu, "certification data"},
        {q.cert_data.off - 4, 4, (uint32_t)q.cert_data.len - 1, "left in the signature data"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        memcpy(copy, raw, len);
        if (cases[i].width == 2) put_u16(copy + cases[i].off, (uint16_t)cases[i].value);
        else put_u32(copy + cases[i].off, cases[i].value);
        CHECK_EQ(parse_reason(copy, len, msg), RATLS_ERR_QUOTE_MALFORMED);
        if (!strstr(msg, cases[i].field)) fprintf(stderr, "  case %zu: message \"%s\"\n", i, msg);
        CHECK(strstr(msg, cases[i].field) != NULL);
    }

    /* A v4 TDX header (tee_type 0x81) with the rest of an SGX quote after it: read as a TD report, the lengths no
     * longer add up; a v4 SGX header (tee_type 0) and unknown versions are unsupported. */
    memcpy(copy, raw, len);
    put_u16(copy, 4);
    put_u32(copy + 4, 0x81);
    CHECK_EQ(parse_reason(copy, len, msg), RATLS_ERR_QUOTE_MALFORMED);
    CHECK_EQ(parse_reason(copy, SGX_QUOTE_HEADER_SIZE, msg), RATLS_ERR_QUOTE_MALFORMED);
    CHECK(strstr(msg, "TD report") != NULL);
    put_u32(copy + 4, 0);
    CHECK_EQ(parse_reason(copy, len, msg), RATLS_ERR_QUOTE_UNSUPPORTED_VERSION);
    CHECK(strstr(msg, "version 4 with tee_type 0x0") != NULL);
    put_u16(copy, 6);
    CHECK_EQ(parse_reason(copy, len, msg), RATLS_ERR_QUOTE_UNSUPPORTED_VERSION);
    CHECK(strstr(msg, "found 6") != NULL);
    memcpy(copy, raw, len);
    put_u16(copy + 2, 3); /* ECDSA P-384 */
    CHECK_EQ(parse_reason(copy, len, msg), RATLS_ERR_QUOTE_UNSUPPORTED_KEY_TYPE);
    CHECK(strstr(msg, "found 3") != NULL);
    memcpy(copy, raw, len);
    copy[12] ^= 0x80;
    CHECK_EQ(parse_reason(copy, len, msg), RATLS_ERR_QE_VENDOR);
    CHECK(strstr(msg, "139a7233") != NULL);
    CHECK_EQ(ratls_quote_parse(NULL, 0, &q, msg, sizeof(msg)), RATLS_ERR_BAD_ARGUMENT);
    free(copy);
    free(raw);
}

/* A copy of `raw` whose certification data is replaced by (type, data, n). */
static uint8_t *with_cert_data(const uint8_t *raw, const ratls_quote *q, uint16_t type, const void *data, size_t n,
                               size_t *out_len) {
    size_t prefix = q->cert_data.off - 6;
    *out_len = prefix + 6 + n;
    uint8_t *out = malloc(*out_len);
    memcpy(out, raw, prefix);
    put_u32(out + 432, (uint32_t)(*out_len - 436));
    put_u16(out + prefix, type);
    put_u32(out + prefix + 2, (uint32_t)n);
    memcpy(out + prefix + 6, data, n);
    return out;
}

static int verify_with_cert_data(const ratls_policy *pol, const uint8_t *raw, const ratls_quote *q, uint16_t type,
                                 const char *text, size_t n, char *msg) {
    size_t len;
    uint8_t *quote = with_cert_data(raw, q, type, text, n, &len);
    int root;
    int rc = quote_parse_and_verify(pol, quote, len, NOW, &root, msg);
    free(quote);
    return rc;
}

static void test_pck_chain_text(const ratls_policy *pol) {
    size_t len;
    uint8_t *raw = read_testdata(DCAP_QVL_QUOTE, &len);
    ratls_quote q;
    CHECK_EQ(ratls_quote_parse(raw, len, &q, NULL, 0), RATLS_OK);
    const char *chain = (const char *)raw + q.cert_data.off;
    size_t chain_len = q.cert_data.len - 1; /* without the NUL */
    CHECK_EQ(chain[chain_len], '\0');
    /* The three PEM blocks, to reassemble in other orders. */
    const char *blocks[3];
    size_t block_len[3];
    const char *p = chain;
    for (int i = 0; i < 3; i++) {
        blocks[i] = strstr(p, "-----BEGIN CERTIFICATE-----");
        const char *end = strstr(blocks[i], "-----END CERTIFICATE-----") + strlen("-----END CERTIFICATE-----");
        block_len[i] = (size_t)(end - blocks[i]);
        p = end;
    }
    char msg[RATLS_MSG_SIZE];
    char *text = malloc(4 * q.cert_data.len + 64);

    CHECK_EQ(verify_with_cert_data(pol, raw, &q, 5, chain, chain_len, msg), RATLS_OK); /* no NUL */
    snprintf(text, 4 * q.cert_data.len + 64, "hello\n%s", chain);
    CHECK_EQ(verify_with_cert_data(pol, raw, &q, 5, text, strlen(text), msg), RATLS_ERR_PCK_CHAIN_MALFORMED);
    snprintf(text, 4 * q.cert_data.len + 64, "%s\nhello\n", chain);
    CHECK_EQ(verify_with_cert_data(pol, raw, &q, 5, text, strlen(text), msg), RATLS_ERR_PCK_CHAIN_MALFORMED);
    CHECK_EQ(verify_with_cert_data(pol, raw, &q, 5, chain, q.cert_data.len + 0, msg), RATLS_OK);
    memcpy(text, chain, chain_len);
    memcpy(text + chain_len, "\0\0", 2); /* two NULs: only one terminator is allowed */
    CHECK_EQ(verify_with_cert_data(pol, raw, &q, 5, text, chain_len + 2, msg), RATLS_ERR_PCK_CHAIN_MALFORMED);
    CHECK_EQ(verify_with_cert_data(pol, raw, &q, 5, "", 0, msg), RATLS_ERR_PCK_CHAIN_MALFORMED);
    CHECK_EQ(verify_with_cert_data(pol, raw, &q, 5, "garbage", 7, msg), RATLS_ERR_PCK_CHAIN_MALFORMED);
    /* two certificates (leaf, intermediate) */
    CHECK_EQ(verify_with_cert_data(pol, raw, &q, 5, chain, (size_t)(blocks[1] - chain) + block_len[1], msg),
             RATLS_ERR_PCK_CHAIN_MALFORMED);
    CHECK(strstr(msg, "found 2") != NULL);
    /* four certificates */
    snprintf(text, 4 * q.cert_data.len + 64, "%s\n%.*s\n", chain, (int)block_len[2], blocks[2]);
    CHECK_EQ(verify_with_cert_data(pol, raw, &q, 5, text, strlen(text), msg), RATLS_ERR_PCK_CHAIN_MALFORMED);
    /* a damaged base64 body */
    memcpy(text, chain, chain_len + 1);
    text[(blocks[1] - chain) + 100] = '*';
    CHECK_EQ(verify_with_cert_data(pol, raw, &q, 5, text, chain_len, msg), RATLS_ERR_PCK_CHAIN_MALFORMED);
    /* an unterminated block */
    CHECK_EQ(verify_with_cert_data(pol, raw, &q, 5, chain, (size_t)(blocks[2] - chain) + 40, msg),
             RATLS_ERR_PCK_CHAIN_MALFORMED);
    /* root first: the "leaf" is then the trusted root itself, whose key did not sign the QE report */
    snprintf(text, 4 * q.cert_data.len + 64, "%.*s\n%.*s\n%.*s\n", (int)block_len[2], blocks[2], (int)block_len[1],
             blocks[1], (int)block_len[0], blocks[0]);
    CHECK_EQ(verify_with_cert_data(pol, raw, &q, 5, text, strlen(text), msg), RATLS_ERR_QE_REPORT_SIGNATURE);
    /* leaf, root, intermediate: order of the issuers does not matter to chain building */
    snprintf(text, 4 * q.cert_data.len + 64, "%.*s\n%.*s\n%.*s\n", (int)block_len[0], blocks[0], (int)block_len[2],
             blocks[2], (int)block_len[1], blocks[1]);
    CHECK_EQ(verify_with_cert_data(pol, raw, &q, 5, text, strlen(text), msg), RATLS_OK);
    /* only the data type differs */
    CHECK_EQ(verify_with_cert_data(pol, raw, &q, 4, chain, chain_len, msg), RATLS_ERR_QUOTE_UNSUPPORTED_CERT_DATA);
    CHECK(strstr(msg, "found 4") != NULL);
    free(text);
    free(raw);
}

static void test_other_roots(const ratls_policy *intel) {
    char msg[RATLS_MSG_SIZE] = "";
    int root;
    size_t len;
    uint8_t *sample = read_testdata("sgx/intel-qvl-sample/quote.dat", &len);
    ratls_quote q;
    CHECK_EQ(ratls_quote_parse(sample, len, &q, msg, sizeof(msg)), RATLS_OK);
    CHECK_EQ(q.cert_data_type, 1);
    CHECK_EQ(ratls_quote_verify_signatures(intel, sample, len, &q, NOW, &root, msg, sizeof(msg)),
             RATLS_ERR_QUOTE_UNSUPPORTED_CERT_DATA);
    CHECK(strstr(msg, "found 1") != NULL);
    free(sample);

    /* A policy trusting only Intel's QVL *test* root: the real chain does not verify to it. */
    size_t der_len;
    uint8_t *test_root = pem_file_to_der("sgx/intel-qvl-sample/trustedRootCaCert.pem", &der_len);
    ratls_policy *pol = ratls_policy_new();
    CHECK_EQ(ratls_policy_set_trusted_root(pol, test_root, der_len, msg, sizeof(msg)), RATLS_OK);
    uint8_t *raw = read_testdata(DCAP_QVL_QUOTE, &len);
    root = -1;
    CHECK_EQ(quote_parse_and_verify(pol, raw, len, NOW, &root, msg), RATLS_ERR_PCK_CHAIN_UNTRUSTED);
    CHECK(strstr(msg, "Intel SGX Root CA") != NULL);
    CHECK_EQ(root, RATLS_ROOT_NONE);
    /* A real chain is never "simulated", whatever the sim settings. */
    CHECK_EQ(ratls_policy_set_sim_root(pol, test_root, der_len, msg, sizeof(msg)), RATLS_OK);
    ratls_policy_set_allow_simulated(pol, 1);
    CHECK_EQ(quote_parse_and_verify(pol, raw, len, NOW, &root, msg), RATLS_ERR_PCK_CHAIN_UNTRUSTED);
    ratls_policy_free(pol);
    free(test_root);
    free(raw);
}

/* --- a simulation-style chain and quote built here, as the sim provider builds its own --- */

typedef struct {
    EVP_PKEY *root_key, *ca_key, *pck_key;
    X509 *root, *ca, *pck;
} sim_chain;

static X509 *make_cert(const char *cn, EVP_PKEY *key, X509 *issuer, EVP_PKEY *issuer_key, int is_ca) {
    X509 *cert = X509_new();
    X509_set_version(cert, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(cert), 7);
    ASN1_TIME_set(X509_getm_notBefore(cert), 1577836800); /* 2020-01-01 */
    ASN1_TIME_set(X509_getm_notAfter(cert), 2208988800);  /* 2040-01-01 */
    X509_NAME *name = X509_get_subject_name(cert);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(cert, issuer ? X509_get_subject_name(issuer) : name);
    X509_set_pubkey(cert, key);
    X509V3_CTX ctx;
    X509V3_set_ctx(&ctx, issuer ? issuer : cert, cert, NULL, NULL, 0);
    X509_EXTENSION *bc =
        X509V3_EXT_conf_nid(NULL, &ctx, NID_basic_constraints, is_ca ? "critical,CA:TRUE" : "CA:FALSE");
    X509_EXTENSION *ku = X509V3_EXT_conf_nid(NULL, &ctx, NID_key_usage,
                                             is_ca ? "critical,keyCertSign,cRLSign" : "critical,digitalSignature");
    X509_add_ext(cert, bc, -1);
    X509_add_ext(cert, ku, -1);
    X509_EXTENSION_free(bc);
    X509_EXTENSION_free(ku);
    X509_sign(cert, issuer_key, EVP_sha256());
    return cert;
}

static void sim_chain_make(sim_chain *c, const char *root_cn) {
    c->root_key = EVP_EC_gen("P-256");
    c->ca_key = EVP_EC_gen("P-256");
    c->pck_key = EVP_EC_gen("P-256");
    c->root = make_cert(root_cn, c->root_key, NULL, c->root_key, 1);
    c->ca = make_cert("RATLS Simulated SGX PCK Platform CA", c->ca_key, c->root, c->root_key, 1);
    c->pck = make_cert("RATLS Simulated SGX PCK Certificate", c->pck_key, c->ca, c->ca_key, 0);
}

static void sim_chain_free(sim_chain *c) {
    X509_free(c->root);
    X509_free(c->ca);
    X509_free(c->pck);
    EVP_PKEY_free(c->root_key);
    EVP_PKEY_free(c->ca_key);
    EVP_PKEY_free(c->pck_key);
}

static uint8_t *root_der(const sim_chain *c, size_t *len) {
    uint8_t *der = NULL;
    *len = (size_t)i2d_X509(c->root, &der);
    return der;
}

/* A DCAP v3 quote over `body`, with a fresh attestation key certified by the chain's PCK key. */
static uint8_t *sim_quote(const sim_chain *c, const ratls_report_body *body, size_t *len) {
    static const uint8_t auth_data[32] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
                                          16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31};
    EVP_PKEY *att_key = EVP_EC_gen("P-256");
    uint8_t att_raw[64], binding_input[96], isv_sig[64], qe_sig[64];
    ratls_p256_to_raw(att_key, att_raw);
    memcpy(binding_input, att_raw, 64);
    memcpy(binding_input + 64, auth_data, 32);
    ratls_report_body qe;
    memset(&qe, 0, sizeof(qe));
    qe.flags = RATLS_SGX_FLAGS_INIT | RATLS_SGX_FLAGS_MODE64BIT;
    ratls_sha256(binding_input, sizeof(binding_input), qe.report_data);

    BIO *pem = BIO_new(BIO_s_mem());
    PEM_write_bio_X509(pem, c->pck);
    PEM_write_bio_X509(pem, c->ca);
    PEM_write_bio_X509(pem, c->root);
    BIO_write(pem, "", 1); /* the NUL terminator AESM writes */
    char *pem_data;
    long pem_len = BIO_get_mem_data(pem, &pem_data);

    cbb b;
    cbb_init(&b);
    cbb_add_u16le(&b, 3);
    cbb_add_u16le(&b, 2);
    cbb_add_u32le(&b, 0);
    cbb_add_u16le(&b, 1);
    cbb_add_u16le(&b, 1);
    cbb_add(&b, ratls_intel_qe_vendor_id, 16);
    cbb_add_zeros(&b, 20);
    ratls_report_body_encode(&b, body);
    ratls_ecdsa_sign_raw(att_key, b.data, SGX_QUOTE_SIGNED_SIZE, isv_sig, 32);
    cbb sig, auth, chain;
    cbb_add_u32le_prefixed(&b, &sig);
    cbb_add(&sig, isv_sig, 64);
    cbb_add(&sig, att_raw, 64);
    size_t qe_off = sig.len;
    ratls_report_body_encode(&sig, &qe);
    ratls_ecdsa_sign_raw(c->pck_key, sig.data + qe_off, SGX_REPORT_BODY_SIZE, qe_sig, 32);
    cbb_add(&sig, qe_sig, 64);
    cbb_add_u16le_prefixed(&sig, &auth);
    cbb_add(&auth, auth_data, 32);
    cbb_close(&auth);
    cbb_add_u16le(&sig, 5);
    cbb_add_u32le_prefixed(&sig, &chain);
    cbb_add(&chain, pem_data, (size_t)pem_len);
    cbb_close(&chain);
    cbb_close(&sig);
    BIO_free(pem);
    EVP_PKEY_free(att_key);
    return cbb_finish(&b, len);
}

static ratls_report_body sample_body(void) {
    ratls_report_body body;
    memset(&body, 0, sizeof(body));
    body.flags = RATLS_SGX_FLAGS_INIT | RATLS_SGX_FLAGS_MODE64BIT;
    body.xfrm = 3;
    memset(body.mrenclave, 0x11, 32);
    memset(body.mrsigner, 0x22, 32);
    body.isv_prod_id = 7;
    body.isv_svn = 3;
    memcpy(body.report_data, "sim", 3);
    return body;
}

/* Field-wise equality, through the encoding (struct padding holds no defined bytes). */
static int same_report_body(const ratls_report_body *a, const ratls_report_body *b) {
    cbb ea, eb;
    cbb_init(&ea);
    cbb_init(&eb);
    int same = ratls_report_body_encode(&ea, a) && ratls_report_body_encode(&eb, b) && ea.len == eb.len &&
               memcmp(ea.data, eb.data, ea.len) == 0;
    cbb_cleanup(&ea);
    cbb_cleanup(&eb);
    return same;
}

static void test_simulated_chain(void) {
    sim_chain sim, other;
    sim_chain_make(&sim, "RATLS Simulated SGX Root CA");
    sim_chain_make(&other, "RATLS Simulated SGX Root CA");
    ratls_report_body body = sample_body();
    size_t len, der_len, other_der_len;
    uint8_t *quote = sim_quote(&sim, &body, &len);
    uint8_t *der = root_der(&sim, &der_len), *other_der = root_der(&other, &other_der_len);
    char msg[RATLS_MSG_SIZE] = "";
    int root = -1;

    ratls_quote q;
    CHECK_EQ(ratls_quote_parse(quote, len, &q, msg, sizeof(msg)), RATLS_OK);
    CHECK(same_report_body(&q.body, &body));

    ratls_policy *pol = ratls_policy_new();
    /* No sim root named, simulated evidence not allowed: the chain's root name explains the denial. */
    CHECK_EQ(quote_parse_and_verify(pol, quote, len, NOW, &root, msg), RATLS_ERR_SIMULATED_DENIED);
    CHECK(strstr(msg, "simulated provider") != NULL && strstr(msg, "RATLS Simulated SGX Root CA") != NULL);
    /* Allowed, but its root is not named: the name proves nothing, the chain is untrusted. */
    ratls_policy_set_allow_simulated(pol, 1);
    CHECK_EQ(quote_parse_and_verify(pol, quote, len, NOW, &root, msg), RATLS_ERR_PCK_CHAIN_UNTRUSTED);
    CHECK(strstr(msg, "RATLS Simulated SGX Root CA") != NULL);
    /* Its root named but simulated evidence not allowed. */
    ratls_policy_set_allow_simulated(pol, 0);
    CHECK_EQ(ratls_policy_set_sim_root(pol, der, der_len, msg, sizeof(msg)), RATLS_OK);
    CHECK_EQ(quote_parse_and_verify(pol, quote, len, NOW, &root, msg), RATLS_ERR_SIMULATED_DENIED);
    CHECK(strstr(msg, "does not allow") != NULL);
    /* Named and allowed. */
    ratls_policy_set_allow_simulated(pol, 1);
    root = -1;
    CHECK_EQ(quote_parse_and_verify(pol, quote, len, NOW, &root, msg), RATLS_OK);
    CHECK_EQ(root, RATLS_ROOT_SIMULATED);
    /* A different simulation root with the same name: untrusted when allowed, denied when not. */
    CHECK_EQ(ratls_policy_set_sim_root(pol, other_der, other_der_len, msg, sizeof(msg)), RATLS_OK);
    CHECK_EQ(quote_parse_and_verify(pol, quote, len, NOW, &root, msg), RATLS_ERR_PCK_CHAIN_UNTRUSTED);
    ratls_policy_set_allow_simulated(pol, 0);
    CHECK_EQ(quote_parse_and_verify(pol, quote, len, NOW, &root, msg), RATLS_ERR_SIMULATED_DENIED);
    /* The sim root named as the *trusted* root is still a simulation root: denied unless simulated evidence is
     * allowed, and then reported as simulated, never as real SGX. */
    CHECK_EQ(ratls_policy_set_trusted_root(pol, der, der_len, msg, sizeof(msg)), RATLS_OK);
    CHECK_EQ(quote_parse_and_verify(pol, quote, len, NOW, &root, msg), RATLS_ERR_SIMULATED_DENIED);
    CHECK(strstr(msg, "trusted_root") != NULL && strstr(msg, "simulation root") != NULL);
    ratls_policy_set_allow_simulated(pol, 1);
    root = -1;
    CHECK_EQ(quote_parse_and_verify(pol, quote, len, NOW, &root, msg), RATLS_OK);
    CHECK_EQ(root, RATLS_ROOT_SIMULATED);
    ratls_policy_free(pol);

    /* A non-simulated name on an unknown root is plainly untrusted. */
    sim_chain unknown;
    sim_chain_make(&unknown, "Some Other Root CA");
    uint8_t *unknown_quote = sim_quote(&unknown, &body, &len);
    pol = ratls_policy_new();
    CHECK_EQ(quote_parse_and_verify(pol, unknown_quote, len, NOW, &root, msg),
             RATLS_ERR_PCK_CHAIN_UNTRUSTED);
    CHECK(strstr(msg, "Some Other Root CA") != NULL);
    ratls_policy_free(pol);
    free(unknown_quote);
    sim_chain_free(&unknown);

    ratls_free(quote);
    OPENSSL_free(der);
    OPENSSL_free(other_der);
    sim_chain_free(&sim);
    sim_chain_free(&other);
}

static void test_policy_object(void) {
    ratls_policy *p = ratls_policy_new();
    CHECK(p != NULL);
    CHECK_EQ(p->mrenclaves.n, 0);
    CHECK_EQ(p->mrsigners.n, 0);
    CHECK_EQ(p->mrtds.n, 0);
    CHECK_EQ(p->tee_mask, RATLS_TEE_SGX);
    CHECK_EQ(p->isv_prod_id, -1);
    CHECK_EQ(p->min_isv_svn, -1);
    CHECK_EQ(p->allow_debug, 0);
    CHECK_EQ(p->allow_simulated, 0);
    CHECK_EQ(p->tcb_mask, 1u << RATLS_TCB_UP_TO_DATE);
    CHECK(p->trusted_store != NULL && p->sim_store == NULL);

    uint8_t m[32];
    for (int i = 0; i < 100; i++) {
        memset(m, i, 32);
        CHECK_EQ(ratls_policy_add_mrenclave(p, m), RATLS_OK);
        memset(m, 200 - i, 32);
        CHECK_EQ(ratls_policy_add_mrsigner(p, m), RATLS_OK);
    }
    CHECK_EQ(p->mrenclaves.n, 100);
    CHECK_EQ(p->mrsigners.n, 100);
    CHECK(p->mrenclaves.values[57 * 32] == 57 && p->mrenclaves.values[57 * 32 + 31] == 57 &&
          p->mrsigners.values[99 * 32 + 5] == 101);
    CHECK_EQ(ratls_policy_add_mrenclave(p, NULL), RATLS_ERR_BAD_ARGUMENT);
    ratls_policy_set_isv_prod_id(p, 5);
    ratls_policy_set_min_isv_svn(p, 2);
    ratls_policy_set_allow_debug(p, 1);
    ratls_policy_set_allow_simulated(p, 9);
    ratls_policy_set_allowed_tcb_mask(p, 0x3);
    CHECK(p->isv_prod_id == 5 && p->min_isv_svn == 2 && p->allow_debug == 1 && p->allow_simulated == 1 &&
          p->tcb_mask == 3);

    /* Bad roots leave the stores as they were. */
    char msg[RATLS_MSG_SIZE];
    X509_STORE *before = p->trusted_store;
    size_t len;
    uint8_t *quote = read_testdata(DCAP_QVL_QUOTE, &len);
    uint8_t garbage[10] = {0x30, 0x08, 1, 2, 3};
    CHECK_EQ(ratls_policy_set_trusted_root(p, garbage, sizeof(garbage), msg, sizeof(msg)), RATLS_ERR_POLICY);
    CHECK_EQ(ratls_policy_set_trusted_root(p, NULL, 0, msg, sizeof(msg)), RATLS_ERR_POLICY);
    size_t der_len;
    uint8_t *root = pem_file_to_der("sgx/intel_sgx_root_ca.pem", &der_len);
    uint8_t *longer = malloc(der_len + 1);
    memcpy(longer, root, der_len);
    longer[der_len] = 0;
    CHECK_EQ(ratls_policy_set_trusted_root(p, longer, der_len + 1, msg, sizeof(msg)), RATLS_ERR_POLICY);
    CHECK(strstr(msg, "trailing") != NULL);
    size_t pck_len;
    uint8_t *pck = pem_file_to_der("sgx/intel-qvl-sample/pckCert.pem", &pck_len);
    CHECK_EQ(ratls_policy_set_sim_root(p, pck, pck_len, msg, sizeof(msg)), RATLS_ERR_POLICY);
    CHECK(strstr(msg, "self-signed") != NULL);
    CHECK(p->trusted_store == before && p->sim_store == NULL);
    CHECK_EQ(ratls_policy_set_trusted_root(p, root, der_len, msg, sizeof(msg)), RATLS_OK);
    CHECK(p->trusted_store != before);
    int r;
    CHECK_EQ(quote_parse_and_verify(p, quote, len, NOW, &r, msg), RATLS_OK);
    ratls_policy_free(p);
    ratls_policy_free(NULL);
    free(longer);
    free(root);
    free(pck);
    free(quote);
}

static const char *ENV_VARS[] = {"RA_TLS_MRENCLAVE",
                                 "RA_TLS_MRSIGNER",
                                 "RA_TLS_ISV_PROD_ID",
                                 "RA_TLS_ISV_SVN",
                                 "RA_TLS_ALLOW_OUTDATED_TCB_INSECURE",
                                 "RA_TLS_ALLOW_HW_CONFIG_NEEDED",
                                 "RA_TLS_ALLOW_SW_HARDENING_NEEDED",
                                 "RA_TLS_ALLOW_DEBUG_ENCLAVE_INSECURE"};

static void set_env(const char *mrenclave, const char *mrsigner, const char *prod, const char *svn) {
    for (size_t i = 0; i < sizeof(ENV_VARS) / sizeof(ENV_VARS[0]); i++) unsetenv(ENV_VARS[i]);
    const char *values[] = {mrenclave, mrsigner, prod, svn};
    for (int i = 0; i < 4; i++)
        if (values[i]) setenv(ENV_VARS[i], values[i], 1);
}

static int env_read_unchanged_on_error(char *msg) {
    ratls_env_policy e;
    memset(&e, 0xa5, sizeof(e));
    int rc = ratls_env_policy_read(&e, msg, RATLS_MSG_SIZE);
    const uint8_t *bytes = (const uint8_t *)&e;
    int unchanged = 1;
    for (size_t i = 0; i < sizeof(e); i++) unchanged &= bytes[i] == 0xa5;
    if (rc != RATLS_OK) CHECK(unchanged);
    return rc;
}

static void test_env_policy(void) {
    const char *hex_a = "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb";
    const char *hex_b = "815F42F11CF64430C30BAB7816BA596A1DA0130C3B028B673133A66CF9A3E0E6";
    char msg[RATLS_MSG_SIZE];
    ratls_env_policy e;

    set_env(NULL, NULL, NULL, NULL);
    CHECK_EQ(env_read_unchanged_on_error(msg), RATLS_ERR_POLICY);
    CHECK(strcmp(msg, "A required environment variable RA_TLS_MRENCLAVE is not set") == 0);
    const char *missing[] = {"RA_TLS_MRENCLAVE", "RA_TLS_MRSIGNER", "RA_TLS_ISV_PROD_ID", "RA_TLS_ISV_SVN"};
    for (int i = 0; i < 4; i++) {
        set_env("any", "any", "any", "any");
        unsetenv(missing[i]);
        CHECK_EQ(env_read_unchanged_on_error(msg), RATLS_ERR_POLICY);
        CHECK(strstr(msg, missing[i]) != NULL && strstr(msg, "is not set") != NULL);
    }

    set_env(hex_a, hex_b, "65535", "0");
    CHECK_EQ(ratls_env_policy_read(&e, msg, sizeof(msg)), RATLS_OK);
    CHECK(!e.mrenclave_any && !e.mrsigner_any && !e.isv_prod_id_any && !e.isv_svn_any);
    check_hex(e.mrenclave, 32, hex_a);
    check_hex(e.mrsigner, 32, "815f42f11cf64430c30bab7816ba596a1da0130c3b028b673133a66cf9a3e0e6");
    CHECK_EQ(e.isv_prod_id, 65535);
    CHECK_EQ(e.isv_svn, 0);
    CHECK(!e.allow_outdated_tcb && !e.allow_hw_config_needed && !e.allow_sw_hardening_needed &&
          !e.allow_debug_enclave);
    CHECK_EQ(ratls_env_policy_tcb_mask(&e), 1u << RATLS_TCB_UP_TO_DATE);

    set_env("any", "any", "any", "12");
    CHECK_EQ(ratls_env_policy_read(&e, msg, sizeof(msg)), RATLS_OK);
    CHECK(e.mrenclave_any && e.mrsigner_any && e.isv_prod_id_any && !e.isv_svn_any && e.isv_svn == 12);

    struct {
        const char *mrenclave, *mrsigner, *prod, *svn, *named;
    } bad[] = {
        {"33d8", "any", "0", "0", "RA_TLS_MRENCLAVE"},
        {"ANY", "any", "0", "0", "RA_TLS_MRENCLAVE"},
        {"", "any", "0", "0", "RA_TLS_MRENCLAVE"},
        {"any", "x15f42f11cf64430c30bab7816ba596a1da0130c3b028b673133a66cf9a3e0e6", "0", "0", "RA_TLS_MRSIGNER"},
        {"any", "any", "65536", "0", "RA_TLS_ISV_PROD_ID"},
        {"any", "any", "-1", "0", "RA_TLS_ISV_PROD_ID"},
        {"any", "any", "", "0", "RA_TLS_ISV_PROD_ID"},
        {"any", "any", "1 ", "0", "RA_TLS_ISV_PROD_ID"},
        {"any", "any", "0", "12a", "RA_TLS_ISV_SVN"},
        {"any", "any", "0", "99999999999999999999999", "RA_TLS_ISV_SVN"},
        {"any", "any", "0", "0x10", "RA_TLS_ISV_SVN"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        set_env(bad[i].mrenclave, bad[i].mrsigner, bad[i].prod, bad[i].svn);
        CHECK_EQ(env_read_unchanged_on_error(msg), RATLS_ERR_POLICY);
        if (!strstr(msg, bad[i].named)) fprintf(stderr, "  bad env case %zu: \"%s\"\n", i, msg);
        CHECK(strstr(msg, bad[i].named) != NULL);
    }

    /* ALLOW flags: exactly "1" */
    const char *off_values[] = {"0", "true", "yes", "01", " 1", "1 ", ""};
    for (size_t i = 0; i < sizeof(off_values) / sizeof(off_values[0]); i++) {
        set_env("any", "any", "any", "any");
        for (int v = 4; v < 8; v++) setenv(ENV_VARS[v], off_values[i], 1);
        CHECK_EQ(ratls_env_policy_read(&e, msg, sizeof(msg)), RATLS_OK);
        CHECK(!e.allow_outdated_tcb && !e.allow_hw_config_needed && !e.allow_sw_hardening_needed &&
              !e.allow_debug_enclave);
    }
    int *flags[] = {&e.allow_outdated_tcb, &e.allow_hw_config_needed, &e.allow_sw_hardening_needed,
                    &e.allow_debug_enclave};
    for (int v = 0; v < 4; v++) {
        set_env("any", "any", "any", "any");
        setenv(ENV_VARS[4 + v], "1", 1);
        CHECK_EQ(ratls_env_policy_read(&e, msg, sizeof(msg)), RATLS_OK);
        for (int w = 0; w < 4; w++) CHECK_EQ(*flags[w], v == w);
    }

    /* The acceptance table of ratls-reference.md §2.4 step 3, for every combination of the three flags. */
    for (int combo = 0; combo < 8; combo++) {
        ratls_env_policy env;
        memset(&env, 0, sizeof(env));
        int old = combo & 1, hw = (combo >> 1) & 1, sw = (combo >> 2) & 1;
        env.allow_outdated_tcb = old;
        env.allow_hw_config_needed = hw;
        env.allow_sw_hardening_needed = sw;
        env.allow_debug_enclave = 1; /* irrelevant to TCB */
        uint32_t mask = ratls_env_policy_tcb_mask(&env);
        CHECK_EQ((mask >> RATLS_TCB_UNKNOWN) & 1, 0);
        CHECK_EQ((mask >> RATLS_TCB_UP_TO_DATE) & 1, 1);
        CHECK_EQ((mask >> RATLS_TCB_CONFIGURATION_NEEDED) & 1, hw);
        CHECK_EQ((mask >> RATLS_TCB_OUT_OF_DATE) & 1, old);
        CHECK_EQ((mask >> RATLS_TCB_OUT_OF_DATE_CONFIGURATION_NEEDED) & 1, old && hw);
        CHECK_EQ((mask >> RATLS_TCB_SW_HARDENING_NEEDED) & 1, sw);
        CHECK_EQ((mask >> RATLS_TCB_CONFIGURATION_AND_SW_HARDENING_NEEDED) & 1, hw && sw);
        CHECK_EQ((mask >> RATLS_TCB_REVOKED) & 1, 0);
        CHECK_EQ(mask >> (RATLS_TCB_REVOKED + 1), 0);
    }
    set_env(NULL, NULL, NULL, NULL);
}

static int compare_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

/* Median parse+verify_signatures time of a sim quote and of the real dcap-qvl quote. */
static int bench(void) {
    enum { RUNS = 1001 };
    static double times[RUNS];
    sim_chain sim;
    sim_chain_make(&sim, "RATLS Simulated SGX Root CA");
    ratls_report_body body = sample_body();
    size_t sim_len, der_len, real_len;
    uint8_t *sim_q = sim_quote(&sim, &body, &sim_len), *der = root_der(&sim, &der_len);
    uint8_t *real_q = read_testdata(DCAP_QVL_QUOTE, &real_len);
    ratls_policy *pol = ratls_policy_new();
    ratls_policy_set_sim_root(pol, der, der_len, NULL, 0);
    ratls_policy_set_allow_simulated(pol, 1);
    const struct {
        const char *name;
        const uint8_t *q;
        size_t len;
    } cases[] = {{"sim quote", sim_q, sim_len}, {"dcap-qvl quote", real_q, real_len}};
    int rc = 0;
    for (int c = 0; c < 2; c++) {
        for (int i = 0; i < RUNS; i++) {
            int root;
            double t0 = now_us();
            rc |= quote_parse_and_verify(pol, cases[c].q, cases[c].len, NOW, &root, NULL);
            times[i] = now_us() - t0;
        }
        qsort(times, RUNS, sizeof(double), compare_double);
        printf("%s: parse+verify_signatures median %.0f us, p90 %.0f us (%d runs)\n", cases[c].name,
               times[RUNS / 2], times[RUNS * 9 / 10], RUNS);
    }
    ratls_policy_free(pol);
    ratls_free(sim_q);
    OPENSSL_free(der);
    free(real_q);
    sim_chain_free(&sim);
    return rc != 0;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--bench") == 0) return bench();
    ratls_policy *intel = ratls_policy_new();
    test_names_and_root_pem();
    test_hex_and_hash();
    test_ecdsa_helpers();
    test_report_body_roundtrip();
    test_dcap_qvl_quote(intel);
    test_gramine_quotes(intel);
    test_malformed();
    test_pck_chain_text(intel);
    test_other_roots(intel);
    test_simulated_chain();
    test_policy_object();
    test_env_policy();
    test_bit_flips(intel);
    ratls_policy_free(intel);
    return test_summary();
}
