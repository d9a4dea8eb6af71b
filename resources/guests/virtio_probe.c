/* virtio_probe - a PVH guest with a small virtio 1.x PCI driver (virtio_pci.c), written from the
 * virtio 1.2 specification as an independent check of a VMM's virtio devices. It finds every
 * virtio-pci function on bus 0 and prints one line each; `test=` (comma-separated) then picks
 * what it does with them:
 *   list      initialise every device and reset it again (the default)
 *   rng       virtio-rng: 4 KiB twice, compared
 *   blk       virtio-blk, every disk: config, serial, a pattern written to sectors N..N+7
 *             (`sector=N`), read back and compared, flush
 *   blk-read  virtio-blk, every disk: read sector N, print its CRC-32 and first bytes
 *   blk-ro    virtio-blk, every disk: RO offered, a write fails with IOERR and changes nothing
 *   hostile   malformed chains to the first disk (virtio_hostile.c)
 *   net       the first virtio-net card: ARP and ICMP echo both ways (virtio_net.c; ip=,
 *             peer=, pings=, net_ms=)
 *   9p        the first virtio-9p device: its tag, a 9P2000.L session reading hello.txt,
 *             walking "..", creating and writing from-guest.txt (virtio_9p.c)
 * `accept=indirect,event_idx` also accepts those ring features when offered, `timeout_ms=` sets
 * the per-request timeout, `msix=off` leaves MSI-X off (completion by polling alone). It checks
 * its own results: each failed check prints "fail: ...", the last lines are
 * "virtio_probe: failures=N", then with failures "error: virtio_probe checks failed" (status
 * 255), else `action=` (default exit:0, status 1). README.md lists the lines. */
#include "virtio_probe.h"

#define DEFAULT_TIMEOUT_MS 2000
#define DEFAULT_SECTOR 8
#define RNG_BYTES 4096
#define RNG_MAX_REQUESTS 64
#define BLK_SECTORS 8
#define BLK_BYTES (BLK_SECTORS * SECTOR_SIZE)
#define TEST_MAX 64
#define ARG_MAX 64

struct acpi_info vio_acpi;
const struct rt_boot *vio_boot;
struct probe_opts opts;

static struct vio_dev devs[VIO_MAX_DEVICES];
static unsigned ndevs;

volatile struct virtio_blk_req_hdr blk_hdr __attribute__((aligned(16)));
volatile uint8_t blk_status __attribute__((aligned(16)));
static uint8_t buf_a[BLK_BYTES] __attribute__((aligned(4096)));
static uint8_t buf_b[BLK_BYTES] __attribute__((aligned(4096)));
static uint8_t id_buf[VIRTIO_BLK_ID_BYTES + 1] __attribute__((aligned(16)));

bool vio_indirect(const struct vio_dev *d) { return (d->accepted & VIRTIO_F_INDIRECT_DESC) != 0; }

static bool all_zero(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i])
            return false;
    return true;
}

static uint32_t crc32(const uint8_t *p, size_t n)
{
    uint32_t crc = 0xffffffffu;
    for (size_t i = 0; i < n; i++) {
        crc ^= p[i];
        for (int k = 0; k < 8; k++)
            crc = (crc >> 1) ^ (0xedb88320u & (0u - (crc & 1)));
    }
    return ~crc;
}

/* ---- list ------------------------------------------------------------------------------------ */

static unsigned queues_for(uint16_t type)
{
    if (type == VIRTIO_ID_NET)
        return 2;
    return type == VIRTIO_ID_RNG || type == VIRTIO_ID_BLOCK || type == VIRTIO_ID_9P ? 1 : 0;
}

static void test_list(void)
{
    for (unsigned i = 0; i < ndevs; i++) {
        struct vio_dev *d = &devs[i];
        if (!d->ok)
            continue;
        uint64_t wanted = d->type == VIRTIO_ID_BLOCK ? blk_wanted() : opts.ring_features;
        if (vio_init(d, wanted, queues_for(d->type), true))
            vio_check(vio_reset(d), d, "reset after init: status never reads 0");
    }
}

/* ---- rng ------------------------------------------------------------------------------------- */

