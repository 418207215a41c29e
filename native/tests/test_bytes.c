/* cbs/cbb edge cases: short reads consume nothing, endianness, splitting, offsets, buffer growth,
 * size overflow, the empty buffer, length-prefixed children (nesting, limits, misuse), and DER elements
 * (every length form, and each way a length is not DER). */
#include "bytes.h"
#include "testutil.h"

static void test_reads(void) {
    const uint8_t data[] = {0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09};
    cbs s;
    cbs_init(&s, data, sizeof(data));
    uint8_t u8;
    uint16_t u16;
    uint32_t u32;
    uint64_t u64;
    CHECK(cbs_get_u8(&s, &u8) && u8 == 0x01);
    CHECK(cbs_get_u16le(&s, &u16) && u16 == 0x0302);
    CHECK(cbs_get_u16be(&s, &u16) && u16 == 0x0405);
    CHECK_EQ(cbs_offset(&s, data), 5);
    CHECK_EQ(cbs_len(&s), 4);
    /* Too short: fails and consumes nothing. */
    u64 = 42;
    CHECK(!cbs_get_u64le(&s, &u64) && u64 == 42);
    CHECK(!cbs_get_u64be(&s, &u64));
    CHECK_EQ(cbs_len(&s), 4);
    CHECK(cbs_get_u32be(&s, &u32) && u32 == 0x06070809);
    CHECK_EQ(cbs_len(&s), 0);
    CHECK(!cbs_get_u8(&s, &u8));
    CHECK(!cbs_skip(&s, 1));
    CHECK(cbs_skip(&s, 0));
    CHECK(cbs_copy(&s, &u8, 0));

    cbs_init(&s, data, sizeof(data));
    CHECK(cbs_get_u32le(&s, &u32) && u32 == 0x04030201);
    CHECK(cbs_get_u32le(&s, &u32) && u32 == 0x08070605);
    cbs_init(&s, data, 8);
    CHECK(cbs_get_u64le(&s, &u64) && u64 == 0x0807060504030201ull);
    cbs_init(&s, data, 8);
    CHECK(cbs_get_u64be(&s, &u64) && u64 == 0x0102030405060708ull);
    const uint8_t high[] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe};
    cbs_init(&s, high, 8);
    CHECK(cbs_get_u64le(&s, &u64) && u64 == 0xfeffffffffffffffull);

    /* Splitting: the part is bounded, the rest moves on. */
    cbs_init(&s, data, sizeof(data));
    cbs part;
    CHECK(cbs_get_bytes(&s, &part, 3));
    CHECK(cbs_data(&part) == data && cbs_len(&part) == 3 && cbs_len(&s) == 6);
    CHECK(!cbs_get_u32le(&part, &u32));
    CHECK(!cbs_get_bytes(&s, &part, 7));
    CHECK(cbs_data(&part) == data && cbs_len(&part) == 3 && cbs_len(&s) == 6); /* untouched on failure */
    CHECK(cbs_get_bytes(&s, &part, 6) && cbs_len(&s) == 0 && cbs_offset(&part, data) == 3);
    uint8_t buf[4] = {9, 9, 9, 9};
    cbs_init(&s, data, 3);
    CHECK(!cbs_copy(&s, buf, 4) && buf[0] == 9 && cbs_len(&s) == 3);
    CHECK(cbs_copy(&s, buf, 3) && memcmp(buf, data, 3) == 0 && buf[3] == 9);
    /* A huge length never wraps around. */
    cbs_init(&s, data, sizeof(data));
    CHECK(!cbs_skip(&s, SIZE_MAX));
    CHECK(!cbs_get_bytes(&s, &part, SIZE_MAX));
    CHECK_EQ(cbs_len(&s), sizeof(data));

    cbs_init(&s, NULL, 0);
    CHECK(!cbs_get_u8(&s, &u8));
    CHECK(cbs_get_bytes(&s, &part, 0) && cbs_len(&part) == 0);
}

