// nvmeio: the block I/O tool of the rig's Linux tests (docs/testing.md, tier 3). Built static for
// L1 and the L2 Linux guest, and natively for the host's final check of QEMU's backing file.
//
//   nvmeio write  DEV OFFSET BYTES SEED   write the pattern with O_DIRECT, read it back, compare
//   nvmeio check  DEV OFFSET BYTES SEED   read with O_DIRECT (a regular file: plain reads), compare
//   nvmeio bench  DEV OFFSET BYTES        sequential O_DIRECT write (+fsync) then read, 1 MiB
//                                         requests, 3 passes; prints the median pass
//   nvmeio reads  DEV OFFSET COUNT        COUNT 4 KiB O_DIRECT reads, one at a time
//   nvmeio mmapwrite FILE OFFSET BYTES SEED  mmap FILE (a PCI BAR's sysfs resourceN) there, write
//                                         the pattern through the mapping, read it back, compare
//   nvmeio peek FILE OFFSET COUNT          mmap FILE's page holding OFFSET, read the 32-bit word
//                                         there COUNT times (each an MMIO read, or a VMM exit
//                                         where the page traps)
//   nvmeio msix DEVDIR                     the MSI-X table and PBA (BAR indicator, offset) of the
//                                         PCI function DEVDIR (/sys/bus/pci/devices/...), from
//                                         its config file, and the size of its BAR 0
//   nvmeio edup2p EDU BAR OFFSET SEED     peer-to-peer DMA: QEMU's edu (EDU: its sysfs device
//                                         directory) copies a 4 KiB pattern from RAM into its
//                                         buffer, then out to bus address BAR's BAR 2 + OFFSET
//                                         (another device's memory); read back through BAR's
//                                         resource2 and compared
//
// The pattern is a function of the seed and of each 8-byte word's byte offset on the device, so
// data that lands at the wrong offset is caught as surely as wrong data. Output lines start with
// "NVMEIO"; numbers that differ between runs are printed in fixed-width fields so two runs that
// do the same work print the same number of bytes. Exit status: 0 ok, 1 mismatch, 2 I/O error.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (1u << 20) // bytes per request for write/check/bench
#define SMALL 4096u      // bytes per request for reads

