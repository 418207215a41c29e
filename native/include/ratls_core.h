/* The RA-TLS core: SGX quote parsing and verification, RA-TLS certificate parsing, policies, attestation
 * providers and the attestation handshake. This header is the whole C surface the Python binding sees:
 * native/binding/ffi_build.py feeds the part between the cffi markers to cffi's cdef, so that part stays
 * in the subset cffi parses (plain declarations, integer #defines, no includes or macros with arguments).
 *
 * Conventions: every function that can fail returns 0 (RATLS_OK) or a ratls_reason code and, when `msg` is
 * non-NULL, writes a NUL-terminated human sentence naming the field and the expected vs found value.
 * Buffers returned through uint8_t** are malloc'ed; release them with ratls_free. Nothing here keeps
 * global mutable state except the provider table (guarded by a lock). */
#ifndef RATLS_CORE_H
#define RATLS_CORE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* cffi-begin */

/* Stable reason codes. ratls/errors.py mirrors these names and values; a test checks that they agree. */
#define RATLS_OK 0
#define RATLS_ERR_INTERNAL 1
#define RATLS_ERR_BAD_ARGUMENT 2
#define RATLS_ERR_CERT_MALFORMED 10
#define RATLS_ERR_CERT_KEY_UNSUPPORTED 11
#define RATLS_ERR_CERT_SIGNATURE 12
#define RATLS_ERR_CERT_EXPIRED 13
#define RATLS_ERR_CERT_NOT_YET_VALID 14
#define RATLS_ERR_CERT_TOO_LARGE 15
#define RATLS_ERR_CHANNEL_CERT 16
/* A client without an RA-TLS certificate (one-way) at an attestation server that requires client attestation. */
#define RATLS_ERR_ATTESTATION_REQUIRED 17
#define RATLS_ERR_EVIDENCE_MISSING 20
#define RATLS_ERR_EVIDENCE_CRITICAL 21
#define RATLS_ERR_EVIDENCE_MALFORMED 22
#define RATLS_ERR_QUOTE_MALFORMED 30
#define RATLS_ERR_QUOTE_UNSUPPORTED_VERSION 31
#define RATLS_ERR_QUOTE_UNSUPPORTED_KEY_TYPE 32
#define RATLS_ERR_QUOTE_UNSUPPORTED_CERT_DATA 33
#define RATLS_ERR_PCK_CHAIN_MALFORMED 34
#define RATLS_ERR_PCK_CHAIN_UNTRUSTED 35
#define RATLS_ERR_QE_REPORT_SIGNATURE 36
#define RATLS_ERR_QE_REPORT_DATA 37
#define RATLS_ERR_QUOTE_SIGNATURE 38
#define RATLS_ERR_QE_VENDOR 39
#define RATLS_ERR_REPORT_DATA_MISMATCH 40
#define RATLS_ERR_ENCLAVE_ATTRIBUTES 41
#define RATLS_ERR_DEBUG_ENCLAVE 42
#define RATLS_ERR_SIMULATED_DENIED 43
#define RATLS_ERR_MRENCLAVE 44
#define RATLS_ERR_MRSIGNER 45
#define RATLS_ERR_ISV_PROD_ID 46
#define RATLS_ERR_ISV_SVN 47
#define RATLS_ERR_TCB_STATUS 48
#define RATLS_ERR_COLLATERAL 49
#define RATLS_ERR_POLICY 50
/* TDX (issue 21): the policy does not accept this TEE (an SGX-only policy and TDX evidence, or the reverse). */
#define RATLS_ERR_TEE_TYPE 51
#define RATLS_ERR_MRTD 52
#define RATLS_ERR_RTMR 53
/* The TDX module's measurement is not one the policy allows; a TEE_TCB_SVN component is below its minimum. */
#define RATLS_ERR_MRSEAM 54
#define RATLS_ERR_TEE_TCB_SVN 55
#define RATLS_ERR_PROVIDER 60
#define RATLS_ERR_HANDSHAKE 70
#define RATLS_ERR_TIMEOUT 71
#define RATLS_ERR_IO 72
/* The attestation server refused our certificate (ratls_attest_connect; its own reason code comes separately). */
#define RATLS_ERR_PEER_REFUSED 73

