/* The attestation handshake (attest.c) end to end over loopback, with identities from the sim provider:
 * mutual success, rejection on either side (and the refusal's reason reaching the client), TCB evaluators,
 * channel certificates (made, checked, and each way a bad or missing one is refused), plain TLS peers, garbage
 * and slow connections, bounds, stop. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "internal.h"
#include "testutil.h"

/* For preconditions whose failure would make the rest of the test meaningless. */
#define REQUIRE(cond)                                                                 \
    do {                                                                              \
        if (!(cond)) {                                                                \
            fprintf(stderr, "%s:%d: REQUIRE failed: %s\n", __FILE__, __LINE__, #cond); \
            exit(1);                                                                  \
        }                                                                             \
    } while (0)

/* A simulation CA directory in the layout `python -m ratls sim-ca init` writes (root -> PCK CA -> PCK leaf, all
 * P-256; the QE attestation key; an RSA enclave signing key), made here with OpenSSL so the C test needs no
 * Python. */
static X509 *ca_cert(const char *cn, EVP_PKEY *key, X509 *issuer, EVP_PKEY *issuer_key, int ca) {
    X509 *x = X509_new();
    REQUIRE(x != NULL);
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), (long)(rand() & 0x7fffffff) + 1);
    X509_gmtime_adj(X509_getm_notBefore(x), -86400);
    X509_gmtime_adj(X509_getm_notAfter(x), 86400L * 365);
    X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(x, X509_get_subject_name(issuer ? issuer : x));
    X509_set_pubkey(x, key);
    X509V3_CTX v3;
    X509V3_set_ctx(&v3, issuer ? issuer : x, x, NULL, NULL, 0);
    const char *exts[][2] = {{"basicConstraints", ca ? "critical,CA:TRUE" : "critical,CA:FALSE"},
                             {"keyUsage", ca ? "critical,keyCertSign,cRLSign" : "critical,digitalSignature"},
                             {"subjectKeyIdentifier", "hash"}};
    for (size_t i = 0; i < sizeof exts / sizeof exts[0]; i++) {
        X509_EXTENSION *e = X509V3_EXT_conf(NULL, &v3, exts[i][0], exts[i][1]);
        REQUIRE(e != NULL && X509_add_ext(x, e, -1) == 1);
        X509_EXTENSION_free(e);
    }
    REQUIRE(X509_sign(x, issuer_key, EVP_sha256()) > 0);
    return x;
}

static void write_pem(const char *dir, const char *name, X509 *cert, EVP_PKEY *key) {
    char path[256];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    REQUIRE(f != NULL);
    REQUIRE(cert ? PEM_write_X509(f, cert) == 1 : PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL) == 1);
    fclose(f);
}

static const char *const ca_files[] = {"root.crt.pem", "pck_ca.crt.pem", "pck.crt.pem",
                                       "pck.key.pem",  "attestation.key.pem", "signer.key.pem"};

static void sim_ca_init(const char *dir, uint8_t **root_der, size_t *root_len) {
    EVP_PKEY *root_key = EVP_EC_gen("P-256"), *pck_ca_key = EVP_EC_gen("P-256"), *pck_key = EVP_EC_gen("P-256");
    EVP_PKEY *att_key = EVP_EC_gen("P-256"), *signer = EVP_RSA_gen(3072);
    REQUIRE(root_key && pck_ca_key && pck_key && att_key && signer);
    X509 *root = ca_cert("Test Sim Root", root_key, NULL, root_key, 1);
    X509 *pck_ca = ca_cert("Test Sim PCK CA", pck_ca_key, root, root_key, 1);
    X509 *pck = ca_cert("Test Sim PCK", pck_key, pck_ca, pck_ca_key, 0);
    write_pem(dir, ca_files[0], root, NULL);
    write_pem(dir, ca_files[1], pck_ca, NULL);
    write_pem(dir, ca_files[2], pck, NULL);
    write_pem(dir, ca_files[3], NULL, pck_key);
    write_pem(dir, ca_files[4], NULL, att_key);
    write_pem(dir, ca_files[5], NULL, signer);
    *root_der = NULL;
    int n = i2d_X509(root, root_der);
    REQUIRE(n > 0);
    *root_len = (size_t)n;
    X509_free(root);
    X509_free(pck_ca);
    X509_free(pck);
    EVP_PKEY_free(root_key);
    EVP_PKEY_free(pck_ca_key);
    EVP_PKEY_free(pck_key);
    EVP_PKEY_free(att_key);
    EVP_PKEY_free(signer);
}

/* The sim provider (RATLS_SIM_LIB) with a fresh simulation CA. */
typedef struct {
    ratls_provider *provider;
    char ca_dir[64];
    uint8_t *root_der;
    size_t root_len;
} sim_env;

static void sim_env_init(sim_env *env) {
    char msg[RATLS_MSG_SIZE] = "";
    const char *lib = getenv("RATLS_SIM_LIB");
    REQUIRE(lib != NULL);
    snprintf(env->ca_dir, sizeof env->ca_dir, "/tmp/ratls-test-attest-XXXXXX");
    REQUIRE(mkdtemp(env->ca_dir) != NULL);
    int rc = ratls_provider_open(lib, &env->provider, msg, sizeof msg);
    if (rc) fprintf(stderr, "provider: %s\n", msg);
    REQUIRE(rc == RATLS_OK);
    sim_ca_init(env->ca_dir, &env->root_der, &env->root_len);
}

static void sim_env_cleanup(sim_env *env) {
    char path[128];
    ratls_provider_close(env->provider);
    OPENSSL_free(env->root_der);
    for (size_t i = 0; i < sizeof ca_files / sizeof ca_files[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", env->ca_dir, ca_files[i]);
        unlink(path);
    }
    rmdir(env->ca_dir);
}

static int sim_identity(const sim_env *env, const uint8_t mr[32], int debug, uint8_t **key, size_t *key_len,
                        uint8_t **crt, size_t *crt_len) {
    char msg[RATLS_MSG_SIZE] = "";
    int64_t now = (int64_t)time(NULL);
    int rc = ratls_provider_sim_configure(env->provider, env->ca_dir, mr, 0, 0, debug, now - 3600, now + 86400,
                                          msg, sizeof msg);
    if (!rc) rc = ratls_provider_create(env->provider, key, key_len, crt, crt_len, msg, sizeof msg);
    if (rc) fprintf(stderr, "sim identity: %s\n", msg);
    return rc;
}

/* Accepts sim evidence with this MRENCLAVE (sim evidence carries no collateral: TCB status Unknown). */
static ratls_policy *sim_policy(const sim_env *env, const uint8_t mr[32]) {
    ratls_policy *p = ratls_policy_new();
    REQUIRE(p != NULL && ratls_policy_add_mrenclave(p, mr) == RATLS_OK);
    ratls_policy_set_allow_simulated(p, 1);
    ratls_policy_set_allowed_tcb_mask(p, 1u << RATLS_TCB_UNKNOWN);
    REQUIRE(ratls_policy_set_sim_root(p, env->root_der, env->root_len, NULL, 0) == RATLS_OK);
    return p;
}

typedef struct {
    uint8_t *key;
    size_t key_len;
    uint8_t *crt;
    size_t crt_len;
    uint8_t *chan; /* the channel certificate (ratls_channel_cert_create) */
    size_t chan_len;
} identity;

static void add_channel_cert(identity *id) {
    char msg[RATLS_MSG_SIZE] = "";
    int rc = ratls_channel_cert_create(id->key, id->key_len, id->crt, id->crt_len, &id->chan, &id->chan_len, msg,
                                       sizeof msg);
    if (rc) fprintf(stderr, "channel certificate: %s\n", msg);
    REQUIRE(rc == RATLS_OK && id->chan && id->chan_len > 0 && id->chan_len <= RATLS_MAX_CHANNEL_CERT_SIZE);
}

static identity make_identity(const sim_env *env, uint8_t mr_byte, int debug) {
    identity id;
    uint8_t mr[32];
    memset(mr, mr_byte, sizeof mr);
    REQUIRE(sim_identity(env, mr, debug, &id.key, &id.key_len, &id.crt, &id.crt_len) == RATLS_OK);
    add_channel_cert(&id);
    return id;
}

/* A plain self-signed P-384 certificate without evidence: what a TLS client that skips RA-TLS presents. */
static identity make_plain_identity(void) {
    identity id;
    EVP_PKEY *k = EVP_EC_gen("P-384");
    X509 *x = X509_new();
    REQUIRE(k && x);
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 7);
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 86400);
    X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC, (const unsigned char *)"plain", -1,
                               -1, 0);
    X509_set_issuer_name(x, X509_get_subject_name(x));
    X509_set_pubkey(x, k);
    REQUIRE(X509_sign(x, k, EVP_sha256()) > 0);
    id.crt = NULL;
    id.key = NULL;
    id.crt_len = (size_t)i2d_X509(x, &id.crt);
    id.key_len = (size_t)i2d_PrivateKey(k, &id.key);
    X509_free(x);
    EVP_PKEY_free(k);
    add_channel_cert(&id);
    return id;
}

static void free_identity(identity *id) {
    ratls_free(id->key);
    ratls_free(id->crt);
    ratls_free(id->chan);
}

static ratls_policy *policy_for(const sim_env *env, uint8_t mr_byte) {
    uint8_t mr[32];
    memset(mr, mr_byte, sizeof mr);
    return sim_policy(env, mr);
}

static ratls_attest_server *start_with(const ratls_policy *pol, const identity *id, const ratls_attest_limits *lim,
                                       const ratls_tcb_evaluator *tcb) {
    ratls_attest_server *s = NULL;
    char msg[RATLS_MSG_SIZE] = "";
    int rc = ratls_attest_server_start(pol, id->key, id->key_len, id->crt, id->crt_len, "127.0.0.1", 0, lim, tcb,
                                       &s, msg, sizeof msg);
    if (rc) fprintf(stderr, "server start: %s\n", msg);
    REQUIRE(rc == RATLS_OK && s && ratls_attest_server_port(s) != 0);
    return s;
}

static ratls_attest_server *start(const ratls_policy *pol, const identity *id, const ratls_attest_limits *lim) {
    return start_with(pol, id, lim, NULL);
}

typedef struct {
    int rc;
    uint8_t *peer;
    size_t peer_len;
    ratls_evidence ev;
    uint32_t ttl;
    int peer_reason; /* the server's reason code when it refused us (RATLS_ERR_PEER_REFUSED), else 0 */
    char msg[RATLS_MSG_SIZE];
} attempt;

static attempt attest_with(const ratls_policy *pol, const identity *id, uint16_t port, uint32_t timeout_ms,
                           const ratls_tcb_evaluator *tcb) {
    attempt a;
    memset(&a, 0, sizeof a);
    a.rc = ratls_attest_connect(pol, id->key, id->key_len, id->crt, id->crt_len, id->chan, id->chan_len, "127.0.0.1",
                                port, timeout_ms, tcb, &a.peer, &a.peer_len, &a.ev, &a.ttl, &a.peer_reason, a.msg,
                                sizeof a.msg);
    return a;
}

static attempt attest(const ratls_policy *pol, const identity *id, uint16_t port, uint32_t timeout_ms) {
    return attest_with(pol, id, port, timeout_ms, NULL);
}

