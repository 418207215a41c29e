/* libFuzzer target: the attestation handshake (attest.c) as a peer drives it, over loopback TCP against the real
 * server and client code. The first input byte % 4 picks what the rest is:
 *   0  raw bytes a client sends to the attestation server (TLS records, garbage, truncations), then half-close;
 *   1  u16le key length, a DER private key, a DER certificate: the identity a client attests with (with a channel
 *      certificate made for it by ratls_channel_cert_create). A certificate whose key is not that key is re-keyed
 *      and re-signed with it (so TLS accepts it), which breaks its binding; a matching pair (the seeds) passes
 *      verification and is queued. The first byte's value / 4 % 10 is what the server's collateral evaluator
 *      answers: TCB status 0..7 (with advisories), 8 an error, 9 OK without a status.
 *   2  a script for a malicious attestation server talking to ratls_attest_connect after the handshake (and after
 *      reading the client's channel certificate message): each op byte b is b&3 = 0: write the next (b>>2)+1
 *      bytes, 1: KeyUpdate, 2: close_notify and end, 3: end.
 *   3  what a genuine client (the harness's own identity, whose certificate passes) sends after the handshake in
 *      place of its channel certificate message, then half-close; the server reads and checks it. Byte k, then:
 *      k even: the rest is sent as it is; k odd: the genuine message ("RATC" + length + the identity's channel
 *      certificate) with the rest applied as edits, each (u16le p, x): the byte p % size from the end ^= x.
 * Invariants beyond "no crash, no sanitizer report": raw bytes never attest a peer; a connect succeeds exactly when
 * the server queued that very certificate and channel certificate, with the evaluator's status and advisories, and
 * it verifies under the policy; each side's evaluator runs at most once per handshake, and exactly once for an
 * attested peer; a refusal the client reports (RATLS_ERR_PEER_REFUSED) names the reason the server recorded and gives
 * its code as peer_reason; every rejection the server counts leaves exactly one refusal record, popped after each
 * input, with the client's loopback address, the last of them with the recorded reason and message; the client
 * sends exactly "RATC" + its channel certificate after the handshake; the client accepts an acknowledgement exactly
 * when the first 8 bytes it was sent are "RAT1" + TTL, and reports that TTL; when they are "RATN" + a code, it
 * reports a refusal naming that code, with that code as peer_reason (-1 beyond INT_MAX), and peer_reason is 0
 * otherwise. In mode 3 the server acknowledges exactly when the bytes begin with a channel certificate message
 * whose certificate passes ratls_channel_cert_check for the identity, queues exactly that certificate then, and
 * otherwise refuses with CHANNEL_CERT and queues nothing.
 *
 * Environment: RATLS_SIM_LIB (libratls_sim.so) and RATLS_SIM_CA_DIR (a sim-ca directory; mode-1 seeds must come
 * from the same CA to verify). native/fuzz/run.py sets both. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "fuzz_common.h"

/* Generous: the same inputs also run under valgrind (replay_attest), ~50x slower. */
#define IO_TIMEOUT_MS 10000
#define CONNECT_TIMEOUT_MS 10000

static ratls_policy *policy;
static uint8_t *id_key, *id_cert, *id_chan;
static size_t id_key_len, id_cert_len, id_chan_len;
static ratls_attest_server *server;
static int evil_listen_fd = -1;
static uint16_t evil_port;
static SSL_CTX *evil_ctx;

/* The server's collateral evaluator: answers what the current mode-1 input chose (see above). */
#define TCB_CHOICE_ERROR 8
#define TCB_CHOICE_NO_STATUS 9
static int tcb_choice;      /* atomic; set before each mode-1 connect */
static int tcb_server_calls; /* atomic */
static int tcb_client_calls; /* atomic */

static void tcb_advisories(int choice, char *out, size_t len) {
    if (choice == 0) out[0] = '\0'; /* none */
    else snprintf(out, len, "INTEL-SA-%05d,INTEL-SA-00615", choice);
}

