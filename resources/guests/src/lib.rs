//! Tiny test guests for vfiovm, built from C and assembly sources (in this package's directory)
//! by `build.rs` with the host's `gcc`, `as` and `ld`. See `README.md` for each guest's output.
//!
//! ```no_run
//! let image = vfiovm_guests::path("hello").expect("hello is a guest");
//! assert!(image.exists());
//! assert_eq!(vfiovm_guests::path("hello").as_deref(), Some(std::path::Path::new(vfiovm_guests::HELLO)));
//! ```
#![deny(missing_docs)]

use std::path::PathBuf;

include!(concat!(env!("OUT_DIR"), "/guests.rs"));

/// The image of the guest called `name` (one of [`NAMES`]), or `None` if there is no such guest.
pub fn path(name: &str) -> Option<PathBuf> {
    IMAGES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, p)| PathBuf::from(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_guest_was_built_as_an_elf_image_of_its_class() {
        assert!(!NAMES.is_empty());
        for name in NAMES {
            let image = path(name).unwrap_or_else(|| panic!("no path for {name}"));
            // Firmware images are flat binaries of a firmware's size.
            if image.extension().is_some_and(|e| e == "fd") {
                let len = std::fs::metadata(&image).unwrap().len();
                assert_eq!(len, 1_966_080, "{name}");
                continue;
            }
            let bytes =
                std::fs::read(&image).unwrap_or_else(|e| panic!("{}: {e}", image.display()));
            assert_eq!(&bytes[..4], b"\x7fELF", "{name}");
            // Multiboot guests are ELF32, as a multiboot loader wants.
            let class = if name.starts_with("mb_") { 1 } else { 2 };
            assert_eq!(bytes[4], class, "{name}: ELF class");
        }
    }

    #[test]
    fn unknown_names_have_no_path() {
        assert_eq!(path("no-such-guest"), None);
    }
}
