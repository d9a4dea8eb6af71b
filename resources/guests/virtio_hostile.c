/* virtio_hostile.c - the hostile part of virtio_probe (`test=hostile`): malformed descriptor
 * chains and ring indices sent to the first virtio-blk device. Each case is a read (or write)
 * request built by hand; afterwards the guest prints what the device did (used element, the
 * request's status byte, the device status: DEVICE_NEEDS_RESET is what the spec asks of a device
 * that finds an error it cannot report otherwise, 2.1.2), resets the device, initialises it
 * again and checks that a normal read works. A device that wedges, or takes the guest with it,
 * fails the test; whatever else it does is reported, not judged, except for the one legal case
 * (a request header split over two descriptors), which must succeed. The last line is
 * "hostile: survived". */
#include "virtio_probe.h"

#define FAR_ADDRESS 0xffff0000000ULL /* 16 TiB - 256 MiB: far outside any test VM's RAM */
#define LEN_4G 0xffffffffu           /* a descriptor's largest length: 4 GiB - 1 */
#define EXTRA_SECTORS 8              /* the indirect chain is this much longer than the queue */
#define BIG_SECTORS (VQ_SIZE + EXTRA_SECTORS)
#define HOSTILE_SECTORS BIG_SECTORS  /* sectors from sector= the cases touch */
#define CASE_NAME_MAX 32
#define UNKNOWN_REQUEST_TYPE 0x55
#define BAD_QUEUE_INDEX 0xffff

static uint8_t big[BIG_SECTORS * SECTOR_SIZE] __attribute__((aligned(4096)));
static uint8_t expect[SECTOR_SIZE];
static uint64_t case_timeout_us;
static uint64_t capacity;

static uint64_t phys(volatile const void *p) { return (uintptr_t)p; }

static void set_desc(volatile struct vring_desc *t, unsigned i, uint64_t addr, uint32_t len,
                     uint16_t flags, uint16_t next)
{
    t[i].addr = addr;
    t[i].len = len;
    t[i].flags = flags;
    t[i].next = next;
}

static void set_hdr(uint32_t type)
{
    blk_hdr.type = type;
    blk_hdr.reserved = 0;
    blk_hdr.sector = opts.sector;
    blk_status = BLK_STATUS_UNTOUCHED;
}

/* The usual three descriptors (header, one sector of data, status) from `first`. */
static void normal_chain(volatile struct vring_desc *t, unsigned first)
{
    set_desc(t, first, phys(&blk_hdr), sizeof(blk_hdr), VRING_DESC_F_NEXT, (uint16_t)(first + 1));
    set_desc(t, first + 1, phys(big), SECTOR_SIZE, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT,
             (uint16_t)(first + 2));
    set_desc(t, first + 2, phys(&blk_status), 1, VRING_DESC_F_WRITE, 0);
}

static bool publish(struct vio_dev *d, uint16_t head, struct vio_result *res)
{
    return vio_publish_wait(d, 0, head, true, case_timeout_us, res);
}

/* ---- the cases ------------------------------------------------------------------------------- */

/* The data of an OUT request is the pattern, so a device that does carry one out writes what
 * the sector already holds. */
static void set_write(void)
{
    set_hdr(VIRTIO_BLK_T_OUT);
    memcpy(big, expect, SECTOR_SIZE);
}

/* a -> b -> a, both device-readable (a write): a loop the device must not follow forever, with
 * nothing else wrong in it. */
static bool case_loop(struct vio_dev *d, struct vio_result *res)
{
    volatile struct vring_desc *t = d->q[0].mem->desc;
    set_write();
    set_desc(t, 0, phys(&blk_hdr), sizeof(blk_hdr), VRING_DESC_F_NEXT, 1);
    set_desc(t, 1, phys(big), SECTOR_SIZE, VRING_DESC_F_NEXT, 0);
    return publish(d, 0, res);
}

/* Every descriptor of the queue chained, the last back to the second: longer than the queue,
 * and a loop that does not pass through the head again. */
static bool case_chain_over_qsize(struct vio_dev *d, struct vio_result *res)
{
    struct vio_queue *q = &d->q[0];
    volatile struct vring_desc *t = q->mem->desc;
    set_hdr(VIRTIO_BLK_T_IN);
    set_desc(t, 0, phys(&blk_hdr), sizeof(blk_hdr), VRING_DESC_F_NEXT, 1);
    for (unsigned i = 1; i < q->size; i++)
        set_desc(t, i, phys(big + (i - 1) * SECTOR_SIZE), SECTOR_SIZE,
                 VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, (uint16_t)(i + 1 < q->size ? i + 1 : 1));
    return publish(d, 0, res);
}

