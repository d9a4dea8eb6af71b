/* acpi.c - find and check the ACPI tables (ACPI 6.x): RSDP -> XSDT/RSDT -> FADT (-> DSDT), MADT,
 * MCFG. Every table's signature, length and checksum is verified before any field is used, and
 * every field read is bounds-checked against the table's length. */
#include "rt.h"

/* Where the spec says to look for the RSDP when nobody tells us (ACPI 6.5, 5.2.5.1). */
#define RSDP_SCAN_START 0xe0000
#define RSDP_SCAN_END 0x100000
#define RSDP_V1_LEN 20
#define RSDP_V2_LEN 36

/* RSDP fields. */
#define RSDP_OEMID 9
#define RSDP_REVISION 15
#define RSDP_RSDT 16
#define RSDP_LENGTH 20
#define RSDP_XSDT 24

/* System description table header. */
#define SDT_HEADER_LEN 36
#define SDT_LENGTH 4
#define SDT_REVISION 8
#define SDT_MAX_LEN (16u << 20) /* sanity bound for a table we are about to sum */

/* FADT fields. */
#define FADT_DSDT 40
#define FADT_SCI_INT 46
#define FADT_PM1A_CNT_BLK 64
#define FADT_PM1B_CNT_BLK 68
#define FADT_PM_TMR_BLK 76
#define FADT_FLAGS 112
#define FADT_RESET_REG 116
#define FADT_RESET_VALUE 128
#define FADT_X_DSDT 140
#define FADT_X_PM1A_CNT_BLK 172
#define FADT_X_PM1B_CNT_BLK 184
#define FADT_X_PM_TMR_BLK 208
#define FADT_SLEEP_CONTROL_REG 244
#define GAS_LEN 12

/* MADT. */
#define MADT_LAPIC_ADDR 36
#define MADT_ENTRIES 44
#define MADT_TYPE_LAPIC 0
#define MADT_TYPE_IOAPIC 1
#define MADT_TYPE_LAPIC_OVERRIDE 5
#define MADT_TYPE_X2APIC 9
#define MADT_ENABLED 1u

/* MCFG. */
#define MCFG_ENTRIES 44
#define MCFG_ENTRY_LEN 16

/* AML opcodes used to read \_S5. */
#define AML_ZERO_OP 0x00
#define AML_ONE_OP 0x01
#define AML_BYTE_PREFIX 0x0a
#define AML_PACKAGE_OP 0x12

static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t rd32(const uint8_t *p) { return (uint32_t)rd16(p) | (uint32_t)rd16(p + 2) << 16; }
static uint64_t rd64(const uint8_t *p) { return (uint64_t)rd32(p) | (uint64_t)rd32(p + 4) << 32; }

static bool checksum_ok(const uint8_t *p, uint32_t len)
{
    uint8_t sum = 0;

    for (uint32_t i = 0; i < len; i++)
        sum = (uint8_t)(sum + p[i]);
    return sum == 0;
}

/* Prints `len` bytes as text without trailing blanks, non-printable bytes as '?'. */
static void print_name(const uint8_t *p, size_t len)
{
    while (len > 0 && (p[len - 1] == ' ' || p[len - 1] == '\0'))
        len--;
    for (size_t i = 0; i < len; i++)
        serial_putc(p[i] >= 0x20 && p[i] <= 0x7e ? (char)p[i] : '?');
}

static const char *ok_str(bool ok) { return ok ? "ok" : "BAD"; }

static uint64_t find_rsdp_by_scan(void)
{
    for (uint64_t a = RSDP_SCAN_START; a < RSDP_SCAN_END; a += 16) {
        const uint8_t *p = rt_phys(a);
        if (memcmp(p, "RSD PTR ", 8) == 0 && checksum_ok(p, RSDP_V1_LEN))
            return a;
    }
    return 0;
}

/*
 * Maps and checks the table at `addr`. Returns it if reachable with a sane length, printing
 * "acpi: table SIG addr=.. len=.. rev=.. checksum ok|BAD" when verbose. *len_out gets its length.
 * A table with a bad checksum is still returned (and counted), so callers can decide.
 */
