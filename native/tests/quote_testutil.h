/* Helpers the quote tests share (test_quote.c: SGX, test_tdx.c: TDX): parse + verify, the bit-flip sweep over a
 * signed region, a parse that fills the struct with garbage first, and little-endian writers for hand-made quotes. */
#ifndef RATLS_QUOTE_TESTUTIL_H
#define RATLS_QUOTE_TESTUTIL_H

#include "internal.h"
#include "testutil.h"

/* ratls_quote_parse, then ratls_quote_verify_signatures at `now`; the first failing reason (or OK), and in *root
 * (unless NULL) which root the PCK chain ends at. */
static inline int quote_parse_and_verify(const ratls_policy *pol, const uint8_t *raw, size_t len, int64_t now,
                                         int *root, char *msg) {
    ratls_quote q;
    int ignored_root;
    int rc = ratls_quote_parse(raw, len, &q, msg, RATLS_MSG_SIZE);
    return rc != RATLS_OK ? rc
                          : ratls_quote_verify_signatures(pol, raw, len, &q, now, root ? root : &ignored_root, msg,
                                                          RATLS_MSG_SIZE);
}

/* Every bit of [off, off+n) flipped in turn (every test_sweep_step()-th byte); each flip must be refused with
 * expected(offset, flipped byte). Reports the first three that are not. */
static inline void flip_region(const ratls_policy *pol, const char *name, const uint8_t *raw, size_t len, int64_t now,
                               size_t off, size_t n, int (*expected)(size_t off, uint8_t flipped)) {
    uint8_t *copy = malloc(len);
    memcpy(copy, raw, len);
    size_t wrong = 0, tried = 0;
    for (size_t i = off; i < off + n; i += test_sweep_step()) {
        for (int bit = 0; bit < 8; bit++) {
            copy[i] ^= (uint8_t)(1u << bit);
            char msg[RATLS_MSG_SIZE] = "";
            int rc = quote_parse_and_verify(pol, copy, len, now, NULL, msg);
            int want = expected(i, copy[i]);
            tried++;
            if (rc != want && wrong++ < 3)
                fprintf(stderr, "  %s: flip of byte %zu bit %d gave %s (%s), expected %s\n", name, i, bit,
                        ratls_reason_name(rc), msg, ratls_reason_name(want));
            copy[i] ^= (uint8_t)(1u << bit);
        }
    }
    if (wrong) fprintf(stderr, "  %s: %zu of %zu flips with the wrong result\n", name, wrong, tried);
    CHECK_EQ(wrong, 0);
    CHECK(tried > 0);
    free(copy);
}

/* Expectations for flip_region where every flip of a region gives one reason. */
static inline int expect_quote_signature(size_t off, uint8_t flipped) {
    return (void)off, (void)flipped, RATLS_ERR_QUOTE_SIGNATURE;
}
static inline int expect_qe_report_data(size_t off, uint8_t flipped) {
    return (void)off, (void)flipped, RATLS_ERR_QE_REPORT_DATA;
}
static inline int expect_qe_report_signature(size_t off, uint8_t flipped) {
    return (void)off, (void)flipped, RATLS_ERR_QE_REPORT_SIGNATURE;
}

/* ratls_quote_parse's reason, into a struct full of garbage (a field the parser forgot to set shows). */
static inline int parse_reason(const uint8_t *raw, size_t len, char *msg) {
    ratls_quote q;
    memset(&q, 0x5a, sizeof(q));
    return ratls_quote_parse(raw, len, &q, msg, RATLS_MSG_SIZE);
}

static inline void put_u16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static inline void put_u32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

#endif
