/* CMSIS-NN side of the instruction-count comparison (scripts/device/count_instructions.py):
 * runs an iocane model blob layer by layer through Arm's CMSIS-NN kernels, the ones TFLite
 * Micro calls on Cortex-M (arm_convolve_wrapper_s8, arm_depthwise_conv_wrapper_s8,
 * arm_fully_connected_per_channel_s8, arm_max_pool_s8, arm_avgpool_s8), with the blob's own
 * weights, biases, per-channel multipliers and shifts, zero points and clamps: the same layer
 * shapes and the same work. CMSIS-NN is compiled from the snapshot in shared/anchors/cmsis-nn
 * at build time (never copied here). As in iocane, cmsis_bench_mark(k) is called before the
 * run (k = 0), after each layer (k = layer + 1) and at the end (k = 0xFFFF); the emulator counts
 * the instructions in between. The final layer writes int8 (CMSIS-NN has no int32-output
 * fully connected s8 kernel); iocane writes int32 logits there. Nothing runs main(). */
#include <stdint.h>
#include <string.h>

#include "arm_nnfunctions.h"
#include "models.h"

#define MAX_TENSOR 65536
#define MAX_SCRATCH 65536
static int8_t tensor_a[MAX_TENSOR], tensor_b[MAX_TENSOR];
static int16_t scratch[MAX_SCRATCH / 2];

__attribute__((noinline, used)) void cmsis_bench_mark(uint32_t id) { __asm volatile("" : : "r"(id) : "memory"); }

static uint32_t rd16(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8; }
static uint32_t rd32(const uint8_t *p) { return rd16(p) | rd16(p + 2) << 16; }

/* Runs model `which`; returns the predicted class, or a negative code on any error. */
__attribute__((used)) int32_t cmsis_bench_run(uint32_t which) {
    if (which >= BENCH_MODELS) return -1;
    const uint8_t *b = bench_models[which].blob, *image = bench_models[which].image;
    uint32_t layers = 0, sections = rd16(b + 30), table = rd32(b + 32), count = rd16(b + 28);
    for (uint32_t i = 0; i < sections; i++)
        if (memcmp(b + table + 12 * i, "LAYR", 4) == 0) layers = rd32(b + table + 12 * i + 4);
    if (!layers) return -2;
    uint32_t n = rd16(b + 16) * rd16(b + 18) * rd16(b + 20);
    int8_t *in = tensor_a, *out = tensor_b;
    if (n > MAX_TENSOR) return -3;
    cmsis_bench_mark(0);
    for (uint32_t i = 0; i < n; i++) in[i] = (int8_t)(image[i] - 128); /* as quant::pixel_to_input */
    int32_t cls = 0;
    for (uint32_t l = 0; l < count; l++) {
        const uint8_t *r = b + layers + 64 * l;
        uint32_t op = r[0], kh = r[2], kw = r[3], sh = r[4], sw = r[5], pt = r[6], pl = r[7];
        cmsis_nn_dims id = {1, (int32_t)rd16(r + 16), (int32_t)rd16(r + 18), (int32_t)rd16(r + 20)};
        cmsis_nn_dims od = {1, (int32_t)rd16(r + 22), (int32_t)rd16(r + 24), (int32_t)rd16(r + 26)};
        const int8_t *w = (const int8_t *)(b + rd32(r + 28));
        const int32_t *bias = (const int32_t *)(b + rd32(r + 32));
        cmsis_nn_per_channel_quant_params q = {(int32_t *)(b + rd32(r + 36)), (int32_t *)(b + rd32(r + 40))};
        cmsis_nn_activation act = {(int8_t)r[12], (int8_t)r[13]};
        int32_t in_offset = -(int32_t)(int8_t)r[10], out_offset = (int8_t)r[11];
        cmsis_nn_dims bd = {1, 1, 1, od.c};
        cmsis_nn_context ctx = {scratch, 0};
        arm_cmsis_nn_status s = ARM_CMSIS_NN_SUCCESS;
        if ((uint32_t)(od.h * od.w * od.c) > MAX_TENSOR) return -3;
        if (r[1] == 1) { /* the logits layer: CMSIS-NN writes int8 with the full clamp */
            act.min = -128;
            act.max = 127;
        }
        switch (op) {
        case 1: { /* Dense */
            cmsis_nn_fc_params p = {in_offset, 0, out_offset, act};
            cmsis_nn_dims fd = {id.c, 1, 1, od.c};
            cmsis_nn_dims fid = {1, 1, 1, id.c};
            ctx.size = arm_fully_connected_s8_get_buffer_size(&fd);
            if (ctx.size > MAX_SCRATCH) return -4;
            s = arm_fully_connected_per_channel_s8(&ctx, &p, &q, &fid, in, &fd, w, &bd, bias, &od, out);
            break;
        }
        case 2: { /* Conv2d */
            cmsis_nn_conv_params p = {in_offset, out_offset, {(int32_t)sw, (int32_t)sh}, {(int32_t)pl, (int32_t)pt}, {1, 1}, act};
            cmsis_nn_dims fd = {od.c, (int32_t)kh, (int32_t)kw, id.c};
            ctx.size = arm_convolve_wrapper_s8_get_buffer_size(&p, &id, &fd, &od);
            if (ctx.size > MAX_SCRATCH) return -4;
            s = arm_convolve_wrapper_s8(&ctx, &p, &q, &id, in, &fd, w, &bd, bias, &od, out);
            break;
        }
        case 3: { /* DepthwiseConv2d, channel multiplier 1 */
            cmsis_nn_dw_conv_params p = {in_offset, out_offset, 1, {(int32_t)sw, (int32_t)sh}, {(int32_t)pl, (int32_t)pt}, {1, 1}, act};
            cmsis_nn_dims fd = {1, (int32_t)kh, (int32_t)kw, od.c};
            ctx.size = arm_depthwise_conv_wrapper_s8_get_buffer_size(&p, &id, &fd, &od);
            if (ctx.size > MAX_SCRATCH) return -4;
            s = arm_depthwise_conv_wrapper_s8(&ctx, &p, &q, &id, in, &fd, w, &bd, bias, &od, out);
            break;
        }
        case 4:
        case 5: { /* MaxPool2d, AvgPool2d: no padding, output keeps the input's scale */
            cmsis_nn_pool_params p = {{(int32_t)sw, (int32_t)sh}, {0, 0}, {-128, 127}};
            cmsis_nn_dims fd = {1, (int32_t)kh, (int32_t)kw, 1};
            if (op == 4) {
                s = arm_max_pool_s8(&ctx, &p, &id, in, &fd, &od, out);
            } else {
                ctx.size = arm_avgpool_s8_get_buffer_size(od.w, id.c);
                if (ctx.size > MAX_SCRATCH) return -4;
                s = arm_avgpool_s8(&ctx, &p, &id, in, &fd, &od, out);
            }
            break;
        }
        case 6: /* Flatten: NHWC is already flat */
            cmsis_bench_mark(l + 1);
            continue;
        default:
            return -5;
        }
        if (s != ARM_CMSIS_NN_SUCCESS) return -6;
        if (r[1] == 1) {
            for (int32_t c = 1; c < od.c; c++)
                if (out[c] > out[cls]) cls = c;
            cmsis_bench_mark(0xFFFF);
            return cls;
        }
        cmsis_bench_mark(l + 1);
        int8_t *t = in;
        in = out;
        out = t;
    }
    return -7;
}