static const uint8_t *map_table(struct acpi_info *info, uint64_t addr, uint32_t *len_out,
                                bool *sum_ok, bool verbose)
{
    if (!rt_reachable(addr, SDT_HEADER_LEN)) {
        if (verbose)
            rt_printf("acpi: table at 0x%llx unreachable (above 4 GiB)\n", addr);
        info->bad_tables++;
        return NULL;
    }
    const uint8_t *t = rt_phys(addr);
    uint32_t len = rd32(t + SDT_LENGTH);
    if (len < SDT_HEADER_LEN || len > SDT_MAX_LEN || !rt_reachable(addr, len)) {
        if (verbose) {
            rt_printf("acpi: table ");
            print_name(t, 4);
            rt_printf(" addr=0x%llx len=%u invalid length\n", addr, len);
        }
        info->bad_tables++;
        return NULL;
    }
    *sum_ok = checksum_ok(t, len);
    if (!*sum_ok)
        info->bad_tables++;
    if (verbose) {
        rt_printf("acpi: table ");
        print_name(t, 4);
        rt_printf(" addr=0x%llx len=%u rev=%u checksum %s\n", addr, len, t[SDT_REVISION],
                  ok_str(*sum_ok));
    }
    *len_out = len;
    return t;
}

static struct acpi_gas read_gas(const uint8_t *p)
{
    struct acpi_gas g = { .space = p[0], .width = p[1], .addr = rd64(p + 4) };
    return g;
}

static void print_gas(const char *name, const struct acpi_gas *g)
{
    if (g->addr == 0)
        rt_printf(" %s=none", name);
    else
        rt_printf(" %s=%s:0x%llx", name, g->space == 1 ? "io" : g->space == 0 ? "mem" : "other",
                  g->addr);
}

/* Finds \_S5's first package element (SLP_TYPa) in a DSDT's AML. */
static void parse_s5(struct acpi_info *info, const uint8_t *t, uint32_t len)
{
    for (uint32_t i = SDT_HEADER_LEN; i + 4 < len; i++) {
        if (memcmp(t + i, "_S5_", 4) != 0)
            continue;
        uint32_t p = i + 4;
        if (p >= len || t[p] != AML_PACKAGE_OP)
            continue;
        p++;
        if (p >= len)
            return;
        p += 1 + (t[p] >> 6); /* PkgLength: lead byte bits 7:6 = number of extra bytes */
        p++;                   /* NumElements */
        if (p >= len)
            return;
        uint8_t op = t[p];
        if (op == AML_ZERO_OP || op == AML_ONE_OP) {
            info->s5_typ = op;
        } else if (op == AML_BYTE_PREFIX && p + 1 < len) {
            info->s5_typ = t[p + 1];
        } else {
            return;
        }
        info->have_s5 = true;
        return;
    }
}

static void parse_fadt(struct acpi_info *info, const uint8_t *t, uint32_t len, bool verbose)
{
    info->have_fadt = true;
    if (len >= FADT_SCI_INT + 2)
        info->sci = rd16(t + FADT_SCI_INT);
    if (len >= FADT_PM1B_CNT_BLK + 4) {
        info->pm1a_cnt = rd32(t + FADT_PM1A_CNT_BLK);
        info->pm1b_cnt = rd32(t + FADT_PM1B_CNT_BLK);
    }
    if (len >= FADT_PM_TMR_BLK + 4)
        info->pm_tmr = rd32(t + FADT_PM_TMR_BLK);
    if (len >= FADT_FLAGS + 4)
        info->fadt_flags = rd32(t + FADT_FLAGS);
    if (len >= FADT_RESET_VALUE + 1) {
        info->reset_reg = read_gas(t + FADT_RESET_REG);
        info->reset_value = t[FADT_RESET_VALUE];
    }
    /* The 64-bit X_ fields win when present and in I/O space. */
    if (len >= FADT_X_PM1B_CNT_BLK + GAS_LEN) {
        struct acpi_gas a = read_gas(t + FADT_X_PM1A_CNT_BLK);
        struct acpi_gas b = read_gas(t + FADT_X_PM1B_CNT_BLK);
        if (a.addr && a.space == 1)
            info->pm1a_cnt = (uint32_t)a.addr;
        if (b.addr && b.space == 1)
            info->pm1b_cnt = (uint32_t)b.addr;
    }
    if (len >= FADT_X_PM_TMR_BLK + GAS_LEN) {
        struct acpi_gas tmr = read_gas(t + FADT_X_PM_TMR_BLK);
        if (tmr.addr && tmr.space == 1)
            info->pm_tmr = (uint32_t)tmr.addr;
    }
    if (len >= FADT_SLEEP_CONTROL_REG + GAS_LEN)
        info->sleep_ctl = read_gas(t + FADT_SLEEP_CONTROL_REG);

    info->dsdt = len >= FADT_DSDT + 4 ? rd32(t + FADT_DSDT) : 0;
    if (len >= FADT_X_DSDT + 8 && rd64(t + FADT_X_DSDT) != 0)
        info->dsdt = rd64(t + FADT_X_DSDT);

    if (verbose) {
        rt_printf("acpi: fadt sci=%u pm1a_cnt=0x%x pm1b_cnt=0x%x pm_tmr=0x%x", info->sci,
                  info->pm1a_cnt, info->pm1b_cnt, info->pm_tmr);
        print_gas("reset", &info->reset_reg);
        rt_printf(" reset_value=0x%x", info->reset_value);
        print_gas("sleep_ctl", &info->sleep_ctl);
        rt_printf(" flags=0x%x%s\n", info->fadt_flags,
                  info->fadt_flags & ACPI_FADT_HW_REDUCED ? " hw_reduced" : "");
    }

    if (info->dsdt) {
        uint32_t dlen;
        bool ok;
        const uint8_t *d = map_table(info, info->dsdt, &dlen, &ok, verbose);
        if (d && ok && memcmp(d, "DSDT", 4) == 0) {
            parse_s5(info, d, dlen);
            if (verbose) {
                if (info->have_s5)
                    rt_printf("acpi: dsdt s5 slp_typ=%u\n", info->s5_typ);
                else
                    rt_printf("acpi: dsdt s5 not found\n");
            }
        } else if (d && verbose) {
            rt_printf("acpi: dsdt invalid\n");
        }
    } else if (verbose) {
        rt_printf("acpi: fadt has no dsdt\n");
    }
}

