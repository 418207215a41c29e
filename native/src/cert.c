/* RA-TLS certificates in Gramine's format (tools/sgx/ra-tls/ra_tls_attest.c, ra_tls_verify_common.c) and in the
 * DICE-only layout of rats-tls and TDs (ratls/PROTOCOL.md section 9): building them around quotes, and finding and
 * checking the evidence in them. */
#include <openssl/err.h>
#include <limits.h>
#include <openssl/x509v3.h>
#include <stdlib.h>
#include <string.h>

#include "cbor.h"
#include "internal.h"

/* Gramine passes the whole TLV of OID 1.2.840.113741.1337.6 as the OID *content*, so certificates carry
 * 06 0B 06 09 2A 86 48 86 F8 4D 8A 39 06, which standard parsers read as 0.6.9.42.840.113741.1337.6. */
static const uint8_t legacy_oid_content[] = {0x06, 0x09, 0x2A, 0x86, 0x48, 0x86, 0xF8, 0x4D, 0x8A, 0x39, 0x06};
/* TCG DICE tagged evidence, 2.23.133.5.4.9. */
static const uint8_t dice_oid_content[] = {0x67, 0x81, 0x05, 0x05, 0x04, 0x09};
/* IANA CBOR tags (interoperable-ra-tls docs/Interoperable-RA-TLS-SGX-TDX-evidence-formats.md:11-15). */
#define TEE_QUOTE_CBOR_TAG 60000
#define TEE_REPORT_CBOR_TAG 60001
#define SGX_REPORT_CBOR_TAG 60002
/* Quote header tee_type (versions 4 and 5). */
#define TEE_TYPE_SGX 0x00000000u
#define TEE_TYPE_TDX 0x00000081u
#define PUBKEY_HASH_CLAIM "pubkey-hash"
#define HASH_ALG_SHA256 1
#define HASH_ALG_SHA384 7
#define HASH_ALG_SHA512 8
#define LEGACY_QUOTE_MIN 128

static ASN1_OBJECT *oid_from_content(const uint8_t *content, size_t len) {
    cbb tlv, oid;
    cbb_init(&tlv);
    cbb_add_der(&tlv, &oid, DER_OID);
    cbb_add(&oid, content, len);
    int ok = cbb_close(&oid);
    const unsigned char *p = tlv.data;
    ASN1_OBJECT *obj = ok ? d2i_ASN1_OBJECT(NULL, &p, (long)tlv.len) : NULL;
    cbb_cleanup(&tlv);
    return obj;
}

int ratls_spki_der(EVP_PKEY *key, uint8_t **der, size_t *len) {
    unsigned char *out = NULL;
    int n = i2d_PUBKEY(key, &out);
    if (n <= 0) return 0;
    *der = out; /* OPENSSL_malloc is malloc unless an application replaced it; we never do */
    *len = (size_t)n;
    return 1;
}

/* ---------------------------------------------------------------------------------------------------- */
/* Building                                                                                              */

static int add_raw_extension(X509 *x, ASN1_OBJECT *obj, const uint8_t *value, size_t len) {
    ASN1_OCTET_STRING *os = ASN1_OCTET_STRING_new();
    int ok = os && ASN1_OCTET_STRING_set(os, value, (int)len);
    X509_EXTENSION *ext = ok ? X509_EXTENSION_create_by_OBJ(NULL, obj, 0, os) : NULL;
    ok = ext && X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    ASN1_OCTET_STRING_free(os);
    return ok;
}

/* claims = { "pubkey-hash": bstr(serialized [1, bstr SHA-256(SPKI)]) }, serialized. */
static int build_claims(const uint8_t spki_hash[32], cbb *claims) {
    cbb entry;
    cbb_init(&entry);
    int ok = cbor_add_head(&entry, CBOR_ARRAY, 2) && cbor_add_head(&entry, CBOR_UINT, HASH_ALG_SHA256) &&
             cbor_add_string(&entry, CBOR_BYTES, spki_hash, 32);
    ok = ok && !entry.failed && cbor_add_head(claims, CBOR_MAP, 1) &&
         cbor_add_string(claims, CBOR_TEXT, PUBKEY_HASH_CLAIM, strlen(PUBKEY_HASH_CLAIM)) &&
         cbor_add_string(claims, CBOR_BYTES, entry.data, entry.len);
    cbb_cleanup(&entry);
    return ok && !claims->failed;
}

