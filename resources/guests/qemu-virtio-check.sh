#!/usr/bin/env bash
# Runs the virtio_probe guest against QEMU's virtio-pci devices (virtio-rng, virtio-blk,
# modern only), the reference that vfiovm's own virtio devices are compared with.
#
#   bash resources/guests/qemu-virtio-check.sh [--accel kvm|tcg] [--only NAME] [--keep] [--list]
#                                              [--timeout SECONDS]
#
# Builds nothing itself: the guest image comes from `cargo run -p vfiovm-guests --bin guest-path
# virtio_probe` (honours CARGO_TARGET_DIR), or from $VIRTIO_PROBE if set. Without --accel it uses
# KVM when /dev/kvm is usable and a first boot works there, else TCG. Each check boots QEMU q35
# once (at most --timeout seconds: 300 with KVM, 900 with TCG by default; a nested KVM on a
# busy host needs a minute for the hostile checks), with the debug-exit device at port 0xf4
# (as vfiovm), and asserts on the guest's output lines (README.md, "virtio_probe output") and
# exit status. The hostile checks print what QEMU
# did with each malformed request, QEMU's own error messages included, and compare it with the
# reference recorded in virtio_hostile.qemu.txt (a difference is reported, not failed).
#
# Exit status: 0 every check passed, 1 a check failed, 2 usage error, 77 SKIPPED because
# qemu-system-x86_64 is not installed (a skip is never a pass: callers must treat 77 as such).
set -uo pipefail
self=$(readlink -f "$0")
cd "$(dirname "$self")/../.."

QEMU=${QEMU:-qemu-system-x86_64}
accel=
boot_limit=
only=
keep=0
checks=(list rng blk ring-features polling no-msix-transitional blk-read blk-ro hostile
  hostile-ring-features)
while [ $# -gt 0 ]; do
  case "$1" in
    --accel) accel=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    --timeout) boot_limit=$2; shift 2 ;;
    --list) printf '%s\n' "${checks[@]}"; exit 0 ;;
    -h|--help) sed -n '2,19p' "$self" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "qemu-virtio-check: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

if ! command -v "$QEMU" >/dev/null 2>&1; then
  echo "qemu-virtio-check: SKIPPED: $QEMU not found; install QEMU (Debian: apt-get install qemu-system-x86) to run the virtio reference checks" >&2
  exit 77
fi

guest=${VIRTIO_PROBE:-}
if [ -z "$guest" ]; then
  guest=$(cargo run -q -j1 -p vfiovm-guests --bin guest-path virtio_probe) || {
    echo "qemu-virtio-check: cannot build or find the virtio_probe guest" >&2
    exit 1
  }
fi
[ -f "$guest" ] || { echo "qemu-virtio-check: no guest image at $guest" >&2; exit 1; }

work=$(mktemp -d /tmp/qemu-virtio-check.XXXXXX)
if [ "$keep" = 1 ]; then
  echo "qemu-virtio-check: logs and images kept in $work"
else
  trap 'rm -rf "$work"' EXIT
fi

passed=0
failed=0
log=
status=0

# boot NAME APPEND [QEMU ARGS...]: boots the guest; output in $work/NAME.log, exit status in $status.
boot() {
  local name=$1 append=$2
  shift 2
  log=$work/$name.log
  local limit=$boot_limit
  [ -z "$limit" ] && { limit=300; [ "$accel" = tcg ] && limit=900; }
  timeout "$limit" "$QEMU" -accel "$accel" -M q35 -m 256 -smp 1 -nodefaults -display none \
    -no-reboot -serial stdio -device isa-debug-exit,iobase=0xf4,iosize=4 \
    -kernel "$guest" -append "$append" "$@" >"$log" 2>&1 </dev/null
  status=$?
}

fail() {
  echo "  FAIL: $*"
  check_ok=0
}

