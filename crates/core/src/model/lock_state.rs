//! How a revision's plugins.lock compares with what its plugins.yaml resolves to: plain
//! data, shared by the stages that find it out (`resolve`, `pipeline`) and the ones that
//! report it (`report`, the commands), so neither has to import the other.

use super::LockedPlugin;

/// One difference between an old and a new lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockChange {
    /// A plugin pinned for the first time.
    Added(LockedPlugin),
    /// A plugin no longer declared.
    Removed(LockedPlugin),
    /// A plugin whose pin changed (version, source or digest).
    Changed {
        /// The old pin.
        before: LockedPlugin,
        /// The new pin.
        after: LockedPlugin,
    },
}

impl std::fmt::Display for LockChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let short = |s: &str| s.chars().take(12).collect::<String>();
        match self {
            LockChange::Added(p) => write!(
                f,
                "+ {} {} (sha256:{})",
                p.name,
                p.version,
                short(&p.sha256)
            ),
            LockChange::Removed(p) => write!(f, "- {} {}", p.name, p.version),
            LockChange::Changed { before, after } if before.version != after.version => write!(
                f,
                "~ {} {} -> {} (sha256:{})",
                after.name,
                before.version,
                after.version,
                short(&after.sha256)
            ),
            LockChange::Changed { before, after } => write!(
                f,
                "~ {} {} sha256:{} -> sha256:{}",
                after.name,
                after.version,
                short(&before.sha256),
                short(&after.sha256)
            ),
        }
    }
}

/// Whether the revision's plugins.lock pins what its plugins.yaml declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockState {
    /// It does.
    UpToDate,
    /// There is no plugins.lock; packages were resolved without pins.
    Missing,
    /// It does not: these entries would change.
    Stale(Vec<LockChange>),
}

impl LockState {
    /// What is wrong with the lock at `lock_path`, and what to run about it (every message
    /// about a stale lock says); `None` when it is up to date.
    pub fn problem(&self, lock_path: &str) -> Option<String> {
        match self {
            LockState::UpToDate => None,
            LockState::Missing => Some(format!(
                "{lock_path} does not exist; run `plugsync lock` and commit it"
            )),
            LockState::Stale(changes) => Some(format!(
                "{lock_path} is out of date: it differs from plugins.yaml:\n{}\nrun `plugsync lock` and commit it",
                changes
                    .iter()
                    .map(|c| format!("  {c}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            )),
        }
    }
}
