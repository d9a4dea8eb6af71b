/* echo - reads lines from COM1 and prints each back as "echo: <line>"; on the line "quit" it
 * writes 0x2a to the debug-exit port (vfiovm exits with status 85). Tests console input. */
#include "rt.h"

#define UART_RBR 0 /* receive buffer */
#define UART_LSR 5 /* line status */
#define LSR_DR 0x01 /* data ready */

static char serial_getc(void)
{
    while (!(inb(LAYOUT_PORTS_COM1 + UART_LSR) & LSR_DR))
        __asm__ volatile("pause");
    return (char)inb(LAYOUT_PORTS_COM1 + UART_RBR);
}

void guest_main(const struct rt_boot *boot)
{
    (void)boot;
    char line[128];
    rt_printf("echo: ready\n");
    for (;;) {
        size_t n = 0;
        for (;;) {
            char c = serial_getc();
            if (c == '\n' || c == '\r')
                break;
            if (n < sizeof(line) - 1)
                line[n++] = c;
        }
        line[n] = 0;
        if (n == 0)
            continue;
        rt_printf("echo: %s\n", line);
        if (strcmp(line, "quit") == 0)
            outl(LAYOUT_PORTS_DEBUG_EXIT, 0x2a);
    }
}