/* The SHA-256 of a key's SubjectPublicKeyInfo DER and the DICE claims over it (malloc'ed, *claims_len bytes). */
static int key_claims(EVP_PKEY *key, uint8_t spki_hash[32], uint8_t **claims_buf, size_t *claims_len, char *msg,
                      size_t msg_len) {
    uint8_t *spki = NULL;
    size_t spki_len = 0;
    int ok = ratls_spki_der(key, &spki, &spki_len) && ratls_sha256(spki, spki_len, spki_hash);
    OPENSSL_free(spki);
    if (!ok) return ratls_fail(msg, msg_len, RATLS_ERR_INTERNAL, "cannot encode the certificate public key");
    cbb claims;
    cbb_init(&claims);
    if (!build_claims(spki_hash, &claims) || !(*claims_buf = cbb_finish(&claims, claims_len))) {
        cbb_cleanup(&claims);
        return ratls_fail(msg, msg_len, RATLS_ERR_INTERNAL, "cannot encode the DICE claims");
    }
    return RATLS_OK;
}

/* The DICE evidence item: 60000([bstr quote, bstr claims]). */
static int dice_evidence(const uint8_t *quote, size_t quote_len, const uint8_t *claims, size_t claims_len,
                         cbb *evidence, char *msg, size_t msg_len) {
    if (!cbor_add_head(evidence, CBOR_TAG, TEE_QUOTE_CBOR_TAG) || !cbor_add_head(evidence, CBOR_ARRAY, 2) ||
        !cbor_add_string(evidence, CBOR_BYTES, quote, quote_len) ||
        !cbor_add_string(evidence, CBOR_BYTES, claims, claims_len) || evidence->failed)
        return ratls_fail(msg, msg_len, RATLS_ERR_INTERNAL, "cannot encode the DICE evidence");
    return RATLS_OK;
}

#define CN_PREFIX "RATLS-"
#define CN_SIZE (sizeof CN_PREFIX - 1 + 16 + 1)

/* RATLS-<16 hex of SHA-256(SPKI)>: unique per key, since gRPC picks trust anchors by subject name. */
static void common_name(const uint8_t spki_hash[32], char cn[CN_SIZE]) {
    memcpy(cn, CN_PREFIX, sizeof CN_PREFIX - 1);
    ratls_hex(spki_hash, 8, cn + sizeof CN_PREFIX - 1);
}

static int set_subject(X509 *x, const char *cn) {
    X509_NAME *name = X509_get_subject_name(x);
    return X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1, -1, 0) &&
           X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8, (const unsigned char *)"GramineDevelopers", -1,
                                      -1, 0) &&
           X509_NAME_add_entry_by_txt(name, "C", MBSTRING_ASC, (const unsigned char *)"US", -1, -1, 0) &&
           X509_set_issuer_name(x, name);
}

/* subjectAltName, non-critical: GeneralNames ::= SEQUENCE { dNSName [2] IA5String <the CN> }. TLS clients that
 * ignore the CN (Go since 1.15, RFC 6125) name the server by it; the CN stays for gRPC's trust anchors and Gramine's
 * verifier reads neither (ratls/PROTOCOL.md section 6). */
static int add_subject_alt_name(X509 *x, const char *cn) {
    cbb san, names, dns_name;
    cbb_init(&san);
    cbb_add_der(&san, &names, DER_SEQUENCE);
    cbb_add_der(&names, &dns_name, DER_CONTEXT | 2);
    cbb_add(&dns_name, cn, strlen(cn));
    cbb_close(&dns_name);
    cbb_close(&names);
    int ok = !san.failed && add_raw_extension(x, OBJ_nid2obj(NID_subject_alt_name), san.data, san.len);
    cbb_cleanup(&san);
    return ok;
}

/* basicConstraints (CA:FALSE as an empty SEQUENCE), SKI and AKI (SHA-1 of the public key bits), as mbedTLS
 * writes them. */
