/* Definitions shared by the core's translation units; not part of the public API. */
#ifndef RATLS_INTERNAL_H
#define RATLS_INTERNAL_H

#include <openssl/evp.h>
#include <pthread.h>
#include <openssl/x509.h>

#include "bytes.h"
#include "ratls_core.h"

#define SGX_QUOTE_HEADER_SIZE 48
#define SGX_REPORT_BODY_SIZE 384
#define SGX_QUOTE_SIGNED_SIZE (SGX_QUOTE_HEADER_SIZE + SGX_REPORT_BODY_SIZE) /* 432 */
#define SGX_QUOTE_MIN_SIZE 436 /* signed region + signature_data_len */
#define SGX_QUOTE_MAX_SIZE 8192
#define SGX_QUOTE_VERSION_3 3
#define SGX_ATT_KEY_TYPE_ECDSA_P256 2
#define SGX_CERT_DATA_PCK_CHAIN 5
/* TDX quotes (Intel TDX DCAP Quote Generation Library spec; layouts also in dcap-qvl src/quote.rs). */
#define TDX_QUOTE_VERSION_4 4
#define TDX_QUOTE_VERSION_5 5
#define TDX_TEE_TYPE 0x81
#define TD_REPORT_10_SIZE 584
#define TD_REPORT_15_SIZE 648
#define CERT_DATA_QE_REPORT 6 /* QE report certification data: QE report, its signature, auth data, PCK chain */

extern const uint8_t ratls_intel_qe_vendor_id[16];

/* Platform evidence that verified under this policy's roots: the PCK chain, the QE report and its signature and the
 * attestation key are the same in every quote of one platform, so their checks (most of a quote's verification
 * time) run once per policy and window of validity; each quote's own ISV signature is always checked. */
#define RATLS_PCK_CACHE_SIZE 8
typedef struct {
    uint8_t platform_sha256[32]; /* of the quote bytes from the attestation key to the end */
    int root;
    int64_t valid_from, valid_until; /* intersection of the chain certificates' validity */
    EVP_PKEY *attestation_key;
} ratls_pck_cache_entry;

/* A set of allowed measurements of one size (32: MRENCLAVE, MRSIGNER; 48: MRTD, RTMR); empty = any. */
#define RATLS_DIGEST_MAX 48
typedef struct {
    uint8_t *values; /* n * size bytes */
    size_t n;
    size_t size;
} ratls_digest_set;

struct ratls_policy {
    ratls_digest_set mrenclaves;
    ratls_digest_set mrsigners;
    uint32_t tee_mask; /* RATLS_TEE_* accepted */
    ratls_digest_set mrtds;
    ratls_digest_set rtmrs[4];
    ratls_digest_set mrseams;
    int has_min_tee_tcb_svn;
    uint8_t min_tee_tcb_svn[16];
    int32_t isv_prod_id; /* -1 = any */
    int32_t min_isv_svn; /* -1 = any */
    int allow_debug;
    int allow_simulated;
    uint32_t tcb_mask;
    X509_STORE *trusted_store; /* NULL = trust nothing real */
    X509_STORE *sim_store;     /* NULL = no simulation root */
    /* Not part of what the policy says: a cache behind a lock, so a shared policy stays thread-safe. */
    pthread_mutex_t cache_lock;
    ratls_pck_cache_entry cache[RATLS_PCK_CACHE_SIZE];
    unsigned cache_next;
};

/* Forgets every cached PCK chain (the roots changed). */
void ratls_policy_clear_cache(ratls_policy *p);
/* The policy's TCB status rule (verify.c): RATLS_OK, or RATLS_ERR_TCB_STATUS with a message. The one home of that
 * check, used by verification and by the attestation handshake's collateral evaluation. */
int ratls_policy_check_tcb(const ratls_policy *p, int tcb_status, char *msg, size_t msg_len);

/* Writes a formatted message (if msg) and returns code; the one way errors are reported. */
int ratls_fail(char *msg, size_t msg_len, int code, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
void ratls_hex(const uint8_t *data, size_t len, char *out /* 2*len+1 */);
/* Parses exactly 2*len hex digits. Returns 1 on success. */
int ratls_unhex(const char *hex, uint8_t *out, size_t len);
int ratls_sha256(const void *data, size_t len, uint8_t out[32]);

/* P-256 public key from raw X||Y (64 B). NULL on a point not on the curve. */
EVP_PKEY *ratls_p256_from_raw(const uint8_t xy[64]);
/* ECDSA-SHA256 over msg with a raw r||s (2*n bytes) signature. 1 = valid, 0 = invalid, -1 = internal error. */
int ratls_ecdsa_verify_raw(EVP_PKEY *key, const uint8_t *msg, size_t msg_len, const uint8_t *sig_rs, size_t n);
/* ECDSA-SHA256 signature as raw r||s (each n bytes, big-endian). Returns 1 on success. */
int ratls_ecdsa_sign_raw(EVP_PKEY *key, const uint8_t *msg, size_t msg_len, uint8_t *sig_rs, size_t n);
int ratls_asn1_time_to_unix(const ASN1_TIME *t, int64_t *out);
/* Raw X||Y of a P-256 public key (64 B). Returns 1 on success. */
int ratls_p256_to_raw(EVP_PKEY *key, uint8_t xy[64]);

/* The 384-byte report body layout, in one place (quote.c). */
int ratls_report_body_decode(cbs *s, ratls_report_body *out);
int ratls_report_body_encode(cbb *b, const ratls_report_body *body);
/* The TD report layouts, in one place (quote.c): `size` is TD_REPORT_10_SIZE or TD_REPORT_15_SIZE. */
int ratls_td_report_decode(cbs *s, size_t size, ratls_td_report *out);
int ratls_td_report_encode(cbb *b, size_t size, const ratls_td_report *td);
/* The quote's 64-byte report_data (the ISV enclave's or the TD's). */
const uint8_t *ratls_quote_report_data(const ratls_quote *q);

/* RA-TLS certificate building (cert.c), Gramine's format: subject CN=RATLS-<16 hex of SHA-256(SPKI)>,
 * O=GramineDevelopers, C=US; serial 1; basicConstraints, SKI, AKI, then the legacy quote extension (if
 * legacy_quote) and the DICE tagged-evidence extension (if dice_quote); self-signed ECDSA-SHA256.
 * `get_quote` is asked for a quote over the given 64-byte report_data (the sim quoter or /dev/attestation). */
typedef int (*ratls_quote_fn)(void *ctx, const uint8_t report_data[64], uint8_t **quote, size_t *quote_len,
                              char *msg, size_t msg_len);
int ratls_cert_build(EVP_PKEY *key, int64_t not_before, int64_t not_after, ratls_quote_fn get_quote,
                     void *ctx, uint8_t **der, size_t *der_len, char *msg, size_t msg_len);
/* ratls_cert_inspect that also hands back the parsed certificate (caller frees with X509_free). */
int ratls_cert_parse(const uint8_t *der, size_t len, ratls_cert_info *out, X509 **x509, char *msg, size_t msg_len);
/* Checks that the quote's report_data binds the certificate key, the way Gramine does for info->format. */
int ratls_cert_check_binding(const uint8_t *der, const ratls_cert_info *info, const uint8_t report_data[64],
                             char *msg, size_t msg_len);
/* DER SubjectPublicKeyInfo of a key (malloc'ed). */
int ratls_spki_der(EVP_PKEY *key, uint8_t **der, size_t *len);

#endif
