/* print.c - a small printf for the serial console. */
#include "rt.h"

uint64_t rt_udivmod64(uint64_t n, uint64_t d, uint64_t *rem)
{
    uint64_t q = 0, r = 0;

    if (d == 0) {
        if (rem)
            *rem = 0;
        return 0;
    }
    /* Restoring binary long division: one quotient bit per step. */
    for (int bit = 63; bit >= 0; bit--) {
        r = (r << 1) | ((n >> bit) & 1);
        if (r >= d) {
            r -= d;
            q |= 1ULL << bit;
        }
    }
    if (rem)
        *rem = r;
    return q;
}

/* Formats `v` in `base` (10 or 16) into the end of buf; returns the first digit. */
static char *format_u64(char *end, uint64_t v, unsigned base)
{
    static const char digits[] = "0123456789abcdef";
    char *p = end;

    do {
        uint64_t rem;
        if (base == 16) {
            rem = v & 0xf;
            v >>= 4;
        } else {
            v = rt_udivmod64(v, base, &rem);
        }
        *--p = digits[rem];
    } while (v != 0);
    return p;
}

static void emit_padded(const char *s, size_t len, unsigned width, char pad)
{
    for (size_t i = len; i < width; i++)
        serial_putc(pad);
    serial_write(s, len);
}

static void emit_number(uint64_t v, bool negative, unsigned base, unsigned width, char pad)
{
    char buf[24];
    char *end = buf + sizeof(buf);
    char *p = format_u64(end, v, base);

    if (negative)
        *--p = '-';
    emit_padded(p, (size_t)(end - p), width, pad);
}

void rt_vprintf(const char *fmt, va_list ap)
{
    for (const char *f = fmt; *f; f++) {
        if (*f != '%') {
            serial_putc(*f);
            continue;
        }
        f++;
        char pad = ' ';
        unsigned width = 0;
        int longs = 0;
        bool size = false;

        if (*f == '0') {
            pad = '0';
            f++;
        }
        while (*f >= '0' && *f <= '9')
            width = width * 10 + (unsigned)(*f++ - '0');
        while (*f == 'l') {
            longs++;
            f++;
        }
        if (*f == 'z') {
            size = true;
            f++;
        }

        uint64_t v;
        bool negative;
        switch (*f) {
        case 'd': {
            int64_t sv;
            if (size || longs == 1)
                sv = va_arg(ap, long);
            else if (longs >= 2)
                sv = va_arg(ap, long long);
            else
                sv = va_arg(ap, int);
            negative = sv < 0;
            v = negative ? 0 - (uint64_t)sv : (uint64_t)sv;
            emit_number(v, negative, 10, width, pad);
            break;
        }
        case 'u':
        case 'x':
            if (size)
                v = va_arg(ap, size_t);
            else if (longs >= 2)
                v = va_arg(ap, unsigned long long);
            else if (longs == 1)
                v = va_arg(ap, unsigned long);
            else
                v = va_arg(ap, unsigned int);
            emit_number(v, false, *f == 'x' ? 16 : 10, width, pad);
            break;
        case 'p':
            serial_write("0x", 2);
            emit_number((uintptr_t)va_arg(ap, void *), false, 16, width, pad);
            break;
        case 's': {
            const char *s = va_arg(ap, const char *);
            if (!s)
                s = "(null)";
            emit_padded(s, strlen(s), width, ' ');
            break;
        }
        case 'c':
            serial_putc((char)va_arg(ap, int));
            break;
        case '%':
            serial_putc('%');
            break;
        case '\0':
            return;
        default:
            /* Unknown conversion: show it literally so the mistake is visible. */
            serial_putc('%');
            serial_putc(*f);
            break;
        }
    }
}

void rt_printf(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    rt_vprintf(fmt, ap);
    va_end(ap);
}

void rt_print_bytes(const uint8_t *p, size_t len)
{
    bool printable = true;

    for (size_t i = 0; i < len; i++)
        if (p[i] < 0x20 || p[i] > 0x7e)
            printable = false;
    if (printable) {
        serial_write((const char *)p, len);
        return;
    }
    serial_write("hex:", 4);
    for (size_t i = 0; i < len; i++)
        rt_printf("%02x", p[i]);
}
