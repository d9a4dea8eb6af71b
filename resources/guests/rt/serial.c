/* serial.c - COM1 output (16550). Polls LSR.THRE before every byte, with a bound so a missing
 * UART cannot hang the guest. */
#include "rt.h"

#define UART_THR 0 /* transmit holding register (DLAB = 0) */
#define UART_IER 1 /* interrupt enable (DLAB = 0) */
#define UART_DLL 0 /* divisor latch low (DLAB = 1) */
#define UART_DLM 1 /* divisor latch high (DLAB = 1) */
#define UART_FCR 2 /* FIFO control */
#define UART_LCR 3 /* line control */
#define UART_MCR 4 /* modem control */
#define UART_LSR 5 /* line status */

#define LCR_8N1 0x03
#define LCR_DLAB 0x80
#define FCR_ENABLE_CLEAR 0x07
#define MCR_DTR_RTS 0x03
#define LSR_THRE 0x20

#define THRE_POLL_LIMIT 100000

void serial_init(void)
{
    const uint16_t base = LAYOUT_PORTS_COM1;

    outb(base + UART_IER, 0);
    outb(base + UART_LCR, LCR_DLAB);
    outb(base + UART_DLL, 1); /* 115200 baud */
    outb(base + UART_DLM, 0);
    outb(base + UART_LCR, LCR_8N1);
    outb(base + UART_FCR, FCR_ENABLE_CLEAR);
    outb(base + UART_MCR, MCR_DTR_RTS);
}

void serial_putc(char c)
{
    const uint16_t base = LAYOUT_PORTS_COM1;

    for (int i = 0; i < THRE_POLL_LIMIT; i++) {
        if (inb(base + UART_LSR) & LSR_THRE)
            break;
        cpu_pause();
    }
    outb(base + UART_THR, (uint8_t)c);
}

void serial_write(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++)
        serial_putc(s[i]);
}
