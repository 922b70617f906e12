#!/usr/bin/env python3
"""Compares a device's output with the host's: CHECK_LOGITS.py PREDICT_JSON DEVICE_LOG [NAME]

PREDICT_JSON is `iocane predict --json MODEL image0.bin image1.bin ...` (the Rust CLI on the
host); DEVICE_LOG holds lines `image I: class C logits L0 L1 ...` (the firmware examples and
the host C test print them). Every image of the JSON must appear exactly once in the log with
the same class and the same logits. Exits 0 if all match, 1 otherwise (also when no image
was compared).
"""
import json
import re
import sys


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    host = json.load(open(sys.argv[1]))
    name = sys.argv[3] if len(sys.argv) == 4 else sys.argv[2]
    seen = {}
    for line in open(sys.argv[2], errors="replace"):
        m = re.match(r"^image (\d+): class (\d+) logits((?: -?\d+)+)\s*$", line)
        if m:
            i = int(m.group(1))
            if i in seen:
                print(f"{name}: image {i} printed twice")
                return 1
            seen[i] = (int(m.group(2)), [int(v) for v in m.group(3).split()])
    bad = 0
    for i, entry in enumerate(host):
        want = (entry["class"], entry["logits"])
        got = seen.get(i)
        if got != want:
            bad += 1
            print(f"{name}: image {i}: device {got}, host {want}")
    extra = sorted(set(seen) - set(range(len(host))))
    if extra:
        print(f"{name}: images {extra} are not in the host's results")
        bad += len(extra)
    if not host:
        print(f"{name}: no image to compare")
        return 1
    print(f"{name}: {len(host) - bad} of {len(host)} images bit-exact with the host (class and {len(host[0]['logits'])} logits each)")
    return 1 if bad else 0


sys.exit(main())
