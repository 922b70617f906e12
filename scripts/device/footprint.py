#!/usr/bin/env python3
"""Flash and RAM of the C firmware example by origin, from its GNU ld map file:

    footprint.py examples/c-firmware/build/firmware.map [QEMU_LOG]

Sums the input sections kept in the link (.text, .rodata, .data, .bss) by the archive or
object they come from: libiocane_capi.a (the runtime, the C API and the parts of Rust's core
and compiler_builtins they use), newlib (libc, libgcc, libnosys: snprintf for the report),
and the firmware's own objects (main, startup, the model blob and the test images live in
main's .rodata). With QEMU_LOG (the firmware's output), also prints the stack high-water mark
it measured.
"""
import re
import sys
from collections import defaultdict


def origin(path):
    if "libiocane_capi.a" in path:
        return "iocane (libiocane_capi.a)"
    if "/arm-none-eabi/" in path or "libgcc" in path or "libc_nano" in path or "libnosys" in path:
        return "newlib + libgcc"
    return "firmware objects (" + path.rsplit("/", 1)[-1].split("(")[0] + ")"


def main():
    text = open(sys.argv[1]).read()
    body = text[text.index("Linker script and memory map"):]
    sizes = defaultdict(lambda: defaultdict(int))
    # An input section line: " .text.name  0xADDR  0xSIZE file", possibly wrapped after the name.
    pat = re.compile(r"^ (\.(?:text|rodata|data|bss)[^\s]*)\s*\n?\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+(\S+)", re.M)
    for m in pat.finditer(body):
        name, addr, size, path = m.group(1), int(m.group(2), 16), int(m.group(3), 16), m.group(4)
        if addr == 0 and not name.startswith(".text"):
            continue
        kind = name.split(".")[1]
        sizes[origin(path)][kind] += size
    print("| origin | .text | .rodata | .data | .bss |")
    print("|---|---|---|---|---|")
    for o in sorted(sizes):
        s = sizes[o]
        print(f"| {o} | {s['text']} | {s['rodata']} | {s['data']} | {s['bss']} |")
    if len(sys.argv) > 2:
        for line in open(sys.argv[2]):
            if line.startswith("stack high-water mark"):
                print(line.strip())


main()
