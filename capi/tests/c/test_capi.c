/* Host test of the C API (plain gcc, linked with the host libiocane_capi.a): every status code
 * is produced at least once through the public functions, from a real exported model whose
 * bytes are edited (and the CRC recomputed) to hit each validation check; then the test images
 * are classified and printed as `image I: class C logits ...` for scripts/device/check_logits.py.
 *
 * Build (see .ci/device): gcc -std=c99 -Wall -Wextra -Werror -pedantic -I capi/include
 *   -I MODEL_DIR test_capi.c capi/target/release/libiocane_capi.a -lpthread -ldl -lm
 * MODEL_DIR holds model.h (`iocane export`) and images.h (scripts/device/test_images.py).
 * Exit code 0 only if every check passed. */
#include <stdio.h>
#include <string.h>

#include "iocane.h"
#include "model.h"
#include "images.h"

static int checks, failures;
static int hit[IOCANE_STATUS_COUNT];

#define CHECK(cond)                                                          \
    do {                                                                     \
        checks++;                                                            \
        if (!(cond)) {                                                       \
            failures++;                                                      \
            printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);           \
        }                                                                    \
    } while (0)

/* Records the status and checks it is the expected one. */
static void expect(iocane_status got, iocane_status want, const char *what) {
    checks++;
    if (got >= 0 && got < IOCANE_STATUS_COUNT) hit[got] = 1;
    if (got != want) {
        failures++;
        printf("FAIL %s: got %s, want %s\n", what, iocane_status_name(got), iocane_status_name(want));
    } else {
        printf("ok   %-44s %s (%s)\n", what, iocane_status_name(got), iocane_status_message(got));
    }
}

/* CRC-32/ISO-HDLC, bit by bit: an implementation independent of the runtime's. */
static uint32_t crc32_bits(const uint8_t *p, size_t n, uint32_t crc) {
    for (size_t i = 0; i < n; i++) {
        crc ^= p[i];
        for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
    }
    return crc;
}

static uint32_t rd32(const uint8_t *p) { return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24; }
static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static void wr32(uint8_t *p, uint32_t v) { p[0] = v; p[1] = v >> 8; p[2] = v >> 16; p[3] = v >> 24; }
static void wr16(uint8_t *p, uint16_t v) { p[0] = v; p[1] = v >> 8; }

/* Stores the blob's CRC: CRC-32 over the blob with the CRC field (bytes 12..16) as zeros. */
static void fix_crc(uint8_t *b, size_t n) {
    static const uint8_t zeros[4] = {0, 0, 0, 0};
    uint32_t c = crc32_bits(b, 12, 0xFFFFFFFFu);
    c = crc32_bits(zeros, 4, c);
    c = crc32_bits(b + 16, n - 16, c);
    wr32(b + 12, c ^ 0xFFFFFFFFu);
}

/* Offset of the section with tag `tag` (e.g. "LABL"), 0 if absent. */
static uint32_t section(const uint8_t *b, const char *tag, uint32_t *len) {
    uint32_t table = rd32(b + 32);
    for (uint16_t i = 0; i < rd16(b + 30); i++) {
        const uint8_t *e = b + table + 12u * i;
        if (memcmp(e, tag, 4) == 0) {
            *len = rd32(e + 8);
            return rd32(e + 4);
        }
    }
    return 0;
}

static uint8_t work[IOCANE_MODEL_LEN + 8] __attribute__((aligned(4)));

/* Parses a copy of the model edited by `edit` (then its CRC fixed if `crc`), expects `want`. */
static void parse_edited(void (*edit)(uint8_t *), int crc, iocane_status want, const char *what) {
    iocane_model_t m;
    memcpy(work, iocane_model, IOCANE_MODEL_LEN);
    edit(work);
    if (crc) fix_crc(work, IOCANE_MODEL_LEN);
    expect(iocane_model_parse(&m, work, IOCANE_MODEL_LEN), want, what);
    CHECK(iocane_model_arena_size(&m) == (want == IOCANE_OK ? IOCANE_ARENA_SIZE : 0));
}

