//! Following one branch of a remote git repository, for the in-cluster `plugsync run` loop.
//!
//! The loop polls: every [`poll_delay`] it calls [`RemoteRepo::sync`], which asks the server
//! for the branch's commit (one connection, no objects downloaded) and fetches only when that
//! commit changed, shallowly (depth 1). The commit is then read without a checkout by
//! [`crate::source::GitRevision::open`]`(repo.path(), &commit.to_string(), subdir)`, which
//! works on the bare repository kept here.
//!
//! Optionally the loop writes back: [`RemoteRepo::commit_and_push`] commits changed files
//! (the updated lock) on top of the fetched commit and pushes that commit to the branch, as
//! a fast-forward from exactly that commit or not at all ([`RemoteError::PushRejected`]: fetch
//! and retry). The pushed commit then comes back through the next `sync` like any other.
//!
//! Everything here is synchronous libgit2 code; the caller runs it in `spawn_blocking`.
//!
//! **Credentials** come from a Kubernetes Secret with Flux's key names
//! ([`GitAuth::from_secret_data`]): https with `username`/`password` or a token, ssh with
//! `identity` and `known_hosts`. Nothing secret reaches an error, a log line or `Debug`:
//! URLs are printed through [`crate::redact`], and URLs carrying a password (or any userinfo
//! over http) are refused outright, so a credential is never written to the repository's
//! config on disk either.
//!
//! **https.** Basic credentials are sent with the first request (an `Authorization` header)
//! instead of waiting for a 401 challenge, so an unchanged poll is exactly one HTTP request.
//! Because of that, off-site redirects are not followed when credentials are configured
//! (the credentials would go to the other host). Certificate verification is libgit2's
//! default (on, system roots).
//!
//! **ssh.** The server's host key must be in the Secret's `known_hosts`, parsed by the
//! `ssh-key` crate: entries as `ssh-keyscan` prints them (`host[,host2] keytype base64key`,
//! `[host]:port` for other ports, `*`/`?` wildcards, `!` negation, `@revoked`) and hashed
//! ones (`|1|salt|hash`, `ssh-keyscan -H`, `ssh-keygen -H`). An unknown host or a different
//! key refuses the connection. `~/.ssh/known_hosts` is never
//! consulted. The ssh user is the URL's, else the Secret's `username`, else `git`.
//!
//! **Timeouts.** [`RemoteRepo::set_timeout`] gives each network operation a deadline, checked
//! in every libgit2 callback (credentials, host key, transfer and sideband progress): a
//! server that answers too slowly is cut off with [`RemoteError::Timeout`]. A server that
//! stops answering altogether calls no callback, and libgit2's socket timeouts are
//! process-wide options git2 only exposes as `unsafe`; so the caller also runs each operation
//! off the async runtime on its own thread and stops waiting for it at the same deadline
//! (see `gitops`).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use git2::build::TreeUpdateBuilder;
use git2::{
    AutotagOption, CertificateCheckStatus, Cred, CredentialType, ErrorClass, ErrorCode,
    FetchOptions, FileMode, ObjectType, Oid, PushOptions, RemoteCallbacks, RemoteRedirect,
    RemoteUpdateFlags, Repository, Signature,
};
use hmac::{Hmac, Mac as _};
use rand::Rng;
use sha1::Sha1;
use sha2::{Digest as _, Sha256};
use ssh_key::known_hosts::{Entry, HostPatterns, Marker};

use crate::redact::{redact_text, redact_url};

mod address;
mod auth;
mod known_hosts;

use address::*;
pub use auth::GitAuth;
use known_hosts::*;

/// The name of the remote configured in the bare repository.
const REMOTE_NAME: &str = "origin";

/// A refspec that matches nothing a server advertises: downloading with it connects and
/// lists the refs (one round trip) but never wants an object, which is how
/// [`RemoteRepo::remote_head`] gets libgit2's fetch options (preemptive auth headers)
/// without fetching anything.
const LIST_ONLY_REFSPEC: &str = "refs/plugsync/list-only:refs/plugsync/list-only";

/// libgit2 calls the credentials callback again after every rejection, forever; past this
/// many calls in one operation plugsync gives up.
const MAX_CREDENTIAL_CALLS: u32 = 3;

/// Why following the remote branch failed. Messages name the (redacted) URL, the branch or
/// the Secret key at fault, never a credential.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The Secret's keys do not make a usable credential (missing, conflicting, empty, not
    /// UTF-8). Names the key, never its value.
    #[error("git credentials Secret: {0}")]
    Secret(String),
    /// The Secret's `known_hosts` cannot be parsed.
    #[error("git credentials Secret: known_hosts line {line}: {reason}")]
    KnownHosts {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// The repository URL cannot be used (unparseable, credentials in it, wrong kind of
    /// credentials for its scheme).
    #[error("git repository {url}: {reason}")]
    Url {
        /// The URL, redacted.
        url: String,
        /// Why it was refused.
        reason: String,
    },
    /// The branch name is not a valid git ref name.
    #[error("invalid branch name {0:?}")]
    InvalidBranch(String),
    /// The server does not have the branch.
    #[error("branch {branch:?} not found in {url}")]
    BranchNotFound {
        /// The branch, as configured.
        branch: String,
        /// The URL, redacted.
        url: String,
    },
    /// The server refused the credentials, or asked for credentials that are not configured.
    #[error("authentication failed for {url}: {reason}")]
    Auth {
        /// The URL, redacted.
        url: String,
        /// Why, without any credential.
        reason: String,
    },
    /// The ssh server's host key is not the one in `known_hosts`, or the host is not there.
    #[error("ssh host key verification failed for {host}: {reason}")]
    HostKey {
        /// The host, with `:port` when not 22.
        host: String,
        /// What the server offered and what was expected.
        reason: String,
    },
    /// The server did not take a pushed commit: the branch moved since the commit's parent
    /// was fetched (someone else pushed), it is gone, or the server refused the update (a
    /// hook, branch protection). Nothing changed on the server; the caller fetches again
    /// (the next [`RemoteRepo::sync`]) and redoes its commit on the new branch tip. Never
    /// retried with force.
    #[error("push to branch {branch:?} rejected: {reason}")]
    PushRejected {
        /// The branch, as configured.
        branch: String,
        /// Why, as far as the client or the server said.
        reason: String,
    },
    /// [`RemoteRepo::commit_and_push`] was given something that cannot become a commit
    /// (a path outside the repository or into `.git`, the same path twice, an empty
    /// message, an author git refuses). Found before any network traffic.
    #[error("cannot commit: {0}")]
    InvalidCommit(String),
    /// The operation did not finish within the timeout given to [`RemoteRepo::set_timeout`].
    #[error("{what} {url}: no answer within {}", humantime::format_duration(*after))]
    Timeout {
        /// What plugsync was doing.
        what: &'static str,
        /// The URL, redacted.
        url: String,
        /// The timeout.
        after: Duration,
    },
    /// libgit2 failed (network, protocol, local repository).
    #[error("{what} {url}: {message}")]
    Git {
        /// What plugsync was doing.
        what: &'static str,
        /// The URL, redacted.
        url: String,
        /// libgit2's message, with any URL in it redacted.
        message: String,
    },
    /// The local bare repository could not be created or opened.
    #[error("local git cache {}: {message}", path.display())]
    Local {
        /// The repository directory.
        path: PathBuf,
        /// libgit2's message.
        message: String,
    },
}