/* An indirect table with more descriptors than the queue has, no loop (2.7.5.3.1: the driver
 * must not; what the device does is the question). */
static bool case_indirect_over_qsize(struct vio_dev *d, struct vio_result *res)
{
    struct vio_queue *q = &d->q[0];
    volatile struct vring_desc *t = q->mem->indirect;
    unsigned data = q->size + EXTRA_SECTORS, n = data + 2;
    set_hdr(VIRTIO_BLK_T_IN);
    set_desc(t, 0, phys(&blk_hdr), sizeof(blk_hdr), VRING_DESC_F_NEXT, 1);
    for (unsigned i = 0; i < data; i++)
        set_desc(t, 1 + i, phys(big + i * SECTOR_SIZE), SECTOR_SIZE,
                 VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, (uint16_t)(i + 2));
    set_desc(t, n - 1, phys(&blk_status), 1, VRING_DESC_F_WRITE, 0);
    set_desc(q->mem->desc, 0, phys(t), n * sizeof(struct vring_desc), VRING_DESC_F_INDIRECT, 0);
    return publish(d, 0, res);
}

/* The data buffer far outside guest RAM. */
static bool case_addr_outside_ram(struct vio_dev *d, struct vio_result *res)
{
    volatile struct vring_desc *t = d->q[0].mem->desc;
    set_hdr(VIRTIO_BLK_T_IN);
    normal_chain(t, 0);
    t[1].addr = FAR_ADDRESS;
    return publish(d, 0, res);
}

/* A zero-length data descriptor. */
static bool case_zero_len(struct vio_dev *d, struct vio_result *res)
{
    volatile struct vring_desc *t = d->q[0].mem->desc;
    set_hdr(VIRTIO_BLK_T_IN);
    normal_chain(t, 0);
    t[1].len = 0;
    return publish(d, 0, res);
}

/* A write whose data descriptor claims 4 GiB - 1 bytes from a RAM buffer (device-readable, so a
 * device that believes it only reads guest memory past RAM's end, never overwrites the guest). */
static bool case_len_4g(struct vio_dev *d, struct vio_result *res)
{
    volatile struct vring_desc *t = d->q[0].mem->desc;
    set_write();
    normal_chain(t, 0);
    t[1].len = LEN_4G;
    t[1].flags = VRING_DESC_F_NEXT;
    return publish(d, 0, res);
}

/* Legal: the 16-byte header in two descriptors of 8 (the spec makes no framing assumption, 2.6.4).
 * Must succeed and return the pattern. */
static bool case_split_header(struct vio_dev *d, struct vio_result *res)
{
    volatile struct vring_desc *t = d->q[0].mem->desc;
    set_hdr(VIRTIO_BLK_T_IN);
    memset(big, 0xa5, SECTOR_SIZE);
    set_desc(t, 0, phys(&blk_hdr), 8, VRING_DESC_F_NEXT, 1);
    set_desc(t, 1, phys(&blk_hdr) + 8, 8, VRING_DESC_F_NEXT, 2);
    set_desc(t, 2, phys(big), SECTOR_SIZE, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 3);
    set_desc(t, 3, phys(&blk_status), 1, VRING_DESC_F_WRITE, 0);
    return vio_publish_wait(d, 0, 0, true, opts.timeout_us, res);
}

/* A `next` beyond the queue. */
static bool case_next_out_of_range(struct vio_dev *d, struct vio_result *res)
{
    volatile struct vring_desc *t = d->q[0].mem->desc;
    set_hdr(VIRTIO_BLK_T_IN);
    normal_chain(t, 0);
    t[1].next = (uint16_t)(d->q[0].size + 5);
    return publish(d, 0, res);
}

/* An avail ring entry naming a head beyond the queue. */
static bool case_head_out_of_range(struct vio_dev *d, struct vio_result *res)
{
    set_hdr(VIRTIO_BLK_T_IN);
    normal_chain(d->q[0].mem->desc, 0);
    return publish(d, (uint16_t)(d->q[0].size + 3), res);
}

/* The avail index moved by queue size + 1 at once (every ring slot names a valid chain). */
static bool case_avail_overrun(struct vio_dev *d, struct vio_result *res)
{
    struct vio_queue *q = &d->q[0];
    set_hdr(VIRTIO_BLK_T_IN);
    normal_chain(q->mem->desc, 0);
    for (unsigned i = 0; i < q->size; i++)
        q->mem->avail_ring[i] = 0;
    q->avail_shadow = (uint16_t)(q->avail_shadow + q->size);
    return publish(d, 0, res);
}

/* A write whose status byte is device-readable too: the device has nowhere to put the status
 * (the chain itself is well-formed). */