/* TCB status, Intel's names; UNKNOWN when no collateral was evaluated. Policies hold a bit mask 1<<status. */
#define RATLS_TCB_UNKNOWN 0
#define RATLS_TCB_UP_TO_DATE 1
#define RATLS_TCB_SW_HARDENING_NEEDED 2
#define RATLS_TCB_CONFIGURATION_NEEDED 3
#define RATLS_TCB_CONFIGURATION_AND_SW_HARDENING_NEEDED 4
#define RATLS_TCB_OUT_OF_DATE 5
#define RATLS_TCB_OUT_OF_DATE_CONFIGURATION_NEEDED 6
#define RATLS_TCB_REVOKED 7

/* Which root the PCK chain verified to. */
#define RATLS_ROOT_NONE 0
#define RATLS_ROOT_TRUSTED 1
#define RATLS_ROOT_SIMULATED 2

/* Which TEE a quote comes from; a policy holds a mask of them. */
#define RATLS_TEE_SGX 1
#define RATLS_TEE_TDX 2

/* Quote body types: v3 and v4 imply theirs, v5 names it (Intel TDX DCAP Quote Generation Library spec, quote v5). */
#define RATLS_BODY_SGX_REPORT 1
#define RATLS_BODY_TD_REPORT_10 2
#define RATLS_BODY_TD_REPORT_15 3

/* TDATTRIBUTES bit 0: the TD is debuggable (its memory and state are readable by the host). */
#define RATLS_TD_ATTRIBUTES_DEBUG 1

/* Where the quote in a certificate came from. */
#define RATLS_FORMAT_BARE_QUOTE 0
#define RATLS_FORMAT_DICE 1
#define RATLS_FORMAT_LEGACY 2

/* Which TEE a certificate's quote header names (ratls/PROTOCOL.md section 9); UNKNOWN is left to the quote
 * parser to refuse. */
#define RATLS_TEE_UNKNOWN 0
#define RATLS_TEE_SGX 1
#define RATLS_TEE_TDX 2

#define RATLS_MSG_SIZE 320
#define RATLS_MAX_CERT_SIZE 32768
#define RATLS_MAX_CHANNEL_CERT_SIZE 4096
#define RATLS_ADVISORIES_SIZE 512
/* A peer address as text, NUL included: "1.2.3.4:5678" or "[::1]:5678". */
#define RATLS_ADDR_SIZE 64

/* Enclave attributes flags (SGX ATTRIBUTES.flags). */
#define RATLS_SGX_FLAGS_INIT 1
#define RATLS_SGX_FLAGS_DEBUG 2
#define RATLS_SGX_FLAGS_MODE64BIT 4
#define RATLS_SGX_FLAGS_PROVISION_KEY 16
#define RATLS_SGX_FLAGS_EINITTOKEN_KEY 32

typedef struct {
    size_t off;
    size_t len;
} ratls_span;

/* A decoded 384-byte SGX report body (ISV enclave report or QE report). */
typedef struct {
    uint8_t cpu_svn[16];
    uint32_t misc_select;
    uint8_t isv_ext_prod_id[16];
    uint64_t flags;
    uint64_t xfrm;
    uint8_t mrenclave[32];
    uint8_t mrsigner[32];
    uint8_t config_id[64];
    uint16_t isv_prod_id;
    uint16_t isv_svn;
    uint16_t config_svn;
    uint8_t isv_family_id[16];
    uint8_t report_data[64];
} ratls_report_body;