/* Fills `buf` with RNG_BYTES from the device, as many requests as it takes. */
static bool rng_fill(struct vio_dev *d, uint8_t *buf, unsigned which)
{
    uint32_t got = 0, requests = 0;
    struct vio_result res;

    memset(buf, 0, RNG_BYTES);
    while (got < RNG_BYTES && requests < RNG_MAX_REQUESTS) {
        struct vio_buf b = { (uintptr_t)(buf + got), RNG_BYTES - got, true };
        requests++;
        if (!vio_run(d, 0, &b, 1, vio_indirect(d), opts.timeout_us, &res)) {
            vio_check(false, d, "rng request timed out");
            return false;
        }
        if (res.used_len > RNG_BYTES - got) {
            vio_check(false, d, "rng used length larger than the buffer");
            return false;
        }
        got += res.used_len;
    }
    rt_printf("rng: dev=%s buffer=%u bytes=%u requests=%u\n", vio_bdf(d->bdf), which, got, requests);
    vio_check(got == RNG_BYTES, d, "rng filled the buffer");
    return got == RNG_BYTES;
}

static void test_rng(void)
{
    unsigned found = 0, before = vio_failures();

    for (unsigned i = 0; i < ndevs; i++) {
        struct vio_dev *d = &devs[i];
        if (!d->ok || d->type != VIRTIO_ID_RNG)
            continue;
        found++;
        if (!vio_init(d, opts.ring_features, 1, true))
            continue;
        uint32_t cfg0 = vio_config_irqs(d);
        bool ok = rng_fill(d, buf_a, 1) && rng_fill(d, buf_b, 2);
        bool differ = memcmp(buf_a, buf_b, RNG_BYTES) != 0;
        bool nonzero = !all_zero(buf_a, RNG_BYTES) && !all_zero(buf_b, RNG_BYTES);
        rt_printf("rng: dev=%s bytes=%u differ=%s nonzero=%s irqs=%u config_irqs=%u\n",
                  vio_bdf(d->bdf), ok ? 2 * RNG_BYTES : 0, differ ? "yes" : "no",
                  nonzero ? "yes" : "no", vio_queue_irqs(d, 0), vio_config_irqs(d) - cfg0);
        vio_check(differ, d, "the two rng buffers differ");
        vio_check(nonzero, d, "rng buffers are not all zero");
        vio_check(!d->use_msix || vio_queue_irqs(d, 0) > 0, d, "rng queue interrupts arrive");
        vio_check(vio_reset(d), d, "reset after the test");
    }
    vio_check(found > 0, NULL, "no virtio-rng device");
    if (vio_failures() == before)
        rt_printf("rng: ok\n");
}

/* ---- blk ------------------------------------------------------------------------------------- */

uint64_t blk_wanted(void)
{
    return VIRTIO_BLK_F_SIZE_MAX | VIRTIO_BLK_F_SEG_MAX | VIRTIO_BLK_F_GEOMETRY | VIRTIO_BLK_F_RO |
           VIRTIO_BLK_F_BLK_SIZE | VIRTIO_BLK_F_FLUSH | opts.ring_features;
}

int blk_request(struct vio_dev *d, uint32_t type, uint64_t sector, uint64_t data, uint32_t len,
                struct vio_result *res)
{
    struct vio_buf bufs[3];
    unsigned n = 0;
    bool device_writes = type == VIRTIO_BLK_T_IN || type == VIRTIO_BLK_T_GET_ID;

    blk_hdr.type = type;
    blk_hdr.reserved = 0;
    blk_hdr.sector = sector;
    blk_status = BLK_STATUS_UNTOUCHED;
    bufs[n++] = (struct vio_buf){ (uintptr_t)&blk_hdr, sizeof(blk_hdr), false };
    if (len)
        bufs[n++] = (struct vio_buf){ data, len, device_writes };
    bufs[n++] = (struct vio_buf){ (uintptr_t)&blk_status, 1, true };
    if (!vio_run(d, 0, bufs, n, vio_indirect(d), opts.timeout_us, res))
        return BLK_TIMEOUT;
    return blk_status;
}

void blk_pattern(uint8_t *buf, uint64_t sector, unsigned sectors)
{
    for (unsigned s = 0; s < sectors; s++)
        for (unsigned i = 0; i < SECTOR_SIZE; i++)
            buf[s * SECTOR_SIZE + i] = (uint8_t)(opts.seed + 3 * (uint32_t)(sector + s) + i);
}

static const char *op_name(uint32_t type)
{
    switch (type) {
    case VIRTIO_BLK_T_IN:
        return "read";
    case VIRTIO_BLK_T_OUT:
        return "write";
    case VIRTIO_BLK_T_FLUSH:
        return "flush";
    default:
        return "get_id";
    }
}