static uint64_t word_at(uint64_t seed, uint64_t byte_offset) {
    // splitmix64 of (seed, word index): cheap, and no two offsets share a value in practice
    uint64_t z = seed * 0x9e3779b97f4a7c15ull + (byte_offset / 8) + 0x632be59bd9b4e019ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void fill(uint64_t *buf, size_t len, uint64_t seed, uint64_t off) {
    for (size_t i = 0; i < len / 8; i++) buf[i] = word_at(seed, off + i * 8);
}

static uint64_t count_bad(const uint64_t *buf, size_t len, uint64_t seed, uint64_t off, uint64_t *first) {
    uint64_t bad = 0;
    for (size_t i = 0; i < len / 8; i++) {
        if (buf[i] != word_at(seed, off + i * 8)) {
            if (bad == 0) *first = off + i * 8;
            bad++;
        }
    }
    return bad;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int xfer(int fd, void *buf, size_t len, uint64_t off, int write_it) {
    size_t done = 0;
    while (done < len) {
        ssize_t n = write_it ? pwrite(fd, (char *)buf + done, len - done, (off_t)(off + done))
                             : pread(fd, (char *)buf + done, len - done, (off_t)(off + done));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            fprintf(stderr, "NVMEIO error %s at %" PRIu64 ": %s\n", write_it ? "write" : "read", off + done,
                    n < 0 ? strerror(errno) : "short transfer");
            return -1;
        }
        done += (size_t)n;
    }
    return 0;
}

static int open_dev(const char *path, int flags) {
    struct stat st;
    if (stat(path, &st) == 0 && S_ISBLK(st.st_mode)) flags |= O_DIRECT;
    int fd = open(path, flags);
    if (fd < 0) fprintf(stderr, "NVMEIO error open %s: %s\n", path, strerror(errno));
    return fd;
}

static uint64_t num(const char *s) {
    char *end;
    uint64_t v = strtoull(s, &end, 0);
    if (*end == 'M') v <<= 20, end++;
    else if (*end == 'K') v <<= 10, end++;
    if (*end) {
        fprintf(stderr, "NVMEIO error bad number '%s'\n", s);
        exit(2);
    }
    return v;
}

// write (then verify) or only check the pattern over [off, off+len)
static int pattern(const char *dev, uint64_t off, uint64_t len, uint64_t seed, int write_it) {
    void *mem;
    if (posix_memalign(&mem, 4096, CHUNK)) return 2;
    uint64_t *buf = mem;
    int fd = open_dev(dev, write_it ? O_RDWR : O_RDONLY);
    if (fd < 0) return 2;
    if (write_it) {
        for (uint64_t o = 0; o < len; o += CHUNK) {
            size_t n = len - o < CHUNK ? (size_t)(len - o) : CHUNK;
            fill(buf, n, seed, off + o);
            if (xfer(fd, buf, n, off + o, 1)) return 2;
        }
        if (fsync(fd)) {
            fprintf(stderr, "NVMEIO error fsync: %s\n", strerror(errno));
            return 2;
        }
    }
    uint64_t bad = 0, first = 0;
    for (uint64_t o = 0; o < len; o += CHUNK) {
        size_t n = len - o < CHUNK ? (size_t)(len - o) : CHUNK;
        memset(buf, 0, n);
        if (xfer(fd, buf, n, off + o, 0)) return 2;
        uint64_t f = 0, b = count_bad(buf, n, seed, off + o, &f);
        if (b && !bad) first = f;
        bad += b;
    }
    close(fd);
    printf("NVMEIO %s seed=%" PRIu64 " offset=%" PRIu64 " bytes=%" PRIu64 " mismatched_words=%" PRIu64, write_it ? "write" : "check",
           seed, off, len, bad);
    if (bad) printf(" first_bad_offset=%" PRIu64, first);
    printf("\n");
    return bad ? 1 : 0;
}

// the pattern through a shared mapping of [off, off+len) of path (page-aligned offset)
static int mmapwrite(const char *path, uint64_t off, uint64_t len, uint64_t seed) {
    int fd = open(path, O_RDWR | O_SYNC);
    if (fd < 0) {
        fprintf(stderr, "NVMEIO error open %s: %s\n", path, strerror(errno));
        return 2;
    }
    double t0 = now();
    void *p = mmap(NULL, (size_t)len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)off);
    if (p == MAP_FAILED) {
        fprintf(stderr, "NVMEIO error mmap %s at %" PRIu64 ": %s\n", path, off, strerror(errno));
        return 2;
    }
    volatile uint64_t *w = p;
    for (size_t i = 0; i < len / 8; i++) w[i] = word_at(seed, off + i * 8);
    uint64_t bad = 0, first = 0;
    for (size_t i = 0; i < len / 8; i++) {
        if (w[i] != word_at(seed, off + i * 8)) {
            if (bad == 0) first = off + i * 8;
            bad++;
        }
    }
    double t1 = now();
    munmap(p, (size_t)len);
    close(fd);
    printf("NVMEIO mmapwrite seed=%" PRIu64 " offset=%" PRIu64 " bytes=%" PRIu64 " mismatched_words=%" PRIu64, seed, off, len, bad);
    if (bad) printf(" first_bad_offset=%" PRIu64, first);
    printf(" s=%8.3f\n", t1 - t0);
    return bad ? 1 : 0;
}

// COUNT 32-bit reads of OFFSET of path through a shared mapping of its page
static int peek(const char *path, uint64_t off, uint64_t count) {
    int fd = open(path, O_RDWR | O_SYNC);
    if (fd < 0) {
        fprintf(stderr, "NVMEIO error open %s: %s\n", path, strerror(errno));
        return 2;
    }
    uint64_t page = off & ~4095ull;
    void *p = mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, (off_t)page);
    if (p == MAP_FAILED) {
        fprintf(stderr, "NVMEIO error mmap %s at %" PRIu64 ": %s\n", path, page, strerror(errno));
        return 2;
    }
    volatile uint32_t *w = (volatile uint32_t *)((char *)p + (off - page));
    uint32_t first = *w;
    double t0 = now();
    for (uint64_t i = 1; i < count; i++) (void)*w;
    double t1 = now();
    munmap(p, 4096);
    close(fd);
    printf("NVMEIO peek offset=0x%" PRIx64 " count=%8" PRIu64 " first=0x%08x us_per_read=%10.3f\n", off, count, first,
           count > 1 ? (t1 - t0) * 1e6 / (double)(count - 1) : 0.0);
    return 0;
}