/* A decoded TD report body: TD report 1.0 (584 bytes) or 1.5 (648 bytes: 1.0 + TEE_TCB_SVN2 + MRSERVICETD). */
typedef struct {
    uint8_t tee_tcb_svn[16];
    uint8_t mrseam[48];
    uint8_t mrsignerseam[48];
    uint64_t seam_attributes;
    uint64_t td_attributes;
    uint64_t xfam;
    uint8_t mrtd[48];
    uint8_t mrconfigid[48];
    uint8_t mrowner[48];
    uint8_t mrownerconfig[48];
    uint8_t rtmr[4][48];
    uint8_t report_data[64];
    uint8_t tee_tcb_svn2[16];   /* TD report 1.5 only, else zero */
    uint8_t mrservicetd[48];    /* TD report 1.5 only, else zero */
} ratls_td_report;

/* An ECDSA quote, parsed (all spans are offsets into the raw quote): SGX v3, or TDX v4 (TD report 1.0) or v5 (body
 * type 2 = TD report 1.0, 3 = TD report 1.5). A TDX quote keeps its QE report, QE signature, QE auth data and PCK
 * chain inside certification data of type 6 (QE report certification data); the spans point at them there. */
typedef struct {
    uint16_t version;
    uint16_t att_key_type;
    uint32_t tee_type;
    uint16_t qe_svn;
    uint16_t pce_svn;
    uint8_t qe_vendor_id[16];
    uint8_t user_data[20];
    int tee;                    /* RATLS_TEE_SGX (body) or RATLS_TEE_TDX (td) */
    uint16_t body_type;         /* RATLS_BODY_*: as given in a v5 quote, implied by v3 and v4 */
    ratls_report_body body;     /* SGX only, else zero */
    ratls_td_report td;         /* TDX only, else zero */
    ratls_report_body qe_report;
    ratls_span signed_region;   /* header (|| v5 body type and size) || body: what the attestation key signs */
    ratls_span isv_signature;   /* 64 B raw r||s */
    ratls_span attestation_key; /* 64 B raw X||Y */
    ratls_span qe_report_raw;   /* 384 B: what the PCK key signs */
    ratls_span qe_report_signature;
    ratls_span qe_auth_data;
    uint16_t cert_data_type;    /* of the data holding the PCK chain (inside type 6 for TDX) */
    ratls_span cert_data;
    size_t total_len;           /* bytes the quote occupies; trailing bytes beyond it are rejected */
} ratls_quote;

/* What a verifier learned about a peer. */
typedef struct {
    int root;                   /* RATLS_ROOT_* */
    int format;                 /* RATLS_FORMAT_* */
    uint8_t mrenclave[32];
    uint8_t mrsigner[32];
    uint16_t isv_prod_id;
    uint16_t isv_svn;
    uint64_t flags;
    uint64_t xfrm;
    uint8_t cpu_svn[16];
    uint16_t qe_svn;
    uint16_t pce_svn;
    uint8_t report_data[64];
    int tcb_status;             /* RATLS_TCB_* as evaluated by the caller's collateral, else UNKNOWN */
    uint8_t cert_sha256[32];    /* SHA-256 of the certificate DER (zero for a bare quote) */
    uint8_t spki_sha256[32];    /* SHA-256 of the certificate's SubjectPublicKeyInfo DER */
    int64_t not_before;         /* certificate validity, Unix seconds */
    int64_t not_after;
    char advisory_ids[RATLS_ADVISORIES_SIZE]; /* Intel advisory ids from the collateral, comma-separated, NUL-
                                               * terminated; empty without collateral */
    int tee;                    /* RATLS_TEE_SGX or RATLS_TEE_TDX; the SGX fields above are zero for TDX */
    uint8_t mrtd[48];           /* TDX only (zero for SGX), from the TD report */
    uint8_t rtmr[4][48];
    uint8_t mrseam[48];
    uint8_t mrsignerseam[48];
    uint64_t td_attributes;
    uint64_t xfam;
    uint8_t tee_tcb_svn[16];
} ratls_evidence;

