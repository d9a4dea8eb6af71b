//! Decoding fuzz bytes into guest accesses.
//!
//! Every target reads its input with [`arbitrary::Unstructured`]: a few bytes choose the shape
//! (device layout, sizes) and the rest is a sequence of operations, each one guest access or a
//! host-side event. The helpers here bias the choices towards what a guest really does (1, 2, 4
//! and 8-byte accesses, aligned offsets) while still producing the sizes the bus API accepts but
//! no vCPU produces (0 bytes, 3 bytes, longer than 8).

use arbitrary::{Result, Unstructured};

/// Most operations a single input runs; keeps one input's run time bounded.
pub const MAX_OPS: usize = 512;

/// An access length: mostly 1, 2, 4 or 8 bytes, sometimes 0, odd, or longer than 8.
pub fn access_len(u: &mut Unstructured) -> Result<usize> {
    Ok(match u.int_in_range(0u8..=15)? {
        0..=2 => 1,
        3..=5 => 2,
        6..=9 => 4,
        10..=11 => 8,
        12 => 0,
        13 => 3,
        14 => u.int_in_range(5..=7)?,
        _ => u.int_in_range(9..=40)?,
    })
}

/// `len` bytes of data (zeros once the input runs out).
pub fn data(u: &mut Unstructured, len: usize) -> Result<Vec<u8>> {
    let mut d = vec![0u8; len];
    u.fill_buffer(&mut d)?;
    Ok(d)
}

/// `len` bytes of a little-endian value: all ones, zero, or fuzz bytes.
pub fn value(u: &mut Unstructured, len: usize) -> Result<Vec<u8>> {
    Ok(match u.int_in_range(0u8..=7)? {
        0 => vec![0xff; len],
        1 => vec![0; len],
        _ => data(u, len)?,
    })
}

/// An offset inside `[0, size)` (any `size`, 0 included), biased to the start, to aligned
/// offsets and to the last bytes; sometimes anywhere in the 64-bit space.
pub fn offset_in(u: &mut Unstructured, size: u64) -> Result<u64> {
    let last = size.saturating_sub(1);
    Ok(match u.int_in_range(0u8..=9)? {
        0 => u.arbitrary()?,
        1 => last.saturating_sub(u.int_in_range(0..=15)?),
        2 | 3 => u.int_in_range(0..=last.min(0xff))?,
        4 | 5 => u.int_in_range(0..=last)? & !3,
        _ => u.int_in_range(0..=last)?,
    })
}

/// Whether to do something with probability 1/`n`.
pub fn one_in(u: &mut Unstructured, n: u8) -> Result<bool> {
    Ok(u.int_in_range(1..=n.max(1))? == 1)
}

/// Whether `VFIOVM_FUZZ_TRACE` is set: the targets then print what they decode (for triaging
/// an artifact: `VFIOVM_FUZZ_TRACE=1 fuzz/target/.../<target> <artifact>`).
pub fn tracing() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("VFIOVM_FUZZ_TRACE").is_some())
}

/// Prints a trace line when [`tracing`] is on.
#[macro_export]
macro_rules! trace {
    ($($arg:tt)*) => {
        if $crate::input::tracing() {
            eprintln!($($arg)*);
        }
    };
}