/* One request with a "<prefix>: dev=.. op=.. status=.. used_len=.." line; returns the status. */
static int blk_op(const char *prefix, struct vio_dev *d, uint32_t type, uint64_t sector,
                  uint8_t *data, uint32_t len)
{
    struct vio_result res;
    int st = blk_request(d, type, sector, (uintptr_t)data, len, &res);

    rt_printf("%s: dev=%s op=%s", prefix, vio_bdf(d->bdf), op_name(type));
    if (type == VIRTIO_BLK_T_IN || type == VIRTIO_BLK_T_OUT)
        rt_printf(" sector=%llu sectors=%u", sector, len / SECTOR_SIZE);
    if (st == BLK_TIMEOUT)
        rt_printf(" status=timeout\n");
    else
        rt_printf(" status=%d used_len=%u irqs=%u\n", st, res.used_len, res.irqs);
    vio_check(st != BLK_TIMEOUT, d, "block request timed out");
    return st;
}

/* Initialises a disk and prints its configuration. False if it cannot be used. */
static bool blk_open(const char *prefix, struct vio_dev *d, uint64_t *capacity)
{
    if (!vio_init(d, blk_wanted(), 1, true))
        return false;
    *capacity = vio_config_read(d, VIRTIO_BLK_CFG_CAPACITY, 8);
    uint32_t blk_size = (d->accepted & VIRTIO_BLK_F_BLK_SIZE)
                            ? (uint32_t)vio_config_read(d, VIRTIO_BLK_CFG_BLK_SIZE, 4)
                            : SECTOR_SIZE;
    uint32_t seg_max = (d->accepted & VIRTIO_BLK_F_SEG_MAX)
                           ? (uint32_t)vio_config_read(d, VIRTIO_BLK_CFG_SEG_MAX, 4)
                           : 0;
    uint32_t size_max = (d->accepted & VIRTIO_BLK_F_SIZE_MAX)
                            ? (uint32_t)vio_config_read(d, VIRTIO_BLK_CFG_SIZE_MAX, 4)
                            : 0;
    rt_printf("%s: dev=%s capacity=%llu blk_size=%u seg_max=%u size_max=%u ro=%u flush=%u "
              "features=0x%llx\n",
              prefix, vio_bdf(d->bdf), *capacity, blk_size, seg_max, size_max,
              (d->accepted & VIRTIO_BLK_F_RO) != 0, (d->accepted & VIRTIO_BLK_F_FLUSH) != 0,
              d->accepted);
    return true;
}

static void blk_serial(struct vio_dev *d)
{
    struct vio_result res;

    memset(id_buf, 0, sizeof(id_buf));
    int st = blk_request(d, VIRTIO_BLK_T_GET_ID, 0, (uintptr_t)id_buf, VIRTIO_BLK_ID_BYTES, &res);
    rt_printf("blk: dev=%s serial=", vio_bdf(d->bdf));
    if (st == VIRTIO_BLK_S_OK)
        rt_print_bytes(id_buf, rt_strnlen((const char *)id_buf, VIRTIO_BLK_ID_BYTES));
    else if (st == VIRTIO_BLK_S_UNSUPP)
        rt_printf("unsupported");
    else
        rt_printf("none");
    rt_printf(" status=%d\n", st);
    vio_check(st != BLK_TIMEOUT, d, "GET_ID timed out");
}

static bool sectors_fit(struct vio_dev *d, uint64_t capacity, unsigned sectors)
{
    bool fit = opts.sector < capacity && sectors <= capacity - opts.sector;
    vio_check(fit, d, "sector= beyond the disk's capacity");
    return fit;
}