static void test_writes(void) {
    cbb b;
    cbb_init(&b);
    size_t len = 99;
    uint8_t *out = cbb_finish(&b, &len);
    CHECK(out != NULL && len == 0); /* empty but a real buffer */
    free(out);

    cbb_init(&b);
    CHECK(cbb_add_u8(&b, 0xaa));
    CHECK(cbb_add_u16le(&b, 0x0201));
    CHECK(cbb_add_u32le(&b, 0x06050403));
    CHECK(cbb_add_u64le(&b, 0x0e0d0c0b0a090807ull));
    CHECK(cbb_add_zeros(&b, 2));
    CHECK(cbb_add(&b, "xy", 2));
    CHECK(cbb_add(&b, NULL, 0));
    const uint8_t expected[] = {0xaa, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 0, 0, 'x', 'y'};
    out = cbb_finish(&b, &len);
    CHECK_EQ(len, sizeof(expected));
    CHECK(out && memcmp(out, expected, sizeof(expected)) == 0);
    CHECK(b.data == NULL && b.len == 0); /* reset, ready for reuse */
    free(out);

    /* Growth well past the first allocation keeps every byte. */
    cbb_init(&b);
    for (uint32_t i = 0; i < 5000; i++) cbb_add_u32le(&b, i);
    CHECK(!b.failed && b.len == 20000 && b.cap >= 20000);
    int intact = 1;
    cbs s;
    cbs_init(&s, b.data, b.len);
    for (uint32_t i = 0; i < 5000; i++) {
        uint32_t v = 0;
        intact &= cbs_get_u32le(&s, &v) && v == i;
    }
    CHECK(intact);
    cbb_cleanup(&b);
    CHECK(b.data == NULL && b.len == 0 && b.cap == 0);

    /* An impossible size fails the buffer for good; finish then gives NULL. */
    cbb_init(&b);
    CHECK(cbb_add_u8(&b, 1));
    CHECK(!cbb_add_zeros(&b, SIZE_MAX));
    CHECK(b.failed);
    CHECK(!cbb_add_u8(&b, 2));
    CHECK_EQ(b.len, 1);
    CHECK(cbb_finish(&b, &len) == NULL);
    CHECK(b.data == NULL && !b.failed);
}

/* The child's bytes, as its parent holds them once closed. */
static int holds(const cbb *b, const void *expected, size_t n) {
    return !b->failed && b->len == n && memcmp(b->data, expected, n) == 0;
}

static void test_children(void) {
    cbb b, child, grandchild;
    cbb_init(&b);
    CHECK(cbb_add_u8(&b, 0xaa));
    CHECK(cbb_add_u32le_prefixed(&b, &child));
    CHECK(cbb_add(&child, "ab", 2));
    CHECK(cbb_add_u16le_prefixed(&child, &grandchild));
    CHECK(cbb_add(&grandchild, "xyz", 3));
    CHECK(cbb_close(&grandchild));
    CHECK(cbb_add_u16le_prefixed(&child, &grandchild)); /* empty */
    CHECK(cbb_close(&grandchild));
    CHECK(cbb_close(&child));
    CHECK(cbb_add_u8(&b, 0xbb)); /* the parent takes writes again */
    const uint8_t nested[] = {0xaa, 9, 0, 0, 0, 'a', 'b', 3, 0, 'x', 'y', 'z', 0, 0, 0xbb};
    CHECK(holds(&b, nested, sizeof nested));
    CHECK(!cbb_close(&child)); /* closed already: nothing written */
    CHECK(holds(&b, nested, sizeof nested));
    cbb_cleanup(&b);

    /* The longest u16le contents fit; one byte more fails the parent. */
    cbb_init(&b);
    CHECK(cbb_add_u16le_prefixed(&b, &child));
    CHECK(cbb_add_zeros(&child, UINT16_MAX));
    CHECK(cbb_close(&child));
    CHECK(!b.failed && b.len == 2 + UINT16_MAX && b.data[0] == 0xff && b.data[1] == 0xff);
    CHECK(cbb_add_u16le_prefixed(&b, &child));
    CHECK(cbb_add_zeros(&child, UINT16_MAX + 1));
    CHECK(!cbb_close(&child));
    CHECK(b.failed);
    cbb_cleanup(&b);

    /* A failed child fails its parent when closed. */
    cbb_init(&b);
    CHECK(cbb_add_u32le_prefixed(&b, &child));
    CHECK(cbb_add_u8(&child, 1));
    CHECK(!cbb_add_zeros(&child, SIZE_MAX)); /* an impossible size, not an allocation attempt */
    CHECK(!cbb_close(&child));
    CHECK(b.failed);
    size_t len;
    CHECK(cbb_finish(&b, &len) == NULL);

    /* Writing to the parent, or opening a second child, while a child is open fails the parent. */
    cbb_init(&b);
    CHECK(cbb_add_u16le_prefixed(&b, &child));
    CHECK(!cbb_add_u8(&b, 1));
    CHECK(b.failed);
    CHECK(!cbb_close(&child));
    cbb_cleanup(&b);
    cbb_init(&b);
    CHECK(cbb_add_u16le_prefixed(&b, &child));
    CHECK(!cbb_add_u16le_prefixed(&b, &grandchild));
    CHECK(grandchild.failed && b.failed);
    CHECK(!cbb_close(&grandchild));
    CHECK(!cbb_close(&child));
    CHECK(cbb_finish(&b, &len) == NULL);
    /* A failed parent gives failed children. */
    cbb_init(&b);
    CHECK(cbb_add_u8(&b, 1));
    CHECK(!cbb_add_zeros(&b, SIZE_MAX));
    CHECK(!cbb_add_u32le_prefixed(&b, &child));
    CHECK(child.failed && !cbb_add_u8(&child, 1));
    CHECK(!cbb_close(&child));
    cbb_cleanup(&b);

    /* Finishing a parent with an open child fails; the child then closes into nothing (and is freed). */
    cbb_init(&b);
    CHECK(cbb_add_u8(&b, 1));
    CHECK(cbb_add_u16le_prefixed(&b, &child));
    CHECK(cbb_add_u8(&child, 2));
    CHECK(cbb_finish(&b, &len) == NULL);
    CHECK(!cbb_close(&child));
    CHECK(b.data == NULL && b.len == 0);
}