static int add_key_extensions(X509 *x, EVP_PKEY *key) {
    unsigned char *pub = NULL;
    int n = i2d_PublicKey(key, &pub); /* for EC: the uncompressed point, i.e. the BIT STRING contents */
    if (n <= 0) return 0;
    uint8_t sha1[20];
    unsigned int sha1_len = 0;
    int ok = EVP_Digest(pub, (size_t)n, sha1, &sha1_len, EVP_sha1(), NULL) && sha1_len == 20;
    OPENSSL_free(pub);
    /* SKI: OCTET STRING keyIdentifier; AKI: SEQUENCE { [0] keyIdentifier }. */
    cbb ski, aki, seq, id;
    cbb_init(&ski);
    cbb_init(&aki);
    cbb_add_der(&ski, &id, DER_OCTET_STRING);
    cbb_add(&id, sha1, sizeof sha1);
    cbb_close(&id);
    cbb_add_der(&aki, &seq, DER_SEQUENCE);
    cbb_add_der(&seq, &id, DER_CONTEXT | 0);
    cbb_add(&id, sha1, sizeof sha1);
    cbb_close(&id);
    cbb_close(&seq);
    static const uint8_t basic_constraints[] = {0x30, 0x00};
    ok = ok && !ski.failed && !aki.failed &&
         add_raw_extension(x, OBJ_nid2obj(NID_basic_constraints), basic_constraints, 2) &&
         add_raw_extension(x, OBJ_nid2obj(NID_subject_key_identifier), ski.data, ski.len) &&
         add_raw_extension(x, OBJ_nid2obj(NID_authority_key_identifier), aki.data, aki.len);
    cbb_cleanup(&ski);
    cbb_cleanup(&aki);
    return ok;
}

/* The certificate around its evidence: Gramine's extensions in Gramine's order (the legacy quote only when
 * legacy_quote is not NULL), then the subjectAltName: Gramine's verifier finds the evidence by searching the
 * extensions' bytes for its OID, so the first match stays the evidence extension itself. */
static int sign_certificate(EVP_PKEY *key, const uint8_t spki_hash[32], int64_t not_before, int64_t not_after,
                            const uint8_t *legacy_quote, size_t legacy_len, const cbb *evidence, uint8_t **der,
                            size_t *der_len, char *msg, size_t msg_len) {
    char cn[CN_SIZE];
    common_name(spki_hash, cn);
    X509 *x = X509_new();
    ASN1_OBJECT *legacy_oid = oid_from_content(legacy_oid_content, sizeof legacy_oid_content);
    ASN1_OBJECT *dice_oid = oid_from_content(dice_oid_content, sizeof dice_oid_content);
    int ok = x && legacy_oid && dice_oid && X509_set_version(x, X509_VERSION_3) &&
             ASN1_INTEGER_set(X509_get_serialNumber(x), 1) && set_subject(x, cn) &&
             ASN1_TIME_set(X509_getm_notBefore(x), (time_t)not_before) &&
             ASN1_TIME_set(X509_getm_notAfter(x), (time_t)not_after) && X509_set_pubkey(x, key) &&
             add_key_extensions(x, key) &&
             (!legacy_quote || add_raw_extension(x, legacy_oid, legacy_quote, legacy_len)) &&
             add_raw_extension(x, dice_oid, evidence->data, evidence->len) && add_subject_alt_name(x, cn) &&
             X509_sign(x, key, EVP_sha256()) > 0;
    unsigned char *out = NULL;
    int n = ok ? i2d_X509(x, &out) : 0;
    X509_free(x);
    ASN1_OBJECT_free(legacy_oid);
    ASN1_OBJECT_free(dice_oid);
    ERR_clear_error();
    if (n <= 0) return ratls_fail(msg, msg_len, RATLS_ERR_INTERNAL, "cannot build the RA-TLS certificate");
    *der = out;
    *der_len = (size_t)n;
    return RATLS_OK;
}

int ratls_cert_build(EVP_PKEY *key, int64_t not_before, int64_t not_after, ratls_quote_fn get_quote, void *ctx,
                     uint8_t **der, size_t *der_len, char *msg, size_t msg_len) {
    uint8_t *legacy_quote = NULL, *dice_quote = NULL, *claims = NULL;
    size_t legacy_len = 0, dice_len = 0, claims_len = 0;
    cbb evidence;
    cbb_init(&evidence);
    uint8_t spki_hash[32], report_data[64] = {0};
    int rc = key_claims(key, spki_hash, &claims, &claims_len, msg, msg_len);
    if (rc != RATLS_OK) goto out;
    /* Legacy quote: report_data = SHA-256(SPKI) || 0^32. */
    memcpy(report_data, spki_hash, 32);
    if ((rc = get_quote(ctx, report_data, &legacy_quote, &legacy_len, msg, msg_len)) != RATLS_OK) goto out;
    /* DICE quote: report_data = SHA-256(claims) || 0^32. */
    ratls_sha256(claims, claims_len, report_data);
    if ((rc = get_quote(ctx, report_data, &dice_quote, &dice_len, msg, msg_len)) != RATLS_OK ||
        (rc = dice_evidence(dice_quote, dice_len, claims, claims_len, &evidence, msg, msg_len)) != RATLS_OK)
        goto out;
    rc = sign_certificate(key, spki_hash, not_before, not_after, legacy_quote, legacy_len, &evidence, der, der_len,
                          msg, msg_len);
out:
    free(legacy_quote);
    free(dice_quote);
    free(claims);
    cbb_cleanup(&evidence);
    return rc;
}

