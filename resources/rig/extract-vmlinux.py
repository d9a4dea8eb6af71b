#!/usr/bin/env python3
"""Extract the ELF vmlinux from a bzImage: the compressed payload the boot protocol's setup header
points at (payload_offset/payload_length), decompressed with the matching tool (lz4, xz, zstd, gzip,
bzip2, lzma). Used by scripts/rig-test to boot the same Debian kernel through vfiovm's ELF/PVH path.

Usage: extract-vmlinux.py BZIMAGE OUT
"""
import shutil
import struct
import subprocess
import sys

# magic -> decompressor command (the tools read stdin and write stdout)
TOOLS = [
    (b"\x02\x21\x4c\x18", ["lz4", "-dc"]),  # lz4 legacy frame
    (b"\xfd7zXZ\x00", ["xz", "-dc"]),
    (b"\x28\xb5\x2f\xfd", ["zstd", "-dc"]),
    (b"\x1f\x8b", ["gzip", "-dc"]),
    (b"BZh", ["bzip2", "-dc"]),
    (b"\x5d\x00\x00", ["xz", "--format=lzma", "-dc"]),
]


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, out = sys.argv[1], sys.argv[2]
    img = open(src, "rb").read()
    if len(img) < 0x250 or img[0x202:0x206] != b"HdrS":
        sys.exit(f"{src}: not a bzImage (no HdrS setup header)")
    setup_sects = img[0x1F1] or 4
    payload_offset, payload_length = struct.unpack_from("<II", img, 0x248)
    start = (setup_sects + 1) * 512 + payload_offset
    payload = img[start : start + payload_length]
    for magic, cmd in TOOLS:
        if payload.startswith(magic):
            break
    else:
        sys.exit(f"{src}: unknown payload compression (magic {payload[:4].hex()})")
    if shutil.which(cmd[0]) is None:
        sys.exit(f"{src}: the payload needs '{cmd[0]}' to decompress (apt-get install {cmd[0]})")
    # The payload may end with the decompressed size (4 bytes), which some tools report as trailing
    # garbage after a complete stream: their status is not trusted, the ELF header is.
    with open(out, "wb") as f:
        subprocess.run(cmd, input=payload, stdout=f, stderr=subprocess.DEVNULL, check=False)
    with open(out, "rb") as f:
        head = f.read(64)
    if head[:4] != b"\x7fELF" or head[4] != 2:
        sys.exit(f"{src}: decompressing with {cmd[0]} did not give a 64-bit ELF")


if __name__ == "__main__":
    main()