# expect_status N / expect_line LINE (exact) / expect_match REGEX (a whole line, extended)
expect_status() { [ "$status" = "$1" ] || fail "exit status $status, expected $1"; }
expect_line() { grep -qxF -- "$1" "$log" || fail "no line '$1'"; }
expect_match() { grep -qxE -- "$1" "$log" || fail "no line matching /$1/"; }
expect_no_fail_lines() {
  if grep -q '^fail: ' "$log"; then fail "guest checks failed:"; grep '^fail: ' "$log" | sed 's/^/    /'; fi
}

# Disks: 1 MiB raw images, one with known data at sector 100 (for blk-read).
rng_dev() { echo "-device virtio-rng-pci,disable-legacy=on,addr=0x3"; }
disk_dev() { # disk_dev ID FILE SLOT SERIAL [DRIVE_OPTIONS [DEVICE_OPTIONS]]
  echo "-drive file=$2,if=none,id=$1,format=raw${5:+,$5}" \
    "-device virtio-blk-pci,drive=$1,disable-legacy=on,addr=$3,serial=$4${6:+,$6}"
}
new_image() {
  rm -f "$1"
  truncate -s 1M "$1"
}
HOST_DATA=HOST-DATA-AT-SECTOR-100
host_image() {
  new_image "$1"
  printf '%s' "$HOST_DATA" | dd of="$1" bs=512 seek=100 conv=notrunc status=none
}

# The CRC-32 (IEEE, as zlib) of one sector of an image, from gzip's trailer.
sector_crc32() {
  dd if="$1" bs=512 skip="$2" count=1 status=none | gzip -c | tail -c8 | head -c4 |
    od -An -tx4 | tr -d ' \n'
}

# Checks that sectors FIRST..FIRST+7 of an image hold the guest's pattern: byte i of sector s
# is (seed + 3 s + i) & 0xff.
pattern_on_disk() { # IMAGE FIRST SEED
  dd if="$1" bs=512 skip="$2" count=8 status=none | od -An -tu1 -v |
    awk -v first="$2" -v seed="$3" '
      { for (f = 1; f <= NF; f++) { s = first + int(n / 512); i = n % 512;
          if ($f != (seed + 3 * s + i) % 256) bad++; n++ } }
      END { exit !(n == 4096 && bad == 0) }'
}

check_list() {
  new_image "$work/a.img"; new_image "$work/b.img"
  # shellcheck disable=SC2046
  boot list "test=list" $(rng_dev) $(disk_dev d0 "$work/a.img" 0x4 abc) $(disk_dev d1 "$work/b.img" 0x5 def)
  expect_status 1
  expect_line "virtio: devices=3"
  expect_match "virtio: 00:03\.0 type=4 name=rng device=0x1044 rev=1 common=bar[0-5]\+0x[0-9a-f]+ notify=bar[0-5]\+0x[0-9a-f]+ isr=bar[0-5]\+0x[0-9a-f]+ device_cfg=bar[0-5]\+0x[0-9a-f]+ notify_mult=[0-9]+ msix=bar[0-5]\+0x[0-9a-f]+ vectors=[0-9]+ modern=yes"
  expect_match "virtio: 00:04\.0 type=2 name=blk device=0x1042 .* modern=yes"
  expect_match "virtio: 00:05\.0 type=2 name=blk device=0x1042 .* modern=yes"
  expect_match "virtio: 00:0[345]\.0 init offered=0x[0-9a-f]+ accepted=0x1[0-9a-f]{8} status=0xf .* msix=yes"
  [ "$(grep -c ' init .* status=0xf ' "$log")" = 3 ] || fail "not 3 devices with status 0xf"
  expect_line "virtio_probe: failures=0"
}

check_rng() {
  # shellcheck disable=SC2046
  boot rng "test=rng" $(rng_dev)
  expect_status 1
  expect_line "rng: dev=00:03.0 buffer=1 bytes=4096 requests=1"
  expect_match "rng: dev=00:03\.0 bytes=8192 differ=yes nonzero=yes irqs=[1-9][0-9]* config_irqs=0"
  expect_line "rng: ok"
  expect_no_fail_lines
}

