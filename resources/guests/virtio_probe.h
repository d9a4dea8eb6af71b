/* virtio_probe.h - what the parts of the virtio_probe guest share (virtio_probe.c: command
 * line, rng, blk; virtio_hostile.c: malformed requests). The transport is virtio_pci.h. */
#ifndef VIRTIO_PROBE_H
#define VIRTIO_PROBE_H

#include "virtio_pci.h"

/* virtio-blk (5.2): feature bits, config layout, request types and status values. */
#define VIRTIO_BLK_F_SIZE_MAX (1ULL << 1)
#define VIRTIO_BLK_F_SEG_MAX (1ULL << 2)
#define VIRTIO_BLK_F_GEOMETRY (1ULL << 4)
#define VIRTIO_BLK_F_RO (1ULL << 5)
#define VIRTIO_BLK_F_BLK_SIZE (1ULL << 6)
#define VIRTIO_BLK_F_FLUSH (1ULL << 9)
#define VIRTIO_BLK_CFG_CAPACITY 0
#define VIRTIO_BLK_CFG_SIZE_MAX 8
#define VIRTIO_BLK_CFG_SEG_MAX 12
#define VIRTIO_BLK_CFG_BLK_SIZE 20
#define VIRTIO_BLK_T_IN 0
#define VIRTIO_BLK_T_OUT 1
#define VIRTIO_BLK_T_FLUSH 4
#define VIRTIO_BLK_T_GET_ID 8
#define VIRTIO_BLK_S_OK 0
#define VIRTIO_BLK_S_IOERR 1
#define VIRTIO_BLK_S_UNSUPP 2
#define VIRTIO_BLK_ID_BYTES 20
#define SECTOR_SIZE 512

/* The status byte is preset to this: still there afterwards means the device never wrote it. */
#define BLK_STATUS_UNTOUCHED 0xff
/* blk_request's result when the request did not complete in time. */
#define BLK_TIMEOUT (-1)

struct virtio_blk_req_hdr {
    uint32_t type;
    uint32_t reserved;
    uint64_t sector;
};

/* Command-line settings (README.md lists them). */
struct probe_opts {
    uint64_t timeout_us;   /* per request */
    uint64_t sector;       /* first sector blk writes/reads */
    uint64_t ring_features; /* VIRTIO_F_INDIRECT_DESC / VIRTIO_F_EVENT_IDX asked for by accept= */
    uint8_t seed;          /* blk data pattern */
};
extern struct probe_opts opts;

/* Features the driver accepts from a block device when offered. */
uint64_t blk_wanted(void);
/* True if the device negotiated indirect descriptors (the driver then uses them). */
bool vio_indirect(const struct vio_dev *d);

/* One block request (header, optional data buffer at `data` of `len` bytes, status) on queue 0.
 * Returns the status byte (BLK_STATUS_UNTOUCHED if not written) or BLK_TIMEOUT. */
int blk_request(struct vio_dev *d, uint32_t type, uint64_t sector, uint64_t data, uint32_t len,
                struct vio_result *res);
/* Fills `sectors` sectors from `sector` with the test pattern: byte i of sector s is
 * (seed + 3 s + i) & 0xff. */
void blk_pattern(uint8_t *buf, uint64_t sector, unsigned sectors);

/* The request header and status byte blk_request uses (hand-made chains reuse them). */
extern volatile struct virtio_blk_req_hdr blk_hdr;
extern volatile uint8_t blk_status;

/* virtio_hostile.c */
void test_hostile(struct vio_dev *devs, unsigned n);

/* virtio_net.c: ARP and ICMP echo on the first virtio-net card (ip=, peer=, pings=, net_ms=) */
void test_net(struct vio_dev *devs, unsigned n);

/* virtio_9p.c: a 9P2000.L session on the first virtio-9p device */
void test_9p(struct vio_dev *devs, unsigned n);

/* virtio_console.c: port 0 of the first virtio-console (con_ms=); console-spam writes forever */
void test_console(struct vio_dev *devs, unsigned n);
void test_console_spam(struct vio_dev *devs, unsigned n);

#endif
