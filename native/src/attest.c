/* The attestation handshake (ARCHITECTURE.md §4): a TLS 1.3 endpoint beside each RA-TLS gRPC server where both
 * sides present RA-TLS certificates and both sides' OpenSSL certificate-verify callbacks run the full RA-TLS
 * verification (ratls_verify_cert) against the local policy and then, when the side has a collateral evaluator
 * (ratls_tcb_evaluator), evaluate the peer's TCB status and apply the policy's TCB rule to it.
 *
 * Protocol (ratls/PROTOCOL.md): mutual TLS 1.3 handshake; the client sends its channel certificate ("RATC" + u16
 * big-endian length + DER, at most 4096 bytes); the server sends 8 bytes and closes: either the acknowledgement
 * "RAT1" + trust TTL in seconds (big-endian u32), or the refusal "RATN" + the reason code (ratls_reason, big-endian
 * u32) why the client's certificate or channel certificate failed. Server-side order: verify callback (the full
 * RA-TLS verification, collateral included) -> read RATC within the handshake deadline -> check it
 * (ratls_channel_cert_check) -> queue -> RAT1. The server queues the client's certificate, channel certificate and
 * evidence for the application *before* sending the acknowledgement, so a client that has read it knows the
 * server's trust set can already see it (in TLS 1.3 the client finishes its handshake before the server has
 * checked the client certificate, so the handshake alone does not tell the client it was accepted). A refused
 * client is counted (stats.rejected, last_rejection) and recorded for the application (its address, reason and
 * message: ratls_attest_server_pop_refusal) before its refusal is sent, and never queued; only the reason code goes
 * out, never the message, which can reveal the policy to an unverified party. The client reports a refusal as
 * RATLS_ERR_PEER_REFUSED with the server's reason code beside it. Every verdict of the
 * server's verify callback travels as a refusal, including the chain-shape and size checks it makes before
 * verification; what OpenSSL itself refuses (no client certificate, a Certificate message beyond max_cert_size
 * plus framing, a bad CertificateVerify, not TLS 1.3) still aborts the handshake with a TLS alert. The client
 * aborts with an alert when the server's certificate fails its own checks. After its reply the server half-closes
 * and reads until the client closes (bounded), so that bytes it did not read cannot turn its close into a TCP
 * reset that destroys the reply before the client has read it.
 *
 * Why a channel certificate: gRPC's TLS stack (grpcio 1.85.1, measured) fails mutual TLS when the client
 * certificate is larger than about 8.4 KB DER (SSL_ERROR_WANT_WRITE, "Wrap failed"), and RA-TLS certificates carry
 * the quote twice (legacy OID and DICE) and are larger: ~8.7 KB for sim, 10 KB for Gramine's. So on the gRPC port
 * a client presents a small self-signed certificate over the same key instead (ratls_channel_cert_create). The
 * guarantee is unchanged: the quote binds the key (report_data binds the hash of the SPKI), the channel
 * certificate has byte-for-byte that SPKI and a signature by that key (checked here before the client is
 * queued), and gRPC's TLS handshake proves possession of that key.
 *
 * The server owns its listening socket, a gate thread and a fixed pool of worker threads. The gate accepts
 * connections and holds them, costing no worker, until a whole first TLS record (the ClientHello) is readable;
 * a connection whose ClientHello has not come within hello_timeout_ms is closed, and a source address may have
 * at most max_per_source connections waiting, so idle or slowly dripping peers cannot take the workers. A worker
 * serves one connection at a time under an absolute deadline (handshake_timeout_ms).
 *
 * Workers call into the application at one point only: the collateral evaluator, from inside the verify callback,
 * possibly from several workers at once (the client calls it on its own thread). It runs after every other check
 * of the peer's certificate passed and *before* the peer is trusted: the server queues the peer (and so lets the
 * application trust it) only after the TCB status the evaluator reported passed the policy, and the client returns
 * the server's certificate for pinning only then, so no peer is trusted or pinned before its TCB status passed.
 * Otherwise the application pops attested peers with ratls_attest_server_pop and refusal records with
 * ratls_attest_server_pop_refusal. The evaluator's running time counts
 * against the handshake deadline only once it returns: it must bound its own I/O. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "internal.h"

#define ACK_MAGIC "RAT1"     /* + trust TTL: the client was attested and queued */
#define REFUSAL_MAGIC "RATN" /* + reason code: the client's certificate failed; nothing was queued */
#define ACK_SIZE 8           /* of either */
#define CHANNEL_MAGIC "RATC" /* + u16 big-endian length + DER: the client's channel certificate, after the handshake */
#define CHANNEL_HEADER_SIZE 6
#define CHANNEL_CN_PREFIX "RATLS-"
#define CHANNEL_CN_SUFFIX "-channel"
/* "RATLS-" + 16 hex + "-channel" + NUL */
#define CHANNEL_CN_SIZE (sizeof CHANNEL_CN_PREFIX - 1 + 16 + sizeof CHANNEL_CN_SUFFIX)
/* A refusal for a channel certificate that did not come in time still goes out, within this much more. */
#define REPLY_GRACE_MS 200
/* After its reply the server reads (and drops) at most this much until the client closes: more than a channel
 * certificate message announcing the largest length a u16 can say, in TLS records. */
#define LINGER_MAX_BYTES (96u * 1024u)
#define DEFAULT_TIMEOUT_MS 5000u
#define DEFAULT_MAX_CONCURRENT 8u
#define DEFAULT_MAX_PENDING 1024u
#define DEFAULT_TRUST_TTL_S 3600u
#define DEFAULT_HELLO_TIMEOUT_MS 1000u
#define DEFAULT_MAX_WAITING 1024u
#define DEFAULT_MAX_PER_SOURCE 32u
#define DEFAULT_MAX_REFUSALS 256u
#define MAX_REFUSALS_LIMIT 65536u
#define MAX_WAITING_LIMIT 65536u
/* The largest TLS record the gate waits for: 2^14 plaintext bytes plus the most expansion TLS allows. */
#define MAX_TLS_RECORD (16384u + 2048u)
#define MAX_TIMEOUT_MS 600000u
#define MAX_CONCURRENT_LIMIT 256u
#define MAX_PENDING_LIMIT 1000000u
#define MAX_CERT_SIZE_LIMIT (1u << 20)
/* TLS 1.3 Certificate message framing around one certificate: context, list and entry lengths, extensions. */
#define CERT_MSG_OVERHEAD 64

/* What one handshake's verify callback decided about the peer. */
typedef struct {
    ratls_attest_server *server; /* NULL on the client side */
    const ratls_policy *policy;
    const ratls_tcb_evaluator *tcb; /* NULL: no collateral, TCB status Unknown */
    size_t max_cert_size;
    int verdict; /* -1 = callback not run, 0 = verified, else the ratls reason code */
    uint8_t *der;
    size_t der_len;
    ratls_evidence evidence;
    char msg[RATLS_MSG_SIZE];
    char addr[RATLS_ADDR_SIZE]; /* the server's: the client's address, for its refusal record */
} peer_check;

/* A rejected client, for the application (ratls_attest_server_pop_refusal). */
typedef struct refusal_record {
    struct refusal_record *next;
    int reason;
    char addr[RATLS_ADDR_SIZE];
    char msg[RATLS_MSG_SIZE];
} refusal_record;

typedef struct attested_peer {
    struct attested_peer *next;
    uint8_t *der; /* the RA-TLS certificate that was verified */
    size_t der_len;
    uint8_t *channel; /* the channel certificate that was checked against it */
    size_t channel_len;
    ratls_evidence evidence;
} attested_peer;

/* A connection the gate holds until its ClientHello is in. */
typedef struct {
    int fd; /* -1: free slot */
    int64_t deadline;
    int hello_in; /* the whole first record is readable; waits for room in the ready queue */
    struct sockaddr_storage source;
} waiting_conn;

struct ratls_attest_server {
    const ratls_policy *policy;
    ratls_tcb_evaluator tcb; /* the application's evaluator (copied), if has_tcb */
    int has_tcb;
    ratls_attest_limits limits;
    SSL_CTX *ctx;
    int listen_fd;
    int stop_fd; /* eventfd: readable once stop is requested, wakes every poll */
    int epoll_fd; /* the gate's */
    uint16_t port;
    pthread_t gate;
    int gate_started;
    pthread_t *workers;
    uint32_t n_workers;
    waiting_conn *waiting; /* the gate's own: max_waiting slots */

    pthread_mutex_t lock; /* guards everything below */
    pthread_cond_t queued;
    pthread_cond_t ready_cond;
    pthread_cond_t refusal_cond;
    int stopping;
    int *ready; /* ring of connections whose ClientHello is in, for the workers: ready_cap slots */
    uint32_t ready_cap, ready_head, ready_len;
    attested_peer *head, *tail;
    uint32_t n_queued;
    refusal_record *refusals_head, *refusals_tail;
    uint32_t n_refusals;
    ratls_attest_stats stats;
};

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void peer_check_clear(peer_check *pc) {
    free(pc->der);
    pc->der = NULL;
    pc->der_len = 0;
}