check_blk() {
  new_image "$work/a.img"; new_image "$work/b.img"
  # shellcheck disable=SC2046
  boot blk "test=blk sector=200 seed=0x42" $(disk_dev d0 "$work/a.img" 0x4 abc) \
    $(disk_dev d1 "$work/b.img" 0x5 second-disk-serial-xyz)
  expect_status 1
  expect_line "blk: dev=00:04.0 capacity=2048 blk_size=512 seg_max=254 size_max=0 ro=0 flush=1 features=0x100000254"
  expect_line "blk: dev=00:04.0 serial=abc status=0"
  expect_line "blk: dev=00:05.0 serial=second-disk-serial-x status=0"
  expect_line "blk: dev=00:04.0 pattern seed=0x42"
  expect_line "blk: dev=00:04.0 op=write sector=200 sectors=8 status=0 used_len=1 irqs=1"
  expect_line "blk: dev=00:04.0 op=read sector=200 sectors=8 status=0 used_len=4097 irqs=1"
  expect_line "blk: dev=00:04.0 compare bytes=4096 mismatches=0"
  expect_line "blk: dev=00:04.0 op=flush status=0 used_len=1 irqs=1"
  expect_line "blk: dev=00:04.0 roundtrip=ok"
  expect_line "blk: dev=00:05.0 roundtrip=ok"
  expect_line "blk: roundtrip ok disks=2"
  expect_no_fail_lines
  pattern_on_disk "$work/a.img" 200 66 || fail "sectors 200-207 of disk 1 do not hold the pattern"
  pattern_on_disk "$work/b.img" 200 66 || fail "sectors 200-207 of disk 2 do not hold the pattern"
}

check_ring_features() {
  new_image "$work/a.img"
  # shellcheck disable=SC2046
  boot ring-features "test=rng,blk accept=indirect,event_idx" $(rng_dev) $(disk_dev d0 "$work/a.img" 0x4 abc)
  expect_status 1
  expect_match "virtio: 00:03\.0 init offered=0x[0-9a-f]+ accepted=0x130000000 status=0xf .*"
  expect_match "virtio: 00:04\.0 init offered=0x[0-9a-f]+ accepted=0x130000254 status=0xf .*"
  expect_line "rng: ok"
  expect_line "blk: roundtrip ok disks=1"
  expect_no_fail_lines
}

check_polling() {
  new_image "$work/a.img"
  # shellcheck disable=SC2046
  boot polling "test=rng,blk msix=off" $(rng_dev) $(disk_dev d0 "$work/a.img" 0x4 abc)
  expect_status 1
  expect_match "virtio: 00:03\.0 init .* msix=no"
  expect_line "rng: dev=00:03.0 bytes=8192 differ=yes nonzero=yes irqs=0 config_irqs=0"
  expect_line "blk: dev=00:04.0 irqs=0 config_irqs=0"
  expect_line "blk: roundtrip ok disks=1"
  expect_no_fail_lines
}

# A transitional virtio-rng (legacy I/O BAR too, device 0x1005) driven through its modern
# capabilities, and a disk without MSI-X (vectors=0): completion by polling.
check_no_msix_transitional() {
  new_image "$work/a.img"
  # shellcheck disable=SC2046
  boot no-msix-transitional "test=rng,blk" -device virtio-rng-pci,addr=0x3 \
    $(disk_dev d0 "$work/a.img" 0x4 abc "" vectors=0)
  expect_status 1
  expect_match "virtio: 00:03\.0 type=4 name=rng device=0x1005 rev=0 .* modern=yes"
  expect_match "virtio: 00:04\.0 type=2 name=blk device=0x1042 .* msix=none modern=yes"
  expect_match "virtio: 00:04\.0 init .* msix=no"
  expect_line "rng: ok"
  expect_line "blk: dev=00:04.0 irqs=0 config_irqs=0"
  expect_line "blk: roundtrip ok disks=1"
  expect_no_fail_lines
}

check_blk_read() {
  host_image "$work/h.img"
  local crc
  crc=$(sector_crc32 "$work/h.img" 100)
  # shellcheck disable=SC2046
  boot blk-read "test=blk-read sector=100" $(disk_dev d0 "$work/h.img" 0x4 abc)
  expect_status 1
  expect_line "blk-read: dev=00:04.0 sector=100 status=0 used_len=513 crc32=0x$crc head=${HOST_DATA:0:16}"
  expect_no_fail_lines
}

