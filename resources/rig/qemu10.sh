#!/bin/bash
# QEMU 10 (Debian bookworm-backports) for the rig, next to the host's own QEMU and without installing it:
# the packages are downloaded with `apt-get download` and unpacked with `dpkg -x` into a cache.
#
# Usage: qemu10.sh                  prints the path of the unpacked qemu-system-x86_64 (stdout, one line)
#        qemu10.sh --payload DIR    also copies it into DIR/qemu10/ for L1: the binary, every shared library
#                                   it loads (ldd, the unpacked ones first), ld.so and the firmware in share/;
#                                   run it there as ./qemu10/run ARGS... (a busybox-sh wrapper)
#        qemu10.sh --exec ARGS...   runs it on this host (unpacked libraries first, -L the unpacked firmware)
# Env:   RIG_WORK (${TMPDIR:-/tmp}/vfiovm-rig): the cache is $RIG_WORK/qemu10/<version>/ (root/ is the
#        unpacked file tree, debs/ the packages); QEMU10_REFRESH=1 asks apt again even with a cache.
# Idempotent, and the host's apt configuration is not changed: apt runs with a private configuration in
# $RIG_WORK/qemu10/apt (the host's sources, plus a deb822 stanza for the bookworm-backports suite on the
# URI the host's bookworm source uses, its own lists and caches; the host's dpkg status, so that apt
# resolves against what is installed here). apt-get update runs only when those lists lack the suite.
# Messages go to stderr; failure: "qemu10: FAILED <why>", exit 1.
set -euo pipefail
# shellcheck source=apt-mirror.sh
. "$(dirname "$0")/apt-mirror.sh"
W=${RIG_WORK:-${TMPDIR:-/tmp}/vfiovm-rig}
C=$W/qemu10
SUITE=bookworm-backports
PKG=qemu-system-x86
ARCHLIB=x86_64-linux-gnu

log() { echo "qemu10: $*" >&2; }
die() {
	echo "qemu10: FAILED $*" >&2
	exit 1
}

mode=path
case ${1:-} in
--payload)
	[ $# = 2 ] || die "usage: qemu10.sh --payload DIR"
	mode=payload
	DEST=$2
	;;
--exec)
	mode=exec
	shift
	;;
'') ;;
*) die "usage: qemu10.sh [--payload DIR | --exec ARGS...]" ;;
esac

libpath() { # the unpacked library directories, for LD_LIBRARY_PATH
	echo "$1/root/usr/lib/$ARCHLIB:$1/root/lib/$ARCHLIB"
}

# ---- a private apt configuration: the host's own sources plus bookworm-backports, its own lists and
# caches under $C/apt. The host's apt configuration is left as it is: with bookworm-backports among the
# host's sources, `apt-get install qemu-system-x86` (run.sh) fails on a host that has qemu-utils from
# backports installed (its Breaks: qemu-system-common (<< 8.0) cannot be resolved any more).
A=$C/apt
APT=(-o "Dir::Etc::sourcelist=$A/sources.list" -o "Dir::Etc::sourceparts=$A/sources.list.d"
	-o "Dir::State::lists=$A/lists" -o "Dir::Cache=$A/cache" -o "Dir::Cache::archives=$A/archives"
	-o APT::Sandbox::User=root)
