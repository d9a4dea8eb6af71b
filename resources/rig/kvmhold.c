/*
 * kvmhold: keeps one idle KVM VM (in-kernel irqchip, one vCPU that never runs) open in L1 until
 * it is killed (docs/rig.md, "Known limits").
 *
 * Why: L1's KVM flips kernel static keys when the first VM is created or the last one destroyed
 * (the preempt notifiers, patched into __schedule) and when a vCPU's local APIC is created or
 * software-enabled (apic_sw_disabled). Each flip rewrites live kernel code with text_poke_bp
 * (an int3 first, then the new bytes). Under QEMU's multi-threaded TCG that cross-modification
 * has left L1's CPUs looping on a stale int3 at such a site (both CPUs at __schedule+0x2ab, in
 * asm_exc_int3) and spinning at one in __apic_accept_irq. With this VM held for the whole payload
 * both keys stay enabled, so the vfiovm runs in between never patch L1's code.
 */
#include <fcntl.h>
#include <linux/kvm.h>
#include <signal.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <unistd.h>

int main(void)
{
	int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm < 0) {
		perror("kvmhold: /dev/kvm");
		return 1;
	}
	int vm = ioctl(kvm, KVM_CREATE_VM, 0);
	if (vm < 0) {
		perror("kvmhold: KVM_CREATE_VM");
		return 1;
	}
	if (ioctl(vm, KVM_CREATE_IRQCHIP, 0) < 0) {
		perror("kvmhold: KVM_CREATE_IRQCHIP");
		return 1;
	}
	if (ioctl(vm, KVM_CREATE_VCPU, 0) < 0) {
		perror("kvmhold: KVM_CREATE_VCPU");
		return 1;
	}
	printf("kvmhold: holding one idle VM\n");
	fflush(stdout);
	for (;;)
		pause();
}
