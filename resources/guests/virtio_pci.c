/* virtio_pci.c - the virtio 1.x PCI transport of the virtio_probe guest (see virtio_pci.h):
 * discovery, BAR placement, capabilities, initialisation, split virtqueues and MSI-X, from the
 * virtio 1.2 specification. Section numbers in comments are that specification's. */
#include "virtio_pci.h"

#define PCI_COMMAND 0x04
#define PCI_STATUS 0x06
#define PCI_REVISION 0x08
#define PCI_BAR0 0x10
#define PCI_SUBSYSTEM_ID 0x2e
#define PCI_CAP_PTR 0x34
#define PCI_STATUS_CAP_LIST 0x10
#define PCI_CMD_INTX_DISABLE 0x400
#define CAP_ID_VENDOR 0x09
#define CAP_ID_MSIX 0x11
#define MAX_CAPS 48

/* virtio_pci_cap (4.1.4): cfg_type at +3, bar at +4, offset at +8, length at +12; the notify
 * capability adds notify_off_multiplier at +16. */
#define VIRTIO_PCI_CAP_COMMON_CFG 1
#define VIRTIO_PCI_CAP_NOTIFY_CFG 2
#define VIRTIO_PCI_CAP_ISR_CFG 3
#define VIRTIO_PCI_CAP_DEVICE_CFG 4
#define VIRTIO_PCI_CAP_PCI_CFG 5

/* virtio_pci_common_cfg (4.1.4.3). */
#define COMMON_DFSELECT 0x00
#define COMMON_DF 0x04
#define COMMON_GFSELECT 0x08
#define COMMON_GF 0x0c
#define COMMON_MSIX 0x10
#define COMMON_NUMQ 0x12
#define COMMON_STATUS 0x14
#define COMMON_CFGGENERATION 0x15
#define COMMON_Q_SELECT 0x16
#define COMMON_Q_SIZE 0x18
#define COMMON_Q_MSIX 0x1a
#define COMMON_Q_ENABLE 0x1c
#define COMMON_Q_NOFF 0x1e
#define COMMON_Q_DESCLO 0x20
#define COMMON_Q_DESCHI 0x24
#define COMMON_Q_AVAILLO 0x28
#define COMMON_Q_AVAILHI 0x2c
#define COMMON_Q_USEDLO 0x30
#define COMMON_Q_USEDHI 0x34
#define COMMON_LEN 0x38 /* what a 1.0 device has at least */

#define MSIX_CTRL_ENABLE 0x8000
#define MSIX_CTRL_FMASK 0x4000
#define MSIX_ENTRY_SIZE 16
#define MSI_ADDRESS_BASE 0xfee00000u
#define PIC_MASTER_DATA 0x21
#define PIC_SLAVE_DATA 0xa1
#define MSI_DEST_SHIFT 12

/* IDT vectors: device i takes 0x80 + 4 i (config) and the next ones (queues). */
#define IRQ_BASE 0x80
#define IRQ_PER_DEVICE 4

#define RESET_TIMEOUT_US 1000000
#define WAIT_STEP_US 20
/* After the used index moved, how long to wait for the queue interrupt that should follow. */
#define IRQ_GRACE_US 200000
#define CONFIG_GENERATION_TRIES 100
#define MAX_INTERRUPTS_PER_WAIT 100000
#define MAX_RANGES 64

static unsigned failures;
bool vio_no_msix;

unsigned vio_failures(void) { return failures; }

void vio_check(bool ok, const struct vio_dev *d, const char *what)
{
    if (ok)
        return;
    failures++;
    if (d)
        rt_printf("fail: %s %s\n", vio_bdf(d->bdf), what);
    else
        rt_printf("fail: %s\n", what);
}

const char *vio_bdf(uint16_t bdf)
{
    static char bufs[2][8];
    static unsigned next;
    static const char hex[] = "0123456789abcdef";
    char *b = bufs[next++ & 1];
    unsigned bus = PCI_BDF_BUS(bdf), dev = PCI_BDF_DEV(bdf);

    b[0] = hex[bus >> 4];
    b[1] = hex[bus & 15];
    b[2] = ':';
    b[3] = hex[dev >> 4];
    b[4] = hex[dev & 15];
    b[5] = '.';
    b[6] = (char)('0' + PCI_BDF_FN(bdf));
    b[7] = 0;
    return b;
}