/* ratls_attest_server_pop for tests that look at the RA-TLS certificate and evidence only: the channel certificate
 * must be there and is dropped. */
static int pop_peer(ratls_attest_server *s, uint32_t timeout_ms, uint8_t **der, size_t *len, ratls_evidence *ev) {
    uint8_t *chan = NULL;
    size_t chan_len = 0;
    int rc = ratls_attest_server_pop(s, timeout_ms, der, len, &chan, &chan_len, ev);
    if (rc == RATLS_OK) CHECK(chan != NULL && chan_len > 0);
    ratls_free(chan);
    return rc;
}

static ratls_attest_stats stats_of(ratls_attest_server *s) {
    ratls_attest_stats st;
    ratls_attest_server_stats(s, &st);
    return st;
}

static int64_t mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int tcp_to(uint16_t port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) == 0);
    return fd;
}

/* Waits (bounded) until the server has finished with every connection it accepted. */
static ratls_attest_stats settle(ratls_attest_server *s, uint64_t expect_done) {
    ratls_attest_stats st = stats_of(s);
    for (int i = 0; i < 500; i++) {
        st = stats_of(s);
        if (st.in_flight == 0 && st.attested + st.rejected + st.failed + st.timed_out >= expect_done) break;
        usleep(10000);
    }
    return st;
}

static void test_mutual_success(const sim_env *env) {
    identity srv = make_identity(env, 0xA1, 0), cli = make_identity(env, 0xC1, 0);
    ratls_policy *srv_pol = policy_for(env, 0xC1), *cli_pol = policy_for(env, 0xA1);
    ratls_attest_limits lim = {.trust_ttl_s = 77};
    ratls_attest_server *s = start(srv_pol, &srv, &lim);

    attempt a = attest(cli_pol, &cli, ratls_attest_server_port(s), 5000);
    if (a.rc) fprintf(stderr, "attest: %s\n", a.msg);
    REQUIRE(a.rc == RATLS_OK);
    CHECK(a.peer_len == srv.crt_len && memcmp(a.peer, srv.crt, srv.crt_len) == 0);
    CHECK(a.ev.mrenclave[0] == 0xA1 && a.ev.mrenclave[31] == 0xA1);
    CHECK(a.ttl == 77);
    /* No evaluator: no collateral, TCB status Unknown (which these policies allow), no advisories. */
    CHECK(a.ev.tcb_status == RATLS_TCB_UNKNOWN && a.ev.advisory_ids[0] == '\0');

    /* The acknowledgement comes after the queueing: the client is poppable at once, without waiting, with the
     * RA-TLS certificate it attested with and the channel certificate it sent. */
    uint8_t *der = NULL, *chan = NULL;
    size_t len = 0, chan_len = 0;
    ratls_evidence ev;
    REQUIRE(ratls_attest_server_pop(s, 0, &der, &len, &chan, &chan_len, &ev) == RATLS_OK);
    CHECK(len == cli.crt_len && memcmp(der, cli.crt, len) == 0);
    CHECK(chan_len == cli.chan_len && memcmp(chan, cli.chan, chan_len) == 0);
    ratls_free(chan);
    CHECK(ev.mrenclave[0] == 0xC1);
    CHECK(ev.tcb_status == RATLS_TCB_UNKNOWN && ev.advisory_ids[0] == '\0');
    uint8_t fp[32];
    ratls_sha256(cli.crt, cli.crt_len, fp);
    CHECK(memcmp(ev.cert_sha256, fp, 32) == 0);
    ratls_free(der);
    CHECK(pop_peer(s, 0, &der, &len, &ev) == RATLS_ERR_TIMEOUT);
    CHECK(pop_peer(s, 50, &der, &len, &ev) == RATLS_ERR_TIMEOUT);
    ratls_attest_stats st = settle(s, 1);
    CHECK(st.attested == 1 && st.rejected == 0 && st.connections == 1);
    ratls_free(a.peer);
    ratls_attest_server_stop(s);
    ratls_policy_free(srv_pol);
    ratls_policy_free(cli_pol);
    free_identity(&srv);
    free_identity(&cli);
}

static void test_rejections(const sim_env *env) {
    identity srv = make_identity(env, 0xA2, 0), cli = make_identity(env, 0xC2, 0);
    identity dbg = make_identity(env, 0xC2, 1), plain = make_plain_identity();
    ratls_policy *srv_pol = policy_for(env, 0xC2), *cli_pol = policy_for(env, 0xA2);
    ratls_policy *wrong_pol = policy_for(env, 0xEE);
    ratls_attest_server *s = start(srv_pol, &srv, NULL);
    uint16_t port = ratls_attest_server_port(s);
    uint8_t *der;
    size_t len;
    ratls_evidence ev;

    /* The client's policy does not allow the server: the client's verify callback refuses. */
    attempt a = attest(wrong_pol, &cli, port, 5000);
    CHECK(a.rc == RATLS_ERR_MRENCLAVE && a.peer == NULL);
    CHECK(strstr(a.msg, "attestation server 127.0.0.1") != NULL);
    ratls_attest_stats st = settle(s, 1);
    CHECK(st.attested == 0 && st.failed == 1);

    /* The server's policy does not allow the client: refused by the server, nothing queued. */
    ratls_attest_server *s2 = start(wrong_pol, &srv, NULL);
    a = attest(cli_pol, &cli, ratls_attest_server_port(s2), 5000);
    CHECK(a.rc == RATLS_ERR_PEER_REFUSED && a.peer_reason == RATLS_ERR_MRENCLAVE && a.peer == NULL);
    CHECK(strstr(a.msg, "the attestation server refused our certificate: MRENCLAVE (127.0.0.1:") == a.msg);
    CHECK(strstr(a.msg, "is not allowed") == NULL); /* the reason code travels, never the server's message */
    st = settle(s2, 1);
    CHECK(st.rejected == 1 && st.attested == 0 && st.failed == 0 && st.last_rejection == RATLS_ERR_MRENCLAVE);
    CHECK(strstr(st.last_rejection_msg, "MRENCLAVE") != NULL);
    CHECK(pop_peer(s2, 0, &der, &len, &ev) == RATLS_ERR_TIMEOUT);
    ratls_attest_server_stop(s2);

    /* A debug enclave with the right measurement, under a policy that denies debug. */
    a = attest(cli_pol, &dbg, port, 5000);
    CHECK(a.rc == RATLS_ERR_PEER_REFUSED && a.peer_reason == RATLS_ERR_DEBUG_ENCLAVE);
    CHECK(strstr(a.msg, "refused our certificate: DEBUG_ENCLAVE") != NULL);
    st = settle(s, 2);
    CHECK(st.rejected == 1 && st.last_rejection == RATLS_ERR_DEBUG_ENCLAVE);

    /* A plain self-signed certificate, on either side. */
    a = attest(cli_pol, &plain, port, 5000);
    CHECK(a.rc == RATLS_ERR_PEER_REFUSED && a.peer_reason == RATLS_ERR_EVIDENCE_MISSING);
    CHECK(strstr(a.msg, "refused our certificate: EVIDENCE_MISSING") != NULL);
    st = settle(s, 3);
    CHECK(st.rejected == 2 && st.last_rejection == RATLS_ERR_EVIDENCE_MISSING);
    ratls_attest_server *s3 = start(srv_pol, &plain, NULL);
    a = attest(cli_pol, &cli, ratls_attest_server_port(s3), 5000);
    CHECK(a.rc == RATLS_ERR_EVIDENCE_MISSING && a.peer_reason == 0); /* our verdict, not the server's */
    ratls_attest_server_stop(s3);

    CHECK(pop_peer(s, 0, &der, &len, &ev) == RATLS_ERR_TIMEOUT);
    /* And the endpoint still serves a good client. */
    a = attest(cli_pol, &cli, port, 5000);
    CHECK(a.rc == RATLS_OK);
    ratls_free(a.peer);
    CHECK(pop_peer(s, 1000, &der, &len, &ev) == RATLS_OK);
    ratls_free(der);

    ratls_attest_server_stop(s);
    ratls_policy_free(srv_pol);
    ratls_policy_free(cli_pol);
    ratls_policy_free(wrong_pol);
    free_identity(&srv);
    free_identity(&cli);
    free_identity(&dbg);
    free_identity(&plain);
}

/* Garbage, truncated, slow and half-open connections: each ends within the handshake timeout, at most
 * max_concurrent are served at once, and a good client gets through afterwards. */
static void test_bad_input(const sim_env *env) {
    identity srv = make_identity(env, 0xA3, 0), cli = make_identity(env, 0xC3, 0);
    ratls_policy *srv_pol = policy_for(env, 0xC3), *cli_pol = policy_for(env, 0xA3);
    ratls_attest_limits lim = {.handshake_timeout_ms = 300, .max_concurrent = 4};
    ratls_attest_server *s = start(srv_pol, &srv, &lim);
    uint16_t port = ratls_attest_server_port(s);
    srand(1234);

    /* A TLS record header promising a large ClientHello, then nothing more: truncated. */
    static const uint8_t truncated_hello[] = {0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03};
    int n_conn = 0;
    for (int i = 0; i < 60; i++, n_conn++) {
        int fd = tcp_to(port);
        if (i % 3 == 0) {
            uint8_t junk[512];
            for (size_t j = 0; j < sizeof junk; j++) junk[j] = (uint8_t)rand();
            CHECK(send(fd, junk, (size_t)(1 + rand() % (int)sizeof junk), MSG_NOSIGNAL) > 0);
        } else if (i % 3 == 1) {
            CHECK(send(fd, truncated_hello, sizeof truncated_hello, MSG_NOSIGNAL) > 0);
        } /* else: connect and close at once */
        close(fd);
    }
    ratls_attest_stats st = settle(s, (uint64_t)n_conn);
    CHECK(st.connections == (uint64_t)n_conn && st.attested == 0 && st.in_flight == 0);
    CHECK(st.failed + st.timed_out == (uint64_t)n_conn);

    /* Silent connections hold a worker only until the deadline; more than max_concurrent of them queue in the
     * backlog, and a good client still completes within the (longer) client timeout. */
    int idle[10];
    for (int i = 0; i < 10; i++) idle[i] = tcp_to(port);
    usleep(100000);
    st = stats_of(s);
    CHECK(st.in_flight <= lim.max_concurrent);
    int64_t t0 = mono_ms();
    attempt a = attest(cli_pol, &cli, port, 5000);
    REQUIRE(a.rc == RATLS_OK);
    CHECK(mono_ms() - t0 < 3000);
    ratls_free(a.peer);
    st = settle(s, (uint64_t)n_conn + 11);
    CHECK(st.timed_out >= 10 && st.attested == 1);
    for (int i = 0; i < 10; i++) close(idle[i]);

    /* A slow client dripping a valid-looking prefix byte by byte is cut off by the absolute deadline. */
    int fd = tcp_to(port);
    t0 = mono_ms();
    int closed = 0;
    for (size_t i = 0; i < sizeof truncated_hello && !closed; i++) {
        if (send(fd, &truncated_hello[i], 1, MSG_NOSIGNAL) != 1) closed = 1;
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, 100) == 1) closed = 1; /* the server gave up and closed */
    }
    CHECK(closed);
    CHECK(mono_ms() - t0 < 2000);
    close(fd);

    ratls_attest_server_stop(s);
    ratls_policy_free(srv_pol);
    ratls_policy_free(cli_pol);
    free_identity(&srv);
    free_identity(&cli);
}

