/* pvh_note.S - the ELF note that makes an image PVH-bootable: XEN_ELFNOTE_PHYS32_ENTRY, whose
 * descriptor is the 32-bit physical entry point (pvh_start). The descriptor is 8 bytes wide
 * (upper half zero) because some loaders read a full 64-bit word from ELF64 images. */

#define XEN_ELFNOTE_PHYS32_ENTRY 18

    .section .note.pvh, "a", @note
    .p2align 2
    .long 2f - 1f               /* n_namesz */
    .long 4f - 3f               /* n_descsz */
    .long XEN_ELFNOTE_PHYS32_ENTRY
1:  .asciz "Xen"
2:  .p2align 2
3:  .quad pvh_start
4:  .p2align 2