static int fuzz_evaluate(void *ctx, const uint8_t *cert_der, size_t cert_len, int64_t now, int *tcb_status,
                         char *advisories, size_t advisories_len, char *msg, size_t msg_len) {
    (void)now;
    FUZZ_REQUIRE(cert_der && cert_len > 0 && advisories_len == RATLS_ADVISORIES_SIZE && msg_len > 0);
    __atomic_add_fetch((int *)ctx, 1, __ATOMIC_SEQ_CST);
    if (ctx == &tcb_client_calls) { /* the client's, on the malicious server's (genuine) certificate */
        *tcb_status = RATLS_TCB_UP_TO_DATE;
        return RATLS_OK;
    }
    int choice = __atomic_load_n(&tcb_choice, __ATOMIC_SEQ_CST);
    if (choice == TCB_CHOICE_ERROR) return ratls_fail(msg, msg_len, RATLS_ERR_COLLATERAL, "fuzzed collateral error");
    if (choice != TCB_CHOICE_NO_STATUS) *tcb_status = choice;
    tcb_advisories(choice, advisories, advisories_len);
    return RATLS_OK;
}

static const ratls_tcb_evaluator server_tcb = {fuzz_evaluate, &tcb_server_calls};
static const ratls_tcb_evaluator client_tcb = {fuzz_evaluate, &tcb_client_calls};

#define REFUSAL_PREFIX "the attestation server refused our certificate: "

static int listen_loopback(uint16_t *port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof a;
    FUZZ_REQUIRE(fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 && listen(fd, 16) == 0 &&
                 getsockname(fd, (struct sockaddr *)&a, &sl) == 0);
    *port = ntohs(a.sin_port);
    return fd;
}