static void record_rejection(ratls_attest_server *s, const peer_check *pc);

/* The collateral evaluator on a peer whose certificate passed every check but (perhaps) the TCB status: on
 * success the evidence gets the evaluated status and advisories and the verdict is the policy's TCB rule applied
 * to that status; on failure the verdict is the evaluator's reason. */
static void evaluate_tcb(peer_check *pc, int64_t now) {
    char *advisories = pc->evidence.advisory_ids;
    char emsg[RATLS_MSG_SIZE] = "";
    int status = -1; /* an evaluator that returns OK without setting it fails below */
    memset(advisories, 0, RATLS_ADVISORIES_SIZE);
    int rc = pc->tcb->evaluate(pc->tcb->ctx, pc->der, pc->der_len, now, &status, advisories, RATLS_ADVISORIES_SIZE,
                               emsg, sizeof emsg);
    advisories[RATLS_ADVISORIES_SIZE - 1] = '\0'; /* whatever the evaluator wrote */
    emsg[sizeof emsg - 1] = '\0';
    if (rc != RATLS_OK) {
        memset(advisories, 0, RATLS_ADVISORIES_SIZE);
        pc->verdict = ratls_fail(pc->msg, sizeof pc->msg, rc > 0 ? rc : RATLS_ERR_COLLATERAL,
                                 "collateral evaluation failed: %s", emsg[0] ? emsg : "(no message)");
    } else if (status < RATLS_TCB_UNKNOWN || status > RATLS_TCB_REVOKED) {
        memset(advisories, 0, RATLS_ADVISORIES_SIZE);
        pc->verdict = ratls_fail(pc->msg, sizeof pc->msg, RATLS_ERR_COLLATERAL,
                                 "collateral evaluation failed: the evaluator reported TCB status %d, which is not "
                                 "a RATLS_TCB_* value", status);
    } else {
        pc->evidence.tcb_status = status;
        pc->verdict = ratls_policy_check_tcb(pc->policy, status, pc->msg, sizeof pc->msg);
    }
}

/* Replaces OpenSSL's chain building: the peer must send exactly one certificate, and that certificate must
 * pass the full RA-TLS verification (self-signature, validity, quote, key binding, policy), with the TCB status
 * from the collateral evaluator when there is one. The client aborts the handshake on a failure; the server
 * records it and lets the handshake finish, to send the client its refusal (serve_connection). */
static int verify_peer_cb(X509_STORE_CTX *store, void *unused) {
    (void)unused;
    SSL *ssl = X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx());
    peer_check *pc = ssl ? SSL_get_app_data(ssl) : NULL;
    X509 *leaf = X509_STORE_CTX_get0_cert(store);
    STACK_OF(X509) *sent = X509_STORE_CTX_get0_untrusted(store);
    if (!pc) return 0;
    peer_check_clear(pc);
    int n_sent = sent ? sk_X509_num(sent) : 1;
    int der_len = leaf ? i2d_X509(leaf, NULL) : -1;
    if (n_sent != 1) {
        pc->verdict = ratls_fail(pc->msg, sizeof pc->msg, RATLS_ERR_CERT_MALFORMED,
                                 "peer certificate chain: expected 1 self-signed RA-TLS certificate, found %d",
                                 n_sent);
    } else if (der_len <= 0) {
        pc->verdict = ratls_fail(pc->msg, sizeof pc->msg, RATLS_ERR_CERT_MALFORMED,
                                 "peer certificate: could not be re-encoded as DER");
    } else if ((size_t)der_len > pc->max_cert_size) {
        pc->verdict = ratls_fail(pc->msg, sizeof pc->msg, RATLS_ERR_CERT_TOO_LARGE,
                                 "peer certificate size: expected at most %zu bytes, found %d",
                                 pc->max_cert_size, der_len);
    } else if (!(pc->der = malloc((size_t)der_len))) {
        pc->verdict = ratls_fail(pc->msg, sizeof pc->msg, RATLS_ERR_INTERNAL, "out of memory");
    } else {
        uint8_t *p = pc->der;
        pc->der_len = (size_t)i2d_X509(leaf, &p);
        int64_t now = (int64_t)time(NULL);
        pc->verdict = ratls_verify_cert(pc->policy, pc->der, pc->der_len, now, RATLS_TCB_UNKNOWN, &pc->evidence,
                                        pc->msg, sizeof pc->msg);
        /* The TCB status is verification's last check: OK or TCB_STATUS means everything else passed. */
        if (pc->tcb && (pc->verdict == RATLS_OK || pc->verdict == RATLS_ERR_TCB_STATUS)) evaluate_tcb(pc, now);
    }
    if (pc->verdict == RATLS_OK) return 1;
    peer_check_clear(pc);
    if (pc->server) { /* counted before anything is sent; the refusal goes out once the handshake is done */
        record_rejection(pc->server, pc);
        return 1;
    }
    X509_STORE_CTX_set_error(store, X509_V_ERR_APPLICATION_VERIFICATION);
    return 0;
}

static SSL_CTX *make_ctx(int server, const ratls_policy *policy, const uint8_t *key_der, size_t key_len,
                         const uint8_t *cert_der, size_t cert_len, uint32_t max_cert_size, char *msg,
                         size_t msg_len) {
    /* A one-way client (no enclave) has neither: it presents no certificate. */
    int one_way = !server && !key_der && !cert_der;
    if (!policy || (!one_way && (!key_der || !cert_der || key_len == 0 || cert_len == 0 || key_len > LONG_MAX ||
                                 cert_len > LONG_MAX))) {
        ratls_fail(msg, msg_len, RATLS_ERR_BAD_ARGUMENT, "policy, key and certificate are required");
        return NULL;
    }
    SSL_CTX *ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
    const uint8_t *p = key_der;
    EVP_PKEY *key = one_way ? NULL : d2i_AutoPrivateKey(NULL, &p, (long)key_len);
    p = cert_der;
    X509 *cert = one_way ? NULL : d2i_X509(NULL, &p, (long)cert_len);
    const char *problem = NULL;
    if (!ctx) problem = "SSL_CTX_new failed";
    else if (!one_way && !key) problem = "own private key: not a DER EC private key";
    else if (!one_way && !cert) problem = "own certificate: not a DER X.509 certificate";
    else if (!SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) ||
             !SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION))
        problem = "TLS 1.3 is not available";
    else if (!one_way && (SSL_CTX_use_certificate(ctx, cert) != 1 || SSL_CTX_use_PrivateKey(ctx, key) != 1 ||
                          SSL_CTX_check_private_key(ctx) != 1))
        problem = "own certificate and private key do not match";
    if (problem) {
        ratls_fail(msg, msg_len, RATLS_ERR_BAD_ARGUMENT, "%s", problem);
        SSL_CTX_free(ctx);
        ctx = NULL;
    } else {
        /* The server asks for a certificate but does not make TLS fail without one: serve_connection refuses a
         * certificate-less client with a reason (ATTESTATION_REQUIRED), or takes it as unattested when allowed. */
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
        SSL_CTX_set_cert_verify_callback(ctx, verify_peer_cb, NULL);
        SSL_CTX_set_max_cert_list(ctx, (long)max_cert_size + CERT_MSG_OVERHEAD);
        /* One handshake per attestation: no resumption, which would skip the peer's certificate. */
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
        SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
        if (server) {
            SSL_CTX_set_num_tickets(ctx, 0);
            /* A client that half-closes without its channel certificate still gets its refusal: its EOF ends only
             * our reading (like a close_notify) instead of failing the connection. Every read is of an exact
             * length, so a truncation is still a refusal. */
            SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
        }
    }
    EVP_PKEY_free(key);
    X509_free(cert);
    ERR_clear_error();
    return ctx;
}

enum { IO_READY, IO_TIMEOUT, IO_STOPPED, IO_ERROR };

/* Waits until fd is readable/writable, the deadline passes or stop_fd (if >= 0) fires. */
static int wait_io(int fd, int want_write, int64_t deadline, int stop_fd) {
    for (;;) {
        int64_t left = deadline - now_ms();
        if (left <= 0) return IO_TIMEOUT;
        struct pollfd p[2] = {{fd, want_write ? POLLOUT : POLLIN, 0}, {stop_fd, POLLIN, 0}};
        int n = poll(p, stop_fd >= 0 ? 2 : 1, left > INT_MAX ? INT_MAX : (int)left);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return IO_ERROR;
        if (n == 0) return IO_TIMEOUT;
        if (stop_fd >= 0 && p[1].revents) return IO_STOPPED;
        return IO_READY; /* includes POLLHUP/POLLERR: the next TLS call reports them */
    }
}

enum { OP_ACCEPT, OP_CONNECT, OP_READ, OP_WRITE };

