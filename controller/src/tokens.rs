//! Join tokens: one-time secrets with which a host that has no certificate yet obtains one
//! (`ovl-controller token create`, then `ovl-agent join` on the host).
//!
//! Tokens live in a directory beside the store (`/var/lib/ovl/join-tokens` by default), not
//! in the redb database: `ovl-controller token create` must work while the controller runs,
//! and redb locks its file for the process that has it open. Layout:
//!
//! ```text
//! DIR/<sha256 of the token, hex>        an unused token: its record as JSON (0600)
//! DIR/used/<sha256 of the token, hex>   a redeemed token, kept until it would have expired
//! ```
//!
//! Only the SHA-256 of a token is stored, so reading the directory does not reveal a usable
//! token. Redeeming is one `rename(2)` of the record into `used/`: of two joins racing with
//! the same token exactly one rename succeeds, which is what makes a token single-use without
//! a lock. Checking a token never changes anything, so a refused join leaves it as it was.
//!
//! This module owns the files; it does not decide which host name a join gets (that is
//! [`crate::join`]) and never talks to the network.
//!
//! Layer: service support for [`crate::join`] (files only).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ovl_common::proto::JoinRefusal;
use ovl_common::HostName;
use rand::TryRng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What every token starts with, so a leaked one is easy to recognise (and to grep for).
pub const TOKEN_PREFIX: &str = "ovljoin-";
/// Random bytes in a token: 192 bits, far beyond guessing over the network.
const TOKEN_BYTES: usize = 24;
/// The longest a token may live. Tokens are for joining a host now, not for keeping around.
pub const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Records (used or not) are deleted this long after they expired; until then a late attempt
/// is told "expired" or "already used" rather than "not valid".
const KEEP_AFTER_EXPIRY: u64 = 24 * 3600;
const USED_DIR: &str = "used";
/// Length of the id `token list` shows and `token revoke` takes: a prefix of the hash.
const ID_LEN: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a token record: {source}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot give {path} to the owner of {dir} (uid {uid}); run this as root or as the controller's user: {source}")]
    Chown {
        path: PathBuf,
        dir: PathBuf,
        uid: u32,
        source: std::io::Error,
    },
    #[error("a token must live between 1 second and {} days, not {}", MAX_TTL.as_secs() / 86400, humantime::format_duration(*.0))]
    Ttl(Duration),
    #[error("cannot draw random bytes for a token from the operating system: {0}")]
    Random(rand::rngs::SysError),
    #[error("no token with id '{0}' (see `ovl-controller token list`)")]
    NoSuchId(String),
    #[error("the id '{0}' matches more than one token; give more of it")]
    AmbiguousId(String),
}

pub type Result<T, E = TokenError> = std::result::Result<T, E>;

/// What is stored about a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// The only host name the token may be redeemed for; any new name when `None`.
    pub host: Option<HostName>,
    /// Unix time of creation.
    pub created: u64,
    /// Unix time after which the token is refused.
    pub expires: u64,
}

/// A freshly created token. `token` is shown once and never stored.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub token: String,
    pub id: String,
    pub record: TokenRecord,
}

/// Where a token stands, for `token list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenState {
    Valid,
    Expired,
    Used,
}

impl std::fmt::Display for TokenState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            TokenState::Valid => "valid",
            TokenState::Expired => "expired",
            TokenState::Used => "used",
        })
    }
}

/// One row of `token list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    pub id: String,
    pub state: TokenState,
    pub record: TokenRecord,
}

/// A token that passed [`Tokens::check`]; [`Tokens::redeem`] uses it up.
#[derive(Debug, Clone)]
pub struct Checked {
    hash: String,
    pub record: TokenRecord,
}

