/* Gramine's RA-TLS library ABI (tools/sgx/ra-tls/ra_tls.h, exported by ra_tls.map), declared from its
 * documented signatures and struct layout (sizeof(struct ra_tls_verify_callback_results) == 136 on x86-64).
 * Our simulated provider exports exactly this ABI, plus ratls_sim_configure. */
#ifndef RATLS_GRAMINE_ABI_H
#define RATLS_GRAMINE_ABI_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    RA_TLS_ATTESTATION_SCHEME_UNKNOWN = 0,
    RA_TLS_ATTESTATION_SCHEME_EPID = 1,
    RA_TLS_ATTESTATION_SCHEME_DCAP = 2,
} ra_tls_attestation_scheme_t;

typedef enum {
    AT_NONE = 0,
    AT_INIT = 1,
    AT_EXTRACT_QUOTE = 2,
    AT_VERIFY_EXTERNAL = 3,
    AT_VERIFY_ENCLAVE_ATTRS = 4,
    AT_VERIFY_ENCLAVE_MEASUREMENTS = 5,
} ra_tls_err_loc_t;

struct ra_tls_verify_callback_results {
    ra_tls_attestation_scheme_t attestation_scheme;
    ra_tls_err_loc_t err_loc;
    union {
        struct {
            int func_verify_quote_result;
            int quote_verification_result;
        } dcap;
        struct {
            char ias_enclave_quote_status[128];
        } epid;
        struct {
            char reserved[128];
        } misc;
    };
};

typedef int (*verify_measurements_cb_t)(const char* mrenclave, const char* mrsigner,
                                        const char* isv_prod_id, const char* isv_svn);

/* mbedTLS error codes Gramine's library returns (mbedtls/x509.h, error.h). */
#define RA_TLS_MBEDTLS_ERR_X509_INVALID_EXTENSIONS (-0x2500)
#define RA_TLS_MBEDTLS_ERR_X509_SIG_MISMATCH (-0x2680)
#define RA_TLS_MBEDTLS_ERR_X509_CERT_VERIFY_FAILED (-0x2700)
#define RA_TLS_MBEDTLS_ERR_X509_FILE_IO_ERROR (-0x2900)
#define RA_TLS_MBEDTLS_ERR_X509_BAD_INPUT_DATA (-0x2800)
#define RA_TLS_MBEDTLS_ERR_X509_INVALID_FORMAT (-0x2180)
#define RA_TLS_MBEDTLS_ERR_X509_FATAL_ERROR (-0x3000)

void ra_tls_set_measurement_callback(verify_measurements_cb_t f_cb);
int ra_tls_verify_callback_der(uint8_t* der_crt, size_t der_crt_size);
int ra_tls_verify_callback_extended_der(uint8_t* der_crt, size_t der_crt_size,
                                        struct ra_tls_verify_callback_results* results);
int ra_tls_create_key_and_crt_der(uint8_t** der_key, size_t* der_key_size, uint8_t** der_crt,
                                  size_t* der_crt_size);

/* Simulated provider only: the CA directory (made by `python -m ratls sim-ca init`) and the measurement
 * that the next certificates carry. Without a call, RATLS_SIM_CA_DIR and RATLS_SIM_MRENCLAVE (hex) are read
 * from the environment. Validity bounds are Unix seconds; 0 means the default (now - 1 h .. now + 365 d). */
int ratls_sim_configure(const char* ca_dir, const uint8_t* mrenclave32, uint16_t isv_prod_id,
                        uint16_t isv_svn, int debug, int64_t not_before, int64_t not_after,
                        char* msg, size_t msg_len);

#endif