const char *vio_type_name(uint16_t type)
{
    switch (type) {
    case VIRTIO_ID_NET:
        return "net";
    case VIRTIO_ID_BLOCK:
        return "blk";
    case VIRTIO_ID_CONSOLE:
        return "console";
    case VIRTIO_ID_RNG:
        return "rng";
    case VIRTIO_ID_9P:
        return "9p";
    default:
        return "other";
    }
}

/* ---- BAR placement --------------------------------------------------------------------------- */

struct range {
    uint64_t start, end;
};

static struct range used_ranges[MAX_RANGES];
static unsigned nr_used;

static void add_used(uint64_t start, uint64_t size)
{
    if (nr_used < MAX_RANGES && size)
        used_ranges[nr_used++] = (struct range){ start, start + size };
}

/* Memory every present function decodes now (BARs with an address, ROMs). */
static void collect_used_ranges(void)
{
    nr_used = 0;
    for (unsigned f = 0; f < 256; f++) {
        if (pci_read32((uint16_t)f, 0) == 0xffffffffu)
            continue;
        for (unsigned i = 0; i < 6;) {
            struct pci_bar b;
            unsigned regs = pci_bar_size((uint16_t)f, i, &b);
            if ((b.kind == PCI_BAR_MEM32 || b.kind == PCI_BAR_MEM64) && b.addr)
                add_used(b.addr, b.size);
            i += regs ? regs : 1;
        }
        struct pci_bar rom;
        pci_bar_size((uint16_t)f, PCI_ROM_BAR, &rom);
        if (rom.kind == PCI_BAR_ROM && rom.addr)
            add_used(rom.addr, rom.size);
    }
}

static bool range_free(uint64_t start, uint64_t size)
{
    for (unsigned i = 0; i < nr_used; i++)
        if (start < used_ranges[i].end && used_ranges[i].start < start + size)
            return false;
    return true;
}

/* The highest free, naturally aligned `size` bytes in the layout's 32-bit MMIO window (the same
 * range is free for PCI on QEMU q35), 0 if none. */
static uint64_t free_mmio32(uint64_t size)
{
    if (size == 0 || size > LAYOUT_PCI_MMIO32_SIZE)
        return 0;
    for (uint64_t a = (LAYOUT_PCI_MMIO32_START + LAYOUT_PCI_MMIO32_SIZE - size) & ~(size - 1);
         a >= LAYOUT_PCI_MMIO32_START; a -= size)
        if (range_free(a, size))
            return a;
    return 0;
}

/* Gives memory BAR `i` an address below 4 GiB if it has none or one out of a 32-bit guest's
 * reach (a 64-bit BAR in the 64-bit window), with decoding off meanwhile. */
static void place_bar(struct vio_dev *d, unsigned i, const struct pci_bar *b)
{
    if (b->addr && rt_reachable(b->addr, b->size)) {
        d->bar[i] = b->addr;
        return;
    }
    uint64_t to = free_mmio32(b->size);
    if (!to) {
        vio_check(false, d, "no free range below 4 GiB for a BAR");
        return;
    }
    uint16_t cmd = pci_read16(d->bdf, PCI_COMMAND);
    pci_write16(d->bdf, PCI_COMMAND, cmd & (uint16_t)~PCI_CMD_MEMORY);
    pci_write32(d->bdf, (uint16_t)(PCI_BAR0 + 4 * i), (uint32_t)to);
    if (b->kind == PCI_BAR_MEM64)
        pci_write32(d->bdf, (uint16_t)(PCI_BAR0 + 4 * i + 4), 0);
    pci_write16(d->bdf, PCI_COMMAND, cmd);
    add_used(to, b->size);
    d->bar[i] = to;
    rt_printf("virtio: %s bar%u moved from=0x%llx to=0x%llx size=0x%llx\n", vio_bdf(d->bdf), i,
              b->addr, to, b->size);
}