/* Where the quote sits inside an RA-TLS certificate (spans into the certificate DER). */
typedef struct {
    int format;                 /* RATLS_FORMAT_DICE or RATLS_FORMAT_LEGACY */
    ratls_span quote;           /* the quote verification uses (DICE when present) */
    ratls_span legacy_quote;    /* the legacy extension's quote, when present */
    ratls_span claims;          /* DICE only: the claims buffer whose SHA-256 is the report_data */
    int pubkey_hash_alg;        /* DICE only: hash-alg-id of the "pubkey-hash" claim (1, 7 or 8) */
    ratls_span pubkey_hash;     /* DICE only: the claimed hash of the SubjectPublicKeyInfo */
    ratls_span spki;            /* the SubjectPublicKeyInfo DER */
    uint8_t spki_sha256[32];
    uint8_t cert_sha256[32];
    int64_t not_before;
    int64_t not_after;
    int has_legacy;             /* both may be present; DICE wins (no fallback when it is invalid) */
    int has_dice;
    int tee;                    /* RATLS_TEE_*: what the header of `quote` names, before any verification */
} ratls_cert_info;

typedef struct ratls_policy ratls_policy;

void ratls_free(void *p);
const char *ratls_reason_name(int reason);
const char *ratls_tcb_status_name(int status);
/* Intel SGX Root CA (PEM), the trust anchor of every real DCAP PCK chain; a new policy trusts it. */
const char *ratls_intel_root_ca_pem(void);

/* --- quotes (quote.c) --- */
/* Parses an SGX v3 or TDX v4/v5 quote (bounds-checked; trailing bytes rejected). */
int ratls_quote_parse(const uint8_t *raw, size_t len, ratls_quote *out, char *msg, size_t msg_len);
/* Checks the whole signature chain of a parsed quote: PCK chain to the policy's trusted or simulation root
 * (at time `now`), QE report signature, QE report_data binding of the attestation key, ISV signature.
 * Sets *root to the root the chain verified to. Applies no enclave policy. */
int ratls_quote_verify_signatures(const ratls_policy *policy, const uint8_t *raw, size_t len,
                                  const ratls_quote *q, int64_t now, int *root, char *msg, size_t msg_len);

/* --- certificates (cert.c) --- */
int ratls_cert_inspect(const uint8_t *der, size_t len, ratls_cert_info *out, char *msg, size_t msg_len);
/* The DICE-only layout (ratls/PROTOCOL.md section 9), what a TD presents: the 64-byte report_data a quote must
 * carry to bind the key (DER EC P-256 or P-384 private key, PKCS#8 or SEC1): SHA-256 of the DICE claims over the
 * key's SubjectPublicKeyInfo, then 32 zero bytes. */
int ratls_dice_report_data(const uint8_t *key_der, size_t key_len, uint8_t *report_data64, char *msg,
                           size_t msg_len);
/* The self-signed RA-TLS certificate of that key carrying `quote` (made over ratls_dice_report_data; SGX or TDX,
 * not parsed here: the verifier checks it) as DICE tagged evidence, without Gramine's legacy quote extension.
 * Validity in Unix seconds. */
int ratls_dice_cert_create(const uint8_t *key_der, size_t key_len, const uint8_t *quote, size_t quote_len,
                           int64_t not_before, int64_t not_after, uint8_t **der, size_t *der_len, char *msg,
                           size_t msg_len);