static bool case_status_not_writable(struct vio_dev *d, struct vio_result *res)
{
    volatile struct vring_desc *t = d->q[0].mem->desc;
    set_write();
    normal_chain(t, 0);
    t[1].flags = VRING_DESC_F_NEXT;
    t[2].flags = 0;
    return publish(d, 0, res);
}

/* A header descriptor of 8 bytes: type and reserved, no sector. */
static bool case_header_too_short(struct vio_dev *d, struct vio_result *res)
{
    volatile struct vring_desc *t = d->q[0].mem->desc;
    set_hdr(VIRTIO_BLK_T_IN);
    normal_chain(t, 0);
    t[0].len = 8;
    return publish(d, 0, res);
}

/* Well-formed chains with bad contents: the device should answer with a status, not break. */
static bool case_data_not_sector_multiple(struct vio_dev *d, struct vio_result *res)
{
    volatile struct vring_desc *t = d->q[0].mem->desc;
    set_hdr(VIRTIO_BLK_T_IN);
    normal_chain(t, 0);
    t[1].len = 100;
    return publish(d, 0, res);
}

static bool case_sector_beyond_capacity(struct vio_dev *d, struct vio_result *res)
{
    set_hdr(VIRTIO_BLK_T_IN);
    blk_hdr.sector = capacity;
    normal_chain(d->q[0].mem->desc, 0);
    return publish(d, 0, res);
}

static bool case_unknown_type(struct vio_dev *d, struct vio_result *res)
{
    set_hdr(UNKNOWN_REQUEST_TYPE);
    normal_chain(d->q[0].mem->desc, 0);
    return publish(d, 0, res);
}

/* A valid request published, but the notification names a queue that does not exist. */
static bool case_notify_bad_queue(struct vio_dev *d, struct vio_result *res)
{
    struct vio_queue *q = &d->q[0];
    set_hdr(VIRTIO_BLK_T_IN);
    normal_chain(q->mem->desc, 0);
    q->mem->avail_ring[q->avail_shadow & (q->size - 1)] = 0;
    q->avail_shadow++;
    q->mem->avail_idx = q->avail_shadow;
    mmio_write16(q->notify_addr, BAD_QUEUE_INDEX);
    return vio_wait(d, 0, false, case_timeout_us, res);
}

/* Indirect tables that break 2.7.5.3: INDIRECT inside a table, INDIRECT together with NEXT,
 * a table length that is not a multiple of 16, a table outside RAM. */
static void indirect_read(struct vio_dev *d)
{
    volatile struct vq_mem *m = d->q[0].mem;
    set_hdr(VIRTIO_BLK_T_IN);
    normal_chain(m->indirect, 0);
    set_desc(m->desc, 0, phys(m->indirect), 3 * sizeof(struct vring_desc),
             VRING_DESC_F_INDIRECT, 0);
}

static bool case_indirect_nested(struct vio_dev *d, struct vio_result *res)
{
    volatile struct vq_mem *m = d->q[0].mem;
    indirect_read(d);
    /* The table's first entry points at the table itself, as another indirect table. */
    set_desc(m->indirect, 0, phys(m->indirect), 3 * sizeof(struct vring_desc),
             VRING_DESC_F_INDIRECT, 0);
    return publish(d, 0, res);
}

static bool case_indirect_and_next(struct vio_dev *d, struct vio_result *res)
{
    volatile struct vq_mem *m = d->q[0].mem;
    indirect_read(d);
    m->desc[0].flags = VRING_DESC_F_INDIRECT | VRING_DESC_F_NEXT;
    m->desc[0].next = 1;
    set_desc(m->desc, 1, phys(&blk_status), 1, VRING_DESC_F_WRITE, 0);
    return publish(d, 0, res);
}

static bool case_indirect_bad_len(struct vio_dev *d, struct vio_result *res)
{
    indirect_read(d);
    d->q[0].mem->desc[0].len = 3 * sizeof(struct vring_desc) - 4;
    return publish(d, 0, res);
}

static bool case_indirect_outside_ram(struct vio_dev *d, struct vio_result *res)
{
    indirect_read(d);
    d->q[0].mem->desc[0].addr = FAR_ADDRESS;
    return publish(d, 0, res);
}

struct hostile_case {
    const char *name;
    bool (*run)(struct vio_dev *d, struct vio_result *res);
    bool needs_indirect;
    bool legal;
};