/* Runs one TLS operation on a non-blocking socket to completion. READ and WRITE transfer exactly `len`
 * bytes. Returns RATLS_OK, RATLS_ERR_TIMEOUT, RATLS_ERR_IO (stopped, socket error, or the server closing while we
 * connect) or RATLS_ERR_HANDSHAKE (TLS error; *tls_reason gets OpenSSL's reason string for the message). */
static int tls_run(SSL *ssl, int fd, int op, uint8_t *buf, size_t len, int64_t deadline, int stop_fd,
                   const char **tls_reason) {
    size_t done = 0;
    *tls_reason = NULL;
    for (;;) {
        ERR_clear_error();
        int r;
        switch (op) {
        case OP_ACCEPT: r = SSL_accept(ssl); break;
        case OP_CONNECT: r = SSL_connect(ssl); break;
        case OP_READ: r = SSL_read(ssl, buf + done, (int)(len - done)); break;
        default: r = SSL_write(ssl, buf + done, (int)(len - done)); break;
        }
        if (r > 0) {
            if (op == OP_ACCEPT || op == OP_CONNECT) return RATLS_OK;
            done += (size_t)r;
            if (done == len) return RATLS_OK;
            continue;
        }
        int e = SSL_get_error(ssl, r);
        int w;
        if (e == SSL_ERROR_WANT_READ) w = wait_io(fd, 0, deadline, stop_fd);
        else if (e == SSL_ERROR_WANT_WRITE) w = wait_io(fd, 1, deadline, stop_fd);
        else {
            unsigned long err = ERR_peek_last_error();
            int closed = e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL && !err) ||
                         (ERR_GET_LIB(err) == ERR_LIB_SSL && ERR_GET_REASON(err) == SSL_R_UNEXPECTED_EOF_WHILE_READING);
            if (closed && op == OP_CONNECT) {
                /* Closed before our side of the handshake was done and without an alert: the server went
                 * away (a restart, a full queue), which is worth retrying, not a verdict on us. */
                *tls_reason = "connection closed by peer";
                return RATLS_ERR_IO;
            }
            *tls_reason = err ? ERR_reason_error_string(err) : NULL;
            if (!*tls_reason) *tls_reason = e == SSL_ERROR_ZERO_RETURN || e == SSL_ERROR_SYSCALL
                                                ? "connection closed by peer" : "TLS error";
            return RATLS_ERR_HANDSHAKE;
        }
        if (w == IO_TIMEOUT) return RATLS_ERR_TIMEOUT;
        if (w != IO_READY) return RATLS_ERR_IO;
    }
}

/* ---------------------------------------------------------------- channel certificates */

/* The SubjectPublicKeyInfo element (tag and length included) where it lies in a DER certificate, by walking the
 * TBSCertificate (RFC 5280 4.1) in strict DER: the key is compared as the certificate's own bytes, not as
 * OpenSSL's re-encoding. 0 when the walk fails. */
static int spki_element(const uint8_t *der, size_t len, cbs *spki) {
    cbs in, cert, tbs, skipped;
    cbs_init(&in, der, len);
    if (!der || !cbs_get_der(&in, DER_SEQUENCE, &cert) || cbs_len(&in) != 0 ||
        !cbs_get_der(&cert, DER_SEQUENCE, &tbs))
        return 0;
    if (cbs_peek_der_tag(&tbs, DER_CONTEXT | DER_CONSTRUCTED | 0) && /* version */
        !cbs_get_der(&tbs, DER_CONTEXT | DER_CONSTRUCTED | 0, &skipped))
        return 0;
    if (!cbs_get_der(&tbs, DER_INTEGER, &skipped)) return 0; /* serialNumber */
    for (int i = 0; i < 4; i++)                               /* signature, issuer, validity, subject */
        if (!cbs_get_der(&tbs, DER_SEQUENCE, &skipped)) return 0;
    return cbs_get_der_element(&tbs, DER_SEQUENCE, spki);
}

/* CN=RATLS-<16 hex of SHA-256(SPKI)>-channel: unique per key like the RA-TLS certificate's CN, and different from it
 * (gRPC picks trust anchors by subject name). */
static void channel_common_name(const cbs *spki, char out[CHANNEL_CN_SIZE]) {
    uint8_t hash[32];
    ratls_sha256(cbs_data(spki), cbs_len(spki), hash);
    memcpy(out, CHANNEL_CN_PREFIX, sizeof CHANNEL_CN_PREFIX - 1);
    ratls_hex(hash, 8, out + sizeof CHANNEL_CN_PREFIX - 1);
    memcpy(out + sizeof CHANNEL_CN_PREFIX - 1 + 16, CHANNEL_CN_SUFFIX, sizeof CHANNEL_CN_SUFFIX);
}

int ratls_channel_cert_create(const uint8_t *key_der, size_t key_len, const uint8_t *cert_der, size_t cert_len,
                              uint8_t **channel_der, size_t *channel_len, char *msg, size_t msg_len) {
    if (!channel_der || !channel_len)
        return ratls_fail(msg, msg_len, RATLS_ERR_BAD_ARGUMENT, "channel_der and channel_len are required");
    *channel_der = NULL;
    *channel_len = 0;
    if (!key_der || !cert_der || key_len == 0 || cert_len == 0 || key_len > LONG_MAX || cert_len > LONG_MAX)
        return ratls_fail(msg, msg_len, RATLS_ERR_BAD_ARGUMENT, "a private key and its certificate are required");
    const uint8_t *p = key_der;
    EVP_PKEY *key = d2i_AutoPrivateKey(NULL, &p, (long)key_len);
    p = cert_der;
    X509 *cert = d2i_X509(NULL, &p, (long)cert_len);
    X509 *x = X509_new();
    uint64_t serial = 0;
    char cn[CHANNEL_CN_SIZE];
    cbs spki, made_spki;
    int rc = RATLS_OK, len = -1;
    if (!x) {
        rc = ratls_fail(msg, msg_len, RATLS_ERR_INTERNAL, "out of memory");
    } else if (!key || EVP_PKEY_get_base_id(key) != EVP_PKEY_EC) {
        rc = ratls_fail(msg, msg_len, RATLS_ERR_BAD_ARGUMENT, "private key: not a DER EC private key");
    } else if (!cert || p != cert_der + cert_len || !spki_element(cert_der, cert_len, &spki)) {
        rc = ratls_fail(msg, msg_len, RATLS_ERR_BAD_ARGUMENT, "certificate: not a DER X.509 certificate");
    } else if (X509_check_private_key(cert, key) != 1) {
        rc = ratls_fail(msg, msg_len, RATLS_ERR_BAD_ARGUMENT, "the private key is not the certificate's key");
    } else {
        channel_common_name(&spki, cn);
        X509_NAME *name = X509_get_subject_name(x);
        /* A random positive serial: a channel certificate made again for the same key is another certificate. */
        if (RAND_bytes((unsigned char *)&serial, sizeof serial) != 1) serial = (uint64_t)time(NULL);
        serial = (serial >> 1) | 1;
        int ok = X509_set_version(x, X509_VERSION_3) && ASN1_INTEGER_set_uint64(X509_get_serialNumber(x), serial) &&
                 X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1, -1, 0) &&
                 X509_set_issuer_name(x, name) && X509_set1_notBefore(x, X509_get0_notBefore(cert)) &&
                 X509_set1_notAfter(x, X509_get0_notAfter(cert)) && X509_set_pubkey(x, X509_get0_pubkey(cert)) &&
                 X509_sign(x, key, EVP_PKEY_get_bits(key) > 256 ? EVP_sha384() : EVP_sha256()) > 0;
        len = ok ? i2d_X509(x, NULL) : -1;
        if (len <= 0 || (size_t)len > RATLS_MAX_CHANNEL_CERT_SIZE) {
            rc = ratls_fail(msg, msg_len, RATLS_ERR_INTERNAL, "could not build the channel certificate");
        } else if (!(*channel_der = malloc((size_t)len))) {
            rc = ratls_fail(msg, msg_len, RATLS_ERR_INTERNAL, "out of memory");
        } else {
            uint8_t *out = *channel_der;
            *channel_len = (size_t)i2d_X509(x, &out);
            /* The server compares the key as bytes: a certificate whose key encoding OpenSSL does not reproduce
             * (which DER does not allow) gets no channel certificate rather than one the server refuses. */
            if (!spki_element(*channel_der, *channel_len, &made_spki) || cbs_len(&made_spki) != cbs_len(&spki) ||
                memcmp(cbs_data(&made_spki), cbs_data(&spki), cbs_len(&spki)) != 0) {
                rc = ratls_fail(msg, msg_len, RATLS_ERR_CERT_KEY_UNSUPPORTED,
                                "certificate: its SubjectPublicKeyInfo is not in the DER OpenSSL writes");
                free(*channel_der);
                *channel_der = NULL;
                *channel_len = 0;
            }
        }
    }
    X509_free(x);
    X509_free(cert);
    EVP_PKEY_free(key);
    ERR_clear_error();
    return rc;
}