/// Why a join could not go on: the joiner's fault (a refusal) or the controller's.
#[derive(Debug, thiserror::Error)]
pub enum RedeemError {
    #[error(transparent)]
    Refused(JoinRefusal),
    #[error(transparent)]
    Store(#[from] TokenError),
}

/// The token directory.
#[derive(Debug, Clone)]
pub struct Tokens {
    dir: PathBuf,
}

/// The SHA-256 of a token in hex: the name of its record.
fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> TokenError + 'a {
    move |source| TokenError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Gives `path` the owner and group of `like` when they differ. `token create` usually runs as
/// root while the controller runs as its own user; the controller must be able to read and
/// rename what root wrote.
fn adopt_owner(path: &Path, like: &Path) -> Result<()> {
    let want = fs::metadata(like).map_err(io("read the owner of", like))?;
    let have = fs::symlink_metadata(path).map_err(io("read the owner of", path))?;
    if have.uid() == want.uid() && have.gid() == want.gid() {
        return Ok(());
    }
    std::os::unix::fs::chown(path, Some(want.uid()), Some(want.gid())).map_err(|source| {
        TokenError::Chown {
            path: path.to_path_buf(),
            dir: like.to_path_buf(),
            uid: want.uid(),
            source,
        }
    })
}

/// Creates `dir` (0700) if it is missing, owned like its parent.
fn ensure_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io("create", dir))?;
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => adopt_owner(dir, parent),
        _ => Ok(()),
    }
}

impl Tokens {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The default token directory for a store at `db`: `join-tokens` beside it.
    pub fn default_dir(db: &Path) -> PathBuf {
        db.parent()
            .unwrap_or_else(|| Path::new("."))
            .join("join-tokens")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Creates the directory (and `used/`) if missing. The controller calls it at start so
    /// the directory belongs to the controller's user.
    pub fn ensure(&self) -> Result<()> {
        ensure_dir(&self.dir)?;
        ensure_dir(&self.dir.join(USED_DIR))
    }

    /// Creates a token valid for `ttl` from `now`, bound to `host` if given, and prunes
    /// records that expired long ago.
    pub fn create(&self, host: Option<HostName>, ttl: Duration, now: u64) -> Result<NewToken> {
        if ttl < Duration::from_secs(1) || ttl > MAX_TTL {
            return Err(TokenError::Ttl(ttl));
        }
        self.ensure()?;
        self.prune(now)?;
        let mut bytes = [0u8; TOKEN_BYTES];
        rand::rngs::SysRng
            .try_fill_bytes(&mut bytes)
            .map_err(TokenError::Random)?;
        let token = format!("{TOKEN_PREFIX}{}", hex::encode(bytes));
        let hash = hash(&token);
        let record = TokenRecord {
            host,
            created: now,
            expires: now + ttl.as_secs(),
        };
        let body = serde_json::to_vec_pretty(&record).map_err(|source| TokenError::Corrupt {
            path: self.dir.join(&hash),
            source,
        })?;
        // Written under a temporary name and renamed, so the controller never reads half a
        // record.
        let tmp = self.dir.join(format!(".{hash}.tmp"));
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io("create", &tmp))?;
        f.write_all(&body).map_err(io("write", &tmp))?;
        f.sync_all().map_err(io("write", &tmp))?;
        drop(f);
        let placed = adopt_owner(&tmp, &self.dir).and_then(|()| {
            let path = self.dir.join(&hash);
            fs::rename(&tmp, &path).map_err(io("rename into place", &path))
        });
        if placed.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        placed?;
        Ok(NewToken {
            token,
            id: hash[..ID_LEN].to_string(),
            record,
        })
    }