static void set_timeouts(int fd) {
    struct timeval tv = {.tv_sec = IO_TIMEOUT_MS / 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

static void make_identity(void) {
    const char *lib = getenv("RATLS_SIM_LIB"), *ca = getenv("RATLS_SIM_CA_DIR");
    if (!lib || !ca) {
        fprintf(stderr, "fuzz_attest needs RATLS_SIM_LIB (libratls_sim.so) and RATLS_SIM_CA_DIR (a sim-ca "
                        "directory); native/fuzz/run.py sets them\n");
        exit(2);
    }
    char msg[RATLS_MSG_SIZE] = "";
    ratls_provider *p = NULL;
    uint8_t mrenclave[32];
    memset(mrenclave, 0x5a, sizeof mrenclave);
    int rc = ratls_provider_open(lib, &p, msg, sizeof msg);
    if (rc == RATLS_OK) rc = ratls_provider_sim_configure(p, ca, mrenclave, 0, 0, 0, 0, 0, msg, sizeof msg);
    if (rc == RATLS_OK) rc = ratls_provider_create(p, &id_key, &id_key_len, &id_cert, &id_cert_len, msg, sizeof msg);
    if (rc == RATLS_OK)
        rc = ratls_channel_cert_create(id_key, id_key_len, id_cert, id_cert_len, &id_chan, &id_chan_len, msg, sizeof msg);
    if (rc != RATLS_OK) {
        fprintf(stderr, "fuzz_attest: sim identity: %s\n", msg);
        exit(2);
    }
    ratls_provider_close(p);
}

/* At exit the server's workers are joined and everything is freed, so valgrind sees a clean end. */
static void cleanup(void) {
    ratls_attest_server_stop(server);
    SSL_CTX_free(evil_ctx);
    if (evil_listen_fd >= 0) close(evil_listen_fd);
    ratls_policy_free(policy);
    ratls_free(id_key);
    ratls_free(id_cert);
    ratls_free(id_chan);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    signal(SIGPIPE, SIG_IGN); /* a peer closing first must be an error return, not a signal */
    policy = fuzz_permissive_policy();
    make_identity();
    char msg[RATLS_MSG_SIZE] = "";
    ratls_attest_limits limits = {.handshake_timeout_ms = IO_TIMEOUT_MS, .max_concurrent = 1};
    if (ratls_attest_server_start(policy, id_key, id_key_len, id_cert, id_cert_len, "127.0.0.1", 0, &limits,
                                  &server_tcb, &server, msg, sizeof msg) != RATLS_OK) {
        fprintf(stderr, "fuzz_attest: server: %s\n", msg);
        exit(2);
    }
    evil_listen_fd = listen_loopback(&evil_port);
    evil_ctx = SSL_CTX_new(TLS_server_method());
    const uint8_t *k = id_key, *c = id_cert;
    EVP_PKEY *key = d2i_AutoPrivateKey(NULL, &k, (long)id_key_len);
    X509 *cert = d2i_X509(NULL, &c, (long)id_cert_len);
    FUZZ_REQUIRE(evil_ctx && key && cert && SSL_CTX_set_min_proto_version(evil_ctx, TLS1_3_VERSION) &&
                 SSL_CTX_use_certificate(evil_ctx, cert) == 1 && SSL_CTX_use_PrivateKey(evil_ctx, key) == 1);
    SSL_CTX_set_num_tickets(evil_ctx, 0);
    EVP_PKEY_free(key);
    X509_free(cert);
    atexit(cleanup);
    return 0;
}

/* Waits until the server has finished every connection it accepted, and at least `connections` in all. */
static ratls_attest_stats server_settled(uint64_t connections) {
    ratls_attest_stats st;
    for (int waited_ms = 0;; waited_ms++) {
        ratls_attest_server_stats(server, &st);
        if (st.connections >= connections && st.in_flight == 0) return st;
        FUZZ_REQUIRE(waited_ms < 2 * IO_TIMEOUT_MS); /* the server must end every connection by its deadline */
        poll(NULL, 0, 1);
    }
}

static int connect_loopback(uint16_t port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    FUZZ_REQUIRE(fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) == 0);
    set_timeouts(fd);
    return fd;
}

static void drain_until_eof(int fd) {
    uint8_t buf[4096];
    while (read(fd, buf, sizeof buf) > 0) {
    }
}

/* The refusal records of the connections between `before` and `after` (the server settled): one per rejection,
 * none dropped, each from the loopback, the last with the recorded reason and message. Pops them all, so the queue
 * starts empty for the next input. */
static void check_refusal_records(const ratls_attest_stats *before, const ratls_attest_stats *after) {
    char addr[RATLS_ADDR_SIZE], msg[RATLS_MSG_SIZE];
    int reason = -1;
    uint64_t n = 0;
    while (ratls_attest_server_pop_refusal(server, 0, addr, sizeof addr, &reason, msg, sizeof msg) == RATLS_OK) {
        n++;
        FUZZ_REQUIRE(strncmp(addr, "127.0.0.1:", 10) == 0 && reason > 0 &&
                     strcmp(ratls_reason_name(reason), "UNKNOWN") != 0);
        FUZZ_REQUIRE(memchr(msg, '\0', sizeof msg) != NULL && msg[0] != '\0');
    }
    FUZZ_REQUIRE(after->refusals_dropped == before->refusals_dropped);
    FUZZ_REQUIRE(n == after->rejected - before->rejected);
    if (n) FUZZ_REQUIRE(reason == after->last_rejection && strcmp(msg, after->last_rejection_msg) == 0);
}

/* Mode 0. */
static void raw_client(const uint8_t *data, size_t len) {
    ratls_attest_stats before;
    ratls_attest_server_stats(server, &before);
    int fd = connect_loopback(ratls_attest_server_port(server));
    for (size_t done = 0; done < len;) {
        ssize_t n = write(fd, data + done, len - done);
        if (n <= 0) break; /* the server may refuse and close before reading everything */
        done += (size_t)n;
    }
    shutdown(fd, SHUT_WR);
    drain_until_eof(fd);
    close(fd);
    ratls_attest_stats after = server_settled(before.connections + 1);
    FUZZ_REQUIRE(after.attested == before.attested);
    check_refusal_records(&before, &after);
}

/* connect_cleanup_note: ratls_attest_connect leaves a failed handshake's TLS error (the peer's alert) on the
 * calling thread's OpenSSL error queue, unlike the rest of the core, so it is not held to the empty-queue invariant
 * here; the queue is cleared after it so that libFuzzer's per-input leak check does not run on every input. */

/* Mode 1. */
static void attesting_client(int choice, const uint8_t *data, size_t len) {
    if (len < 2) return;
    size_t key_len = (size_t)data[0] | (size_t)data[1] << 8;
    if (key_len > len - 2) return;
    const uint8_t *p = data + 2;
    EVP_PKEY *key = d2i_AutoPrivateKey(NULL, &p, (long)key_len);
    if (key && EVP_PKEY_get_base_id(key) != EVP_PKEY_EC) { /* RA-TLS keys are EC; a huge RSA key only burns time */
        EVP_PKEY_free(key);
        key = NULL;
    }
    const uint8_t *cert_in = data + 2 + key_len;
    size_t cert_in_len = len - 2 - key_len;
    p = cert_in;
    X509 *x = key ? d2i_X509(NULL, &p, (long)cert_in_len) : NULL;
    uint8_t *key_der = NULL, *cert_der = NULL;
    int key_der_len = key ? i2d_PrivateKey(key, &key_der) : -1;
    int cert_der_len = -1;
    if (x && key_der_len > 0) {
        if (X509_check_private_key(x, key) != 1 && (!X509_set_pubkey(x, key) || X509_sign(x, key, EVP_sha256()) <= 0))
            cert_der_len = -1;
        else
            cert_der_len = i2d_X509(x, &cert_der);
    }
    ERR_clear_error();
    X509_free(x);
    EVP_PKEY_free(key);
    uint8_t *chan = NULL;
    size_t chan_len = 0;
    if (cert_der_len > 0 &&
        ratls_channel_cert_create(key_der, (size_t)key_der_len, cert_der, (size_t)cert_der_len, &chan, &chan_len, NULL,
                                  0) != RATLS_OK)
        cert_der_len = -1; /* a certificate whose validity OpenSSL will not copy, say: nothing to attest with */
    FUZZ_REQUIRE_NO_OPENSSL_ERRORS();
    if (cert_der_len > 0) {
        ratls_attest_stats before;
        ratls_attest_server_stats(server, &before);
        char msg[RATLS_MSG_SIZE] = "";
        uint8_t *peer = NULL, *queued = NULL, *queued_chan = NULL;
        size_t peer_len = 0, queued_len = 0, queued_chan_len = 0;
        uint32_t ttl = 0;
        int peer_reason = -2;
        ratls_evidence ev, queued_ev;
        __atomic_store_n(&tcb_choice, choice, __ATOMIC_SEQ_CST);
        int calls_before = __atomic_load_n(&tcb_server_calls, __ATOMIC_SEQ_CST);
        ERR_clear_error();
        int rc = ratls_attest_connect(policy, key_der, (size_t)key_der_len, cert_der, (size_t)cert_der_len, chan,
                                      chan_len, "127.0.0.1", ratls_attest_server_port(server), CONNECT_TIMEOUT_MS, NULL,
                                      &peer, &peer_len, &ev, &ttl, &peer_reason, msg, sizeof msg);
        ERR_clear_error(); /* see connect_cleanup_note */
        /* BAD_ARGUMENT: the client refused its own identity (say, a key TLS will not use) and never connected. */
        ratls_attest_stats after = before;
        if (rc != RATLS_ERR_BAD_ARGUMENT) after = server_settled(before.connections + 1);
        int calls = __atomic_load_n(&tcb_server_calls, __ATOMIC_SEQ_CST) - calls_before;
        FUZZ_REQUIRE(calls == 0 || calls == 1);
        int popped = ratls_attest_server_pop(server, 0, &queued, &queued_len, &queued_chan, &queued_chan_len,
                                             &queued_ev);
        check_refusal_records(&before, &after);
        FUZZ_REQUIRE(rc == RATLS_ERR_PEER_REFUSED ? peer_reason > 0 : peer_reason == 0);
        if (rc == RATLS_OK) {
            FUZZ_REQUIRE(peer_len == id_cert_len && memcmp(peer, id_cert, peer_len) == 0);
            FUZZ_REQUIRE(popped == RATLS_OK && queued_len == (size_t)cert_der_len &&
                         memcmp(queued, cert_der, queued_len) == 0);
            FUZZ_REQUIRE(queued_chan_len == chan_len && memcmp(queued_chan, chan, chan_len) == 0);
            /* Trusted only after the evaluator's answer passed. */
            FUZZ_REQUIRE(calls == 1 && choice < TCB_CHOICE_ERROR && queued_ev.tcb_status == choice);
            char advisories[RATLS_ADVISORIES_SIZE];
            tcb_advisories(choice, advisories, sizeof advisories);
            FUZZ_REQUIRE(strcmp(queued_ev.advisory_ids, advisories) == 0);
            ratls_evidence check;
            FUZZ_REQUIRE(ratls_verify_cert(policy, cert_der, (size_t)cert_der_len, (int64_t)time(NULL), choice,
                                           &check, NULL, 0) == RATLS_OK);
        } else {
            fuzz_check_failure(rc, msg);
            FUZZ_REQUIRE(popped == RATLS_ERR_TIMEOUT); /* a refused client is never queued */
            if (strncmp(msg, REFUSAL_PREFIX, strlen(REFUSAL_PREFIX)) == 0) {
                /* A refusal names the reason the server recorded, before it sent it. */
                const char *name = ratls_reason_name(after.last_rejection);
                FUZZ_REQUIRE(rc == RATLS_ERR_PEER_REFUSED && after.rejected == before.rejected + 1);
                FUZZ_REQUIRE(peer_reason == after.last_rejection);
                FUZZ_REQUIRE(strncmp(msg + strlen(REFUSAL_PREFIX), name, strlen(name)) == 0 &&
                             msg[strlen(REFUSAL_PREFIX) + strlen(name)] == ' ');
                if (choice >= TCB_CHOICE_ERROR && calls == 1)
                    FUZZ_REQUIRE(after.last_rejection == RATLS_ERR_COLLATERAL);
            }
        }
        ratls_free(peer);
        ratls_free(queued);
        ratls_free(queued_chan);
    }
    ratls_free(chan);
    OPENSSL_free(key_der);
    OPENSSL_free(cert_der);
}

/* Mode 2: what the malicious server did, for the client's expected verdict. */
typedef struct {
    const uint8_t *ops;
    size_t n_ops;
    int handshake_done;
    int channel_ok; /* the client sent exactly "RATC" + length + its channel certificate */
    uint8_t sent[8];
    size_t n_sent; /* the first bytes written, up to 8 */
} evil_script;

static void *evil_server(void *arg) {
    evil_script *s = arg;
    struct pollfd pfd = {evil_listen_fd, POLLIN, 0};
    if (poll(&pfd, 1, IO_TIMEOUT_MS) != 1) return NULL;
    int fd = accept4(evil_listen_fd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0) return NULL;
    set_timeouts(fd);
    SSL *ssl = SSL_new(evil_ctx);
    if (ssl && SSL_set_fd(ssl, fd) == 1 && SSL_accept(ssl) == 1) {
        s->handshake_done = 1;
        uint8_t chan[6 + RATLS_MAX_CHANNEL_CERT_SIZE];
        size_t want = 6 + id_chan_len, got = 0;
        while (got < want) {
            int r = SSL_read(ssl, chan + got, (int)(want - got));
            if (r <= 0) break;
            got += (size_t)r;
        }
        s->channel_ok = got == want && memcmp(chan, "RATC", 4) == 0 && chan[4] == (uint8_t)(id_chan_len >> 8) &&
                        chan[5] == (uint8_t)id_chan_len && memcmp(chan + 6, id_chan, id_chan_len) == 0;
        int graceful = 1;
        for (size_t i = 0; i < s->n_ops;) {
            uint8_t op = s->ops[i++];
            if ((op & 3) == 0) {
                size_t k = (size_t)(op >> 2) + 1;
                if (k > s->n_ops - i) k = s->n_ops - i;
                if (k == 0 || SSL_write(ssl, s->ops + i, (int)k) != (int)k) break;
                for (size_t j = 0; j < k && s->n_sent < sizeof s->sent; j++) s->sent[s->n_sent++] = s->ops[i + j];
                i += k;
            } else if ((op & 3) == 1) {
                SSL_key_update(ssl, op & 4 ? SSL_KEY_UPDATE_REQUESTED : SSL_KEY_UPDATE_NOT_REQUESTED);
            } else {
                graceful = (op & 3) == 2;
                break;
            }
        }
        if (graceful) SSL_shutdown(ssl);
    }
    ERR_clear_error();
    /* A clean TCP close (no reset that could destroy data the client has not read yet). */
    shutdown(fd, SHUT_WR);
    drain_until_eof(fd);
    SSL_free(ssl);
    close(fd);
    return NULL;
}

static void acknowledged_client(const uint8_t *ops, size_t n_ops) {
    evil_script script = {.ops = ops, .n_ops = n_ops};
    pthread_t t;
    FUZZ_REQUIRE(pthread_create(&t, NULL, evil_server, &script) == 0);
    char msg[RATLS_MSG_SIZE] = "";
    uint8_t *peer = NULL;
    size_t peer_len = 0;
    uint32_t ttl = 0;
    int peer_reason = -2;
    ratls_evidence ev;
    int calls_before = __atomic_load_n(&tcb_client_calls, __ATOMIC_SEQ_CST);
    int rc = ratls_attest_connect(policy, id_key, id_key_len, id_cert, id_cert_len, id_chan, id_chan_len,
                                  "127.0.0.1", evil_port, CONNECT_TIMEOUT_MS, &client_tcb, &peer, &peer_len, &ev, &ttl,
                                  &peer_reason, msg, sizeof msg);
    ERR_clear_error(); /* see connect_cleanup_note */
    pthread_join(t, NULL);
    FUZZ_REQUIRE(script.handshake_done && script.channel_ok);
    FUZZ_REQUIRE(__atomic_load_n(&tcb_client_calls, __ATOMIC_SEQ_CST) - calls_before == 1);
    int valid_ack = script.n_sent == 8 && memcmp(script.sent, "RAT1", 4) == 0;
    int refusal = script.n_sent == 8 && memcmp(script.sent, "RATN", 4) == 0;
    FUZZ_REQUIRE(refusal == (rc == RATLS_ERR_PEER_REFUSED));
    if (!refusal) FUZZ_REQUIRE(peer_reason == 0);
    if (refusal) {
        /* A refusal, whatever its code: never an acceptance, and the client names the code it got. */
        uint32_t code = (uint32_t)script.sent[4] << 24 | (uint32_t)script.sent[5] << 16 |
                        (uint32_t)script.sent[6] << 8 | script.sent[7];
        const char *name = code <= INT32_MAX ? ratls_reason_name((int)code) : "UNKNOWN";
        char want[96];
        if (code == RATLS_OK || strcmp(name, "UNKNOWN") == 0)
            snprintf(want, sizeof want, REFUSAL_PREFIX "reason code %u, unknown", code);
        else
            snprintf(want, sizeof want, REFUSAL_PREFIX "%s (", name);
        FUZZ_REQUIRE(rc == RATLS_ERR_PEER_REFUSED && strncmp(msg, want, strlen(want)) == 0);
        FUZZ_REQUIRE(peer_reason == (code <= INT32_MAX ? (int)code : -1));
    }
    if (rc == RATLS_OK) {
        FUZZ_REQUIRE(valid_ack);
        uint32_t want = (uint32_t)script.sent[4] << 24 | (uint32_t)script.sent[5] << 16 |
                        (uint32_t)script.sent[6] << 8 | script.sent[7];
        FUZZ_REQUIRE(ttl == want);
        FUZZ_REQUIRE(peer_len == id_cert_len && memcmp(peer, id_cert, peer_len) == 0);
        FUZZ_REQUIRE(ev.tcb_status == RATLS_TCB_UP_TO_DATE);
    } else {
        fuzz_check_failure(rc, msg);
        FUZZ_REQUIRE(!valid_ack);
    }
    ratls_free(peer);
}

/* Mode 3: a TLS 1.3 client with the genuine identity; after the handshake it sends `bytes`, half-closes and reads
 * up to 8 reply bytes. Returns how many it read. */
static size_t genuine_client_sends(const uint8_t *bytes, size_t len, uint8_t reply[8]) {
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    const uint8_t *k = id_key, *c = id_cert;
    EVP_PKEY *key = d2i_AutoPrivateKey(NULL, &k, (long)id_key_len);
    X509 *cert = d2i_X509(NULL, &c, (long)id_cert_len);
    FUZZ_REQUIRE(ctx && key && cert && SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) &&
                 SSL_CTX_use_certificate(ctx, cert) == 1 && SSL_CTX_use_PrivateKey(ctx, key) == 1);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    int fd = connect_loopback(ratls_attest_server_port(server));
    SSL *ssl = SSL_new(ctx);
    size_t got = 0;
    FUZZ_REQUIRE(ssl && SSL_set_fd(ssl, fd) == 1);
    FUZZ_REQUIRE(SSL_connect(ssl) == 1); /* the server's certificate is not checked here; ours passes */
    if (len == 0 || SSL_write(ssl, bytes, (int)len) == (int)len) {
        shutdown(fd, SHUT_WR);
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

/* Mode 3. */
static void channel_bytes_client(const uint8_t *data, size_t len) {
    if (len == 0) return;
    uint8_t kind = data[0];
    data++, len--;
    uint8_t *msg = NULL;
    size_t msg_len = len;
    if (kind % 2 == 0) {
        if (len > 65536 + 6) return; /* past what the server reads and drains */
        msg = malloc(len ? len : 1);
        FUZZ_REQUIRE(msg != NULL);
        if (len) memcpy(msg, data, len);
    } else {
        msg_len = 6 + id_chan_len;
        msg = malloc(msg_len);
        FUZZ_REQUIRE(msg != NULL);
        memcpy(msg, "RATC", 4);
        msg[4] = (uint8_t)(id_chan_len >> 8);
        msg[5] = (uint8_t)id_chan_len;
        memcpy(msg + 6, id_chan, id_chan_len);
        for (size_t i = 0; i + 3 <= len; i += 3) {
            size_t pos = ((size_t)data[i] | (size_t)data[i + 1] << 8) % msg_len;
            msg[msg_len - 1 - pos] ^= data[i + 2];
        }
    }
    /* What the server must decide: acknowledged exactly for a well-framed certificate that passes the check. */
    size_t body = msg_len >= 6 ? (size_t)msg[4] << 8 | msg[5] : 0;
    int good = msg_len >= 6 && memcmp(msg, "RATC", 4) == 0 && body >= 1 && body <= RATLS_MAX_CHANNEL_CERT_SIZE &&
               msg_len >= 6 + body &&
               ratls_channel_cert_check(id_cert, id_cert_len, msg + 6, body, (int64_t)time(NULL), NULL, 0) == RATLS_OK;
    FUZZ_REQUIRE_NO_OPENSSL_ERRORS();
    ratls_attest_stats before;
    ratls_attest_server_stats(server, &before);
    __atomic_store_n(&tcb_choice, RATLS_TCB_UP_TO_DATE, __ATOMIC_SEQ_CST);
    int calls_before = __atomic_load_n(&tcb_server_calls, __ATOMIC_SEQ_CST);
    uint8_t reply[8];
    size_t got = genuine_client_sends(msg, msg_len, reply);
    ratls_attest_stats after = server_settled(before.connections + 1);
    FUZZ_REQUIRE(__atomic_load_n(&tcb_server_calls, __ATOMIC_SEQ_CST) - calls_before == 1);
    uint8_t *queued = NULL, *queued_chan = NULL;
    size_t queued_len = 0, queued_chan_len = 0;
    ratls_evidence queued_ev;
    int popped = ratls_attest_server_pop(server, 0, &queued, &queued_len, &queued_chan, &queued_chan_len, &queued_ev);
    if (good) {
        FUZZ_REQUIRE(got == 8 && memcmp(reply, "RAT1", 4) == 0);
        FUZZ_REQUIRE(popped == RATLS_OK && after.attested == before.attested + 1);
        FUZZ_REQUIRE(queued_len == id_cert_len && memcmp(queued, id_cert, queued_len) == 0);
        FUZZ_REQUIRE(queued_chan_len == body && memcmp(queued_chan, msg + 6, body) == 0);
    } else {
        static const uint8_t refusal[8] = {'R', 'A', 'T', 'N', 0, 0, 0, RATLS_ERR_CHANNEL_CERT};
        /* Safety: a reply, if any, is exactly the refusal. Not required: that the reply arrives. Once in a CI run
         * (1 of 1,158 inputs, under load; 0 of 1,686 runs of the same input alone) the client read fewer than 8
         * bytes: a refused client then sees "not attested" without the reason. Still to find (issue 17). */
        FUZZ_REQUIRE(got < 8 || memcmp(reply, refusal, 8) == 0);
        FUZZ_REQUIRE(popped == RATLS_ERR_TIMEOUT && after.attested == before.attested);
        FUZZ_REQUIRE(after.rejected == before.rejected + 1 && after.last_rejection == RATLS_ERR_CHANNEL_CERT);
    }
    check_refusal_records(&before, &after);
    ratls_free(queued);
    ratls_free(queued_chan);
    free(msg);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len) {
    if (len == 0) return 0;
    switch (data[0] % 4) {
    case 0: raw_client(data + 1, len - 1); break;
    case 1: attesting_client(data[0] / 4 % 10, data + 1, len - 1); break;
    case 2: acknowledged_client(data + 1, len - 1); break;
    default: channel_bytes_client(data + 1, len - 1); break;
    }
    ERR_clear_error(); /* this thread's own OpenSSL calls above (key and certificate re-encoding) */
    return 0;
}
