/* virtio_pci.h - a small virtio 1.x driver over the modern PCI transport, written from the
 * virtio 1.2 specification (OASIS, 2022) for the virtio_probe guest. virtio_pci.c is the
 * transport: discovery on bus 0, BARs, the vendor capabilities (4.1.4), the initialisation
 * sequence (3.1.1), split virtqueues (2.7) and MSI-X (4.1.5.1.2); virtio_probe.c drives the
 * devices (virtio-rng, virtio-blk) and the hostile cases.
 *
 * Everything is synchronous: one request in flight per queue, the chain always in descriptors
 * 0..n-1 (or in an indirect table). A request is "done" when the used index moves; MSI-X
 * interrupts only end the wait early, so a device whose interrupts are broken is still seen
 * (polling), and one that never answers makes vio_run time out. */
#ifndef VIRTIO_PCI_H
#define VIRTIO_PCI_H

#include "rt.h"

#define VIRTIO_VENDOR 0x1af4
#define VIRTIO_DEVICE_MODERN 0x1040       /* 0x1040 + device type (4.1.2.1) */
#define VIRTIO_DEVICE_TRANSITIONAL 0x1000 /* 0x1000..0x103f: the type is the subsystem ID */

#define VIRTIO_ID_NET 1
#define VIRTIO_ID_BLOCK 2
#define VIRTIO_ID_CONSOLE 3
#define VIRTIO_ID_RNG 4
#define VIRTIO_ID_9P 9

/* Device status (2.1). */
#define VIRTIO_STATUS_ACKNOWLEDGE 0x01
#define VIRTIO_STATUS_DRIVER 0x02
#define VIRTIO_STATUS_DRIVER_OK 0x04
#define VIRTIO_STATUS_FEATURES_OK 0x08
#define VIRTIO_STATUS_NEEDS_RESET 0x40
#define VIRTIO_STATUS_FAILED 0x80

/* Reserved feature bits (6). */
#define VIRTIO_F_INDIRECT_DESC (1ULL << 28)
#define VIRTIO_F_EVENT_IDX (1ULL << 29)
#define VIRTIO_F_VERSION_1 (1ULL << 32)
#define VIRTIO_F_ACCESS_PLATFORM (1ULL << 33)
#define VIRTIO_F_RING_PACKED (1ULL << 34)

/* Split virtqueue descriptor flags (2.7.5). */
#define VRING_DESC_F_NEXT 1
#define VRING_DESC_F_WRITE 2
#define VRING_DESC_F_INDIRECT 4

/* The driver's queue size: the device's maximum if smaller. Small on purpose (hostile chains
 * longer than the queue stay cheap), a power of two as split queues require. */
#define VQ_SIZE 16
/* Descriptors in a queue's indirect table (more than VQ_SIZE, for the hostile long chain). */
#define VQ_INDIRECT_MAX 64
#define VIO_MAX_QUEUES 2
#define VIO_MAX_DEVICES 8

struct vring_desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
};

struct vring_used_elem {
    uint32_t id;
    uint32_t len;
};

/* One queue's rings in guest RAM: descriptor table (16-byte aligned), driver area (avail ring,
 * 2-byte aligned), device area (used ring, 4-byte aligned), and an indirect table. The rings are
 * sized for VQ_SIZE; a smaller queue uses the first entries, and the event fields sit right after
 * the entries in use (avail_ring[size], used_ring[size]), as the layout in 2.7 requires. */
struct vq_mem {
    struct vring_desc desc[VQ_SIZE];
    uint16_t avail_flags;
    uint16_t avail_idx;
    uint16_t avail_ring[VQ_SIZE + 1]; /* + used_event */
    uint16_t pad_avail;
    uint16_t used_flags __attribute__((aligned(4)));
    uint16_t used_idx;
    struct vring_used_elem used_ring[VQ_SIZE + 1]; /* + avail_event (first 16 bits) */
    struct vring_desc indirect[VQ_INDIRECT_MAX] __attribute__((aligned(16)));
} __attribute__((aligned(4096)));

struct vio_queue {
    uint16_t index;
    uint16_t size;        /* what the driver set: min(device maximum, VQ_SIZE) */
    uint16_t max_size;    /* what the device offered */
    uint16_t notify_off;
    uint16_t msix_entry;  /* VIRTIO_MSI_NO_VECTOR without MSI-X */
    uint8_t irq;          /* IDT vector of that MSI-X entry, 0 without */
    uint16_t avail_shadow; /* the driver's next avail index */
    uint16_t used_seen;    /* the used index the driver has consumed up to */
    volatile struct vq_mem *mem;
    uint64_t notify_addr;
};

/* Where a virtio structure lives: a BAR and an offset into it (4.1.4). */
struct vio_region {
    bool present;
    uint8_t bar;
    uint32_t offset;
    uint32_t length;
    uint64_t addr; /* BAR address + offset, once the BAR is placed */
};