int ratls_channel_cert_check(const uint8_t *attested_der, size_t attested_len, const uint8_t *channel_der,
                             size_t channel_len, int64_t now, char *msg, size_t msg_len) {
    cbs attested_spki, spki;
    if (attested_der && !spki_element(attested_der, attested_len, &attested_spki))
        return ratls_fail(msg, msg_len, RATLS_ERR_BAD_ARGUMENT, "attested certificate: not a DER X.509 certificate");
    if (!channel_der || channel_len == 0 || channel_len > RATLS_MAX_CHANNEL_CERT_SIZE)
        return ratls_fail(msg, msg_len, RATLS_ERR_CHANNEL_CERT, "channel certificate size: expected 1..%d bytes, "
                          "found %zu", RATLS_MAX_CHANNEL_CERT_SIZE, channel_der ? channel_len : 0);
    /* The parser of RA-TLS certificates: strict DER, one certificate and nothing after it, an EC P-256/P-384 key;
     * it reports EVIDENCE_MISSING for a certificate that passed all that and carries no evidence, as it must. */
    ratls_cert_info info;
    char why[RATLS_MSG_SIZE] = "";
    int rc = ratls_cert_parse(channel_der, channel_len, &info, NULL, why, sizeof why);
    if (rc == RATLS_OK)
        return ratls_fail(msg, msg_len, RATLS_ERR_CHANNEL_CERT,
                          "channel certificate: it carries RA-TLS evidence; a channel certificate carries none");
    if (rc != RATLS_ERR_EVIDENCE_MISSING)
        return ratls_fail(msg, msg_len, RATLS_ERR_CHANNEL_CERT, "channel certificate: %s", why);
    if (!spki_element(channel_der, channel_len, &spki))
        return ratls_fail(msg, msg_len, RATLS_ERR_CHANNEL_CERT, "channel certificate: not a DER X.509 certificate");
    if (attested_der && (cbs_len(&spki) != cbs_len(&attested_spki) ||
                         memcmp(cbs_data(&spki), cbs_data(&attested_spki), cbs_len(&spki)) != 0))
        return ratls_fail(msg, msg_len, RATLS_ERR_CHANNEL_CERT,
                          "channel certificate: its SubjectPublicKeyInfo is not the attested certificate's (another "
                          "key)");
    const uint8_t *p = channel_der;
    X509 *x = d2i_X509(NULL, &p, (long)channel_len);
    if (!x) {
        ERR_clear_error();
        return ratls_fail(msg, msg_len, RATLS_ERR_CHANNEL_CERT, "channel certificate: not a DER X.509 certificate");
    }
    char cn[CHANNEL_CN_SIZE];
    channel_common_name(&spki, cn);
    X509_NAME *subject = X509_get_subject_name(x);
    X509_NAME_ENTRY *entry = X509_NAME_entry_count(subject) == 1 ? X509_NAME_get_entry(subject, 0) : NULL;
    const ASN1_STRING *value = entry ? X509_NAME_ENTRY_get_data(entry) : NULL;
    int64_t not_before = 0, not_after = 0;
    if (!value || OBJ_obj2nid(X509_NAME_ENTRY_get_object(entry)) != NID_commonName ||
        (size_t)ASN1_STRING_length(value) != strlen(cn) || memcmp(ASN1_STRING_get0_data(value), cn, strlen(cn)) != 0 ||
        X509_NAME_cmp(subject, X509_get_issuer_name(x)) != 0)
        rc = ratls_fail(msg, msg_len, RATLS_ERR_CHANNEL_CERT,
                        "channel certificate: subject and issuer must both be exactly CN=%s", cn);
    else if (X509_verify(x, X509_get0_pubkey(x)) != 1)
        rc = ratls_fail(msg, msg_len, RATLS_ERR_CHANNEL_CERT,
                        "channel certificate: its signature does not verify with %s",
                        attested_der ? "the attested key" : "its own key");
    else if (!ratls_asn1_time_to_unix(X509_get0_notBefore(x), &not_before) ||
             !ratls_asn1_time_to_unix(X509_get0_notAfter(x), &not_after))
        rc = ratls_fail(msg, msg_len, RATLS_ERR_CHANNEL_CERT, "channel certificate: unreadable validity");
    else if (now < not_before)
        rc = ratls_fail(msg, msg_len, RATLS_ERR_CHANNEL_CERT,
                        "channel certificate: not valid before %lld, now is %lld", (long long)not_before,
                        (long long)now);
    else if (now > not_after)
        rc = ratls_fail(msg, msg_len, RATLS_ERR_CHANNEL_CERT, "channel certificate: expired at %lld, now is %lld",
                        (long long)not_after, (long long)now);
    else
        rc = RATLS_OK;
    X509_free(x);
    ERR_clear_error();
    return rc;
}

/* ---------------------------------------------------------------- server */

/* Counted and recorded before the refusal goes out, so a client that saw its refusal also sees it in the stats,
 * and the application can pop its record (address, reason, message). The record queue keeps the newest
 * max_refusals; a record that cannot be allocated counts as dropped. */
static void record_rejection(ratls_attest_server *s, const peer_check *pc) {
    refusal_record *r = calloc(1, sizeof *r);
    if (r) {
        r->reason = pc->verdict;
        snprintf(r->addr, sizeof r->addr, "%s", pc->addr[0] ? pc->addr : "unknown");
        snprintf(r->msg, sizeof r->msg, "%s", pc->msg);
    }
    pthread_mutex_lock(&s->lock);
    s->stats.rejected++;
    s->stats.last_rejection = pc->verdict;
    snprintf(s->stats.last_rejection_msg, sizeof s->stats.last_rejection_msg, "%s", pc->msg);
    if (!r) {
        s->stats.refusals_dropped++;
    } else {
        if (s->refusals_tail) s->refusals_tail->next = r;
        else s->refusals_head = r;
        s->refusals_tail = r;
        s->n_refusals++;
        if (s->n_refusals > s->limits.max_refusals) { /* the application is not popping: keep the newest */
            refusal_record *old = s->refusals_head;
            s->refusals_head = old->next;
            s->n_refusals--;
            s->stats.refusals_dropped++;
            free(old);
        }
        pthread_cond_signal(&s->refusal_cond);
    }
    pthread_mutex_unlock(&s->lock);
}

/* The client's address as "ip:port" ("[ip]:port" for IPv6), for its refusal record. */
static void peer_address(int fd, char *out, size_t out_len) {
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    char host[INET6_ADDRSTRLEN] = "";
    out[0] = '\0';
    if (getpeername(fd, (struct sockaddr *)&ss, &sl) != 0) return;
    if (ss.ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)&ss;
        if (inet_ntop(AF_INET, &a->sin_addr, host, sizeof host))
            snprintf(out, out_len, "%s:%u", host, (unsigned)ntohs(a->sin_port));
    } else if (ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&ss;
        if (inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host))
            snprintf(out, out_len, "[%s]:%u", host, (unsigned)ntohs(a->sin6_port));
    }
}

/* Takes the peer's certificate and its channel certificate (*channel) into the queue. */
static void enqueue(ratls_attest_server *s, peer_check *pc, uint8_t **channel, size_t channel_len) {
    attested_peer *e = calloc(1, sizeof *e);
    pthread_mutex_lock(&s->lock);
    if (!e) {
        s->stats.dropped++;
        pthread_mutex_unlock(&s->lock);
        return;
    }
    e->der = pc->der;
    e->der_len = pc->der_len;
    e->channel = *channel;
    e->channel_len = channel_len;
    e->evidence = pc->evidence;
    pc->der = NULL;
    pc->der_len = 0;
    *channel = NULL;
    if (s->tail) s->tail->next = e;
    else s->head = e;
    s->tail = e;
    s->n_queued++;
    s->stats.attested++;
    if (!e->der) s->stats.unattested++;
    if (s->n_queued > s->limits.max_pending) { /* the application is not popping: keep the newest */
        attested_peer *old = s->head;
        s->head = old->next;
        s->n_queued--;
        s->stats.dropped++;
        free(old->der);
        free(old->channel);
        free(old);
    }
    pthread_cond_signal(&s->queued);
    pthread_mutex_unlock(&s->lock);
}

static int stop_requested(const ratls_attest_server *s) {
    struct pollfd p = {s->stop_fd, POLLIN, 0};
    return poll(&p, 1, 0) == 1;
}

/* Reads the client's channel certificate message ("RATC" + u16 big-endian length + DER) by the deadline and checks
 * the certificate against the RA-TLS certificate the verify callback passed (pc->der). On success *channel holds it
 * (malloc'ed). On a failure pc->verdict becomes its reason (RATLS_ERR_CHANNEL_CERT) and the rejection is counted.
 * Returns 1 when the server is stopping instead (no verdict: the connection just ends), else 0. */
