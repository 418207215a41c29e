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

static int skips(const uint8_t *bytes, size_t n, unsigned depth, size_t *left) {
    cbs s;
    cbs_init(&s, bytes, n);
    int ok = cbor_skip(&s, depth);
    *left = cbs_len(&s);
    return ok;
}

/* cbor_skip: any well-formed item of the subset, exactly its bytes; nothing consumed on failure. */
static void test_skip(void) {
    size_t left;
    /* {"a": [1, -1, h'00', 60000(["x"])], "b": {}} followed by one trailing byte */
    static const uint8_t item[] = {0xa2, 0x61, 'a', 0x84, 0x01, 0x20, 0x41, 0x00, 0xd9, 0xea, 0x60, 0x81, 0x61, 'x',
                                   0x61, 'b', 0xa0, 0xff};
    CHECK(skips(item, sizeof item, CBOR_MAX_DEPTH, &left));
    CHECK_EQ(left, 1);
    CHECK(skips(item, sizeof item, 4, &left)); /* map > array > tag > array: 4 levels */
    CHECK(!skips(item, sizeof item, 3, &left));
    CHECK_EQ(left, sizeof item);
    for (size_t cut = 0; cut < sizeof item - 1; cut++) {
        CHECK(!skips(item, cut, CBOR_MAX_DEPTH, &left));
        CHECK_EQ(left, cut);
    }
    /* 17 nested arrays: one deeper than the limit. */
    uint8_t deep[CBOR_MAX_DEPTH + 2];
    memset(deep, 0x81, CBOR_MAX_DEPTH + 1);
    deep[CBOR_MAX_DEPTH + 1] = 0x00;
    CHECK(!skips(deep, sizeof deep, CBOR_MAX_DEPTH, &left));
    CHECK(skips(deep + 1, sizeof deep - 1, CBOR_MAX_DEPTH, &left));
    static const uint8_t float16[] = {0xf9, 0x3c, 0x00}, simple_true[] = {0xf5},
                         huge_array[] = {0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00},
                         huge_map[] = {0xbb, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00},
                         indefinite_map[] = {0xbf, 0xff};
    CHECK(!skips(float16, sizeof float16, CBOR_MAX_DEPTH, &left));
    CHECK(!skips(simple_true, sizeof simple_true, CBOR_MAX_DEPTH, &left));
    CHECK(!skips(huge_array, sizeof huge_array, CBOR_MAX_DEPTH, &left)); /* more items than bytes: no loop */
    CHECK(!skips(huge_map, sizeof huge_map, CBOR_MAX_DEPTH, &left));     /* 2 * count overflows */
    CHECK(!skips(indefinite_map, sizeof indefinite_map, CBOR_MAX_DEPTH, &left));
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
    test_skip();
    return test_summary();
}
