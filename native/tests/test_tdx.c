/* TDX quotes v4 and v5: parsing of the real go-tdx-guest quotes (tests/data/tdx, values cross-checked with
 * dcap-qvl's parser), their signature chain to Intel's root, every single-bit flip in the signed regions refused
 * with its region's reason, malformed lengths, and the TDX policy (TEE type, MRTD, RTMRs, MRSEAM, TEE_TCB_SVN). */
#include <string.h>

#include "quote_testutil.h"

/* Inside the PCK certificates' validity (v4 leaf 2022-09-20..2029-09-20, v5 leaf 2026-01-27..2033-01-27). */
#define V4_NOW 1688173200 /* 2023-07-01T01:00:00Z, the time go-tdx-guest's own tests use */
#define V5_NOW 1770080400 /* 2026-02-03T01:00:00Z, likewise */

static const char *V4_QUOTE = "tests/data/tdx/tdx_prod_quote_SPR_E4.dat";
static const char *V5_QUOTE = "tests/data/tdx/quote_v5_sample.dat";

/* $RATLS_SOURCE_DIR/rel (the repository's own test data), malloc'ed; aborts if missing. */
static uint8_t *read_repo_file(const char *rel, size_t *len) {
    char path[4096];
    const char *dir = getenv("RATLS_SOURCE_DIR");
    snprintf(path, sizeof path, "%s/%s", dir ? dir : ".", rel);
    uint8_t *buf = read_file(path, len);
    if (!buf) {
        fprintf(stderr, "cannot read test data %s\n", path);
        exit(2);
    }
    return buf;
}

/* go-tdx-guest appended these bytes to its v4 quote, after the end signature_data_len gives it; no signature covers
 * them and the parser refuses trailing bytes, so the tests use the quote without them (tests/data/tdx/README.md). */
static const char V4_TRAILER[] = "\nextra bytes(only for testing purpose)\n";

/* A test quote: the file, less go-tdx-guest's trailer where it has one. */
static uint8_t *read_quote(const char *rel, size_t *len) {
    uint8_t *raw = read_repo_file(rel, len);
    size_t n = sizeof V4_TRAILER - 1;
    if (*len > n && memcmp(raw + *len - n, V4_TRAILER, n) == 0) *len -= n;
    return raw;
}

static void check_hex(const uint8_t *data, size_t len, const char *expected) {
    char hex[2 * 64 + 1];
    ratls_hex(data, len, hex);
    if (strcmp(hex, expected) != 0) fprintf(stderr, "  got %s\n  expected %s\n", hex, expected);
    CHECK(strcmp(hex, expected) == 0);
}

