/* string.c - the few libc string functions the guests (and the compiler) need, and command-line
 * parsing. Built with -fno-tree-loop-distribute-patterns so these loops stay loops. */
#include "rt.h"

void *memcpy(void *dst, const void *src, size_t n)
{
    uint8_t *d = dst;
    const uint8_t *s = src;

    for (size_t i = 0; i < n; i++)
        d[i] = s[i];
    return dst;
}

void *memset(void *dst, int c, size_t n)
{
    uint8_t *d = dst;

    for (size_t i = 0; i < n; i++)
        d[i] = (uint8_t)c;
    return dst;
}

int memcmp(const void *a, const void *b, size_t n)
{
    const uint8_t *x = a, *y = b;

    for (size_t i = 0; i < n; i++)
        if (x[i] != y[i])
            return x[i] < y[i] ? -1 : 1;
    return 0;
}

size_t strlen(const char *s)
{
    size_t n = 0;

    while (s[n])
        n++;
    return n;
}

size_t rt_strnlen(const char *s, size_t max)
{
    size_t n = 0;

    while (n < max && s[n])
        n++;
    return n;
}

int strcmp(const char *a, const char *b)
{
    while (*a && *a == *b) {
        a++;
        b++;
    }
    return (uint8_t)*a - (uint8_t)*b;
}

bool rt_starts_with(const char *s, const char *prefix)
{
    while (*prefix)
        if (*s++ != *prefix++)
            return false;
    return true;
}

static int digit_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

bool rt_parse_u64(const char *s, uint64_t *out)
{
    unsigned base = 10;
    uint64_t v = 0;

    if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        base = 16;
        s += 2;
    }
    if (!*s)
        return false;
    for (; *s; s++) {
        int d = digit_value(*s);
        if (d < 0 || (unsigned)d >= base)
            return false;
        /* Reject overflow: v * base + d must fit in 64 bits. */
        uint64_t limit = base == 16 ? (~0ULL >> 4) : rt_udivmod64(~0ULL - (uint64_t)d, 10, NULL);
        if (v > limit)
            return false;
        v = base == 16 ? (v << 4) | (uint64_t)d : v * 10 + (uint64_t)d;
    }
    *out = v;
    return true;
}

bool rt_cmdline_get(const char *cmdline, const char *key, char *out, size_t outlen)
{
    size_t keylen = strlen(key);
    const char *p = cmdline;

    while (*p) {
        while (*p == ' ')
            p++;
        const char *word = p;
        while (*p && *p != ' ')
            p++;
        size_t wordlen = (size_t)(p - word);
        if (wordlen > keylen && word[keylen] == '=' && memcmp(word, key, keylen) == 0) {
            size_t vlen = wordlen - keylen - 1;
            if (outlen == 0)
                return true;
            if (vlen > outlen - 1)
                vlen = outlen - 1;
            memcpy(out, word + keylen + 1, vlen);
            out[vlen] = '\0';
            return true;
        }
    }
    return false;
}
