#!/bin/bash
# Build the nested rig's L1 kernel and initramfs from Debian packages (see docs/rig.md).
#
# Usage: build.sh
# Env:   RIG_WORK     work/cache directory            (default ${TMPDIR:-/tmp}/vfiovm-rig)
#        RIG_FLAVOUR  cloud | std                     (default cloud: boots in ~2.5 s under TCG)
#        RIG_KPKG     pin the kernel package, e.g. linux-image-6.1.0-56-cloud-amd64
#                     (default: what Debian's linux-image-<flavour>-amd64 depends on today)
#        RIG_PAYLOAD  directory copied to /test in the initramfs (optional)
#        RIG_INITRD   where to write the initramfs     (default $RIG_WORK/out/initrd-<flavour>.img)
# Stdout: exactly two lines, "kernel=<path>" and "initrd=<path>". Everything else goes to stderr.
# Exit:   0 on success, 1 on any failure (the last stderr line names the step).
#
# The Debian packages are downloaded once into $RIG_WORK/debs. The kernel, busybox, /init and modules go
# into a base archive cached under $RIG_WORK/base/<kernel release>-<hash of its inputs>/; the payload is a
# second, uncompressed cpio archive appended to it (the kernel unpacks concatenated archives in order), so a
# new payload costs only a copy. Missing host tools are installed with apt-get (CI machines are fresh, root).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
W=${RIG_WORK:-${TMPDIR:-/tmp}/vfiovm-rig}
FLAVOUR=${RIG_FLAVOUR:-cloud}
# Modules L1 needs; their dependencies are added from modinfo. virtio_pci is there for the shared-group
# setup (a device bound to a non-VFIO driver makes its IOMMU group non-viable), loaded only on request;
# tun for the virtio-net check (the tap vfiovm's --net attaches to), loaded by that check.
MODULES="vfio vfio_iommu_type1 vfio_pci kvm kvm_amd kvm_intel virtio_pci tun"
# The standard flavour also has igb, the PF driver of checks/56-sriov-host.sh (loaded by that check).
[ "${RIG_FLAVOUR:-cloud}" != std ] || MODULES+=" igb"

log() { echo "rig-build: $*" >&2; }
die() { log "FAILED at step $1: ${*:2}"; exit 1; }

case $FLAVOUR in
cloud) META=linux-image-cloud-amd64 ;;
std) META=linux-image-amd64 ;;
*) die usage "RIG_FLAVOUR must be cloud or std, not '$FLAVOUR'" ;;
esac

APT_UPDATED=0
apt_update() {
	if [ $APT_UPDATED = 0 ]; then
		log "apt-get update"
		apt-get update -qq >&2 || die apt-update "apt-get update failed"
		APT_UPDATED=1
	fi
}

# Host tools: command -> Debian package.
missing=()
for pair in depmod:kmod modinfo:kmod cpio:cpio gzip:gzip dpkg-deb:dpkg flock:util-linux sha256sum:coreutils; do
	command -v "${pair%%:*}" >/dev/null 2>&1 || command -v "/sbin/${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
	apt_update
	log "installing ${missing[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 ||
		die install "apt-get install ${missing[*]} failed"
fi
export PATH=$PATH:/sbin:/usr/sbin

mkdir -p "$W"/debs "$W"/base "$W"/out
exec 8>"$W/build.lock"
flock 8

