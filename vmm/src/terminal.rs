//! Raw mode for stdin while the guest owns the console, restored on every way out.

use vmm_sys_util::terminal::Terminal;

/// While alive, stdin (a terminal) is in raw mode.
#[derive(Debug)]
pub struct RawMode(());

impl RawMode {
    /// Puts stdin in raw mode if it is a terminal; `None` if it is not (a pipe, a file, closed).
    pub fn enter() -> Option<RawMode> {
        // SAFETY: isatty only inspects the descriptor number.
        if unsafe { libc::isatty(libc::STDIN_FILENO) } != 1 {
            return None;
        }
        match std::io::stdin().lock().set_raw_mode() {
            Ok(()) => Some(RawMode(())),
            Err(e) => {
                log::warn!("cannot put the terminal in raw mode: {e}");
                None
            }
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Err(e) = std::io::stdin().lock().set_canon_mode() {
            log::warn!("cannot restore the terminal: {e}");
        }
    }
}
