/* elf64_probe - a Linux 64-bit boot protocol guest (ELF64, no PVH note) that reports what the VMM
 * gave it (zero page, e820 map, command line, initrd, ACPI tables), then performs `action=` from
 * the command line. Output lines are listed in README.md. */
#include "rt.h"

static struct acpi_info acpi;

void guest_main(const struct rt_boot *boot)
{
    rt_printf("guest: elf64_probe\n");
    rt_printf("boot: linux64 zero_page=0x%llx\n", boot->info_addr);
    rt_printf("boot: hdr_magic=0x%x hdr_version=0x%x rsdp=0x%llx\n", boot->magic, boot->version,
              boot->rsdp);
    cpu_print_state();
    boot_print_memmap(boot, "e820");
    boot_print_cmdline(boot);
    if (boot->nr_modules) {
        rt_printf("initrd: ");
        boot_print_module(&boot->modules[0]);
        rt_printf("\n");
    } else {
        rt_printf("initrd: none\n");
    }
    acpi_scan(&acpi, boot->rsdp, true);
    rt_printf("cpus: %u\n", acpi.cpus);
    rt_action_from_cmdline(boot, &acpi);
}
