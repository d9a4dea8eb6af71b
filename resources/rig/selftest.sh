#!/bin/bash
# Prove the rig works: boot L1 with the selftest payload and check what init and the payload report.
# See docs/rig.md.
#
# Usage: selftest.sh [--full]
#   (default)  one boot: edu bound to vfio-pci; checks the bind line, /dev/vfio/<group>, /dev/kvm
#              (kvm_amd), and rig-probe's VFIO container/DMA-map/device-fd and KVM_CREATE_VM checks.
#   --full     then a second boot with an nvme controller (rebound from the nvme driver), 00:1f.3 bound
#              alone out of the ICH9 group, and the shared group (RIG_SHARED_GROUP=1: its edu's group is
#              not viable, and VFIO must refuse it).
# Env:   whatever run.sh takes (RIG_WORK, RIG_TMO, RIG_SMP, ...); RIG_QUIET defaults to 1 here.
# Output: "selftest: ok|FAIL <check>" lines, run.sh's "rig: " lines, "selftest: PASS|FAIL".
# Exit:  0 all checks passed; 1 a check failed; 124/125 the rig itself timed out/failed (from run.sh).
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
W=${RIG_WORK:-${TMPDIR:-/tmp}/vfiovm-rig}
export RIG_WORK=$W RIG_QUIET=${RIG_QUIET:-1}
FULL=0
case "${1:-}" in
'') ;;
--full) FULL=1 ;;
*)
	echo "usage: selftest.sh [--full]" >&2
	exit 2
	;;
esac

fails=0
RIGRC=
ok() { echo "selftest: ok   $*"; }
bad() {
	echo "selftest: FAIL $*"
	fails=$((fails + 1))
}

# ---- the payload: the run script and rig-probe, built static
P=$W/selftest/payload
rm -rf "$P"
mkdir -p "$P"
if ! command -v gcc >/dev/null 2>&1 || [ ! -e /usr/include/linux/vfio.h ] || ! ls /usr/lib/x86_64-linux-gnu/libc.a >/dev/null 2>&1; then
	echo "selftest: installing gcc libc6-dev linux-libc-dev"
	{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gcc libc6-dev linux-libc-dev; } ||
		{ echo "selftest: FAIL cannot install gcc"; exit 125; }
fi
install -m 0755 "$HERE/payload-selftest/run" "$P/run"
gcc -static -O2 -Wall -Wextra -Werror -o "$P/rig-probe" "$HERE/payload-selftest/rig-probe.c" ||
	{ echo "selftest: FAIL building rig-probe"; exit 125; }

# boot <name> [env assignments...]: run run.sh with the payload, set LOG and RC
boot() {
	local name=$1
	shift
	LOG=$W/logs/selftest-$name-$(date +%Y%m%d-%H%M%S)-$$.log
	env RIG_PAYLOAD="$P" RIG_LOG="$LOG" "$@" "$HERE/run.sh"
	RC=$?
	case $RC in 124 | 125) RIGRC=$RC ;; esac
	if [ $RC = 0 ]; then ok "$name: run.sh exit 0"; else bad "$name: run.sh exit $RC"; fi
}
has() { # extended regex, description
	if grep -qE "$1" "$LOG"; then ok "$2"; else bad "$2 (no line matching '$1' in $LOG)"; fi
}
group_of_bound() { # id -> group number of the first "RIG bound" line with that vendor:device
	grep -m1 -oE "RIG bound [0-9a-f:.]+ group=[0-9]+ $1" "$LOG" | sed -E 's/.*group=([0-9]+).*/\1/'
}

# ---- boot 1: edu
boot basic RIG_BIND=1234:11e8
has "RIG bound 0000:[0-9a-f:.]+ group=[0-9]+ 1234:11e8\$" "edu bound to vfio-pci"
G=$(group_of_bound 1234:11e8)
has "RIG vfio-dev /dev/vfio/${G:-X} ok" "/dev/vfio/${G:-?} exists in L1"
has "RIG kvm /dev/kvm ok module=kvm_amd" "/dev/kvm exists in L1 (kvm_amd loaded)"
has "PROBE vfio group=${G:-X} viable=1" "edu's group is viable"
has "PROBE device [0-9a-f:.]+ id=1234:11e8 .*dma-map=ok id-match" "VFIO container, DMA map and device fd work on edu"
has "PROBE kvm api=12 vm=ok" "KVM_CREATE_VM works in L1"
has "SELFTEST result fails=0" "payload checks (env, arguments, sysfs) pass"
grep -m1 'HOST timing' "$LOG" | sed 's/^HOST /selftest: basic /'

# ---- boot 2: nvme, one ICH9 function, the shared group
if [ $FULL = 1 ]; then
	IMG=$W/selftest/nvme.img
	rm -f "$IMG"
	boot full RIG_NVME_IMG="$IMG" RIG_BIND=1234:11e8,1b36:0010 RIG_BIND_BDF=0000:00:1f.3 RIG_SHARED_GROUP=1 RIG_MEM=1536
	NV=$(grep -m1 -oE 'RIG unbound [0-9a-f:.]+ from nvme' "$LOG" | awk '{print $3}')
	if [ -n "$NV" ]; then ok "nvme controller found at $NV, driven by nvme in L1"; else bad "nvme was not bound to the nvme driver in L1"; fi
	has "RIG bound ${NV:-X} group=[0-9]+ 1b36:0010" "nvme rebound to vfio-pci"
	has "PROBE device ${NV:-X} id=1b36:0010 .*id-match" "VFIO device fd works on nvme"
	G3=$(group_of_bound 8086:2930)
	has "RIG bound 0000:00:1f.3 group=${G3:-X} 8086:2930" "00:1f.3 bound alone by BDF"
	grep -m1 -E "RIG group ${G3:-X} members=" "$LOG" | sed 's/^/selftest: info /'
	grep -m1 -E "PROBE vfio group=${G3:-X} " "$LOG" | sed 's/^/selftest: info /'
	has "PROBE vfio group=[0-9]+ viable=0" "the shared group is not viable"
	has "PROBE vfio group=[0-9]+ set-container refused" "VFIO refuses a container for it"
	has "RIG group [0-9]+ members=.*=virtio-pci" "the shared group holds a virtio-pci-driven function"
	has "SELFTEST result fails=0" "payload checks (env, arguments, sysfs, viability) pass"
	grep -m1 'HOST timing' "$LOG" | sed 's/^HOST /selftest: full /'
	rm -f "$IMG"
fi

if [ $fails = 0 ]; then
	echo "selftest: PASS"
	exit 0
fi
echo "selftest: FAIL ($fails checks)"
exit "${RIGRC:-1}"
