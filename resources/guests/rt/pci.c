/* pci.c - PCI configuration access for the test guests: the type-1 mechanism (ports 0xCF8/0xCFC)
 * and ECAM (memory mapped, 4 KiB per function), capability walks and BAR sizing.
 *
 * Functions are named by a 16-bit BDF (PCI_BDF(bus, dev, fn)). Every access is 1, 2 or 4 bytes;
 * the type-1 mechanism only reaches offsets 0..0xFF (the register field of CONFIG_ADDRESS is
 * 8 bits wide), so pci_read/pci_write with PCI_CF8 and an offset above 0xFF return all ones and
 * drop the write rather than silently wrapping. Use pci_cf8_address() to build any address by
 * hand. Both mechanisms work in 32-bit and 64-bit code (ECAM lies below 4 GiB). */
#include "rt.h"

#define CONFIG_ADDRESS LAYOUT_PORTS_PCI_CONFIG
#define CONFIG_DATA (LAYOUT_PORTS_PCI_CONFIG + 4)
#define CONFIG_ENABLE 0x80000000u

#define PCI_COMMAND 0x04
#define PCI_STATUS 0x06
#define PCI_STATUS_CAP_LIST 0x10
#define PCI_CAP_PTR 0x34
#define PCI_EXT_CAP_START 0x100
#define PCI_CONFIG_SIZE 0x1000
#define PCI_BAR0 0x10
#define PCI_ROM_BAR_OFFSET 0x30

#define BAR_IO 0x1
#define BAR_MEM_TYPE_MASK 0x6
#define BAR_MEM_TYPE_64 0x4
#define BAR_MEM_PREFETCH 0x8
#define BAR_MEM_ADDR_MASK 0xfffffff0u
#define BAR_IO_ADDR_MASK 0xfffffffcu
#define ROM_ADDR_MASK 0xfffff800u
#define ROM_ENABLE 0x1

/* A capability list has at most (256 - 64) / 4 entries, the extended one (4096 - 256) / 4. */
#define MAX_CAPS 48
#define MAX_EXT_CAPS 960

static uint64_t ecam_base = LAYOUT_PCI_ECAM_START;

void pci_set_ecam_base(uint64_t base)
{
    if (base != 0)
        ecam_base = base;
}

uint64_t pci_ecam_address(uint16_t bdf, uint16_t offset)
{
    return ecam_base + ((uint64_t)bdf << 12) + (offset & (PCI_CONFIG_SIZE - 1));
}

uint32_t pci_cf8_address(uint16_t bdf, uint16_t offset)
{
    return CONFIG_ENABLE | ((uint32_t)bdf << 8) | (offset & 0xfc);
}

uint32_t pci_cf8_read(uint16_t bdf, uint16_t offset, unsigned size)
{
    if (offset > 0xff)
        return 0xffffffffu;
    outl(CONFIG_ADDRESS, pci_cf8_address(bdf, offset));
    uint16_t port = (uint16_t)(CONFIG_DATA + (offset & 3));
    switch (size) {
    case 1:
        return inb(port);
    case 2:
        return inw(port);
    default:
        return inl(port);
    }
}

void pci_cf8_write(uint16_t bdf, uint16_t offset, unsigned size, uint32_t v)
{
    if (offset > 0xff)
        return;
    outl(CONFIG_ADDRESS, pci_cf8_address(bdf, offset));
    uint16_t port = (uint16_t)(CONFIG_DATA + (offset & 3));
    switch (size) {
    case 1:
        outb(port, (uint8_t)v);
        break;
    case 2:
        outw(port, (uint16_t)v);
        break;
    default:
        outl(port, v);
    }
}

uint32_t pci_ecam_read(uint16_t bdf, uint16_t offset, unsigned size)
{
    uint64_t a = pci_ecam_address(bdf, offset);
    switch (size) {
    case 1:
        return mmio_read8(a);
    case 2:
        return mmio_read16(a);
    default:
        return mmio_read32(a);
    }
}

void pci_ecam_write(uint16_t bdf, uint16_t offset, unsigned size, uint32_t v)
{
    uint64_t a = pci_ecam_address(bdf, offset);
    switch (size) {
    case 1:
        mmio_write8(a, (uint8_t)v);
        break;
    case 2:
        mmio_write16(a, (uint16_t)v);
        break;
    default:
        mmio_write32(a, v);
    }
}

uint32_t pci_read(enum pci_mech mech, uint16_t bdf, uint16_t offset, unsigned size)
{
    return mech == PCI_CF8 ? pci_cf8_read(bdf, offset, size) : pci_ecam_read(bdf, offset, size);
}

void pci_write(enum pci_mech mech, uint16_t bdf, uint16_t offset, unsigned size, uint32_t v)
{
    if (mech == PCI_CF8)
        pci_cf8_write(bdf, offset, size, v);
    else
        pci_ecam_write(bdf, offset, size, v);
}

uint32_t pci_read32(uint16_t bdf, uint16_t offset) { return pci_ecam_read(bdf, offset, 4); }
uint16_t pci_read16(uint16_t bdf, uint16_t offset) { return (uint16_t)pci_ecam_read(bdf, offset, 2); }
uint8_t pci_read8(uint16_t bdf, uint16_t offset) { return (uint8_t)pci_ecam_read(bdf, offset, 1); }
void pci_write32(uint16_t bdf, uint16_t offset, uint32_t v) { pci_ecam_write(bdf, offset, 4, v); }
void pci_write16(uint16_t bdf, uint16_t offset, uint16_t v) { pci_ecam_write(bdf, offset, 2, v); }
void pci_write8(uint16_t bdf, uint16_t offset, uint8_t v) { pci_ecam_write(bdf, offset, 1, v); }