/* --- policy (policy.c). A policy is immutable once built and safe to share between threads. --- */
ratls_policy *ratls_policy_new(void);
void ratls_policy_free(ratls_policy *p);
int ratls_policy_add_mrenclave(ratls_policy *p, const uint8_t *mrenclave32);
int ratls_policy_add_mrsigner(ratls_policy *p, const uint8_t *mrsigner32);
void ratls_policy_set_isv_prod_id(ratls_policy *p, int32_t isv_prod_id);     /* -1 = any */
void ratls_policy_set_min_isv_svn(ratls_policy *p, int32_t min_isv_svn);     /* -1 = any */
void ratls_policy_set_allow_debug(ratls_policy *p, int allow);
void ratls_policy_set_allow_simulated(ratls_policy *p, int allow);
void ratls_policy_set_allowed_tcb_mask(ratls_policy *p, uint32_t mask);
/* Which TEEs' evidence the policy accepts: a mask of RATLS_TEE_* (a new policy: RATLS_TEE_SGX only). */
void ratls_policy_set_allowed_tees(ratls_policy *p, uint32_t mask);
int ratls_policy_add_mrtd(ratls_policy *p, const uint8_t *mrtd48);
/* An allowed value of RTMR[index] (0..3); no value for an index means any. */
int ratls_policy_add_rtmr(ratls_policy *p, unsigned index, const uint8_t *rtmr48);
/* An allowed MRSEAM (the TDX module's measurement); none means any. */
int ratls_policy_add_mrseam(ratls_policy *p, const uint8_t *mrseam48);
/* The minimum TEE_TCB_SVN, component by component (16 bytes); NULL: any. */
void ratls_policy_set_min_tee_tcb_svn(ratls_policy *p, const uint8_t *svn16);
int ratls_policy_set_trusted_root(ratls_policy *p, const uint8_t *der, size_t len, char *msg, size_t msg_len);
int ratls_policy_set_sim_root(ratls_policy *p, const uint8_t *der, size_t len, char *msg, size_t msg_len);

/* --- verification (verify.c) --- */
/* Full RA-TLS verification of a certificate: parse, self-signature, validity at `now`, evidence extraction
 * (DICE preferred), key binding, quote signature chain, enclave attributes, measurements, TCB status
 * (`tcb_status` is what the caller evaluated from collateral, RATLS_TCB_UNKNOWN without it). */
int ratls_verify_cert(const ratls_policy *policy, const uint8_t *der, size_t len, int64_t now, int tcb_status,
                      ratls_evidence *out, char *msg, size_t msg_len);
/* The same for a bare quote: no certificate, so no key binding and no validity. */
int ratls_verify_quote(const ratls_policy *policy, const uint8_t *raw, size_t len, int64_t now, int tcb_status,
                       ratls_evidence *out, char *msg, size_t msg_len);

/* --- Gramine's RA_TLS_* environment policy (policy.c), read with Gramine v1.8+ semantics --- */
typedef struct {
    int mrenclave_any;
    uint8_t mrenclave[32];
    int mrsigner_any;
    uint8_t mrsigner[32];
    int isv_prod_id_any;
    uint16_t isv_prod_id;
    int isv_svn_any;
    uint16_t isv_svn;
    int allow_outdated_tcb;
    int allow_hw_config_needed;
    int allow_sw_hardening_needed;
    int allow_debug_enclave;
} ratls_env_policy;
int ratls_env_policy_read(ratls_env_policy *out, char *msg, size_t msg_len);
uint32_t ratls_env_policy_tcb_mask(const ratls_env_policy *env);

/* --- attestation providers (provider.c): a library exporting Gramine's RA-TLS ABI, opened with dlopen --- */
typedef struct ratls_provider ratls_provider;
int ratls_provider_open(const char *attest_lib_path, ratls_provider **out, char *msg, size_t msg_len);
void ratls_provider_close(ratls_provider *p);
int ratls_provider_is_sim(const ratls_provider *p);
/* Only for the sim library: which CA directory and measurement its next certificates carry. */
int ratls_provider_sim_configure(ratls_provider *p, const char *ca_dir, const uint8_t *mrenclave32,
                                 uint16_t isv_prod_id, uint16_t isv_svn, int debug, int64_t not_before,
                                 int64_t not_after, char *msg, size_t msg_len);
/* Only for the sim library: its next certificates and quotes come from a simulated TD with this MRTD and RTMR0..3
 * (4 x 48 bytes), as TDX quotes of `version` 4 or 5, TDATTRIBUTES.DEBUG set if debug. */