static void test_blk(void)
{
    unsigned found = 0, before = vio_failures();

    for (unsigned i = 0; i < ndevs; i++) {
        struct vio_dev *d = &devs[i];
        uint64_t capacity;
        if (!d->ok || d->type != VIRTIO_ID_BLOCK)
            continue;
        found++;
        unsigned dev_before = vio_failures();
        if (!blk_open("blk", d, &capacity))
            continue;
        blk_serial(d);
        if (!sectors_fit(d, capacity, BLK_SECTORS))
            continue;
        uint32_t cfg0 = vio_config_irqs(d);
        blk_pattern(buf_a, opts.sector, BLK_SECTORS);
        rt_printf("blk: dev=%s pattern seed=0x%x\n", vio_bdf(d->bdf), opts.seed);
        int st = blk_op("blk", d, VIRTIO_BLK_T_OUT, opts.sector, buf_a, BLK_BYTES);
        vio_check(st == VIRTIO_BLK_S_OK, d, "write status OK");
        memset(buf_b, 0xa5, BLK_BYTES);
        st = blk_op("blk", d, VIRTIO_BLK_T_IN, opts.sector, buf_b, BLK_BYTES);
        vio_check(st == VIRTIO_BLK_S_OK, d, "read status OK");
        unsigned mismatches = 0;
        for (unsigned k = 0; k < BLK_BYTES; k++)
            mismatches += buf_a[k] != buf_b[k];
        rt_printf("blk: dev=%s compare bytes=%u mismatches=%u\n", vio_bdf(d->bdf), BLK_BYTES,
                  mismatches);
        vio_check(mismatches == 0, d, "read returns what was written");
        if (d->accepted & VIRTIO_BLK_F_FLUSH) {
            st = blk_op("blk", d, VIRTIO_BLK_T_FLUSH, 0, NULL, 0);
            vio_check(st == VIRTIO_BLK_S_OK, d, "flush status OK");
        } else {
            rt_printf("blk: dev=%s op=flush status=not_offered\n", vio_bdf(d->bdf));
        }
        rt_printf("blk: dev=%s irqs=%u config_irqs=%u\n", vio_bdf(d->bdf), vio_queue_irqs(d, 0),
                  vio_config_irqs(d) - cfg0);
        vio_check(!d->use_msix || vio_queue_irqs(d, 0) > 0, d, "blk queue interrupts arrive");
        vio_check(vio_reset(d), d, "reset after the test");
        rt_printf("blk: dev=%s roundtrip=%s\n", vio_bdf(d->bdf),
                  vio_failures() == dev_before ? "ok" : "bad");
    }
    vio_check(found > 0, NULL, "no virtio-blk device");
    if (vio_failures() == before)
        rt_printf("blk: roundtrip ok disks=%u\n", found);
}

static void test_blk_read(void)
{
    unsigned found = 0;

    for (unsigned i = 0; i < ndevs; i++) {
        struct vio_dev *d = &devs[i];
        uint64_t capacity;
        if (!d->ok || d->type != VIRTIO_ID_BLOCK)
            continue;
        found++;
        if (!blk_open("blk-read", d, &capacity) || !sectors_fit(d, capacity, 1))
            continue;
        memset(buf_b, 0xa5, SECTOR_SIZE);
        struct vio_result res;
        int st = blk_request(d, VIRTIO_BLK_T_IN, opts.sector, (uintptr_t)buf_b, SECTOR_SIZE, &res);
        rt_printf("blk-read: dev=%s sector=%llu status=%d used_len=%u crc32=0x%08x head=",
                  vio_bdf(d->bdf), opts.sector, st, res.used_len, crc32(buf_b, SECTOR_SIZE));
        rt_print_bytes(buf_b, 16);
        rt_printf("\n");
        vio_check(st == VIRTIO_BLK_S_OK, d, "read status OK");
        vio_check(vio_reset(d), d, "reset after the test");
    }
    vio_check(found > 0, NULL, "no virtio-blk device");
}

static void test_blk_ro(void)
{
    unsigned found = 0, before = vio_failures();

    for (unsigned i = 0; i < ndevs; i++) {
        struct vio_dev *d = &devs[i];
        uint64_t capacity;
        if (!d->ok || d->type != VIRTIO_ID_BLOCK)
            continue;
        found++;
        if (!blk_open("blk-ro", d, &capacity) || !sectors_fit(d, capacity, 1))
            continue;
        vio_check((d->offered & VIRTIO_BLK_F_RO) != 0, d, "read-only disk offers VIRTIO_BLK_F_RO");
        /* Read, write the complement (so any data written shows), read again. */
        int st = blk_op("blk-ro", d, VIRTIO_BLK_T_IN, opts.sector, buf_b, SECTOR_SIZE);
        vio_check(st == VIRTIO_BLK_S_OK, d, "read from a read-only disk works");
        for (unsigned k = 0; k < SECTOR_SIZE; k++)
            buf_a[k] = (uint8_t)~buf_b[k];
        st = blk_op("blk-ro", d, VIRTIO_BLK_T_OUT, opts.sector, buf_a, SECTOR_SIZE);
        vio_check(st == VIRTIO_BLK_S_IOERR, d, "write to a read-only disk fails with IOERR");
        uint8_t *after = buf_a + SECTOR_SIZE;
        st = blk_op("blk-ro", d, VIRTIO_BLK_T_IN, opts.sector, after, SECTOR_SIZE);
        bool unchanged = st == VIRTIO_BLK_S_OK && memcmp(after, buf_b, SECTOR_SIZE) == 0;
        rt_printf("blk-ro: dev=%s unchanged=%s\n", vio_bdf(d->bdf), unchanged ? "yes" : "no");
        vio_check(unchanged, d, "a read-only disk keeps its data after a write");
        vio_check(vio_reset(d), d, "reset after the test");
    }
    vio_check(found > 0, NULL, "no virtio-blk device");
    if (vio_failures() == before)
        rt_printf("blk-ro: ok\n");
}

