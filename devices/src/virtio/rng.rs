//! virtio-rng (device type 4): an entropy source for the guest.
//!
//! One queue (requestq, [`QUEUE_SIZE`] entries); no device configuration, no device features.
//! Each chain's device-writable buffers are filled from the host's `getrandom(2)` (the
//! kernel's CSPRNG, the same pool `/dev/urandom` reads), at most [`MAX_BYTES_PER_REQUEST`]
//! bytes per chain; the used length says how many. Device-readable buffers are ignored (a
//! chain with none writable completes with 0 bytes).

use super::{Chain, Completion, QueueHandler, VirtioDevice, VirtioError, VIRTIO_TYPE_RNG};

/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most bytes handed out per chain (Linux asks for up to a page at a time).
pub const MAX_BYTES_PER_REQUEST: u64 = 64 * 1024;

/// The virtio-rng device.
#[derive(Debug, Default)]
pub struct Rng {
    _private: (),
}

impl Rng {
    /// A virtio-rng device.
    pub fn new() -> Self {
        Rng { _private: () }
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u16 {
        VIRTIO_TYPE_RNG
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        0
    }

    fn activate(&mut self, _features: u64) -> Result<Box<dyn QueueHandler>, VirtioError> {
        Ok(Box::new(RngHandler { buf: vec![0; 4096] }))
    }
}

struct RngHandler {
    buf: Vec<u8>,
}

/// Fills `buf` from the kernel's CSPRNG.
fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: the kernel writes at most `rest.len()` bytes into `rest`, which is a valid
        // mutable buffer of that length for the duration of the call.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    Ok(())
}

impl QueueHandler for RngHandler {
    fn process(&mut self, _queue: u16, chain: &mut Chain<'_>) -> Completion {
        let want = chain.writable_len().min(MAX_BYTES_PER_REQUEST);
        let mut done = 0u64;
        while done < want {
            let n = ((want - done) as usize).min(self.buf.len());
            let chunk = &mut self.buf[..n];
            if let Err(e) = getrandom(chunk) {
                log::warn!("virtio-rng: getrandom failed: {e}");
                break;
            }
            if !chain.write_at(done, chunk) {
                break;
            }
            done += n as u64;
        }
        Completion::Used(done as u32)
    }
}