static int key_is_supported(EVP_PKEY *key) {
    if (!key || EVP_PKEY_get_base_id(key) != EVP_PKEY_EC) return 0;
    char group[32];
    if (!EVP_PKEY_get_utf8_string_param(key, "group", group, sizeof group, NULL)) return 0;
    return strcmp(group, "prime256v1") == 0 || strcmp(group, "secp384r1") == 0;
}

/* A DER private key, EC on a curve RA-TLS verifiers accept. */
static int decode_private_key(const uint8_t *key_der, size_t key_len, EVP_PKEY **key, char *msg, size_t msg_len) {
    const uint8_t *p = key_der;
    *key = key_der && key_len > 0 && key_len <= LONG_MAX ? d2i_AutoPrivateKey(NULL, &p, (long)key_len) : NULL;
    ERR_clear_error();
    if (!*key || p != key_der + key_len) {
        EVP_PKEY_free(*key);
        *key = NULL;
        return ratls_fail(msg, msg_len, RATLS_ERR_BAD_ARGUMENT, "private key: not a DER private key");
    }
    if (!key_is_supported(*key)) {
        EVP_PKEY_free(*key);
        *key = NULL;
        return ratls_fail(msg, msg_len, RATLS_ERR_CERT_KEY_UNSUPPORTED,
                          "private key: must be EC P-256 or P-384 (as Gramine's verifier requires)");
    }
    return RATLS_OK;
}

int ratls_dice_report_data(const uint8_t *key_der, size_t key_len, uint8_t *report_data64, char *msg,
                           size_t msg_len) {
    if (!report_data64) return ratls_fail(msg, msg_len, RATLS_ERR_BAD_ARGUMENT, "report_data64 is required");
    memset(report_data64, 0, 64);
    EVP_PKEY *key;
    int rc = decode_private_key(key_der, key_len, &key, msg, msg_len);
    if (rc != RATLS_OK) return rc;
    uint8_t spki_hash[32], *claims = NULL;
    size_t claims_len = 0;
    rc = key_claims(key, spki_hash, &claims, &claims_len, msg, msg_len);
    if (rc == RATLS_OK) ratls_sha256(claims, claims_len, report_data64);
    free(claims);
    EVP_PKEY_free(key);
    return rc;
}

int ratls_dice_cert_create(const uint8_t *key_der, size_t key_len, const uint8_t *quote, size_t quote_len,
                           int64_t not_before, int64_t not_after, uint8_t **der, size_t *der_len, char *msg,
                           size_t msg_len) {
    if (!der || !der_len) return ratls_fail(msg, msg_len, RATLS_ERR_BAD_ARGUMENT, "der and der_len are required");
    *der = NULL;
    *der_len = 0;
    if (!quote || quote_len < SGX_QUOTE_MIN_SIZE || quote_len > SGX_QUOTE_MAX_SIZE)
        return ratls_fail(msg, msg_len, RATLS_ERR_BAD_ARGUMENT, "quote is %zu bytes, expected %d..%d",
                          quote ? quote_len : 0, SGX_QUOTE_MIN_SIZE, SGX_QUOTE_MAX_SIZE);
    if (not_after <= not_before)
        return ratls_fail(msg, msg_len, RATLS_ERR_BAD_ARGUMENT, "validity ends (%lld) before it starts (%lld)",
                          (long long)not_after, (long long)not_before);
    EVP_PKEY *key;
    int rc = decode_private_key(key_der, key_len, &key, msg, msg_len);
    if (rc != RATLS_OK) return rc;
    uint8_t spki_hash[32], *claims = NULL;
    size_t claims_len = 0;
    cbb evidence;
    cbb_init(&evidence);
    if ((rc = key_claims(key, spki_hash, &claims, &claims_len, msg, msg_len)) == RATLS_OK &&
        (rc = dice_evidence(quote, quote_len, claims, claims_len, &evidence, msg, msg_len)) == RATLS_OK)
        rc = sign_certificate(key, spki_hash, not_before, not_after, NULL, 0, &evidence, der, der_len, msg, msg_len);
    free(claims);
    cbb_cleanup(&evidence);
    EVP_PKEY_free(key);
    return rc;
}

/* ---------------------------------------------------------------------------------------------------- */
/* Parsing                                                                                               */

static ratls_span span_in(const uint8_t *der, const cbs *part) {
    ratls_span s = {cbs_offset(part, der), cbs_len(part)};
    return s;
}