/// What [`RemoteRepo::sync`] did, so the poll loop re-renders only on a new commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncOutcome {
    /// The branch still points at the commit fetched before; nothing was downloaded.
    Unchanged(Oid),
    /// A new commit was fetched.
    Fetched {
        /// The commit fetched before, if any (`None` on the first sync).
        previous: Option<Oid>,
        /// The branch's commit now, present in the local repository.
        commit: Oid,
    },
}

impl SyncOutcome {
    /// The branch's current commit, whichever way it was reached.
    pub fn commit(&self) -> Oid {
        match self {
            SyncOutcome::Unchanged(commit) | SyncOutcome::Fetched { commit, .. } => *commit,
        }
    }
}

/// Who a commit written back by [`RemoteRepo::commit_and_push`] is from: both its author and
/// its committer, so the branch history shows plugsync (or whoever the configuration names)
/// rather than an identity borrowed from the environment. The time is the current time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitAuthor {
    /// The name, as in `git log`'s `Author:` line.
    pub name: String,
    /// The e-mail address, without angle brackets.
    pub email: String,
}

/// A bare repository in a local directory that follows one branch of one remote.
///
/// One `RemoteRepo` per directory: two processes syncing the same directory at once are not
/// coordinated (libgit2's ref locks make one of them fail, not corrupt the repository).
pub struct RemoteRepo {
    repo: Repository,
    dir: PathBuf,
    url: String,
    parsed: RemoteUrl,
    branch: String,
    /// The last commit fetched, or found in the local ref on open.
    last: Option<Oid>,
    /// The deadline of each network operation, from its start.
    timeout: Option<Duration>,
}

impl fmt::Debug for RemoteRepo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteRepo")
            .field("dir", &self.dir)
            .field("url", &self.parsed.redacted)
            .field("branch", &self.branch)
            .field("last", &self.last)
            .finish()
    }
}

/// What went wrong inside a libgit2 callback; libgit2 only returns a generic error.
#[derive(Default)]
struct CallbackState {
    credential_calls: u32,
    /// Credentials were already offered (preemptively or by a callback).
    offered: bool,
    auth_failure: Option<String>,
    host_key_failure: Option<String>,
    /// Why a push was refused (by the client-side lease check or the server).
    push_rejected: Option<String>,
    /// The server confirmed the branch update.
    push_accepted: bool,
    /// When the operation must have finished.
    deadline: Option<Instant>,
    /// A callback found the deadline passed and cancelled the operation.
    timed_out: bool,
}

impl CallbackState {
    /// `false` (cancel) once the deadline has passed, remembering why.
    fn in_time(&mut self) -> bool {
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            self.timed_out = true;
        }
        !self.timed_out
    }
}

/// Which network operation a connection is for.
enum Transfer {
    /// List the refs only.
    List,
    /// Fetch the branch, shallow when a depth is given.
    Fetch(Option<i32>),
}

impl RemoteRepo {
    /// Creates (or reopens) the bare repository at `dir` and points its `origin` at `url`,
    /// so the cache survives restarts and a reopened repository knows its last commit
    /// without asking the server.
    pub fn open(dir: &Path, url: &str, branch: &str) -> Result<RemoteRepo, RemoteError> {
        let parsed = RemoteUrl::parse(url)?;
        if branch.is_empty() || !git2::Reference::is_valid_name(&format!("refs/heads/{branch}")) {
            return Err(RemoteError::InvalidBranch(branch.to_string()));
        }
        let local = |e: git2::Error| RemoteError::Local {
            path: dir.to_path_buf(),
            message: e.message().to_string(),
        };
        let repo = if dir.join("HEAD").is_file() {
            Repository::open_bare(dir).map_err(local)?
        } else {
            Repository::init_bare(dir).map_err(local)?
        };
        match repo.find_remote(REMOTE_NAME) {
            Ok(remote) if remote.url().ok() == Some(url) => {}
            Ok(_) => repo.remote_set_url(REMOTE_NAME, url).map_err(local)?,
            Err(e) if e.code() == ErrorCode::NotFound => {
                repo.remote_with_fetch(REMOTE_NAME, url, &refspec(branch))
                    .map_err(local)?;
            }
            Err(e) => return Err(local(e)),
        }
        let mut this = RemoteRepo {
            repo,
            dir: dir.to_path_buf(),
            url: url.to_string(),
            parsed,
            branch: branch.to_string(),
            last: None,
            timeout: None,
        };
        this.last = this.local_commit();
        Ok(this)
    }

