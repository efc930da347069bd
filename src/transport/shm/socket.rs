//! The Unix socket every node with shared memory listens on, and the address it announces
//! (`shm:<host id>:<token>:<socket path>`).

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// `$XDG_RUNTIME_DIR/phalanx`, else `/tmp/phalanx-<uid>`.
pub(super) fn default_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("phalanx"),
        _ => std::env::temp_dir().join(format!("phalanx-{}", rustix::process::getuid().as_raw())),
    }
}

/// A file-name-safe form of `s`.
pub(super) fn token(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(48)
        .collect()
}

/// Removes sockets of processes that no longer exist (`…-<pid>.sock`).
fn remove_stale_sockets(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_suffix(".sock")
            .and_then(|n| n.rsplit('-').next())
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Makes sure `dir` is a directory of this user's that nobody else can enter: created if
/// missing; refused if it is a symlink or another user's (someone prepared it for us).
fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = std::fs::symlink_metadata(dir)?;
    let me = rustix::process::geteuid().as_raw();
    if !meta.file_type().is_dir() || meta.uid() != me {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "it is {} owned by uid {}, not a directory of this user (uid {me})",
                if meta.file_type().is_symlink() {
                    "a symlink"
                } else {
                    "something"
                },
                meta.uid()
            ),
        ));
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Binds the socket of node `node_id` in `dir` (made private to this user).
pub(super) fn listen(dir: &Path, node_id: &str) -> Result<(PathBuf, tokio::net::UnixListener)> {
    private_dir(dir).map_err(|e| {
        Error::transport(format!("cannot use {}: {e}", dir.display())).with_source(e)
    })?;
    remove_stale_sockets(dir);
    let path = dir.join(format!(
        "{}-{:08x}-{}.sock",
        token(node_id),
        rand::random::<u32>(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path).map_err(|e| {
        Error::transport(format!("cannot listen on {}: {e}", path.display())).with_source(e)
    })?;
    Ok((path, listener))
}

/// A peer's announced shared-memory address.
#[derive(Debug, Clone)]
pub(super) struct PeerAddress {
    pub(super) host_id: String,
    pub(super) token: String,
    pub(super) path: PathBuf,
}

impl PeerAddress {
    /// `shm:<host id>:<token>:<path>`; the host id may itself contain `:`.
    pub(super) fn parse(address: &str) -> Option<Self> {
        let rest = address.strip_prefix("shm:")?;
        let (head, path) = rest.split_once(":/")?;
        let (host_id, token) = head.rsplit_once(':')?;
        Some(Self {
            host_id: host_id.to_owned(),
            token: token.to_owned(),
            path: PathBuf::from(format!("/{path}")),
        })
    }
}