/* A DER child's head: the tag, then the length in the shortest form. */
static void check_der_head(size_t n, const uint8_t *head, size_t head_len) {
    cbb b, child;
    cbb_init(&b);
    CHECK(cbb_add_der(&b, &child, DER_OCTET_STRING));
    CHECK(cbb_add_zeros(&child, n));
    CHECK(cbb_close(&child));
    CHECK(!b.failed && b.len == head_len + n && memcmp(b.data, head, head_len) == 0);
    cbb_cleanup(&b);
}

static void test_der_children(void) {
    check_der_head(0, (const uint8_t[]){0x04, 0x00}, 2);
    check_der_head(0x7f, (const uint8_t[]){0x04, 0x7f}, 2);
    check_der_head(0x80, (const uint8_t[]){0x04, 0x81, 0x80}, 3);
    check_der_head(0xff, (const uint8_t[]){0x04, 0x81, 0xff}, 3);
    check_der_head(0x100, (const uint8_t[]){0x04, 0x82, 0x01, 0x00}, 4);
    check_der_head(0x10000, (const uint8_t[]){0x04, 0x83, 0x01, 0x00, 0x00}, 5);

    /* SEQUENCE { [0] 'k' }, as an authority key identifier is built. */
    cbb b, seq, id;
    cbb_init(&b);
    CHECK(cbb_add_der(&b, &seq, DER_SEQUENCE));
    CHECK(cbb_add_der(&seq, &id, DER_CONTEXT | 0));
    CHECK(cbb_add_u8(&id, 'k'));
    CHECK(cbb_close(&id));
    CHECK(cbb_close(&seq));
    const uint8_t aki[] = {0x30, 0x03, 0x80, 0x01, 'k'};
    CHECK(holds(&b, aki, sizeof aki));
    cbb_cleanup(&b);

    /* A tag number of 31 or more needs the multi-byte form, which is not written. */
    cbb_init(&b);
    CHECK(!cbb_add_der(&b, &id, DER_CONTEXT | 0x1f));
    CHECK(id.failed && b.failed);
    CHECK(!cbb_close(&id));
    cbb_cleanup(&b);
}

/* Reads `bytes` as one DER OCTET STRING: 1 if it reads, 0 if it fails consuming nothing, -1 if it fails having
 * consumed some. */
static int der_read(const uint8_t *bytes, size_t n) {
    cbs s, contents;
    cbs_init(&s, bytes, n);
    if (cbs_get_der(&s, DER_OCTET_STRING, &contents)) return 1;
    return cbs_len(&s) == n ? 0 : -1;
}