static void add_cpu(struct acpi_info *info, uint32_t apic_id)
{
    if (info->cpus < ACPI_MAX_CPUS)
        info->apic_ids[info->cpus] = apic_id;
    info->cpus++;
}

static void parse_madt(struct acpi_info *info, const uint8_t *t, uint32_t len, bool verbose)
{
    uint32_t lapics = 0;

    if (len < MADT_ENTRIES) {
        if (verbose)
            rt_printf("acpi: madt too short\n");
        return;
    }
    info->have_madt = true;
    info->lapic_addr = rd32(t + MADT_LAPIC_ADDR);
    for (uint32_t off = MADT_ENTRIES; off + 2 <= len;) {
        uint8_t type = t[off], elen = t[off + 1];
        if (elen < 2 || elen > len - off) {
            if (verbose)
                rt_printf("acpi: madt entry at offset %u has bad length %u\n", off, elen);
            break;
        }
        const uint8_t *e = t + off;
        if (type == MADT_TYPE_LAPIC && elen >= 8) {
            bool enabled = rd32(e + 4) & MADT_ENABLED;
            lapics++;
            if (enabled)
                add_cpu(info, e[3]);
            if (verbose)
                rt_printf("acpi: madt lapic uid=%u apic_id=%u %s\n", e[2], e[3],
                          enabled ? "enabled" : "disabled");
        } else if (type == MADT_TYPE_X2APIC && elen >= 16) {
            bool enabled = rd32(e + 8) & MADT_ENABLED;
            lapics++;
            if (enabled)
                add_cpu(info, rd32(e + 4));
            if (verbose)
                rt_printf("acpi: madt x2apic uid=%u apic_id=%u %s\n", rd32(e + 12), rd32(e + 4),
                          enabled ? "enabled" : "disabled");
        } else if (type == MADT_TYPE_IOAPIC && elen >= 12) {
            if (info->ioapics == 0)
                info->ioapic_addr = rd32(e + 4);
            info->ioapics++;
            if (verbose)
                rt_printf("acpi: madt ioapic id=%u addr=0x%x gsi_base=%u\n", e[2], rd32(e + 4),
                          rd32(e + 8));
        } else if (type == MADT_TYPE_LAPIC_OVERRIDE && elen >= 12) {
            info->lapic_addr = rd64(e + 4);
        }
        off += elen;
    }
    if (verbose)
        rt_printf("acpi: madt lapic_addr=0x%llx lapics=%u enabled=%u ioapics=%u\n",
                  info->lapic_addr, lapics, info->cpus, info->ioapics);
}

static void parse_mcfg(struct acpi_info *info, const uint8_t *t, uint32_t len, bool verbose)
{
    for (uint32_t off = MCFG_ENTRIES; off + MCFG_ENTRY_LEN <= len; off += MCFG_ENTRY_LEN) {
        const uint8_t *e = t + off;
        if (!info->have_mcfg) {
            info->have_mcfg = true;
            info->ecam_base = rd64(e);
            info->ecam_segment = rd16(e + 8);
            info->ecam_bus_start = e[10];
            info->ecam_bus_end = e[11];
        }
        if (verbose)
            rt_printf("acpi: mcfg base=0x%llx segment=%u buses=%u-%u\n", rd64(e), rd16(e + 8),
                      e[10], e[11]);
    }
}

