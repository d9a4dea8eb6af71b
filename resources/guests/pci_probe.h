/* pci_probe.h - what the parts of the pci_probe guest share (pci_probe.c: enumeration, BARs,
 * DMA, extended config space, main; pci_probe_irq.c: MSI-X, MSI, INTx). */
#ifndef PCI_PROBE_H
#define PCI_PROBE_H

#include "rt.h"

#define TESTDEV_VENDOR 0x1234
#define TESTDEV_DEVICE 0x5654
#define TESTDEV_IDENT 0x44544656 /* "VFTD" */

/* Test device registers (BAR 0; the I/O BAR mirrors the first 0x40 bytes). */
#define REG_IDENT 0x00
#define REG_SCRATCH 0x08
#define REG_INTX_STATUS 0x0c
#define REG_DMA_ADDR_LO 0x10
#define REG_DMA_ADDR_HI 0x14
#define REG_DMA_VALUE 0x18
#define REG_DMA_GO 0x1c
#define REG_DMA_STATUS 0x20
#define REG_DMA_COUNT 0x24
#define REG_FIRE 0x28
#define REG_FIRE_STATUS 0x2c
#define REG_BAR_MOVES 0x30

#define PCI_COMMAND 0x04
#define PCI_STATUS 0x06
#define PCI_BAR0 0x10
#define CAP_ID_MSI 0x05
#define CAP_ID_PCIE 0x10
#define CAP_ID_MSIX 0x11
#define EXT_CAP_ID_VSEC 0x000b

/* ACPI facts (LAPIC/IOAPIC addresses) and the test device's BDF, set up by guest_main. */
extern struct acpi_info probe_acpi;
extern uint16_t probe_dev;

/* Counts a failed check and prints "fail: <what>". */
void probe_check(bool ok, const char *what);
/* Address programmed in BAR `index` of the test device (64-bit BARs whole). */
uint64_t probe_bar_addr(unsigned index);
/* Sets and clears command register bits of the test device. */
void probe_set_command(uint16_t set, uint16_t clear);
/* BAR 0 (the registers), checked reachable; register access through it. */
uint64_t probe_regs_base(void);
uint32_t probe_reg_read(uint32_t reg);
void probe_reg_write(uint32_t reg, uint32_t v);

/* pci_probe_irq.c */
void test_msix(void);
void test_msi(void);
void test_intx(void);

#endif
