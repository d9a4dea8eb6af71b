#!/usr/bin/env python3
"""Sends human-monitor commands to a running QEMU and prints the answers (docs/rig.md).

Usage: hmp.py SOCKET COMMAND...   (SOCKET: QEMU's `-monitor unix:SOCKET,server=on,wait=off`)

run.sh uses it when L1 has printed nothing for RIG_STALL seconds: each vCPU's registers and the
instructions at its program counter go into the run's log before QEMU is stopped.
"""
import socket
import sys

PROMPT = b"(qemu) "


def read_to_prompt(s: socket.socket) -> bytes:
    buf = b""
    while not buf.endswith(PROMPT):
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    return buf[: -len(PROMPT)] if buf.endswith(PROMPT) else buf


def main() -> int:
    if len(sys.argv) < 3:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    try:
        s.connect(sys.argv[1])
        read_to_prompt(s)  # the banner
        for cmd in sys.argv[2:]:
            s.sendall(cmd.encode() + b"\n")
            out = read_to_prompt(s).decode(errors="replace").replace("\r", "")
            # The monitor echoes the command as it is typed (with terminal escapes); the FPU and
            # SSE registers say nothing about where a vCPU is stuck.
            keep = [
                line
                for line in out.split("\n")
                if line.strip() and "\x1b" not in line and not line.startswith(("FPR", "XMM"))
            ]
            print(f"### {cmd}")
            print("\n".join(keep))
    except OSError as e:
        print(f"hmp.py: {sys.argv[1]}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
