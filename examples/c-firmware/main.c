/* C firmware example: classifies the embedded test images with an iocane model through the C
 * API and prints each class and its logits over semihosting, then the stack high-water mark.
 *
 * model/model.h is what `iocane export` writes (the blob as a 4-byte aligned array, the
 * IOCANE_* sizes, the labels); model/images.h holds test images (scripts/device/test_images.py).
 * See README.md. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "iocane.h"
#include "model.h"
#include "images.h"
#include "semihosting.h"

/* The arena, exactly the size the model header states: no heap anywhere. */
static uint8_t arena[IOCANE_ARENA_SIZE] __attribute__((aligned(4)));

/* Stack painting: words below the current stack pointer are filled with a pattern before the
 * runs; afterwards the deepest overwritten word gives the stack high-water mark. */
#define PAINT 0x5AA5F00Du
#define PAINT_WORDS 16384u /* 64 KiB below main's frame */

static __attribute__((noinline)) uint32_t *paint_stack(void) {
    uint32_t sp;
    __asm volatile("mov %0, sp" : "=r"(sp));
    uint32_t *top = (uint32_t *)(sp & ~3u) - 16; /* leave this frame alone */
    for (uint32_t i = 1; i <= PAINT_WORDS; i++) top[-(int32_t)i] = PAINT;
    return top;
}

static uint32_t stack_used(const uint32_t *top) {
    uint32_t deepest = 0;
    for (uint32_t i = 1; i <= PAINT_WORDS; i++)
        if (top[-(int32_t)i] != PAINT) deepest = i;
    return deepest * 4u;
}

static void say(const char *fmt, long a, long b) {
    char line[160];
    snprintf(line, sizeof line, fmt, a, b);
    sh_puts(line);
}

int main(void) {
    iocane_model_t model;
    iocane_status s = iocane_model_parse(&model, iocane_model, IOCANE_MODEL_LEN);
    if (s != IOCANE_OK) {
        sh_puts("FAIL: iocane_model_parse: ");
        sh_puts(iocane_status_name(s));
        sh_puts("\n");
        return 1;
    }
    if (iocane_model_arena_size(&model) != IOCANE_ARENA_SIZE || IOCANE_TEST_IMAGE_LEN != IOCANE_INPUT_H * IOCANE_INPUT_W * IOCANE_INPUT_C) {
        sh_puts("FAIL: model.h and images.h disagree with the parsed model\n");
        return 1;
    }
    const uint32_t *top = paint_stack();
    int failed = 0;
    for (unsigned i = 0; i < IOCANE_TEST_IMAGE_COUNT; i++) {
        int32_t logits[IOCANE_NUM_CLASSES];
        size_t cls = 0;
        s = iocane_model_run(&model, iocane_test_images[i], IOCANE_TEST_IMAGE_LEN, arena, sizeof arena, logits,
                             IOCANE_NUM_CLASSES, &cls);
        if (s != IOCANE_OK) {
            sh_puts("FAIL: iocane_model_run: ");
            sh_puts(iocane_status_name(s));
            sh_puts("\n");
            failed = 1;
            continue;
        }
        say("image %ld: class %ld logits", (long)i, (long)cls);
        for (unsigned j = 0; j < IOCANE_NUM_CLASSES; j++) say(" %ld", (long)logits[j], 0);
        sh_puts("\n");
        sh_puts("  label ");
        sh_puts(iocane_labels[cls]);
        sh_puts("\n");
    }
    /* A wrong length is refused with a status, never a crash. */
    int32_t few[1];
    s = iocane_model_run(&model, iocane_test_images[0], IOCANE_TEST_IMAGE_LEN, arena, sizeof arena, few, 1, NULL);
    if (s != IOCANE_ERR_LOGITS_LENGTH) failed = 1;
    say("stack high-water mark: %ld bytes (iocane_model_run and its callees, %ld-byte arena not included)\n",
        (long)stack_used(top), (long)IOCANE_ARENA_SIZE);
    sh_puts(failed ? "FAIL\n" : "DONE\n");
    return failed;
}