int ratls_provider_sim_configure_tdx(ratls_provider *p, const char *ca_dir, const uint8_t *mrtd48,
                                     const uint8_t *rtmrs192, uint16_t version, int debug, int64_t not_before,
                                     int64_t not_after, char *msg, size_t msg_len);
/* Only for the sim library: a quote over report_data (64 bytes) from the configured enclave or TD. */
int ratls_provider_sim_quote(ratls_provider *p, const uint8_t *report_data64, uint8_t **quote, size_t *quote_len,
                             char *msg, size_t msg_len);
int ratls_provider_create(ratls_provider *p, uint8_t **key_der, size_t *key_len, uint8_t **crt_der,
                          size_t *crt_len, char *msg, size_t msg_len);

/* --- attestation handshake (attest.c) --- */
/* A TLS 1.3 endpoint where both sides present RA-TLS certificates and both sides' certificate-verify callbacks
 * run ratls_verify_cert against their local policy, then (when given) the TCB evaluator below. After the
 * handshake the client sends its channel certificate ("RATC" + u16 big-endian length + DER). The server checks it
 * (ratls_channel_cert_check) and either queues the client's certificate, channel certificate and evidence (popped
 * by the application) and then acknowledges, so a client that returned from ratls_attest_connect is already
 * visible to the server's application; or, when the client's certificate or channel certificate failed, tells the
 * client the reason code and closes. The wire protocol is specified in ratls/PROTOCOL.md.
 *
 * The channel certificate exists because gRPC's TLS stack (grpcio 1.85) cannot take a client certificate larger
 * than about 8.4 KB, and an RA-TLS certificate carrying its quote twice is larger. It is a small self-signed
 * certificate over the same key, without evidence, that the client presents on the gRPC port instead of its RA-TLS
 * certificate. It keeps the guarantee: the quote binds the key (report_data covers the hash of the SPKI), the
 * channel certificate has byte-for-byte that SPKI and is signed by that key, and gRPC's TLS handshake proves
 * possession of that key. */
typedef struct ratls_attest_server ratls_attest_server;

/* Evaluates the TCB status of a peer whose certificate passed every other check. Called from handshake threads,
 * possibly concurrently. Sets *tcb_status (RATLS_TCB_*) and writes the advisory ids (comma-separated,
 * NUL-terminated, at most advisories_len bytes) and returns RATLS_OK; or returns a reason code (normally
 * RATLS_ERR_COLLATERAL) with a message. */
typedef int (*ratls_tcb_evaluate_fn)(void *ctx, const uint8_t *cert_der, size_t cert_len, int64_t now,
                                     int *tcb_status, char *advisories, size_t advisories_len, char *msg, size_t msg_len);
/* A collateral evaluator for the attestation handshake: evaluate(ctx, ...) runs inside the certificate-verify
 * callback, after ratls_verify_cert (with RATLS_TCB_UNKNOWN) found nothing but the TCB status to object to, and
 * before the peer is queued (server) or returned (client). The policy's TCB rule is then applied to the status it
 * reports. `ctx` must stay valid while the server runs (server) or for the call (client). */
typedef struct { ratls_tcb_evaluate_fn evaluate; void *ctx; } ratls_tcb_evaluator;

/* The channel certificate of an RA-TLS identity: a self-signed X.509 v3 certificate over the same key (the
 * SubjectPublicKeyInfo copied byte for byte), subject and issuer CN=RATLS-<16 hex of SHA-256(SPKI)>-channel, a
 * random serial, the RA-TLS certificate's validity, no extensions, signed with ECDSA (SHA-256 for P-256, SHA-384
 * for P-384). key_der is the DER private key of cert_der (an RA-TLS certificate, or any certificate of that key).
 * Returns the DER (malloc'ed; at most RATLS_MAX_CHANNEL_CERT_SIZE bytes). */
int ratls_channel_cert_create(const uint8_t *key_der, size_t key_len, const uint8_t *cert_der, size_t cert_len,
                              uint8_t **channel_der, size_t *channel_len, char *msg, size_t msg_len);
