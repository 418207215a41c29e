/* Small shared helpers of the core: error messages, hex, SHA-256, raw P-256/ECDSA conversions (the quote
 * format stores keys as X||Y and signatures as r||s, OpenSSL wants SEC1 points and DER signatures), ASN.1
 * time, reason and TCB-status names, and the shipped Intel SGX Root CA. OpenSSL 3 EVP APIs only. */
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

const uint8_t ratls_intel_qe_vendor_id[16] = {0x93, 0x9A, 0x72, 0x33, 0xF7, 0x9C, 0x4C, 0xA9,
                                              0x94, 0x0A, 0x0D, 0xB3, 0x95, 0x7F, 0x06, 0x07};

/* Byte-identical to shared/testdata/sgx/intel_sgx_root_ca.pem (checked by test_quote). */
static const char intel_root_ca_pem[] =
    "-----BEGIN CERTIFICATE-----\n"
    "MIICjzCCAjSgAwIBAgIUImUM1lqdNInzg7SVUr9QGzknBqwwCgYIKoZIzj0EAwIw\n"
    "aDEaMBgGA1UEAwwRSW50ZWwgU0dYIFJvb3QgQ0ExGjAYBgNVBAoMEUludGVsIENv\n"
    "cnBvcmF0aW9uMRQwEgYDVQQHDAtTYW50YSBDbGFyYTELMAkGA1UECAwCQ0ExCzAJ\n"
    "BgNVBAYTAlVTMB4XDTE4MDUyMTEwNDUxMFoXDTQ5MTIzMTIzNTk1OVowaDEaMBgG\n"
    "A1UEAwwRSW50ZWwgU0dYIFJvb3QgQ0ExGjAYBgNVBAoMEUludGVsIENvcnBvcmF0\n"
    "aW9uMRQwEgYDVQQHDAtTYW50YSBDbGFyYTELMAkGA1UECAwCQ0ExCzAJBgNVBAYT\n"
    "AlVTMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEC6nEwMDIYZOj/iPWsCzaEKi7\n"
    "1OiOSLRFhWGjbnBVJfVnkY4u3IjkDYYL0MxO4mqsyYjlBalTVYxFP2sJBK5zlKOB\n"
    "uzCBuDAfBgNVHSMEGDAWgBQiZQzWWp00ifODtJVSv1AbOScGrDBSBgNVHR8ESzBJ\n"
    "MEegRaBDhkFodHRwczovL2NlcnRpZmljYXRlcy50cnVzdGVkc2VydmljZXMuaW50\n"
    "ZWwuY29tL0ludGVsU0dYUm9vdENBLmRlcjAdBgNVHQ4EFgQUImUM1lqdNInzg7SV\n"
    "Ur9QGzknBqwwDgYDVR0PAQH/BAQDAgEGMBIGA1UdEwEB/wQIMAYBAf8CAQEwCgYI\n"
    "KoZIzj0EAwIDSQAwRgIhAOW/5QkR+S9CiSDcNoowLuPRLsWGf/Yi7GSX94BgwTwg\n"
    "AiEA4J0lrHoMs+Xo5o/sX6O9QWxHRAvZUGOdRQ7cvqRXaqI=\n"
    "-----END CERTIFICATE-----\n";

const char *ratls_intel_root_ca_pem(void) { return intel_root_ca_pem; }

void ratls_free(void *p) { free(p); }

int ratls_fail(char *msg, size_t msg_len, int code, const char *fmt, ...) {
    if (msg && msg_len) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, msg_len, fmt, ap);
        va_end(ap);
    }
    return code;
}

