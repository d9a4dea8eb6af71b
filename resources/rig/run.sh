#!/bin/bash
# Build (cached) and boot the rig's L1 VM under QEMU TCG, run the payload's /test/run, report its status.
# Full description: docs/rig.md.
#
# Usage: run.sh [extra QEMU arguments...]
# Env:   RIG_PAYLOAD       directory copied to /test (its executable "run" is the test)
#        RIG_BIND          vendor:device list bound to vfio-pci (default 1234:11e8 = edu, plus 1b36:0010 with
#                          RIG_NVME_IMG); set it empty to bind by id nothing
#        RIG_BIND_BDF      BDF list bound to vfio-pci as well (e.g. 0000:00:1f.3)
#        RIG_NVME_IMG      add QEMU's nvme (1b36:0010) backed by this raw file (created sparse, RIG_NVME_SIZE
#                          default 64M, when missing)
#        RIG_E1000E        1: add QEMU's e1000e (8086:10d3) at 00:16 with Debian's iPXE EFI option ROM
#                          (ipxe-qemu's efi-e1000e.rom) on L0's user network, and bind it to vfio-pci
#        RIG_MULTIFN       1: add a multi-function device at 00:11 (edu at .0 with multifunction=on,
#                          pci-testdev at .1; one IOMMU group) and bind both to vfio-pci
#        RIG_SHARED_GROUP  1: add a PCI bridge with a second edu and a virtio-rng behind it (one IOMMU group,
#                          virtio-rng bound to virtio-pci, so the edu's group is not viable)
#        RIG_SMP (1) RIG_MEM (MiB, 1024) RIG_TMO (s, 300; the L1 watchdog fires a little earlier)
#        RIG_CPU (qemu64,+svm,+npt) RIG_ACCEL (tcg,thread=single) RIG_APPEND (more kernel arguments)
#        RIG_QEMU          host (qemu-system-x86_64 from PATH), l0fix (qemu-l0fix.sh) or 10 (QEMU 10.0 from bookworm-backports,
#                          through qemu10.sh)
#        RIG_QEMU_ARGS     more QEMU arguments (split on spaces), like the positional ones
#        RIG_STALL         seconds without a console line after which L1 counts as frozen (90; 0: off), as
#                          it does at once when L1 reports a soft lockup: every vCPU's registers and code
#                          go into the log, QEMU is stopped, exit 124
#        RIG_CRASH_DUMP    1: a reset of L1 (a triple fault, a panic's reboot) or its power-off pauses QEMU
#                          instead of ending it; unless L1 had finished its payload, every vCPU's registers
#                          and code at that moment go into the log ("HOST crash:" lines), then QEMU quits
#        RIG_LOG           console log path (default $RIG_WORK/logs/run-<date>-<pid>.log)
#        RIG_QUIET         1: do not copy the console to stdout (the log always has it)
#        RIG_PARALLEL      1: do not serialize with other rig runs (default: a lock in $RIG_WORK)
#        RIG_WORK, RIG_FLAVOUR, RIG_KPKG: see build.sh
# Exit:  the exit status of /test/run (0 when there is no payload and every bind worked);
#        124 when the run timed out (L1 watchdog or host timeout); 125 when the rig itself failed
#        (build, QEMU, boot, modules, bind, no result line, interrupted). The "rig: " lines on stdout say
#        which.
# shellcheck disable=SC2054 # the commas in the arrays below are inside QEMU arguments
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
W=${RIG_WORK:-${TMPDIR:-/tmp}/vfiovm-rig}
export RIG_WORK=$W
SMP=${RIG_SMP:-1}
MEM=${RIG_MEM:-1024}
TMO=${RIG_TMO:-300}
CPU=${RIG_CPU:-qemu64,+svm,+npt}
ACCEL=${RIG_ACCEL:-tcg,thread=single}
NVME=${RIG_NVME_IMG:-}
if [ -n "$NVME" ]; then BIND=${RIG_BIND-1234:11e8,1b36:0010}; else BIND=${RIG_BIND-1234:11e8}; fi
# RIG_BIGBAR's and RIG_P2P's ivshmem too, unless RIG_BIND names the list
[ -z "${RIG_BIGBAR:-}${RIG_P2P:-}" ] || [ -n "${RIG_BIND+set}" ] || BIND+=,1af4:1110
# RIG_IGB's PF too
[ "${RIG_IGB:-0}" != 1 ] || [ -n "${RIG_BIND+set}" ] || BIND+=,8086:10c9
# RIG_E1000E's NIC too
[ "${RIG_E1000E:-0}" != 1 ] || [ -n "${RIG_BIND+set}" ] || BIND+=,8086:10d3
BIND_BDF=${RIG_BIND_BDF:-}
# 00:11.0 is an edu, bound with the other edus by id; its sibling needs its BDF.
[ "${RIG_MULTIFN:-0}" != 1 ] || BIND_BDF=${BIND_BDF:+$BIND_BDF,}0000:00:11.1
mkdir -p "$W/logs"
LOG=${RIG_LOG:-$W/logs/run-$(date +%Y%m%d-%H%M%S)-$$.log}
mkdir -p "$(dirname "$LOG")"
: >"$LOG"