static int read_channel_cert(ratls_attest_server *s, SSL *ssl, int fd, peer_check *pc, int64_t deadline,
                             uint8_t **channel, size_t *channel_len) {
    uint8_t header[CHANNEL_HEADER_SIZE];
    const char *tls_reason = NULL;
    size_t len = 0;
    int rc = tls_run(ssl, fd, OP_READ, header, sizeof header, deadline, s->stop_fd, &tls_reason);
    if (rc == RATLS_OK) {
        len = (size_t)header[4] << 8 | header[5];
        if (memcmp(header, CHANNEL_MAGIC, 4) != 0)
            pc->verdict = ratls_fail(pc->msg, sizeof pc->msg, RATLS_ERR_CHANNEL_CERT,
                                     "channel certificate message: expected the magic \"%s\", found %02x %02x %02x "
                                     "%02x", CHANNEL_MAGIC, header[0], header[1], header[2], header[3]);
        else if (len == 0 || len > RATLS_MAX_CHANNEL_CERT_SIZE)
            pc->verdict = ratls_fail(pc->msg, sizeof pc->msg, RATLS_ERR_CHANNEL_CERT,
                                     "channel certificate length: expected 1..%d bytes, found %zu",
                                     RATLS_MAX_CHANNEL_CERT_SIZE, len);
        else if (!(*channel = malloc(len)))
            pc->verdict = ratls_fail(pc->msg, sizeof pc->msg, RATLS_ERR_INTERNAL, "out of memory");
        else
            rc = tls_run(ssl, fd, OP_READ, *channel, len, deadline, s->stop_fd, &tls_reason);
    }
    if (rc != RATLS_OK && stop_requested(s)) return 1;
    if (rc != RATLS_OK)
        pc->verdict = ratls_fail(pc->msg, sizeof pc->msg, RATLS_ERR_CHANNEL_CERT,
                                 "no channel certificate (RATC) from the client: %s",
                                 rc == RATLS_ERR_TIMEOUT ? "none before the handshake deadline"
                                 : tls_reason ? tls_reason : "I/O error");
    else if (pc->verdict == RATLS_OK)
        pc->verdict = ratls_channel_cert_check(pc->der, pc->der_len, *channel, len, (int64_t)time(NULL), pc->msg,
                                               sizeof pc->msg);
    if (pc->verdict == RATLS_OK) {
        *channel_len = len;
    } else {
        free(*channel);
        *channel = NULL;
        record_rejection(s, pc);
    }
    return 0;
}

/* After the reply: half-close, then read and drop what the client still sends until it closes (at most
 * LINGER_MAX_BYTES, by the deadline). Closing with unread bytes would send a TCP reset, and a reset can destroy the
 * reply in the client's receive buffer before the client has read it. */
static void linger_close(int fd, int64_t deadline, int stop_fd) {
    uint8_t sink[4096];
    size_t total = 0;
    shutdown(fd, SHUT_WR);
    while (total < LINGER_MAX_BYTES && wait_io(fd, 0, deadline, stop_fd) == IO_READY) {
        ssize_t n = recv(fd, sink, sizeof sink, MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) break;
        if (n > 0) total += (size_t)n;
    }
}

static void serve_connection(ratls_attest_server *s, int fd) {
    int64_t deadline = now_ms() + s->limits.handshake_timeout_ms;
    peer_check pc = {.server = s, .policy = s->policy, .tcb = s->has_tcb ? &s->tcb : NULL,
                     .max_cert_size = s->limits.max_cert_size, .verdict = -1};
    peer_address(fd, pc.addr, sizeof pc.addr);
    SSL *ssl = SSL_new(s->ctx);
    const char *tls_reason;
    int rc = RATLS_ERR_INTERNAL;
    if (ssl && SSL_set_fd(ssl, fd) == 1) {
        SSL_set_app_data(ssl, &pc);
        rc = tls_run(ssl, fd, OP_ACCEPT, NULL, 0, deadline, s->stop_fd, &tls_reason);
    }
    /* The verify callback runs whenever the client sent a certificate: no verdict means it sent none. */
    int unattested = rc == RATLS_OK && pc.verdict < 0 && !SSL_get0_peer_certificate(ssl);
    if (unattested && !s->limits.allow_unattested) {
        pc.verdict = ratls_fail(pc.msg, sizeof pc.msg, RATLS_ERR_ATTESTATION_REQUIRED,
                                "client sent no RA-TLS certificate, and this port requires client attestation");
        record_rejection(s, &pc);
    } else if (unattested) {
        pc.verdict = RATLS_OK; /* checked as an unattested client's: its channel certificate, against its own key */
    }
    if (rc == RATLS_OK && pc.verdict < 0) rc = RATLS_ERR_INTERNAL; /* cannot happen with VERIFY_PEER */
    uint8_t *channel = NULL;
    size_t channel_len = 0;
    /* The certificate passed (verify callback): its channel certificate next. A refusal already counted by the
     * verify callback goes out without waiting for it. */
    if (rc == RATLS_OK && pc.verdict == RATLS_OK &&
        read_channel_cert(s, ssl, fd, &pc, deadline, &channel, &channel_len))
        rc = RATLS_ERR_IO; /* stopping */
    if (rc == RATLS_OK) {
        /* Accepted: queued first, then acknowledged. Refused (counted): the reason code only, nothing queued. */
        uint8_t reply[ACK_SIZE];
        uint32_t word = htonl(pc.verdict == RATLS_OK ? s->limits.trust_ttl_s : (uint32_t)pc.verdict);
        memcpy(reply, pc.verdict == RATLS_OK ? ACK_MAGIC : REFUSAL_MAGIC, 4);
        memcpy(reply + 4, &word, 4);
        if (pc.verdict == RATLS_OK) enqueue(s, &pc, &channel, channel_len);
        int64_t reply_deadline = deadline > now_ms() + REPLY_GRACE_MS ? deadline : now_ms() + REPLY_GRACE_MS;
        if (tls_run(ssl, fd, OP_WRITE, reply, sizeof reply, reply_deadline, s->stop_fd, &tls_reason) == RATLS_OK) {
            SSL_shutdown(ssl); /* best effort close_notify; the client has what it needs */
            linger_close(fd, reply_deadline, s->stop_fd);
        }
    } else if (pc.verdict <= 0) { /* rejections were counted by the verify callback or read_channel_cert */
        pthread_mutex_lock(&s->lock);
        if (rc == RATLS_ERR_TIMEOUT) s->stats.timed_out++;
        else s->stats.failed++;
        pthread_mutex_unlock(&s->lock);
    }
    free(channel);
    peer_check_clear(&pc);
    SSL_free(ssl);
    close(fd);
}

static void *worker_main(void *arg) {
    ratls_attest_server *s = arg;
    for (;;) {
        pthread_mutex_lock(&s->lock);
        while (!s->stopping && !s->ready_len) pthread_cond_wait(&s->ready_cond, &s->lock);
        if (s->stopping) {
            pthread_mutex_unlock(&s->lock);
            break;
        }
        int fd = s->ready[s->ready_head];
        s->ready_head = (s->ready_head + 1) % s->ready_cap;
        s->ready_len--;
        s->stats.in_flight++;
        pthread_mutex_unlock(&s->lock);
        serve_connection(s, fd);
        pthread_mutex_lock(&s->lock);
        s->stats.in_flight--;
        pthread_mutex_unlock(&s->lock);
    }
    return NULL;
}

/* ---------------------------------------------------------------- the gate */

static int same_source(const struct sockaddr_storage *a, const struct sockaddr_storage *b) {
    if (a->ss_family != b->ss_family) return 0;
    if (a->ss_family == AF_INET)
        return memcmp(&((const struct sockaddr_in *)a)->sin_addr, &((const struct sockaddr_in *)b)->sin_addr,
                      sizeof(struct in_addr)) == 0;
    if (a->ss_family == AF_INET6)
        return memcmp(&((const struct sockaddr_in6 *)a)->sin6_addr, &((const struct sockaddr_in6 *)b)->sin6_addr,
                      sizeof(struct in6_addr)) == 0;
    return 1;
}

/* 1 when a whole first TLS record is readable, 0 when not yet, -1 when the peer closed or sent something that is
 * not a TLS handshake record (OpenSSL would only fail it). Reads nothing: the worker's OpenSSL reads it all. */
static int hello_state(int fd) {
    uint8_t header[5];
    ssize_t n = recv(fd, header, sizeof header, MSG_PEEK | MSG_DONTWAIT);
    if (n == 0) return -1;
    if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? 0 : -1;
    if (n < (ssize_t)sizeof header) return 0;
    size_t len = ((size_t)header[3] << 8) | header[4];
    if (header[0] != 22 /* handshake */ || len == 0 || len > MAX_TLS_RECORD) return -1;
    int available = 0;
    if (ioctl(fd, FIONREAD, &available) < 0) return -1;
    return (size_t)available >= sizeof header + len;
}