/* What the attestation server checks of a client's channel certificate, in this order (RATLS_ERR_CHANNEL_CERT for
 * every failure): 1..RATLS_MAX_CHANNEL_CERT_SIZE bytes; one DER X.509 certificate and nothing after it, with an EC
 * P-256 or P-384 key and no RA-TLS evidence extension; its SubjectPublicKeyInfo byte-equal to the one of
 * attested_der (the RA-TLS certificate that passed verification; RATLS_ERR_BAD_ARGUMENT if it does not parse; NULL
 * for an unattested client, whose channel certificate is then checked against its own key);
 * subject and issuer exactly CN=RATLS-<16 hex of SHA-256(SPKI)>-channel; its signature verifies with that key;
 * notBefore <= now <= notAfter. */
int ratls_channel_cert_check(const uint8_t *attested_der, size_t attested_len, const uint8_t *channel_der,
                             size_t channel_len, int64_t now, char *msg, size_t msg_len);

/* Bounds of an attestation server; a zero field takes the default given in brackets. */
typedef struct {
    uint32_t handshake_timeout_ms; /* per connection, handshake and acknowledgement [5000, max 600000] */
    uint32_t max_concurrent;       /* handshakes served at once, one worker thread each [8, max 256] */
    uint32_t max_cert_size;        /* largest peer certificate accepted, DER bytes [RATLS_MAX_CERT_SIZE] */
    uint32_t max_pending;          /* attested peers queued for the application; oldest dropped beyond [1024] */
    uint32_t trust_ttl_s;          /* how long the application trusts an attested peer; told to it [3600] */
    uint32_t hello_timeout_ms;     /* a new connection's ClientHello must arrive within this; until it has, the
                                    * connection waits without a worker [min(1000, handshake_timeout_ms)] */
    uint32_t max_waiting;          /* connections waiting for their ClientHello; more are closed [1024] */
    uint32_t max_per_source;       /* of them, from one source address [32] */
    uint32_t max_refusals;         /* refusal records kept for the application; oldest dropped beyond [256] */
    uint32_t allow_unattested;     /* 1: a client that presents no certificate (one-way attestation: it attests us,
                                    * we do not attest it) is queued as unattested after its self-signed channel
                                    * certificate passed; 0: it is refused with RATLS_ERR_ATTESTATION_REQUIRED [0] */
} ratls_attest_limits;

typedef struct {
    uint64_t connections;          /* TCP connections accepted */
    uint64_t attested;             /* peers verified and queued */
    uint64_t unattested;           /* of them, clients queued without attestation (allow_unattested) */
    uint64_t rejected;             /* peers refused: their certificate failed RA-TLS verification, or their channel
                                    * certificate was missing, late or failed its checks */
    uint64_t failed;               /* other failed handshakes: not TLS 1.3, garbage, closed early, ... */
    uint64_t timed_out;            /* connections cut off by hello_timeout_ms or handshake_timeout_ms */
    uint64_t dropped;              /* attested peers dropped from a full queue */
    uint64_t refused;              /* of failed: closed at once, too many waiting (from their source) */
    uint64_t refusals_dropped;     /* refusal records dropped from a full queue (max_refusals) unpopped */
    uint32_t waiting;              /* connections waiting for their ClientHello now (no worker yet) */
    uint32_t in_flight;            /* connections being served now */
    uint32_t queued;               /* attested peers waiting to be popped */
    int last_rejection;            /* reason code of the latest rejected peer, 0 if none */
    char last_rejection_msg[RATLS_MSG_SIZE];
} ratls_attest_stats;

/* Listens on host:port (port 0 = ephemeral) with the given identity (DER EC private key, DER certificate) and
 * policy; the policy must outlive the server. `limits` may be NULL. `tcb` may be NULL (no collateral: every
 * client's TCB status is Unknown); otherwise the server keeps a copy of the struct, and its ctx must outlive the
 * server. */
