/* pvh_probe - a PVH guest that reports what the VMM gave it (start info, memory map, command line,
 * modules, ACPI tables, CPUs), wakes the APs, then performs `action=` from the command line.
 * Output lines are listed in README.md. */
#include "rt.h"

static struct acpi_info acpi;

void guest_main(const struct rt_boot *boot)
{
    rt_printf("guest: pvh_probe\n");
    rt_printf("pvh: start_info=0x%llx\n", boot->info_addr);
    rt_printf("pvh: magic=0x%x version=%u\n", boot->magic, boot->version);
    cpu_print_state();
    boot_print_memmap(boot, "memmap");
    boot_print_cmdline(boot);
    rt_printf("modules: %u\n", boot->modules_total);
    for (uint32_t i = 0; i < boot->nr_modules; i++) {
        rt_printf("module[%u]: ", i);
        boot_print_module(&boot->modules[i]);
        rt_printf("\n");
    }
    acpi_scan(&acpi, boot->rsdp, true);
    rt_printf("cpus: %u\n", acpi.cpus);
    smp_boot_aps(&acpi, boot);
    rt_action_from_cmdline(boot, &acpi);
}