static void gate_close(ratls_attest_server *s, waiting_conn *w, uint64_t *counter) {
    epoll_ctl(s->epoll_fd, EPOLL_CTL_DEL, w->fd, NULL);
    close(w->fd);
    w->fd = -1;
    pthread_mutex_lock(&s->lock);
    (*counter)++;
    s->stats.waiting--;
    pthread_mutex_unlock(&s->lock);
}

/* Hands a connection whose ClientHello is in to the workers, if their queue has room (else it waits). */
static void gate_hand_over(ratls_attest_server *s, waiting_conn *w) {
    pthread_mutex_lock(&s->lock);
    if (s->ready_len == s->ready_cap) {
        pthread_mutex_unlock(&s->lock);
        w->hello_in = 1;
        return;
    }
    epoll_ctl(s->epoll_fd, EPOLL_CTL_DEL, w->fd, NULL);
    s->ready[(s->ready_head + s->ready_len) % s->ready_cap] = w->fd;
    s->ready_len++;
    s->stats.waiting--;
    pthread_cond_signal(&s->ready_cond);
    pthread_mutex_unlock(&s->lock);
    w->fd = -1;
    w->hello_in = 0;
}

static void gate_accept(ratls_attest_server *s) {
    for (;;) {
        struct sockaddr_storage source;
        socklen_t source_len = sizeof source;
        int fd = accept4(s->listen_fd, (struct sockaddr *)&source, &source_len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                /* Out of descriptors: back off instead of spinning on a listen socket that stays readable. */
                struct pollfd stop = {s->stop_fd, POLLIN, 0};
                poll(&stop, 1, 50);
            }
            return; /* EAGAIN: all accepted; ECONNABORTED etc.: the peer is gone */
        }
        uint32_t free_slot = s->limits.max_waiting, from_source = 0;
        for (uint32_t i = 0; i < s->limits.max_waiting; i++) {
            if (s->waiting[i].fd < 0) {
                if (free_slot == s->limits.max_waiting) free_slot = i;
            } else if (same_source(&s->waiting[i].source, &source)) {
                from_source++;
            }
        }
        pthread_mutex_lock(&s->lock);
        s->stats.connections++;
        int refuse = free_slot == s->limits.max_waiting || from_source >= s->limits.max_per_source;
        if (refuse) {
            s->stats.refused++;
            s->stats.failed++;
        } else {
            s->stats.waiting++;
        }
        pthread_mutex_unlock(&s->lock);
        if (refuse) {
            close(fd);
            continue;
        }
        waiting_conn *w = &s->waiting[free_slot];
        *w = (waiting_conn){.fd = fd, .deadline = now_ms() + s->limits.hello_timeout_ms, .source = source};
        /* Edge-triggered: a partial ClientHello wakes the gate again only when more of it arrives. */
        struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | EPOLLET, .data.u32 = free_slot};
        if (epoll_ctl(s->epoll_fd, EPOLL_CTL_ADD, fd, &ev) < 0) {
            close(fd);
            w->fd = -1;
            pthread_mutex_lock(&s->lock);
            s->stats.waiting--;
            s->stats.failed++;
            pthread_mutex_unlock(&s->lock);
            continue;
        }
        int state = hello_state(fd); /* it may all be in already */
        if (state > 0) gate_hand_over(s, w);
        else if (state < 0) gate_close(s, w, &s->stats.failed);
    }
}

static void *gate_main(void *arg) {
    ratls_attest_server *s = arg;
    struct epoll_event events[64];
    for (;;) {
        int64_t now = now_ms(), next = now + 1000;
        for (uint32_t i = 0; i < s->limits.max_waiting; i++) {
            waiting_conn *w = &s->waiting[i];
            if (w->fd < 0) continue;
            if (w->hello_in) gate_hand_over(s, w); /* the workers' queue may have room now */
            if (w->fd < 0) continue;
            if (w->deadline <= now) gate_close(s, w, &s->stats.timed_out);
            else if (w->deadline < next) next = w->deadline;
        }
        int n = epoll_wait(s->epoll_fd, events, (int)(sizeof events / sizeof events[0]), (int)(next - now));
        if (n < 0) {
            if (errno == EINTR) continue;
            break;
        }
        int stop = 0;
        for (int i = 0; i < n; i++) {
            uint32_t id = events[i].data.u32;
            if (id == UINT32_MAX) {
                stop = 1;
            } else if (id == UINT32_MAX - 1) {
                gate_accept(s);
            } else if (s->waiting[id].fd >= 0 && !s->waiting[id].hello_in) {
                int state = hello_state(s->waiting[id].fd);
                if (state > 0) gate_hand_over(s, &s->waiting[id]);
                else if (state < 0) gate_close(s, &s->waiting[id], &s->stats.failed);
            }
        }
        if (stop) break;
    }
    for (uint32_t i = 0; i < s->limits.max_waiting; i++)
        if (s->waiting[i].fd >= 0) close(s->waiting[i].fd);
    return NULL;
}

static int check_limits(const ratls_attest_limits *in, ratls_attest_limits *out, char *msg, size_t msg_len) {
    ratls_attest_limits l = in ? *in : (ratls_attest_limits){0};
    if (!l.handshake_timeout_ms) l.handshake_timeout_ms = DEFAULT_TIMEOUT_MS;
    if (!l.max_concurrent) l.max_concurrent = DEFAULT_MAX_CONCURRENT;
    if (!l.max_cert_size) l.max_cert_size = RATLS_MAX_CERT_SIZE;
    if (!l.max_pending) l.max_pending = DEFAULT_MAX_PENDING;
    if (!l.trust_ttl_s) l.trust_ttl_s = DEFAULT_TRUST_TTL_S;
    if (!l.hello_timeout_ms)
        l.hello_timeout_ms = l.handshake_timeout_ms < DEFAULT_HELLO_TIMEOUT_MS ? l.handshake_timeout_ms
                                                                               : DEFAULT_HELLO_TIMEOUT_MS;
    if (!l.max_waiting) l.max_waiting = DEFAULT_MAX_WAITING;
    if (!l.max_per_source) l.max_per_source = DEFAULT_MAX_PER_SOURCE;
    if (!l.max_refusals) l.max_refusals = DEFAULT_MAX_REFUSALS;
    if (l.max_refusals > MAX_REFUSALS_LIMIT)
        return ratls_fail(msg, msg_len, RATLS_ERR_BAD_ARGUMENT, "max_refusals: expected at most %u, found %u",
                          MAX_REFUSALS_LIMIT, l.max_refusals);
    if (l.allow_unattested > 1)
        return ratls_fail(msg, msg_len, RATLS_ERR_BAD_ARGUMENT, "allow_unattested: expected 0 or 1, found %u",
                          l.allow_unattested);
    if (l.hello_timeout_ms > MAX_TIMEOUT_MS)
        return ratls_fail(msg, msg_len, RATLS_ERR_BAD_ARGUMENT, "hello_timeout_ms: expected at most %u, found %u",
                          MAX_TIMEOUT_MS, l.hello_timeout_ms);
    if (l.max_waiting > MAX_WAITING_LIMIT)
        return ratls_fail(msg, msg_len, RATLS_ERR_BAD_ARGUMENT, "max_waiting: expected at most %u, found %u",
                          MAX_WAITING_LIMIT, l.max_waiting);
    if (l.handshake_timeout_ms > MAX_TIMEOUT_MS)
        return ratls_fail(msg, msg_len, RATLS_ERR_BAD_ARGUMENT,
                          "handshake_timeout_ms: expected at most %u, found %u", MAX_TIMEOUT_MS,
                          l.handshake_timeout_ms);
    if (l.max_concurrent > MAX_CONCURRENT_LIMIT)
        return ratls_fail(msg, msg_len, RATLS_ERR_BAD_ARGUMENT, "max_concurrent: expected at most %u, found %u",
                          MAX_CONCURRENT_LIMIT, l.max_concurrent);
    if (l.max_cert_size > MAX_CERT_SIZE_LIMIT)
        return ratls_fail(msg, msg_len, RATLS_ERR_BAD_ARGUMENT, "max_cert_size: expected at most %u, found %u",
                          MAX_CERT_SIZE_LIMIT, l.max_cert_size);
    if (l.max_pending > MAX_PENDING_LIMIT)
        return ratls_fail(msg, msg_len, RATLS_ERR_BAD_ARGUMENT, "max_pending: expected at most %u, found %u",
                          MAX_PENDING_LIMIT, l.max_pending);
    *out = l;
    return RATLS_OK;
}