/* ---- capabilities ---------------------------------------------------------------------------- */

static void read_region(uint16_t bdf, uint16_t at, struct vio_region *r)
{
    if (r->present)
        return; /* the first of each type counts (4.1.4.1) */
    uint8_t bar = pci_read8(bdf, at + 4);
    if (bar > 5)
        return; /* reserved BAR values: skip */
    r->present = true;
    r->bar = bar;
    r->offset = pci_read32(bdf, at + 8);
    r->length = pci_read32(bdf, at + 12);
}

static void walk_caps(struct vio_dev *d)
{
    if (!(pci_read16(d->bdf, PCI_STATUS) & PCI_STATUS_CAP_LIST))
        return;
    uint8_t at = pci_read8(d->bdf, PCI_CAP_PTR) & 0xfc;
    for (int n = 0; at >= 0x40 && n < MAX_CAPS; n++) {
        uint8_t id = pci_read8(d->bdf, at);
        if (id == CAP_ID_VENDOR) {
            switch (pci_read8(d->bdf, at + 3)) {
            case VIRTIO_PCI_CAP_COMMON_CFG:
                read_region(d->bdf, at, &d->common);
                break;
            case VIRTIO_PCI_CAP_NOTIFY_CFG:
                if (!d->notify.present)
                    d->notify_mult = pci_read32(d->bdf, at + 16);
                read_region(d->bdf, at, &d->notify);
                break;
            case VIRTIO_PCI_CAP_ISR_CFG:
                read_region(d->bdf, at, &d->isr);
                break;
            case VIRTIO_PCI_CAP_DEVICE_CFG:
                read_region(d->bdf, at, &d->device_cfg);
                break;
            default:
                break;
            }
        } else if (id == CAP_ID_MSIX && !d->msix_cap) {
            d->msix_cap = at;
            d->msix_vectors = (uint16_t)((pci_read16(d->bdf, at + 2) & 0x7ff) + 1);
            uint32_t table = pci_read32(d->bdf, at + 4);
            d->msix_table.present = true;
            d->msix_table.bar = table & 7;
            d->msix_table.offset = table & ~7u;
            d->msix_table.length = d->msix_vectors * MSIX_ENTRY_SIZE;
        }
        at = pci_read8(d->bdf, at + 1) & 0xfc;
    }
}

/* Sizes and places the BARs that the regions use; resolves each region's address. */
static void place_regions(struct vio_dev *d)
{
    struct vio_region *regions[] = { &d->common, &d->notify, &d->isr, &d->device_cfg,
                                     &d->msix_table };
    bool needed[6] = { false };

    for (unsigned r = 0; r < ARRAY_SIZE(regions); r++)
        if (regions[r]->present)
            needed[regions[r]->bar] = true;
    for (unsigned i = 0; i < 6;) {
        struct pci_bar b;
        unsigned regs = pci_bar_size(d->bdf, i, &b);
        d->bar_size[i] = b.size;
        if (needed[i]) {
            if (b.kind == PCI_BAR_MEM32 || b.kind == PCI_BAR_MEM64)
                place_bar(d, i, &b);
            else
                vio_check(false, d, "a virtio capability names a BAR that is not memory");
        }
        i += regs ? regs : 1;
    }
    for (unsigned r = 0; r < ARRAY_SIZE(regions); r++) {
        struct vio_region *g = regions[r];
        if (!g->present)
            continue;
        uint64_t end = (uint64_t)g->offset + g->length;
        if (!d->bar[g->bar] || end > d->bar_size[g->bar]) {
            vio_check(false, d, "a virtio capability lies outside its BAR");
            g->present = false;
            continue;
        }
        g->addr = d->bar[g->bar] + g->offset;
    }
}

static void print_region(const char *name, const struct vio_region *r)
{
    if (r->present)
        rt_printf(" %s=bar%u+0x%x", name, r->bar, r->offset);
    else
        rt_printf(" %s=none", name);
}