/* An OPTIONAL element: absent, or well-formed. */
static int skip_optional(cbs *s, uint8_t tag) {
    cbs unused;
    return !cbs_peek_der_tag(s, tag) || cbs_get_der(s, tag, &unused);
}

/* The SubjectPublicKeyInfo element and the Extensions' contents (empty when absent) where they lie in `der`, by
 * walking the TBSCertificate (RFC 5280 4.1): OpenSSL hands back decoded copies, and the bindings must hash and read
 * the certificate's own bytes. 0 when the walk finds BER that OpenSSL accepted. */
static int tbs_parts(const uint8_t *der, size_t len, cbs *spki, cbs *extensions) {
    cbs in, cert, tbs, skipped, wrapper;
    cbs_init(&in, der, len);
    cbs_init(extensions, NULL, 0);
    if (!cbs_get_der(&in, DER_SEQUENCE, &cert) || cbs_len(&in) != 0 || !cbs_get_der(&cert, DER_SEQUENCE, &tbs) ||
        !skip_optional(&tbs, DER_CONTEXT | DER_CONSTRUCTED | 0) /* version */ ||
        !cbs_get_der(&tbs, DER_INTEGER, &skipped) /* serialNumber */)
        return 0;
    for (int i = 0; i < 4; i++) /* signature, issuer, validity, subject */
        if (!cbs_get_der(&tbs, DER_SEQUENCE, &skipped)) return 0;
    if (!cbs_get_der_element(&tbs, DER_SEQUENCE, spki) || !skip_optional(&tbs, DER_CONTEXT | 1) /* issuerUID */ ||
        !skip_optional(&tbs, DER_CONTEXT | 2) /* subjectUID */)
        return 0;
    if (cbs_peek_der_tag(&tbs, DER_CONTEXT | DER_CONSTRUCTED | 3) &&
        (!cbs_get_der(&tbs, DER_CONTEXT | DER_CONSTRUCTED | 3, &wrapper) ||
         !cbs_get_der(&wrapper, DER_SEQUENCE, extensions) || cbs_len(&wrapper) != 0))
        return 0;
    return cbs_len(&tbs) == 0;
}

/* Extension ::= SEQUENCE { extnID OID, critical BOOLEAN DEFAULT FALSE, extnValue OCTET STRING }. Like OpenSSL
 * and mbedTLS, any non-zero BOOLEAN is true and an explicit FALSE is accepted. */
static int get_extension(cbs *extensions, cbs *oid, int *critical, cbs *value) {
    cbs ext, flag;
    *critical = 0;
    if (!cbs_get_der(extensions, DER_SEQUENCE, &ext) || !cbs_get_der(&ext, DER_OID, oid)) return 0;
    if (cbs_peek_der_tag(&ext, DER_BOOLEAN)) {
        if (!cbs_get_der(&ext, DER_BOOLEAN, &flag) || cbs_len(&flag) != 1) return 0;
        *critical = cbs_data(&flag)[0] != 0;
    }
    return cbs_get_der(&ext, DER_OCTET_STRING, value) && cbs_len(&ext) == 0;
}

/* OpenSSL reads BER too; RA-TLS evidence is read from the DER. */
static int not_der(char *msg, size_t msg_len) {
    return ratls_fail(msg, msg_len, RATLS_ERR_CERT_MALFORMED,
                      "not a DER X.509 certificate (BER: an indefinite or non-minimal length, or a constructed "
                      "string)");
}

static int is_oid(const cbs *oid, const uint8_t *content, size_t len) {
    return cbs_len(oid) == len && memcmp(cbs_data(oid), content, len) == 0;
}


/* Which TEE a quote's header names (rats-tls src/core/dice.c:100-129): SGX for version 3, or 4 and 5 with tee_type
 * 0; TDX for tee_type 0x81. Anything else is left to the quote parser, the one home of what a valid quote is. */
static int quote_tee(cbs quote) {
    uint16_t version, key_type;
    uint32_t tee_type;
    if (!cbs_get_u16le(&quote, &version) || !cbs_get_u16le(&quote, &key_type) || !cbs_get_u32le(&quote, &tee_type))
        return RATLS_TEE_UNKNOWN;
    if (version == 3) return RATLS_TEE_SGX;
    if (version != 4 && version != 5) return RATLS_TEE_UNKNOWN;
    return tee_type == TEE_TYPE_SGX ? RATLS_TEE_SGX : tee_type == TEE_TYPE_TDX ? RATLS_TEE_TDX : RATLS_TEE_UNKNOWN;
}

