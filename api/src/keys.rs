//! The node's master keys and their rotation, without stopping sales.
//!
//! Where the key comes from decides how it rotates:
//! - From the data dir (`DIR/master.key`, generated on first start): the node draws a new key, writes it to
//!   `DIR/master.key.next` (synced) before using it, re-wraps every user's data key under it and journals each user,
//!   then renames the file over `master.key` and forgets the old key. A crash in between leaves both files; the next
//!   start loads both and finishes the rotation before it reports healthy.
//! - From `BOXOFFICE_MASTER_KEY`: the operator supplies the new key with the request, and sets the variable to it
//!   before the next start. A start with `BOXOFFICE_MASTER_KEY_PREVIOUS` set to the old key finishes a rotation a
//!   crash interrupted.
//!
//! Orders go on during a rotation: data keys wrapped under either key unwrap, and each user is locked only while its
//! own record is re-wrapped. One rotation runs at a time.

use crate::error::{ApiError, ApiResult};
use crate::users::UserStore;
use axum::http::StatusCode;
use persistence::crypto::{
    KeyRing, MASTER_KEY_FILE, MasterKey, MasterKeySource, load_master_key, write_master_key,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The environment variable holding the previous master key while a rotation is finished.
pub const PREVIOUS_MASTER_KEY_ENV: &str = "BOXOFFICE_MASTER_KEY_PREVIOUS";
/// The file holding the next master key while a rotation runs.
const NEXT_MASTER_KEY_FILE: &str = "master.key.next";

pub struct MasterKeys {
    data_dir: PathBuf,
    source: MasterKeySource,
    ring: Arc<KeyRing>,
    rotating: tokio::sync::Mutex<()>,
}

/// What a rotation did.
pub struct Rotation {
    pub master_key_id: String,
    pub users_rewrapped: usize,
}

impl MasterKeys {
    /// Loads the current master key, and the one of an unfinished rotation if there is one.
    pub fn load(data_dir: &Path) -> Result<MasterKeys, String> {
        let (current, source) = load_master_key(data_dir).map_err(|error| error.to_string())?;
        match source {
            MasterKeySource::Generated => tracing::warn!(
                path = %data_dir.join(MASTER_KEY_FILE).display(), key_id = %current.id_hex(),
                "no BOXOFFICE_MASTER_KEY: generated a master key into the data dir; keep it apart from backups of the data"
            ),
            MasterKeySource::File | MasterKeySource::Environment => {
                tracing::info!(key_id = %current.id_hex(), ?source, "master key loaded");
            }
        }
        let ring = Arc::new(KeyRing::new(current.clone()));
        let unfinished = match source {
            MasterKeySource::Environment => std::env::var(PREVIOUS_MASTER_KEY_ENV)
                .ok()
                .map(|text| MasterKey::from_base64(&text))
                .transpose(),
            MasterKeySource::File | MasterKeySource::Generated => {
                read_key_file(&data_dir.join(NEXT_MASTER_KEY_FILE))
            }
        }
        .map_err(|error| error.to_string())?;
        if let Some(other) = unfinished {
            match source {
                // The next key becomes current; the old one still unwraps until the rotation is finished.
                MasterKeySource::File | MasterKeySource::Generated => ring.add_current(other),
                MasterKeySource::Environment => {
                    ring.add_current(other);
                    ring.add_current(current);
                }
            }
            tracing::warn!("a master key rotation was interrupted; it is finished after recovery");
        }
        Ok(MasterKeys {
            data_dir: data_dir.to_owned(),
            source,
            ring,
            rotating: tokio::sync::Mutex::new(()),
        })
    }

    pub fn ring(&self) -> Arc<KeyRing> {
        self.ring.clone()
    }

    /// Re-wraps whatever an interrupted rotation left under the old key; called once recovery has run.
    pub async fn finish_interrupted_rotation(&self, users: &UserStore) -> ApiResult<()> {
        let _rotating = self.rotating.lock().await;
        let rewrapped = users.rewrap_data_keys().await?;
        self.promote_next_key()?;
        users.retire_old_master_keys();
        if rewrapped > 0 {
            tracing::info!(
                users = rewrapped,
                "interrupted master key rotation finished"
            );
        }
        Ok(())
    }

    /// Rotates to `supplied`, or to a new random key when the key lives in the data dir.
    pub async fn rotate(
        &self,
        users: &UserStore,
        supplied: Option<MasterKey>,
    ) -> ApiResult<Rotation> {
        let _rotating = self.rotating.lock().await;
        let next = match (self.source, supplied) {
            (MasterKeySource::Environment, None) => {
                return Err(ApiError::invalid(
                    "the master key comes from BOXOFFICE_MASTER_KEY: give new_master_key (base64 of 32 bytes) \
                     and set the variable to it before the next start",
                ));
            }
            (_, Some(key)) => key,
            (_, None) => MasterKey::generate(),
        };
        if next.id() == self.ring.current_id() {
            return Err(ApiError::invalid(
                "new_master_key is the current master key",
            ));
        }
        if self.source != MasterKeySource::Environment {
            write_master_key(&self.data_dir.join(NEXT_MASTER_KEY_FILE), &next)
                .map_err(ApiError::internal)?;
        }
        let master_key_id = next.id_hex();
        self.ring.add_current(next);
        let users_rewrapped = users.rewrap_data_keys().await?;
        self.promote_next_key()?;
        users.retire_old_master_keys();
        tracing::info!(key_id = %master_key_id, users = users_rewrapped, "master key rotated");
        Ok(Rotation {
            master_key_id,
            users_rewrapped,
        })
    }

    /// Makes `master.key.next` the master key file, if there is one.
    fn promote_next_key(&self) -> ApiResult<()> {
        let next = self.data_dir.join(NEXT_MASTER_KEY_FILE);
        if self.source == MasterKeySource::Environment || !next.exists() {
            return Ok(());
        }
        std::fs::rename(&next, self.data_dir.join(MASTER_KEY_FILE))
            .and_then(|()| std::fs::File::open(&self.data_dir)?.sync_all())
            .map_err(|error| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    format!("cannot install the new master key file: {error}"),
                )
            })
    }
}