bool acpi_scan(struct acpi_info *info, uint64_t rsdp_hint, bool verbose)
{
    memset(info, 0, sizeof(*info));

    uint64_t rsdp = rsdp_hint;
    const char *source = "boot";
    if (rsdp == 0) {
        rsdp = find_rsdp_by_scan();
        source = "scan";
    }
    if (rsdp == 0 || !rt_reachable(rsdp, RSDP_V2_LEN)) {
        if (verbose)
            rt_printf("acpi: no rsdp found\n");
        return false;
    }
    const uint8_t *r = rt_phys(rsdp);
    if (memcmp(r, "RSD PTR ", 8) != 0) {
        if (verbose)
            rt_printf("acpi: rsdp=0x%llx bad signature\n", rsdp);
        return false;
    }
    info->rsdp = rsdp;
    info->rsdp_revision = r[RSDP_REVISION];
    bool sum_ok = checksum_ok(r, RSDP_V1_LEN);
    uint32_t rlen = rd32(r + RSDP_LENGTH);
    if (info->rsdp_revision >= 2)
        sum_ok = sum_ok && rlen >= RSDP_V2_LEN && rlen <= 4096 && rt_reachable(rsdp, rlen) &&
                 checksum_ok(r, rlen);
    if (verbose) {
        rt_printf("acpi: rsdp=0x%llx source=%s rev=%u oem=", rsdp, source, info->rsdp_revision);
        print_name(r + RSDP_OEMID, 6);
        rt_printf(" checksum %s\n", ok_str(sum_ok));
    }
    if (!sum_ok)
        return false;

    info->root_is_xsdt = info->rsdp_revision >= 2 && rd64(r + RSDP_XSDT) != 0;
    info->root = info->root_is_xsdt ? rd64(r + RSDP_XSDT) : rd32(r + RSDP_RSDT);
    const char *root_sig = info->root_is_xsdt ? "XSDT" : "RSDT";
    uint32_t entry_size = info->root_is_xsdt ? 8 : 4;

    uint32_t len;
    const uint8_t *root = map_table(info, info->root, &len, &sum_ok, verbose);
    if (!root || !sum_ok || memcmp(root, root_sig, 4) != 0) {
        if (verbose)
            rt_printf("acpi: %s invalid\n", root_sig);
        return false;
    }
    info->tables = (len - SDT_HEADER_LEN) / entry_size;
    if (verbose)
        rt_printf("acpi: %s ok entries=%u\n", info->root_is_xsdt ? "xsdt" : "rsdt", info->tables);
    info->ok = true;

    for (uint32_t i = 0; i < info->tables; i++) {
        const uint8_t *ep = root + SDT_HEADER_LEN + i * entry_size;
        uint64_t addr = info->root_is_xsdt ? rd64(ep) : rd32(ep);
        uint32_t tlen;
        const uint8_t *t = map_table(info, addr, &tlen, &sum_ok, verbose);
        if (!t || !sum_ok)
            continue;
        if (memcmp(t, "FACP", 4) == 0 && !info->have_fadt)
            parse_fadt(info, t, tlen, verbose);
        else if (memcmp(t, "APIC", 4) == 0 && !info->have_madt)
            parse_madt(info, t, tlen, verbose);
        else if (memcmp(t, "MCFG", 4) == 0 && !info->have_mcfg)
            parse_mcfg(info, t, tlen, verbose);
        else if (memcmp(t, "WAET", 4) == 0 && tlen >= SDT_HEADER_LEN + 4 && !info->have_waet) {
            info->have_waet = true;
            info->waet_flags = rd32(t + SDT_HEADER_LEN);
        }
    }
    if (verbose) {
        rt_printf("acpi: summary tables=%u bad=%u fadt=%s madt=%s mcfg=%s\n", info->tables,
                  info->bad_tables, info->have_fadt ? "yes" : "no",
                  info->have_madt ? "yes" : "no", info->have_mcfg ? "yes" : "no");
        if (info->have_waet)
            rt_printf("acpi: waet flags=0x%x\n", info->waet_flags);
    }
    return true;
}

uint8_t acpi_s5_typ(const struct acpi_info *info)
{
    return info->have_s5 ? info->s5_typ : LAYOUT_PORTS_SLP_TYP_S5;
}