static void test_bounds_and_errors(const sim_env *env) {
    identity srv = make_identity(env, 0xA4, 0), cli = make_identity(env, 0xC4, 0);
    ratls_policy *pol = policy_for(env, 0xC4), *cli_pol = policy_for(env, 0xA4);
    char msg[RATLS_MSG_SIZE];
    ratls_attest_server *s = NULL;

    ratls_attest_limits too_many = {.max_concurrent = 100000};
    CHECK(ratls_attest_server_start(pol, srv.key, srv.key_len, srv.crt, srv.crt_len, "127.0.0.1", 0, &too_many,
                                    NULL, &s, msg, sizeof msg) == RATLS_ERR_BAD_ARGUMENT && s == NULL);
    CHECK(strstr(msg, "max_concurrent") != NULL);
    CHECK(ratls_attest_server_start(pol, srv.key, srv.key_len - 1, srv.crt, srv.crt_len, "127.0.0.1", 0, NULL, NULL,
                                    &s, msg, sizeof msg) == RATLS_ERR_BAD_ARGUMENT && s == NULL);
    CHECK(ratls_attest_server_start(pol, cli.key, cli.key_len, srv.crt, srv.crt_len, "127.0.0.1", 0, NULL, NULL, &s,
                                    msg, sizeof msg) == RATLS_ERR_BAD_ARGUMENT);
    CHECK(strstr(msg, "do not match") != NULL);
    ratls_tcb_evaluator no_function = {.evaluate = NULL};
    CHECK(ratls_attest_server_start(pol, srv.key, srv.key_len, srv.crt, srv.crt_len, "127.0.0.1", 0, NULL,
                                    &no_function, &s, msg, sizeof msg) == RATLS_ERR_BAD_ARGUMENT && s == NULL);
    CHECK(strstr(msg, "evaluate") != NULL);

    /* A port already in use. */
    s = start(pol, &srv, NULL);
    uint16_t port = ratls_attest_server_port(s);
    ratls_attest_server *s2 = NULL;
    CHECK(ratls_attest_server_start(pol, srv.key, srv.key_len, srv.crt, srv.crt_len, "127.0.0.1", port, NULL, NULL,
                                    &s2, msg, sizeof msg) == RATLS_ERR_IO && s2 == NULL);

    /* A peer certificate larger than max_cert_size is refused before verification. */
    ratls_attest_limits small = {.max_cert_size = 200};
    s2 = start(pol, &srv, &small);
    attempt a = attest(cli_pol, &cli, ratls_attest_server_port(s2), 5000);
    CHECK(a.rc == RATLS_ERR_HANDSHAKE && a.peer_reason == 0); /* OpenSSL's alert: no reason code */
    ratls_attest_stats st = settle(s2, 1);
    CHECK(st.attested == 0 && st.rejected + st.failed == 1);
    ratls_attest_server_stop(s2);

    /* Stop with handshakes in progress returns promptly (workers are woken, not waited out). */
    int idle[3];
    for (int i = 0; i < 3; i++) idle[i] = tcp_to(port);
    usleep(50000);
    int64_t t0 = mono_ms();
    ratls_attest_server_stop(s);
    CHECK(mono_ms() - t0 < 1000);
    for (int i = 0; i < 3; i++) close(idle[i]);

    /* Client errors: nobody listening; a listener that never answers (timeout honoured). */
    a = attest(cli_pol, &cli, port, 2000);
    CHECK(a.rc == RATLS_ERR_IO && strstr(a.msg, "127.0.0.1") != NULL);
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t sl = sizeof sa;
    CHECK(bind(lfd, (struct sockaddr *)&sa, sizeof sa) == 0 && listen(lfd, 4) == 0);
    CHECK(getsockname(lfd, (struct sockaddr *)&sa, &sl) == 0);
    t0 = mono_ms();
    a = attest(cli_pol, &cli, ntohs(sa.sin_port), 300);
    CHECK(a.rc == RATLS_ERR_TIMEOUT);
    CHECK(mono_ms() - t0 < 1500);
    close(lfd);
    CHECK(ratls_attest_connect(cli_pol, cli.key, cli.key_len, cli.crt, cli.crt_len, cli.chan, cli.chan_len,
                               "127.0.0.1", port, 0, NULL, &a.peer, &a.peer_len, &a.ev, &a.ttl, NULL, msg, sizeof msg) ==
          RATLS_ERR_BAD_ARGUMENT);
    CHECK(ratls_attest_connect(cli_pol, cli.key, cli.key_len, cli.crt, cli.crt_len, cli.chan, cli.chan_len,
                               "127.0.0.1", port, 1000, &no_function, &a.peer, &a.peer_len, &a.ev, &a.ttl, NULL, msg,
                               sizeof msg) == RATLS_ERR_BAD_ARGUMENT);
    /* A channel certificate is required, and at most 4096 bytes (the RA-TLS certificate is no channel certificate). */
    CHECK(ratls_attest_connect(cli_pol, cli.key, cli.key_len, cli.crt, cli.crt_len, NULL, 0, "127.0.0.1", port, 1000,
                               NULL, &a.peer, &a.peer_len, &a.ev, &a.ttl, NULL, msg, sizeof msg) ==
          RATLS_ERR_BAD_ARGUMENT);
    CHECK(strstr(msg, "channel certificate") != NULL);
    CHECK(ratls_attest_connect(cli_pol, cli.key, cli.key_len, cli.crt, cli.crt_len, cli.crt, cli.crt_len, "127.0.0.1",
                               port, 1000, NULL, &a.peer, &a.peer_len, &a.ev, &a.ttl, NULL, msg, sizeof msg) ==
          RATLS_ERR_BAD_ARGUMENT);

    ratls_policy_free(pol);
    ratls_policy_free(cli_pol);
    free_identity(&srv);
    free_identity(&cli);
}

/* A collateral evaluator with a scripted answer, counting its calls (made from the server's worker threads or the
 * client's thread) and checking what it is given. */
typedef struct {
    int rc;                 /* returned; RATLS_OK = success */
    int status;             /* written on success, unless leave_status */
    int leave_status;       /* return OK without setting *tcb_status */
    int overflow;           /* fill the whole advisories buffer, without a NUL */
    const char *advisories; /* written on success */
    const char *msg;        /* written on failure */
    const identity *peer;   /* the certificate it must be asked about */
    int calls;              /* atomic */
    int bad_args;           /* atomic: calls with a wrong certificate, time or buffer */
} fake_tcb;

static int fake_evaluate(void *ctx, const uint8_t *cert_der, size_t cert_len, int64_t now, int *tcb_status,
                         char *advisories, size_t advisories_len, char *msg, size_t msg_len) {
    fake_tcb *f = ctx;
    __atomic_add_fetch(&f->calls, 1, __ATOMIC_SEQ_CST);
    int64_t t = (int64_t)time(NULL);
    if (!cert_der || cert_len != f->peer->crt_len || memcmp(cert_der, f->peer->crt, cert_len) != 0 || now > t ||
        now < t - 60 || advisories_len != RATLS_ADVISORIES_SIZE || msg_len == 0)
        __atomic_add_fetch(&f->bad_args, 1, __ATOMIC_SEQ_CST);
    if (f->rc != RATLS_OK) {
        snprintf(msg, msg_len, "%s", f->msg);
        return f->rc;
    }
    if (!f->leave_status) *tcb_status = f->status;
    if (f->overflow) memset(advisories, 'A', advisories_len);
    else snprintf(advisories, advisories_len, "%s", f->advisories ? f->advisories : "");
    return RATLS_OK;
}

static int calls_of(fake_tcb *f) { return __atomic_load_n(&f->calls, __ATOMIC_SEQ_CST); }
static int bad_args_of(fake_tcb *f) { return __atomic_load_n(&f->bad_args, __ATOMIC_SEQ_CST); }

static ratls_policy *tcb_policy_for(const sim_env *env, uint8_t mr_byte, uint32_t tcb_mask) {
    ratls_policy *p = policy_for(env, mr_byte);
    ratls_policy_set_allowed_tcb_mask(p, tcb_mask);
    return p;
}

/* Evaluators on both sides: the status each reports is what the policy's TCB rule judges, it lands in the
 * evidence on both sides (the server's queue and the client's result) with its advisories, and each side's
 * evaluator runs exactly once per handshake. */