static void no_edit(uint8_t *b) { (void)b; }
static void bad_magic(uint8_t *b) { b[0] = 'X'; }
static void bad_version(uint8_t *b) { wr16(b + 4, 2); }
static void bad_header_len(uint8_t *b) { wr16(b + 6, 65); }
static void flip_last(uint8_t *b) { b[IOCANE_MODEL_LEN - 1] ^= 0x40; }
static void reserved(uint8_t *b) { b[40] = 1; }
static void one_class(uint8_t *b) { wr16(b + 22, 1); }
static void no_sections(uint8_t *b) { wr16(b + 30, 0); }
static void bad_label(uint8_t *b) {
    uint32_t len = 0, off = section(b, "LABL", &len);
    CHECK(off != 0 && len > 0);
    if (off) b[off] = 0xFF; /* not UTF-8 */
}
static void bad_meta(uint8_t *b) {
    uint32_t len = 0, off = section(b, "META", &len);
    CHECK(off != 0 && len > 0);
    if (off) b[off] = 0xFF;
}
static void no_layers(uint8_t *b) { wr16(b + 28, 0); }
static void bad_op(uint8_t *b) {
    uint32_t len = 0, off = section(b, "LAYR", &len);
    CHECK(off != 0 && len >= 64);
    if (off) b[off] = 0xEE; /* unknown op code in layer 0 */
}
static void arena_plus_one(uint8_t *b) { wr32(b + 24, rd32(b + 24) + 1); }