    fn read(&self, path: &Path) -> Result<Option<TokenRecord>> {
        let body = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("read", path)(e)),
        };
        serde_json::from_slice(&body)
            .map(Some)
            .map_err(|source| TokenError::Corrupt {
                path: path.to_path_buf(),
                source,
            })
    }

    /// Checks `token` at time `now` without using it up.
    pub fn check(&self, token: &str, now: u64) -> Result<Checked, RedeemError> {
        let hash = hash(token);
        match self.read(&self.dir.join(&hash))? {
            Some(record) if record.expires <= now => {
                Err(RedeemError::Refused(JoinRefusal::ExpiredToken {
                    expired: record.expires,
                }))
            }
            Some(record) => Ok(Checked { hash, record }),
            None if self.read(&self.dir.join(USED_DIR).join(&hash))?.is_some() => {
                Err(RedeemError::Refused(JoinRefusal::UsedToken))
            }
            None => Err(RedeemError::Refused(JoinRefusal::UnknownToken)),
        }
    }

    /// Uses a checked token up. Of several joins racing with one token, exactly one gets
    /// `Ok`; the others get [`JoinRefusal::UsedToken`].
    pub fn redeem(&self, checked: &Checked) -> Result<(), RedeemError> {
        let used = self.dir.join(USED_DIR);
        ensure_dir(&used)?;
        let from = self.dir.join(&checked.hash);
        match fs::rename(&from, used.join(&checked.hash)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(RedeemError::Refused(JoinRefusal::UsedToken))
            }
            Err(e) => Err(io("mark as used", &from)(e).into()),
        }
    }

    fn entries(&self, dir: &Path) -> Result<Vec<(String, PathBuf)>> {
        let rd = match fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("list", dir)(e)),
        };
        let mut out = Vec::new();
        for entry in rd {
            let entry = entry.map_err(io("list", dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            // Record names are hashes; temporary files start with a dot, `used` is a directory.
            if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
                out.push((name, entry.path()));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Every token still on record, unused ones first.
    pub fn list(&self, now: u64) -> Result<Vec<TokenInfo>> {
        let mut out = Vec::new();
        for (used, dir) in [(false, self.dir.clone()), (true, self.dir.join(USED_DIR))] {
            for (hash, path) in self.entries(&dir)? {
                let Some(record) = self.read(&path)? else {
                    continue;
                };
                let state = match (used, record.expires <= now) {
                    (true, _) => TokenState::Used,
                    (false, true) => TokenState::Expired,
                    (false, false) => TokenState::Valid,
                };
                out.push(TokenInfo {
                    id: hash[..ID_LEN].to_string(),
                    state,
                    record,
                });
            }
        }
        Ok(out)
    }

    /// Deletes the unused token whose id starts with `id`.
    pub fn revoke(&self, id: &str) -> Result<TokenInfo> {
        let id = id.to_ascii_lowercase();
        let matches: Vec<_> = self
            .entries(&self.dir)?
            .into_iter()
            .filter(|(hash, _)| !id.is_empty() && hash.starts_with(&id))
            .collect();
        let (hash, path) = match matches.as_slice() {
            [one] => one.clone(),
            [] => return Err(TokenError::NoSuchId(id)),
            _ => return Err(TokenError::AmbiguousId(id)),
        };
        let record = self.read(&path)?.ok_or(TokenError::NoSuchId(id))?;
        fs::remove_file(&path).map_err(io("delete", &path))?;
        Ok(TokenInfo {
            id: hash[..ID_LEN].to_string(),
            state: TokenState::Valid,
            record,
        })
    }

    /// Deletes records (used or not) that expired more than a day before `now`.
    pub fn prune(&self, now: u64) -> Result<usize> {
        let mut removed = 0;
        for dir in [self.dir.clone(), self.dir.join(USED_DIR)] {
            for (_, path) in self.entries(&dir)? {
                let stale = match self.read(&path) {
                    Ok(Some(r)) => r.expires.saturating_add(KEEP_AFTER_EXPIRY) <= now,
                    Ok(None) => false,
                    // A record nobody can read cannot be redeemed either; leave it for the
                    // operator to look at rather than failing `token create`.
                    Err(_) => false,
                };
                if stale {
                    fs::remove_file(&path).map_err(io("delete", &path))?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const HOUR: Duration = Duration::from_secs(3600);

    fn host(n: &str) -> Option<HostName> {
        Some(HostName::new(n).unwrap())
    }

    fn refusal(r: Result<Checked, RedeemError>) -> JoinRefusal {
        match r {
            Err(RedeemError::Refused(j)) => j,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_token_is_redeemed_once() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = Tokens::new(dir.path().join("join-tokens"));
        let t = tokens.create(host("h1"), HOUR, 1000).unwrap();
        assert!(t.token.starts_with(TOKEN_PREFIX));
        assert_eq!(t.token.len(), TOKEN_PREFIX.len() + 2 * TOKEN_BYTES);
        assert_eq!(t.record.expires, 1000 + 3600);

        // Only the hash is on disk, in a 0600 file.
        let files: Vec<_> = fs::read_dir(tokens.dir()).unwrap().collect();
        let record = tokens.dir().join(hash(&t.token));
        let text = fs::read_to_string(&record).unwrap();
        assert!(!text.contains(&t.token[TOKEN_PREFIX.len()..]), "{text}");
        assert_eq!(
            fs::metadata(&record).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(files.len(), 2, "the record and used/: {files:?}");

        // Checking does not use it up.
        let c = tokens.check(&t.token, 1001).unwrap();
        assert_eq!(c.record.host, host("h1"));
        let c = tokens.check(&t.token, 1002).unwrap();
        tokens.redeem(&c).unwrap();
        assert_eq!(
            refusal(tokens.check(&t.token, 1003)),
            JoinRefusal::UsedToken
        );
        // A second redeem of the same check (a racing join) loses.
        assert!(matches!(
            tokens.redeem(&c),
            Err(RedeemError::Refused(JoinRefusal::UsedToken))
        ));
        assert_eq!(tokens.list(1003).unwrap()[0].state, TokenState::Used);
    }

    #[test]
    fn wrong_and_expired_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = Tokens::new(dir.path());
        let t = tokens.create(None, Duration::from_secs(10), 1000).unwrap();
        assert_eq!(
            refusal(tokens.check("ovljoin-00", 1001)),
            JoinRefusal::UnknownToken
        );
        let mut wrong = t.token.clone();
        wrong.pop();
        wrong.push('x');
        assert_eq!(
            refusal(tokens.check(&wrong, 1001)),
            JoinRefusal::UnknownToken
        );
        assert!(tokens.check(&t.token, 1009).is_ok());
        assert_eq!(
            refusal(tokens.check(&t.token, 1010)),
            JoinRefusal::ExpiredToken { expired: 1010 }
        );
        assert_eq!(tokens.list(1010).unwrap()[0].state, TokenState::Expired);
        // A day later the record is pruned and the token is simply unknown.
        let later = 1010 + KEEP_AFTER_EXPIRY;
        assert_eq!(tokens.prune(later).unwrap(), 1);
        assert_eq!(
            refusal(tokens.check(&t.token, later)),
            JoinRefusal::UnknownToken
        );
    }

    #[test]
    fn ttl_is_bounded_and_revoke_takes_an_id_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = Tokens::new(dir.path());
        assert!(matches!(
            tokens.create(None, Duration::ZERO, 0),
            Err(TokenError::Ttl(_))
        ));
        assert!(matches!(
            tokens.create(None, MAX_TTL + Duration::from_secs(1), 0),
            Err(TokenError::Ttl(_))
        ));
        let t = tokens.create(host("h2"), HOUR, 0).unwrap();
        assert!(matches!(tokens.revoke("zz"), Err(TokenError::NoSuchId(_))));
        let gone = tokens.revoke(&t.id[..6]).unwrap();
        assert_eq!(gone.record.host, host("h2"));
        assert_eq!(
            refusal(tokens.check(&t.token, 1)),
            JoinRefusal::UnknownToken
        );
        assert!(tokens.list(1).unwrap().is_empty());
    }

    #[test]
    fn default_dir_is_beside_the_store() {
        assert_eq!(
            Tokens::default_dir(Path::new("/var/lib/ovl/controller.redb")),
            PathBuf::from("/var/lib/ovl/join-tokens")
        );
        assert_eq!(
            Tokens::default_dir(Path::new("controller.redb")),
            PathBuf::from("join-tokens")
        );
    }
}