say() { echo "rig: $*"; }
T0US=${EPOCHREALTIME/./}
secs() { printf '%d.%03d' $(($1 / 1000000)) $(($1 % 1000000 / 1000)); }
# finish <exit code> <result words...>: print the summary (and the log tail on failure), exit.
finish() {
	local code=$1
	shift
	say "$*"
	if [ "$code" != 0 ]; then
		say "---- last 40 lines of $LOG"
		tail -n 40 "$LOG" | sed 's/^/rig|  /'
		say "----"
	fi
	say "log $LOG"
	echo "HOST result exit=$code $*" >>"$LOG"
	# the per-run initramfs is kept next to a failed run's log, to boot it again by hand
	[ "$code" != 0 ] || rm -f "${INITRD:-}"
	exit "$code"
}
case "$SMP$MEM$TMO" in *[!0-9]*) finish 125 "FAIL step=usage RIG_SMP, RIG_MEM and RIG_TMO must be numbers" ;; esac
[ "$TMO" -ge 10 ] || finish 125 "FAIL step=usage RIG_TMO must be at least 10 (seconds)"

say "log $LOG"

# ---- step: host tools
if ! command -v qemu-system-x86_64 >/dev/null 2>&1; then
	say "installing qemu-system-x86"
	{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-system-x86; } \
		>>"$LOG" 2>&1 || finish 125 "FAIL step=install apt-get install qemu-system-x86 failed"
fi

# ---- step: build (kernel and base archive cached; the payload archive is per run)
INITRD=${LOG%.log}.initrd
BUILD_OUT=$(RIG_INITRD=$INITRD "$HERE/build.sh" 2>"$INITRD.buildlog")
brc=$?
sed 's/^/HOST build: /' "$INITRD.buildlog" >>"$LOG"
rm -f "$INITRD.buildlog"
[ $brc = 0 ] || finish 125 "FAIL step=build (build.sh exit $brc)"
KERNEL=$(sed -n 's/^kernel=//p' <<<"$BUILD_OUT")
[ -s "$KERNEL" ] && [ -s "$INITRD" ] || finish 125 "FAIL step=build build.sh did not produce a kernel and initrd"

# ---- step: wait for other rig runs (two TCG VMs on two cores would slow both into their timeouts)
exec 9>"$W/run.lock"
if [ "${RIG_PARALLEL:-0}" != 1 ] && ! flock -n 9; then
	say "waiting for another rig run to finish ($W/run.lock)"
	flock 9
fi

# ---- QEMU command line
GTMO=$((TMO - (TMO / 10 > 5 ? TMO / 10 : 5)))
[ $GTMO -ge 5 ] || GTMO=5
# no_timer_check is for L1 only: under TCG with -smp 2, L1's check_timer has been seen to miss its
# ticks and panic ("timer doesn't work through Interrupt-remapped IO-APIC") before init. The L2 guests
# vfiovm boots get no such crutch.
APPEND="console=ttyS0 intel_iommu=on panic=-1 no_timer_check rdinit=/init rig.timeout=$GTMO"
[ -z "$BIND" ] || APPEND+=" rig.bind=$BIND"
[ -z "$BIND_BDF" ] || APPEND+=" rig.bind_bdf=$BIND_BDF"
# tells init that a missing /test/run is an error (an archive the kernel failed to unpack, say)
[ ! -e "${RIG_PAYLOAD:-/nonexistent}/run" ] || APPEND+=" rig.payload=1"
DEVS=(-device intel-iommu,intremap=on,caching-mode=on -device edu,dma_mask=0xffffffffffffffff -device pci-testdev)
if [ -n "$NVME" ]; then
	if [ ! -e "$NVME" ]; then
		truncate -s "${RIG_NVME_SIZE:-64M}" "$NVME" || finish 125 "FAIL step=nvme cannot create $NVME"
	fi
	# MSI-X table and PBA in BAR 0 beside the registers (checks/48-vfio-msix-reloc.sh): QEMU 9.0's
	# default, said explicitly to QEMU 10; QEMU 6.0-8.2 have only that layout and no such property
	NVME_OPTS=
	[ "${RIG_QEMU:-host}" != 10 ] || NVME_OPTS=,msix-exclusive-bar=off
	DEVS+=(-drive "file=$NVME,if=none,id=nvm,format=raw" -device "nvme,serial=vfiovm,drive=nvm$NVME_OPTS")
