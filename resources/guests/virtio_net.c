/* virtio_net.c - virtio_probe's test=net: the first virtio-net card (5.1 of the virtio 1.2
 * specification) on a small IPv4 stack of its own. It reads the MAC and link status, lends the
 * receive queue VQ_SIZE buffers, sends an ARP request for `peer=` and, once answered, an ICMP
 * echo request; meanwhile it answers ARP requests for `ip=` and ICMP echo requests to it, so
 * the host can ping it. It ends when it has its echo reply and has answered `pings=` echo
 * requests, or after `net_ms=`. The driver takes VERSION_1, MAC and STATUS only (no offloads,
 * no mergeable buffers): every frame arrives whole, after a 12-byte header, in one buffer. */
#include "virtio_probe.h"

#define NET_RX 0
#define NET_TX 1
#define NET_HDR 12
#define RX_BUF 2048
#define ETH_HLEN 14
#define ETH_P_IP 0x0800
#define ETH_P_ARP 0x0806
#define ICMP_ECHO_REPLY 0
#define ICMP_ECHO_REQUEST 8
#define PING_ID 0x7676
#define RX_POLL_US 20

#define VIRTIO_NET_F_MAC (1ULL << 5)
#define VIRTIO_NET_F_STATUS (1ULL << 16)

static uint8_t rx_bufs[VQ_SIZE][RX_BUF] __attribute__((aligned(4096)));
static uint8_t tx_hdr[NET_HDR] __attribute__((aligned(16)));
static uint8_t tx_frame[RX_BUF] __attribute__((aligned(16)));

struct net_state {
    struct vio_dev *d;
    uint8_t mac[6];
    uint8_t ip[4];
    uint8_t peer_ip[4];
    uint8_t peer_mac[6];
    bool peer_known;
    bool ping_sent;
    bool ping_replied;
    uint32_t answered; /* echo requests answered */
    uint32_t rx, tx, tx_failed, ignored;
    uint32_t bad_num_buffers; /* frames whose num_buffers was not 1 */
};

static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }

