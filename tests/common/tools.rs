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
    // Tests run in parallel: one apt-get at a time (a second would find dpkg locked).
    static APT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _apt = APT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
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
    let installed = (0..3).any(|attempt| {
        if attempt > 0 {
            // Another apt may hold the lock for a while (a fresh machine's first boot).
            std::thread::sleep(std::time::Duration::from_secs(10));
        }
        install() || (updated() && install())
    });
    assert!(
        installed,
        "this test needs {program}: apt-get install {package}"
    );
}