static void check_errors(void) {
    iocane_model_t m, zeroed;
    static uint8_t arena[IOCANE_ARENA_SIZE + 1];
    int32_t logits[IOCANE_NUM_CLASSES + 1];
    size_t cls = 12345;

    expect(iocane_model_parse(NULL, iocane_model, IOCANE_MODEL_LEN), IOCANE_ERR_NULL_POINTER, "parse: NULL handle");
    expect(iocane_model_parse(&m, NULL, IOCANE_MODEL_LEN), IOCANE_ERR_NULL_POINTER, "parse: NULL blob");
    expect(iocane_model_parse(&m, iocane_model, 63), IOCANE_ERR_TOO_SHORT, "parse: 63 bytes");
    parse_edited(bad_magic, 0, IOCANE_ERR_BAD_MAGIC, "parse: magic XCNM");
    parse_edited(bad_version, 0, IOCANE_ERR_UNSUPPORTED_VERSION, "parse: version 2");
    parse_edited(bad_header_len, 0, IOCANE_ERR_BAD_HEADER_LEN, "parse: header length 65");
    memcpy(work, iocane_model, IOCANE_MODEL_LEN);
    expect(iocane_model_parse(&m, work, IOCANE_MODEL_LEN - 1), IOCANE_ERR_LENGTH_MISMATCH, "parse: one byte short");
    expect(iocane_model_parse(&m, work, IOCANE_MODEL_LEN + 4), IOCANE_ERR_LENGTH_MISMATCH, "parse: 4 bytes padded");
    parse_edited(flip_last, 0, IOCANE_ERR_BAD_CRC, "parse: last byte flipped");
    parse_edited(reserved, 1, IOCANE_ERR_RESERVED_NOT_ZERO, "parse: reserved header byte set");
    parse_edited(one_class, 1, IOCANE_ERR_BAD_HEADER, "parse: one class");
    parse_edited(no_sections, 1, IOCANE_ERR_BAD_SECTION, "parse: no sections");
    parse_edited(bad_label, 1, IOCANE_ERR_BAD_LABELS, "parse: label not UTF-8");
    parse_edited(bad_meta, 1, IOCANE_ERR_BAD_METADATA, "parse: metadata not UTF-8");
    parse_edited(no_layers, 1, IOCANE_ERR_BAD_LAYER_COUNT, "parse: zero layers");
    parse_edited(bad_op, 1, IOCANE_ERR_BAD_LAYER, "parse: unknown op in layer 0");
    parse_edited(arena_plus_one, 1, IOCANE_ERR_ARENA_MISMATCH, "parse: arena size + 1");
    parse_edited(no_edit, 1, IOCANE_OK, "parse: unedited copy, CRC recomputed in C");

    /* A failed parse leaves the handle unparsed even if it held a model before. */
    expect(iocane_model_parse(&m, iocane_model, IOCANE_MODEL_LEN), IOCANE_OK, "parse: the exported model");
    expect(iocane_model_parse(&m, iocane_model, 10), IOCANE_ERR_TOO_SHORT, "parse: reuse with 10 bytes");
    CHECK(iocane_model_num_classes(&m) == 0 && iocane_model_input_len(&m) == 0);

    expect(iocane_model_parse(&m, iocane_model, IOCANE_MODEL_LEN), IOCANE_OK, "parse: the exported model");
    CHECK(iocane_model_arena_size(&m) == IOCANE_ARENA_SIZE);
    CHECK(iocane_model_input_len(&m) == IOCANE_INPUT_H * IOCANE_INPUT_W * IOCANE_INPUT_C);
    CHECK(iocane_model_num_classes(&m) == IOCANE_NUM_CLASSES);
    CHECK(iocane_model_arena_size(NULL) == 0);

    const uint8_t *px = iocane_test_images[0];
    const size_t n = IOCANE_TEST_IMAGE_LEN, a = IOCANE_ARENA_SIZE, k = IOCANE_NUM_CLASSES;
    memset(logits, 0x55, sizeof logits);
    expect(iocane_model_run(NULL, px, n, arena, a, logits, k, &cls), IOCANE_ERR_NULL_POINTER, "run: NULL model");
    expect(iocane_model_run(&m, NULL, n, arena, a, logits, k, &cls), IOCANE_ERR_NULL_POINTER, "run: NULL pixels");
    expect(iocane_model_run(&m, px, n, NULL, a, logits, k, &cls), IOCANE_ERR_NULL_POINTER, "run: NULL arena");
    expect(iocane_model_run(&m, px, n, arena, a, NULL, k, &cls), IOCANE_ERR_NULL_POINTER, "run: NULL logits");
    memset(&zeroed, 0, sizeof zeroed);
    expect(iocane_model_run(&zeroed, px, n, arena, a, logits, k, &cls), IOCANE_ERR_NOT_PARSED, "run: zeroed handle");
    {
        iocane_model_t copy;
        memcpy(&copy, &m, sizeof copy);
        expect(iocane_model_run(&copy, px, n, arena, a, logits, k, &cls), IOCANE_ERR_NOT_PARSED, "run: copied handle");
    }
    expect(iocane_model_run(&m, px, n - 1, arena, a, logits, k, &cls), IOCANE_ERR_INPUT_LENGTH, "run: one pixel short");
    expect(iocane_model_run(&m, px, n, arena, a - 1, logits, k, &cls), IOCANE_ERR_ARENA_TOO_SMALL, "run: arena - 1");
    expect(iocane_model_run(&m, px, n, arena, a, logits, k + 1, &cls), IOCANE_ERR_LOGITS_LENGTH, "run: one logit too many");
    CHECK(cls == 12345 && logits[0] == 0x55555555); /* errors write nothing */
    expect(iocane_model_run(&m, px, n, arena, a + 1, logits, k, NULL), IOCANE_OK, "run: larger arena, no class out");

    /* Names: distinct, the unknown name outside the range. */
    for (int s = 0; s < IOCANE_STATUS_COUNT; s++) {
        CHECK(strncmp(iocane_status_name(s), s == 0 ? "IOCANE_OK" : "IOCANE_ERR_", s == 0 ? 10 : 11) == 0);
        CHECK(strlen(iocane_status_message(s)) > 0);
        for (int t = 0; t < s; t++) CHECK(strcmp(iocane_status_name(s), iocane_status_name(t)) != 0);
    }
    CHECK(strcmp(iocane_status_name(-1), "IOCANE_ERR_UNKNOWN") == 0);
    CHECK(strcmp(iocane_status_name(IOCANE_STATUS_COUNT), "IOCANE_ERR_UNKNOWN") == 0);
    for (int s = 0; s < IOCANE_STATUS_COUNT; s++) {
        checks++;
        if (!hit[s]) {
            failures++;
            printf("FAIL status %s was never produced\n", iocane_status_name(s));
        }
    }
}

static void classify_images(void) {
    iocane_model_t m;
    static uint8_t arena[IOCANE_ARENA_SIZE];
    int32_t logits[IOCANE_NUM_CLASSES];
    CHECK(iocane_model_parse(&m, iocane_model, IOCANE_MODEL_LEN) == IOCANE_OK);
    for (unsigned i = 0; i < IOCANE_TEST_IMAGE_COUNT; i++) {
        size_t cls = 0;
        memset(arena, 0xA5, sizeof arena); /* stale arena contents must not matter */
        iocane_status s = iocane_model_run(&m, iocane_test_images[i], IOCANE_TEST_IMAGE_LEN, arena, sizeof arena,
                                           logits, IOCANE_NUM_CLASSES, &cls);
        CHECK(s == IOCANE_OK);
        printf("image %u: class %u logits", i, (unsigned)cls);
        for (unsigned j = 0; j < IOCANE_NUM_CLASSES; j++) printf(" %ld", (long)logits[j]);
        printf("\n");
    }
}

int main(void) {
    check_errors();
    classify_images();
    printf("c api: %d passed, %d failed\n", checks - failures, failures);
    return failures ? 1 : 0;
}