static void test_v4(const ratls_policy *pol) {
    size_t len, file_len;
    uint8_t *raw = read_repo_file(V4_QUOTE, &file_len);
    ratls_quote q;
    char msg[RATLS_MSG_SIZE] = "";
    CHECK_EQ(ratls_quote_parse(raw, file_len, &q, msg, sizeof msg), RATLS_ERR_QUOTE_MALFORMED);
    CHECK(strstr(msg, "39 trailing bytes") != NULL);
    free(raw);
    raw = read_quote(V4_QUOTE, &len);
    CHECK_EQ(len, file_len - 39);
    CHECK_EQ(ratls_quote_parse(raw, len, &q, msg, sizeof msg), RATLS_OK);
    CHECK_EQ(q.version, 4);
    CHECK_EQ(q.tee_type, 0x81);
    CHECK_EQ(q.tee, RATLS_TEE_TDX);
    CHECK_EQ(q.body_type, RATLS_BODY_TD_REPORT_10);
    check_hex(q.td.tee_tcb_svn, 16, "03000400000000000000000000000000");
    check_hex(q.td.mrseam, 48,
              "2fd279c16164a93dd5bf373d834328d46008c2b693af9ebb865b08b2ced320c9a89b4869a9fab60fbe9d0c5a5363c656");
    check_hex(q.td.mrtd, 48,
              "6363b8043668a3ad953278e10389574d326c6749fb78aa810ecd9336923db86f22fc00b8dcd404bc10d5e119d7215cbb");
    check_hex(q.td.rtmr[0], 48,
              "2927da70461cd63266f43230cc1849c03ef25ebe490062a801d8fcc80af42976823adf08f833c1e50b51779c6593f32a");
    check_hex(q.td.rtmr[2], 48,
              "8652f0caaba7e215ea442dc36a4499d8fec3362f3a0b2ca151cbe4b3e6466fe59c7368b3c2287fc7c3bf5c924eb4424e");
    check_hex(q.td.report_data, 64,
              "6c62dec1b8191749a31dab490be532a35944dea47caef1f980863993d9899545eb7406a38d1eed313b987a467dacead6"
              "f0c87a6d766c66f6f29f8acb281f1113");
    CHECK_EQ(q.td.td_attributes, 0x40000000);
    CHECK_EQ(q.td.xfam, 0x61ae7);
    CHECK_EQ(q.td.seam_attributes, 0);
    CHECK(ratls_quote_report_data(&q) == q.td.report_data);
    CHECK_EQ(q.signed_region.len, SGX_QUOTE_HEADER_SIZE + TD_REPORT_10_SIZE);
    CHECK_EQ(q.isv_signature.off, 636);
    CHECK_EQ(q.attestation_key.off, 700);
    CHECK_EQ(q.qe_report_raw.off, 770); /* after the type-6 header (2 + 4 bytes) */
    CHECK_EQ(q.cert_data_type, 5);
    CHECK_EQ(q.cert_data.off + q.cert_data.len, len);
    int root = -1;
    int rc = ratls_quote_verify_signatures(pol, raw, len, &q, V4_NOW, &root, msg, sizeof msg);
    if (rc) fprintf(stderr, "  v4: %s: %s\n", ratls_reason_name(rc), msg);
    CHECK_EQ(rc, RATLS_OK);
    CHECK_EQ(root, RATLS_ROOT_TRUSTED);
    /* Before the PCK leaf's notBefore (2022-09-20). */
    CHECK_EQ(ratls_quote_verify_signatures(pol, raw, len, &q, 1650000000, &root, msg, sizeof msg),
             RATLS_ERR_PCK_CHAIN_UNTRUSTED);
    free(raw);
}

static void test_v5(const ratls_policy *pol) {
    size_t len;
    uint8_t *raw = read_quote(V5_QUOTE, &len);
    ratls_quote q;
    char msg[RATLS_MSG_SIZE] = "";
    CHECK_EQ(ratls_quote_parse(raw, len, &q, msg, sizeof msg), RATLS_OK);
    CHECK_EQ(q.version, 5);
    CHECK_EQ(q.tee, RATLS_TEE_TDX);
    CHECK_EQ(q.body_type, RATLS_BODY_TD_REPORT_15);
    CHECK_EQ(q.signed_region.len, SGX_QUOTE_HEADER_SIZE + 2 + 4 + TD_REPORT_15_SIZE);
    check_hex(q.td.tee_tcb_svn, 16, "0b010400000000000000000000000000");
    check_hex(q.td.tee_tcb_svn2, 16, "0d010400000000000000000000000000");
    check_hex(q.td.mrtd, 48,
              "7348651a34b2d2d3462822e3a750ec6110125f36757c78480bbfc69cc0d21fb001a1ced3ee19747dda8f750c3bc8f876");
    check_hex(q.td.rtmr[1], 48,
              "463acaace1b6e97c76e92e41fe312aa66f3fd4dad60ec7acf169859db0343e3d1e591646795cdc80fbc0ca5f7041d253");
    check_hex(q.td.mrseam, 48,
              "7bf063280e94fb051f5dd7b1fc59ce9aac42bb961df8d44b709c9b0ff87a7b4df648657ba6d1189589feab1d5a3c9a9d");
    check_hex(q.td.report_data, 64,
              "945eaacf5abc1f719d8666a942fda03d1edcb4490277396093dc5a5289ab9f1e094aed63060cd4a4933a4dd537ed1255"
              "c9c79ecb3ed82cd1b486233e31c25c3a");
    uint8_t zero[48] = {0};
    CHECK(memcmp(q.td.mrservicetd, zero, 48) == 0);
    CHECK_EQ(q.td.td_attributes, 0x10000000);
    CHECK_EQ(q.td.xfam, 0x602e7);
    int root = -1;
    int rc = ratls_quote_verify_signatures(pol, raw, len, &q, V5_NOW, &root, msg, sizeof msg);
    if (rc) fprintf(stderr, "  v5: %s: %s\n", ratls_reason_name(rc), msg);
    CHECK_EQ(rc, RATLS_OK);
    CHECK_EQ(root, RATLS_ROOT_TRUSTED);
    free(raw);
}