check_blk_ro() {
  host_image "$work/h.img"
  local before
  before=$(sector_crc32 "$work/h.img" 8)
  # shellcheck disable=SC2046
  boot blk-ro "test=blk-ro" $(disk_dev d0 "$work/h.img" 0x4 ro readonly=on)
  expect_status 1
  expect_match "blk-ro: dev=00:04\.0 capacity=2048 blk_size=512 seg_max=[0-9]+ size_max=0 ro=1 flush=1 features=0x100000274"
  expect_line "blk-ro: dev=00:04.0 op=write sector=8 sectors=1 status=1 used_len=1 irqs=1"
  expect_line "blk-ro: dev=00:04.0 op=read sector=8 sectors=1 status=0 used_len=513 irqs=1"
  expect_line "blk-ro: dev=00:04.0 unchanged=yes"
  expect_line "blk-ro: ok"
  expect_no_fail_lines
  [ "$(sector_crc32 "$work/h.img" 8)" = "$before" ] || fail "the read-only image changed"
}

# Compares the hostile lines of a run with the recorded reference (virtio_hostile.qemu.txt, the
# section "== APPEND"): a difference is printed, not failed (another QEMU version may differ).
reference=resources/guests/virtio_hostile.qemu.txt
compare_reference() { # NAME APPEND
  local want=$work/$1.want got=$work/$1.got
  awk -v h="== $2" '$0 == h { on = 1; next } /^== / { on = 0 } on && /^hostile: /' "$reference" >"$want"
  grep '^hostile: ' "$log" >"$got"
  if cmp -s "$want" "$got"; then
    echo "  same lines as the recorded QEMU reference ($reference)"
  else
    echo "  NOTE: not the lines recorded in $reference (< recorded, > this run):"
    diff "$want" "$got" | sed 's/^/    /'
  fi
}

hostile_common() { # NAME APPEND
  new_image "$work/a.img"
  # shellcheck disable=SC2046
  boot "$1" "$2" $(disk_dev d0 "$work/a.img" 0x4 abc)
  expect_status 1
  expect_match "hostile: case=split_header completed=yes used_id=0 used_len=513 req_status=0x0 device_status=0xf needs_reset=no config_irqs=0 data=ok recovered=yes"
  if grep -q '^hostile: case=.* recovered=no' "$log"; then fail "the device did not recover from a case"; fi
  expect_line "hostile: survived"
  expect_no_fail_lines
  echo "  what QEMU did (its messages start with qemu-system-x86_64:):"
  grep -E '^(hostile: |qemu-system-x86_64: [^w])' "$log" | sed 's/^/    /'
  compare_reference "$1" "$2"
}

check_hostile() { hostile_common hostile "test=hostile"; }
check_hostile_ring_features() { hostile_common hostile-ring-features "test=hostile accept=indirect,event_idx"; }

# Accelerator: KVM if it is usable and boots the guest, else TCG.
if [ -z "$accel" ]; then
  accel=tcg
  if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
    accel=kvm
    boot accel-probe "test=list"
    if [ "$status" != 1 ] || ! grep -qxF "virtio: devices=0" "$log"; then
      echo "qemu-virtio-check: KVM boot failed (status $status), using TCG"
      accel=tcg
    fi
  fi
fi
echo "qemu-virtio-check: $("$QEMU" --version | head -1), accel=$accel, guest $guest"

for c in "${checks[@]}"; do
  [ -n "$only" ] && [ "$only" != "$c" ] && continue
  check_ok=1
  echo "check $c"
  start=$SECONDS
  "check_${c//-/_}"
  if [ "$check_ok" = 1 ]; then
    echo "  ok ($((SECONDS - start)) s)"
    passed=$((passed + 1))
  else
    echo "  guest output ($log):"
    sed 's/^/    | /' "$log"
    failed=$((failed + 1))
  fi
done
echo "qemu-virtio-check: passed=$passed failed=$failed accel=$accel"
[ "$failed" = 0 ] && [ "$passed" -gt 0 ]