    /// Bounds each later network operation (listing, fetch, push) to `timeout` from its
    /// start; past it the operation stops at libgit2's next callback with
    /// [`RemoteError::Timeout`].
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = Some(timeout);
    }

    /// The state of one network operation, with its deadline.
    fn callback_state(&self) -> RefCell<CallbackState> {
        RefCell::new(CallbackState {
            deadline: self.timeout.map(|t| Instant::now() + t),
            ..CallbackState::default()
        })
    }

    /// The bare repository's directory, for [`crate::source::GitRevision::open`].
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The last commit fetched (or found locally on open), without asking the server.
    pub fn last_commit(&self) -> Option<Oid> {
        self.last
    }

    /// The commit the remote branch points at, like `git ls-remote`: one connection (one
    /// HTTP request over https), no objects downloaded. Cheap enough to run every poll.
    pub fn remote_head(&self, auth: &GitAuth) -> Result<Oid, RemoteError> {
        self.transfer(auth, Transfer::List)
    }

    /// Fetches just the branch into `refs/remotes/origin/<branch>` and returns its commit.
    /// `depth` makes the fetch shallow (`Some(1)`: the commit alone, no history).
    pub fn fetch(&self, auth: &GitAuth, depth: Option<i32>) -> Result<Oid, RemoteError> {
        self.transfer(auth, Transfer::Fetch(depth))
    }

    /// One poll: asks the server for the branch's commit and, only when it differs from the
    /// last one fetched, fetches it (depth 1). An unchanged branch costs one round trip.
    pub fn sync(&mut self, auth: &GitAuth) -> Result<SyncOutcome, RemoteError> {
        let head = self.remote_head(auth)?;
        if self.last == Some(head) && self.repo.find_commit(head).is_ok() {
            return Ok(SyncOutcome::Unchanged(head));
        }
        let commit = self.fetch(auth, Some(1))?;
        let previous = self.last.replace(commit);
        Ok(SyncOutcome::Fetched { previous, commit })
    }

    /// Commits `files` (repository path → new content; other files unchanged) on top of
    /// `parent` (a commit already fetched, normally the branch's current commit) and pushes it
    /// to the followed branch as a fast-forward. Returns the new commit id.
    ///
    /// This is how the in-cluster loop writes an updated lock back to the branch it follows.
    /// The push is a compare-and-swap: it succeeds only while the server's branch is still
    /// at `parent`. If someone else pushed meanwhile (or the branch is gone, or the server
    /// refuses), the result is [`RemoteError::PushRejected`] and the server is unchanged;
    /// the caller fetches again with [`Self::sync`] and redoes its change on the new commit.
    /// Nothing is ever force-pushed.
    ///
    /// - `files` paths are `/`-separated and relative (`team/plugins.lock`); missing
    ///   directories are created, an existing file keeps its mode (executable or not).
    /// - If every file already has the given content in `parent`, nothing is committed or
    ///   sent: the result is `Ok(parent)` and no connection is made.
    /// - A shallow cache (what [`Self::sync`] keeps) is enough: only `parent` itself must be
    ///   present.
    /// - The remembered commit ([`Self::last_commit`]) and the remote-tracking ref are left
    ///   alone, so the next [`Self::sync`] reports the pushed commit as
    ///   [`SyncOutcome::Fetched`] and the loop applies it like any other new commit.
    ///
    /// Credentials, host key checks and the preemptive Basic header are the same as for
    /// fetching; the Secret must grant write access.
    pub fn commit_and_push(
        &mut self,
        auth: &GitAuth,
        parent: Oid,
        files: &[(&str, &[u8])],
        author: &CommitAuthor,
        message: &str,
    ) -> Result<Oid, RemoteError> {
        self.check_auth_fits(auth)?;
        let Some(commit) = self.write_commit(parent, files, author, message)? else {
            return Ok(parent);
        };
        self.push(auth, parent, commit)?;
        Ok(commit)
    }

    /// Writes the commit object for [`Self::commit_and_push`] (no ref points at it), or
    /// `None` when `files` change nothing in `parent`.
    fn write_commit(
        &self,
        parent: Oid,
        files: &[(&str, &[u8])],
        author: &CommitAuthor,
        message: &str,
    ) -> Result<Option<Oid>, RemoteError> {
        let mut seen = std::collections::BTreeSet::new();
        for (path, _) in files {
            check_commit_path(path)?;
            if !seen.insert(*path) {
                return Err(RemoteError::InvalidCommit(format!(
                    "path {path:?} is given twice"
                )));
            }
        }
        if message.trim().is_empty() {
            return Err(RemoteError::InvalidCommit(
                "the commit message is empty".into(),
            ));
        }
        let signature = Signature::now(&author.name, &author.email).map_err(|e| {
            RemoteError::InvalidCommit(format!("author {:?}: {}", author.name, e.message()))
        })?;
        let local = |e: git2::Error| RemoteError::Local {
            path: self.dir.clone(),
            message: e.message().to_string(),
        };
        let parent_commit = self
            .repo
            .find_commit(parent)
            .map_err(|e| RemoteError::Local {
                path: self.dir.clone(),
                message: format!(
                    "parent commit {parent} is not in the local repository (fetch it first): {}",
                    e.message()
                ),
            })?;
        let parent_tree = parent_commit.tree().map_err(local)?;

        let mut update = TreeUpdateBuilder::new();
        let mut changed = false;
        for (path, content) in files {
            let existing = parent_tree.get_path(Path::new(path)).ok();
            let mode = match existing.as_ref().map(|e| (e.kind(), e.filemode())) {
                None => FileMode::Blob,
                Some((Some(ObjectType::Blob), mode)) if mode == i32::from(FileMode::Blob) => {
                    FileMode::Blob
                }
                Some((Some(ObjectType::Blob), mode))
                    if mode == i32::from(FileMode::BlobExecutable) =>
                {
                    FileMode::BlobExecutable
                }
                Some(_) => {
                    return Err(RemoteError::InvalidCommit(format!(
                        "{path:?} is a directory, symlink or submodule in commit {parent}, \
                         not a file"
                    )));
                }
            };
            let blob = Oid::hash_object(ObjectType::Blob, content).map_err(local)?;
            if existing.is_some_and(|e| e.id() == blob) {
                continue;
            }
            changed = true;
            let written = self.repo.blob(content).map_err(local)?;
            update.upsert(*path, written, mode);
        }
        if !changed {
            return Ok(None);
        }
        // A file under a path that is a file in the parent (`a` is a file, `a/b` is given)
        // fails here.
        let tree = update
            .create_updated(&self.repo, &parent_tree)
            .map_err(|e| RemoteError::InvalidCommit(e.message().to_string()))?;
        let tree = self.repo.find_tree(tree).map_err(local)?;
        let message = if message.ends_with('\n') {
            message.to_string()
        } else {
            format!("{message}\n")
        };
        let commit = self
            .repo
            .commit(
                None,
                &signature,
                &signature,
                &message,
                &tree,
                &[&parent_commit],
            )
            .map_err(local)?;
        Ok(Some(commit))
    }

    /// Pushes `commit` to the branch, only if the server's branch is at `parent`.
    fn push(&self, auth: &GitAuth, parent: Oid, commit: Oid) -> Result<(), RemoteError> {
        let what = "pushing to";
        let state = self.callback_state();
        let branch_ref = format!("refs/heads/{}", self.branch);
        // An in-memory remote, not `origin`: libgit2 moves the remote-tracking refs that
        // match a remote's fetch refspecs after a push, and `refs/remotes/origin/<branch>`
        // must keep meaning "the last commit fetched" (see `commit_and_push`).
        let mut remote = self
            .repo
            .remote_anonymous(&self.url)
            .map_err(|e| self.git_error(what, &e))?;
        let mut callbacks = self.callbacks(auth, &state);
        // Between listing the server's refs and sending anything: the lease. libgit2's own
        // check only refuses a non-fast-forward; this also refuses a branch that is gone or
        // was moved back, since the new commit was made for `parent` only. The server checks
        // the same old value again under its ref lock, which closes the race with a push
        // landing in between.
        callbacks.push_negotiation(|updates| {
            for update in updates {
                if update.dst_refname_bytes() != branch_ref.as_bytes() {
                    continue;
                }
                let remote_at = update.src();
                if remote_at == parent {
                    continue;
                }
                let reason = if remote_at.is_zero() {
                    "the branch no longer exists on the server".to_string()
                } else {
                    format!(
                        "the branch is at {remote_at} on the server, not at {parent} which the \
                         new commit is based on (someone else pushed); fetch and retry"
                    )
                };
                state.borrow_mut().push_rejected = Some(reason);
                return Err(git2::Error::from_str("push rejected"));
            }
            Ok(())
        });
        callbacks.push_update_reference(|refname, status| {
            let mut st = state.borrow_mut();
            match status {
                Some(status) => {
                    st.push_rejected = Some(format!(
                        "the server refused to update {refname}: {}",
                        redact_text(status)
                    ));
                }
                None if refname == branch_ref => st.push_accepted = true,
                None => {}
            }
            Ok(())
        });
        let mut opts = self.push_options(auth, &state, callbacks);
        let spec = format!("{commit}:{branch_ref}");
        let result = remote.push(&[spec.as_str()], Some(&mut opts));
        drop(opts);
        let state = state.into_inner();
        if let Some(reason) = state.push_rejected.clone() {
            return Err(RemoteError::PushRejected {
                branch: self.branch.clone(),
                reason,
            });
        }
        result.map_err(|e| self.classify(what, &e, &state))?;
        if !state.push_accepted {
            return Err(RemoteError::Git {
                what,
                url: self.parsed.redacted.clone(),
                message: format!("the server did not confirm the update of {branch_ref}"),
            });
        }
        Ok(())
    }

    fn local_commit(&self) -> Option<Oid> {
        let name = format!("refs/remotes/{REMOTE_NAME}/{}", self.branch);
        let oid = self.repo.refname_to_id(&name).ok()?;
        self.repo.find_commit(oid).ok().map(|c| c.id())
    }

    /// Refuses credentials that do not fit the URL before any network traffic.
    fn check_auth_fits(&self, auth: &GitAuth) -> Result<(), RemoteError> {
        let reason = match (self.parsed.transport, auth) {
            (Transport::Http, GitAuth::None | GitAuth::Basic { .. }) => return Ok(()),
            (Transport::Ssh, GitAuth::Ssh { .. }) => return Ok(()),
            (Transport::Plain, GitAuth::None) => return Ok(()),
            (Transport::Ssh, _) => format!(
                "ssh needs \"identity\" and \"known_hosts\" in the Secret, which holds {}",
                auth.kind()
            ),
            (Transport::Http, GitAuth::Ssh { .. }) => {
                "the Secret holds an ssh identity but the URL is http(s)".to_string()
            }
            (Transport::Plain, _) => format!(
                "the Secret holds {} but this URL takes no authentication",
                auth.kind()
            ),
        };
        Err(RemoteError::Url {
            url: self.parsed.redacted.clone(),
            reason,
        })
    }

    fn transfer(&self, auth: &GitAuth, transfer: Transfer) -> Result<Oid, RemoteError> {
        self.check_auth_fits(auth)?;
        let state = self.callback_state();
        let branch_ref = format!("refs/heads/{}", self.branch);
        let (what, spec, depth) = match transfer {
            Transfer::List => ("listing refs of", LIST_ONLY_REFSPEC.to_string(), None),
            Transfer::Fetch(depth) => ("fetching", refspec(&self.branch), depth),
        };
        let mut remote = self
            .repo
            .find_remote(REMOTE_NAME)
            .map_err(|e| self.git_error(what, &e))?;
        let mut opts = self.fetch_options(auth, &state);
        opts.download_tags(AutotagOption::None);
        if let Some(depth) = depth {
            opts.depth(depth);
        }
        let result = (|| {
            remote.download(&[spec.as_str()], Some(&mut opts))?;
            let head = remote
                .list()?
                .iter()
                .find(|h| h.name() == branch_ref)
                .map(|h| h.oid());
            if head.is_some() && matches!(transfer, Transfer::Fetch(_)) {
                remote.update_tips(
                    None,
                    RemoteUpdateFlags::empty(),
                    AutotagOption::None,
                    Some("plugsync: fetch"),
                )?;
            }
            Ok::<_, git2::Error>(head)
        })();
        // A failed disconnect after a finished transfer changes nothing for the caller.
        let _ = remote.disconnect();
        drop(opts);
        let head = result.map_err(|e| self.classify(what, &e, &state.borrow()))?;
        let head = head.ok_or_else(|| RemoteError::BranchNotFound {
            branch: self.branch.clone(),
            url: self.parsed.redacted.clone(),
        })?;
        if matches!(transfer, Transfer::Fetch(_)) {
            // The object must now be here and be a commit (a branch pointing at a tag or
            // tree is not something we can render).
            self.repo
                .find_commit(head)
                .map_err(|e| self.git_error(what, &e))?;
        }
        Ok(head)
    }

    fn fetch_options<'a>(
        &'a self,
        auth: &'a GitAuth,
        state: &'a RefCell<CallbackState>,
    ) -> FetchOptions<'a> {
        let mut opts = FetchOptions::new();
        if let Some(header) = self.preemptive_auth(auth, state) {
            opts.custom_headers(&[&header]);
            opts.follow_redirects(RemoteRedirect::None);
        }
        opts.remote_callbacks(self.callbacks(auth, state));
        opts
    }

    /// Push options with the same credentials, host key check and preemptive auth header as
    /// [`Self::fetch_options`]; `callbacks` comes from [`Self::callbacks`] with the push
    /// callbacks added.
    fn push_options<'a>(
        &'a self,
        auth: &'a GitAuth,
        state: &'a RefCell<CallbackState>,
        callbacks: RemoteCallbacks<'a>,
    ) -> PushOptions<'a> {
        let mut opts = PushOptions::new();
        if let Some(header) = self.preemptive_auth(auth, state) {
            opts.custom_headers(&[&header]);
            opts.follow_redirects(RemoteRedirect::None);
        }
        opts.remote_callbacks(callbacks);
        opts
    }

    /// The `Authorization` header sent with every http request when Basic credentials are
    /// configured (and marks them offered, so a 401 is not answered with the same ones).
    /// Preemptive: an unchanged poll is one request, not a 401 and a retry. Off-site
    /// redirects would carry the header to another host, so the caller must not follow them.
    fn preemptive_auth(&self, auth: &GitAuth, state: &RefCell<CallbackState>) -> Option<String> {
        let (Transport::Http, GitAuth::Basic { username, password }) =
            (self.parsed.transport, auth)
        else {
            return None;
        };
        let basic =
            base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
        state.borrow_mut().offered = true;
        Some(format!("Authorization: Basic {basic}"))
    }

    /// The credentials and host key callbacks every connection uses (fetch, list, push).
    /// Failures are recorded in `state`, since libgit2 only hands back a generic error.
    fn callbacks<'a>(
        &'a self,
        auth: &'a GitAuth,
        state: &'a RefCell<CallbackState>,
    ) -> RemoteCallbacks<'a> {
        let mut callbacks = RemoteCallbacks::new();
        let url_user = self.parsed.user.clone();
        callbacks.transfer_progress(move |_| state.borrow_mut().in_time());
        callbacks.sideband_progress(move |_| state.borrow_mut().in_time());
        callbacks.credentials(move |_url, username_from_url, allowed| {
            let mut st = state.borrow_mut();
            if !st.in_time() {
                return Err(git2::Error::from_str("timed out"));
            }
            st.credential_calls += 1;
            let fail = |st: &mut CallbackState, reason: String| {
                st.auth_failure = Some(reason);
                Err(git2::Error::from_str("authentication failed"))
            };
            if st.credential_calls > MAX_CREDENTIAL_CALLS {
                return fail(&mut st, "the server kept asking for credentials".into());
            }
            match auth {
                GitAuth::None => fail(
                    &mut st,
                    "the server asks for credentials and the Secret holds none".into(),
                ),
                GitAuth::Basic { username, password } => {
                    if !allowed.contains(CredentialType::USER_PASS_PLAINTEXT) {
                        return fail(
                            &mut st,
                            "the server does not accept username/password".into(),
                        );
                    }
                    if st.offered {
                        return fail(&mut st, "the server rejected the credentials".into());
                    }
                    st.offered = true;
                    Cred::userpass_plaintext(username, password)
                }
                GitAuth::Ssh {
                    username,
                    private_key,
                    passphrase,
                    ..
                } => {
                    let user = username_from_url
                        .map(str::to_string)
                        .or_else(|| url_user.clone())
                        .unwrap_or_else(|| username.clone());
                    if allowed.contains(CredentialType::USERNAME) {
                        return Cred::username(&user);
                    }
                    if !allowed.contains(CredentialType::SSH_KEY)
                        && !allowed.contains(CredentialType::SSH_MEMORY)
                    {
                        return fail(&mut st, "the server does not accept ssh keys".into());
                    }
                    if st.offered {
                        return fail(&mut st, format!("the server rejected the key for user {user:?}"));
                    }
                    st.offered = true;
                    Cred::ssh_key_from_memory(&user, None, private_key, passphrase.as_deref())
                        .or_else(|_| {
                            fail(&mut st, "the identity could not be loaded (wrong passphrase, or an unsupported key format)".into())
                        })
                }
            }
        });
        let parsed = &self.parsed;
        callbacks.certificate_check(move |cert, _hostname| {
            if !state.borrow_mut().in_time() {
                return Err(git2::Error::from_str("timed out"));
            }
            let Some(hostkey) = cert.as_hostkey() else {
                // TLS: libgit2's own verification decides.
                return Ok(CertificateCheckStatus::CertificatePassthrough);
            };
            let known_hosts = match auth {
                GitAuth::Ssh { known_hosts, .. } => known_hosts.as_str(),
                _ => "",
            };
            let offered = match (hostkey.hostkey(), hostkey.hash_sha256()) {
                (Some(raw), _) => OfferedKey::Raw(raw.to_vec()),
                (None, Some(sha)) => OfferedKey::Sha256(*sha),
                (None, None) => OfferedKey::Sha256([0; 32]),
            };
            match verify_host_key(known_hosts, &parsed.known_hosts_name(), &offered) {
                Ok(()) => Ok(CertificateCheckStatus::CertificateOk),
                Err(reason) => {
                    state.borrow_mut().host_key_failure = Some(reason);
                    Err(git2::Error::from_str("host key verification failed"))
                }
            }
        });
        callbacks
    }

    fn classify(&self, what: &'static str, e: &git2::Error, state: &CallbackState) -> RemoteError {
        if state.timed_out {
            return RemoteError::Timeout {
                what,
                url: self.parsed.redacted.clone(),
                after: self.timeout.unwrap_or_default(),
            };
        }
        if let Some(reason) = &state.host_key_failure {
            return RemoteError::HostKey {
                host: self.parsed.known_hosts_name(),
                reason: reason.clone(),
            };
        }
        if let Some(reason) = &state.auth_failure {
            return RemoteError::Auth {
                url: self.parsed.redacted.clone(),
                reason: reason.clone(),
            };
        }
        if e.code() == ErrorCode::NotFastForward {
            return RemoteError::PushRejected {
                branch: self.branch.clone(),
                reason: redact_text(e.message()),
            };
        }
        let message = e.message();
        let auth_like = e.code() == ErrorCode::Auth
            || (e.class() == ErrorClass::Http
                && (message.contains("401") || message.contains("403")))
            || (e.class() == ErrorClass::Ssh && message.contains("authenticat"));
        if auth_like {
            return RemoteError::Auth {
                url: self.parsed.redacted.clone(),
                reason: redact_text(message),
            };
        }
        self.git_error(what, e)
    }

    fn git_error(&self, what: &'static str, e: &git2::Error) -> RemoteError {
        RemoteError::Git {
            what,
            url: self.parsed.redacted.clone(),
            message: redact_text(e.message()).replace(&self.url, &self.parsed.redacted),
        }
    }
}