unsigned vio_scan(struct vio_dev *devs, unsigned max)
{
    unsigned n = 0;

    collect_used_ranges();
    for (unsigned f = 0; f < 256 && n < max; f++) {
        uint16_t bdf = (uint16_t)f;
        uint32_t id = pci_read32(bdf, 0);
        if ((id & 0xffff) != VIRTIO_VENDOR)
            continue;
        uint16_t device = (uint16_t)(id >> 16);
        uint16_t type;
        if (device >= VIRTIO_DEVICE_MODERN && device <= VIRTIO_DEVICE_MODERN + 0x3f)
            type = (uint16_t)(device - VIRTIO_DEVICE_MODERN);
        else if (device >= VIRTIO_DEVICE_TRANSITIONAL && device < VIRTIO_DEVICE_MODERN)
            type = pci_read16(bdf, PCI_SUBSYSTEM_ID);
        else
            continue; /* another Red Hat device (1af4:1100 and up are not virtio) */

        struct vio_dev *d = &devs[n];
        memset(d, 0, sizeof(*d));
        d->bdf = bdf;
        d->device_id = device;
        d->type = type;
        d->index = (uint8_t)n;
        d->revision = pci_read8(bdf, PCI_REVISION);
        d->config_entry = VIRTIO_MSI_NO_VECTOR;
        walk_caps(d);
        place_regions(d);
        uint16_t cmd = pci_read16(bdf, PCI_COMMAND);
        pci_write16(bdf, PCI_COMMAND,
                    cmd | PCI_CMD_MEMORY | PCI_CMD_BUS_MASTER | PCI_CMD_INTX_DISABLE);
        d->ok = d->common.present && d->notify.present && d->common.length >= COMMON_LEN;

        rt_printf("virtio: %s type=%u name=%s device=0x%04x rev=%u", vio_bdf(bdf), type,
                  vio_type_name(type), device, d->revision);
        print_region("common", &d->common);
        print_region("notify", &d->notify);
        print_region("isr", &d->isr);
        print_region("device_cfg", &d->device_cfg);
        rt_printf(" notify_mult=%u", d->notify_mult);
        if (d->msix_cap)
            rt_printf(" msix=bar%u+0x%x vectors=%u", d->msix_table.bar, d->msix_table.offset,
                      d->msix_vectors);
        else
            rt_printf(" msix=none");
        rt_printf(" modern=%s\n", d->ok ? "yes" : "no");
        vio_check(d->ok, d, "has no usable common/notify capabilities (not a modern virtio device)");
        n++;
    }
    rt_printf("virtio: devices=%u\n", n);
    return n;
}

/* ---- common configuration ---------------------------------------------------------------------- */

/* The common configuration structure, one access of the register's size each. */
static uint64_t common(const struct vio_dev *d, uint32_t off) { return d->common.addr + off; }
static uint8_t common_read8(const struct vio_dev *d, uint32_t off) { return mmio_read8(common(d, off)); }
static uint16_t common_read16(const struct vio_dev *d, uint32_t off) { return mmio_read16(common(d, off)); }
static uint32_t common_read32(const struct vio_dev *d, uint32_t off) { return mmio_read32(common(d, off)); }

static void common_write8(const struct vio_dev *d, uint32_t off, uint8_t v)
{
    mmio_write8(common(d, off), v);
}

static void common_write16(const struct vio_dev *d, uint32_t off, uint16_t v)
{
    mmio_write16(common(d, off), v);
}

static void common_write32(const struct vio_dev *d, uint32_t off, uint32_t v)
{
    mmio_write32(common(d, off), v);
}

static void common_write64(const struct vio_dev *d, uint32_t off, uint64_t v)
{
    common_write32(d, off, (uint32_t)v);
    common_write32(d, off + 4, (uint32_t)(v >> 32));
}

uint8_t vio_status(const struct vio_dev *d) { return common_read8(d, COMMON_STATUS); }

static void status_set(const struct vio_dev *d, uint8_t bits)
{
    common_write8(d, COMMON_STATUS, (uint8_t)(vio_status(d) | bits));
}