/* The TD report codec: decode then encode gives back the bytes, for both sizes; wrong sizes are refused. */
static void test_td_report_roundtrip(void) {
    const char *files[2] = {V4_QUOTE, V5_QUOTE};
    const size_t offs[2] = {SGX_QUOTE_HEADER_SIZE, SGX_QUOTE_HEADER_SIZE + 6};
    const size_t sizes[2] = {TD_REPORT_10_SIZE, TD_REPORT_15_SIZE};
    for (int i = 0; i < 2; i++) {
        size_t len;
        uint8_t *raw = read_quote(files[i], &len);
        cbs s;
        ratls_td_report td;
        cbs_init(&s, raw + offs[i], sizes[i]);
        CHECK(ratls_td_report_decode(&s, sizes[i], &td));
        CHECK_EQ(cbs_len(&s), 0);
        cbb b;
        cbb_init(&b);
        CHECK(ratls_td_report_encode(&b, sizes[i], &td));
        size_t out_len = 0;
        uint8_t *out = cbb_finish(&b, &out_len);
        CHECK_EQ(out_len, sizes[i]);
        CHECK(out && memcmp(out, raw + offs[i], sizes[i]) == 0);
        ratls_free(out);
        cbs_init(&s, raw + offs[i], sizes[i] - 1);
        CHECK(!ratls_td_report_decode(&s, sizes[i], &td));
        CHECK_EQ(cbs_len(&s), sizes[i] - 1);
        cbs_init(&s, raw, len);
        CHECK(!ratls_td_report_decode(&s, 600, &td));
        free(raw);
    }
}

/* The header: a version flipped to the other TDX version misreads the body (malformed), any other is unsupported;
 * the key type; tee_type (not TDX: unsupported); the QE vendor; the rest (reserved SVNs, user data) is signed. */
static int expect_header(size_t off, uint8_t flipped) {
    if (off == 0) return flipped == 4 || flipped == 5 ? RATLS_ERR_QUOTE_MALFORMED : RATLS_ERR_QUOTE_UNSUPPORTED_VERSION;
    if (off == 1) return RATLS_ERR_QUOTE_UNSUPPORTED_VERSION;
    if (off < 4) return RATLS_ERR_QUOTE_UNSUPPORTED_KEY_TYPE;
    if (off < 8) return RATLS_ERR_QUOTE_UNSUPPORTED_VERSION;
    if (off >= 12 && off < 28) return RATLS_ERR_QE_VENDOR;
    return RATLS_ERR_QUOTE_SIGNATURE;
}
/* v5 body type (3): flipped to 2 it names TD report 1.0, whose size is not the 648 given: malformed. */
static int expect_body_descriptor(size_t off, uint8_t flipped) {
    if (off == SGX_QUOTE_HEADER_SIZE)
        return flipped == 2 ? RATLS_ERR_QUOTE_MALFORMED : RATLS_ERR_QUOTE_UNSUPPORTED_VERSION;
    if (off == SGX_QUOTE_HEADER_SIZE + 1) return RATLS_ERR_QUOTE_UNSUPPORTED_VERSION;
    return RATLS_ERR_QUOTE_MALFORMED;
}
static int expect_cert_data_type(size_t off, uint8_t flipped) {
    return (void)off, (void)flipped, RATLS_ERR_QUOTE_UNSUPPORTED_CERT_DATA;
}

