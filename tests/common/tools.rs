//! Programs some tests drive (tmux, chromium): found on PATH, or installed with apt-get when
//! the tests run as root on Debian (a fresh CI machine), fetching the package lists if needed.

use std::process::{Command, Stdio};

/// Makes sure `program` runs (`program version_flag` succeeds), installing `package` if it must;
/// panics with what to install.
pub(crate) fn ensure(program: &str, version_flag: &str, package: &str) {
    let runs = || {
        Command::new(program)
            .arg(version_flag)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if runs() {
        return;
    }
    let install = || {
        let _ = Command::new("apt-get")
            .args(["install", "-y", "-qq", package])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status();
        runs()
    };
    let updated = || {
        Command::new("apt-get")
            .args(["update", "-qq"])
            .status()
            .is_ok_and(|s| s.success())
    };
    assert!(
        install() || (updated() && install()),
        "this test needs {program}: apt-get install {package}"
    );
}
