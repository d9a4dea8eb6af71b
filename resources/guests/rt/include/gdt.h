/* gdt.h - the flat GDT of the 32-bit runtime (pvh_entry.S), shared with the AP trampoline. */
#ifndef GDT_H
#define GDT_H

#define SEL_CODE32 0x08
#define SEL_DATA 0x10
#define GDT_ENTRIES 3
#define GDT_LIMIT (GDT_ENTRIES * 8 - 1)

/* Base 0, limit 4 GiB, 32-bit; Accessed bits preset so the CPU never writes the table. */
#define GDT_DESC_CODE32 0x00cf9b000000ffff
#define GDT_DESC_DATA 0x00cf93000000ffff

#endif