/* ---- main ------------------------------------------------------------------------------------ */

struct test {
    const char *name;
    void (*run)(void);
};

static void run_hostile(void) { test_hostile(devs, ndevs); }
static void run_net(void) { test_net(devs, ndevs); }
static void run_console(void) { test_console(devs, ndevs); }
static void run_9p(void) { test_9p(devs, ndevs); }
static void run_console_spam(void) { test_console_spam(devs, ndevs); }

static const struct test tests[] = {
    { "list", test_list },         { "rng", test_rng },         { "blk", test_blk },
    { "blk-read", test_blk_read }, { "blk-ro", test_blk_ro },   { "hostile", run_hostile },
    { "net", run_net },            { "console", run_console },  { "console-spam", run_console_spam },
    { "9p", run_9p },
};

static uint64_t cmdline_number(const char *key, uint64_t fallback, uint64_t max)
{
    char arg[ARG_MAX];
    uint64_t v = fallback;
    if (rt_cmdline_get(vio_boot->cmdline, key, arg, sizeof(arg)) &&
        (!rt_parse_u64(arg, &v) || v > max)) {
        rt_printf("error: bad %s=%s\n", key, arg);
        rt_fail("bad command line");
    }
    return v;
}

/* Calls fn(word, ctx) for each comma-separated word of `list` (modified in place). */
static void for_each_word(char *list, void (*fn)(const char *, void *), void *ctx)
{
    char *w = list;
    for (char *p = list;; p++) {
        if (*p == ',' || *p == 0) {
            bool end = *p == 0;
            *p = 0;
            if (*w)
                fn(w, ctx);
            if (end)
                return;
            w = p + 1;
        }
    }
}

static void accept_word(const char *w, void *ctx)
{
    (void)ctx;
    if (!strcmp(w, "indirect"))
        opts.ring_features |= VIRTIO_F_INDIRECT_DESC;
    else if (!strcmp(w, "event_idx"))
        opts.ring_features |= VIRTIO_F_EVENT_IDX;
    else {
        rt_printf("error: accept= knows indirect and event_idx, not %s\n", w);
        rt_fail("bad command line");
    }
}

static void run_word(const char *w, void *ctx)
{
    (void)ctx;
    for (unsigned i = 0; i < ARRAY_SIZE(tests); i++) {
        if (!strcmp(w, tests[i].name)) {
            rt_printf("test: %s\n", w);
            tests[i].run();
            return;
        }
    }
    rt_printf("error: unknown test %s\n", w);
    rt_fail("bad command line");
}

void guest_main(const struct rt_boot *boot)
{
    char arg[TEST_MAX];

    vio_boot = boot;
    rt_printf("guest: virtio_probe\n");
    acpi_scan(&vio_acpi, boot->rsdp, false);
    if (vio_acpi.have_mcfg)
        pci_set_ecam_base(vio_acpi.ecam_base);
    rt_printf("pci: ecam=0x%llx source=%s\n", pci_ecam_address(0, 0),
              vio_acpi.have_mcfg ? "mcfg" : "layout");

    opts.timeout_us = cmdline_number("timeout_ms", DEFAULT_TIMEOUT_MS, 600000) * 1000;
    opts.sector = cmdline_number("sector", DEFAULT_SECTOR, ~0ULL >> 10);
    opts.seed = (uint8_t)cmdline_number("seed", cpu_rdtsc() & 0xff, 0xff);
    if (rt_cmdline_get(boot->cmdline, "accept", arg, sizeof(arg)))
        for_each_word(arg, accept_word, NULL);
    if (rt_cmdline_get(boot->cmdline, "msix", arg, sizeof(arg))) {
        if (strcmp(arg, "on") && strcmp(arg, "off"))
            rt_fail("msix= is on or off");
        vio_no_msix = !strcmp(arg, "off");
    }

    ndevs = vio_scan(devs, VIO_MAX_DEVICES);
    if (!rt_cmdline_get(boot->cmdline, "test", arg, sizeof(arg)))
        memcpy(arg, "list", sizeof("list"));
    for_each_word(arg, run_word, NULL);

    rt_printf("virtio_probe: failures=%u\n", vio_failures());
    if (vio_failures())
        rt_fail("virtio_probe checks failed");
    rt_action_from_cmdline(boot, &vio_acpi);
}
