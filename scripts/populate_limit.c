/* populate_limit - the machine's own limit for bringing memory in, to hold vfiovm's parallel
 * populate against (scripts/membench.py, docs/benchmarks.md).
 *
 *   populate_limit SIZE_MIB 4k|thp|2m|1g THREADS populate|touch
 *
 * Maps SIZE_MIB of memory the way vfiovm backs guest RAM (private anonymous with
 * MADV_NOHUGEPAGE or MADV_HUGEPAGE, or a MFD_HUGETLB memfd mapped shared, 2 MiB aligned), then
 * THREADS threads each bring in one contiguous share: `populate` with one MADV_POPULATE_WRITE,
 * `touch` by writing one byte per page. Prints "ms=<time of the populate phase only>". */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
#ifndef MFD_HUGE_SHIFT
#define MFD_HUGE_SHIFT 26
#endif

struct share {
    char *start;
    size_t len;
    size_t page;
    int touch;
    int err;
};

static void *work(void *arg)
{
    struct share *s = arg;
    if (!s->touch) {
        if (madvise(s->start, s->len, MADV_POPULATE_WRITE) != 0)
            s->err = 1;
        return NULL;
    }
    for (size_t off = 0; off < s->len; off += s->page)
        ((volatile char *)s->start)[off] = 1;
    return NULL;
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: populate_limit SIZE_MIB 4k|thp|2m|1g THREADS populate|touch\n");
        return 2;
    }
    size_t size = strtoull(argv[1], NULL, 0) << 20;
    const char *pages = argv[2];
    int threads = atoi(argv[3]);
    int touch = strcmp(argv[4], "touch") == 0;
    size_t page = 4096, align = 2 << 20;
    int fd = -1;
    if (!strcmp(pages, "2m") || !strcmp(pages, "1g")) {
        page = !strcmp(pages, "2m") ? 2u << 20 : 1u << 30;
        align = page;
        fd = memfd_create("populate-limit", MFD_CLOEXEC | MFD_HUGETLB |
                                                (__builtin_ctzll(page) << MFD_HUGE_SHIFT));
        if (fd < 0 || ftruncate(fd, size) != 0) {
            perror("memfd");
            return 1;
        }
    }
    char *resv = mmap(NULL, size + align, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                      -1, 0);
    if (resv == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    char *base = (char *)(((uintptr_t)resv + align - 1) & ~(uintptr_t)(align - 1));
    char *m = fd >= 0 ? mmap(base, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0)
                      : mmap(base, size, PROT_READ | PROT_WRITE,
                             MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
    if (m == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    if (fd < 0)
        madvise(m, size, strcmp(pages, "thp") ? MADV_NOHUGEPAGE : MADV_HUGEPAGE);
    pthread_t t[64];
    struct share s[64];
    if (threads < 1 || threads > 64)
        return 2;
    size_t per = (size / threads + page - 1) / page * page;
    double t0 = now();
    for (int i = 0; i < threads; i++) {
        size_t off = per * i;
        s[i] = (struct share){m + off, off >= size ? 0 : (size - off < per ? size - off : per),
                              touch ? (page < 4096 ? page : 4096) : page, touch, 0};
        if (fd >= 0 && touch)
            s[i].page = page;
        pthread_create(&t[i], NULL, work, &s[i]);
    }
    for (int i = 0; i < threads; i++) {
        pthread_join(t[i], NULL);
        if (s[i].err) {
            perror("madvise(MADV_POPULATE_WRITE)");
            return 1;
        }
    }
    printf("ms=%.1f\n", (now() - t0) * 1e3);
    return 0;
}
