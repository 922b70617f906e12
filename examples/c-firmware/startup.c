/* Minimal Cortex-M start-up: the vector table (initial stack pointer, reset handler, faults),
 * .data copy, .bss zeroing, FPU enable (the library is built for thumbv7em-none-eabihf), then
 * main(). Semihosting (ARM's debug-monitor calls, `bkpt 0xab`) carries output and the exit
 * code: under QEMU they reach the host; on a board, a debug probe answers them (probe-rs,
 * OpenOCD) or you replace them with your UART. */
#include <stdint.h>
#include <string.h>

#include "semihosting.h"

extern uint32_t _stack_top, _data_start, _data_end, _data_load, _bss_start, _bss_end;
int main(void);

void reset_handler(void) {
    memcpy(&_data_start, &_data_load, (size_t)((char *)&_data_end - (char *)&_data_start));
    memset(&_bss_start, 0, (size_t)((char *)&_bss_end - (char *)&_bss_start));
    /* CPACR: full access to coprocessors 10 and 11 (the FPU). */
    *(volatile uint32_t *)0xE000ED88u |= 0xFu << 20;
    __asm volatile("dsb\n\tisb" ::: "memory");
    sh_exit(main());
}

static void fault_handler(void) {
    sh_puts("FAIL: hard fault\n");
    sh_exit(1);
}

__attribute__((section(".vectors"), used)) static void (*const vectors[16])(void) = {
    (void (*)(void))&_stack_top, reset_handler, fault_handler, fault_handler,
    fault_handler, fault_handler, fault_handler, 0, 0, 0, 0, fault_handler, fault_handler, 0,
    fault_handler, fault_handler,
};