fi
if [ -n "${RIG_BIGBAR:-}" ]; then
	# an ivshmem-plain whose BAR 2 is the file (sparse; RIG_BIGBAR_SIZE, default 64G), in a 64-bit
	# window big enough for it; bound to vfio-pci by id
	truncate -s "${RIG_BIGBAR_SIZE:-64G}" "$RIG_BIGBAR" || finish 125 "FAIL step=bigbar cannot size $RIG_BIGBAR"
	DEVS+=(-object "memory-backend-file,id=bigbar,mem-path=$RIG_BIGBAR,size=${RIG_BIGBAR_SIZE:-64G},share=on"
		-device ivshmem-plain,memdev=bigbar -global q35-pcihost.pci-hole64-size=256G)
fi
if [ -n "${RIG_P2P:-}" ]; then
	# a second, small ivshmem-plain at 00:13.0 (BAR 2: the file, 2 MiB) as a peer-to-peer DMA
	# target (checks/52-vfio-p2p.sh); bound to vfio-pci by id
	truncate -s 2M "$RIG_P2P" || finish 125 "FAIL step=p2p cannot size $RIG_P2P"
	DEVS+=(-object "memory-backend-file,id=p2pmem,mem-path=$RIG_P2P,size=2M,share=on"
		-device ivshmem-plain,memdev=p2pmem,addr=0x13)
fi
if [ "${RIG_E1000E:-0}" = 1 ]; then
	# the option ROM by path: the fixed L0 (qemu-l0fix.sh) does not search ipxe-qemu's directory
	rom=/usr/lib/ipxe/qemu/efi-e1000e.rom
	[ -f $rom ] || finish 125 "FAIL step=e1000e no $rom (Debian's ipxe-qemu package)"
	DEVS+=(-netdev user,id=rign0 -device "e1000e,netdev=rign0,addr=0x16,romfile=$rom")
fi
if [ "${RIG_IGB:-0}" = 1 ]; then
	# QEMU 10's igb (82576 PF, SR-IOV with up to 7 VFs, 8086:10ca) behind a PCIe root port, so its
	# VFs (routing ID offset 0x80) land on the port's secondary bus
	DEVS+=(-device pcie-root-port,id=rigrp,chassis=3,slot=3,addr=0x12 -device igb,bus=rigrp)
fi
if [ "${RIG_MULTIFN:-0}" = 1 ]; then
	DEVS+=(-device edu,addr=0x11.0,multifunction=on -device pci-testdev,addr=0x11.1)
fi
if [ "${RIG_SHARED_GROUP:-0}" = 1 ]; then
	DEVS+=(-device pci-bridge,id=rigbr,chassis_nr=1,addr=0x10
		-device edu,bus=rigbr,addr=0x1 -device virtio-rng-pci,bus=rigbr,addr=0x2)
	APPEND+=" rig.modules=virtio_pci"
fi
[ -z "${RIG_APPEND:-}" ] || APPEND+=" $RIG_APPEND"
# the human monitor, for the stall dump below
MON=${INITRD%.initrd}.mon
STALL=${RIG_STALL:-90}
case "$STALL" in *[!0-9]*) finish 125 "FAIL step=usage RIG_STALL must be a number" ;; esac
# shellcheck disable=SC2206 # RIG_QEMU_ARGS is split on spaces on purpose
# RIG_QEMU=10: QEMU 10.0 from bookworm-backports (qemu10.sh, unpacked beside the host's QEMU)
case ${RIG_QEMU:-host} in
host) QEMU=(qemu-system-x86_64) ;;
10) "$HERE/qemu10.sh" >/dev/null || finish 125 "FAIL step=qemu QEMU 10 could not be fetched (resources/rig/qemu10.sh)"
	QEMU=("$HERE/qemu10.sh" --exec) ;;