fn read_key_file(path: &Path) -> Result<Option<MasterKey>, persistence::crypto::CryptoError> {
    match std::fs::read_to_string(path) {
        Ok(text) => MasterKey::from_base64(&zeroize::Zeroizing::new(text)).map(Some),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(persistence::crypto::CryptoError(format!(
            "cannot read {}: {error}",
            path.display()
        ))),
    }
}

/// Environment variable with the new master key for `boxoffice rotate-master-key`, needed when the node's key comes
/// from `BOXOFFICE_MASTER_KEY`.
pub const NEW_MASTER_KEY_ENV: &str = "BOXOFFICE_NEW_MASTER_KEY";
/// Longest answer the command reads from the node.
const ROTATION_REPLY_BYTES_MAX: u64 = 64 * 1024;

/// `boxoffice rotate-master-key`: asks a running node to rotate, and prints its answer.
pub fn rotate_over_http(args: &crate::config::RotateMasterKeyArgs) -> Result<(), String> {
    let body = match std::env::var(NEW_MASTER_KEY_ENV) {
        Ok(key) => {
            zeroize::Zeroizing::new(serde_json::json!({ "new_master_key": key.trim() }).to_string())
        }
        Err(_) => zeroize::Zeroizing::new("{}".to_owned()),
    };
    let (ok, answer) = post_as_admin(
        &args.url,
        &args.admin_token_file,
        "/admin/rotate-master-key",
        &body,
    )?;
    println!("{answer}");
    ok.then_some(())
        .ok_or_else(|| "rotation refused (see the answer above)".to_owned())
}

/// `POST path` with `body` (JSON) to the node at `url` (`http://HOST:PORT`, plain HTTP on a trusted network) as
/// the admin (`BOXOFFICE_ADMIN_TOKEN`, else the token in `token_file`); returns whether it answered 200, and its
/// body.
pub fn post_as_admin(
    url: &str,
    token_file: &Path,
    path: &str,
    body: &str,
) -> Result<(bool, String), String> {
    use std::io::{Read, Write};
    let address = url
        .strip_prefix("http://")
        .map(|rest| rest.trim_end_matches('/'))
        .filter(|rest| !rest.is_empty() && !rest.contains('/'))
        .ok_or("--url must look like http://HOST:PORT")?;
    let token = zeroize::Zeroizing::new(match std::env::var("BOXOFFICE_ADMIN_TOKEN") {
        Ok(token) => token,
        Err(_) => std::fs::read_to_string(token_file)
            .map(|token| token.trim().to_owned())
            .map_err(|error| format!("cannot read {}: {error}", token_file.display()))?,
    });
    let request = zeroize::Zeroizing::new(format!(
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        token.as_str(),
        body.len(),
    ));
    let mut stream = std::net::TcpStream::connect(address)
        .map_err(|error| format!("cannot reach {address}: {error}"))?;
    stream
        .write_all(request.as_bytes())
        .map_err(|error| format!("cannot send to {address}: {error}"))?;
    let mut reply = String::new();
    stream
        .take(ROTATION_REPLY_BYTES_MAX)
        .read_to_string(&mut reply)
        .map_err(|error| format!("cannot read the answer: {error}"))?;
    let (head, answer) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
    Ok((head.starts_with("HTTP/1.1 200"), answer.to_owned()))
}

/// `boxoffice backup`: asks the running node at `--url` to write a consistent copy of its data dir into `--dir`
/// (`POST /admin/backup`), a path on the node's machine.
pub fn backup_over_http(args: &crate::config::BackupArgs) -> Result<(), String> {
    let dir = if args.dir.is_absolute() {
        args.dir.clone()
    } else {
        std::env::current_dir()
            .map_err(|error| format!("current dir: {error}"))?
            .join(&args.dir)
    };
    let dir = dir.to_str().ok_or("--dir must be valid UTF-8")?;
    let body = serde_json::json!({ "dir": dir }).to_string();
    let (ok, answer) = post_as_admin(&args.url, &args.admin_token_file, "/admin/backup", &body)?;
    println!("{answer}");
    ok.then_some(())
        .ok_or_else(|| "backup refused (see the answer above)".to_owned())
}
