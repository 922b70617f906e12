#!/usr/bin/env bash
# Flash and RAM of the iocane C API in the C firmware example, at opt-level "s" and 3, with the
# Cortex-M4 DSP kernels and with the portable ones (IOCANE_PORTABLE_KERNELS=1): builds
# examples/c-firmware against MODEL_DIR (model.h + images.h), runs it in qemu for the stack
# high-water mark, checks its logits against HOST_JSON (iocane predict --json), and prints the
# table of scripts/device/footprint.py. Usage: footprint.sh MODEL_DIR HOST_JSON
set -euo pipefail
cd "$(dirname "$0")/../.."
model=$(cd "$1" && pwd) host=$(cd "$(dirname "$2")" && pwd)/$(basename "$2")
for opt in s 3; do
    for portable in 0 1; do
        if [ "$portable" = 1 ]; then export IOCANE_PORTABLE_KERNELS=1; else unset IOCANE_PORTABLE_KERNELS; fi
        make -s -C examples/c-firmware clean
        CARGO_PROFILE_RELEASE_OPT_LEVEL=$opt make -s -C examples/c-firmware MODEL_DIR="$model" >/dev/null
        log=$(mktemp)
        timeout 60 qemu-system-arm -cpu cortex-m4 -machine mps2-an386 -nographic \
            -semihosting-config enable=on,target=native -kernel examples/c-firmware/build/firmware.elf </dev/null >"$log" 2>&1
        echo "opt-level $opt, $([ "$portable" = 1 ] && echo portable || echo DSP) kernels:"
        python3 scripts/device/footprint.py examples/c-firmware/build/firmware.map "$log"
        python3 scripts/device/check_logits.py "$host" "$log" "  logits"
        rm -f "$log"
    done
done
unset IOCANE_PORTABLE_KERNELS
make -s -C examples/c-firmware clean