static int open_listener(const char *host, uint16_t port, int *fd_out, uint16_t *port_out, char *msg,
                         size_t msg_len) {
    char port_str[8];
    snprintf(port_str, sizeof port_str, "%u", (unsigned)port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    int gai = getaddrinfo(host && *host ? host : NULL, port_str, &hints, &res);
    if (gai != 0)
        return ratls_fail(msg, msg_len, RATLS_ERR_IO, "attestation listen address %s: %s", host ? host : "(any)",
                          gai_strerror(gai));
    int err = 0;
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        int fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) {
            err = errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, a->ai_addr, a->ai_addrlen) == 0 && listen(fd, 128) == 0) {
            struct sockaddr_storage ss;
            socklen_t sl = sizeof ss;
            getsockname(fd, (struct sockaddr *)&ss, &sl);
            *port_out = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                       : ((struct sockaddr_in *)&ss)->sin_port);
            *fd_out = fd;
            freeaddrinfo(res);
            return RATLS_OK;
        }
        err = errno;
        close(fd);
    }
    freeaddrinfo(res);
    return ratls_fail(msg, msg_len, RATLS_ERR_IO, "attestation port %s:%u: %s", host ? host : "", (unsigned)port,
                      strerror(err));
}

int ratls_attest_server_start(const ratls_policy *policy, const uint8_t *key_der, size_t key_len,
                              const uint8_t *cert_der, size_t cert_len, const char *host, uint16_t port,
                              const ratls_attest_limits *limits, const ratls_tcb_evaluator *tcb,
                              ratls_attest_server **out, char *msg, size_t msg_len) {
    if (!out) return ratls_fail(msg, msg_len, RATLS_ERR_BAD_ARGUMENT, "out is required");
    *out = NULL;
    if (tcb && !tcb->evaluate)
        return ratls_fail(msg, msg_len, RATLS_ERR_BAD_ARGUMENT, "TCB evaluator: no evaluate function");
    ratls_attest_limits l;
    int rc = check_limits(limits, &l, msg, msg_len);
    if (rc) return rc;
    ratls_attest_server *s = calloc(1, sizeof *s);
    if (!s) return ratls_fail(msg, msg_len, RATLS_ERR_INTERNAL, "out of memory");
    s->policy = policy;
    if (tcb) {
        s->tcb = *tcb;
        s->has_tcb = 1;
    }
    s->limits = l;
    s->listen_fd = s->stop_fd = s->epoll_fd = -1;
    pthread_mutex_init(&s->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->queued, &ca);
    pthread_cond_init(&s->ready_cond, &ca);
    pthread_cond_init(&s->refusal_cond, &ca);
    pthread_condattr_destroy(&ca);
    s->ctx = make_ctx(1, policy, key_der, key_len, cert_der, cert_len, l.max_cert_size, msg, msg_len);
    if (!s->ctx) {
        ratls_attest_server_stop(s);
        return RATLS_ERR_BAD_ARGUMENT;
    }
    rc = open_listener(host, port, &s->listen_fd, &s->port, msg, msg_len);
    if (!rc && (s->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0)
        rc = ratls_fail(msg, msg_len, RATLS_ERR_INTERNAL, "eventfd: %s", strerror(errno));
    if (!rc && (s->epoll_fd = epoll_create1(EPOLL_CLOEXEC)) < 0)
        rc = ratls_fail(msg, msg_len, RATLS_ERR_INTERNAL, "epoll_create1: %s", strerror(errno));
    if (!rc) {
        struct epoll_event listen_ev = {.events = EPOLLIN, .data.u32 = UINT32_MAX - 1};
        struct epoll_event stop_ev = {.events = EPOLLIN, .data.u32 = UINT32_MAX};
        if (epoll_ctl(s->epoll_fd, EPOLL_CTL_ADD, s->listen_fd, &listen_ev) < 0 ||
            epoll_ctl(s->epoll_fd, EPOLL_CTL_ADD, s->stop_fd, &stop_ev) < 0)
            rc = ratls_fail(msg, msg_len, RATLS_ERR_INTERNAL, "epoll_ctl: %s", strerror(errno));
    }
    s->ready_cap = l.max_concurrent * 4;
    if (!rc && (!(s->workers = calloc(l.max_concurrent, sizeof *s->workers)) ||
                !(s->waiting = calloc(l.max_waiting, sizeof *s->waiting)) ||
                !(s->ready = calloc(s->ready_cap, sizeof *s->ready))))
        rc = ratls_fail(msg, msg_len, RATLS_ERR_INTERNAL, "out of memory");
    for (uint32_t i = 0; !rc && i < l.max_waiting; i++) s->waiting[i].fd = -1;
    if (!rc) {
        /* The gate and the workers inherit a fully blocked signal mask: a peer resetting the connection must not
         * raise SIGPIPE, and the application's signals belong to its own threads. */
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        int e = pthread_create(&s->gate, NULL, gate_main, s);
        if (e) rc = ratls_fail(msg, msg_len, RATLS_ERR_INTERNAL, "pthread_create: %s", strerror(e));
        else s->gate_started = 1;
        for (; !rc && s->n_workers < l.max_concurrent; s->n_workers++) {
            e = pthread_create(&s->workers[s->n_workers], NULL, worker_main, s);
            if (e) {
                rc = ratls_fail(msg, msg_len, RATLS_ERR_INTERNAL, "pthread_create: %s", strerror(e));
                break;
            }
        }
        pthread_sigmask(SIG_SETMASK, &old, NULL);
    }
    if (rc) {
        ratls_attest_server_stop(s);
        return rc;
    }
    *out = s;
    return RATLS_OK;
}

uint16_t ratls_attest_server_port(const ratls_attest_server *s) { return s ? s->port : 0; }

/* CLOCK_MONOTONIC (the condition variables' clock) timeout_ms from now. */
static struct timespec monotonic_in(uint32_t timeout_ms) {
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += timeout_ms / 1000;
    until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    return until;
}

int ratls_attest_server_pop(ratls_attest_server *s, uint32_t timeout_ms, uint8_t **cert_der, size_t *cert_len,
                            uint8_t **channel_der, size_t *channel_len, ratls_evidence *evidence) {
    if (!s || !cert_der || !cert_len || !channel_der || !channel_len || !evidence) return RATLS_ERR_BAD_ARGUMENT;
    struct timespec until = monotonic_in(timeout_ms);
    pthread_mutex_lock(&s->lock);
    while (!s->head && timeout_ms > 0) {
        if (pthread_cond_timedwait(&s->queued, &s->lock, &until) == ETIMEDOUT) break;
    }
    attested_peer *e = s->head;
    if (e) {
        s->head = e->next;
        if (!s->head) s->tail = NULL;
        s->n_queued--;
    }
    pthread_mutex_unlock(&s->lock);
    if (!e) return RATLS_ERR_TIMEOUT;
    *cert_der = e->der;
    *cert_len = e->der_len;
    *channel_der = e->channel;
    *channel_len = e->channel_len;
    *evidence = e->evidence;
    free(e);
    return RATLS_OK;
}

int ratls_attest_server_pop_refusal(ratls_attest_server *s, uint32_t timeout_ms, char *addr, size_t addr_len,
                                    int *reason, char *msg, size_t msg_len) {
    if (!s) return RATLS_ERR_BAD_ARGUMENT;
    struct timespec until = monotonic_in(timeout_ms);
    pthread_mutex_lock(&s->lock);
    while (!s->refusals_head && timeout_ms > 0) {
        if (pthread_cond_timedwait(&s->refusal_cond, &s->lock, &until) == ETIMEDOUT) break;
    }
    refusal_record *r = s->refusals_head;
    if (r) {
        s->refusals_head = r->next;
        if (!s->refusals_head) s->refusals_tail = NULL;
        s->n_refusals--;
    }
    pthread_mutex_unlock(&s->lock);
    if (!r) return RATLS_ERR_TIMEOUT;
    if (addr && addr_len) snprintf(addr, addr_len, "%s", r->addr);
    if (reason) *reason = r->reason;
    if (msg && msg_len) snprintf(msg, msg_len, "%s", r->msg);
    free(r);
    return RATLS_OK;
}

void ratls_attest_server_stats(ratls_attest_server *s, ratls_attest_stats *out) {
    if (!s || !out) return;
    pthread_mutex_lock(&s->lock);
    *out = s->stats;
    out->queued = s->n_queued;
    pthread_mutex_unlock(&s->lock);
}

void ratls_attest_server_stop(ratls_attest_server *s) {
    if (!s) return;
    pthread_mutex_lock(&s->lock);
    s->stopping = 1;
    pthread_cond_broadcast(&s->ready_cond);
    pthread_mutex_unlock(&s->lock);
    if (s->stop_fd >= 0) {
        uint64_t one = 1;
        if (write(s->stop_fd, &one, sizeof one) != sizeof one) { /* cannot fail on a fresh eventfd */
        }
    }
    if (s->gate_started) pthread_join(s->gate, NULL);
    for (uint32_t i = 0; i < s->n_workers; i++) pthread_join(s->workers[i], NULL);
    free(s->workers);
    for (uint32_t i = 0; i < s->ready_len; i++) close(s->ready[(s->ready_head + i) % s->ready_cap]);
    free(s->ready);
    free(s->waiting);
    if (s->epoll_fd >= 0) close(s->epoll_fd);
    if (s->listen_fd >= 0) close(s->listen_fd);
    if (s->stop_fd >= 0) close(s->stop_fd);
    SSL_CTX_free(s->ctx);
    while (s->head) {
        attested_peer *e = s->head;
        s->head = e->next;
        free(e->der);
        free(e->channel);
        free(e);
    }
    while (s->refusals_head) {
        refusal_record *r = s->refusals_head;
        s->refusals_head = r->next;
        free(r);
    }
    pthread_cond_destroy(&s->queued);
    pthread_cond_destroy(&s->ready_cond);
    pthread_cond_destroy(&s->refusal_cond);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

/* ---------------------------------------------------------------- client */

/* Non-blocking TCP connect to the first address of host:port that answers before the deadline. */
static int tcp_connect(const char *host, uint16_t port, int64_t deadline, int *fd_out, char *msg, size_t msg_len) {
    char port_str[8];
    snprintf(port_str, sizeof port_str, "%u", (unsigned)port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    int gai = getaddrinfo(host, port_str, &hints, &res);
    if (gai != 0)
        return ratls_fail(msg, msg_len, RATLS_ERR_IO, "attestation target %s:%u: %s", host, (unsigned)port,
                          gai_strerror(gai));
    int rc = RATLS_ERR_IO, err = ECONNREFUSED;
    for (struct addrinfo *a = res; a && rc != RATLS_OK; a = a->ai_next) {
        int fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) {
            err = errno;
            continue;
        }
        if (connect(fd, a->ai_addr, a->ai_addrlen) != 0 && errno != EINPROGRESS) {
            err = errno;
            close(fd);
            continue;
        }
        int w = wait_io(fd, 1, deadline, -1);
        socklen_t sl = sizeof err;
        if (w == IO_TIMEOUT) {
            err = ETIMEDOUT;
        } else if (w == IO_READY && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &sl) == 0 && err == 0) {
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            *fd_out = fd;
            rc = RATLS_OK;
            continue;
        }
        close(fd);
    }
    freeaddrinfo(res);
    if (rc == RATLS_OK) return RATLS_OK;
    return ratls_fail(msg, msg_len, err == ETIMEDOUT ? RATLS_ERR_TIMEOUT : RATLS_ERR_IO,
                      "attestation target %s:%u: %s", host, (unsigned)port, strerror(err));
}

int ratls_attest_connect(const ratls_policy *policy, const uint8_t *key_der, size_t key_len,
                         const uint8_t *cert_der, size_t cert_len, const uint8_t *channel_der, size_t channel_len,
                         const char *host, uint16_t port,
                         uint32_t timeout_ms, const ratls_tcb_evaluator *tcb, uint8_t **peer_cert,
                         size_t *peer_cert_len, ratls_evidence *peer, uint32_t *trust_ttl_s, int *peer_reason,
                         char *msg, size_t msg_len) {
    if (peer_reason) *peer_reason = 0;
    if (!host || !peer_cert || !peer_cert_len || !peer || !trust_ttl_s)
        return ratls_fail(msg, msg_len, RATLS_ERR_BAD_ARGUMENT, "host and all outputs are required");
    if (tcb && !tcb->evaluate)
        return ratls_fail(msg, msg_len, RATLS_ERR_BAD_ARGUMENT, "TCB evaluator: no evaluate function");
    if (!channel_der || channel_len == 0 || channel_len > RATLS_MAX_CHANNEL_CERT_SIZE)
        return ratls_fail(msg, msg_len, RATLS_ERR_BAD_ARGUMENT, "channel certificate: expected 1..%d bytes, found %zu",
                          RATLS_MAX_CHANNEL_CERT_SIZE, channel_der ? channel_len : 0);
    if (timeout_ms == 0 || timeout_ms > MAX_TIMEOUT_MS)
        return ratls_fail(msg, msg_len, RATLS_ERR_BAD_ARGUMENT, "timeout_ms: expected 1..%u, found %u",
                          MAX_TIMEOUT_MS, timeout_ms);
    *peer_cert = NULL;
    *peer_cert_len = 0;
    int64_t deadline = now_ms() + timeout_ms;
    SSL_CTX *ctx = make_ctx(0, policy, key_der, key_len, cert_der, cert_len, RATLS_MAX_CERT_SIZE, msg, msg_len);
    if (!ctx) return RATLS_ERR_BAD_ARGUMENT;
    int fd = -1;
    int rc = tcp_connect(host, port, deadline, &fd, msg, msg_len);
    peer_check pc = {.policy = policy, .tcb = tcb, .max_cert_size = RATLS_MAX_CERT_SIZE, .verdict = -1};
    SSL *ssl = NULL;
    const char *tls_reason = NULL;
    if (rc == RATLS_OK) {
        ssl = SSL_new(ctx);
        if (!ssl || SSL_set_fd(ssl, fd) != 1) {
            rc = ratls_fail(msg, msg_len, RATLS_ERR_INTERNAL, "SSL_new failed");
        } else {
            SSL_set_app_data(ssl, &pc);
            rc = tls_run(ssl, fd, OP_CONNECT, NULL, 0, deadline, -1, &tls_reason);
            if (pc.verdict > 0) {
                rc = ratls_fail(msg, msg_len, pc.verdict, "attestation server %s:%u: %s", host, (unsigned)port,
                                pc.msg);
            } else if (rc != RATLS_OK) {
                ratls_fail(msg, msg_len, rc, "attestation handshake with %s:%u: %s", host, (unsigned)port,
                           rc == RATLS_ERR_TIMEOUT ? "timed out" : tls_reason ? tls_reason : "I/O error");
            }
        }
    }
    if (rc == RATLS_OK) {
        /* Our channel certificate, the one message we send: the server checks it against the certificate it just
         * verified, and only then trusts us. */
        uint8_t out[CHANNEL_HEADER_SIZE + RATLS_MAX_CHANNEL_CERT_SIZE];
        memcpy(out, CHANNEL_MAGIC, 4);
        out[4] = (uint8_t)(channel_len >> 8);
        out[5] = (uint8_t)channel_len;
        memcpy(out + CHANNEL_HEADER_SIZE, channel_der, channel_len);
        rc = tls_run(ssl, fd, OP_WRITE, out, CHANNEL_HEADER_SIZE + channel_len, deadline, -1, &tls_reason);
        if (rc != RATLS_OK)
            ratls_fail(msg, msg_len, rc, "attestation server %s:%u refused our certificate or failed: sending our "
                       "channel certificate: %s", host, (unsigned)port,
                       rc == RATLS_ERR_TIMEOUT ? "timed out" : tls_reason ? tls_reason : "I/O error");
    }
    if (rc == RATLS_OK) {
        /* The server verifies our certificate after our side of the handshake is done: only its
         * acknowledgement says we were accepted; its refusal says why not. (A certificate OpenSSL itself refuses
         * arrives here as a TLS alert.) */
        uint8_t ack[ACK_SIZE] = {0};
        rc = tls_run(ssl, fd, OP_READ, ack, sizeof ack, deadline, -1, &tls_reason);
        uint32_t word;
        memcpy(&word, ack + 4, 4);
        word = ntohl(word);
        if (rc == RATLS_OK && memcmp(ack, REFUSAL_MAGIC, 4) == 0) {
            const char *name = word <= INT_MAX ? ratls_reason_name((int)word) : "UNKNOWN";
            if (peer_reason) *peer_reason = word <= INT_MAX ? (int)word : -1;
            if (word == RATLS_OK || strcmp(name, "UNKNOWN") == 0)
                rc = ratls_fail(msg, msg_len, RATLS_ERR_PEER_REFUSED,
                                "the attestation server refused our certificate: reason code %u, unknown to this "
                                "client (%s:%u)", word, host, (unsigned)port);
            else
                rc = ratls_fail(msg, msg_len, RATLS_ERR_PEER_REFUSED,
                                "the attestation server refused our certificate: %s (%s:%u)", name, host,
                                (unsigned)port);
        } else if (rc == RATLS_OK && memcmp(ack, ACK_MAGIC, 4) != 0) {
            rc = ratls_fail(msg, msg_len, RATLS_ERR_HANDSHAKE,
                            "attestation server %s:%u: acknowledgement magic: expected \"%s\" or \"%s\", found "
                            "other bytes", host, (unsigned)port, ACK_MAGIC, REFUSAL_MAGIC);
        } else if (rc != RATLS_OK) {
            ratls_fail(msg, msg_len, rc, "attestation server %s:%u refused our certificate or failed: %s", host,
                       (unsigned)port, rc == RATLS_ERR_TIMEOUT ? "no acknowledgement before the timeout"
                                                                 : tls_reason ? tls_reason : "I/O error");
        } else {
            *trust_ttl_s = word;
            *peer_cert = pc.der;
            *peer_cert_len = pc.der_len;
            *peer = pc.evidence;
            pc.der = NULL;
            SSL_shutdown(ssl);
        }
    }
    peer_check_clear(&pc);
    SSL_free(ssl);
    if (fd >= 0) close(fd);
    SSL_CTX_free(ctx);
    return rc;
}