bool vio_reset(struct vio_dev *d)
{
    common_write8(d, COMMON_STATUS, 0);
    /* 4.1.4.3.2: the driver waits for the status to read 0 before re-initialising. */
    for (uint32_t us = 0; us < RESET_TIMEOUT_US; us += WAIT_STEP_US) {
        if (vio_status(d) == 0)
            return true;
        rt_delay_us(WAIT_STEP_US);
    }
    return false;
}

uint64_t vio_config_read(const struct vio_dev *d, uint32_t off, unsigned size)
{
    uint64_t v = 0;
    uint64_t a = d->device_cfg.addr + off;

    if (!d->device_cfg.present || off + size > d->device_cfg.length)
        return 0;
    /* 4.1.4.3.1: re-read until the generation did not change across the reads. */
    for (int tries = 0; tries < CONFIG_GENERATION_TRIES; tries++) {
        uint8_t gen = common_read8(d, COMMON_CFGGENERATION);
        switch (size) {
        case 1:
            v = mmio_read8(a);
            break;
        case 2:
            v = mmio_read16(a);
            break;
        case 8:
            v = mmio_read32(a) | (uint64_t)mmio_read32(a + 4) << 32;
            break;
        default:
            v = mmio_read32(a);
        }
        if (common_read8(d, COMMON_CFGGENERATION) == gen)
            break;
    }
    return v;
}

/* ---- MSI-X ----------------------------------------------------------------------------------- */

static void interrupts_setup(void)
{
    static bool done;
    if (done)
        return;
    /* Firmware (SeaBIOS under QEMU) leaves the 8259s programmed and the PIT ticking into them:
     * their interrupts would arrive as vectors 8+ once idt_call enables interrupts. Mask them all
     * (on vfiovm, which has no 8259, the writes go nowhere). */
    outb(PIC_MASTER_DATA, 0xff);
    outb(PIC_SLAVE_DATA, 0xff);
    lapic_set_base(vio_acpi.lapic_addr);
    lapic_enable();
    idt_init(vio_acpi.lapic_addr);
    done = true;
}

/* Programs MSI-X entries 0..n-1 (entry e -> IDT vector base + e) and enables MSI-X. */
static bool msix_setup(struct vio_dev *d, unsigned entries)
{
    if (!d->msix_cap || !d->msix_table.present || d->msix_vectors < entries)
        return false;
    uint32_t address = MSI_ADDRESS_BASE | (lapic_id() << MSI_DEST_SHIFT);
    uint8_t base = (uint8_t)(IRQ_BASE + IRQ_PER_DEVICE * d->index);
    for (unsigned e = 0; e < entries; e++) {
        uint64_t entry = d->msix_table.addr + e * MSIX_ENTRY_SIZE;
        mmio_write32(entry + 0, address);
        mmio_write32(entry + 4, 0);
        mmio_write32(entry + 8, base + e);
        mmio_write32(entry + 12, 0); /* unmasked */
    }
    uint16_t ctrl = pci_read16(d->bdf, d->msix_cap + 2);
    pci_write16(d->bdf, d->msix_cap + 2, (uint16_t)((ctrl | MSIX_CTRL_ENABLE) & ~MSIX_CTRL_FMASK));
    return true;
}

uint32_t vio_config_irqs(const struct vio_dev *d)
{
    return d->config_irq ? idt_count(d->config_irq) : 0;
}

uint32_t vio_queue_irqs(const struct vio_dev *d, unsigned qi)
{
    return d->q[qi].irq ? idt_count(d->q[qi].irq) : 0;
}

/* ---- initialisation (3.1.1) ------------------------------------------------------------------ */

static struct vq_mem ring_pool[VIO_MAX_DEVICES][VIO_MAX_QUEUES];

static uint16_t pow2_floor(uint16_t v)
{
    uint16_t p = 1;
    while ((uint16_t)(p << 1) && (uint16_t)(p << 1) <= v)
        p = (uint16_t)(p << 1);
    return p;
}