static void test_tcb_evaluator(const sim_env *env) {
    identity srv = make_identity(env, 0xA6, 0), cli = make_identity(env, 0xC6, 0);
    const uint32_t up_to_date = 1u << RATLS_TCB_UP_TO_DATE, sw_hardening = 1u << RATLS_TCB_SW_HARDENING_NEEDED;
    /* The server allows UpToDate only; the client also SWHardeningNeeded. Neither allows Unknown: without the
     * evaluator, nobody would pass. */
    ratls_policy *srv_pol = tcb_policy_for(env, 0xC6, up_to_date);
    ratls_policy *cli_pol = tcb_policy_for(env, 0xA6, up_to_date | sw_hardening);
    fake_tcb on_srv = {.status = RATLS_TCB_UP_TO_DATE, .advisories = "INTEL-SA-00001,INTEL-SA-00002", .peer = &cli};
    fake_tcb on_cli = {.status = RATLS_TCB_SW_HARDENING_NEEDED, .advisories = "INTEL-SA-00615", .peer = &srv};
    ratls_tcb_evaluator srv_tcb = {fake_evaluate, &on_srv}, cli_tcb = {fake_evaluate, &on_cli};
    ratls_attest_server *s = start_with(srv_pol, &srv, NULL, &srv_tcb);
    srv_tcb.ctx = NULL; /* the server keeps its own copy of the struct */
    uint16_t port = ratls_attest_server_port(s);
    uint8_t *der = NULL;
    size_t len = 0;
    ratls_evidence ev;

    /* Both statuses allowed: admitted, evidence carries them. */
    attempt a = attest_with(cli_pol, &cli, port, 5000, &cli_tcb);
    if (a.rc) fprintf(stderr, "attest: %s\n", a.msg);
    CHECK(a.rc == RATLS_OK);
    CHECK(a.ev.tcb_status == RATLS_TCB_SW_HARDENING_NEEDED && strcmp(a.ev.advisory_ids, "INTEL-SA-00615") == 0);
    CHECK(pop_peer(s, 0, &der, &len, &ev) == RATLS_OK);
    CHECK(ev.tcb_status == RATLS_TCB_UP_TO_DATE && strcmp(ev.advisory_ids, "INTEL-SA-00001,INTEL-SA-00002") == 0);
    ratls_free(der);
    ratls_free(a.peer);
    ratls_attest_stats st = settle(s, 1);
    CHECK(st.attested == 1 && st.rejected == 0);
    CHECK(calls_of(&on_srv) == 1 && calls_of(&on_cli) == 1);

    /* The client's evaluator reports a status the client's policy refuses: the client aborts with that reason;
     * the server never saw our certificate, so its evaluator did not run. */
    on_cli.status = RATLS_TCB_OUT_OF_DATE;
    a = attest_with(cli_pol, &cli, port, 5000, &cli_tcb);
    CHECK(a.rc == RATLS_ERR_TCB_STATUS && a.peer == NULL);
    CHECK(strstr(a.msg, "TCB status OutOfDate is not allowed by the policy") != NULL);
    st = settle(s, 2);
    CHECK(st.failed == 1 && st.rejected == 0 && st.attested == 1);
    CHECK(calls_of(&on_srv) == 1 && calls_of(&on_cli) == 2);

    /* The server's evaluator reports a status the server's policy refuses: the client learns TCB_STATUS from the
     * refusal, the server's stats say why, nothing is queued. */
    on_cli.status = RATLS_TCB_UP_TO_DATE;
    on_srv.status = RATLS_TCB_OUT_OF_DATE;
    a = attest_with(cli_pol, &cli, port, 5000, &cli_tcb);
    CHECK(a.rc == RATLS_ERR_PEER_REFUSED && a.peer_reason == RATLS_ERR_TCB_STATUS && a.peer == NULL);
    CHECK(strstr(a.msg, "the attestation server refused our certificate: TCB_STATUS") == a.msg);
    st = settle(s, 3);
    CHECK(st.rejected == 1 && st.last_rejection == RATLS_ERR_TCB_STATUS && st.attested == 1);
    CHECK(strstr(st.last_rejection_msg, "TCB status OutOfDate is not allowed by the policy") != NULL);
    CHECK(pop_peer(s, 0, &der, &len, &ev) == RATLS_ERR_TIMEOUT);
    CHECK(calls_of(&on_srv) == 2 && calls_of(&on_cli) == 3);
    ratls_attest_server_stop(s);

    /* A policy that allows Unknown still judges the real status: Unknown passes the first check, the evaluator's
     * OutOfDate does not. */
    ratls_policy *lax_pol = tcb_policy_for(env, 0xC6, (1u << RATLS_TCB_UNKNOWN) | up_to_date);
    srv_tcb.ctx = &on_srv;
    s = start_with(lax_pol, &srv, NULL, &srv_tcb);
    port = ratls_attest_server_port(s);
    a = attest_with(cli_pol, &cli, port, 5000, &cli_tcb);
    CHECK(a.rc == RATLS_ERR_PEER_REFUSED && strstr(a.msg, "refused our certificate: TCB_STATUS") != NULL);
    on_srv.status = RATLS_TCB_UP_TO_DATE;
    on_srv.overflow = 1; /* an evaluator overrunning the advisories: the evidence still ends in a NUL */
    a = attest_with(cli_pol, &cli, port, 5000, &cli_tcb);
    CHECK(a.rc == RATLS_OK);
    ratls_free(a.peer);
    CHECK(pop_peer(s, 1000, &der, &len, &ev) == RATLS_OK);
    CHECK(ev.tcb_status == RATLS_TCB_UP_TO_DATE && strlen(ev.advisory_ids) == RATLS_ADVISORIES_SIZE - 1);
    ratls_free(der);
    st = settle(s, 2);
    CHECK(st.attested == 1 && st.rejected == 1);
    CHECK(calls_of(&on_srv) == 4 && calls_of(&on_cli) == 5);
    CHECK(bad_args_of(&on_srv) == 0 && bad_args_of(&on_cli) == 0);
    ratls_attest_server_stop(s);

    ratls_policy_free(srv_pol);
    ratls_policy_free(cli_pol);
    ratls_policy_free(lax_pol);
    free_identity(&srv);
    free_identity(&cli);
}

/* An evaluator that fails gives its reason (and message) on the side that called it; one that claims success
 * without a TCB status is a collateral failure. */
static void test_tcb_evaluator_errors(const sim_env *env) {
    identity srv = make_identity(env, 0xA7, 0), cli = make_identity(env, 0xC7, 0);
    const uint32_t up_to_date = 1u << RATLS_TCB_UP_TO_DATE;
    ratls_policy *srv_pol = tcb_policy_for(env, 0xC7, up_to_date), *cli_pol = tcb_policy_for(env, 0xA7, up_to_date);
    fake_tcb on_srv = {.rc = RATLS_ERR_COLLATERAL, .msg = "PCCS at https://pccs.example unreachable", .peer = &cli};
    fake_tcb on_cli = {.status = RATLS_TCB_UP_TO_DATE, .peer = &srv};
    ratls_tcb_evaluator srv_tcb = {fake_evaluate, &on_srv}, cli_tcb = {fake_evaluate, &on_cli};
    ratls_attest_server *s = start_with(srv_pol, &srv, NULL, &srv_tcb);
    uint16_t port = ratls_attest_server_port(s);
    uint8_t *der = NULL;
    size_t len = 0;
    ratls_evidence ev;

    /* On the server: the client is refused with COLLATERAL; the message stays on the server. */
    attempt a = attest_with(cli_pol, &cli, port, 5000, &cli_tcb);
    CHECK(a.rc == RATLS_ERR_PEER_REFUSED && a.peer_reason == RATLS_ERR_COLLATERAL &&
          strstr(a.msg, "refused our certificate: COLLATERAL") != NULL);
    CHECK(strstr(a.msg, "pccs.example") == NULL);
    ratls_attest_stats st = settle(s, 1);
    CHECK(st.rejected == 1 && st.last_rejection == RATLS_ERR_COLLATERAL);
    CHECK(strstr(st.last_rejection_msg, "collateral evaluation failed: PCCS at https://pccs.example unreachable") !=
          NULL);

    /* On the client: its own reason, with the evaluator's message. */
    on_srv.rc = RATLS_OK;
    on_srv.status = RATLS_TCB_UP_TO_DATE;
    on_cli.rc = RATLS_ERR_COLLATERAL;
    on_cli.msg = "TCB info expired";
    a = attest_with(cli_pol, &cli, port, 5000, &cli_tcb);
    CHECK(a.rc == RATLS_ERR_COLLATERAL && a.peer == NULL);
    CHECK(strstr(a.msg, "collateral evaluation failed: TCB info expired") != NULL);

    /* Success without a status. */
    on_cli.rc = RATLS_OK;
    on_cli.leave_status = 1;
    a = attest_with(cli_pol, &cli, port, 5000, &cli_tcb);
    CHECK(a.rc == RATLS_ERR_COLLATERAL && strstr(a.msg, "not a RATLS_TCB_* value") != NULL);
    on_cli.leave_status = 0;
    on_srv.leave_status = 1;
    a = attest_with(cli_pol, &cli, port, 5000, &cli_tcb);
    CHECK(a.rc == RATLS_ERR_PEER_REFUSED && a.peer_reason == RATLS_ERR_COLLATERAL &&
          strstr(a.msg, "refused our certificate: COLLATERAL") != NULL);

    st = settle(s, 4);
    CHECK(st.rejected == 2 && st.failed == 2 && st.attested == 0);
    CHECK(pop_peer(s, 0, &der, &len, &ev) == RATLS_ERR_TIMEOUT);
    CHECK(calls_of(&on_srv) == 2 && calls_of(&on_cli) == 4);
    CHECK(bad_args_of(&on_srv) == 0 && bad_args_of(&on_cli) == 0);
    ratls_attest_server_stop(s);
    ratls_policy_free(srv_pol);
    ratls_policy_free(cli_pol);
    free_identity(&srv);
    free_identity(&cli);
}

/* A TLS 1.3 server that completes the handshake with a sim identity, then writes `reply` and closes. */
typedef struct {
    int listener;
    const identity *id;
    uint8_t reply[8];
} scripted_server;

static void *scripted_server_main(void *arg) {
    scripted_server *ss = arg;
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    const uint8_t *k = ss->id->key, *c = ss->id->crt;
    EVP_PKEY *key = d2i_AutoPrivateKey(NULL, &k, (long)ss->id->key_len);
    X509 *cert = d2i_X509(NULL, &c, (long)ss->id->crt_len);
    REQUIRE(ctx && key && cert && SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) &&
            SSL_CTX_use_certificate(ctx, cert) == 1 && SSL_CTX_use_PrivateKey(ctx, key) == 1);
    SSL_CTX_set_num_tickets(ctx, 0);
    int fd = accept(ss->listener, NULL, NULL);
    SSL *ssl = SSL_new(ctx);
    /* Reads the client's channel certificate message first (its header, then the length it says). */
    uint8_t chan[6 + RATLS_MAX_CHANNEL_CERT_SIZE];
    if (fd >= 0 && ssl && SSL_set_fd(ssl, fd) == 1 && SSL_accept(ssl) == 1 && SSL_read(ssl, chan, 6) == 6 &&
        memcmp(chan, "RATC", 4) == 0 &&
        SSL_read(ssl, chan + 6, (int)((size_t)chan[4] << 8 | chan[5])) == (int)((size_t)chan[4] << 8 | chan[5]) &&
        SSL_write(ssl, ss->reply, sizeof ss->reply) == (int)sizeof ss->reply)
        SSL_shutdown(ssl);
    SSL_free(ssl);
    if (fd >= 0) close(fd);
    EVP_PKEY_free(key);
    X509_free(cert);
    SSL_CTX_free(ctx);
    ERR_clear_error();
    return NULL;
}

static attempt attest_scripted(const ratls_policy *pol, const identity *cli, const identity *srv,
                               const char magic[4], uint32_t word) {
    scripted_server ss = {.listener = socket(AF_INET, SOCK_STREAM, 0), .id = srv};
    memcpy(ss.reply, magic, 4);
    uint32_t be = htonl(word);
    memcpy(ss.reply + 4, &be, 4);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t addr_len = sizeof addr;
    REQUIRE(bind(ss.listener, (struct sockaddr *)&addr, sizeof addr) == 0 && listen(ss.listener, 1) == 0 &&
            getsockname(ss.listener, (struct sockaddr *)&addr, &addr_len) == 0);
    pthread_t thread;
    REQUIRE(pthread_create(&thread, NULL, scripted_server_main, &ss) == 0);
    attempt a = attest(pol, cli, ntohs(addr.sin_port), 5000);
    ERR_clear_error();
    pthread_join(thread, NULL);
    close(ss.listener);
    return a;
}

/* What the client makes of each 8-byte reply: the acknowledgement, a refusal with a known or unknown reason code,
 * anything else. */
static void test_server_replies(const sim_env *env) {
    identity srv = make_identity(env, 0xA8, 0), cli = make_identity(env, 0xC8, 0);
    ratls_policy *pol = policy_for(env, 0xA8);
    attempt a = attest_scripted(pol, &cli, &srv, "RAT1", 123456);
    CHECK(a.rc == RATLS_OK && a.ttl == 123456);
    ratls_free(a.peer);
    a = attest_scripted(pol, &cli, &srv, "RATN", RATLS_ERR_ISV_SVN);
    CHECK(a.rc == RATLS_ERR_PEER_REFUSED && a.peer_reason == RATLS_ERR_ISV_SVN && a.peer == NULL);
    CHECK(strstr(a.msg, "the attestation server refused our certificate: ISV_SVN (127.0.0.1:") == a.msg);
    /* Codes this client does not know are refusals too, reported as sent (-1 beyond INT_MAX). */
    a = attest_scripted(pol, &cli, &srv, "RATN", 9999);
    CHECK(a.rc == RATLS_ERR_PEER_REFUSED && a.peer_reason == 9999 &&
          strstr(a.msg, "refused our certificate: reason code 9999, unknown") != NULL);
    a = attest_scripted(pol, &cli, &srv, "RATN", 0xFFFFFFFFu);
    CHECK(a.rc == RATLS_ERR_PEER_REFUSED && a.peer_reason == -1 &&
          strstr(a.msg, "reason code 4294967295, unknown") != NULL);
    a = attest_scripted(pol, &cli, &srv, "RATN", RATLS_OK); /* a refusal for no reason is not an acceptance */
    CHECK(a.rc == RATLS_ERR_PEER_REFUSED && a.peer_reason == 0 && strstr(a.msg, "reason code 0, unknown") != NULL);
    a = attest_scripted(pol, &cli, &srv, "RAT2", 60);
    CHECK(a.rc == RATLS_ERR_HANDSHAKE && a.peer_reason == 0 && strstr(a.msg, "acknowledgement magic") != NULL &&
          a.peer == NULL);
    ratls_policy_free(pol);
    free_identity(&srv);
    free_identity(&cli);
}