static void test_bit_flips(const ratls_policy *pol, const char *file, int64_t now) {
    size_t len;
    uint8_t *raw = read_quote(file, &len);
    ratls_quote q;
    CHECK_EQ(ratls_quote_parse(raw, len, &q, NULL, 0), RATLS_OK);
    size_t body_off = q.version == 5 ? SGX_QUOTE_HEADER_SIZE + 6 : SGX_QUOTE_HEADER_SIZE;
    flip_region(pol, "header", raw, len, now, 0, SGX_QUOTE_HEADER_SIZE, expect_header);
    if (q.version == 5)
        flip_region(pol, "body type and size", raw, len, now, SGX_QUOTE_HEADER_SIZE, 6, expect_body_descriptor);
    flip_region(pol, "TD report", raw, len, now, body_off, q.signed_region.len - body_off, expect_quote_signature);
    flip_region(pol, "TD quote signature", raw, len, now, q.isv_signature.off, 64, expect_quote_signature);
    flip_region(pol, "attestation key", raw, len, now, q.attestation_key.off, 64, expect_qe_report_data);
    flip_region(pol, "certification data type 6", raw, len, now, q.attestation_key.off + 64, 2,
                expect_cert_data_type);
    flip_region(pol, "QE report", raw, len, now, q.qe_report_raw.off, SGX_REPORT_BODY_SIZE,
                expect_qe_report_signature);
    flip_region(pol, "QE report signature", raw, len, now, q.qe_report_signature.off, 64,
                expect_qe_report_signature);
    flip_region(pol, "QE auth data", raw, len, now, q.qe_auth_data.off, q.qe_auth_data.len, expect_qe_report_data);
    free(raw);
}

/* Every truncation is malformed (never a crash, never accepted); each length field pointing elsewhere is caught. */
static void test_malformed(void) {
    const char *files[2] = {V4_QUOTE, V5_QUOTE};
    for (int f = 0; f < 2; f++) {
        size_t len;
        uint8_t *raw = read_quote(files[f], &len);
        uint8_t *copy = malloc(len + 1);
        char msg[RATLS_MSG_SIZE];
        ratls_quote q;
        CHECK_EQ(ratls_quote_parse(raw, len, &q, NULL, 0), RATLS_OK);
        size_t bad = 0;
        for (size_t n = 0; n < len; n += test_sweep_step())
            if (parse_reason(raw, n, msg) != RATLS_ERR_QUOTE_MALFORMED) bad++;
        CHECK_EQ(bad, 0);
        memcpy(copy, raw, len);
        copy[len] = 0;
        CHECK_EQ(parse_reason(copy, len + 1, msg), RATLS_ERR_QUOTE_MALFORMED);
        CHECK(strstr(msg, "trailing") != NULL);

        size_t sig_len_off = q.signed_region.len, outer = q.attestation_key.off + 64;
        size_t outer_len = len - (outer + 6);
        const struct {
            size_t off;
            int width;
            uint32_t value;
            int reason;
            const char *field;
        } cases[] = {
            {outer, 2, 5, RATLS_ERR_QUOTE_UNSUPPORTED_CERT_DATA, "expected 6"},
            {outer + 2, 4, (uint32_t)outer_len + 1, RATLS_ERR_QUOTE_MALFORMED, "QE report certification data"},
            {outer + 2, 4, (uint32_t)outer_len - 1, RATLS_ERR_QUOTE_MALFORMED, "certification data"},
            {q.cert_data.off - 4, 4, (uint32_t)q.cert_data.len - 1, RATLS_ERR_QUOTE_MALFORMED,
             "left in the QE report certification data"},
            {q.cert_data.off - 4, 4, (uint32_t)q.cert_data.len + 1, RATLS_ERR_QUOTE_MALFORMED, "certification data"},
            {q.qe_auth_data.off - 2, 2, 0xffff, RATLS_ERR_QUOTE_MALFORMED, "qe_auth_data"},
            {sig_len_off, 4, 0xffffffffu, RATLS_ERR_QUOTE_MALFORMED, "signature_data_len"},
            {sig_len_off, 4, (uint32_t)(len - sig_len_off - 4 - 1), RATLS_ERR_QUOTE_MALFORMED, "trailing"},
        };
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
            memcpy(copy, raw, len);
            if (cases[i].width == 2) put_u16(copy + cases[i].off, (uint16_t)cases[i].value);
            else put_u32(copy + cases[i].off, cases[i].value);
            int rc = parse_reason(copy, len, msg);
            if (rc != cases[i].reason || !strstr(msg, cases[i].field))
                fprintf(stderr, "  %s case %zu: %s \"%s\"\n", files[f], i, ratls_reason_name(rc), msg);
            CHECK_EQ(rc, cases[i].reason);
            CHECK(strstr(msg, cases[i].field) != NULL);
        }
        if (q.version == 5) {
            memcpy(copy, raw, len);
            put_u32(copy + SGX_QUOTE_HEADER_SIZE + 2, TD_REPORT_10_SIZE);
            CHECK_EQ(parse_reason(copy, len, msg), RATLS_ERR_QUOTE_MALFORMED);
            CHECK(strstr(msg, "body size") != NULL);
            put_u16(copy + SGX_QUOTE_HEADER_SIZE, RATLS_BODY_SGX_REPORT);
            CHECK_EQ(parse_reason(copy, len, msg), RATLS_ERR_QUOTE_UNSUPPORTED_VERSION);
            CHECK(strstr(msg, "body type") != NULL);
        }
        free(copy);
        free(raw);
    }
}