# ---- step: resolve the kernel package
resolve() { apt-cache depends "$META" 2>/dev/null | awk '/Depends: linux-image-/ { print $2; exit }'; }
PKG=${RIG_KPKG:-}
if [ -z "$PKG" ]; then
	PKG=$(resolve || true)
	if [ -z "$PKG" ]; then
		apt_update
		PKG=$(resolve || true)
	fi
	if [ -z "$PKG" ]; then
		# Offline fallback: the newest kernel of this flavour already cached.
		# shellcheck disable=SC2012 # Debian package file names: no blanks or newlines
		f=$(ls "$W"/debs/linux-image-*-"$FLAVOUR"-amd64_*.deb 2>/dev/null | sort -V | tail -1 || true)
		[ -n "$f" ] || die resolve "cannot resolve the kernel package behind $META and none is cached"
		f=${f##*/}
		PKG=${f%%_*}
		log "apt cannot resolve $META; using cached $PKG"
	fi
fi
KREL=${PKG#linux-image-}

# ---- step: download (cached)
download() { # package
	ls "$W"/debs/"$1"_*.deb >/dev/null 2>&1 && return 0
	log "downloading $1"
	(cd "$W"/debs && apt-get -qq -o APT::Sandbox::User=root download "$1" >&2) && return 0
	apt_update
	(cd "$W"/debs && apt-get -qq -o APT::Sandbox::User=root download "$1" >&2)
}
download "$PKG" || die download "apt-get download $PKG failed (pin another with RIG_KPKG)"
download busybox-static || die download "apt-get download busybox-static failed"
# shellcheck disable=SC2012 # as above
KDEB=$(ls "$W"/debs/"$PKG"_*.deb | sort -V | tail -1)
# shellcheck disable=SC2012 # as above
BDEB=$(ls "$W"/debs/busybox-static_*.deb | sort -V | tail -1)

# ---- step: base archive (cached by the hash of everything that goes into it)
KEY=$({
	echo "$MODULES"
	basename "$KDEB"
	basename "$BDEB"
	cat "$HERE/init" "$HERE/build.sh"
} | sha256sum | cut -c1-12)
B=$W/base/$KREL-$KEY
if [ ! -s "$B/base.cpio.gz" ] || [ ! -s "$B/vmlinuz" ]; then
	log "building base initramfs for $KREL in $B"
	T=$W/base/.tmp-$$
	rm -rf "$T"
	mkdir -p "$T"/k "$T"/bb "$T"/root
	trap 'rm -rf "$T"' EXIT
	dpkg-deb -x "$KDEB" "$T"/k || die unpack "dpkg-deb -x $KDEB"
	dpkg-deb -x "$BDEB" "$T"/bb || die unpack "dpkg-deb -x $BDEB"
	R=$T/root
	mkdir -p "$R"/bin "$R"/proc "$R"/sys "$R"/dev "$R"/tmp "$R"/run "$R"/lib/modules/"$KREL"
	ln -s bin "$R"/sbin
	cp "$T"/bb/bin/busybox "$R"/bin/busybox
	# every applet but "busybox" itself (a self-symlink would make exec fail with ELOOP)
	for a in $("$R"/bin/busybox --list); do
		[ "$a" = busybox ] || ln -s busybox "$R/bin/$a"
	done
	install -m 0755 "$HERE/init" "$R/init"
	MS=$T/k/lib/modules/$KREL
	MD=$R/lib/modules/$KREL
	[ -d "$MS" ] || die modules "$KDEB has no lib/modules/$KREL"
	cp "$MS"/modules.order "$MS"/modules.builtin "$MS"/modules.builtin.modinfo "$MD"/
	declare -A SEEN=()
	add_module() { # module name (- and _ are interchangeable)
		local pat=${1//[-_]/[-_]} f dep
		f=$(find "$MS/kernel" -regex ".*/${pat}\.ko\(\.xz\|\.zst\|\.gz\)?" -print -quit)
		[ -n "$f" ] || die modules "module $1 not found in $KREL"
		[ -z "${SEEN[$f]:-}" ] || return 0
		SEEN[$f]=1
		mkdir -p "$MD/$(dirname "${f#"$MS"/}")"
		cp "$f" "$MD/${f#"$MS"/}"
		for dep in $(modinfo -F depends "$f" | tr ',' ' '); do add_module "$dep"; done
	}
	for m in $MODULES; do add_module "$m"; done
	depmod -b "$R" "$KREL" || die modules "depmod failed"
	(cd "$R" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | gzip -1) >"$T/base.cpio.gz" ||
		die pack "cpio of the base archive failed"
	cp "$T/k/boot/vmlinuz-$KREL" "$T/vmlinuz"
	rm -rf "$B"
	mkdir -p "$B"
	mv "$T/base.cpio.gz" "$T/vmlinuz" "$B"/
	rm -rf "$T"
	trap - EXIT
	log "base ready: ${#SEEN[@]} modules, $(du -h "$B/base.cpio.gz" | cut -f1) archive"
	# bases of older inputs (an edited init, say), once no run can still be starting from them
	find "$W/base" -mindepth 1 -maxdepth 1 -type d -name '*-*' ! -path "$B" -mmin +60 -exec rm -rf {} + || true
fi
flock -u 8

# ---- step: payload (its own archive, appended)
OUT=${RIG_INITRD:-$W/out/initrd-$FLAVOUR.img}
mkdir -p "$(dirname "$OUT")"
TMP_OUT=$OUT.tmp-$$
trap 'rm -rf "$TMP_OUT" "$TMP_OUT.stage"' EXIT
cp "$B/base.cpio.gz" "$TMP_OUT"
# The kernel looks for the next archive's cpio magic only at a 4-byte aligned offset; zeros are skipped.
truncate -s %4 "$TMP_OUT"
if [ -n "${RIG_PAYLOAD:-}" ]; then
	[ -d "$RIG_PAYLOAD" ] || die payload "RIG_PAYLOAD=$RIG_PAYLOAD is not a directory"
	[ ! -e "$RIG_PAYLOAD/run" ] || [ -x "$RIG_PAYLOAD/run" ] || die payload "$RIG_PAYLOAD/run is not executable"
	mkdir -p "$TMP_OUT.stage/test"
	cp -a "$RIG_PAYLOAD"/. "$TMP_OUT.stage/test/" || die payload "copying $RIG_PAYLOAD failed"
	(cd "$TMP_OUT.stage" && find test | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) >>"$TMP_OUT" ||
		die payload "cpio of $RIG_PAYLOAD failed"
	rm -rf "$TMP_OUT.stage"
fi
mv "$TMP_OUT" "$OUT"
trap - EXIT
echo "kernel=$B/vmlinuz"
echo "initrd=$OUT"
