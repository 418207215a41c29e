/* libFuzzer target: the quote parser (SGX v3, TDX v4 and v5) and the whole quote verification (signature chain, attributes,
 * measurements) on arbitrary bytes, under a permissive policy (Intel root + sim root) and the default one.
 * Besides crashes and sanitizer reports it checks the API contract: spans inside the input, a known reason and a
 * message on every failure, deterministic results, and evidence that matches the parsed quote. */
#include "fuzz_common.h"

static ratls_policy *permissive, *strict;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    permissive = fuzz_permissive_policy();
    strict = ratls_policy_new();
    FUZZ_REQUIRE(strict != NULL);
    return 0;
}

static void check_parsed(const ratls_quote *q, size_t len) {
    FUZZ_REQUIRE(q->total_len == len);
    FUZZ_REQUIRE((q->version >= 3 && q->version <= 5) && q->att_key_type == 2);
    const ratls_span spans[] = {q->signed_region, q->isv_signature, q->attestation_key, q->qe_report_raw,
                                q->qe_report_signature, q->qe_auth_data, q->cert_data};
    for (size_t i = 0; i < sizeof spans / sizeof spans[0]; i++) FUZZ_REQUIRE(fuzz_span_ok(spans[i], len));
    /* What the attestation key signs: header and SGX report, header and TD report 1.0 (v4), or header, body type,
     * size and the TD report it names (v5). */
    size_t signed_len = q->version == 3 ? 432
                        : q->version == 4 ? 48 + 584
                                          : 48 + 6 + (q->body_type == RATLS_BODY_TD_REPORT_15 ? 648 : 584);
    FUZZ_REQUIRE(q->tee == (q->version == 3 ? RATLS_TEE_SGX : RATLS_TEE_TDX));
    FUZZ_REQUIRE(q->signed_region.off == 0 && q->signed_region.len == signed_len);
    FUZZ_REQUIRE(q->isv_signature.off == signed_len + 4);
    FUZZ_REQUIRE(q->isv_signature.len == 64 && q->attestation_key.len == 64 && q->qe_report_raw.len == 384);
    /* The QE report follows the attestation key, directly (SGX) or behind the type-6 header (TDX). */
    FUZZ_REQUIRE(q->qe_report_raw.off == q->attestation_key.off + 64 + (q->tee == RATLS_TEE_TDX ? 6 : 0));
    /* The certification data is the last field: the quote ends exactly where it ends. */
    FUZZ_REQUIRE(q->cert_data.off + q->cert_data.len == len);
}

static void verify_under(const ratls_policy *policy, const uint8_t *data, size_t len, const ratls_quote *parsed,
                         int parse_rc) {
    char msg[RATLS_MSG_SIZE] = "";
    ratls_evidence ev;
    int rc = ratls_verify_quote(policy, data, len, fuzz_now(), RATLS_TCB_UNKNOWN, &ev, msg, sizeof msg);
    FUZZ_REQUIRE_NO_OPENSSL_ERRORS();
    if (parse_rc != RATLS_OK) {
        FUZZ_REQUIRE(rc == parse_rc); /* parsing is the first step of verification */
        return;
    }
    if (rc != RATLS_OK) {
        fuzz_check_failure(rc, msg);
        return;
    }
    FUZZ_REQUIRE(ev.root == RATLS_ROOT_TRUSTED || ev.root == RATLS_ROOT_SIMULATED);
    FUZZ_REQUIRE(ev.tee == parsed->tee);
    FUZZ_REQUIRE(memcmp(ev.mrenclave, parsed->body.mrenclave, 32) == 0);
    FUZZ_REQUIRE(memcmp(ev.mrtd, parsed->td.mrtd, 48) == 0 && memcmp(ev.rtmr, parsed->td.rtmr, sizeof ev.rtmr) == 0);
    FUZZ_REQUIRE(memcmp(ev.report_data, ratls_quote_report_data(parsed), 64) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len) {
    /* An exact-size copy, so any read past the end is an ASan report rather than a read of libFuzzer's slack. */
    uint8_t *raw = malloc(len ? len : 1);
    FUZZ_REQUIRE(raw != NULL);
    if (len) memcpy(raw, data, len);
    ratls_quote q, again;
    char msg[RATLS_MSG_SIZE] = "";
    int rc = ratls_quote_parse(raw, len, &q, msg, sizeof msg);
    FUZZ_REQUIRE(ratls_quote_parse(raw, len, &again, NULL, 0) == rc);
    if (rc == RATLS_OK) {
        check_parsed(&q, len);
        FUZZ_REQUIRE(again.cert_data.off == q.cert_data.off && again.qe_auth_data.len == q.qe_auth_data.len);
    } else {
        fuzz_check_failure(rc, msg);
    }
    verify_under(permissive, raw, len, &q, rc);
    verify_under(strict, raw, len, &q, rc);
    free(raw);
    return 0;
}