# RIG_QEMU=l0fix: the host's QEMU 7.2 rebuilt from Debian's source with the CR8 fix (qemu-l0fix.sh),
# for UEFI guests in L2, which abort the unfixed QEMU
l0fix) "$HERE/qemu-l0fix.sh" >/dev/null || finish 125 "FAIL step=qemu the fixed QEMU could not be built (resources/rig/qemu-l0fix.sh)"
	QEMU=("$HERE/qemu-l0fix.sh" --exec) ;;
*) finish 125 "FAIL step=usage RIG_QEMU is host, 10 or l0fix" ;;
esac
CMD=("${QEMU[@]}" -accel "$ACCEL" -machine q35,kernel-irqchip=split -cpu "$CPU" -m "$MEM" -smp "$SMP"
	-nodefaults -display none -monitor "unix:$MON,server=on,wait=off" -serial stdio -no-reboot
	"${DEVS[@]}" -kernel "$KERNEL" -initrd "$INITRD" -append "$APPEND" ${RIG_QEMU_ARGS:-} "$@")
# With -no-reboot a reset is a shutdown; shutdown=pause keeps the CPUs as they were at the fault.
[ "${RIG_CRASH_DUMP:-0}" != 1 ] || CMD+=(-action shutdown=pause)
echo "HOST qemu: timeout -k 5 $TMO ${CMD[*]}" >>"$LOG"

# ---- step: boot and run; every console line is stamped with host seconds since this script started
stamp() {
	local l t d
	while IFS= read -r l || [ -n "$l" ]; do
		l=${l%$'\r'}
		t=${EPOCHREALTIME/./}
		d=$((t - T0US))
		printf '[%4d.%06d] %s\n' $((d / 1000000)) $((d % 1000000)) "$l" >>"$LOG"
		[ "${RIG_QUIET:-0}" = 1 ] || printf '[%4d.%06d] %s\n' $((d / 1000000)) $((d % 1000000)) "$l"
	done
}
Q0=${EPOCHREALTIME/./}
echo "HOST qemu-start t=$(secs $((Q0 - T0US)))" >>"$LOG"
# `timeout` puts QEMU in a process group of its own, so a Ctrl-C or a SIGTERM to this script would not
# reach it: forward them.
FIFO=$INITRD.console
rm -f "$FIFO"
mkfifo "$FIFO" || finish 125 "FAIL step=qemu cannot create $FIFO"
stamp <"$FIFO" &
SPID=$!
timeout -k 5 "$TMO" "${CMD[@]}" </dev/null >"$FIFO" 2>&1 &
QPID=$!
# Stall watch: L1 prints all the time (every check streams its guest's console); a console quiet for
# STALL seconds is a frozen L1 (seen under multi-threaded TCG: both QEMU vCPU threads busy, nothing
# printed, docs/rig.md). Dump what each vCPU is doing into the log, then stop QEMU.
STALLED=${INITRD%.initrd}.stalled
rm -f "$STALLED"
if [ "$STALL" -gt 0 ]; then
	(
		last=0 quiet=0
		while kill -0 "$QPID" 2>/dev/null; do
			sleep 5
			size=$(stat -c %s "$LOG" 2>/dev/null || echo 0)
			if [ "$size" = "$last" ]; then quiet=$((quiet + 5)); else quiet=0; fi
			# RIG_CRASH_DUMP: QEMU paused at L1's reset or power-off. A power-off after the payload's
			# result is the normal end; anything else is a crash, dumped.
			if [ "${RIG_CRASH_DUMP:-0}" = 1 ] && python3 "$HERE/hmp.py" "$MON" "info status" 2>/dev/null |
				grep -q "paused (shutdown)"; then
				if ! grep -qE 'RIG test-end rc=|RIG fail step=' "$LOG"; then
					echo "HOST crash: L1 reset itself (QEMU's log says why with -d cpu_reset); L1's vCPUs:" >>"$LOG"
					cmds=("info cpus" "info registers -a")
					for c in $(seq 0 $((SMP - 1))); do cmds+=("cpu $c" "x/12i \$pc" "x/16gx \$sp"); done
					python3 "$HERE/hmp.py" "$MON" "${cmds[@]}" 2>&1 | sed 's/^/HOST crash: /' >>"$LOG"
				fi
				python3 "$HERE/hmp.py" "$MON" quit >/dev/null 2>&1
				break
			fi
			# L1's own soft-lockup report (not an L2 guest's, whose lines carry "[check] "): its
			# CPUs stopped scheduling, so the payload's per-run timeouts cannot fire either. Only
			# what was written since the last look is searched.
			if [ "$quiet" = 0 ] && tail -c +$((last + 1)) "$LOG" |
				grep -qE '^\[ *[0-9.]+\] \[ *[0-9.]+\] watchdog: BUG: soft lockup'; then
				echo "HOST stall: L1 reported a soft lockup (above); L1's vCPUs:" >>"$LOG"
			elif [ "$quiet" -ge "$STALL" ]; then
				echo "HOST stall: no console output for ${quiet}s; L1's vCPUs:" >>"$LOG"
			else
				last=$size
				continue
			fi
			cmds=("info cpus" "info registers -a")
			for c in $(seq 0 $((SMP - 1))); do cmds+=("cpu $c" "x/12i \$pc" "x/16gx \$sp"); done
			python3 "$HERE/hmp.py" "$MON" "${cmds[@]}" 2>&1 | sed 's/^/HOST stall: /' >>"$LOG"
			: >"$STALLED"
			kill -TERM "$QPID" 2>/dev/null
			break
		done
	) &