/* The Internet checksum (RFC 1071) of `len` bytes. */
static uint16_t inet_csum(const uint8_t *p, size_t len)
{
    uint32_t sum = 0;
    for (size_t i = 0; i + 1 < len; i += 2)
        sum += get16(p + i);
    if (len & 1)
        sum += (uint32_t)p[len - 1] << 8;
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

static bool parse_ip(const char *s, uint8_t ip[4])
{
    for (int i = 0; i < 4; i++) {
        uint32_t v = 0;
        int digits = 0;
        while (*s >= '0' && *s <= '9' && digits < 4) {
            v = v * 10 + (uint32_t)(*s++ - '0');
            digits++;
        }
        if (!digits || v > 255 || (i < 3 && *s++ != '.'))
            return false;
        ip[i] = (uint8_t)v;
    }
    return *s == 0;
}

static void ip_arg(const char *key, const char *fallback, uint8_t ip[4])
{
    char arg[32];
    if (!rt_cmdline_get(vio_boot->cmdline, key, arg, sizeof(arg)))
        memcpy(arg, fallback, strlen(fallback) + 1);
    if (!parse_ip(arg, ip)) {
        rt_printf("error: bad %s=%s\n", key, arg);
        rt_fail("bad command line");
    }
}

static const char *ip_str(const uint8_t ip[4])
{
    static char bufs[2][16];
    static unsigned which;
    char *b = bufs[which++ & 1], *p = b;
    for (int i = 0; i < 4; i++) {
        unsigned v = ip[i];
        if (v >= 100)
            *p++ = (char)('0' + v / 100);
        if (v >= 10)
            *p++ = (char)('0' + v / 10 % 10);
        *p++ = (char)('0' + v % 10);
        *p++ = i < 3 ? '.' : 0;
    }
    return b;
}

static void print_mac(const char *label, const uint8_t m[6])
{
    rt_printf("%s%02x:%02x:%02x:%02x:%02x:%02x", label, m[0], m[1], m[2], m[3], m[4], m[5]);
}

/* Lends receive buffer `i` to the device (descriptor i, one device-writable buffer). */
static void rx_post(struct vio_dev *d, uint16_t i)
{
    struct vio_queue *q = &d->q[NET_RX];
    volatile struct vq_mem *m = q->mem;

    m->desc[i].addr = (uintptr_t)rx_bufs[i];
    m->desc[i].len = RX_BUF;
    m->desc[i].flags = VRING_DESC_F_WRITE;
    m->desc[i].next = 0;
    m->avail_ring[q->avail_shadow & (q->size - 1)] = i;
    compiler_barrier();
    q->avail_shadow++;
    m->avail_idx = q->avail_shadow;
    full_barrier();
}

/* Waits, until the TSC reaches `deadline_tsc`, for the device to return a receive buffer: its
 * descriptor and the bytes written. Polls the used ring (interrupts enabled in between, so
 * MSI-X deliveries are counted), one buffer at a time; vio_wait's wait for the interrupt of each
 * request would add up to its grace period per frame when several arrive with one interrupt. */
static bool rx_poll(struct vio_dev *d, uint64_t deadline_tsc, uint32_t *id, uint32_t *len)
{
    struct vio_queue *q = &d->q[NET_RX];

    for (;;) {
        if (q->mem->used_idx != q->used_seen) {
            compiler_barrier();
            volatile struct vring_used_elem *e = &q->mem->used_ring[q->used_seen & (q->size - 1)];
            *id = e->id;
            *len = e->len;
            q->used_seen++;
            return true;
        }
        if (cpu_rdtsc() >= deadline_tsc)
            return false;
        int v = idt_wait_us(RX_POLL_US);
        if (v >= 0 && v < 32) {
            rt_printf("error: exception vector=%d while waiting for frames\n", v);
            rt_fail("exception while waiting for a device");
        }
    }
}

/* Sends `len` bytes of tx_frame after a zero header. */
static void net_send(struct net_state *s, size_t len)
{
    struct vio_buf b[2] = {
        { (uintptr_t)tx_hdr, NET_HDR, false },
        { (uintptr_t)tx_frame, (uint32_t)len, false },
    };
    struct vio_result res;

    memset(tx_hdr, 0, sizeof(tx_hdr));
    if (vio_run(s->d, NET_TX, b, 2, false, opts.timeout_us, &res)) {
        s->tx++;
    } else {
        s->tx_failed++;
        s->d->wedged = false;
        rt_printf("net: transmit timed out\n");
    }
}

static void eth_header(struct net_state *s, const uint8_t dst[6], uint16_t type)
{
    memcpy(tx_frame, dst, 6);
    memcpy(tx_frame + 6, s->mac, 6);
    put16(tx_frame + 12, type);
}

static void send_arp(struct net_state *s, uint16_t op, const uint8_t tha[6], const uint8_t tip[4])
{
    static const uint8_t bcast[6] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
    uint8_t *a = tx_frame + ETH_HLEN;

    eth_header(s, op == 1 ? bcast : tha, ETH_P_ARP);
    put16(a, 1);            /* Ethernet */
    put16(a + 2, ETH_P_IP); /* IPv4 */
    a[4] = 6;
    a[5] = 4;
    put16(a + 6, op);
    memcpy(a + 8, s->mac, 6);
    memcpy(a + 14, s->ip, 4);
    if (op == 1)
        memset(a + 18, 0, 6);
    else
        memcpy(a + 18, tha, 6);
    memcpy(a + 24, tip, 4);
    memset(a + 28, 0, 60 - ETH_HLEN - 28); /* pad to the 60-byte minimum */
    net_send(s, 60);
}

/* An ICMP echo (request or reply) of `payload_len` bytes to `dst_ip` at `dst_mac`. */
static void send_icmp(struct net_state *s, const uint8_t dst_mac[6], const uint8_t dst_ip[4],
                      uint8_t type, uint16_t id, uint16_t seq, const uint8_t *payload,
                      size_t payload_len)
{
    uint8_t *ip = tx_frame + ETH_HLEN, *icmp = ip + 20;
    size_t total = 20 + 8 + payload_len;

    eth_header(s, dst_mac, ETH_P_IP);
    ip[0] = 0x45;
    ip[1] = 0;
    put16(ip + 2, (uint16_t)total);
    put16(ip + 4, seq); /* identification */
    put16(ip + 6, 0x4000); /* DF */
    ip[8] = 64;
    ip[9] = 1; /* ICMP */
    put16(ip + 10, 0);
    memcpy(ip + 12, s->ip, 4);
    memcpy(ip + 16, dst_ip, 4);
    put16(ip + 10, inet_csum(ip, 20));
    icmp[0] = type;
    icmp[1] = 0;
    put16(icmp + 2, 0);
    put16(icmp + 4, id);
    put16(icmp + 6, seq);
    memcpy(icmp + 8, payload, payload_len);
    put16(icmp + 2, inet_csum(icmp, 8 + payload_len));
    net_send(s, ETH_HLEN + total < 60 ? 60 : ETH_HLEN + total);
}

static void send_ping(struct net_state *s)
{
    static const uint8_t payload[] = "virtio_probe ping";
    send_icmp(s, s->peer_mac, s->peer_ip, ICMP_ECHO_REQUEST, PING_ID, 1, payload, sizeof(payload));
    s->ping_sent = true;
    rt_printf("net: ping request to=%s seq=1\n", ip_str(s->peer_ip));
}

static void on_arp(struct net_state *s, const uint8_t *a, size_t len)
{
    if (len < 28 || get16(a) != 1 || get16(a + 2) != ETH_P_IP || a[4] != 6 || a[5] != 4)
        return;
    uint16_t op = get16(a + 6);
    const uint8_t *sha = a + 8, *spa = a + 14, *tpa = a + 24;
    if (memcmp(tpa, s->ip, 4))
        return;
    if (op == 1) {
        rt_printf("net: arp request from=%s", ip_str(spa));
        print_mac(" mac=", sha);
        rt_printf(" answered\n");
        uint8_t tha[6], tip[4];
        memcpy(tha, sha, 6);
        memcpy(tip, spa, 4);
        send_arp(s, 2, tha, tip);
    } else if (op == 2 && !memcmp(spa, s->peer_ip, 4) && !s->peer_known) {
        memcpy(s->peer_mac, sha, 6);
        s->peer_known = true;
        rt_printf("net: arp reply from=%s", ip_str(spa));
        print_mac(" mac=", sha);
        rt_printf("\n");
        send_ping(s);
    }
}

static void on_ipv4(struct net_state *s, const uint8_t *eth, const uint8_t *ip, size_t len)
{
    if (len < 20 || (ip[0] >> 4) != 4 || ip[9] != 1 || memcmp(ip + 16, s->ip, 4))
        return;
    size_t ihl = (size_t)(ip[0] & 0xf) * 4, total = get16(ip + 2);
    if (ihl < 20 || total > len || total < ihl + 8 || inet_csum(ip, ihl) != 0)
        return;
    const uint8_t *icmp = ip + ihl;
    size_t icmp_len = total - ihl;
    if (inet_csum(icmp, icmp_len) != 0) {
        rt_printf("net: icmp with a bad checksum from=%s\n", ip_str(ip + 12));
        return;
    }
    uint16_t id = get16(icmp + 4), seq = get16(icmp + 6);
    if (icmp[0] == ICMP_ECHO_REQUEST) {
        uint8_t mac[6], src[4];
        memcpy(mac, eth + 6, 6);
        memcpy(src, ip + 12, 4);
        s->answered++;
        rt_printf("net: echo request from=%s id=0x%x seq=%u bytes=%u answered\n", ip_str(src), id,
                  seq, (unsigned)(icmp_len - 8));
        /* The payload goes from the receive buffer to tx_frame (separate buffers). */
        send_icmp(s, mac, src, ICMP_ECHO_REPLY, id, seq, icmp + 8, icmp_len - 8);
    } else if (icmp[0] == ICMP_ECHO_REPLY && id == PING_ID && !memcmp(ip + 12, s->peer_ip, 4)) {
        s->ping_replied = true;
        rt_printf("net: ping reply from=%s seq=%u ttl=%u\n", ip_str(ip + 12), seq, ip[8]);
    }
}

static void on_frame(struct net_state *s, const uint8_t *buf, uint32_t len)
{
    s->rx++;
    if (len < NET_HDR + ETH_HLEN) {
        vio_check(false, s->d, "received frame shorter than the header and an Ethernet header");
        return;
    }
    uint16_t num_buffers = (uint16_t)(buf[10] | buf[11] << 8);
    /* 5.1.6.4.1: without VIRTIO_NET_F_MRG_RXBUF the device sets it to 1 (QEMU 7.2 leaves 0). */
    if (num_buffers != 1)
        s->bad_num_buffers++;
    const uint8_t *eth = buf + NET_HDR;
    size_t flen = len - NET_HDR;
    switch (get16(eth + 12)) {
    case ETH_P_ARP:
        on_arp(s, eth + ETH_HLEN, flen - ETH_HLEN);
        break;
    case ETH_P_IP:
        on_ipv4(s, eth, eth + ETH_HLEN, flen - ETH_HLEN);
        break;
    default:
        s->ignored++;
    }
}

void test_net(struct vio_dev *devs, unsigned n)
{
    static struct net_state st;
    struct net_state *s = &st;
    uint64_t pings = 3, budget_us;
    char arg[24];
    unsigned before = vio_failures();

    memset(s, 0, sizeof(*s));
    for (unsigned i = 0; i < n && !s->d; i++)
        if (devs[i].ok && devs[i].type == VIRTIO_ID_NET)
            s->d = &devs[i];
    if (!s->d) {
        vio_check(false, NULL, "no virtio-net device");
        return;
    }
    ip_arg("ip", "10.0.2.15", s->ip);
    ip_arg("peer", "10.0.2.1", s->peer_ip);
    if (rt_cmdline_get(vio_boot->cmdline, "pings", arg, sizeof(arg)) &&
        (!rt_parse_u64(arg, &pings) || pings > 1000))
        rt_fail("pings= takes a number up to 1000");
    budget_us = 20000000;
    if (rt_cmdline_get(vio_boot->cmdline, "net_ms", arg, sizeof(arg))) {
        uint64_t ms;
        if (!rt_parse_u64(arg, &ms) || ms > 600000)
            rt_fail("net_ms= takes a number up to 600000");
        budget_us = ms * 1000;
    }

    struct vio_dev *d = s->d;
    if (!vio_init(d, VIRTIO_NET_F_MAC | VIRTIO_NET_F_STATUS | opts.ring_features, 2, true))
        return;
    vio_check((d->offered & VIRTIO_NET_F_MAC) != 0, d, "virtio-net offers VIRTIO_NET_F_MAC");
    for (int i = 0; i < 6; i++)
        s->mac[i] = (uint8_t)vio_config_read(d, (uint32_t)i, 1);
    uint16_t status = (d->accepted & VIRTIO_NET_F_STATUS) ? (uint16_t)vio_config_read(d, 6, 2) : 1;
    rt_printf("net: dev=%s", vio_bdf(d->bdf));
    print_mac(" mac=", s->mac);
    rt_printf(" status=%u ip=%s peer=%s features=0x%llx\n", status, ip_str(s->ip),
              ip_str(s->peer_ip), d->accepted);
    vio_check(status & 1, d, "link is up");

    for (uint16_t i = 0; i < d->q[NET_RX].size; i++)
        rx_post(d, i);
    vio_notify(d, NET_RX);
    rt_printf("net: ready ip=%s rx_buffers=%u\n", ip_str(s->ip), d->q[NET_RX].size);
    rt_printf("net: arp request to=%s\n", ip_str(s->peer_ip));
    send_arp(s, 1, NULL, s->peer_ip);

    uint64_t deadline = cpu_rdtsc() + budget_us * rt_tsc_mhz();
    while (!(s->ping_replied && s->answered >= pings)) {
        uint32_t id, len;
        if (!rx_poll(d, deadline, &id, &len))
            break;
        if (id >= d->q[NET_RX].size) {
            vio_check(false, d, "used element names no receive buffer");
            break;
        }
        if (len > RX_BUF)
            vio_check(false, d, "used length larger than the receive buffer");
        else
            on_frame(s, rx_bufs[id], len);
        rx_post(d, (uint16_t)id);
        vio_notify(d, NET_RX);
    }
    rt_printf("net: summary rx=%u tx=%u tx_failed=%u ignored=%u echo_answered=%u ping_reply=%s "
              "num_buffers_not_1=%u rx_irqs=%u tx_irqs=%u\n",
              s->rx, s->tx, s->tx_failed, s->ignored, s->answered, s->ping_replied ? "yes" : "no",
              s->bad_num_buffers, vio_queue_irqs(d, NET_RX), vio_queue_irqs(d, NET_TX));
    vio_check(s->peer_known, d, "the peer answered the ARP request");
    vio_check(s->ping_replied, d, "the peer answered the echo request");
    vio_check(s->answered >= pings, d, "answered pings= echo requests");
    vio_check(s->tx_failed == 0, d, "every transmit completed");
    vio_check(s->bad_num_buffers == 0, d, "num_buffers is 1 in every frame (no MRG_RXBUF)");
    vio_check(vio_reset(d), d, "reset after the test");
    if (vio_failures() == before)
        rt_printf("net: ok\n");
}
