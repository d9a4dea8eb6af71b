/* virtio_console.c - virtio_probe's test=console and test=console-spam: the first virtio-console
 * device (5.3 of the virtio 1.2 specification), port 0 only (no MULTIPORT): receiveq 0,
 * transmitq 1.
 *
 * test=console writes a known line to the transmitq, lends the receiveq VQ_SIZE small buffers,
 * collects what arrives until a newline (or con_ms=, default 20000), reports it on COM1 as
 * "console: rx bytes=N line=<text>" and sends it back through the transmitq as
 * "virtio-console: echo <text>" (a two-descriptor chain). test=console-spam writes numbered
 * lines to the transmitq forever (for a host whose stdout nobody reads). */
#include "virtio_probe.h"

#define CON_RX 0
#define CON_TX 1
/* Small on purpose: a line from the host spans several receive buffers. */
#define CON_RX_BUF 8
#define CON_LINE_MAX 256
#define CON_CFG_MAX_NR_PORTS 4
#define CON_POLL_US 20
/* A spam write waits this long for the host to take it (the host may never read). */
#define CON_SPAM_TIMEOUT_US (3600ULL * 1000000)

static uint8_t rx_bufs[VQ_SIZE][CON_RX_BUF] __attribute__((aligned(64)));
static char tx_buf[CON_LINE_MAX + 64] __attribute__((aligned(64)));
static char tx_tail[CON_LINE_MAX + 2] __attribute__((aligned(64)));

static struct vio_dev *find_console(struct vio_dev *devs, unsigned n)
{
    for (unsigned i = 0; i < n; i++)
        if (devs[i].ok && devs[i].type == VIRTIO_ID_CONSOLE)
            return &devs[i];
    vio_check(false, NULL, "no virtio-console device");
    return NULL;
}

/* Lends receive buffer `i` (descriptor i, device-writable). */
static void rx_post(struct vio_dev *d, uint16_t i)
{
    struct vio_queue *q = &d->q[CON_RX];
    volatile struct vq_mem *m = q->mem;

    m->desc[i].addr = (uintptr_t)rx_bufs[i];
    m->desc[i].len = CON_RX_BUF;
    m->desc[i].flags = VRING_DESC_F_WRITE;
    m->desc[i].next = 0;
    m->avail_ring[q->avail_shadow & (q->size - 1)] = i;
    compiler_barrier();
    q->avail_shadow++;
    m->avail_idx = q->avail_shadow;
    full_barrier();
}

/* The next used receive buffer before the TSC reaches `deadline`. */
static bool rx_poll(struct vio_dev *d, uint64_t deadline, uint32_t *id, uint32_t *len)
{
    struct vio_queue *q = &d->q[CON_RX];

    for (;;) {
        if (q->mem->used_idx != q->used_seen) {
            compiler_barrier();
            volatile struct vring_used_elem *e = &q->mem->used_ring[q->used_seen & (q->size - 1)];
            *id = e->id;
            *len = e->len;
            q->used_seen++;
            return true;
        }
        if (cpu_rdtsc() >= deadline)
            return false;
        int v = idt_wait_us(CON_POLL_US);
        if (v >= 0 && v < 32) {
            rt_printf("error: exception vector=%d while waiting for console input\n", v);
            rt_fail("exception while waiting for a device");
        }
    }
}

/* Sends `len` bytes of tx_buf, and `tail_len` bytes of tx_tail in a second descriptor. */
static bool con_send(struct vio_dev *d, size_t len, size_t tail_len, uint64_t timeout_us)
{
    struct vio_buf b[2] = {
        { (uintptr_t)tx_buf, (uint32_t)len, false },
        { (uintptr_t)tx_tail, (uint32_t)tail_len, false },
    };
    struct vio_result res;
    return vio_run(d, CON_TX, b, tail_len ? 2 : 1, false, timeout_us, &res) && res.used_len == 0;
}

static bool con_setup(struct vio_dev *d)
{
    if (!vio_init(d, opts.ring_features, 2, true))
        return false;
    /* 5.3.3: SIZE, MULTIPORT and EMERG_WRITE are the device's to offer; it offers none. */
    vio_check((d->offered & 0xffffffffULL & ~(VIRTIO_F_INDIRECT_DESC | VIRTIO_F_EVENT_IDX)) == 0, d,
              "virtio-console offers no device features");
    return true;
}

