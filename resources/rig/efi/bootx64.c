/*
 * BOOTX64.EFI for the rig's UEFI checks (resources/rig/efi/mkdisk.sh puts it at EFI/BOOT/ on the
 * EFI system partition of a GPT disk; docs/firmware.md). Built with Debian's gnu-efi.
 *
 * 1. Prints one line on the firmware's console (OVMF's ConOut is COM1): "VFIOVM-EFI: BOOTX64.EFI
 *    started ...", the marker the checks and the benchmark look for, with the firmware's vendor
 *    and revision.
 * 2. If the partition it was loaded from holds \vmlinuz, it starts that kernel (its EFI stub) with
 *    the command line in \cmdline.txt (one line of ASCII) as its load options, so the stub finds
 *    initrd= on the same partition.
 * 3. Without \vmlinuz it powers the machine off (ResetSystem(EfiResetShutdown)): the benchmark's
 *    disk, where the process's end follows the marker line.
 * Any failure prints a "VFIOVM-EFI: FAIL ..." line and powers off, so a run never hangs here.
 */
#include <efi.h>
#include <efilib.h>

#define CMDLINE_MAX 1024

static void power_off(void)
{
	uefi_call_wrapper(RT->ResetSystem, 4, EfiResetShutdown, EFI_SUCCESS, 0, NULL);
}

static void fail(const CHAR16 *what, EFI_STATUS st)
{
	Print(L"VFIOVM-EFI: FAIL %s: %r\r\n", what, st);
	power_off();
}

/* Reads \cmdline.txt from root into out (CHAR16, NUL-terminated, line ends dropped); returns its
 * length in characters, 0 when the file is missing or empty. */
static UINTN read_cmdline(EFI_FILE_HANDLE root, CHAR16 *out)
{
	EFI_FILE_HANDLE f;
	CHAR8 buf[CMDLINE_MAX];
	UINTN n = sizeof(buf) - 1, i, len = 0;

	if (EFI_ERROR(uefi_call_wrapper(root->Open, 5, root, &f, L"\\cmdline.txt", EFI_FILE_MODE_READ, 0)))
		return 0;
	if (EFI_ERROR(uefi_call_wrapper(f->Read, 3, f, &n, buf)))
		n = 0;
	uefi_call_wrapper(f->Close, 1, f);
	for (i = 0; i < n; i++) {
		if (buf[i] == '\r' || buf[i] == '\n')
			break;
		out[len++] = buf[i];
	}
	out[len] = 0;
	return len;
}

EFI_STATUS efi_main(EFI_HANDLE image, EFI_SYSTEM_TABLE *systab)
{
	EFI_LOADED_IMAGE *self, *child_info;
	EFI_FILE_HANDLE root;
	EFI_DEVICE_PATH *path;
	EFI_HANDLE child;
	EFI_STATUS st;
	static CHAR16 cmdline[CMDLINE_MAX];
	UINTN len;

	InitializeLib(image, systab);
	Print(L"VFIOVM-EFI: BOOTX64.EFI started (firmware %s rev 0x%x, UEFI %d.%d)\r\n",
	      systab->FirmwareVendor, systab->FirmwareRevision, systab->Hdr.Revision >> 16,
	      (systab->Hdr.Revision & 0xffff) / 10);

	st = uefi_call_wrapper(BS->HandleProtocol, 3, image, &LoadedImageProtocol, (void **)&self);
	if (EFI_ERROR(st)) {
		fail(L"no loaded-image protocol", st);
		return st;
	}
	root = LibOpenRoot(self->DeviceHandle);
	if (!root) {
		fail(L"cannot open the partition it was loaded from", EFI_NOT_FOUND);
		return EFI_NOT_FOUND;
	}
	len = read_cmdline(root, cmdline);
	path = FileDevicePath(self->DeviceHandle, L"\\vmlinuz");
	st = uefi_call_wrapper(BS->LoadImage, 6, FALSE, image, path, NULL, 0, &child);
	if (st == EFI_NOT_FOUND) {
		Print(L"VFIOVM-EFI: no \\vmlinuz on this partition: powering off\r\n");
		power_off();
		return EFI_SUCCESS;
	}
	if (EFI_ERROR(st)) {
		fail(L"loading \\vmlinuz", st);
		return st;
	}
	st = uefi_call_wrapper(BS->HandleProtocol, 3, child, &LoadedImageProtocol, (void **)&child_info);
	if (EFI_ERROR(st)) {
		fail(L"no loaded-image protocol on \\vmlinuz", st);
		return st;
	}
	child_info->LoadOptions = cmdline;
	child_info->LoadOptionsSize = (UINT32)((len + 1) * sizeof(CHAR16));
	Print(L"VFIOVM-EFI: starting \\vmlinuz %s\r\n", cmdline);
	st = uefi_call_wrapper(BS->StartImage, 3, child, NULL, NULL);
	fail(L"\\vmlinuz returned", st);
	return st;
}