static int is_text(const cbs *s, const char *text) {
    return cbs_len(s) == strlen(text) && memcmp(cbs_data(s), text, cbs_len(s)) == 0;
}

/* "pubkey-hash": bstr(serialized [uint alg, bstr hash]). */
static int parse_pubkey_hash(const uint8_t *der, cbs val, ratls_cert_info *out, char *msg, size_t msg_len) {
    uint8_t major;
    uint64_t n, alg;
    cbs hash;
    if (!cbor_get_head(&val, &major, &n) || major != CBOR_ARRAY || n != 2 || !cbor_get_head(&val, &major, &alg) ||
        major != CBOR_UINT || !cbor_get_string(&val, CBOR_BYTES, &hash) || cbs_len(&val) != 0)
        return ratls_fail(msg, msg_len, RATLS_ERR_EVIDENCE_MALFORMED,
                          "DICE claims: pubkey-hash is not [uint alg, bstr hash]");
    size_t want = alg == HASH_ALG_SHA256 ? 32 : alg == HASH_ALG_SHA384 ? 48 : alg == HASH_ALG_SHA512 ? 64 : 0;
    if (!want || cbs_len(&hash) != want)
        return ratls_fail(msg, msg_len, RATLS_ERR_EVIDENCE_MALFORMED,
                          "DICE claims: pubkey-hash algorithm %llu with a %zu-byte hash is not supported "
                          "(expected 1/SHA-256, 7/SHA-384 or 8/SHA-512)",
                          (unsigned long long)alg, cbs_len(&hash));
    out->pubkey_hash_alg = (int)alg;
    out->pubkey_hash = span_in(der, &hash);
    return RATLS_OK;
}

/* The DICE evidence (ratls/PROTOCOL.md section 9): tag 60000 ( [ bstr quote, bstr claims ] ), with claims = a
 * serialized map of text keys holding "pubkey-hash" (a byte string, see parse_pubkey_hash) and any other claims,
 * whose values are skipped. Spans are made relative to `der`. */
static int parse_dice(const uint8_t *der, cbs value, ratls_cert_info *out, char *msg, size_t msg_len) {
    uint8_t major;
    uint64_t arg;
    cbs quote, claims;
    if (!cbor_get_head(&value, &major, &arg) || major != CBOR_TAG)
        return ratls_fail(msg, msg_len, RATLS_ERR_EVIDENCE_MALFORMED,
                          "DICE evidence: expected a CBOR tag (%d, TEE quote), found no tag", TEE_QUOTE_CBOR_TAG);
    if (arg == TEE_REPORT_CBOR_TAG || arg == SGX_REPORT_CBOR_TAG)
        return ratls_fail(msg, msg_len, RATLS_ERR_EVIDENCE_MALFORMED,
                          "DICE evidence: tag %llu is %s, MACed for its own platform only; a remote verifier needs "
                          "a quote (tag %d)",
                          (unsigned long long)arg,
                          arg == TEE_REPORT_CBOR_TAG ? "an Intel TEE report (TDX or SGX type 2)" : "a legacy SGX report",
                          TEE_QUOTE_CBOR_TAG);
    if (arg != TEE_QUOTE_CBOR_TAG)
        return ratls_fail(msg, msg_len, RATLS_ERR_EVIDENCE_MALFORMED,
                          "DICE evidence: CBOR tag %llu is not an evidence type this verifier knows (expected %d, "
                          "Intel TEE quote)",
                          (unsigned long long)arg, TEE_QUOTE_CBOR_TAG);
    if (!cbor_get_head(&value, &major, &arg) || major != CBOR_ARRAY || arg != 2 ||
        !cbor_get_string(&value, CBOR_BYTES, &quote) || !cbor_get_string(&value, CBOR_BYTES, &claims) ||
        cbs_len(&value) != 0)
        return ratls_fail(msg, msg_len, RATLS_ERR_EVIDENCE_MALFORMED,
                          "DICE evidence: expected exactly [bstr quote, bstr claims]");
    if (cbs_len(&quote) < SGX_QUOTE_MIN_SIZE || cbs_len(&quote) > SGX_QUOTE_MAX_SIZE)
        return ratls_fail(msg, msg_len, RATLS_ERR_EVIDENCE_MALFORMED,
                          "DICE evidence: quote is %zu bytes, expected %d..%d", cbs_len(&quote), SGX_QUOTE_MIN_SIZE,
                          SGX_QUOTE_MAX_SIZE);
    out->quote = span_in(der, &quote);
    out->claims = span_in(der, &claims);
    out->tee = quote_tee(quote);

    uint64_t pairs;
    if (!cbor_get_head(&claims, &major, &pairs) || major != CBOR_MAP || pairs == 0)
        return ratls_fail(msg, msg_len, RATLS_ERR_EVIDENCE_MALFORMED, "DICE claims: expected a non-empty map");
    int found = 0;
    for (uint64_t i = 0; i < pairs; i++) {
        cbs key, val;
        if (!cbor_get_string(&claims, CBOR_TEXT, &key))
            return ratls_fail(msg, msg_len, RATLS_ERR_EVIDENCE_MALFORMED,
                              "DICE claims: key of entry %llu is not a text string", (unsigned long long)i);
        if (!is_text(&key, PUBKEY_HASH_CLAIM)) {
            if (!cbor_skip(&claims, CBOR_MAX_DEPTH))
                return ratls_fail(msg, msg_len, RATLS_ERR_EVIDENCE_MALFORMED,
                                  "DICE claims: the value of entry %llu is not one well-formed definite-length CBOR "
                                  "item nested at most %d deep",
                                  (unsigned long long)i, CBOR_MAX_DEPTH);
            continue;
        }
        if (found++)
            return ratls_fail(msg, msg_len, RATLS_ERR_EVIDENCE_MALFORMED, "DICE claims: duplicate pubkey-hash");
        if (!cbor_get_string(&claims, CBOR_BYTES, &val))
            return ratls_fail(msg, msg_len, RATLS_ERR_EVIDENCE_MALFORMED,
                              "DICE claims: the pubkey-hash value is not a byte string");
        int rc = parse_pubkey_hash(der, val, out, msg, msg_len);
        if (rc != RATLS_OK) return rc;
    }
    if (cbs_len(&claims) != 0)
        return ratls_fail(msg, msg_len, RATLS_ERR_EVIDENCE_MALFORMED, "DICE claims: trailing bytes after the map");
    if (!found)
        return ratls_fail(msg, msg_len, RATLS_ERR_EVIDENCE_MALFORMED, "DICE claims: no pubkey-hash claim");
    return RATLS_OK;
}

