/* fw_cfg_probe - reads QEMU's firmware configuration interface the way UEFI firmware does, from a
 * PVH guest: the signature and feature bits through the ports (the signature also with one
 * `rep insb`, which KVM hands the VMM as a single exit of 4 reads) and the DMA port's signature,
 * the CPU count, the file directory, `etc/e820` by DMA, then `etc/table-loader` run over the
 * `etc/acpi/` blobs it names (ALLOCATE, ADD_POINTER, ADD_CHECKSUM as OVMF's AcpiPlatformDxe
 * does), and every ACPI table reached from the loaded RSDP checked: checksums, and every pointer
 * landing in a loaded blob. Ends with `fw_cfg: ok` and the debug-exit code 0 (status 1), or
 * `error: ...` (status 255). Output lines are described in README.md. */
#include "rt.h"

#define FW_CFG_SEL 0x510
#define FW_CFG_DATA 0x511
#define FW_CFG_DMA_HI 0x514
#define FW_CFG_DMA_LO 0x518

#define KEY_SIGNATURE 0x00
#define KEY_ID 0x01
#define KEY_NB_CPUS 0x05
#define KEY_FILE_DIR 0x19

#define DMA_ERROR 0x01
#define DMA_READ 0x02
#define DMA_SELECT 0x08

#define MAX_FILES 64
#define NAME_LEN 56

struct file {
    char name[NAME_LEN];
    uint32_t size;
    uint16_t key;
};

static struct file files[MAX_FILES];
static uint32_t nr_files;
static struct acpi_info acpi;

/* Blobs the loader allocates: at most 4, each in its own buffer. */
#define MAX_BLOBS 4
#define BLOB_BUF 0x40000
static uint8_t blob_buf[MAX_BLOBS][BLOB_BUF] __attribute__((aligned(4096)));
static struct {
    char name[NAME_LEN];
    uint32_t size;
} blobs[MAX_BLOBS];
static uint32_t nr_blobs;
static uint8_t loader[0x4000] __attribute__((aligned(64)));
static uint8_t e820[0x1000] __attribute__((aligned(64)));
static uint8_t dirbuf[4 + MAX_FILES * 64];

static struct {
    uint32_t control;
    uint32_t length;
    uint64_t address;
} __attribute__((packed, aligned(16))) desc;

