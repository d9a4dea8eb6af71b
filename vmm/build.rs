//! Builds `resources/init/vfiovm-init.c`, the init `--exec` packs into the guest's initramfs,
//! as a static program with the host's `gcc` (`$CC` if set), into `$OUT_DIR/vfiovm-init`.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap())
        .join("../resources/init/vfiovm-init.c");
    println!("cargo:rerun-if-changed={}", src.display());
    println!("cargo:rerun-if-env-changed=CC");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("vfiovm-init");
    let cc = env::var("CC").unwrap_or_else(|_| "gcc".into());
    let status = Command::new(&cc)
        .args(["-O2", "-Wall", "-Wextra", "-Werror", "-static", "-s", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .unwrap_or_else(|e| {
            panic!("cannot run {cc} to build the --exec init: {e} (install gcc and libc6-dev)")
        });
    assert!(
        status.success(),
        "{cc} failed to build {} as a static program (install libc6-dev for the static C library)",
        src.display()
    );
}