int ratls_attest_server_start(const ratls_policy *policy, const uint8_t *key_der, size_t key_len,
                              const uint8_t *cert_der, size_t cert_len, const char *host, uint16_t port,
                              const ratls_attest_limits *limits, const ratls_tcb_evaluator *tcb,
                              ratls_attest_server **out, char *msg, size_t msg_len);
uint16_t ratls_attest_server_port(const ratls_attest_server *s);
/* The next attested client, waiting up to timeout_ms (0 = only look): its RA-TLS certificate DER (the one its
 * evidence came from: evidence->cert_sha256), its channel certificate DER (what it presents on the gRPC port), both
 * malloc'ed, and its evidence. An unattested client (only with limits.allow_unattested) has *cert_der NULL,
 * *cert_len 0 and an all-zero evidence: only its channel certificate is known. RATLS_ERR_TIMEOUT when there is
 * none. */
int ratls_attest_server_pop(ratls_attest_server *s, uint32_t timeout_ms, uint8_t **cert_der, size_t *cert_len,
                            uint8_t **channel_der, size_t *channel_len, ratls_evidence *evidence);
/* The next refusal record, waiting up to timeout_ms (0 = only look): every rejected client (each one `rejected`
 * counts: its certificate failed verification, collateral included, or its channel certificate was missing, late or
 * bad) is recorded, before its refusal is sent, with its address ("ip:port", IPv6 as "[ip]:port"; at most addr_len
 * bytes with the NUL), its reason code and the server's message (which the client is never told). At most
 * limits.max_refusals are kept; beyond that the oldest is dropped and counted (stats.refusals_dropped). Any output
 * may be NULL. RATLS_ERR_TIMEOUT when there is none. Must not be called concurrently with
 * ratls_attest_server_stop. */
int ratls_attest_server_pop_refusal(ratls_attest_server *s, uint32_t timeout_ms, char *addr, size_t addr_len,
                                    int *reason, char *msg, size_t msg_len);
void ratls_attest_server_stats(ratls_attest_server *s, ratls_attest_stats *out);
/* Stops accepting, cuts off handshakes in progress, joins the workers and frees the server. */
void ratls_attest_server_stop(ratls_attest_server *s);

/* Client side: connects to host:port, runs the handshake with our identity (key_der and cert_der both NULL: one-way,
 * no client certificate; the channel certificate is then self-signed by the client's own key and only a server that
 * allows unattested clients accepts it), verifies the server's certificate
 * under `policy` (with `tcb`, if not NULL, evaluating its TCB status), sends our channel certificate (channel_der:
 * 1..RATLS_MAX_CHANNEL_CERT_SIZE bytes, normally made by ratls_channel_cert_create; sent as given, the server
 * checks it) and waits for the server's acknowledgement, all within timeout_ms. Returns the server's certificate DER
 * (malloc'ed), its evidence and the server's trust TTL for us. A server that refuses our certificate ("RATN" + code)
 * gives RATLS_ERR_PEER_REFUSED with the message "the attestation server refused our certificate: <reason name>
 * (host:port)", and sets *peer_reason (if not NULL) to the server's reason code (as sent when it is at most INT_MAX,
 * else -1; 0 or a code this client does not know is still a refusal); *peer_reason is 0 on every other return. A
 * server certificate that fails verification gives its reason (the evaluator's, when the evaluator failed).
 * Writes go through OpenSSL's socket BIO: the calling process must ignore SIGPIPE (Python does). */
int ratls_attest_connect(const ratls_policy *policy, const uint8_t *key_der, size_t key_len,
                         const uint8_t *cert_der, size_t cert_len, const uint8_t *channel_der, size_t channel_len,
                         const char *host, uint16_t port,
                         uint32_t timeout_ms, const ratls_tcb_evaluator *tcb, uint8_t **peer_cert,
                         size_t *peer_cert_len, ratls_evidence *peer, uint32_t *trust_ttl_s, int *peer_reason,
                         char *msg, size_t msg_len);

/* cffi-end */

#ifdef __cplusplus
}
#endif
#endif
