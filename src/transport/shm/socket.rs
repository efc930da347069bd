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

/// Binds the socket of node `node_id` in `dir` (made private to this user).
pub(super) fn listen(dir: &Path, node_id: &str) -> Result<(PathBuf, tokio::net::UnixListener)> {
    std::fs::create_dir_all(dir)
        .and_then(|()| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        })
        .map_err(|e| {
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