/* A TCP server that reads the client's first flight and closes without a word (a peer going away mid-handshake,
 * e.g. a PS being restarted). */
static void *read_then_close(void *arg) {
    int listener = *(int *)arg;
    int fd = accept(listener, NULL, NULL);
    if (fd >= 0) {
        uint8_t hello[512];
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 5000) == 1) (void)!read(fd, hello, sizeof hello);
        close(fd);
    }
    return NULL;
}

static void test_server_closing_mid_handshake(const sim_env *env) {
    identity cli = make_identity(env, 0xC5, 0);
    ratls_policy *pol = policy_for(env, 0xA5);
    int listener = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t addr_len = sizeof addr;
    CHECK(bind(listener, (struct sockaddr *)&addr, sizeof addr) == 0 && listen(listener, 1) == 0);
    CHECK(getsockname(listener, (struct sockaddr *)&addr, &addr_len) == 0);
    pthread_t thread;
    CHECK(pthread_create(&thread, NULL, read_then_close, &listener) == 0);
    /* Retryable I/O, not a handshake verdict: the caller may try again once the server is back. */
    attempt a = attest(pol, &cli, ntohs(addr.sin_port), 5000);
    CHECK(a.rc == RATLS_ERR_IO && a.peer == NULL);
    CHECK(strstr(a.msg, "connection closed by peer") != NULL);
    pthread_join(thread, NULL);
    close(listener);
    ratls_policy_free(pol);
    free_identity(&cli);
}

/* ---- channel certificates */

static int64_t cert_time(const uint8_t *der, size_t len, int after) {
    const uint8_t *p = der;
    X509 *x = d2i_X509(NULL, &p, (long)len);
    int64_t out = 0;
    REQUIRE(x && ratls_asn1_time_to_unix(after ? X509_get0_notAfter(x) : X509_get0_notBefore(x), &out));
    X509_free(x);
    return out;
}

/* A self-signed certificate over `id`'s key with the given subject CN (and, if legacy_len, a legacy quote extension
 * of that many zero bytes): what a client could send that ratls_channel_cert_create would not make. */
static uint8_t *cert_over_key(const identity *id, const char *cn, size_t legacy_len, size_t *len) {
    const uint8_t *p = id->key;
    EVP_PKEY *k = d2i_AutoPrivateKey(NULL, &p, (long)id->key_len);
    X509 *x = X509_new();
    REQUIRE(k && x);
    X509_set_version(x, X509_VERSION_3);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 9);
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 86400);
    X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(x, X509_get_subject_name(x));
    X509_set_pubkey(x, k);
    if (legacy_len) {
        static const uint8_t legacy_oid[] = {0x06, 0x0B, 0x06, 0x09, 0x2A, 0x86, 0x48, 0x86, 0xF8, 0x4D, 0x8A, 0x39, 0x06};
        const uint8_t *o = legacy_oid;
        ASN1_OBJECT *oid = d2i_ASN1_OBJECT(NULL, &o, sizeof legacy_oid);
        ASN1_OCTET_STRING *value = ASN1_OCTET_STRING_new();
        uint8_t *zeros = calloc(1, legacy_len);
        REQUIRE(oid && value && zeros && ASN1_OCTET_STRING_set(value, zeros, (int)legacy_len));
        X509_EXTENSION *ext = X509_EXTENSION_create_by_OBJ(NULL, oid, 0, value);
        REQUIRE(ext && X509_add_ext(x, ext, -1) == 1);
        X509_EXTENSION_free(ext);
        ASN1_OCTET_STRING_free(value);
        ASN1_OBJECT_free(oid);
        free(zeros);
    }
    REQUIRE(X509_sign(x, k, EVP_sha384()) > 0);
    uint8_t *der = NULL;
    int n = i2d_X509(x, &der);
    REQUIRE(n > 0);
    *len = (size_t)n;
    X509_free(x);
    EVP_PKEY_free(k);
    return der;
}

static int channel_check(const identity *attested, const uint8_t *chan, size_t chan_len, int64_t now, char *msg) {
    msg[0] = '\0';
    return ratls_channel_cert_check(attested->crt, attested->crt_len, chan, chan_len, now, msg, RATLS_MSG_SIZE);
}

/* What ratls_channel_cert_create makes, and every check of ratls_channel_cert_check on its own. */
static void test_channel_certificate(const sim_env *env) {
    identity cli = make_identity(env, 0xC9, 0), other = make_identity(env, 0xC9, 0);
    char msg[RATLS_MSG_SIZE];
    int64_t now = (int64_t)time(NULL);

    /* Small, self-signed over the same SubjectPublicKeyInfo, named after it, the RA-TLS certificate's validity,
     * no extensions; it passes the check. */
    CHECK(cli.chan_len < 1024 && cli.chan_len < cli.crt_len / 4);
    CHECK(channel_check(&cli, cli.chan, cli.chan_len, now, msg) == RATLS_OK);
    ratls_cert_info info;
    REQUIRE(ratls_cert_inspect(cli.crt, cli.crt_len, &info, NULL, 0) == RATLS_OK);
    char want_cn[64] = "RATLS-";
    ratls_hex(info.spki_sha256, 8, want_cn + 6);
    strcat(want_cn, "-channel");
    const uint8_t *p = cli.chan;
    X509 *x = d2i_X509(NULL, &p, (long)cli.chan_len);
    REQUIRE(x != NULL && p == cli.chan + cli.chan_len);
    char cn[64] = "";
    X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, cn, sizeof cn);
    CHECK(strcmp(cn, want_cn) == 0);
    CHECK(X509_NAME_entry_count(X509_get_subject_name(x)) == 1);
    CHECK(X509_NAME_cmp(X509_get_subject_name(x), X509_get_issuer_name(x)) == 0);
    CHECK(X509_get_ext_count(x) == 0 && X509_get_version(x) == X509_VERSION_3);
    CHECK(X509_verify(x, X509_get0_pubkey(x)) == 1);
    uint8_t *spki = NULL;
    int spki_len = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(x), &spki);
    CHECK(spki_len > 0 && (size_t)spki_len == info.spki.len && memcmp(spki, cli.crt + info.spki.off, info.spki.len) == 0);
    OPENSSL_free(spki);
    X509_free(x);
    CHECK(cert_time(cli.chan, cli.chan_len, 0) == info.not_before && cert_time(cli.chan, cli.chan_len, 1) == info.not_after);
    /* Made again: another certificate (another serial and signature), as good. */
    uint8_t *again = NULL;
    size_t again_len = 0;
    CHECK(ratls_channel_cert_create(cli.key, cli.key_len, cli.crt, cli.crt_len, &again, &again_len, msg, sizeof msg) ==
          RATLS_OK);
    CHECK(again_len != cli.chan_len || memcmp(again, cli.chan, again_len) != 0);
    CHECK(channel_check(&cli, again, again_len, now, msg) == RATLS_OK);
    ratls_free(again);
    /* Only for a key and its certificate. */
    CHECK(ratls_channel_cert_create(other.key, other.key_len, cli.crt, cli.crt_len, &again, &again_len, msg,
                                    sizeof msg) == RATLS_ERR_BAD_ARGUMENT && again == NULL);
    CHECK(strstr(msg, "not the certificate's key") != NULL);
    CHECK(ratls_channel_cert_create(cli.key, cli.key_len, cli.crt, cli.crt_len - 1, &again, &again_len, msg,
                                    sizeof msg) == RATLS_ERR_BAD_ARGUMENT && again == NULL);

    /* Each check. */
    CHECK(channel_check(&cli, other.chan, other.chan_len, now, msg) == RATLS_ERR_CHANNEL_CERT); /* another key */
    CHECK(strstr(msg, "not the attested certificate's (another key)") != NULL);
    uint8_t *bad = malloc(cli.chan_len + 1);
    REQUIRE(bad != NULL);
    memcpy(bad, cli.chan, cli.chan_len);
    bad[cli.chan_len - 1] ^= 0x01; /* in the signature's s */
    CHECK(channel_check(&cli, bad, cli.chan_len, now, msg) == RATLS_ERR_CHANNEL_CERT);
    CHECK(strstr(msg, "signature does not verify") != NULL);
    memcpy(bad, cli.chan, cli.chan_len);
    bad[cli.chan_len] = 0; /* a byte after the certificate */
    CHECK(channel_check(&cli, bad, cli.chan_len + 1, now, msg) == RATLS_ERR_CHANNEL_CERT);
    CHECK(strstr(msg, "trailing bytes") != NULL);
    free(bad);
    static const uint8_t garbage[] = "certainly not a certificate";
    CHECK(channel_check(&cli, garbage, sizeof garbage, now, msg) == RATLS_ERR_CHANNEL_CERT);
    CHECK(strstr(msg, "channel certificate: not a DER X.509 certificate") != NULL);
    CHECK(channel_check(&cli, cli.chan, 0, now, msg) == RATLS_ERR_CHANNEL_CERT);
    CHECK(channel_check(&cli, cli.crt, cli.crt_len, now, msg) == RATLS_ERR_CHANNEL_CERT); /* the RA-TLS certificate */
    CHECK(strstr(msg, "size: expected 1..4096 bytes") != NULL);
    CHECK(channel_check(&cli, cli.chan, cli.chan_len, info.not_before - 1, msg) == RATLS_ERR_CHANNEL_CERT);
    CHECK(strstr(msg, "not valid before") != NULL);
    CHECK(channel_check(&cli, cli.chan, cli.chan_len, info.not_after + 1, msg) == RATLS_ERR_CHANNEL_CERT);
    CHECK(strstr(msg, "expired") != NULL);
    CHECK(channel_check(&cli, cli.chan, cli.chan_len, info.not_after, msg) == RATLS_OK);
    size_t n = 0;
    char ratls_cn[32] = "RATLS-";
    ratls_hex(info.spki_sha256, 8, ratls_cn + 6);
    uint8_t *named = cert_over_key(&cli, ratls_cn, 0, &n); /* the RA-TLS certificate's CN: gRPC would mix them up */
    CHECK(channel_check(&cli, named, n, now, msg) == RATLS_ERR_CHANNEL_CERT);
    CHECK(strstr(msg, "subject and issuer must both be exactly CN=RATLS-") != NULL && strstr(msg, "-channel") != NULL);
    OPENSSL_free(named);
    named = cert_over_key(&cli, want_cn, 0, &n); /* the right name, made by other code: fine */
    CHECK(channel_check(&cli, named, n, now, msg) == RATLS_OK);
    OPENSSL_free(named);
    named = cert_over_key(&cli, want_cn, 600, &n); /* evidence-shaped: a legacy quote extension */
    CHECK(channel_check(&cli, named, n, now, msg) == RATLS_ERR_CHANNEL_CERT);
    CHECK(strstr(msg, "carries RA-TLS evidence") != NULL);
    OPENSSL_free(named);
    CHECK(ratls_channel_cert_check(garbage, sizeof garbage, cli.chan, cli.chan_len, now, msg, sizeof msg) ==
          RATLS_ERR_BAD_ARGUMENT);
    free_identity(&cli);
    free_identity(&other);
}

