/* rig-probe: the rig selftest's check that the VFIO and KVM nodes L1's /init set up really work.
 *
 *   rig-probe vfio <group> <bdf> <vvvv:dddd>
 *       Opens /dev/vfio/vfio and /dev/vfio/<group> and reads the group status.
 *       Viable: attaches a type1 container, maps and unmaps one DMA page, opens the device, reads its
 *       region/irq counts and its vendor:device through the config region, and compares it.
 *       Prints "PROBE vfio group=<g> viable=<0|1> ..." and "PROBE device <bdf> ...".
 *       Exit 0: viable and all steps worked; 3: the group is not viable; 1: any other failure.
 *   rig-probe kvm
 *       Opens /dev/kvm, checks KVM_GET_API_VERSION == 12 and creates a VM.
 *       Prints "PROBE kvm api=<n> vm=ok". Exit 0 or 1.
 * Built static by selftest.sh; it runs in the busybox initramfs. */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>
#include <linux/kvm.h>
#include <linux/vfio.h>

static int fail(const char *what)
{
	printf("PROBE fail %s: %s\n", what, strerror(errno));
	return 1;
}

static int probe_vfio(const char *group_no, const char *bdf, const char *want_id)
{
	char path[64];
	int container = open("/dev/vfio/vfio", O_RDWR | O_CLOEXEC);
	if (container < 0)
		return fail("open /dev/vfio/vfio");
	int api = ioctl(container, VFIO_GET_API_VERSION);
	if (api != VFIO_API_VERSION)
		return fail("VFIO_GET_API_VERSION");
	int type = ioctl(container, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU) == 1 ? VFIO_TYPE1v2_IOMMU
										     : VFIO_TYPE1_IOMMU;

	snprintf(path, sizeof path, "/dev/vfio/%s", group_no);
	int group = open(path, O_RDWR | O_CLOEXEC);
	if (group < 0)
		return fail(path);
	struct vfio_group_status status = { .argsz = sizeof status };
	if (ioctl(group, VFIO_GROUP_GET_STATUS, &status) < 0)
		return fail("VFIO_GROUP_GET_STATUS");
	int viable = (status.flags & VFIO_GROUP_FLAGS_VIABLE) != 0;
	printf("PROBE vfio group=%s viable=%d flags=0x%x api=%d\n", group_no, viable, status.flags, api);
	if (!viable) {
		/* the kernel must refuse a container for a non-viable group */
		if (ioctl(group, VFIO_GROUP_SET_CONTAINER, &container) == 0) {
			printf("PROBE fail VFIO_GROUP_SET_CONTAINER accepted a non-viable group\n");
			return 1;
		}
		printf("PROBE vfio group=%s set-container refused: %s\n", group_no, strerror(errno));
		return 3;
	}
	if (ioctl(group, VFIO_GROUP_SET_CONTAINER, &container) < 0)
		return fail("VFIO_GROUP_SET_CONTAINER");
	if (ioctl(container, VFIO_SET_IOMMU, type) < 0)
		return fail("VFIO_SET_IOMMU");

	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	void *buf = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED)
		return fail("mmap DMA page");
	struct vfio_iommu_type1_dma_map map = {
		.argsz = sizeof map,
		.flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
		.vaddr = (uint64_t)(uintptr_t)buf,
		.iova = 0x100000,
		.size = page,
	};
	if (ioctl(container, VFIO_IOMMU_MAP_DMA, &map) < 0)
		return fail("VFIO_IOMMU_MAP_DMA");
	struct vfio_iommu_type1_dma_unmap unmap = { .argsz = sizeof unmap, .iova = 0x100000, .size = page };
	if (ioctl(container, VFIO_IOMMU_UNMAP_DMA, &unmap) < 0 || unmap.size != page)
		return fail("VFIO_IOMMU_UNMAP_DMA");

	int dev = ioctl(group, VFIO_GROUP_GET_DEVICE_FD, bdf);
	if (dev < 0)
		return fail("VFIO_GROUP_GET_DEVICE_FD");
	struct vfio_device_info info = { .argsz = sizeof info };
	if (ioctl(dev, VFIO_DEVICE_GET_INFO, &info) < 0 || !(info.flags & VFIO_DEVICE_FLAGS_PCI))
		return fail("VFIO_DEVICE_GET_INFO");
	struct vfio_region_info cfg = { .argsz = sizeof cfg, .index = VFIO_PCI_CONFIG_REGION_INDEX };
	if (ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, &cfg) < 0)
		return fail("VFIO_DEVICE_GET_REGION_INFO(config)");
	uint16_t ids[2] = { 0, 0 };
	if (pread(dev, ids, sizeof ids, (off_t)cfg.offset) != (ssize_t)sizeof ids)
		return fail("pread config vendor/device");
	char got[16];
	snprintf(got, sizeof got, "%04x:%04x", ids[0], ids[1]);
	int match = strcmp(got, want_id) == 0;
	printf("PROBE device %s id=%s regions=%u irqs=%u flags=0x%x type1%s dma-map=ok %s\n", bdf, got,
	       info.num_regions, info.num_irqs, info.flags, type == VFIO_TYPE1v2_IOMMU ? "v2" : "",
	       match ? "id-match" : "ID-MISMATCH");
	close(dev);
	close(group);
	close(container);
	return match ? 0 : 1;
}

static int probe_kvm(void)
{
	int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm < 0)
		return fail("open /dev/kvm");
	int api = ioctl(kvm, KVM_GET_API_VERSION, 0);
	if (api != KVM_API_VERSION)
		return fail("KVM_GET_API_VERSION");
	int vm = ioctl(kvm, KVM_CREATE_VM, 0);
	if (vm < 0)
		return fail("KVM_CREATE_VM");
	int irqfd = ioctl(vm, KVM_CHECK_EXTENSION, KVM_CAP_IRQFD);
	printf("PROBE kvm api=%d vm=ok irqfd=%d\n", api, irqfd);
	close(vm);
	close(kvm);
	return 0;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc == 5 && strcmp(argv[1], "vfio") == 0)
		return probe_vfio(argv[2], argv[3], argv[4]);
	if (argc == 2 && strcmp(argv[1], "kvm") == 0)
		return probe_kvm();
	fprintf(stderr, "usage: rig-probe vfio <group> <bdf> <vvvv:dddd> | rig-probe kvm\n");
	return 2;
}
