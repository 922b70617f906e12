/* ARM semihosting: text output and exit, a few lines of inline assembly. */
#ifndef SEMIHOSTING_H
#define SEMIHOSTING_H

/* Writes a NUL-terminated string to the host's console (SYS_WRITE0). */
static inline void sh_puts(const char *s) {
    register int r0 __asm__("r0") = 0x04;
    register const char *r1 __asm__("r1") = s;
    __asm volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
}

/* Ends the program (SYS_EXIT): ADP_Stopped_ApplicationExit for 0, RunTimeErrorUnknown
 * otherwise, which QEMU turns into exit status 0 and 1. */
static inline __attribute__((noreturn)) void sh_exit(int code) {
    register int r0 __asm__("r0") = 0x18;
    register int r1 __asm__("r1") = code == 0 ? 0x20026 : 0x20023;
    __asm volatile("bkpt 0xab" : : "r"(r0), "r"(r1) : "memory");
    for (;;) {
    }
}

#endif