apt_config() {
	local f uri
	rm -rf "$A/sources.list.d"
	mkdir -p "$A/sources.list.d" "$A/lists/partial" "$A/cache" "$A/archives/partial"
	: >"$A/sources.list"
	[ ! -f /etc/apt/sources.list ] || cp /etc/apt/sources.list "$A/sources.list"
	for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
		[ ! -f "$f" ] || cp "$f" "$A/sources.list.d/"
	done
	# a configured source naming the suite already?
	if cat "$A/sources.list" "$A"/sources.list.d/* 2>/dev/null | grep -Eq "^[^#]*[[:space:]]$SUITE([[:space:]]|$)"; then
		return 0
	fi
	uri=$(bookworm_uri)
	[ -n "$uri" ] || die "no apt source for Debian bookworm to take the mirror's URI from"
	cat >"$A/sources.list.d/zz-$SUITE.sources" <<-EOF
		Types: deb
		URIs: $uri
		Suites: $SUITE
		Components: main
		Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
	EOF
}

bpo_version() { # the version of $PKG that apt knows from the backports suite, or nothing
	apt-cache "${APT[@]}" madison "$PKG" 2>/dev/null | awk -F' *[|] *' -v s=" $SUITE/" 'index($3, s) { print $2; exit }'
}

fetch() {
	local ver dir pkgs p
	apt_config
	ver=$(bpo_version)
	if [ -z "$ver" ] || [ "${QEMU10_REFRESH:-0}" = 1 ]; then
		log "apt-get update (private lists in $A/lists, with $SUITE)"
		apt-get "${APT[@]}" update -qq >&2 || die "apt-get update failed"
		ver=$(bpo_version)
	fi
	[ -n "$ver" ] || die "apt knows no $PKG in $SUITE"
	dir=$C/${ver//[:~+]/_}
	if [ -e "$dir/ok" ]; then
		ln -sfn "$(basename "$dir")" "$C/current"
		return
	fi
	# What installing it from backports would install on this host: QEMU, its firmware and data
	# packages, and the libraries the host lacks (or has too old). Nothing is installed.
	pkgs=$(apt-get "${APT[@]}" install -s -qq --no-install-recommends -t "$SUITE" "$PKG" 2>/dev/null |
		awk '$1 == "Inst" { v = $3; if (v ~ /^\[/) v = $4; gsub(/[()]/, "", v); print $2 "=" v }')
	echo "$pkgs" | grep -q "^$PKG=" || die "apt-get install -s -t $SUITE $PKG did not resolve: $(apt-get "${APT[@]}" install -s --no-install-recommends -t "$SUITE" "$PKG" 2>&1 | grep -E '^E:|Depends:|Breaks:' | head -3 | tr '\n' ' ')"
	rm -rf "$dir"
	mkdir -p "$dir/debs" "$dir/root"
	log "downloading $(echo "$pkgs" | wc -l) packages into $dir/debs: $(echo "$pkgs" | tr '\n' ' ')"
	# shellcheck disable=SC2086 # one word per package
	(cd "$dir/debs" && apt-get "${APT[@]}" download -qq $pkgs >&2) || die "apt-get download failed"
	for p in "$dir"/debs/*.deb; do
		dpkg -x "$p" "$dir/root" || die "dpkg -x $p failed"
	done
	ln -sfn "$(basename "$dir")" "$C/current"
	check "$dir"
	: >"$dir/ok"
}

check() { # the unpacked QEMU runs here and is 10.x
	local v
	v=$(LD_LIBRARY_PATH=$(libpath "$1") "$1/root/usr/bin/qemu-system-x86_64" --version | head -1) ||
		die "the unpacked qemu-system-x86_64 does not run: $(LD_LIBRARY_PATH=$(libpath "$1") ldd "$1/root/usr/bin/qemu-system-x86_64" | grep 'not found' | tr '\n' ' ')"
	case $v in
	*" version 10."*) log "$v" ;;
	*) die "not QEMU 10: $v" ;;
	esac
}

mkdir -p "$C"
if [ "${QEMU10_REFRESH:-0}" = 1 ] || [ ! -e "$C/current/ok" ]; then
	exec 9>"$C/lock"
	flock 9
	if [ "${QEMU10_REFRESH:-0}" = 1 ] || [ ! -e "$C/current/ok" ]; then fetch; fi
	exec 9>&-
fi
D=$(cd "$C/current" && pwd -P)
BIN=$D/root/usr/bin/qemu-system-x86_64
SHARE=$D/root/usr/share/qemu

case $mode in
path) echo "$BIN" ;;
exec) LD_LIBRARY_PATH=$(libpath "$D") exec "$BIN" -L "$SHARE" -L "$D/root/usr/share/seabios" "$@" ;;
payload)
	Q=$DEST/qemu10
	rm -rf "$Q"
	mkdir -p "$Q/lib" "$Q/share"
	cp "$BIN" "$Q/"
	deps=$(LD_LIBRARY_PATH=$(libpath "$D") ldd "$BIN")
	if echo "$deps" | grep -q 'not found'; then die "libraries missing: $(echo "$deps" | grep 'not found' | tr '\n' ' ')"; fi
	echo "$deps" | awk '$3 ~ /^\// { print $3 }' | while read -r l; do cp -L "$l" "$Q/lib/"; done
	cp -L "/lib64/ld-linux-x86-64.so.2" "$Q/"
	# the firmware a q35 machine may load: SeaBIOS (when no -bios is given; the seabios package keeps it
	# in its own directory), the vapic and Linux-boot option ROMs and the PVH one (-kernel vmlinux)
	for f in "$D/root/usr/share/seabios/bios-256k.bin" "$SHARE/kvmvapic.bin" "$SHARE/linuxboot_dma.bin" "$SHARE/pvh.bin"; do
		cp -L "$f" "$Q/share/" || die "no $f"
	done
	cat >"$Q/run" <<-'EOF'
		#!/bin/sh
		# QEMU 10 with the libraries and firmware next to this script (built by resources/rig/qemu10.sh)
		d=$(dirname "$0")
		exec "$d/ld-linux-x86-64.so.2" --library-path "$d/lib" "$d/qemu-system-x86_64" -L "$d/share" "$@"
	EOF
	chmod +x "$Q/run"
	log "copied into $Q: $(du -sh "$Q" | cut -f1) ($(ls "$Q/lib" | wc -l) libraries)"
	echo "$Q/qemu-system-x86_64"
	;;
esac
