/* virtio_9p.c - virtio_probe's test=9p: the first virtio-9p device (5.x "9P transport" of the
 * virtio 1.2 specification): its mount tag from the device configuration, then a 9P2000.L
 * session written from the protocol, one message per chain (the T-message device-readable,
 * room for the R-message device-writable) on request queue 0:
 *   Tversion, Tattach, Twalk to hello.txt, Tlopen, Tread   "9p: read bytes=N data=<text>"
 *   Twalk of ".." (refused)                                  "9p: walk-dotdot ecode=N"
 *   Tlcreate from-guest.txt, Twrite                          "9p: create ecode=N written=N"
 * A reply's type and size are checked against the used length; an Rlerror's errno is printed
 * as ecode=N (0 for success), for the host to judge: a read-only share answers the create with
 * EROFS (30), `..` is refused with EPERM (1). */
#include "virtio_probe.h"

#define VIRTIO_9P_MOUNT_TAG (1ULL << 0)
#define P9_MSIZE 8192
#define P9_RLERROR 7
#define P9_TLOPEN 12
#define P9_TLCREATE 14
#define P9_TVERSION 100
#define P9_TATTACH 104
#define P9_TWALK 110
#define P9_TREAD 116
#define P9_TWRITE 118
#define P9_ROOT 1
#define P9_FILE 2
#define P9_DIR 3
#define P9_O_RDWR 2
#define TAG_MAX 64

static uint8_t tx[P9_MSIZE] __attribute__((aligned(4096)));
static uint8_t rx[P9_MSIZE] __attribute__((aligned(4096)));
static uint32_t tx_len;
static const char guest_line[] = "written by the guest";

static void put8(uint8_t v) { tx[tx_len++] = v; }
static void put16(uint16_t v) { put8((uint8_t)v); put8((uint8_t)(v >> 8)); }
static void put32(uint32_t v) { put16((uint16_t)v); put16((uint16_t)(v >> 16)); }
static void put64(uint64_t v) { put32((uint32_t)v); put32((uint32_t)(v >> 32)); }
static void put_str(const char *s)
{
    uint16_t n = (uint16_t)strlen(s);
    put16(n);
    memcpy(&tx[tx_len], s, n);
    tx_len += n;
}
static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Starts a T-message of type `type` (tag 1). */
static void begin(uint8_t type)
{
    tx_len = 4;
    put8(type);
    put16(1);
}

/* Sends the message; returns its errno (0: the R-message of its type came back), or -1 when
 * the exchange itself failed (no completion, a reply of the wrong size or type). */
static int rpc(struct vio_dev *d, const char *what)
{
    struct vio_result res;
    uint8_t type = tx[4];
    tx[0] = (uint8_t)tx_len;
    tx[1] = (uint8_t)(tx_len >> 8);
    tx[2] = tx[3] = 0;
    memset(rx, 0, sizeof(rx));
    struct vio_buf bufs[2] = { { (uintptr_t)tx, tx_len, false },
                               { (uintptr_t)rx, sizeof(rx), true } };
    if (!vio_run(d, 0, bufs, 2, vio_indirect(d), opts.timeout_us, &res)) {
        rt_printf("9p: %s timed out\n", what);
        vio_check(false, d, "9p request timed out");
        return -1;
    }
    bool sane = res.used_len >= 7 && res.used_len <= sizeof(rx) && get32(rx) == res.used_len;
    if (sane && rx[4] == P9_RLERROR && res.used_len == 11)
        return (int)get32(&rx[7]);
    if (!sane || rx[4] != type + 1) {
        rt_printf("9p: %s reply type=%u used_len=%u size=%u\n", what, rx[4], res.used_len,
                  get32(rx));
        vio_check(false, d, "9p reply of the wrong type or size");
        return -1;
    }
    return 0;
}

static void walk1(uint32_t fid, uint32_t newfid, const char *name)
{
    begin(P9_TWALK);
    put32(fid);
    put32(newfid);
    put16(name ? 1 : 0);
    if (name)
        put_str(name);
}

void test_9p(struct vio_dev *devs, unsigned n)
{
    struct vio_dev *d = NULL;
    char tag[TAG_MAX + 1];
    int e;

    for (unsigned i = 0; i < n && !d; i++)
        if (devs[i].ok && devs[i].type == VIRTIO_ID_9P)
            d = &devs[i];
    if (!d) {
        vio_check(false, NULL, "no virtio-9p device");
        return;
    }
    if (!vio_init(d, VIRTIO_9P_MOUNT_TAG | opts.ring_features, 1, true))
        return;
    vio_check((d->accepted & VIRTIO_9P_MOUNT_TAG) != 0, d, "9p offers MOUNT_TAG");
    unsigned len = (unsigned)vio_config_read(d, 0, 2);
    unsigned shown = len < TAG_MAX ? len : TAG_MAX;
    for (unsigned i = 0; i < shown; i++)
        tag[i] = (char)vio_config_read(d, 2 + i, 1);
    tag[shown] = 0;
    rt_printf("9p: dev=%s tag_len=%u tag=%s\n", vio_bdf(d->bdf), len, tag);

    begin(P9_TVERSION);
    put32(P9_MSIZE);
    put_str("9P2000.L");
    e = rpc(d, "Tversion");
    rt_printf("9p: version ecode=%d msize=%u\n", e, e ? 0 : get32(&rx[7]));
    begin(P9_TATTACH);
    put32(P9_ROOT);
    put32(~0u);
    put_str("root");
    put_str("");
    put32(0);
    e = rpc(d, "Tattach");
    rt_printf("9p: attach ecode=%d qid_type=0x%x\n", e, e ? 0 : rx[7]);
    if (e)
        return;

    walk1(P9_ROOT, P9_FILE, "hello.txt");
    e = rpc(d, "Twalk");
    if (!e) {
        begin(P9_TLOPEN);
        put32(P9_FILE);
        put32(0);
        e = rpc(d, "Tlopen");
    }
    if (!e) {
        begin(P9_TREAD);
        put32(P9_FILE);
        put64(0);
        put32(256);
        e = rpc(d, "Tread");
    }
    uint32_t got = e ? 0 : get32(&rx[7]);
    rt_printf("9p: read ecode=%d bytes=%u data=", e, got);
    rt_print_bytes(&rx[11], got < 256 ? got : 256);
    rt_printf("\n");

    walk1(P9_ROOT, 9, "..");
    rt_printf("9p: walk-dotdot ecode=%d\n", rpc(d, "Twalk .."));

    walk1(P9_ROOT, P9_DIR, NULL);
    e = rpc(d, "Twalk (clone)");
    if (!e) {
        begin(P9_TLCREATE);
        put32(P9_DIR);
        put_str("from-guest.txt");
        put32(P9_O_RDWR);
        put32(0644);
        put32(0);
        e = rpc(d, "Tlcreate");
    }
    uint32_t written = 0;
    if (!e) {
        begin(P9_TWRITE);
        put32(P9_DIR);
        put64(0);
        put32(sizeof(guest_line) - 1);
        memcpy(&tx[tx_len], guest_line, sizeof(guest_line) - 1);
        tx_len += sizeof(guest_line) - 1;
        e = rpc(d, "Twrite");
        written = e ? 0 : get32(&rx[7]);
    }
    rt_printf("9p: create ecode=%d written=%u\n", e, written);
    rt_printf("9p: dev=%s irqs=%u\n", vio_bdf(d->bdf), vio_queue_irqs(d, 0));
    vio_check(vio_reset(d), d, "reset after the test");
}