int ratls_cert_parse(const uint8_t *der, size_t len, ratls_cert_info *out, X509 **x509, char *msg,
                     size_t msg_len) {
    memset(out, 0, sizeof *out);
    if (x509) *x509 = NULL;
    if (!der || len == 0) return ratls_fail(msg, msg_len, RATLS_ERR_CERT_MALFORMED, "empty certificate");
    if (len > RATLS_MAX_CERT_SIZE)
        return ratls_fail(msg, msg_len, RATLS_ERR_CERT_TOO_LARGE, "certificate is %zu bytes, at most %d allowed",
                          len, RATLS_MAX_CERT_SIZE);
    const unsigned char *p = der;
    X509 *x = d2i_X509(NULL, &p, (long)len);
    if (!x || p != der + len) {
        X509_free(x);
        ERR_clear_error(); /* our message says it; OpenSSL's queue would only hold the thread's memory */
        return ratls_fail(msg, msg_len, RATLS_ERR_CERT_MALFORMED, "not a DER X.509 certificate%s",
                          x ? " (trailing bytes)" : "");
    }
    int rc;
    cbs spki, extensions;
    if (!tbs_parts(der, len, &spki, &extensions)) {
        rc = not_der(msg, msg_len);
        goto fail;
    }
    ratls_sha256(der, len, out->cert_sha256);
    if (!ratls_asn1_time_to_unix(X509_get0_notBefore(x), &out->not_before) ||
        !ratls_asn1_time_to_unix(X509_get0_notAfter(x), &out->not_after)) {
        rc = ratls_fail(msg, msg_len, RATLS_ERR_CERT_MALFORMED, "unreadable certificate validity");
        goto fail;
    }
    EVP_PKEY *key = X509_get0_pubkey(x);
    if (!key_is_supported(key)) {
        rc = ratls_fail(msg, msg_len, RATLS_ERR_CERT_KEY_UNSUPPORTED,
                        "certificate key must be EC P-256 or P-384 (as Gramine's verifier requires)");
        goto fail;
    }
    out->spki = span_in(der, &spki);
    ratls_sha256(cbs_data(&spki), cbs_len(&spki), out->spki_sha256);

    struct {
        int present;
        cbs value;
    } legacy = {0}, dice = {0}, *slot;
    while (cbs_len(&extensions) > 0) {
        cbs oid, value;
        int critical;
        if (!get_extension(&extensions, &oid, &critical, &value)) {
            rc = not_der(msg, msg_len);
            goto fail;
        }
        if (is_oid(&oid, legacy_oid_content, sizeof legacy_oid_content))
            slot = &legacy;
        else if (is_oid(&oid, dice_oid_content, sizeof dice_oid_content))
            slot = &dice;
        else
            continue;
        const char *which = slot == &dice ? "DICE tagged-evidence (2.23.133.5.4.9)" : "legacy SGX quote";
        if (slot->present) {
            rc = ratls_fail(msg, msg_len, RATLS_ERR_EVIDENCE_MALFORMED, "the %s extension appears twice", which);
            goto fail;
        }
        if (critical) {
            rc = ratls_fail(msg, msg_len, RATLS_ERR_EVIDENCE_CRITICAL,
                            "the %s extension is marked critical; RA-TLS evidence must be non-critical", which);
            goto fail;
        }
        slot->present = 1;
        slot->value = value;
    }
    out->has_dice = dice.present;
    out->has_legacy = legacy.present;
    if (legacy.present) out->legacy_quote = span_in(der, &legacy.value);
    if (dice.present) {
        /* Gramine: DICE is preferred, and a present but invalid DICE extension is not rescued by the legacy one. */
        out->format = RATLS_FORMAT_DICE;
        if ((rc = parse_dice(der, dice.value, out, msg, msg_len)) != RATLS_OK) goto fail;
    } else if (legacy.present) {
        out->format = RATLS_FORMAT_LEGACY;
        size_t qlen = cbs_len(&legacy.value);
        if (qlen < LEGACY_QUOTE_MIN || qlen > SGX_QUOTE_MAX_SIZE) {
            rc = ratls_fail(msg, msg_len, RATLS_ERR_EVIDENCE_MALFORMED,
                            "legacy quote extension is %zu bytes, expected %d..%d", qlen, LEGACY_QUOTE_MIN,
                            SGX_QUOTE_MAX_SIZE);
            goto fail;
        }
        out->quote = out->legacy_quote;
        out->tee = quote_tee(legacy.value);
    } else {
        rc = ratls_fail(msg, msg_len, RATLS_ERR_EVIDENCE_MISSING,
                        "no RA-TLS evidence: neither the DICE 2.23.133.5.4.9 nor the legacy SGX quote extension");
        goto fail;
    }
    if (x509)
        *x509 = x;
    else
        X509_free(x);
    ERR_clear_error();
    return RATLS_OK;
fail:
    X509_free(x);
    ERR_clear_error();
    return rc;
}