struct vio_dev {
    uint16_t bdf;
    uint16_t device_id;
    uint16_t type;
    uint8_t revision;
    uint8_t index;      /* position in the scan; picks the IDT vectors */
    uint64_t bar[6];    /* memory BAR addresses (0: none or unusable) */
    uint64_t bar_size[6];
    struct vio_region common, notify, isr, device_cfg;
    uint32_t notify_mult;
    /* MSI-X */
    uint16_t msix_cap;
    uint16_t msix_vectors;
    struct vio_region msix_table;
    bool use_msix;
    uint16_t config_entry; /* VIRTIO_MSI_NO_VECTOR without MSI-X */
    uint8_t config_irq;
    /* negotiation */
    uint64_t offered;
    uint64_t accepted;
    uint16_t num_queues; /* the device's */
    unsigned nqueues;    /* set up by the driver */
    struct vio_queue q[VIO_MAX_QUEUES];
    bool ok;             /* usable: modern capabilities found and reachable */
    bool wedged;         /* a request timed out: vio_run refuses more until vio_init */
};

/* One buffer of a request: guest-physical address, length, and whether the device writes it. */
struct vio_buf {
    uint64_t addr;
    uint32_t len;
    bool device_writes;
};

/* What became of a request. */
struct vio_result {
    bool completed;   /* the used index moved */
    uint32_t used_id; /* its used element */
    uint32_t used_len;
    uint32_t irqs;    /* queue interrupts seen meanwhile */
    uint32_t waited_us;
};

#define VIRTIO_MSI_NO_VECTOR 0xffff

/* Orders this CPU's earlier memory accesses before its later ones, loads after stores too
 * (x86 only reorders those): for the event index check after publishing. compiler_barrier only
 * keeps the compiler from moving ring writes across it. */
static inline void full_barrier(void)
{
    __asm__ volatile("lock; orl $0, (%%esp)" ::: "memory", "cc");
}
static inline void compiler_barrier(void) { __asm__ volatile("" ::: "memory"); }

/* Shared state set up by virtio_probe.c before anything else. */
extern struct acpi_info vio_acpi;
extern const struct rt_boot *vio_boot;
/* No MSI-X (vectors left at NO_VECTOR): requests complete by polling the used ring alone. */
extern bool vio_no_msix;

/* Failed checks so far. */
unsigned vio_failures(void);
/* Counts a failed check and prints "fail: <what>" (with the device's address if given). */
void vio_check(bool ok, const struct vio_dev *d, const char *what);
/* "00:03.0" for a device, into a static buffer per call site (two alternating). */
const char *vio_bdf(uint16_t bdf);
const char *vio_type_name(uint16_t type);

/* Finds every virtio function on bus 0, places its BARs below 4 GiB if needed, walks its
 * capabilities and prints "virtio: ..." lines. Returns the number found (at most `max`). */
unsigned vio_scan(struct vio_dev *devs, unsigned max);

/* Resets the device (status 0, waits until it reads back 0). False if it never does. */
bool vio_reset(struct vio_dev *d);
uint8_t vio_status(const struct vio_dev *d);
/* 3.1.1: reset, ACKNOWLEDGE, DRIVER, features (VERSION_1 | (offered & wanted)), FEATURES_OK
 * (re-read), `nqueues` queues with MSI-X vectors, DRIVER_OK. Prints one "virtio: ... init" line
 * when `verbose`. False (and a fail line) if any step is refused. */
bool vio_init(struct vio_dev *d, uint64_t wanted, unsigned nqueues, bool verbose);

/* Device config space access (4.1.4.6), 1/2/4/8 bytes at `off`, consistent across the
 * config generation counter. */
uint64_t vio_config_read(const struct vio_dev *d, uint32_t off, unsigned size);

/* Places `n` buffers in queue `qi` as one chain (descriptors 0..n-1, or an indirect table when
 * `indirect`), publishes it, notifies and waits up to `timeout_us`. After a timeout the device
 * is `wedged` (a late completion would be mistaken for the next request's): vio_run then
 * returns false at once until the device is initialised again. */
bool vio_run(struct vio_dev *d, unsigned qi, const struct vio_buf *bufs, unsigned n, bool indirect,
             uint64_t timeout_us, struct vio_result *res);
/* The lower half, for hand-made chains: puts `head` (already in the descriptor table) into the
 * next avail ring slot, publishes it (avail idx + 1), notifies as 2.7.10 says (always with
 * `force_notify`), and waits. */
bool vio_publish_wait(struct vio_dev *d, unsigned qi, uint16_t head, bool force_notify,
                      uint64_t timeout_us, struct vio_result *res);
/* Waits for the used index to move (or `timeout_us`), counting queue interrupts; notifies
 * first when `notify`. */
bool vio_wait(struct vio_dev *d, unsigned qi, bool notify, uint64_t timeout_us,
              struct vio_result *res);
void vio_notify(struct vio_dev *d, unsigned qi);
/* Interrupts seen on the config vector / a queue vector so far. */
uint32_t vio_config_irqs(const struct vio_dev *d);
uint32_t vio_queue_irqs(const struct vio_dev *d, unsigned qi);

#endif
