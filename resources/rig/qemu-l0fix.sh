#!/bin/bash
# The rig's L0 for UEFI guests: Debian bookworm's own QEMU (the source package of the host's
# qemu-system-x86, with Debian's patches) rebuilt with one fix of ours, for the one defect that
# kills the rig under any L2 firmware that writes CR8 (OVMF, Windows): in SVM guest mode, QEMU's
# MOV-to-CR8 helper raises a virtual interrupt (cpu_interrupt) without taking the big QEMU lock
# that TCG's interrupt path asserts, and the whole emulator aborts ("tcg_handle_interrupt:
# assertion failed"; docs/testing.md, "uefi"). The fix takes the lock around that call when it is
# not held, as the same helper already does for the APIC's TPR a few lines above.
#
# Usage: qemu-l0fix.sh                prints the path of the built qemu-system-x86_64 (stdout)
#        qemu-l0fix.sh --exec ARGS...  runs it, with the host's firmware directories (-L)
# Env:   RIG_WORK (${TMPDIR:-/tmp}/vfiovm-rig): built once into $RIG_WORK/qemu-l0fix/<version>-fixN/
#        (about 5 minutes on 2 CPUs); the source package comes through a private apt configuration
#        (deb-src on the host's bookworm mirror), the build dependencies are installed with apt-get.
# Messages go to stderr; failure: "qemu-l0fix: FAILED <why>", exit 1; exit 3 when the source package
# cannot be had from the mirror (no deb-src there): scripts/rig-test then skips the UEFI boot, saying so.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=apt-mirror.sh
. "$HERE/apt-mirror.sh"
W=${RIG_WORK:-${TMPDIR:-/tmp}/vfiovm-rig}
C=$W/qemu-l0fix
# Bump when the fix below changes: a new build directory.
FIX=1

log() { echo "qemu-l0fix: $*" >&2; }
die() {
	echo "qemu-l0fix: FAILED $*" >&2
	exit 1
}
unavailable() {
	echo "qemu-l0fix: UNAVAILABLE $*" >&2
	exit 3
}

A=$C/apt
APT=(-o "Dir::Etc::sourcelist=$A/sources.list" -o "Dir::Etc::sourceparts=-" -o "Dir::State::lists=$A/lists"
	-o "Dir::Cache=$A/cache" -o APT::Sandbox::User=root)

src_version() { # the version of the qemu source package the private lists know
	{ apt-cache "${APT[@]}" showsrc qemu 2>/dev/null || true; } | awk '$1 == "Version:" { print $2; exit }'
}

# The fix: in helper_write_crN's CR8 case, cpu_interrupt(VIRQ) under the lock.
fix_source() {
	python3 - "$1/target/i386/tcg/sysemu/misc_helper.c" <<'PY' || die "the CR8 helper is not where the fix expects it (another QEMU version?)"
import sys
p = sys.argv[1]
s = open(p).read()
call = "            cpu_interrupt(cs, CPU_INTERRUPT_VIRQ);\n"
assert s.count(call) == 1, "one cpu_interrupt(VIRQ) in the CR8 helper"
locked = ("            bool locked = qemu_mutex_iothread_locked();\n"
          "            if (!locked) {\n"
          "                qemu_mutex_lock_iothread();\n"
          "            }\n" + call +
          "            if (!locked) {\n"
          "                qemu_mutex_unlock_iothread();\n"
          "            }\n")
open(p, "w").write(s.replace(call, locked))
PY
}

build() {
	local uri ver dir src p
	mkdir -p "$A/lists/partial" "$A/cache"
	uri=$(bookworm_uri)
	[ -n "$uri" ] || die "no apt source for Debian bookworm to take the mirror's URI from"
	echo "deb-src $uri bookworm main" >"$A/sources.list"
	ver=$(src_version)
	if [ -z "$ver" ]; then
		log "apt-get update (deb-src, private lists in $A/lists)"
		apt-get "${APT[@]}" update -qq >&2 || unavailable "apt-get update of deb-src $uri bookworm failed"
		ver=$(src_version)
	fi
	[ -n "$ver" ] || unavailable "the mirror $uri serves no qemu source package"
	dir=$C/${ver//[:~+]/_}-fix$FIX
	if [ -x "$dir/qemu-system-x86_64" ]; then
		ln -sfn "$(basename "$dir")" "$C/current"
		return
	fi
	local deps=(meson ninja-build pkg-config gcc python3 libglib2.0-dev libpixman-1-dev libfdt-dev zlib1g-dev)
	local missing=()
	for p in "${deps[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
	if [ ${#missing[@]} -gt 0 ]; then
		log "installing the build dependencies: ${missing[*]}"
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2 || die "apt-get install ${missing[*]} failed"
	fi
	rm -rf "$dir"
	src=$dir/src
	mkdir -p "$src"
	log "downloading the qemu $ver source package"
	(cd "$src" && apt-get "${APT[@]}" source --download-only -qq "qemu=$ver" >&2) || unavailable "apt-get source qemu=$ver failed"
	(cd "$src" && tar xf ./*.orig.tar.* && mv qemu-*/ tree && tar xf ./*.debian.tar.* -C tree) ||
		die "unpacking the source package failed"
	# Debian's patches, as dpkg-source applies them
	while read -r p _; do
		case $p in '' | '#'*) continue ;; esac
		patch -d "$src/tree" -p1 -s <"$src/tree/debian/patches/$p" || die "Debian's patch $p does not apply"
	done <"$src/tree/debian/patches/series"
	fix_source "$src/tree"
	log "building qemu-system-x86_64 (x86_64-softmmu only, $(nproc) jobs)"
	mkdir -p "$src/tree/build"
	(cd "$src/tree/build" && ../configure --target-list=x86_64-softmmu --disable-docs --disable-werror \
		--disable-tools --disable-guest-agent --disable-user --disable-gtk --disable-sdl --disable-vnc \
		--disable-opengl --disable-xen --disable-spice >"$dir/configure.log" 2>&1) ||
		die "configure failed: $(tail -3 "$dir/configure.log" | tr '\n' ' ')"
	(cd "$src/tree/build" && ninja -j"$(nproc)" qemu-system-x86_64 >"$dir/build.log" 2>&1) ||
		die "the build failed: $(tail -3 "$dir/build.log" | tr '\n' ' ')"
	cp "$src/tree/build/qemu-system-x86_64" "$dir/qemu-system-x86_64"
	rm -rf "$src"
	ln -sfn "$(basename "$dir")" "$C/current"
	log "$("$dir/qemu-system-x86_64" --version | head -1), with the CR8 fix: $dir"
}

mkdir -p "$C"
exec 9>"$C/lock"
flock 9
build
exec 9>&-
bin=$C/current/qemu-system-x86_64
case ${1:-} in
'') echo "$bin" ;;
--exec)
	shift
	# the firmware (SeaBIOS, option ROMs) of the host's qemu-system-x86 and seabios packages
	exec "$bin" -L /usr/share/seabios -L /usr/share/qemu "$@"
	;;
*) die "usage: qemu-l0fix.sh [--exec ARGS...]" ;;
esac
