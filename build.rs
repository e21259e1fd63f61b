//! Link-time function ordering for the `oxray` binary.
//!
//! A running oxray executes about a third of its code, spread over the whole text segment, and the
//! kernel maps code in 64 KiB fault-around blocks: nearly every block ended up resident in every
//! process. `link/hot-symbols.txt` (made by `tools/hot-symbols.sh` from a profiled run) lists the
//! functions a portal and a bridge execute; the linker places them first, so they share few blocks
//! and the rest of the binary stays on disk (docs/BENCHMARKS.md, idle RSS).
//!
//! Only rust-lld (the default linker of rustc ≥ 1.90 on x86_64 Linux) takes the option, and only
//! there is it passed; `OXRAY_NO_SYMBOL_ORDER=1` turns it off. A name missing from the binary is
//! skipped silently, so a stale list loses effect but never breaks a build.

use std::env;
use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=link/hot-symbols.txt");
    println!("cargo:rerun-if-env-changed=OXRAY_NO_SYMBOL_ORDER");
    if env::var_os("OXRAY_NO_SYMBOL_ORDER").is_some_and(|v| v == "1") {
        return;
    }
    let target = env::var("TARGET").unwrap_or_default();
    let list = Path::new(&env::var("CARGO_MANIFEST_DIR").unwrap_or_default()).join("link/hot-symbols.txt");
    if target != "x86_64-unknown-linux-gnu" || !list.is_file() || !default_linker_is_lld() {
        return;
    }
    // A linker chosen by hand may not be lld.
    let flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    if flags.contains("linker") || env::var_os("RUSTC_LINKER").is_some() {
        return;
    }
    println!("cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}", list.display());
    println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
}

/// rustc 1.90 made rust-lld the default linker for x86_64-unknown-linux-gnu.
fn default_linker_is_lld() -> bool {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let Ok(out) = Command::new(rustc).arg("--version").output() else { return false };
    let text = String::from_utf8_lossy(&out.stdout);
    // "rustc 1.95.0 (59807616e 2026-04-14)"
    let mut parts = text.split_whitespace().nth(1).unwrap_or("").split('.');
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (major, minor) >= (1, 90)
}