void test_console(struct vio_dev *devs, unsigned n)
{
    struct vio_dev *d = find_console(devs, n);
    unsigned before = vio_failures();
    uint64_t budget_ms = 20000;
    char arg[24], line[CON_LINE_MAX];
    size_t got = 0;
    bool newline = false;
    uint32_t buffers = 0;

    if (!d || !con_setup(d))
        return;
    if (rt_cmdline_get(vio_boot->cmdline, "con_ms", arg, sizeof(arg)) &&
        (!rt_parse_u64(arg, &budget_ms) || budget_ms > 600000))
        rt_fail("con_ms= takes a number up to 600000");
    rt_printf("console: dev=%s features=0x%llx max_nr_ports=%u\n", vio_bdf(d->bdf), d->accepted,
              (unsigned)vio_config_read(d, CON_CFG_MAX_NR_PORTS, 4));

    for (uint16_t i = 0; i < d->q[CON_RX].size; i++)
        rx_post(d, i);
    vio_notify(d, CON_RX);

    static const char hello[] = "virtio-console: hello from the guest through the transmitq\n";
    memcpy(tx_buf, hello, sizeof(hello) - 1);
    vio_check(con_send(d, sizeof(hello) - 1, 0, opts.timeout_us), d, "transmit completed");
    rt_printf("console: ready rx_buffers=%u\n", d->q[CON_RX].size);

    uint64_t deadline = cpu_rdtsc() + budget_ms * 1000 * rt_tsc_mhz();
    while (!newline) {
        uint32_t id, len;
        if (!rx_poll(d, deadline, &id, &len))
            break;
        buffers++;
        if (id >= d->q[CON_RX].size || len > CON_RX_BUF) {
            vio_check(false, d, "used element names no receive buffer or overflows it");
            break;
        }
        for (uint32_t k = 0; k < len && !newline; k++) {
            uint8_t c = rx_bufs[id][k];
            if (c == '\n')
                newline = true;
            else if (got < sizeof(line) - 1)
                line[got++] = (char)c;
        }
        rx_post(d, (uint16_t)id);
        vio_notify(d, CON_RX);
    }
    line[got] = 0;
    rt_printf("console: rx bytes=%u buffers=%u line=%s\n", (unsigned)got, buffers, line);
    vio_check(newline, d, "a whole line arrived through the receiveq");

    static const char echo[] = "virtio-console: echo ";
    memcpy(tx_buf, echo, sizeof(echo) - 1);
    memcpy(tx_tail, line, got);
    tx_tail[got] = '\n';
    vio_check(con_send(d, sizeof(echo) - 1, got + 1, opts.timeout_us), d, "echo completed");
    rt_printf("console: rx_irqs=%u tx_irqs=%u\n", vio_queue_irqs(d, CON_RX),
              vio_queue_irqs(d, CON_TX));
    vio_check(vio_reset(d), d, "reset after the test");
    if (vio_failures() == before)
        rt_printf("console: ok\n");
}

/* Writes numbered lines to the transmitq until the VM is stopped. */
void test_console_spam(struct vio_dev *devs, unsigned n)
{
    struct vio_dev *d = find_console(devs, n);
    static const char text[] = " of virtio console output nobody has to read\n";

    if (!d || !con_setup(d))
        return;
    rt_printf("console-spam: writing\n");
    for (uint32_t i = 0;; i++) {
        /* "spam: line " then the number in decimal, then the text. */
        char num[12];
        int k = 0;
        uint32_t v = i;
        do {
            num[k++] = (char)('0' + v % 10);
            v /= 10;
        } while (v);
        size_t len = 0;
        memcpy(tx_buf, "spam: line ", 11);
        len = 11;
        while (k)
            tx_buf[len++] = num[--k];
        memcpy(tx_buf + len, text, sizeof(text) - 1);
        len += sizeof(text) - 1;
        if (!con_send(d, len, 0, CON_SPAM_TIMEOUT_US)) {
            rt_printf("console-spam: a write was not taken within an hour\n");
            return;
        }
    }
}