/// Refuses a path [`RemoteRepo::commit_and_push`] must not write: empty, absolute, with
/// empty, `.` or `..` components, into `.git`, or with characters git trees cannot hold.
fn check_commit_path(path: &str) -> Result<(), RemoteError> {
    let bad = |reason: &str| {
        Err(RemoteError::InvalidCommit(format!(
            "path {path:?}: {reason}"
        )))
    };
    if path.is_empty() {
        return bad("empty");
    }
    if path.starts_with('/') {
        return bad("must be relative to the repository root");
    }
    if path.contains('\0') || path.contains('\\') {
        return bad("contains a NUL or a backslash");
    }
    for component in path.split('/') {
        match component {
            "" => return bad("has an empty component"),
            "." | ".." => return bad("has a `.` or `..` component"),
            c if c.eq_ignore_ascii_case(".git") => return bad("is inside `.git`"),
            _ => {}
        }
    }
    Ok(())
}

/// The refspec fetching one branch into its remote-tracking ref.
fn refspec(branch: &str) -> String {
    format!("+refs/heads/{branch}:refs/remotes/{REMOTE_NAME}/{branch}")
}

/// The delay before the next poll: `interval` ± `jitter` (a fraction, clamped to 0..=1),
/// uniformly, so many controllers following one server do not poll in lockstep.
/// Deterministic for a seeded `rng`, which is what the tests use.
pub fn poll_delay<R: Rng + ?Sized>(interval: Duration, jitter: f64, rng: &mut R) -> Duration {
    let jitter = if jitter.is_finite() {
        jitter.clamp(0.0, 1.0)
    } else {
        0.0
    };
    if jitter == 0.0 {
        return interval;
    }
    let factor = 1.0 + rng.random_range(-jitter..=jitter);
    interval.mul_f64(factor.max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng as _;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    /// An ed25519 public key blob (type name + 32 key bytes), base64.
    fn ed25519_blob(fill: u8) -> (Vec<u8>, String) {
        let mut blob = Vec::new();
        blob.extend_from_slice(&11u32.to_be_bytes());
        blob.extend_from_slice(b"ssh-ed25519");
        blob.extend_from_slice(&32u32.to_be_bytes());
        blob.extend_from_slice(&[fill; 32]);
        let b64 = base64::engine::general_purpose::STANDARD.encode(&blob);
        (blob, b64)
    }

    const KEY: &str = "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA-super-secret\n-----END OPENSSH PRIVATE KEY-----\n";

    #[test]
    fn secret_username_password_is_basic() {
        let auth =
            GitAuth::from_secret_data(&data(&[("username", "alice"), ("password", "pw-123")]))
                .unwrap();
        assert_eq!(
            auth,
            GitAuth::Basic {
                username: "alice".into(),
                password: "pw-123".into()
            }
        );
    }

    #[test]
    fn secret_token_is_basic_with_default_or_given_user() {
        let auth = GitAuth::from_secret_data(&data(&[("bearerToken", "tok")])).unwrap();
        assert_eq!(
            auth,
            GitAuth::Basic {
                username: "git".into(),
                password: "tok".into()
            }
        );
        let auth =
            GitAuth::from_secret_data(&data(&[("token", "tok"), ("username", "x-access-token")]))
                .unwrap();
        assert_eq!(
            auth,
            GitAuth::Basic {
                username: "x-access-token".into(),
                password: "tok".into()
            }
        );
    }

    #[test]
    fn secret_identity_needs_known_hosts() {
        let err = GitAuth::from_secret_data(&data(&[("identity", KEY)])).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("known_hosts"), "{text}");
        assert!(!text.contains("super-secret"), "{text}");

        let (_, b64) = ed25519_blob(7);
        let kh = format!("[127.0.0.1]:2222 ssh-ed25519 {b64}\n");
        let auth = GitAuth::from_secret_data(&data(&[
            ("identity", KEY),
            ("known_hosts", &kh),
            ("password", "phrase"),
        ]))
        .unwrap();
        match auth {
            GitAuth::Ssh {
                username,
                passphrase,
                ..
            } => {
                assert_eq!(username, "git");
                assert_eq!(passphrase.as_deref(), Some("phrase"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn secret_conflicts_and_gaps_name_keys_not_values() {
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str]);
        let cases: &[Case<'_>] = &[
            (
                &[("bearerToken", "s3cr3t-a"), ("token", "s3cr3t-b")],
                &["bearerToken", "token"],
            ),
            (
                &[("token", "s3cr3t-a"), ("password", "s3cr3t-b")],
                &["password", "token"],
            ),
            (
                &[
                    ("identity", KEY),
                    ("bearerToken", "s3cr3t-a"),
                    ("known_hosts", "h ssh-ed25519 AAAA"),
                ],
                &["identity", "bearerToken"],
            ),
            (&[("username", "bob")], &["username", "password"]),
            (&[("password", "s3cr3t-a")], &["password", "username"]),
            (&[("password", "  ")], &["password", "empty"]),
            (
                &[
                    ("identity", "s3cr3t-a-not-a-key"),
                    ("known_hosts", "h ssh-ed25519 AAAA"),
                ],
                &["identity", "PEM"],
            ),
        ];
        for (pairs, must) in cases {
            let err = GitAuth::from_secret_data(&data(pairs))
                .unwrap_err()
                .to_string();
            for word in *must {
                assert!(err.contains(word), "{pairs:?}: {err}");
            }
            assert!(
                !err.contains("s3cr3t") && !err.contains("super-secret"),
                "{err}"
            );
        }
        let mut bad = data(&[("username", "u")]);
        bad.insert("password".into(), vec![0xff, 0xfe]);
        let err = GitAuth::from_secret_data(&bad).unwrap_err().to_string();
        assert!(err.contains("\"password\" is not UTF-8"), "{err}");
    }

    #[test]
    fn secret_without_credentials_is_anonymous() {
        assert_eq!(
            GitAuth::from_secret_data(&BTreeMap::new()).unwrap(),
            GitAuth::None
        );
        assert_eq!(
            GitAuth::from_secret_data(&data(&[("identity.pub", "ssh-ed25519 AAAA")])).unwrap(),
            GitAuth::None
        );
    }

    #[test]
    fn debug_redacts_secrets() {
        let basic = GitAuth::Basic {
            username: "alice".into(),
            password: "pw-very-secret".into(),
        };
        let ssh = GitAuth::Ssh {
            username: "git".into(),
            private_key: KEY.into(),
            passphrase: Some("phrase-secret".into()),
            known_hosts: "h ssh-ed25519 AAAA\n".into(),
        };
        let text = format!("{basic:?} {ssh:?} {basic:#?}");
        assert!(text.contains("alice") && text.contains("***"), "{text}");
        for secret in ["pw-very-secret", "super-secret", "phrase-secret"] {
            assert!(!text.contains(secret), "{text}");
        }
    }

    #[test]
    fn urls_with_credentials_are_refused_and_redacted() {
        for url in [
            "https://user:pw-secret@example.com/r.git",
            "https://tok-secret@example.com/r.git",
            "ssh://git:pw-secret@example.com/r.git",
        ] {
            let err = RemoteUrl::parse(url).unwrap_err().to_string();
            assert!(err.contains("***@example.com"), "{err}");
            assert!(!err.contains("secret"), "{err}");
        }
        let ssh = RemoteUrl::parse("ssh://git@Example.com:2222/org/r.git").unwrap();
        assert_eq!(ssh.transport, Transport::Ssh);
        assert_eq!(ssh.known_hosts_name(), "[example.com]:2222");
        assert_eq!(ssh.user.as_deref(), Some("git"));
        let scp = RemoteUrl::parse("git@github.com:org/r.git").unwrap();
        assert_eq!(scp.transport, Transport::Ssh);
        assert_eq!(scp.known_hosts_name(), "github.com");
        assert_eq!(
            RemoteUrl::parse("/srv/git/r").unwrap().transport,
            Transport::Plain
        );
        assert_eq!(
            RemoteUrl::parse("https://example.com/r.git")
                .unwrap()
                .transport,
            Transport::Http
        );
    }

    #[test]
    fn known_hosts_accepts_the_right_key_only() {
        let (good, good64) = ed25519_blob(1);
        let (bad, _) = ed25519_blob(2);
        let kh = format!(
            "# comment\n\n[127.0.0.1]:2222,other ssh-ed25519 {good64} comment\n\
             github.com ssh-ed25519 {good64}\n"
        );
        assert_eq!(
            verify_host_key(&kh, "[127.0.0.1]:2222", &OfferedKey::Raw(good.clone())),
            Ok(())
        );
        assert_eq!(
            verify_host_key(&kh, "GitHub.com", &OfferedKey::Raw(good.clone())),
            Ok(())
        );
        let sha: [u8; 32] = Sha256::digest(&good).into();
        assert_eq!(
            verify_host_key(&kh, "other", &OfferedKey::Sha256(sha)),
            Ok(())
        );

        let err =
            verify_host_key(&kh, "[127.0.0.1]:2222", &OfferedKey::Raw(bad.clone())).unwrap_err();
        assert!(
            err.contains("not the key") && err.contains("ssh-ed25519 SHA256:"),
            "{err}"
        );
        // Port 22 form does not match a `[host]:port` entry.
        let err = verify_host_key(&kh, "127.0.0.1", &OfferedKey::Raw(good.clone())).unwrap_err();
        assert!(err.contains("not in known_hosts"), "{err}");
    }

    #[test]
    fn known_hosts_wildcards_negation_revocation_and_hashes() {
        let (key, key64) = ed25519_blob(3);
        let kh = format!("*.example.com,!bad.example.com ssh-ed25519 {key64}\n");
        assert_eq!(
            verify_host_key(&kh, "git.example.com", &OfferedKey::Raw(key.clone())),
            Ok(())
        );
        assert!(verify_host_key(&kh, "bad.example.com", &OfferedKey::Raw(key.clone())).is_err());
        assert!(verify_host_key(&kh, "example.com", &OfferedKey::Raw(key.clone())).is_err());

        let revoked = format!("{kh}@revoked * ssh-ed25519 {key64}\n");
        let err = verify_host_key(&revoked, "git.example.com", &OfferedKey::Raw(key.clone()))
            .unwrap_err();
        assert!(err.contains("@revoked"), "{err}");

        // Hashed names (`ssh-keygen -H`): HMAC-SHA1 of the known_hosts name, keyed by the salt.
        let hashed_line = |name: &str, salt: &[u8]| {
            let mut mac = Hmac::<Sha1>::new_from_slice(salt).unwrap();
            mac.update(name.as_bytes());
            let b64 = &base64::engine::general_purpose::STANDARD;
            format!(
                "|1|{}|{} ssh-ed25519 {key64}\n",
                b64.encode(salt),
                b64.encode(mac.finalize().into_bytes())
            )
        };
        let hashed = hashed_line("[git.example.com]:2222", b"twenty-byte-salt-abc");
        assert_eq!(
            verify_host_key(
                &hashed,
                "[git.example.com]:2222",
                &OfferedKey::Raw(key.clone())
            ),
            Ok(())
        );
        // The same host on another port, or another host, is not that entry.
        for other in ["git.example.com", "[git.example.org]:2222"] {
            let err = verify_host_key(&hashed, other, &OfferedKey::Raw(key.clone())).unwrap_err();
            assert!(err.contains("not in known_hosts"), "{other}: {err}");
        }
        // A hashed entry with another key refuses the known host.
        let (other_key, _) = ed25519_blob(9);
        let err = verify_host_key(
            &hashed,
            "[git.example.com]:2222",
            &OfferedKey::Raw(other_key),
        )
        .unwrap_err();
        assert!(err.contains("not the key"), "{err}");
        // A hashed entry can be revoked like any other.
        let revoked = format!("@revoked {hashed}");
        let err =
            verify_host_key(&revoked, "[git.example.com]:2222", &OfferedKey::Raw(key)).unwrap_err();
        assert!(err.contains("@revoked"), "{err}");
    }

    #[test]
    fn known_hosts_reads_rsa_and_ecdsa_keys() {
        // As `ssh-keyscan` prints them (keys made with ssh-keygen for this test).
        let rsa = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDBA1JaxUqVd94n7HkSoEYSoGAJIIhP9qjVUTabgeoG4xskrA9VDNBKL1N7DKZVJ4zEpWGWWKNJpW66/zZ8paSOEtY0B/XZDW62gyNBOXjjInHUKcz5koGb71yplQDttSv6bTIZDOBX3VIcvxKzMt7rhTKlurYKqQjlBpTkwD6wEQ==";
        let ecdsa = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBEgFcZo6/gDXAbWAGFWPkf3VebofRkxEfmwvtPzbJbchoOYmB3XC1hMlJZAQ2V6xW5Y76k1SobMV4aBlsNCeKEk=";
        let kh = format!("git.example.com {rsa}\ngit.example.com {ecdsa}\n");
        for line in [rsa, ecdsa] {
            let blob = base64::engine::general_purpose::STANDARD
                .decode(line.split(' ').nth(1).unwrap())
                .unwrap();
            assert_eq!(
                verify_host_key(&kh, "git.example.com", &OfferedKey::Raw(blob)),
                Ok(())
            );
        }
        let parsed = parse_known_hosts(&kh).unwrap();
        let types: Vec<&str> = parsed.iter().map(|e| e.key_type.as_str()).collect();
        assert_eq!(types, ["ssh-rsa", "ecdsa-sha2-nistp256"]);
    }

    #[test]
    fn known_hosts_parse_errors_name_the_line() {
        let (_, key64) = ed25519_blob(4);
        for (text, line, want) in [
            ("host ssh-ed25519".to_string(), 1, "expected"),
            (
                "# c\nhost ssh-ed25519 !!!notbase64".to_string(),
                2,
                "base64",
            ),
            (
                format!("host ssh-rsa {key64}"),
                1,
                "does not match its key type",
            ),
            (
                format!("@bogus host ssh-ed25519 {key64}"),
                1,
                "unknown marker",
            ),
        ] {
            match parse_known_hosts(&text) {
                Err(RemoteError::KnownHosts { line: l, reason }) => {
                    assert_eq!(l, line, "{text}");
                    assert!(reason.contains(want), "{reason}");
                }
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    /// A cache whose remote is unreachable (nothing listens on port 9) holding one commit
    /// with `plugins.lock`, an executable `bin/run.sh` and `team/a.txt`.
    fn offline_cache(dir: &Path) -> (RemoteRepo, Oid) {
        let repo = RemoteRepo::open(dir, "git://127.0.0.1:9/none.git", "main").unwrap();
        let empty = repo.repo.treebuilder(None).unwrap().write().unwrap();
        let empty = repo.repo.find_tree(empty).unwrap();
        let mut update = TreeUpdateBuilder::new();
        for (path, content, mode) in [
            ("plugins.lock", &b"v: 1\n"[..], FileMode::Blob),
            ("bin/run.sh", b"#!/bin/sh\n", FileMode::BlobExecutable),
            ("team/a.txt", b"a\n", FileMode::Blob),
        ] {
            let blob = repo.repo.blob(content).unwrap();
            update.upsert(path, blob, mode);
        }
        let tree = update.create_updated(&repo.repo, &empty).unwrap();
        let tree = repo.repo.find_tree(tree).unwrap();
        let sig = Signature::now("t", "t@example.invalid").unwrap();
        let commit = repo
            .repo
            .commit(None, &sig, &sig, "base\n", &tree, &[])
            .unwrap();
        drop((tree, empty));
        (repo, commit)
    }

    fn author() -> CommitAuthor {
        CommitAuthor {
            name: "plugsync bot".into(),
            email: "bot@plugsync.invalid".into(),
        }
    }

    #[test]
    fn write_commit_replaces_and_adds_nested_files_keeping_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let (repo, parent) = offline_cache(dir.path());
        let files: &[(&str, &[u8])] = &[
            ("team/deep/er/plugins.lock", b"new\n"),
            ("bin/run.sh", b"#!/bin/sh\nexit 0\n"),
            ("plugins.lock", b"v: 1\n"),
        ];
        let commit = repo
            .write_commit(parent, files, &author(), "update")
            .unwrap()
            .expect("a change");
        let commit = repo.repo.find_commit(commit).unwrap();
        assert_eq!(commit.parent_ids().collect::<Vec<_>>(), [parent]);
        assert_eq!(commit.message(), Ok("update\n"));
        assert_eq!(commit.author().name(), Ok("plugsync bot"));
        assert_eq!(commit.committer().email(), Ok("bot@plugsync.invalid"));
        let tree = commit.tree().unwrap();
        let read = |path: &str| {
            let entry = tree.get_path(Path::new(path)).unwrap();
            let blob = repo.repo.find_blob(entry.id()).unwrap();
            (blob.content().to_vec(), entry.filemode())
        };
        assert_eq!(
            read("team/deep/er/plugins.lock"),
            (b"new\n".to_vec(), i32::from(FileMode::Blob))
        );
        assert_eq!(
            read("bin/run.sh"),
            (
                b"#!/bin/sh\nexit 0\n".to_vec(),
                i32::from(FileMode::BlobExecutable)
            ),
            "an executable stays executable"
        );
        assert_eq!(read("team/a.txt").0, b"a\n");
        assert_eq!(read("plugins.lock").0, b"v: 1\n");
    }

    #[test]
    fn unchanged_content_is_not_committed_nor_pushed() {
        let dir = tempfile::tempdir().unwrap();
        let (mut repo, parent) = offline_cache(dir.path());
        let same: &[(&str, &[u8])] = &[("plugins.lock", b"v: 1\n"), ("team/a.txt", b"a\n")];
        // The server is unreachable: Ok means no connection was attempted.
        assert_eq!(
            repo.commit_and_push(&GitAuth::None, parent, same, &author(), "m")
                .unwrap(),
            parent
        );
        assert_eq!(repo.last_commit(), None);
        // With a change, it does try to connect, and fails as a network error, not a
        // rejection to retry.
        let err = repo
            .commit_and_push(
                &GitAuth::None,
                parent,
                &[("plugins.lock", b"v: 2\n")],
                &author(),
                "m",
            )
            .unwrap_err();
        assert!(
            matches!(
                err,
                RemoteError::Git {
                    what: "pushing to",
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn commit_input_is_checked_before_any_network() {
        let dir = tempfile::tempdir().unwrap();
        let (mut repo, parent) = offline_cache(dir.path());
        let mut check =
            |files: &[(&str, &[u8])], author: &CommitAuthor, message: &str, want: &str| {
                let err = repo
                    .commit_and_push(&GitAuth::None, parent, files, author, message)
                    .unwrap_err();
                assert!(
                    matches!(&err, RemoteError::InvalidCommit(m) if m.contains(want)),
                    "{files:?} {message:?}: {err:?}"
                );
            };
        let ok = author();
        for path in [
            "",
            "/etc/passwd",
            "a//b",
            "../x",
            "a/./b",
            ".git/config",
            "a/.GIT/x",
            "a\\b",
        ] {
            check(&[(path, b"x")], &ok, "m", "path");
        }
        check(&[("a", b"1"), ("a", b"2")], &ok, "m", "twice");
        check(&[("team", b"x")], &ok, "m", "not a file");
        check(&[("plugins.lock/x", b"x")], &ok, "m", "");
        check(&[("x", b"x")], &ok, " \n", "message is empty");
        let bad = CommitAuthor {
            name: "evil <x>".into(),
            email: "e@example.invalid".into(),
        };
        check(&[("x", b"x")], &bad, "m", "author");

        let missing = Oid::from_str("0123456789abcdef0123456789abcdef01234567").unwrap();
        let err = repo
            .commit_and_push(&GitAuth::None, missing, &[("x", b"x")], &author(), "m")
            .unwrap_err();
        assert!(
            matches!(&err, RemoteError::Local { message, .. } if message.contains("fetch it first")),
            "{err:?}"
        );
        let err = repo
            .commit_and_push(&basic_auth(), parent, &[("x", b"x")], &author(), "m")
            .unwrap_err();
        assert!(matches!(err, RemoteError::Url { .. }), "{err:?}");
    }

    fn basic_auth() -> GitAuth {
        GitAuth::Basic {
            username: "u".into(),
            password: "p".into(),
        }
    }

    #[test]
    fn poll_delay_stays_within_jitter_and_is_seeded() {
        let interval = Duration::from_secs(60);
        let mut a = rand::rngs::StdRng::seed_from_u64(42);
        let mut b = rand::rngs::StdRng::seed_from_u64(42);
        let first: Vec<Duration> = (0..50).map(|_| poll_delay(interval, 0.1, &mut a)).collect();
        let second: Vec<Duration> = (0..50).map(|_| poll_delay(interval, 0.1, &mut b)).collect();
        assert_eq!(first, second);
        for d in &first {
            assert!(
                *d >= Duration::from_secs(54) && *d <= Duration::from_secs(66),
                "{d:?}"
            );
        }
        let distinct: std::collections::BTreeSet<_> = first.iter().collect();
        assert!(distinct.len() > 40, "jitter must vary the delay");
        assert!(first.iter().any(|d| *d < interval) && first.iter().any(|d| *d > interval));
    }

    #[test]
    fn poll_delay_without_jitter_is_the_interval() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let interval = Duration::from_millis(1500);
        assert_eq!(poll_delay(interval, 0.0, &mut rng), interval);
        assert_eq!(poll_delay(interval, f64::NAN, &mut rng), interval);
        assert_eq!(poll_delay(interval, -3.0, &mut rng), interval);
        // A jitter above 1 is clamped: never negative, never more than twice the interval.
        for _ in 0..100 {
            assert!(poll_delay(interval, 5.0, &mut rng) <= interval * 2);
        }
    }
}