/* A TLS 1.3 client with a genuine identity that, after the handshake, sends `bytes` as they are in place of a proper
 * channel certificate message, then half-closes its side (if half_close) or just waits, and reads the server's
 * reply: up to 8 bytes within 5 s. Returns how many it read. */
static size_t raw_after_handshake(uint16_t port, const identity *id, const uint8_t *bytes, size_t len, int half_close,
                                  uint8_t reply[8]) {
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    const uint8_t *k = id->key, *c = id->crt;
    EVP_PKEY *key = d2i_AutoPrivateKey(NULL, &k, (long)id->key_len);
    X509 *cert = d2i_X509(NULL, &c, (long)id->crt_len);
    REQUIRE(ctx && key && cert && SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) &&
            SSL_CTX_use_certificate(ctx, cert) == 1 && SSL_CTX_use_PrivateKey(ctx, key) == 1);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    int fd = tcp_to(port);
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    SSL *ssl = SSL_new(ctx);
    size_t got = 0;
    REQUIRE(ssl && SSL_set_fd(ssl, fd) == 1);
    if (SSL_connect(ssl) == 1 && (len == 0 || SSL_write(ssl, bytes, (int)len) == (int)len)) {
        if (half_close) shutdown(fd, SHUT_WR);
        while (got < 8) {
            int r = SSL_read(ssl, reply + got, (int)(8 - got));
            if (r <= 0) break;
            got += (size_t)r;
        }
    }
    SSL_free(ssl);
    close(fd);
    X509_free(cert);
    EVP_PKEY_free(key);
    SSL_CTX_free(ctx);
    ERR_clear_error();
    return got;
}

static int is_refusal(const uint8_t reply[8], size_t got, uint32_t code) {
    uint32_t be = htonl(code);
    return got == 8 && memcmp(reply, "RATN", 4) == 0 && memcmp(reply + 4, &be, 4) == 0;
}

/* The channel certificate in the handshake: a good one is queued with the client; each way of getting it wrong is
 * refused with CHANNEL_CERT (counted, the reason sent, nothing queued); the server still serves a good client. */
static void test_channel_certificate_handshake(const sim_env *env) {
    identity srv = make_identity(env, 0xAA, 0), cli = make_identity(env, 0xCA, 0), other = make_identity(env, 0xCA, 0);
    ratls_policy *srv_pol = policy_for(env, 0xCA), *cli_pol = policy_for(env, 0xAA);
    ratls_attest_limits lim = {.handshake_timeout_ms = 700};
    ratls_attest_server *s = start(srv_pol, &srv, &lim);
    uint16_t port = ratls_attest_server_port(s);
    uint8_t *der = NULL, *chan = NULL, reply[8];
    size_t len = 0, chan_len = 0, got;
    ratls_evidence ev;
    uint64_t done = 0, rejected = 0;

    /* Good. */
    attempt a = attest(cli_pol, &cli, port, 5000);
    REQUIRE(a.rc == RATLS_OK);
    ratls_free(a.peer);
    REQUIRE(ratls_attest_server_pop(s, 0, &der, &len, &chan, &chan_len, &ev) == RATLS_OK);
    CHECK(len == cli.crt_len && memcmp(der, cli.crt, len) == 0);
    CHECK(chan_len == cli.chan_len && memcmp(chan, cli.chan, chan_len) == 0);
    uint8_t fp[32];
    ratls_sha256(cli.crt, cli.crt_len, fp);
    CHECK(memcmp(ev.cert_sha256, fp, 32) == 0); /* the evidence is the RA-TLS certificate's */
    ratls_free(der);
    ratls_free(chan);
    done++;

    /* Through the real client, with a channel certificate that is not right: another key's, a bad signature,
     * garbage. The genuine RA-TLS certificate passed; the channel certificate did not. */
    uint8_t *bad_sig = malloc(cli.chan_len);
    REQUIRE(bad_sig != NULL);
    memcpy(bad_sig, cli.chan, cli.chan_len);
    bad_sig[cli.chan_len - 1] ^= 0x01;
    static const uint8_t garbage[] = "0123456789 not a certificate";
    struct {
        const uint8_t *chan;
        size_t len;
        const char *why;
    } wrong[] = {{other.chan, other.chan_len, "another key"},
                 {bad_sig, cli.chan_len, "signature does not verify"},
                 {garbage, sizeof garbage, "not a DER X.509 certificate"}};
    for (size_t i = 0; i < sizeof wrong / sizeof wrong[0]; i++) {
        identity liar = cli;
        liar.chan = (uint8_t *)wrong[i].chan;
        liar.chan_len = wrong[i].len;
        a = attest(cli_pol, &liar, port, 5000);
        CHECK(a.rc == RATLS_ERR_PEER_REFUSED && a.peer_reason == RATLS_ERR_CHANNEL_CERT && a.peer == NULL);
        CHECK(strstr(a.msg, "the attestation server refused our certificate: CHANNEL_CERT (127.0.0.1:") == a.msg);
        ratls_attest_stats st = settle(s, ++done);
        CHECK(st.rejected == ++rejected && st.last_rejection == RATLS_ERR_CHANNEL_CERT && st.attested == 1);
        CHECK(strstr(st.last_rejection_msg, wrong[i].why) != NULL);
        CHECK(pop_peer(s, 0, &der, &len, &ev) == RATLS_ERR_TIMEOUT);
    }
    free(bad_sig);

    /* Raw bytes after the handshake: a length over 4096 (with bytes after it the server does not read), another
     * magic, nothing at all (the client closes its side), a truncated certificate (the client closes its side),
     * nothing before the handshake deadline. Each gets its refusal. */
    uint8_t oversized[6 + 1000] = {'R', 'A', 'T', 'C', 0x10, 0x01};
    uint8_t wrong_magic[6 + 16] = {'R', 'A', 'T', 'X', 0x00, 0x10};
    uint8_t truncated[6 + 100] = {'R', 'A', 'T', 'C', 0x01, 0x00};
    memcpy(truncated + 6, cli.chan, 100);
    struct {
        const uint8_t *bytes;
        size_t len;
        int half_close;
        const char *why;
    } raw[] = {{oversized, sizeof oversized, 1, "length: expected 1..4096 bytes, found 4097"},
               {wrong_magic, sizeof wrong_magic, 1, "expected the magic \"RATC\""},
               {NULL, 0, 1, "no channel certificate (RATC) from the client"},
               {truncated, sizeof truncated, 1, "no channel certificate (RATC) from the client"},
               {NULL, 0, 0, "none before the handshake deadline"}};
    for (size_t i = 0; i < sizeof raw / sizeof raw[0]; i++) {
        int64_t t0 = mono_ms();
        got = raw_after_handshake(port, &cli, raw[i].bytes, raw[i].len, raw[i].half_close, reply);
        if (!is_refusal(reply, got, RATLS_ERR_CHANNEL_CERT))
            fprintf(stderr, "case %zu: %zu reply bytes: %.4s\n", i, got, (const char *)reply);
        CHECK(is_refusal(reply, got, RATLS_ERR_CHANNEL_CERT));
        if (!raw[i].half_close) CHECK(mono_ms() - t0 >= 600); /* refused at the deadline, not before */
        ratls_attest_stats st = settle(s, ++done);
        CHECK(st.rejected == ++rejected && st.last_rejection == RATLS_ERR_CHANNEL_CERT && st.attested == 1);
        if (!strstr(st.last_rejection_msg, raw[i].why))
            fprintf(stderr, "case %zu: last rejection: %s\n", i, st.last_rejection_msg);
        CHECK(strstr(st.last_rejection_msg, raw[i].why) != NULL);
        CHECK(pop_peer(s, 0, &der, &len, &ev) == RATLS_ERR_TIMEOUT);
    }

    /* A refused RA-TLS certificate is answered at once, whatever comes after it; its own reason wins. */
    identity plain = make_plain_identity();
    got = raw_after_handshake(port, &plain, NULL, 0, 0, reply);
    CHECK(is_refusal(reply, got, RATLS_ERR_EVIDENCE_MISSING));
    ratls_attest_stats st = settle(s, ++done);
    CHECK(st.rejected == ++rejected && st.last_rejection == RATLS_ERR_EVIDENCE_MISSING);
    free_identity(&plain);

    /* And a good client still gets through. */
    a = attest(cli_pol, &cli, port, 5000);
    CHECK(a.rc == RATLS_OK);
    ratls_free(a.peer);
    CHECK(pop_peer(s, 1000, &der, &len, &ev) == RATLS_OK);
    ratls_free(der);
    st = settle(s, ++done);
    CHECK(st.attested == 2 && st.rejected == rejected && st.failed == 0 && st.timed_out == 0);

    ratls_attest_server_stop(s);
    ratls_policy_free(srv_pol);
    ratls_policy_free(cli_pol);
    free_identity(&srv);
    free_identity(&cli);
    free_identity(&other);
}

/* ---- refusal records */

typedef struct {
    int rc;
    int reason;
    char addr[RATLS_ADDR_SIZE];
    char msg[RATLS_MSG_SIZE];
} refusal;

static refusal pop_refusal(ratls_attest_server *s, uint32_t timeout_ms) {
    refusal r;
    memset(&r, 0, sizeof r);
    r.rc = ratls_attest_server_pop_refusal(s, timeout_ms, r.addr, sizeof r.addr, &r.reason, r.msg, sizeof r.msg);
    return r;
}

/* "127.0.0.1:<port>" with a port that is not the server's: the client's own end. */
static int is_loopback_client(const char *addr, uint16_t server_port) {
    unsigned port = 0;
    char rest = 0;
    return sscanf(addr, "127.0.0.1:%u%c", &port, &rest) == 1 && port > 0 && port < 65536 && port != server_port;
}

typedef struct {
    ratls_attest_server *s;
    refusal r;
    int64_t waited_ms;
} refusal_waiter;

static void *wait_for_refusal(void *arg) {
    refusal_waiter *w = arg;
    int64_t t0 = mono_ms();
    w->r = pop_refusal(w->s, 5000);
    w->waited_ms = mono_ms() - t0;
    return NULL;
}

/* Every rejected client leaves a record (its address, the reason, the server's message) that the application pops,
 * there before the client has its refusal; accepted clients and failed connections leave none; the queue keeps the
 * newest max_refusals and counts what it dropped; a waiting pop wakes for a new record. */