/* The TDX policy through ratls_verify_quote: TEE type first, then MRTD, RTMRs; evidence carries the TD fields. */
static void test_policy(void) {
    size_t len;
    uint8_t *raw = read_quote(V4_QUOTE, &len);
    ratls_quote q;
    CHECK_EQ(ratls_quote_parse(raw, len, &q, NULL, 0), RATLS_OK);
    ratls_policy *p = ratls_policy_new();
    ratls_policy_set_allowed_tcb_mask(p, 1u << RATLS_TCB_UNKNOWN);
    ratls_evidence ev;
    char msg[RATLS_MSG_SIZE];

    /* A new policy is SGX-only. */
    CHECK_EQ(ratls_verify_quote(p, raw, len, V4_NOW, RATLS_TCB_UNKNOWN, &ev, msg, sizeof msg), RATLS_ERR_TEE_TYPE);
    CHECK(strstr(msg, "TDX") != NULL && strstr(msg, "SGX only") != NULL);
    ratls_policy_set_allowed_tees(p, RATLS_TEE_TDX);
    int rc = ratls_verify_quote(p, raw, len, V4_NOW, RATLS_TCB_UNKNOWN, &ev, msg, sizeof msg);
    if (rc) fprintf(stderr, "  TDX policy: %s: %s\n", ratls_reason_name(rc), msg);
    CHECK_EQ(rc, RATLS_OK);
    CHECK_EQ(ev.tee, RATLS_TEE_TDX);
    CHECK_EQ(ev.root, RATLS_ROOT_TRUSTED);
    CHECK(memcmp(ev.mrtd, q.td.mrtd, 48) == 0 && memcmp(ev.rtmr, q.td.rtmr, sizeof ev.rtmr) == 0);
    CHECK(memcmp(ev.mrseam, q.td.mrseam, 48) == 0 && memcmp(ev.report_data, q.td.report_data, 64) == 0);
    CHECK(memcmp(ev.tee_tcb_svn, q.td.tee_tcb_svn, 16) == 0);
    CHECK_EQ(ev.td_attributes, q.td.td_attributes);
    CHECK_EQ(ev.xfam, q.td.xfam);
    CHECK_EQ(ev.flags, 0);
    /* The TCB rule still applies. */
    CHECK_EQ(ratls_verify_quote(p, raw, len, V4_NOW, RATLS_TCB_OUT_OF_DATE, &ev, msg, sizeof msg),
             RATLS_ERR_TCB_STATUS);

    uint8_t other[48];
    memset(other, 0xab, sizeof other);
    CHECK_EQ(ratls_policy_add_mrtd(p, other), RATLS_OK);
    CHECK_EQ(ratls_verify_quote(p, raw, len, V4_NOW, RATLS_TCB_UNKNOWN, &ev, msg, sizeof msg), RATLS_ERR_MRTD);
    CHECK(strstr(msg, "MRTD 6363b804") != NULL && strstr(msg, "expected abab") != NULL);
    CHECK_EQ(ratls_policy_add_mrtd(p, q.td.mrtd), RATLS_OK);
    CHECK_EQ(ratls_verify_quote(p, raw, len, V4_NOW, RATLS_TCB_UNKNOWN, &ev, msg, sizeof msg), RATLS_OK);
    for (unsigned i = 0; i < 4; i++) {
        CHECK_EQ(ratls_policy_add_rtmr(p, i, other), RATLS_OK);
        CHECK_EQ(ratls_verify_quote(p, raw, len, V4_NOW, RATLS_TCB_UNKNOWN, &ev, msg, sizeof msg), RATLS_ERR_RTMR);
        char name[8];
        snprintf(name, sizeof name, "RTMR%u ", i);
        CHECK(strstr(msg, name) != NULL);
        CHECK_EQ(ratls_policy_add_rtmr(p, i, q.td.rtmr[i]), RATLS_OK);
        CHECK_EQ(ratls_verify_quote(p, raw, len, V4_NOW, RATLS_TCB_UNKNOWN, &ev, msg, sizeof msg), RATLS_OK);
    }
    CHECK_EQ(ratls_policy_add_rtmr(p, 4, other), RATLS_ERR_BAD_ARGUMENT);
    CHECK_EQ(ratls_policy_add_mrtd(p, NULL), RATLS_ERR_BAD_ARGUMENT);

    /* The TDX module: MRSEAM, then TEE_TCB_SVN component by component (the quote's is 03 00 04 00 ..). */
    CHECK_EQ(ratls_policy_add_mrseam(p, other), RATLS_OK);
    CHECK_EQ(ratls_verify_quote(p, raw, len, V4_NOW, RATLS_TCB_UNKNOWN, &ev, msg, sizeof msg), RATLS_ERR_MRSEAM);
    CHECK(strstr(msg, "MRSEAM 2fd279c1") != NULL);
    CHECK_EQ(ratls_policy_add_mrseam(p, q.td.mrseam), RATLS_OK);
    uint8_t svn[16] = {3, 0, 4};
    ratls_policy_set_min_tee_tcb_svn(p, svn);
    CHECK_EQ(ratls_verify_quote(p, raw, len, V4_NOW, RATLS_TCB_UNKNOWN, &ev, msg, sizeof msg), RATLS_OK);
    svn[2] = 5;
    ratls_policy_set_min_tee_tcb_svn(p, svn);
    CHECK_EQ(ratls_verify_quote(p, raw, len, V4_NOW, RATLS_TCB_UNKNOWN, &ev, msg, sizeof msg), RATLS_ERR_TEE_TCB_SVN);
    CHECK(strstr(msg, "TEE_TCB_SVN[2] is 4, the policy requires at least 5") != NULL);
    ratls_policy_set_min_tee_tcb_svn(p, NULL);
    CHECK_EQ(ratls_verify_quote(p, raw, len, V4_NOW, RATLS_TCB_UNKNOWN, &ev, msg, sizeof msg), RATLS_OK);

    /* A TDX-only policy refuses SGX evidence; one naming both takes either. */
    size_t sgx_len;
    uint8_t *sgx = read_testdata("sgx/dcap-qvl/sgx_quote", &sgx_len);
    CHECK_EQ(ratls_verify_quote(p, sgx, sgx_len, 1752919277, RATLS_TCB_UNKNOWN, &ev, msg, sizeof msg),
             RATLS_ERR_TEE_TYPE);
    CHECK(strstr(msg, "SGX") != NULL && strstr(msg, "TDX only") != NULL);
    ratls_policy_set_allowed_tees(p, RATLS_TEE_SGX | RATLS_TEE_TDX);
    CHECK_EQ(ratls_verify_quote(p, sgx, sgx_len, 1752919277, RATLS_TCB_UNKNOWN, &ev, msg, sizeof msg), RATLS_OK);
    CHECK_EQ(ev.tee, RATLS_TEE_SGX);
    CHECK_EQ(ratls_verify_quote(p, raw, len, V4_NOW, RATLS_TCB_UNKNOWN, &ev, msg, sizeof msg), RATLS_OK);
    free(sgx);
    ratls_policy_free(p);
    free(raw);
}

int main(void) {
    ratls_policy *intel = ratls_policy_new();
    test_v4(intel);
    test_v5(intel);
    test_td_report_roundtrip();
    test_malformed();
    test_bit_flips(intel, V4_QUOTE, V4_NOW);
    test_bit_flips(intel, V5_QUOTE, V5_NOW);
    test_policy();
    ratls_policy_free(intel);
    return test_summary();
}