static void test_der_reads(void) {
    static const uint8_t two[] = {0x04, 0x03, 'a', 'b', 'c', 0x30, 0x00};
    cbs s, part;
    cbs_init(&s, two, sizeof two);
    CHECK(cbs_peek_der_tag(&s, DER_OCTET_STRING) && !cbs_peek_der_tag(&s, DER_SEQUENCE));
    CHECK(!cbs_get_der(&s, DER_SEQUENCE, &part) && cbs_len(&s) == sizeof two); /* another tag */
    CHECK(cbs_get_der(&s, DER_OCTET_STRING, &part));
    CHECK(cbs_len(&part) == 3 && memcmp(cbs_data(&part), "abc", 3) == 0 && cbs_offset(&part, two) == 2);
    CHECK(cbs_get_der_element(&s, DER_SEQUENCE, &part));
    CHECK(cbs_len(&part) == 2 && cbs_offset(&part, two) == 5 && cbs_len(&s) == 0);
    CHECK(!cbs_peek_der_tag(&s, DER_SEQUENCE));
    CHECK(!cbs_get_der(&s, DER_SEQUENCE, &part));

    /* Every length form a builder writes reads back, and the whole element spans head and contents. */
    const size_t lens[] = {0, 0x7f, 0x80, 0xff, 0x100, 0xffff, 0x10000};
    for (size_t i = 0; i < sizeof lens / sizeof *lens; i++) {
        cbb b, child;
        cbb_init(&b);
        CHECK(cbb_add_der(&b, &child, DER_OCTET_STRING));
        CHECK(cbb_add_zeros(&child, lens[i]));
        CHECK(cbb_close(&child));
        cbs_init(&s, b.data, b.len);
        CHECK(cbs_get_der(&s, DER_OCTET_STRING, &part) && cbs_len(&part) == lens[i] && cbs_len(&s) == 0);
        cbs_init(&s, b.data, b.len);
        CHECK(cbs_get_der_element(&s, DER_OCTET_STRING, &part) && cbs_len(&part) == b.len);
        int truncations_fail = 1;
        for (size_t cut = 0; cut < b.len; cut++) truncations_fail &= der_read(b.data, cut) == 0;
        CHECK(truncations_fail);
        cbb_cleanup(&b);
    }

    static const uint8_t long_128[3 + 0x80] = {0x04, 0x81, 0x80};
    CHECK_EQ(der_read(long_128, sizeof long_128), 1);
    /* Not DER: the indefinite form, a long form where the short one fits, a leading zero length byte. */
    static const uint8_t indefinite[] = {0x04, 0x80, 'a', 0x00, 0x00}, long_for_short[] = {0x04, 0x81, 0x01, 'a'},
                         leading_zero[4 + 0x80] = {0x04, 0x82, 0x00, 0x80};
    CHECK_EQ(der_read(indefinite, sizeof indefinite), 0);
    CHECK_EQ(der_read(long_for_short, sizeof long_for_short), 0);
    CHECK_EQ(der_read(leading_zero, sizeof leading_zero), 0);
    /* Lengths in more than 4 bytes, the reserved 0xff, and ones past the end (without wrapping around). */
    static const uint8_t five_bytes[] = {0x04, 0x85, 0x01, 0x00, 0x00, 0x00, 0x00}, reserved[] = {0x04, 0xff},
                         past_end[] = {0x04, 0x02, 'a'}, huge[] = {0x04, 0x84, 0xff, 0xff, 0xff, 0xff, 'a'},
                         cut_length[] = {0x04, 0x82, 0x01};
    CHECK_EQ(der_read(five_bytes, sizeof five_bytes), 0);
    CHECK_EQ(der_read(reserved, sizeof reserved), 0);
    CHECK_EQ(der_read(past_end, sizeof past_end), 0);
    CHECK_EQ(der_read(huge, sizeof huge), 0);
    CHECK_EQ(der_read(cut_length, sizeof cut_length), 0);
    /* A multi-byte tag is never read, even when asked for by its first byte (read as one, 9f would have a 1-byte
     * element here). */
    static const uint8_t high_tag[] = {0x9f, 0x01, 'a'};
    cbs_init(&s, high_tag, sizeof high_tag);
    CHECK(!cbs_get_der(&s, 0x9f, &part) && cbs_len(&s) == sizeof high_tag);
    cbs_init(&s, NULL, 0);
    CHECK(!cbs_get_der(&s, DER_OCTET_STRING, &part));
}

int main(void) {
    test_reads();
    test_writes();
    test_children();
    test_der_children();
    test_der_reads();
    return test_summary();
}