static void test_refusal_records(const sim_env *env) {
    identity srv = make_identity(env, 0xAB, 0), cli = make_identity(env, 0xCB, 0);
    identity dbg = make_identity(env, 0xCB, 1), plain = make_plain_identity(), stranger = make_identity(env, 0xCC, 0);
    ratls_policy *srv_pol = policy_for(env, 0xCB), *cli_pol = policy_for(env, 0xAB);
    ratls_attest_limits lim = {.max_refusals = 2};
    ratls_attest_server *s = start(srv_pol, &srv, &lim);
    uint16_t port = ratls_attest_server_port(s);
    uint8_t *der;
    size_t len;
    ratls_evidence ev;

    int64_t t0 = mono_ms();
    CHECK(pop_refusal(s, 0).rc == RATLS_ERR_TIMEOUT);
    CHECK(pop_refusal(s, 60).rc == RATLS_ERR_TIMEOUT && mono_ms() - t0 >= 50);

    /* An accepted client and a connection that fails before any verdict: no record. */
    attempt a = attest(cli_pol, &cli, port, 5000);
    REQUIRE(a.rc == RATLS_OK);
    ratls_free(a.peer);
    CHECK(pop_peer(s, 0, &der, &len, &ev) == RATLS_OK);
    ratls_free(der);
    close(tcp_to(port));
    settle(s, 2);
    CHECK(pop_refusal(s, 0).rc == RATLS_ERR_TIMEOUT);

    /* A refused client: its record is there when it has its refusal, without waiting. */
    a = attest(cli_pol, &stranger, port, 5000);
    CHECK(a.rc == RATLS_ERR_PEER_REFUSED && a.peer_reason == RATLS_ERR_MRENCLAVE);
    refusal r = pop_refusal(s, 0);
    CHECK(r.rc == RATLS_OK && r.reason == RATLS_ERR_MRENCLAVE);
    if (!is_loopback_client(r.addr, port)) fprintf(stderr, "refusal address: %s\n", r.addr);
    CHECK(is_loopback_client(r.addr, port));
    ratls_attest_stats st = settle(s, 3);
    CHECK(strcmp(r.msg, st.last_rejection_msg) == 0 && strstr(r.msg, "MRENCLAVE") != NULL);
    CHECK(st.rejected == 1 && st.refusals_dropped == 0);
    CHECK(pop_refusal(s, 0).rc == RATLS_ERR_TIMEOUT);

    /* A pop waiting for a record wakes when one comes. */
    refusal_waiter w = {.s = s};
    pthread_t thread;
    REQUIRE(pthread_create(&thread, NULL, wait_for_refusal, &w) == 0);
    usleep(50000);
    a = attest(cli_pol, &dbg, port, 5000);
    CHECK(a.rc == RATLS_ERR_PEER_REFUSED && a.peer_reason == RATLS_ERR_DEBUG_ENCLAVE);
    pthread_join(thread, NULL);
    CHECK(w.r.rc == RATLS_OK && w.r.reason == RATLS_ERR_DEBUG_ENCLAVE && w.waited_ms < 4000);
    CHECK(is_loopback_client(w.r.addr, port));

    /* Bounded: three refusals unpopped (the verify callback's, and a channel certificate's), two kept, the newest,
     * in order; one dropped and counted. */
    a = attest(cli_pol, &stranger, port, 5000);
    CHECK(a.rc == RATLS_ERR_PEER_REFUSED && a.peer_reason == RATLS_ERR_MRENCLAVE);
    a = attest(cli_pol, &plain, port, 5000);
    CHECK(a.rc == RATLS_ERR_PEER_REFUSED && a.peer_reason == RATLS_ERR_EVIDENCE_MISSING);
    identity liar = cli;
    liar.chan = stranger.chan;
    liar.chan_len = stranger.chan_len;
    a = attest(cli_pol, &liar, port, 5000);
    CHECK(a.rc == RATLS_ERR_PEER_REFUSED && a.peer_reason == RATLS_ERR_CHANNEL_CERT);
    st = settle(s, 7);
    CHECK(st.rejected == 5 && st.refusals_dropped == 1);
    r = pop_refusal(s, 0);
    CHECK(r.rc == RATLS_OK && r.reason == RATLS_ERR_EVIDENCE_MISSING && is_loopback_client(r.addr, port));
    r = pop_refusal(s, 0);
    CHECK(r.rc == RATLS_OK && r.reason == RATLS_ERR_CHANNEL_CERT && strstr(r.msg, "another key") != NULL);
    CHECK(pop_refusal(s, 0).rc == RATLS_ERR_TIMEOUT);

    /* Outputs may be NULL or short (truncated, NUL-terminated). */
    a = attest(cli_pol, &stranger, port, 5000);
    CHECK(a.rc == RATLS_ERR_PEER_REFUSED);
    CHECK(ratls_attest_server_pop_refusal(s, 0, NULL, 0, NULL, NULL, 0) == RATLS_OK);
    a = attest(cli_pol, &stranger, port, 5000);
    CHECK(a.rc == RATLS_ERR_PEER_REFUSED);
    char short_addr[5], short_msg[4];
    CHECK(ratls_attest_server_pop_refusal(s, 0, short_addr, sizeof short_addr, NULL, short_msg, sizeof short_msg) ==
          RATLS_OK);
    CHECK(strcmp(short_addr, "127.") == 0 && strlen(short_msg) == 3);
    CHECK(ratls_attest_server_pop_refusal(NULL, 0, NULL, 0, NULL, NULL, 0) == RATLS_ERR_BAD_ARGUMENT);
    /* Records nobody popped are freed with the server. */
    a = attest(cli_pol, &stranger, port, 5000);
    CHECK(a.rc == RATLS_ERR_PEER_REFUSED);
    ratls_attest_server_stop(s);

    /* The limit is bounded; IPv6 addresses are bracketed. */
    ratls_attest_limits too_many = {.max_refusals = 1000000};
    char msg[RATLS_MSG_SIZE];
    s = NULL;
    CHECK(ratls_attest_server_start(srv_pol, srv.key, srv.key_len, srv.crt, srv.crt_len, "127.0.0.1", 0, &too_many,
                                    NULL, &s, msg, sizeof msg) == RATLS_ERR_BAD_ARGUMENT && s == NULL);
    CHECK(strstr(msg, "max_refusals") != NULL);
    if (ratls_attest_server_start(srv_pol, srv.key, srv.key_len, srv.crt, srv.crt_len, "::1", 0, NULL, NULL, &s, msg,
                                  sizeof msg) == RATLS_OK) {
        a.rc = ratls_attest_connect(cli_pol, stranger.key, stranger.key_len, stranger.crt, stranger.crt_len,
                                    stranger.chan, stranger.chan_len, "::1", ratls_attest_server_port(s), 5000, NULL,
                                    &a.peer, &a.peer_len, &a.ev, &a.ttl, &a.peer_reason, a.msg, sizeof a.msg);
        CHECK(a.rc == RATLS_ERR_PEER_REFUSED && a.peer_reason == RATLS_ERR_MRENCLAVE);
        r = pop_refusal(s, 0);
        CHECK(r.rc == RATLS_OK && strncmp(r.addr, "[::1]:", 6) == 0 && r.reason == RATLS_ERR_MRENCLAVE);
        ratls_attest_server_stop(s);
    } else {
        fprintf(stderr, "note: no IPv6 loopback, the bracketed address is not tested: %s\n", msg);
    }

    ratls_policy_free(srv_pol);
    ratls_policy_free(cli_pol);
    free_identity(&srv);
    free_identity(&cli);
    free_identity(&dbg);
    free_identity(&plain);
    free_identity(&stranger);
}

/* One-way attestation: a client with no certificate (key and certificate NULL) verifies the server and sends a
 * channel certificate self-signed by its own key. A default server refuses it with ATTESTATION_REQUIRED; one started
 * with allow_unattested queues it with no RA-TLS certificate and an all-zero evidence. */
static void test_one_way(const sim_env *env) {
    identity srv = make_identity(env, 0xA7, 0), laptop = make_plain_identity();
    ratls_policy *srv_pol = policy_for(env, 0xC7), *cli_pol = policy_for(env, 0xA7);
    uint8_t *der = NULL, *chan = NULL;
    size_t len = 1, chan_len = 0;
    ratls_evidence ev;
    uint8_t zero[32] = {0};

    ratls_attest_server *s = start(srv_pol, &srv, NULL);
    attempt a;
    memset(&a, 0, sizeof a);
    a.rc = ratls_attest_connect(cli_pol, NULL, 0, NULL, 0, laptop.chan, laptop.chan_len, "127.0.0.1",
                                ratls_attest_server_port(s), 5000, NULL, &a.peer, &a.peer_len, &a.ev, &a.ttl,
                                &a.peer_reason, a.msg, sizeof a.msg);
    CHECK(a.rc == RATLS_ERR_PEER_REFUSED && a.peer_reason == RATLS_ERR_ATTESTATION_REQUIRED && a.peer == NULL);
    CHECK(strstr(a.msg, "ATTESTATION_REQUIRED") != NULL);
    ratls_attest_stats st = settle(s, 1);
    CHECK(st.rejected == 1 && st.attested == 0 && st.unattested == 0 &&
          st.last_rejection == RATLS_ERR_ATTESTATION_REQUIRED);
    CHECK(pop_peer(s, 0, &der, &len, &ev) == RATLS_ERR_TIMEOUT);
    ratls_attest_server_stop(s);

    ratls_attest_limits lim = {.allow_unattested = 1, .trust_ttl_s = 55};
    s = start(srv_pol, &srv, &lim);
    memset(&a, 0, sizeof a);
    a.rc = ratls_attest_connect(cli_pol, NULL, 0, NULL, 0, laptop.chan, laptop.chan_len, "127.0.0.1",
                                ratls_attest_server_port(s), 5000, NULL, &a.peer, &a.peer_len, &a.ev, &a.ttl,
                                &a.peer_reason, a.msg, sizeof a.msg);
    if (a.rc) fprintf(stderr, "one-way attest: %s\n", a.msg);
    REQUIRE(a.rc == RATLS_OK);
    CHECK(a.ttl == 55 && a.peer_len == srv.crt_len && memcmp(a.peer, srv.crt, srv.crt_len) == 0);
    CHECK(a.ev.mrenclave[0] == 0xA7);
    ratls_free(a.peer);
    REQUIRE(ratls_attest_server_pop(s, 0, &der, &len, &chan, &chan_len, &ev) == RATLS_OK);
    CHECK(der == NULL && len == 0);
    CHECK(chan_len == laptop.chan_len && memcmp(chan, laptop.chan, chan_len) == 0);
    CHECK(memcmp(ev.mrenclave, zero, 32) == 0 && memcmp(ev.cert_sha256, zero, 32) == 0);
    ratls_free(chan);
    /* The client still verifies the server: a policy that does not allow it aborts before anything is sent. */
    ratls_policy *wrong_pol = policy_for(env, 0xEE);
    memset(&a, 0, sizeof a);
    a.rc = ratls_attest_connect(wrong_pol, NULL, 0, NULL, 0, laptop.chan, laptop.chan_len, "127.0.0.1",
                                ratls_attest_server_port(s), 5000, NULL, &a.peer, &a.peer_len, &a.ev, &a.ttl,
                                &a.peer_reason, a.msg, sizeof a.msg);
    CHECK(a.rc == RATLS_ERR_MRENCLAVE && a.peer == NULL);
    /* Another key's channel certificate is refused: an unattested channel certificate is checked against its own
     * key, and the server's RA-TLS certificate carries evidence besides. */
    memset(&a, 0, sizeof a);
    a.rc = ratls_attest_connect(cli_pol, NULL, 0, NULL, 0, srv.crt, srv.crt_len > RATLS_MAX_CHANNEL_CERT_SIZE
                                ? RATLS_MAX_CHANNEL_CERT_SIZE : srv.crt_len, "127.0.0.1",
                                ratls_attest_server_port(s), 5000, NULL, &a.peer, &a.peer_len, &a.ev, &a.ttl,
                                &a.peer_reason, a.msg, sizeof a.msg);
    CHECK(a.rc == RATLS_ERR_PEER_REFUSED && a.peer_reason == RATLS_ERR_CHANNEL_CERT);
    st = settle(s, 3);
    CHECK(st.attested == 1 && st.unattested == 1 && st.rejected == 1 && st.failed == 1);
    ratls_attest_server_stop(s);

    /* allow_unattested is a flag. */
    ratls_attest_limits bad = {.allow_unattested = 2};
    char msg[RATLS_MSG_SIZE] = "";
    ratls_attest_server *none = NULL;
    CHECK(ratls_attest_server_start(srv_pol, srv.key, srv.key_len, srv.crt, srv.crt_len, "127.0.0.1", 0, &bad, NULL,
                                    &none, msg, sizeof msg) == RATLS_ERR_BAD_ARGUMENT && none == NULL);
    CHECK(strstr(msg, "allow_unattested") != NULL);
    ratls_policy_free(wrong_pol);
    ratls_policy_free(srv_pol);
    ratls_policy_free(cli_pol);
    free_identity(&srv);
    free_identity(&laptop);
}

