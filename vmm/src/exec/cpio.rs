//! A writer of the cpio "newc" format (the one Linux unpacks as an initramfs,
//! Documentation/driver-api/early-userspace/buffer-format.rst): per entry a 110-byte ASCII
//! header of 13 eight-digit hex fields, the NUL-terminated name and the data, each padded to 4
//! bytes; a `TRAILER!!!` entry ends the archive.

/// An archive being written in memory.
#[derive(Debug, Default)]
pub struct Archive {
    buf: Vec<u8>,
    next_ino: u32,
}

const MAGIC: &[u8] = b"070701";

impl Archive {
    /// An empty archive.
    pub fn new() -> Self {
        Archive {
            buf: Vec::new(),
            next_ino: 1,
        }
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        let ino = self.next_ino;
        self.next_ino += 1;
        let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
        let fields = [
            ino,
            mode,
            0, // uid: root
            0, // gid
            nlink,
            0, // mtime
            u32::try_from(data.len()).expect("initramfs entries are far below 4 GiB"),
            0,
            0,
            0,
            0,
            u32::try_from(name.len() + 1).expect("short names"),
            0, // check
        ];
        self.buf.extend_from_slice(MAGIC);
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while self.buf.len() % 4 != 0 {
            self.buf.push(0);
        }
    }

    /// A directory (its parents must come first).
    pub fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, &[]);
    }

    /// A regular file with permission bits `perm`.
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, 0o100000 | (perm & 0o7777), data);
    }

    /// The finished archive, with its trailer.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.buf
    }
}

/// Reads an archive back: (name, mode, data) per entry, checking magic and padding (tests).
#[cfg(test)]
pub(crate) fn parse(mut b: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
    let total = b.len();
    let mut out = Vec::new();
    loop {
        assert_eq!((total - b.len()) % 4, 0, "entry not 4-aligned");
        assert_eq!(&b[..6], MAGIC);
        let field = |i: usize| {
            u32::from_str_radix(std::str::from_utf8(&b[6 + 8 * i..14 + 8 * i]).unwrap(), 16)
                .unwrap()
        };
        let (mode, size, namesize) = (field(1), field(6) as usize, field(11) as usize);
        let name_end = 110 + namesize;
        let name = String::from_utf8(b[110..name_end - 1].to_vec()).unwrap();
        assert_eq!(b[name_end - 1], 0);
        let data_start = name_end.next_multiple_of(4);
        let data = b[data_start..data_start + size].to_vec();
        b = &b[(data_start + size).next_multiple_of(4)..];
        if name == "TRAILER!!!" {
            assert!(b.is_empty(), "bytes after the trailer");
            return out;
        }
        out.push((name, mode, data));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_with_padding() {
        let mut a = Archive::new();
        a.dir("vfiovm");
        a.file("vfiovm/cmd", 0o644, b"echo hi; exit 7");
        a.file("init", 0o755, &[1, 2, 3]);
        a.file("e", 0o600, b"");
        let bytes = a.finish();
        assert_eq!(bytes.len() % 4, 0);
        assert_eq!(
            parse(&bytes),
            vec![
                ("vfiovm".into(), 0o040755, vec![]),
                ("vfiovm/cmd".into(), 0o100644, b"echo hi; exit 7".to_vec()),
                ("init".into(), 0o100755, vec![1, 2, 3]),
                ("e".into(), 0o100600, vec![]),
            ]
        );
    }

    /// The format as cpio(1) reads it, when the tool is there (Debian's `cpio` package).
    #[test]
    fn gnu_cpio_lists_and_extracts_it() {
        use std::io::Write;
        use std::process::{Command, Stdio};
        if Command::new("cpio").arg("--version").output().is_err() {
            eprintln!("skipped: no cpio(1) here");
            return;
        }
        let dir = std::env::temp_dir().join(format!("vfiovm-cpio-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut a = Archive::new();
        a.dir("d");
        a.file("d/f", 0o640, b"hello\n");
        let bytes = a.finish();
        let mut child = Command::new("cpio")
            .args(["-id", "--quiet"])
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&bytes).unwrap();
        assert!(child.wait().unwrap().success());
        assert_eq!(std::fs::read(dir.join("d/f")).unwrap(), b"hello\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