static uint32_t be32(const uint8_t *p) { return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]; }
static uint16_t be16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t bswap32(uint32_t v) { return __builtin_bswap32(v); }
static uint64_t le(const uint8_t *p, unsigned n)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < n; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}
static void put_le(uint8_t *p, unsigned n, uint64_t v)
{
    for (unsigned i = 0; i < n; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void select_key(uint16_t key) { outw(FW_CFG_SEL, key); }

static void read_ports(uint16_t key, uint8_t *buf, uint32_t len)
{
    select_key(key);
    for (uint32_t i = 0; i < len; i++)
        buf[i] = inb(FW_CFG_DATA);
}

/* `len` bytes of the selected item with one string instruction: one exit of `len` reads. */
static void read_rep_insb(uint16_t key, uint8_t *buf, uint32_t len)
{
    select_key(key);
    uint32_t n = len;
    __asm__ volatile("cld; rep insb" : "+D"(buf), "+c"(n) : "d"((uint16_t)FW_CFG_DATA) : "memory");
}

/* SELECT + READ of `len` bytes of `key` into `buf` by DMA; returns the control word after. */
static uint32_t read_dma(uint16_t key, void *buf, uint32_t len)
{
    desc.control = bswap32((uint32_t)key << 16 | DMA_SELECT | DMA_READ);
    desc.length = bswap32(len);
    uint64_t a = (uint64_t)(uintptr_t)buf;
    desc.address = (uint64_t)bswap32((uint32_t)a) << 32 | bswap32((uint32_t)(a >> 32));
    uint64_t d = (uint64_t)(uintptr_t)&desc;
    __asm__ volatile("" ::: "memory");
    outl(FW_CFG_DMA_HI, bswap32((uint32_t)(d >> 32)));
    outl(FW_CFG_DMA_LO, bswap32((uint32_t)d));
    __asm__ volatile("" ::: "memory");
    return bswap32(desc.control);
}

static const struct file *find_file(const char *name)
{
    for (uint32_t i = 0; i < nr_files; i++)
        if (strcmp(files[i].name, name) == 0)
            return &files[i];
    return NULL;
}

static void read_file_dma(const char *name, uint8_t *buf, uint32_t max, uint32_t *size)
{
    const struct file *f = find_file(name);
    if (!f) {
        rt_printf("error: no fw_cfg file %s\n", name);
        rt_fail("fw_cfg file missing");
    }
    if (f->size > max)
        rt_fail("fw_cfg file too large for the probe's buffer");
    uint32_t c = read_dma(f->key, buf, f->size);
    if (c != 0) {
        rt_printf("error: DMA read of %s: control=0x%x\n", name, c);
        rt_fail("DMA read failed");
    }
    *size = f->size;
}

static void check_identity(void)
{
    uint8_t sig[4], sig_rep[4], dma_sig[8], id[4];
    read_ports(KEY_SIGNATURE, sig, 4);
    read_rep_insb(KEY_SIGNATURE, sig_rep, 4);
    for (int i = 0; i < 8; i++)
        dma_sig[i] = inb((uint16_t)(FW_CFG_DMA_HI + i));
    read_ports(KEY_ID, id, 4);
    rt_printf("fw_cfg: signature=%c%c%c%c rep_insb=%c%c%c%c\n", sig[0], sig[1], sig[2], sig[3],
              sig_rep[0], sig_rep[1], sig_rep[2], sig_rep[3]);
    if (memcmp(sig, "QEMU", 4) != 0 || memcmp(sig_rep, "QEMU", 4) != 0)
        rt_fail("bad fw_cfg signature");
    rt_printf("fw_cfg: dma_signature=");
    rt_print_bytes(dma_sig, 8);
    rt_printf("\n");
    if (memcmp(dma_sig, "QEMU CFG", 8) != 0)
        rt_fail("bad fw_cfg DMA signature");
    uint32_t features = (uint32_t)le(id, 4);
    rt_printf("fw_cfg: features=0x%x\n", features);
    if ((features & 3) != 3)
        rt_fail("fw_cfg lacks the traditional or the DMA interface");
    uint8_t cpus[2];
    read_ports(KEY_NB_CPUS, cpus, 2);
    rt_printf("fw_cfg: cpus=%u\n", (unsigned)le(cpus, 2));
}

static void read_directory(void)
{
    uint8_t cnt[4];
    read_ports(KEY_FILE_DIR, cnt, 4);
    uint32_t n = be32(cnt);
    if (n > MAX_FILES)
        rt_fail("too many fw_cfg files");
    /* The whole directory again, with one rep insb. */
    read_rep_insb(KEY_FILE_DIR, dirbuf, 4 + n * 64);
    if (be32(dirbuf) != n)
        rt_fail("directory count differs between reads");
    rt_printf("fw_cfg: files=%u\n", n);
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *e = dirbuf + 4 + i * 64;
        struct file *f = &files[i];
        f->size = be32(e);
        f->key = be16(e + 4);
        memcpy(f->name, e + 8, NAME_LEN);
        f->name[NAME_LEN - 1] = 0;
        rt_printf("file: key=0x%x size=%u name=%s\n", f->key, f->size, f->name);
        if (i > 0 && strcmp(files[i - 1].name, f->name) >= 0)
            rt_fail("file directory not sorted by name");
    }
    nr_files = n;
}

static void read_e820(void)
{
    uint32_t size;
    read_file_dma("etc/e820", e820, sizeof(e820), &size);
    if (size % 20)
        rt_fail("etc/e820 is not a whole number of 20-byte entries");
    uint64_t ram = 0;
    for (uint32_t o = 0; o < size; o += 20) {
        uint64_t addr = le(e820 + o, 8), len = le(e820 + o + 8, 8);
        uint32_t type = (uint32_t)le(e820 + o + 16, 4);
        rt_printf("e820: addr=0x%llx size=0x%llx type=%u\n", addr, len, type);
        if (type == 1)
            ram += len;
    }
    rt_printf("e820: ram=%llu MiB\n", ram >> 20);
}

static int blob_index(const char *name)
{
    for (uint32_t i = 0; i < nr_blobs; i++)
        if (strcmp(blobs[i].name, name) == 0)
            return (int)i;
    return -1;
}

/* A name field of a loader command, NUL-terminated within its 56 bytes. */
static const char *name_at(const uint8_t *cmd, unsigned off)
{
    if (rt_strnlen((const char *)cmd + off, NAME_LEN) == NAME_LEN)
        rt_fail("loader file name not terminated");
    return (const char *)cmd + off;
}

static void run_loader(void)
{
    uint32_t size, alloc = 0, ptrs = 0, sums = 0;
    read_file_dma("etc/table-loader", loader, sizeof(loader), &size);
    if (size % 128)
        rt_fail("etc/table-loader is not a whole number of 128-byte commands");
    for (uint32_t o = 0; o < size; o += 128) {
        const uint8_t *c = loader + o;
        uint32_t type = (uint32_t)le(c, 4);
        if (type == 1) { /* ALLOCATE */
            const char *name = name_at(c, 4);
            uint32_t align = (uint32_t)le(c + 60, 4);
            if (nr_blobs == MAX_BLOBS || blob_index(name) >= 0)
                rt_fail("loader allocates too many or the same blob twice");
            if (align == 0 || (align & (align - 1)) || align > 4096)
                rt_fail("loader alignment not a power of two up to 4096");
            memcpy(blobs[nr_blobs].name, name, NAME_LEN);
            read_file_dma(name, blob_buf[nr_blobs], BLOB_BUF, &blobs[nr_blobs].size);
            rt_printf("loader: allocate %s size=%u align=%u zone=%u at=0x%lx\n", name,
                      blobs[nr_blobs].size, align, c[64], (uintptr_t)blob_buf[nr_blobs]);
            nr_blobs++;
            alloc++;
        } else if (type == 2) { /* ADD_POINTER */
            int d = blob_index(name_at(c, 4)), s = blob_index(name_at(c, 60));
            uint32_t off = (uint32_t)le(c + 116, 4);
            uint8_t w = c[120];
            if (d < 0 || s < 0)
                rt_fail("ADD_POINTER names a blob not allocated before");
            if (!(w == 1 || w == 2 || w == 4 || w == 8) || off > blobs[d].size || w > blobs[d].size - off)
                rt_fail("ADD_POINTER out of its blob or of a bad width");
            uint8_t *p = blob_buf[d] + off;
            uint64_t v = le(p, w);
            if (v >= blobs[s].size)
                rt_fail("ADD_POINTER's relative pointer lies past its target blob");
            v += (uintptr_t)blob_buf[s];
            if (w < 8 && v >> (8 * w))
                rt_fail("ADD_POINTER's result does not fit its width");
            put_le(p, w, v);
            ptrs++;
        } else if (type == 3) { /* ADD_CHECKSUM */
            int b = blob_index(name_at(c, 4));
            uint32_t res = (uint32_t)le(c + 60, 4), start = (uint32_t)le(c + 64, 4),
                     len = (uint32_t)le(c + 68, 4);
            if (b < 0 || res >= blobs[b].size || start > blobs[b].size ||
                len > blobs[b].size - start)
                rt_fail("ADD_CHECKSUM out of its blob");
            uint8_t sum = 0;
            for (uint32_t i = 0; i < len; i++)
                sum = (uint8_t)(sum + blob_buf[b][start + i]);
            blob_buf[b][res] = (uint8_t)(blob_buf[b][res] - sum);
            sums++;
        } else if (type != 0) {
            rt_printf("error: loader command %u\n", type);
            rt_fail("unknown loader command");
        }
    }
    rt_printf("loader: commands=%u allocate=%u add_pointer=%u add_checksum=%u\n", size / 128, alloc,
              ptrs, sums);
}

/* True if [addr, addr + len) lies within one loaded blob. */
static bool in_blob(uint64_t addr, uint64_t len)
{
    for (uint32_t i = 0; i < nr_blobs; i++) {
        uint64_t b = (uintptr_t)blob_buf[i];
        if (addr >= b && len <= blobs[i].size && addr - b <= blobs[i].size - len)
            return true;
    }
    return false;
}

static void check_tables(void)
{
    int r = blob_index("etc/acpi/rsdp");
    if (r < 0)
        rt_fail("the loader allocated no etc/acpi/rsdp");
    uint64_t rsdp = (uintptr_t)blob_buf[r];
    if (!acpi_scan(&acpi, rsdp, true) || acpi.rsdp != rsdp)
        rt_fail("no valid RSDP in etc/acpi/rsdp");
    if (acpi.bad_tables || !in_blob(acpi.root, 36))
        rt_fail("a table from the loader is bad, or the root table is not in a loaded blob");
    /* XSDT entries are 8 bytes, RSDT entries (ACPI 1.0, as QEMU's q35 builds them) 4. */
    unsigned w = acpi.root_is_xsdt ? 8 : 4;
    const uint8_t *x = rt_phys(acpi.root);
    uint32_t xlen = (uint32_t)le(x + 4, 4);
    for (uint32_t o = 36; o + w <= xlen; o += w)
        if (!in_blob(le(x + o, w), 36))
            rt_fail("a root table entry points outside the loaded blobs");
    /* The FADT's pointers: FACS and DSDT, 32-bit and (when the FADT has them) 64-bit; a zero
     * one is absent, two present ones must agree. */
    for (uint32_t o = 36; o + w <= xlen; o += w) {
        const uint8_t *t = rt_phys(le(x + o, w));
        if (memcmp(t, "FACP", 4) != 0)
            continue;
        uint32_t flen = (uint32_t)le(t + 4, 4);
        uint64_t facs = le(t + 36, 4), dsdt = le(t + 40, 4);
        uint64_t xfacs = flen >= 140 ? le(t + 132, 8) : 0, xdsdt = flen >= 148 ? le(t + 140, 8) : 0;
        rt_printf("fadt: facs=0x%llx x_facs=0x%llx dsdt=0x%llx x_dsdt=0x%llx\n", facs, xfacs, dsdt,
                  xdsdt);
        if ((facs && xfacs && facs != xfacs) || (dsdt && xdsdt && dsdt != xdsdt))
            rt_fail("FADT 32- and 64-bit pointers disagree");
        facs = xfacs ? xfacs : facs;
        dsdt = xdsdt ? xdsdt : dsdt;
        if (!in_blob(facs, 64) || !in_blob(dsdt, 36))
            rt_fail("FADT pointers missing or outside the loaded blobs");
        if (memcmp(rt_phys(facs), "FACS", 4) != 0 || memcmp(rt_phys(dsdt), "DSDT", 4) != 0)
            rt_fail("FADT pointers do not reach the FACS and the DSDT");
        if (acpi.dsdt != dsdt)
            rt_fail("the scan found another DSDT");
    }
    rt_printf("acpi: loaded tables=%u cpus=%u s5=%u\n", acpi.tables, acpi.cpus, acpi_s5_typ(&acpi));
}

/* The other two ports OVMF touches on its way: QEMU's CPU hotplug register (all ones: none) and
 * port 0x92 (OVMF sets the A20 bit; the write must simply be taken). */
static void check_ovmf_ports(void)
{
    uint32_t hotplug = inl(0xcd8);
    outb(0x92, (uint8_t)(inb(0x92) | 2));
    rt_printf("ports: 0xcd8=0x%x 0x92 written\n", hotplug);
}

/* The SMBIOS entry point (3.0 `_SM3_` or 2.x `_SM_`) and the structures it sizes: every
 * structure's strings terminated, type 127 last. */
static void check_smbios(void)
{
    static uint8_t anchor[32], tables[0x4000];
    const struct file *fa = find_file("etc/smbios/smbios-anchor");
    const struct file *ft = find_file("etc/smbios/smbios-tables");
    if (!fa || !ft) {
        rt_printf("smbios: none\n");
        return;
    }
    uint32_t alen, tlen;
    read_file_dma("etc/smbios/smbios-anchor", anchor, sizeof(anchor), &alen);
    read_file_dma("etc/smbios/smbios-tables", tables, sizeof(tables), &tlen);
    uint8_t sum = 0;
    for (uint32_t i = 0; i < alen; i++)
        sum = (uint8_t)(sum + anchor[i]);
    uint32_t size;
    unsigned major, minor;
    if (alen == 24 && memcmp(anchor, "_SM3_", 5) == 0) {
        size = (uint32_t)le(anchor + 12, 4);
        major = anchor[7];
        minor = anchor[8];
    } else if (alen == 31 && memcmp(anchor, "_SM_", 4) == 0) {
        size = (uint32_t)le(anchor + 0x16, 2);
        major = anchor[6];
        minor = anchor[7];
    } else {
        rt_fail("unknown SMBIOS entry point");
    }
    /* QEMU leaves the checksums to the firmware that places the tables; a set one must add up. */
    bool sum_set = anchor[alen == 24 ? 5 : 4] != 0;
    if ((sum_set && sum != 0) || size != tlen)
        rt_fail("SMBIOS entry point checksum or table size wrong");
    uint32_t at = 0, n = 0;
    uint8_t last = 0;
    while (at + 4 <= tlen) {
        last = tables[at];
        uint32_t p = at + tables[at + 1];
        if (tables[at + 1] < 4 || p + 2 > tlen)
            rt_fail("SMBIOS structure runs past the tables");
        while (p + 1 < tlen && !(tables[p] == 0 && tables[p + 1] == 0))
            p++;
        if (p + 1 >= tlen)
            rt_fail("SMBIOS strings not terminated");
        at = p + 2;
        n++;
        if (last == 127)
            break;
    }
    if (last != 127 || at != tlen)
        rt_fail("SMBIOS tables do not end with type 127");
    rt_printf("smbios: version=%u.%u tables=%u structures=%u checksum=%s\n", major, minor, tlen, n,
              sum_set ? "ok" : "unset");
}

void guest_main(const struct rt_boot *boot)
{
    (void)boot;
    rt_printf("guest: fw_cfg_probe\n");
    check_identity();
    check_ovmf_ports();
    read_directory();
    read_e820();
    run_loader();
    check_tables();
    check_smbios();
    rt_printf("fw_cfg: ok\n");
    outl(LAYOUT_PORTS_DEBUG_EXIT, 0);
    for (;;)
        __asm__ volatile("hlt");
}