fi
INTR=
trap 'INTR=1; kill -TERM "$QPID" 2>/dev/null' INT TERM HUP
while :; do
	wait "$QPID"
	qrc=$?
	# a trapped signal interrupts `wait`: wait again until QEMU is really gone
	if [ -z "$INTR" ] || ! kill -0 "$QPID" 2>/dev/null; then break; fi
done
wait "$SPID"
rm -f "$FIFO" "$MON"
trap - INT TERM HUP
Q1=${EPOCHREALTIME/./}
echo "HOST qemu-end rc=$qrc t=$(secs $((Q1 - T0US)))" >>"$LOG"
[ -z "$INTR" ] || finish 125 "FAIL step=interrupted run.sh got a signal; QEMU stopped"

# ---- result
ts_of() { # pattern -> host time (µs since T0) of its first console line, or empty
	grep -m1 -E "^\[ *[0-9]+\.[0-9]+\] .*$1" "$LOG" | sed -E 's/^\[ *([0-9]+)\.([0-9]+)\].*/\1\2/;s/^0*//'
}
TI=$(ts_of 'RIG init ')
TS=$(ts_of 'RIG test-start')
TE=$(ts_of 'RIG test-end rc=')
Q0R=$((Q0 - T0US))
timing="qemu-to-init=$([ -n "$TI" ] && echo "$(secs $((TI - Q0R)))s" || echo none)"
[ -z "$TS" ] || [ -z "$TE" ] || timing+=" test=$(secs $((TE - TS)))s"
timing+=" qemu-total=$(secs $((Q1 - Q0)))s wall=$(secs $((Q1 - T0US)))s"
say "timing $timing"
echo "HOST timing $timing" >>"$LOG"

END=$(grep -m1 -oE 'RIG test-end rc=[0-9]+' "$LOG")
FAIL=$(grep -m1 -oE 'RIG fail step=.*' "$LOG")
if [ -e "$STALLED" ]; then
	rm -f "$STALLED"
	finish 124 "FAIL step=stall L1 stopped making progress (no console output for ${STALL}s, or a soft lockup; its vCPUs' state is in the log)"
elif [ -n "$END" ]; then
	rc=${END##*=}
	[ "$rc" = 0 ] && finish 0 "PASS rc=0"
	finish "$rc" "FAIL test rc=$rc (/test/run failed)"
elif [ -n "$FAIL" ]; then
	step=${FAIL#RIG fail step=}
	[ "${step%% *}" = timeout ] && finish 124 "FAIL step=$step"
	finish 125 "FAIL step=$step"
elif [ "$qrc" = 124 ] || [ "$qrc" = 137 ]; then
	finish 124 "FAIL step=timeout host timeout after ${TMO}s (QEMU killed, no result line)"
elif [ -z "$TI" ]; then
	[ "$qrc" != 0 ] && finish 125 "FAIL step=qemu QEMU exited with $qrc before L1 reached init"
	finish 125 "FAIL step=boot L1 never reached init (kernel panic?)"
else
	finish 125 "FAIL step=init L1 stopped without a result line (QEMU rc=$qrc)"
fi