/* A simulated TD (ratls_provider_sim_configure_tdx): its certificates carry TDX quotes (v4 and v5) in Intel's layout
 * under the sim root, which the verifier checks like real ones (MRTD, RTMRs, debug TDs denied by default); its
 * quotes over a chosen report_data verify; and a TDX server and an SGX client attest each other when each policy
 * names the other's TEE, and are refused (TEE_TYPE) when it does not. */
static identity make_td_identity(const sim_env *env, const uint8_t mrtd[48], const uint8_t rtmrs[192],
                                 uint16_t version, int debug) {
    identity id;
    char msg[RATLS_MSG_SIZE] = "";
    int64_t now = (int64_t)time(NULL);
    int rc = ratls_provider_sim_configure_tdx(env->provider, env->ca_dir, mrtd, rtmrs, version, debug, now - 3600,
                                              now + 86400, msg, sizeof msg);
    if (!rc) rc = ratls_provider_create(env->provider, &id.key, &id.key_len, &id.crt, &id.crt_len, msg, sizeof msg);
    if (rc) fprintf(stderr, "sim TD identity: %s\n", msg);
    REQUIRE(rc == RATLS_OK);
    add_channel_cert(&id);
    return id;
}

static ratls_policy *td_policy(const sim_env *env, const uint8_t mrtd[48], uint32_t tees) {
    ratls_policy *p = ratls_policy_new();
    REQUIRE(p != NULL && ratls_policy_add_mrtd(p, mrtd) == RATLS_OK);
    ratls_policy_set_allowed_tees(p, tees);
    ratls_policy_set_allow_simulated(p, 1);
    ratls_policy_set_allowed_tcb_mask(p, 1u << RATLS_TCB_UNKNOWN);
    REQUIRE(ratls_policy_set_sim_root(p, env->root_der, env->root_len, NULL, 0) == RATLS_OK);
    return p;
}

static void test_sim_tdx(const sim_env *env) {
    uint8_t mrtd[48], rtmrs[192], other[48];
    memset(mrtd, 0x7d, sizeof mrtd);
    for (size_t i = 0; i < sizeof rtmrs; i++) rtmrs[i] = (uint8_t)(i / 48 + 1); /* RTMRi = i+1 repeated */
    memset(other, 0xee, sizeof other);
    char msg[RATLS_MSG_SIZE] = "";
    int64_t now = (int64_t)time(NULL);
    ratls_policy *pol = td_policy(env, mrtd, RATLS_TEE_TDX);
    for (uint16_t version = 4; version <= 5; version++) {
        identity td = make_td_identity(env, mrtd, rtmrs, version, 0);
        ratls_evidence ev;
        int rc = ratls_verify_cert(pol, td.crt, td.crt_len, now, RATLS_TCB_UNKNOWN, &ev, msg, sizeof msg);
        if (rc) fprintf(stderr, "sim TDX v%u certificate: %s: %s\n", version, ratls_reason_name(rc), msg);
        CHECK_EQ(rc, RATLS_OK);
        CHECK_EQ(ev.tee, RATLS_TEE_TDX);
        CHECK_EQ(ev.root, RATLS_ROOT_SIMULATED);
        CHECK(memcmp(ev.mrtd, mrtd, 48) == 0 && memcmp(ev.rtmr, rtmrs, 192) == 0);
        CHECK_EQ(ev.td_attributes & RATLS_TD_ATTRIBUTES_DEBUG, 0);
        ratls_cert_info info;
        REQUIRE(ratls_cert_inspect(td.crt, td.crt_len, &info, msg, sizeof msg) == RATLS_OK);
        ratls_quote q;
        REQUIRE(ratls_quote_parse(td.crt + info.quote.off, info.quote.len, &q, msg, sizeof msg) == RATLS_OK);
        CHECK_EQ(q.version, version);
        CHECK_EQ(q.body_type, version == 5 ? RATLS_BODY_TD_REPORT_15 : RATLS_BODY_TD_REPORT_10);
        /* An SGX policy refuses it; another MRTD or RTMR2 is refused with its reason. */
        ratls_policy *sgx = policy_for(env, 0xA1);
        CHECK_EQ(ratls_verify_cert(sgx, td.crt, td.crt_len, now, RATLS_TCB_UNKNOWN, &ev, msg, sizeof msg),
                 RATLS_ERR_TEE_TYPE);
        ratls_policy_free(sgx);
        ratls_policy *wrong = td_policy(env, other, RATLS_TEE_TDX);
        CHECK_EQ(ratls_verify_cert(wrong, td.crt, td.crt_len, now, RATLS_TCB_UNKNOWN, &ev, msg, sizeof msg),
                 RATLS_ERR_MRTD);
        ratls_policy_free(wrong);
        wrong = td_policy(env, mrtd, RATLS_TEE_TDX);
        REQUIRE(ratls_policy_add_rtmr(wrong, 2, other) == RATLS_OK);
        CHECK_EQ(ratls_verify_cert(wrong, td.crt, td.crt_len, now, RATLS_TCB_UNKNOWN, &ev, msg, sizeof msg),
                 RATLS_ERR_RTMR);
        CHECK(strstr(msg, "RTMR2 0303") != NULL);
        ratls_policy_free(wrong);

        /* A bare quote over a chosen report_data. */
        uint8_t rd[64], *quote = NULL;
        size_t quote_len = 0;
        for (size_t i = 0; i < sizeof rd; i++) rd[i] = (uint8_t)(0xA0 + i);
        REQUIRE(ratls_provider_sim_quote(env->provider, rd, &quote, &quote_len, msg, sizeof msg) == RATLS_OK);
        rc = ratls_verify_quote(pol, quote, quote_len, now, RATLS_TCB_UNKNOWN, &ev, msg, sizeof msg);
        if (rc) fprintf(stderr, "sim TDX v%u quote: %s: %s\n", version, ratls_reason_name(rc), msg);
        CHECK_EQ(rc, RATLS_OK);
        CHECK(memcmp(ev.report_data, rd, 64) == 0);
        quote[quote_len / 2] ^= 1; /* in the PCK chain */
        CHECK(ratls_verify_quote(pol, quote, quote_len, now, RATLS_TCB_UNKNOWN, &ev, msg, sizeof msg) != RATLS_OK);
        ratls_free(quote);
        free_identity(&td);
    }
    /* A debug TD: denied by default, accepted with allow_debug. */
    identity dbg = make_td_identity(env, mrtd, rtmrs, 4, 1);
    ratls_evidence ev;
    CHECK_EQ(ratls_verify_cert(pol, dbg.crt, dbg.crt_len, now, RATLS_TCB_UNKNOWN, &ev, msg, sizeof msg),
             RATLS_ERR_DEBUG_ENCLAVE);
    CHECK(strstr(msg, "DEBUG TD") != NULL);
    ratls_policy_set_allow_debug(pol, 1);
    CHECK_EQ(ratls_verify_cert(pol, dbg.crt, dbg.crt_len, now, RATLS_TCB_UNKNOWN, &ev, msg, sizeof msg), RATLS_OK);
    CHECK_EQ(ev.td_attributes & RATLS_TD_ATTRIBUTES_DEBUG, RATLS_TD_ATTRIBUTES_DEBUG);
    free_identity(&dbg);
    ratls_policy_free(pol);

    /* A TDX server and an SGX client over the attestation handshake. */
    identity srv = make_td_identity(env, mrtd, rtmrs, 5, 0), cli = make_identity(env, 0xC1, 0);
    ratls_policy *srv_pol = policy_for(env, 0xC1); /* an SGX policy, naming the client's MRENCLAVE */
    ratls_policy *cli_pol = td_policy(env, mrtd, RATLS_TEE_TDX);
    ratls_attest_server *s = start(srv_pol, &srv, NULL);
    attempt a = attest(cli_pol, &cli, ratls_attest_server_port(s), 5000);
    if (a.rc) fprintf(stderr, "TDX server, SGX client: %s\n", a.msg);
    CHECK_EQ(a.rc, RATLS_OK);
    CHECK(a.ev.tee == RATLS_TEE_TDX && memcmp(a.ev.mrtd, mrtd, 48) == 0);
    uint8_t *der = NULL;
    size_t len = 0;
    CHECK_EQ(pop_peer(s, 1000, &der, &len, &ev), RATLS_OK);
    CHECK(ev.tee == RATLS_TEE_SGX && ev.mrenclave[0] == 0xC1);
    ratls_free(der);
    ratls_free(a.peer);
    /* A client whose policy accepts only SGX refuses the TD server for its TEE. */
    ratls_policy *sgx_only = policy_for(env, 0xA1);
    a = attest(sgx_only, &cli, ratls_attest_server_port(s), 5000);
    CHECK_EQ(a.rc, RATLS_ERR_TEE_TYPE);
    ratls_free(a.peer);
    ratls_attest_server_stop(s);
    ratls_policy_free(sgx_only);
    ratls_policy_free(srv_pol);
    ratls_policy_free(cli_pol);
    free_identity(&srv);
    free_identity(&cli);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    sim_env env;
    sim_env_init(&env);
    test_mutual_success(&env);
    test_rejections(&env);
    test_tcb_evaluator(&env);
    test_tcb_evaluator_errors(&env);
    test_server_replies(&env);
    test_bad_input(&env);
    test_bounds_and_errors(&env);
    test_server_closing_mid_handshake(&env);
    test_channel_certificate(&env);
    test_channel_certificate_handshake(&env);
    test_refusal_records(&env);
    test_one_way(&env);
    test_sim_tdx(&env);
    sim_env_cleanup(&env);
    return test_summary();
}
