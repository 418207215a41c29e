/* libFuzzer target: RA-TLS certificate parsing (X.509, the legacy and DICE evidence extensions, the CBOR claims)
 * and full certificate verification, under a permissive policy (Intel root + sim root) and the default one.
 * A mutated certificate almost always fails its self-signature, which verification checks before the quote, so
 * the evidence found by the parser is also taken through quote verification and the key-binding check directly. */
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

static void check_info(const ratls_cert_info *info, size_t len) {
    FUZZ_REQUIRE(info->format == RATLS_FORMAT_DICE || info->format == RATLS_FORMAT_LEGACY);
    FUZZ_REQUIRE(info->format == RATLS_FORMAT_DICE ? info->has_dice : info->has_legacy && !info->has_dice);
    FUZZ_REQUIRE(fuzz_span_ok(info->quote, len) && info->quote.len > 0);
    FUZZ_REQUIRE(fuzz_span_ok(info->spki, len) && info->spki.len > 0);
    FUZZ_REQUIRE(info->tee == RATLS_TEE_UNKNOWN || info->tee == RATLS_TEE_SGX || info->tee == RATLS_TEE_TDX);
    if (info->has_legacy) FUZZ_REQUIRE(fuzz_span_ok(info->legacy_quote, len));
    if (info->format == RATLS_FORMAT_DICE) {
        FUZZ_REQUIRE(fuzz_span_ok(info->claims, len) && fuzz_span_ok(info->pubkey_hash, len));
        FUZZ_REQUIRE(info->pubkey_hash.len == 32 || info->pubkey_hash.len == 48 || info->pubkey_hash.len == 64);
    }
}

/* The evidence's quote through the quote checks and the key binding, whatever the certificate's signature. */
static void check_evidence(const uint8_t *der, const ratls_cert_info *info) {
    char msg[RATLS_MSG_SIZE] = "";
    ratls_quote q;
    const uint8_t *raw = der + info->quote.off;
    int rc = ratls_quote_parse(raw, info->quote.len, &q, msg, sizeof msg);
    if (rc != RATLS_OK) {
        fuzz_check_failure(rc, msg);
        return;
    }
    int root = -1;
    rc = ratls_quote_verify_signatures(permissive, raw, info->quote.len, &q, fuzz_now(), &root, msg, sizeof msg);
    FUZZ_REQUIRE_NO_OPENSSL_ERRORS();
    if (rc != RATLS_OK) fuzz_check_failure(rc, msg);
    else FUZZ_REQUIRE(root == RATLS_ROOT_TRUSTED || root == RATLS_ROOT_SIMULATED);
    rc = ratls_cert_check_binding(der, info, q.body.report_data, msg, sizeof msg);
    FUZZ_REQUIRE_NO_OPENSSL_ERRORS();
    if (rc != RATLS_OK) fuzz_check_failure(rc, msg);
}

static int verify_under(const ratls_policy *policy, const uint8_t *der, size_t len, int inspect_rc,
                        const ratls_cert_info *info) {
    char msg[RATLS_MSG_SIZE] = "";
    ratls_evidence ev;
    int rc = ratls_verify_cert(policy, der, len, fuzz_now(), RATLS_TCB_UNKNOWN, &ev, msg, sizeof msg);
    FUZZ_REQUIRE_NO_OPENSSL_ERRORS();
    if (inspect_rc != RATLS_OK) {
        FUZZ_REQUIRE(rc == inspect_rc); /* parsing is the first step of verification */
        return rc;
    }
    if (rc != RATLS_OK) {
        fuzz_check_failure(rc, msg);
        return rc;
    }
    FUZZ_REQUIRE(ev.format == info->format);
    FUZZ_REQUIRE(memcmp(ev.cert_sha256, info->cert_sha256, 32) == 0);
    FUZZ_REQUIRE(memcmp(ev.spki_sha256, info->spki_sha256, 32) == 0);
    return rc;
}

/* Failures of the certificate itself (before any evidence is looked at) are the same under every policy. */
static int is_certificate_failure(int rc) {
    return rc >= RATLS_ERR_CERT_MALFORMED && rc <= RATLS_ERR_EVIDENCE_MALFORMED;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len) {
    uint8_t *der = malloc(len ? len : 1); /* exact size: reads past the end are ASan reports */
    FUZZ_REQUIRE(der != NULL);
    if (len) memcpy(der, data, len);
    ratls_cert_info info;
    char msg[RATLS_MSG_SIZE] = "";
    int rc = ratls_cert_inspect(der, len, &info, msg, sizeof msg);
    FUZZ_REQUIRE_NO_OPENSSL_ERRORS();
    if (rc == RATLS_OK) {
        check_info(&info, len);
        check_evidence(der, &info);
    } else {
        fuzz_check_failure(rc, msg);
    }
    /* Most mutants fail their self-signature; only the others are worth a second, stricter verification. */
    if (!is_certificate_failure(verify_under(permissive, der, len, rc, &info)))
        verify_under(strict, der, len, rc, &info);
    free(der);
    return 0;
}