// the MSI-X capability's Table and PBA registers as the function's config space has them
static int msix(const char *dir) {
    char path[512];
    unsigned char cfg[256];
    snprintf(path, sizeof path, "%s/config", dir);
    int fd = open(path, O_RDONLY);
    if (fd < 0 || pread(fd, cfg, sizeof cfg, 0) != (ssize_t)sizeof cfg) {
        fprintf(stderr, "NVMEIO error reading %s: %s\n", path, strerror(errno));
        return 2;
    }
    close(fd);
    unsigned at = cfg[0x34] & ~3u, seen = 0;
    while (at >= 0x40 && at < 0xfc && seen++ < 48 && cfg[at] != 0x11) at = cfg[at + 1] & ~3u;
    if (at < 0x40 || at >= 0xf4 || cfg[at] != 0x11) {
        printf("NVMEIO msix none\n");
        return 1;
    }
    uint32_t table, pba;
    memcpy(&table, cfg + at + 4, 4);
    memcpy(&pba, cfg + at + 8, 4);
    unsigned long long start = 0, end = 0, flags = 0;
    snprintf(path, sizeof path, "%s/resource", dir);
    FILE *f = fopen(path, "r");
    if (!f || fscanf(f, "%llx %llx %llx", &start, &end, &flags) != 3) {
        fprintf(stderr, "NVMEIO error reading %s\n", path);
        return 2;
    }
    fclose(f);
    printf("NVMEIO msix vectors=%u table=%u:0x%x pba=%u:0x%x bar0_size=0x%llx\n",
           (unsigned)((cfg[at + 2] | cfg[at + 3] << 8) & 0x7ff) + 1, table & 7, table & ~7u, pba & 7, pba & ~7u,
           end - start + 1);
    return 0;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

// BENCH_PASSES passes of (write all, fsync, read all); the median pass of each direction counts
#define BENCH_PASSES 3
static int bench(const char *dev, uint64_t off, uint64_t len) {
    void *mem;
    if (posix_memalign(&mem, 4096, CHUNK)) return 2;
    int fd = open_dev(dev, O_RDWR);
    if (fd < 0) return 2;
    fill(mem, CHUNK, 99, 0);
    double w[BENCH_PASSES], r[BENCH_PASSES];
    for (int p = 0; p < BENCH_PASSES; p++) {
        double t0 = now();
        for (uint64_t o = 0; o < len; o += CHUNK)
            if (xfer(fd, mem, CHUNK, off + o, 1)) return 2;
        if (fsync(fd)) return 2;
        double t1 = now();
        for (uint64_t o = 0; o < len; o += CHUNK)
            if (xfer(fd, mem, CHUNK, off + o, 0)) return 2;
        w[p] = t1 - t0;
        r[p] = now() - t1;
    }
    close(fd);
    qsort(w, BENCH_PASSES, sizeof w[0], cmp_double);
    qsort(r, BENCH_PASSES, sizeof r[0], cmp_double);
    double mib = (double)len / (1 << 20), wm = w[BENCH_PASSES / 2], rm = r[BENCH_PASSES / 2];
    printf("NVMEIO bench bytes=%" PRIu64 " passes=%d write_s=%.3f read_s=%.3f write_MiBps=%.1f read_MiBps=%.1f\n", len,
           BENCH_PASSES, wm, rm, mib / wm, mib / rm);
    return 0;
}

static int reads(const char *dev, uint64_t off, uint64_t count) {
    void *mem;
    if (posix_memalign(&mem, 4096, SMALL)) return 2;
    int fd = open_dev(dev, O_RDONLY);
    if (fd < 0) return 2;
    double t0 = now();
    for (uint64_t i = 0; i < count; i++)
        if (xfer(fd, mem, SMALL, off + (i % 256) * SMALL, 0)) return 2;
    double t1 = now();
    close(fd);
    // fixed width: two runs with different counts print the same number of bytes
    printf("NVMEIO reads count=%8" PRIu64 " us_per_read=%10.1f\n", count, count ? (t1 - t0) * 1e6 / (double)count : 0.0);
    return 0;
}

// edu (QEMU docs/specs/edu.rst): 0x00 ident, 0x80 DMA source, 0x88 destination, 0x90 count, 0x98
// command (bit 0 start/busy, bit 1 edu->RAM); its 4 KiB buffer is at edu address 0x40000
#define EDU_BUF 0x40000u
static int sysfs_enable(const char *dev) { // memory decoding and bus mastering, via config space
    char path[512];
    snprintf(path, sizeof path, "%s/config", dev);
    int fd = open(path, O_RDWR);
    uint16_t cmd;
    if (fd < 0 || pread(fd, &cmd, 2, 4) != 2) return -1;
    cmd |= 0x6;
    int r = pwrite(fd, &cmd, 2, 4) == 2 ? 0 : -1;
    close(fd);
    return r;
}

static uint64_t bar2_start(const char *dev) { // third line of sysfs "resource"
    char path[512];
    unsigned long long start = 0, end, flags;
    snprintf(path, sizeof path, "%s/resource", dev);
    FILE *f = fopen(path, "r");
    for (int i = 0; f && i < 3; i++)
        if (fscanf(f, "%llx %llx %llx", &start, &end, &flags) != 3) start = 0;
    if (f) fclose(f);
    return start;
}

static int edu_dma(volatile uint64_t *edu, uint64_t src, uint64_t dst, uint64_t cmd) {
    edu[0x80 / 8] = src;
    edu[0x88 / 8] = dst;
    edu[0x90 / 8] = 4096;
    edu[0x98 / 8] = cmd | 1;
    for (int i = 0; i < 5000; i++) { // the model runs a DMA 100 ms (virtual) after it is started
        if (!(edu[0x98 / 8] & 1)) return 0;
        usleep(1000);
    }
    return -1;
}

static int edup2p(const char *edu_dev, const char *bar_dev, uint64_t off, uint64_t seed) {
    char path[512];
    uint64_t bus = bar2_start(bar_dev);
    if (!bus || sysfs_enable(edu_dev) || sysfs_enable(bar_dev)) {
        fprintf(stderr, "NVMEIO error edup2p: cannot enable %s / %s or read BAR 2 of the latter\n", edu_dev, bar_dev);
        return 2;
    }
    // a locked page of RAM with the pattern, and its physical (= bus: no IOMMU in the guest) address
    uint64_t *ram = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_LOCKED, -1, 0);
    if (ram == MAP_FAILED) return 2;
    fill(ram, 4096, seed, off);
    uint64_t pme = 0;
    int pm = open("/proc/self/pagemap", O_RDONLY);
    if (pm < 0 || pread(pm, &pme, 8, (off_t)((uintptr_t)ram / 4096 * 8)) != 8 || !(pme >> 63) || !(pme & ((1ull << 55) - 1))) {
        fprintf(stderr, "NVMEIO error edup2p: no physical address for the buffer (pagemap %#" PRIx64 ")\n", pme);
        return 2;
    }
    close(pm);
    uint64_t phys = (pme & ((1ull << 55) - 1)) * 4096;
    snprintf(path, sizeof path, "%s/resource0", edu_dev);
    int fd = open(path, O_RDWR | O_SYNC);
    volatile uint64_t *edu = fd < 0 ? MAP_FAILED : mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (edu == MAP_FAILED) {
        fprintf(stderr, "NVMEIO error edup2p: mapping %s: %s\n", path, strerror(errno));
        return 2;
    }
    uint32_t ident = *(volatile uint32_t *)edu;
    double t0 = now();
    int to_edu = edu_dma(edu, phys, EDU_BUF, 0), to_bar = to_edu ? -1 : edu_dma(edu, EDU_BUF, bus + off, 2);
    double t1 = now();
    snprintf(path, sizeof path, "%s/resource2", bar_dev);
    int bfd = open(path, O_RDWR | O_SYNC);
    volatile uint64_t *bar = bfd < 0 ? MAP_FAILED : mmap(NULL, 4096, PROT_READ, MAP_SHARED, bfd, (off_t)off);
    if (bar == MAP_FAILED) {
        fprintf(stderr, "NVMEIO error edup2p: mapping %s: %s\n", path, strerror(errno));
        return 2;
    }
    uint64_t bad = 0;
    for (int i = 0; i < 512; i++) bad += bar[i] != word_at(seed, off + (uint64_t)i * 8);
    printf("NVMEIO edup2p ident=%#x ram=%#" PRIx64 " dst=%#" PRIx64 " dma_to_edu=%s dma_to_bar=%s mismatched_words=%" PRIu64
           " s=%.3f\n",
           ident, phys, bus + off, to_edu ? "timeout" : "ok", to_bar ? "timeout" : "ok", bad, t1 - t0);
    return to_edu || to_bar || bad ? 1 : 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 6 && !strcmp(argv[1], "write")) return pattern(argv[2], num(argv[3]), num(argv[4]), num(argv[5]), 1);
    if (argc == 6 && !strcmp(argv[1], "check")) return pattern(argv[2], num(argv[3]), num(argv[4]), num(argv[5]), 0);
    if (argc == 5 && !strcmp(argv[1], "bench")) return bench(argv[2], num(argv[3]), num(argv[4]));
    if (argc == 5 && !strcmp(argv[1], "reads")) return reads(argv[2], num(argv[3]), num(argv[4]));
    if (argc == 6 && !strcmp(argv[1], "mmapwrite")) return mmapwrite(argv[2], num(argv[3]), num(argv[4]), num(argv[5]));
    if (argc == 5 && !strcmp(argv[1], "peek")) return peek(argv[2], num(argv[3]), num(argv[4]));
    if (argc == 3 && !strcmp(argv[1], "msix")) return msix(argv[2]);
    if (argc == 6 && !strcmp(argv[1], "edup2p")) return edup2p(argv[2], argv[3], num(argv[4]), num(argv[5]));
    fprintf(stderr, "usage: nvmeio write|check DEV OFFSET BYTES SEED | bench DEV OFFSET BYTES | reads DEV OFFSET COUNT | mmapwrite FILE OFFSET BYTES SEED | peek FILE OFFSET COUNT | msix DEVDIR | edup2p EDU BAR OFFSET SEED\n");
    return 2;
}
