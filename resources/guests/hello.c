/* hello - the README demo: a PVH guest that greets, says how much RAM (from the PVH memory map) and
 * how many CPUs (from the ACPI MADT) it has and what its command line is, then powers off through
 * ACPI (vfiovm exits with status 0). */
#include "rt.h"

static struct acpi_info acpi;

void guest_main(const struct rt_boot *boot)
{
    acpi_scan(&acpi, boot->rsdp, false);

    rt_printf("\n");
    rt_printf("hello: Hello from a tiny vfiovm guest!\n");
    rt_printf("hello: memory: %llu MiB of RAM in the memory map\n", boot_ram_bytes(boot) >> 20);
    if (acpi.have_madt)
        rt_printf("hello: cpus: %u (from the ACPI MADT)\n", acpi.cpus);
    else
        rt_printf("hello: cpus: unknown (no ACPI MADT found)\n");
    rt_printf("hello: ");
    boot_print_cmdline(boot);
    rt_printf("hello: powering off through ACPI\n");
    rt_action("poweroff", &acpi);
}