static bool setup_queue(struct vio_dev *d, unsigned qi)
{
    struct vio_queue *q = &d->q[qi];
    volatile struct vq_mem *m = &ring_pool[d->index][qi];

    memset(q, 0, sizeof(*q));
    q->index = (uint16_t)qi;
    q->mem = m;
    common_write16(d, COMMON_Q_SELECT, (uint16_t)qi);
    q->max_size = common_read16(d, COMMON_Q_SIZE);
    if (q->max_size == 0) {
        vio_check(false, d, "queue not available (size 0)");
        return false;
    }
    q->size = pow2_floor(q->max_size < VQ_SIZE ? q->max_size : VQ_SIZE);
    memset((void *)m, 0, sizeof(*m));
    common_write16(d, COMMON_Q_SIZE, q->size);

    q->msix_entry = VIRTIO_MSI_NO_VECTOR;
    if (d->use_msix) {
        common_write16(d, COMMON_Q_MSIX, (uint16_t)(1 + qi));
        q->msix_entry = common_read16(d, COMMON_Q_MSIX);
        if (q->msix_entry == 1 + qi)
            q->irq = (uint8_t)(IRQ_BASE + IRQ_PER_DEVICE * d->index + 1 + qi);
        else
            vio_check(false, d, "queue MSI-X vector refused (reads back NO_VECTOR)");
    }
    common_write64(d, COMMON_Q_DESCLO, (uintptr_t)m->desc);
    common_write64(d, COMMON_Q_AVAILLO, (uintptr_t)&m->avail_flags);
    common_write64(d, COMMON_Q_USEDLO, (uintptr_t)&m->used_flags);
    q->notify_off = common_read16(d, COMMON_Q_NOFF);
    q->notify_addr = d->notify.addr + (uint64_t)q->notify_off * d->notify_mult;
    if ((uint64_t)q->notify_off * d->notify_mult + 2 > d->notify.length) {
        vio_check(false, d, "queue notify address outside the notify capability");
        return false;
    }
    common_write16(d, COMMON_Q_ENABLE, 1);
    return true;
}

bool vio_init(struct vio_dev *d, uint64_t wanted, unsigned nqueues, bool verbose)
{
    if (!d->ok)
        return false;
    if (nqueues > VIO_MAX_QUEUES)
        nqueues = VIO_MAX_QUEUES;
    interrupts_setup(); /* vio_wait runs in idt_call, with or without MSI-X */
    d->wedged = false;
    if (!vio_reset(d)) {
        vio_check(false, d, "reset: status never reads 0");
        return false;
    }
    status_set(d, VIRTIO_STATUS_ACKNOWLEDGE);
    status_set(d, VIRTIO_STATUS_DRIVER);

    common_write32(d, COMMON_DFSELECT, 0);
    uint64_t lo = common_read32(d, COMMON_DF);
    common_write32(d, COMMON_DFSELECT, 1);
    d->offered = lo | (uint64_t)common_read32(d, COMMON_DF) << 32;
    if (!(d->offered & VIRTIO_F_VERSION_1)) {
        vio_check(false, d, "does not offer VIRTIO_F_VERSION_1");
        status_set(d, VIRTIO_STATUS_FAILED);
        return false;
    }
    d->accepted = d->offered & (VIRTIO_F_VERSION_1 | wanted);
    common_write32(d, COMMON_GFSELECT, 0);
    common_write32(d, COMMON_GF, (uint32_t)d->accepted);
    common_write32(d, COMMON_GFSELECT, 1);
    common_write32(d, COMMON_GF, (uint32_t)(d->accepted >> 32));
    status_set(d, VIRTIO_STATUS_FEATURES_OK);
    uint8_t status = vio_status(d);
    if (!(status & VIRTIO_STATUS_FEATURES_OK)) {
        vio_check(false, d, "FEATURES_OK not kept: the device refused the features");
        status_set(d, VIRTIO_STATUS_FAILED);
        return false;
    }

    d->use_msix = !vio_no_msix && msix_setup(d, 1 + nqueues);
    d->config_irq = 0;
    d->config_entry = VIRTIO_MSI_NO_VECTOR;
    if (d->use_msix) {
        common_write16(d, COMMON_MSIX, 0);
        d->config_entry = common_read16(d, COMMON_MSIX);
        if (d->config_entry == 0)
            d->config_irq = (uint8_t)(IRQ_BASE + IRQ_PER_DEVICE * d->index);
        else
            vio_check(false, d, "config MSI-X vector refused (reads back NO_VECTOR)");
    }
    d->num_queues = common_read16(d, COMMON_NUMQ);
    d->nqueues = 0;
    for (unsigned qi = 0; qi < nqueues; qi++) {
        if (qi >= d->num_queues) {
            vio_check(false, d, "fewer queues than the driver needs");
            status_set(d, VIRTIO_STATUS_FAILED);
            return false;
        }
        if (!setup_queue(d, qi)) {
            status_set(d, VIRTIO_STATUS_FAILED);
            return false;
        }
        d->nqueues++;
    }
    status_set(d, VIRTIO_STATUS_DRIVER_OK);
    status = vio_status(d);
    if (verbose)
        rt_printf("virtio: %s init offered=0x%llx accepted=0x%llx status=0x%x num_queues=%u "
                  "queues=%u qsize=%u max_qsize=%u msix=%s\n",
                  vio_bdf(d->bdf), d->offered, d->accepted, status, d->num_queues, d->nqueues,
                  d->nqueues ? d->q[0].size : 0, d->nqueues ? d->q[0].max_size : 0,
                  d->use_msix ? "yes" : "no");
    if (status & (VIRTIO_STATUS_NEEDS_RESET | VIRTIO_STATUS_FAILED) ||
        !(status & VIRTIO_STATUS_DRIVER_OK)) {
        vio_check(false, d, "status after DRIVER_OK is not DRIVER_OK");
        return false;
    }
    return true;
}