const char *ratls_reason_name(int reason) {
    switch (reason) {
#define NAME(x) \
    case RATLS_##x: return #x;
#define ERR_NAME(x) \
    case RATLS_ERR_##x: return #x;
        NAME(OK)
        ERR_NAME(INTERNAL)
        ERR_NAME(BAD_ARGUMENT)
        ERR_NAME(CERT_MALFORMED)
        ERR_NAME(CERT_KEY_UNSUPPORTED)
        ERR_NAME(CERT_SIGNATURE)
        ERR_NAME(CERT_EXPIRED)
        ERR_NAME(CERT_NOT_YET_VALID)
        ERR_NAME(CERT_TOO_LARGE)
        ERR_NAME(CHANNEL_CERT)
        ERR_NAME(ATTESTATION_REQUIRED)
        ERR_NAME(EVIDENCE_MISSING)
        ERR_NAME(EVIDENCE_CRITICAL)
        ERR_NAME(EVIDENCE_MALFORMED)
        ERR_NAME(QUOTE_MALFORMED)
        ERR_NAME(QUOTE_UNSUPPORTED_VERSION)
        ERR_NAME(QUOTE_UNSUPPORTED_KEY_TYPE)
        ERR_NAME(QUOTE_UNSUPPORTED_CERT_DATA)
        ERR_NAME(PCK_CHAIN_MALFORMED)
        ERR_NAME(PCK_CHAIN_UNTRUSTED)
        ERR_NAME(QE_REPORT_SIGNATURE)
        ERR_NAME(QE_REPORT_DATA)
        ERR_NAME(QUOTE_SIGNATURE)
        ERR_NAME(QE_VENDOR)
        ERR_NAME(REPORT_DATA_MISMATCH)
        ERR_NAME(ENCLAVE_ATTRIBUTES)
        ERR_NAME(DEBUG_ENCLAVE)
        ERR_NAME(SIMULATED_DENIED)
        ERR_NAME(MRENCLAVE)
        ERR_NAME(MRSIGNER)
        ERR_NAME(ISV_PROD_ID)
        ERR_NAME(ISV_SVN)
        ERR_NAME(TCB_STATUS)
        ERR_NAME(COLLATERAL)
        ERR_NAME(POLICY)
        ERR_NAME(TEE_TYPE)
        ERR_NAME(MRTD)
        ERR_NAME(RTMR)
        ERR_NAME(MRSEAM)
        ERR_NAME(TEE_TCB_SVN)
        ERR_NAME(PROVIDER)
        ERR_NAME(HANDSHAKE)
        ERR_NAME(TIMEOUT)
        ERR_NAME(IO)
        ERR_NAME(PEER_REFUSED)
#undef NAME
#undef ERR_NAME
    default: return "UNKNOWN";
    }
}

const char *ratls_tcb_status_name(int status) {
    switch (status) {
    case RATLS_TCB_UP_TO_DATE: return "UpToDate";
    case RATLS_TCB_SW_HARDENING_NEEDED: return "SWHardeningNeeded";
    case RATLS_TCB_CONFIGURATION_NEEDED: return "ConfigurationNeeded";
    case RATLS_TCB_CONFIGURATION_AND_SW_HARDENING_NEEDED: return "ConfigurationAndSWHardeningNeeded";
    case RATLS_TCB_OUT_OF_DATE: return "OutOfDate";
    case RATLS_TCB_OUT_OF_DATE_CONFIGURATION_NEEDED: return "OutOfDateConfigurationNeeded";
    case RATLS_TCB_REVOKED: return "Revoked";
    default: return "Unknown";
    }
}

void ratls_hex(const uint8_t *data, size_t len, char *out) {
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < len; i++) {
        out[2 * i] = digits[data[i] >> 4];
        out[2 * i + 1] = digits[data[i] & 15];
    }
    out[2 * len] = '\0';
}

static int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

int ratls_unhex(const char *hex, uint8_t *out, size_t len) {
    /* The string must be exactly 2*len digits long: a longer or shorter value is a different value. */
    if (!hex || strnlen(hex, 2 * len + 1) != 2 * len) return 0;
    uint8_t tmp[64];
    uint8_t *dst = len <= sizeof(tmp) ? tmp : malloc(len);
    if (!dst) return 0;
    int ok = 1;
    for (size_t i = 0; i < len && ok; i++) {
        int hi = hex_digit(hex[2 * i]), lo = hex_digit(hex[2 * i + 1]);
        if (hi < 0 || lo < 0) ok = 0;
        else dst[i] = (uint8_t)(hi << 4 | lo);
    }
    /* Written only on success, so a bad value leaves `out` untouched. */
    if (ok && len) memcpy(out, dst, len);
    if (dst != tmp) free(dst);
    return ok;
}

int ratls_sha256(const void *data, size_t len, uint8_t out[32]) {
    unsigned int n = 0;
    return EVP_Digest(data, len, out, &n, EVP_sha256(), NULL) == 1 && n == 32;
}