static const struct hostile_case cases[] = {
    { "loop", case_loop, false, false },
    { "chain_over_qsize", case_chain_over_qsize, false, false },
    { "indirect_over_qsize", case_indirect_over_qsize, true, false },
    { "addr_outside_ram", case_addr_outside_ram, false, false },
    { "zero_len", case_zero_len, false, false },
    { "len_4g", case_len_4g, false, false },
    { "split_header", case_split_header, false, true },
    { "next_out_of_range", case_next_out_of_range, false, false },
    { "head_out_of_range", case_head_out_of_range, false, false },
    { "avail_overrun", case_avail_overrun, false, false },
    { "status_not_writable", case_status_not_writable, false, false },
    { "header_too_short", case_header_too_short, false, false },
    { "data_not_sector_multiple", case_data_not_sector_multiple, false, false },
    { "sector_beyond_capacity", case_sector_beyond_capacity, false, false },
    { "unknown_type", case_unknown_type, false, false },
    { "notify_bad_queue", case_notify_bad_queue, false, false },
    { "indirect_nested", case_indirect_nested, true, false },
    { "indirect_and_next", case_indirect_and_next, true, false },
    { "indirect_bad_len", case_indirect_bad_len, true, false },
    { "indirect_outside_ram", case_indirect_outside_ram, true, false },
};

/* ---- driver -------------------------------------------------------------------------------- */

/* Initialised again and a normal one-sector read returns the pattern. */
static bool recovers(struct vio_dev *d)
{
    struct vio_result res;
    if (!vio_init(d, blk_wanted(), 1, false))
        return false;
    memset(big, 0xa5, SECTOR_SIZE);
    int st = blk_request(d, VIRTIO_BLK_T_IN, opts.sector, phys(big), SECTOR_SIZE, &res);
    return st == VIRTIO_BLK_S_OK && memcmp(big, expect, SECTOR_SIZE) == 0;
}

void test_hostile(struct vio_dev *devs, unsigned n)
{
    struct vio_dev *d = NULL;
    struct vio_result res;

    for (unsigned i = 0; i < n && !d; i++)
        if (devs[i].ok && devs[i].type == VIRTIO_ID_BLOCK)
            d = &devs[i];
    if (!d) {
        vio_check(false, NULL, "no virtio-blk device for the hostile cases");
        return;
    }
    case_timeout_us = opts.timeout_us / 4;
    if (!vio_init(d, blk_wanted(), 1, true))
        return;
    capacity = vio_config_read(d, VIRTIO_BLK_CFG_CAPACITY, 8);
    if (opts.sector >= capacity || HOSTILE_SECTORS > capacity - opts.sector) {
        vio_check(false, d, "the disk is too small for sector= + the hostile cases");
        return;
    }
    blk_pattern(expect, opts.sector, 1);
    int st = blk_request(d, VIRTIO_BLK_T_OUT, opts.sector, phys(expect), SECTOR_SIZE, &res);
    vio_check(st == VIRTIO_BLK_S_OK, d, "pattern written before the hostile cases");
    rt_printf("hostile: dev=%s qsize=%u indirect=%s event_idx=%s timeout_ms=%llu\n",
              vio_bdf(d->bdf), d->q[0].size, vio_indirect(d) ? "yes" : "no",
              d->accepted & VIRTIO_F_EVENT_IDX ? "yes" : "no",
              rt_udivmod64(case_timeout_us, 1000, NULL));

    char only[CASE_NAME_MAX];
    bool have_only = rt_cmdline_get(vio_boot->cmdline, "case", only, sizeof(only));
    for (unsigned c = 0; c < ARRAY_SIZE(cases); c++) {
        if (have_only && strcmp(only, cases[c].name))
            continue;
        if (cases[c].needs_indirect && !vio_indirect(d)) {
            rt_printf("hostile: case=%s skipped=indirect_not_negotiated\n", cases[c].name);
            continue;
        }
        uint32_t cfg0 = vio_config_irqs(d);
        bool done = cases[c].run(d, &res);
        uint8_t status = vio_status(d);
        uint8_t req_status = blk_status;
        rt_printf("hostile: case=%s completed=%s", cases[c].name, done ? "yes" : "no");
        if (done)
            rt_printf(" used_id=%u used_len=%u", res.used_id, res.used_len);
        rt_printf(" req_status=0x%x device_status=0x%x needs_reset=%s config_irqs=%u",
                  req_status, status, status & VIRTIO_STATUS_NEEDS_RESET ? "yes" : "no",
                  vio_config_irqs(d) - cfg0);
        if (cases[c].legal) {
            bool data_ok = memcmp(big, expect, SECTOR_SIZE) == 0;
            rt_printf(" data=%s", data_ok ? "ok" : "bad");
            vio_check(done && req_status == VIRTIO_BLK_S_OK && data_ok, d,
                      "a header split over two descriptors is legal and must work");
        }
        bool ok = recovers(d);
        rt_printf(" recovered=%s\n", ok ? "yes" : "no");
        vio_check(ok, d, "works again after a reset");
        if (!ok)
            return;
    }
    vio_check(vio_reset(d), d, "reset after the hostile cases");
    rt_printf("hostile: survived\n");
}
