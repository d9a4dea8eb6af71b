#!/usr/bin/env python3
"""Writes the first-instruction probe: a 64 KiB x86 firmware image for QEMU's -bios.

QEMU maps the image's last 64 KiB below 1 MiB and below 4 GiB; the CPU starts in real mode at
F000:FFF0, the image's offset 0xFFF0. The code there writes one byte (default 'F') to COM1's data
register (port 0x3f8: QEMU's UART sends it at once, no set-up needed) and then 0 to port 0xf4, where
`-device isa-debug-exit,iobase=0xf4,iosize=4` stops QEMU with exit status (0 << 1) | 1 = 1. The rest of
the image is 0xff.

Usage: probe-bios.py OUT [CHAR]
"""
import sys

SIZE = 64 * 1024
RESET = 0xFFF0


def image(ch: int) -> bytes:
    code = bytes([
        0xFA,              # cli
        0xBA, 0xF8, 0x03,  # mov dx, 0x3f8
        0xB0, ch,          # mov al, CHAR
        0xEE,              # out dx, al
        0x30, 0xC0,        # xor al, al
        0xE6, 0xF4,        # out 0xf4, al
        0xF4,              # hlt
        0xEB, 0xFD,        # jmp hlt
    ])
    assert len(code) <= SIZE - RESET
    img = bytearray(b"\xff" * SIZE)
    img[RESET:RESET + len(code)] = code
    return bytes(img)


def main() -> None:
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__.split("\n\n")[-1].strip())
    ch = sys.argv[2].encode() if len(sys.argv) == 3 else b"F"
    if len(ch) != 1:
        sys.exit("CHAR must be one byte")
    with open(sys.argv[1], "wb") as f:
        f.write(image(ch[0]))


if __name__ == "__main__":
    main()
