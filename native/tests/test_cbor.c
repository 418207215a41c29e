/* CBOR heads and strings: round trips at every length boundary, and rejection of what RA-TLS evidence must
 * not contain (indefinite lengths, non-minimal or reserved encodings, truncation). */
#include "cbor.h"
#include "testutil.h"

static void round_trip(uint8_t major, uint64_t v, size_t encoded_len) {
    cbb b;
    cbb_init(&b);
    CHECK(cbor_add_head(&b, major, v));
    CHECK_EQ(b.len, encoded_len);
    cbs s;
    cbs_init(&s, b.data, b.len);
    uint8_t m = 0xff;
    uint64_t got = 0;
    CHECK(cbor_get_head(&s, &m, &got));
    CHECK_EQ(m, major);
    CHECK(got == v);
    CHECK_EQ(cbs_len(&s), 0);
    for (size_t cut = 0; cut < b.len; cut++) { /* every truncation fails and consumes nothing */
        cbs_init(&s, b.data, cut);
        CHECK(!cbor_get_head(&s, &m, &got));
        CHECK_EQ(cbs_len(&s), cut);
    }
    cbb_cleanup(&b);
}

static int head_ok(const uint8_t *bytes, size_t n) {
    cbs s;
    uint8_t m;
    uint64_t v;
    cbs_init(&s, bytes, n);
    return cbor_get_head(&s, &m, &v);
}

int main(void) {
    const uint64_t values[] = {0, 23, 24, 255, 256, 65535, 65536, 0xffffffffu, 0x100000000ull, UINT64_MAX};
    const size_t lens[] = {1, 1, 2, 2, 3, 3, 5, 5, 9, 9};
    for (size_t i = 0; i < sizeof values / sizeof *values; i++) round_trip(CBOR_BYTES, values[i], lens[i]);
    round_trip(CBOR_TAG, 60000, 3);

    static const uint8_t indefinite[] = {0x5f}, reserved[] = {0x1c}, non_minimal_1[] = {0x18, 0x05},
                         non_minimal_2[] = {0x19, 0x00, 0xff}, minimal_2[] = {0x19, 0x01, 0x00};
    CHECK(!head_ok(indefinite, 1));
    CHECK(!head_ok(reserved, 1));
    CHECK(!head_ok(non_minimal_1, 2));
    CHECK(!head_ok(non_minimal_2, 3));
    CHECK(head_ok(minimal_2, 3));

    /* Strings: the type must match, and the length must fit. */
    cbb b;
    cbb_init(&b);
    CHECK(cbor_add_string(&b, CBOR_TEXT, "pubkey-hash", 11));
    cbs s, out;
    cbs_init(&s, b.data, b.len);
    CHECK(!cbor_get_string(&s, CBOR_BYTES, &out));
    CHECK_EQ(cbs_len(&s), b.len);
    CHECK(cbor_get_string(&s, CBOR_TEXT, &out));
    CHECK(cbs_len(&out) == 11 && memcmp(cbs_data(&out), "pubkey-hash", 11) == 0);
    cbs_init(&s, b.data, b.len - 1);
    CHECK(!cbor_get_string(&s, CBOR_TEXT, &out));
    static const uint8_t huge[] = {0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    cbs_init(&s, huge, sizeof huge);
    CHECK(!cbor_get_string(&s, CBOR_BYTES, &out));
    cbb_cleanup(&b);
    return test_summary();
}