/* ---- split virtqueues (2.7) ------------------------------------------------------------------ */

void vio_notify(struct vio_dev *d, unsigned qi)
{
    mmio_write16(d->q[qi].notify_addr, (uint16_t)qi);
}

struct wait_arg {
    struct vio_dev *d;
    unsigned qi;
    bool notify;
    uint64_t timeout_us;
    volatile uint64_t elapsed_us;
};

static bool used_moved(const struct vio_queue *q) { return q->mem->used_idx != q->used_seen; }

/* idt_call body: notify once, then watch the used index. An interrupt abandons it; the caller
 * calls it again, and `notify`/`elapsed_us` carry over. */
static void wait_body(void *p)
{
    struct wait_arg *w = p;
    struct vio_queue *q = &w->d->q[w->qi];

    if (w->notify) {
        vio_notify(w->d, w->qi);
        w->notify = false;
    }
    while (w->elapsed_us < w->timeout_us) {
        if (used_moved(q))
            return;
        rt_delay_us(WAIT_STEP_US);
        w->elapsed_us += WAIT_STEP_US;
    }
}

static void check_vector(int v)
{
    if (v >= 0 && v < 32) {
        struct idt_event e;
        idt_last(&e);
        rt_printf("error: exception vector=%d error=0x%x eip=0x%x while waiting for a device\n", v,
                  e.error_code, e.eip);
        rt_fail("exception while waiting for a device");
    }
}

bool vio_wait(struct vio_dev *d, unsigned qi, bool notify, uint64_t timeout_us,
              struct vio_result *res)
{
    struct vio_queue *q = &d->q[qi];
    struct wait_arg w = { d, qi, notify, timeout_us, 0 };
    uint32_t irqs0 = vio_queue_irqs(d, qi);