EVP_PKEY *ratls_p256_from_raw(const uint8_t xy[64]) {
    uint8_t point[65];
    point[0] = 0x04; /* SEC1 uncompressed */
    memcpy(point + 1, xy, 64);
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, (char *)"prime256v1", 0),
        OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, point, sizeof(point)),
        OSSL_PARAM_construct_end(),
    };
    EVP_PKEY *key = NULL;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
    /* fromdata decodes the point with EC_POINT_oct2point, which rejects points not on the curve. */
    if (!ctx || EVP_PKEY_fromdata_init(ctx) != 1 || EVP_PKEY_fromdata(ctx, &key, EVP_PKEY_PUBLIC_KEY, params) != 1)
        key = NULL;
    EVP_PKEY_CTX_free(ctx);
    ERR_clear_error();
    return key;
}

int ratls_p256_to_raw(EVP_PKEY *key, uint8_t xy[64]) {
    char group[32];
    BIGNUM *x = NULL, *y = NULL;
    int ok = key && EVP_PKEY_is_a(key, "EC") &&
             EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group), NULL) == 1 &&
             strcmp(group, "prime256v1") == 0 && EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_EC_PUB_X, &x) == 1 &&
             EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_EC_PUB_Y, &y) == 1 && BN_bn2binpad(x, xy, 32) == 32 &&
             BN_bn2binpad(y, xy + 32, 32) == 32;
    BN_free(x);
    BN_free(y);
    ERR_clear_error();
    return ok;
}

int ratls_ecdsa_verify_raw(EVP_PKEY *key, const uint8_t *msg, size_t msg_len, const uint8_t *sig_rs, size_t n) {
    if (!key || n == 0 || n > 66) return -1;
    int result = -1, der_len;
    uint8_t *der = NULL;
    ECDSA_SIG *sig = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(sig_rs, (int)n, NULL), *s = BN_bin2bn(sig_rs + n, (int)n, NULL);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    if (!sig || !r || !s || !md || ECDSA_SIG_set0(sig, r, s) != 1) goto done;
    r = s = NULL; /* owned by sig now */
    der_len = i2d_ECDSA_SIG(sig, &der);
    if (der_len <= 0 || EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, key) != 1) goto done;
    /* Any failure past this point is the signature's: a zero or out-of-range r/s is simply invalid. */
    result = EVP_DigestVerify(md, der, (size_t)der_len, msg, msg_len) == 1;
done:
    EVP_MD_CTX_free(md);
    OPENSSL_free(der);
    BN_free(r);
    BN_free(s);
    ECDSA_SIG_free(sig);
    ERR_clear_error();
    return result;
}

int ratls_ecdsa_sign_raw(EVP_PKEY *key, const uint8_t *msg, size_t msg_len, uint8_t *sig_rs, size_t n) {
    if (!key || n == 0 || n > 66) return 0;
    int ok = 0;
    uint8_t *der = NULL;
    size_t der_len = 0;
    const uint8_t *p;
    ECDSA_SIG *sig = NULL;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    if (!md || EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, key) != 1 ||
        EVP_DigestSign(md, NULL, &der_len, msg, msg_len) != 1 || !(der = OPENSSL_malloc(der_len)) ||
        EVP_DigestSign(md, der, &der_len, msg, msg_len) != 1)
        goto done;
    p = der;
    if (!(sig = d2i_ECDSA_SIG(NULL, &p, (long)der_len))) goto done;
    ok = BN_bn2binpad(ECDSA_SIG_get0_r(sig), sig_rs, (int)n) == (int)n &&
         BN_bn2binpad(ECDSA_SIG_get0_s(sig), sig_rs + n, (int)n) == (int)n;
done:
    ECDSA_SIG_free(sig);
    OPENSSL_free(der);
    EVP_MD_CTX_free(md);
    ERR_clear_error();
    return ok;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil): no timegm, no TZ. */
static int64_t days_from_civil(int64_t y, int64_t m, int64_t d) {
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

int ratls_asn1_time_to_unix(const ASN1_TIME *t, int64_t *out) {
    struct tm tm;
    if (!t || ASN1_TIME_to_tm(t, &tm) != 1) return 0;
    int64_t days = days_from_civil((int64_t)tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday);
    *out = days * 86400 + tm.tm_hour * 3600 + tm.tm_min * 60 + tm.tm_sec;
    return 1;
}
