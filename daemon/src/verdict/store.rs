//! Persistent verdict store in an embedded database (redb: pure Rust, crash-safe, one file).
//! Keyed by policy hash, repository and digest: a new policy or trust root starts a fresh key
//! space, and the repository is part of the key because scopes (and signed identities) depend on
//! the name the digest was pulled under.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::{Outcome, Verdict};

const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("verdicts_v1");

/// How long a non-trusted verdict is kept: failures are retried soon (a signature may be pushed
/// after the image), successes last until the policy or trust material changes.
pub const FAILURE_TTL_SECS: i64 = 60;

/// Failures of the verdict store. Callers treat them as "no cached verdict", never as trust.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open verdict database {}: {detail}", path.display())]
    Open { path: PathBuf, detail: String },
    #[error("verdict database {} is in use by another process", path.display())]
    InUse { path: PathBuf },
    #[error("verdict database {operation} failed: {detail}")]
    Database {
        operation: &'static str,
        detail: String,
    },
    #[error("stored verdict for {key} is unreadable: {detail}")]
    Corrupt { key: String, detail: String },
}

fn db_err(operation: &'static str) -> impl Fn(redb::Error) -> StoreError {
    move |e| StoreError::Database {
        operation,
        detail: e.to_string(),
    }
}

/// The identity of a cached decision.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VerdictKey {
    pub policy_hash: String,
    /// Normalised repository name (`docker.io/library/busybox`).
    pub repository: String,
    pub digest: String,
}

impl VerdictKey {
    fn encode(&self) -> String {
        format!("{}|{}|{}", self.policy_hash, self.repository, self.digest)
    }
}

#[derive(Serialize, Deserialize)]
struct Record {
    verdict: Verdict,
    /// Unix seconds after which the record is ignored; `None` for trusted verdicts.
    expires_at: Option<i64>,
}

/// On-disk verdicts.
pub struct VerdictStore {
    db: Database,
}

impl VerdictStore {
    /// Open (or create) the database file.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        // redb asserts on some truncated files instead of returning an error: a panic there is
        // a corrupt file, not a crash of the daemon.
        let created =
            std::panic::catch_unwind(|| Database::create(path)).map_err(|_| StoreError::Open {
                path: path.to_path_buf(),
                detail: "the file is truncated or corrupt (the database library refused it)"
                    .to_owned(),
            })?;
        let db = created.map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse {
                path: path.to_path_buf(),
            },
            e => StoreError::Open {
                path: path.to_path_buf(),
                detail: e.to_string(),
            },
        })?;
        let w = db
            .begin_write()
            .map_err(|e| db_err("begin write")(e.into()))?;
        w.open_table(TABLE)
            .map_err(|e| db_err("create table")(e.into()))?;
        w.commit().map_err(|e| db_err("commit")(e.into()))?;
        Ok(VerdictStore { db })
    }

    /// Opens the database file; one that cannot be opened (corrupt, truncated, not a redb
    /// file) is set aside as `NAME.corrupt-<unix seconds>` and a fresh one created in its place:
    /// the daemon starts with no cached verdict (every image is verified again, none allowed
    /// on the strength of the unreadable file). Returns where the old file went, if it was set
    /// aside.
    pub fn open_or_set_aside(
        path: &Path,
    ) -> Result<(Self, Option<std::path::PathBuf>), StoreError> {
        match Self::open(path) {
            Ok(store) => Ok((store, None)),
            // Another process holds it: not corruption, nothing to set aside.
            Err(error @ StoreError::InUse { .. }) => Err(error),
            Err(first) if path.exists() => {
                let mut aside = path.as_os_str().to_owned();
                aside.push(format!(".corrupt-{}", crate::verify::time::now_unix()));
                let aside = std::path::PathBuf::from(aside);
                std::fs::rename(path, &aside).map_err(|e| StoreError::Open {
                    path: path.to_path_buf(),
                    detail: format!("{first}; and setting it aside failed: {e}"),
                })?;
                tracing::error!(
                    path = %path.display(),
                    set_aside = %aside.display(),
                    error = %first,
                    "the verdict store could not be opened; set aside, starting with no cached verdict (every image is verified again)"
                );
                Ok((Self::open(path)?, Some(aside)))
            }
            Err(error) => Err(error),
        }
    }

    /// The stored verdict, unless absent or expired at `now`.
    pub fn get(&self, key: &VerdictKey, now: i64) -> Result<Option<Verdict>, StoreError> {
        let k = key.encode();
        let r = self
            .db
            .begin_read()
            .map_err(|e| db_err("begin read")(e.into()))?;
        let t = r
            .open_table(TABLE)
            .map_err(|e| db_err("open table")(e.into()))?;
        let Some(raw) = t.get(k.as_str()).map_err(|e| db_err("get")(e.into()))? else {
            return Ok(None);
        };
        let rec: Record = serde_json::from_slice(raw.value()).map_err(|e| StoreError::Corrupt {
            key: k.clone(),
            detail: e.to_string(),
        })?;
        if rec.expires_at.is_some_and(|t| now >= t) {
            return Ok(None);
        }
        Ok(Some(rec.verdict))
    }

    /// Store a verdict (durably, on commit). Non-trusted verdicts expire after [`FAILURE_TTL_SECS`].
    pub fn put(&self, key: &VerdictKey, verdict: &Verdict) -> Result<(), StoreError> {
        let expires_at =
            (verdict.outcome != Outcome::Trusted).then_some(verdict.decided_at + FAILURE_TTL_SECS);
        let bytes = serde_json::to_vec(&Record {
            verdict: verdict.clone(),
            expires_at,
        })
        .map_err(|e| StoreError::Corrupt {
            key: key.encode(),
            detail: e.to_string(),
        })?;
        let w = self
            .db
            .begin_write()
            .map_err(|e| db_err("begin write")(e.into()))?;
        {
            let mut t = w
                .open_table(TABLE)
                .map_err(|e| db_err("open table")(e.into()))?;
            t.insert(key.encode().as_str(), bytes.as_slice())
                .map_err(|e| db_err("insert")(e.into()))?;
        }
        w.commit().map_err(|e| db_err("commit")(e.into()))
    }

    /// Drop records of other policies and expired ones (call after a policy reload).
    pub fn prune(&self, keep_policy_hash: &str, now: i64) -> Result<usize, StoreError> {
        let w = self
            .db
            .begin_write()
            .map_err(|e| db_err("begin write")(e.into()))?;
        let mut removed = 0;
        {
            let mut t = w
                .open_table(TABLE)
                .map_err(|e| db_err("open table")(e.into()))?;
            let mut doomed = Vec::new();
            for item in t.iter().map_err(|e| db_err("iterate")(e.into()))? {
                let (k, v) = item.map_err(|e| db_err("iterate")(e.into()))?;
                let key = k.value().to_string();
                let stale = !key.starts_with(&format!("{keep_policy_hash}|"))
                    || serde_json::from_slice::<Record>(v.value())
                        .map_or(true, |r| r.expires_at.is_some_and(|t| now >= t));
                if stale {
                    doomed.push(key);
                }
            }
            for k in doomed {
                t.remove(k.as_str())
                    .map_err(|e| db_err("remove")(e.into()))?;
                removed += 1;
            }
        }
        w.commit().map_err(|e| db_err("commit")(e.into()))?;
        Ok(removed)
    }
}