    memset(res, 0, sizeof(*res));
    /* Time advances only in whole steps of wait_body, so interrupts coming faster than a step
     * would stop the clock: their number is bounded too. */
    for (uint32_t interrupts = 0;; interrupts++) {
        int v = idt_call(wait_body, &w);
        check_vector(v);
        if (v == IDT_NO_INTERRUPT || used_moved(q) || w.elapsed_us >= w.timeout_us)
            break;
        if (interrupts == MAX_INTERRUPTS_PER_WAIT) {
            vio_check(false, d, "interrupt storm while waiting for a request");
            break;
        }
    }
    res->waited_us = (uint32_t)w.elapsed_us;
    if (!used_moved(q)) {
        d->wedged = true;
        return false;
    }
    compiler_barrier();
    volatile struct vring_used_elem *e = &q->mem->used_ring[q->used_seen & (q->size - 1)];
    res->completed = true;
    res->used_id = e->id;
    res->used_len = e->len;
    q->used_seen++;
    /* The interrupt follows the used index update: give it time to arrive, so it is counted for
     * this request and not delivered into the next wait. */
    for (uint32_t spent = 0; q->irq && vio_queue_irqs(d, qi) == irqs0 && spent < IRQ_GRACE_US;
         spent += WAIT_STEP_US)
        check_vector(idt_wait_us(WAIT_STEP_US));
    res->irqs = vio_queue_irqs(d, qi) - irqs0;
    return true;
}

/* 2.7.10: with VIRTIO_F_EVENT_IDX the driver notifies only if the device asked for the index it
 * just published; otherwise unless the device set VRING_USED_F_NO_NOTIFY. */
static bool need_notify(const struct vio_dev *d, const struct vio_queue *q, uint16_t old_idx,
                        uint16_t new_idx)
{
    if (d->accepted & VIRTIO_F_EVENT_IDX) {
        /* avail_event: the 16 bits right after the used ring entries in use. */
        volatile const uint8_t *p = (volatile const uint8_t *)&q->mem->used_ring[q->size];
        uint16_t event = (uint16_t)(p[0] | p[1] << 8);
        return (uint16_t)(new_idx - event - 1) < (uint16_t)(new_idx - old_idx);
    }
    return !(q->mem->used_flags & 1);
}

bool vio_publish_wait(struct vio_dev *d, unsigned qi, uint16_t head, bool force_notify,
                      uint64_t timeout_us, struct vio_result *res)
{
    struct vio_queue *q = &d->q[qi];
    volatile struct vq_mem *m = q->mem;
    uint16_t old_idx = q->avail_shadow;

    m->avail_flags = 0;
    if (d->accepted & VIRTIO_F_EVENT_IDX)
        m->avail_ring[q->size] = q->used_seen; /* used_event: interrupt at the next used entry */
    m->avail_ring[old_idx & (q->size - 1)] = head;
    compiler_barrier();
    q->avail_shadow = (uint16_t)(old_idx + 1);
    m->avail_idx = q->avail_shadow;
    full_barrier();
    bool notify = force_notify || need_notify(d, q, old_idx, q->avail_shadow);
    return vio_wait(d, qi, notify, timeout_us, res);
}

bool vio_run(struct vio_dev *d, unsigned qi, const struct vio_buf *bufs, unsigned n, bool indirect,
             uint64_t timeout_us, struct vio_result *res)
{
    struct vio_queue *q = &d->q[qi];
    volatile struct vq_mem *m = q->mem;
    volatile struct vring_desc *table = indirect ? m->indirect : m->desc;
    unsigned max = indirect ? VQ_INDIRECT_MAX : q->size;

    if (n == 0 || n > max)
        rt_fail("vio_run: bad chain length");
    if (d->wedged) {
        memset(res, 0, sizeof(*res));
        return false;
    }
    for (unsigned i = 0; i < n; i++) {
        table[i].addr = bufs[i].addr;
        table[i].len = bufs[i].len;
        table[i].flags = (uint16_t)((bufs[i].device_writes ? VRING_DESC_F_WRITE : 0) |
                                    (i + 1 < n ? VRING_DESC_F_NEXT : 0));
        table[i].next = (uint16_t)(i + 1 < n ? i + 1 : 0);
    }
    if (indirect) {
        m->desc[0].addr = (uintptr_t)m->indirect;
        m->desc[0].len = n * sizeof(struct vring_desc);
        m->desc[0].flags = VRING_DESC_F_INDIRECT;
        m->desc[0].next = 0;
    }
    bool done = vio_publish_wait(d, qi, 0, false, timeout_us, res);
    if (done && res->used_id != 0)
        vio_check(false, d, "used element names a descriptor that was not the head");
    return done;
}
