# Sourced by ../run. vfiovm as a kernel CI runner (docs/ci-runner.md): `--exec` with a stock Debian
# kernel (the standard flavour, whose 9p and virtio-console are modules; linux-std/ in the payload)
# and vfiovm's own init. L1's root is shared read-only (the command runs L1's busybox sh from it), a
# directory read-only and one read-write; the command reads a file from the first, writes a result
# into the second, fails to write into the read-only one, prints to stdout and stderr and exits 7.
# vfiovm must exit 7 with the command's stdout and stderr on its own, the result in L1's directory,
# and the verdict saying so. Then the same kernel without 9p (a --modules directory without it) and
# the cloud kernel (no virtio-console among L1's modules): status 118 and the config options named.
rel=$(ls linux-std/modules 2>/dev/null | head -1)
if [ ! -f linux-std/vmlinuz ] || [ -z "$rel" ]; then
	bad "exec: no linux-std kernel and modules in the payload (resources/rig/linux-payload.sh)"
else
	# where --exec looks for the kernel's modules by default
	mkdir -p /lib/modules && ln -sfn "$PWD/linux-std/modules/$rel" "/lib/modules/$rel"
	mark="EXEC-MARK-$(cut -c1-8 /proc/sys/kernel/random/uuid)"
	rm -rf /tmp/exec-ro /tmp/exec-rw
	mkdir -p /tmp/exec-ro /tmp/exec-rw
	echo "$mark" >/tmp/exec-ro/input
	t0=$(cut -d' ' -f1 /proc/uptime)
	(cd /tmp/exec-rw && timeout -s TERM "${VFIOVM_TMO:-180}" /test/vfiovm -v --kernel /test/linux-std/vmlinuz \
		--memory 256M --share /:ro --share /tmp/exec-ro --share /tmp/exec-rw:rw --verdict /tmp/exec.json \
		--exec 'echo "read: $(cat /tmp/exec-ro/input)"; echo "rw: $(cat /tmp/exec-ro/input)" >result;
			if echo x >/tmp/exec-ro/nope 2>/dev/null; then echo "ro share written"; fi;
			echo "cwd: $(pwd)"; echo "to stderr" >&2; exit 7' >/test/out.exec 2>/test/err.exec </dev/null)
	rc=$?
	t1=$(cut -d' ' -f1 /proc/uptime)
	sed 's/^/  [exec] /' out.exec
	sed 's/^/  [exec] stderr: /' err.exec
	sed 's/^/  [exec] verdict: /' /tmp/exec.json 2>/dev/null
	if [ $rc != 7 ]; then
		bad "exec: exit status $rc, want the command's 7"
	else
		ok "exec-status (the command's 7 is vfiovm's, $(awk "BEGIN{printf \"%.2f\", $t1-$t0}") s)"
	fi
	grep -qx "read: $mark" out.exec && ok "exec-ro-share (the command read the host's file)" ||
		bad "exec: stdout lacks 'read: $mark' (the file in the read-only share)"
	grep -qx "cwd: /tmp/exec-rw" out.exec || bad "exec: the command did not run in vfiovm's working directory"
	grep -q "ro share written" out.exec && bad "exec: the command wrote into a read-only share"
	[ -e /tmp/exec-ro/nope ] && bad "exec: a file appeared in the read-only share on the host"
	if [ "$(cat /tmp/exec-rw/result 2>/dev/null)" = "rw: $mark" ]; then
		ok "exec-rw-share (the command's result is in the host's directory)"
	else
		bad "exec: /tmp/exec-rw/result is '$(cat /tmp/exec-rw/result 2>/dev/null)', want 'rw: $mark'"
	fi
	# linux-std/vmlinux is the same build, extracted beside the bzImage: --vmlinux auto boots it
	grep -q "info: --exec: booting /test/linux-std/vmlinux, the same build as" err.exec &&
		ok "exec-vmlinux (the bzImage's own vmlinux booted, no decompression in the guest)" ||
		bad "exec: -v does not say the vmlinux beside the bzImage was booted"
	grep -qx "to stderr" err.exec || bad "exec: the command's stderr is not on vfiovm's stderr"
	grep -q "to stderr" out.exec && bad "exec: the command's stderr went to stdout"
	grep -q "Linux version\|Run /init" out.exec && bad "exec: the kernel's console is on stdout"
	grep -q '"cause": *"command-exited"' /tmp/exec.json && grep -q '"status": *7' /tmp/exec.json &&
		grep -q '"boot_ms": *[0-9]' /tmp/exec.json && ok "exec-verdict" ||
		bad "exec: the verdict does not say command-exited, status 7 with a boot time"

	# A kernel without what the init needs: status 118 and the options named on stderr.
	init_fails() { # <check-name> <kernel option the init must name> vfiovm args...
		_n=$1 _opt=$2
		shift 2
		timeout -s TERM "${VFIOVM_TMO:-180}" ./vfiovm --memory 256M --exec true "$@" >"out.$_n" 2>"err.$_n" </dev/null
		_rc=$?
		sed "s/^/  [$_n] stderr: /" "err.$_n"
		if [ $_rc = 118 ] && grep -q "$_opt" "err.$_n"; then
			ok "$_n (status 118, the kernel options named)"
		else
			bad "$_n: status $_rc (want 118) or no $_opt on stderr"
		fi
	}
	# the same kernel without its 9p module
	rm -rf /tmp/no9p && cp -a "linux-std/modules/$rel" /tmp/no9p && grep -v '^kernel/fs/9p/' "linux-std/modules/$rel/modules.dep" >/tmp/no9p/modules.dep
	init_fails exec-no9p CONFIG_9P_FS --kernel linux-std/vmlinuz --modules /tmp/no9p
	# the cloud kernel: no virtio-console module among L1's
	init_fails exec-cloud-kernel CONFIG_VIRTIO_CONSOLE --kernel linux/vmlinuz
fi