int ratls_cert_inspect(const uint8_t *der, size_t len, ratls_cert_info *out, char *msg, size_t msg_len) {
    return ratls_cert_parse(der, len, out, NULL, msg, msg_len);
}

static const EVP_MD *hash_for_alg(int alg) {
    return alg == HASH_ALG_SHA256 ? EVP_sha256() : alg == HASH_ALG_SHA384 ? EVP_sha384() : EVP_sha512();
}

int ratls_cert_check_binding(const uint8_t *der, const ratls_cert_info *info, const uint8_t report_data[64],
                             char *msg, size_t msg_len) {
    uint8_t expected[32];
    char want[65], got[65];
    const char *what;
    if (info->format == RATLS_FORMAT_DICE) {
        uint8_t key_hash[64];
        unsigned int n = 0;
        if (!EVP_Digest(der + info->spki.off, info->spki.len, key_hash, &n, hash_for_alg(info->pubkey_hash_alg),
                        NULL))
            return ratls_fail(msg, msg_len, RATLS_ERR_INTERNAL, "hashing the public key failed");
        if (n != info->pubkey_hash.len || memcmp(key_hash, der + info->pubkey_hash.off, n) != 0)
            return ratls_fail(msg, msg_len, RATLS_ERR_REPORT_DATA_MISMATCH,
                              "DICE pubkey-hash claim does not match the certificate's public key");
        ratls_sha256(der + info->claims.off, info->claims.len, expected);
        what = "SHA-256 of the DICE claims";
    } else {
        memcpy(expected, info->spki_sha256, 32);
        what = "SHA-256 of the certificate's SubjectPublicKeyInfo";
    }
    /* Gramine compares the first 32 bytes only. */
    if (memcmp(report_data, expected, 32) != 0) {
        ratls_hex(expected, 32, want);
        ratls_hex(report_data, 32, got);
        return ratls_fail(msg, msg_len, RATLS_ERR_REPORT_DATA_MISMATCH,
                          "quote report_data does not bind the certificate key: expected %s (%s), found %s", want,
                          what, got);
    }
    return RATLS_OK;
}