bool pci_find_device(uint16_t vendor, uint16_t device, uint16_t *bdf)
{
    for (uint16_t f = 0; f < 256; f++) {
        uint32_t id = pci_read32(f, 0);
        if ((id & 0xffff) == vendor && (id >> 16) == device) {
            *bdf = f;
            return true;
        }
    }
    return false;
}

uint16_t pci_find_cap(enum pci_mech mech, uint16_t bdf, uint8_t id)
{
    if (!(pci_read(mech, bdf, PCI_STATUS, 2) & PCI_STATUS_CAP_LIST))
        return 0;
    uint8_t at = (uint8_t)pci_read(mech, bdf, PCI_CAP_PTR, 1) & 0xfc;
    for (int n = 0; at >= 0x40 && n < MAX_CAPS; n++) {
        uint32_t hdr = pci_read(mech, bdf, at, 2);
        if ((hdr & 0xff) == id)
            return at;
        at = (uint8_t)(hdr >> 8) & 0xfc;
    }
    return 0;
}

uint16_t pci_find_ext_cap(uint16_t bdf, uint16_t id)
{
    uint16_t at = PCI_EXT_CAP_START;
    for (int n = 0; n < MAX_EXT_CAPS; n++) {
        uint32_t hdr = pci_read32(bdf, at);
        if (hdr == 0 || hdr == 0xffffffffu)
            return 0;
        if ((hdr & 0xffff) == id)
            return at;
        at = (uint16_t)((hdr >> 20) & 0xffc);
        if (at < PCI_EXT_CAP_START)
            return 0;
    }
    return 0;
}

const char *pci_bar_kind_name(enum pci_bar_kind kind)
{
    switch (kind) {
    case PCI_BAR_IO:
        return "io";
    case PCI_BAR_MEM32:
        return "mem32";
    case PCI_BAR_MEM64:
        return "mem64";
    case PCI_BAR_ROM:
        return "rom";
    default:
        return "none";
    }
}

static uint16_t bar_offset(unsigned index)
{
    return index == PCI_ROM_BAR ? PCI_ROM_BAR_OFFSET : (uint16_t)(PCI_BAR0 + 4 * index);
}

/* Writes all ones to a BAR register, returns what reads back, and restores the original. */
static uint32_t probe_mask(uint16_t bdf, uint16_t off, uint32_t ones, uint32_t orig)
{
    pci_write32(bdf, off, ones);
    uint32_t mask = pci_read32(bdf, off);
    pci_write32(bdf, off, orig);
    return mask;
}

unsigned pci_bar_size(uint16_t bdf, unsigned index, struct pci_bar *bar)
{
    memset(bar, 0, sizeof(*bar));
    bar->index = (uint8_t)index;
    if (index > PCI_ROM_BAR)
        return 0;

    /* Decoding off while the BAR holds the all-ones pattern, so it never decodes there. */
    uint16_t cmd = pci_read16(bdf, PCI_COMMAND);
    pci_write16(bdf, PCI_COMMAND, cmd & (uint16_t)~(PCI_CMD_IO | PCI_CMD_MEMORY));

    uint16_t off = bar_offset(index);
    uint32_t orig = pci_read32(bdf, off);
    unsigned regs = 1;
    if (index == PCI_ROM_BAR) {
        uint32_t mask = probe_mask(bdf, off, ROM_ADDR_MASK, orig) & ROM_ADDR_MASK;
        if (mask) {
            bar->kind = PCI_BAR_ROM;
            bar->size = (uint64_t)(~mask) + 1;
            bar->addr = orig & ROM_ADDR_MASK;
            bar->enabled = orig & ROM_ENABLE;
        }
    } else if (orig & BAR_IO) {
        uint32_t mask = probe_mask(bdf, off, 0xffffffffu, orig) & BAR_IO_ADDR_MASK;
        /* Some devices decode only 16 I/O address bits; the upper half then reads zero. */
        if (mask && !(mask & 0xffff0000u))
            mask |= 0xffff0000u;
        if (mask) {
            bar->kind = PCI_BAR_IO;
            bar->size = (uint64_t)(~mask) + 1;
            bar->addr = orig & BAR_IO_ADDR_MASK;
        }
    } else if ((orig & BAR_MEM_TYPE_MASK) == BAR_MEM_TYPE_64 && index < 5) {
        uint32_t orig_hi = pci_read32(bdf, off + 4);
        uint32_t lo = probe_mask(bdf, off, 0xffffffffu, orig) & BAR_MEM_ADDR_MASK;
        uint32_t hi = probe_mask(bdf, off + 4, 0xffffffffu, orig_hi);
        uint64_t mask = ((uint64_t)hi << 32) | lo;
        regs = 2;
        if (mask) {
            bar->kind = PCI_BAR_MEM64;
            bar->size = ~mask + 1;
            bar->addr = ((uint64_t)orig_hi << 32) | (orig & BAR_MEM_ADDR_MASK);
            bar->prefetchable = (orig & BAR_MEM_PREFETCH) != 0;
        }
    } else {
        uint32_t mask = probe_mask(bdf, off, 0xffffffffu, orig) & BAR_MEM_ADDR_MASK;
        if (mask) {
            bar->kind = PCI_BAR_MEM32;
            bar->size = (uint64_t)(~mask) + 1;
            bar->addr = orig & BAR_MEM_ADDR_MASK;
            bar->prefetchable = (orig & BAR_MEM_PREFETCH) != 0;
        }
    }
    pci_write16(bdf, PCI_COMMAND, cmd);
    return regs;
}
