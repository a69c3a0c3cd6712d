//! Envelope encryption of what users entrust to the node: AES-256-GCM under per-user data keys, the data keys
//! wrapped under the node's master key.
//!
//! - Each user has a random 256-bit **data key**. It exists in plaintext only in memory, for the moment it is used;
//!   at rest it is a [`WrappedKey`]: encrypted under the master key, tagged with the master key's id.
//! - Every encryption draws a fresh random 96-bit nonce from the operating system's generator; with one data key per
//!   user and a handful of encryptions per user, nonce reuse is out of reach.
//! - The user id is bound as associated data, with the purpose (`data-key`, `card`, `private`), so a ciphertext cannot
//!   be moved to another user or to another field: it would fail to decrypt.
//! - The **master key** comes from `BOXOFFICE_MASTER_KEY` (base64 of 32 bytes) or `DIR/master.key` (generated on first
//!   start, mode 0600). A [`KeyRing`] holds the current key and, during a rotation, the previous one: data keys are
//!   wrapped with the current key and unwrapped with whichever key their id names. Rotating re-wraps data keys only;
//!   nothing encrypted under a data key changes.

use aes_gcm::aead::consts::U12;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::Path;
use std::sync::{PoisonError, RwLock};
use zeroize::Zeroizing;

pub const KEY_BYTES: usize = 32;
pub const NONCE_BYTES: usize = 12;
/// Bytes of a master key's id: enough to tell keys apart, far too few to say anything about the key.
pub const KEY_ID_BYTES: usize = 8;
/// The environment variable holding the master key (base64 of [`KEY_BYTES`] bytes).
pub const MASTER_KEY_ENV: &str = "BOXOFFICE_MASTER_KEY";
/// The file in the data dir holding a generated master key.
pub const MASTER_KEY_FILE: &str = "master.key";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CryptoError(pub String);

impl fmt::Display for CryptoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "encryption failed: {}", self.0)
    }
}

impl std::error::Error for CryptoError {}

/// A key-encryption key. Its `Debug` shows only its id.
#[derive(Clone)]
pub struct MasterKey {
    key: Zeroizing<[u8; KEY_BYTES]>,
    id: [u8; KEY_ID_BYTES],
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey({})", self.id_hex())
    }
}

impl MasterKey {
    pub fn from_bytes(bytes: [u8; KEY_BYTES]) -> Self {
        let key = Zeroizing::new(bytes);
        // The id is a key check value: the start of an encryption of a fixed message under the key.
        let check = cipher_of(&key)
            .encrypt(
                &nonce_of(&[0; NONCE_BYTES]),
                b"boxoffice master key id".as_slice(),
            )
            .expect("encrypting a short message cannot fail");
        let mut id = [0; KEY_ID_BYTES];
        id.copy_from_slice(&check[..KEY_ID_BYTES]);
        Self { key, id }
    }

    pub fn generate() -> Self {
        let mut bytes = [0; KEY_BYTES];
        engine::ids::fill_random(&mut bytes);
        let key = Self::from_bytes(bytes);
        bytes.fill(0);
        key
    }

    pub fn from_base64(text: &str) -> Result<Self, CryptoError> {
        let bytes = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|_| CryptoError("a master key is base64".into()))?,
        );
        let bytes: [u8; KEY_BYTES] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| CryptoError(format!("a master key is {KEY_BYTES} bytes")))?;
        Ok(Self::from_bytes(bytes))
    }

    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(self.key.as_slice()))
    }

    pub fn id(&self) -> [u8; KEY_ID_BYTES] {
        self.id
    }

    pub fn id_hex(&self) -> String {
        self.id.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    fn cipher(&self) -> Aes256Gcm {
        cipher_of(&self.key)
    }
}

/// Where the master key came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MasterKeySource {
    Environment,
    File,
    Generated,
}

/// The master key from `BOXOFFICE_MASTER_KEY`, or from `DIR/master.key`, or a new one generated into that file.
pub fn load_master_key(data_dir: &Path) -> Result<(MasterKey, MasterKeySource), CryptoError> {
    if let Ok(text) = std::env::var(MASTER_KEY_ENV) {
        return Ok((MasterKey::from_base64(&text)?, MasterKeySource::Environment));
    }
    let path = data_dir.join(MASTER_KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok((
            MasterKey::from_base64(&Zeroizing::new(text))?,
            MasterKeySource::File,
        )),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let key = MasterKey::generate();
            write_master_key(&path, &key)?;
            Ok((key, MasterKeySource::Generated))
        }
        Err(error) => Err(CryptoError(format!(
            "cannot read {}: {error}",
            path.display()
        ))),
    }
}

/// Writes a master key file (mode 0600) durably: to a temporary file, synced, then renamed over `path`.
pub fn write_master_key(path: &Path, key: &MasterKey) -> Result<(), CryptoError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let failed =
        |error: std::io::Error| CryptoError(format!("cannot write {}: {error}", path.display()));
    let temporary = path.with_extension("key.tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .map_err(failed)?;
    file.write_all(key.to_base64().as_bytes()).map_err(failed)?;
    file.sync_all().map_err(failed)?;
    std::fs::rename(&temporary, path).map_err(failed)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|dir| dir.sync_all())
            .map_err(failed)?;
    }
    Ok(())
}

/// A data key wrapped under a master key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedKey {
    pub master_key_id: [u8; KEY_ID_BYTES],
    pub nonce: [u8; NONCE_BYTES],
    pub ciphertext: Vec<u8>,
}

/// Bytes encrypted under a data key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    pub nonce: [u8; NONCE_BYTES],
    pub ciphertext: Vec<u8>,
}

/// A user's data key in plaintext; zeroed when dropped.
pub struct DataKey(Zeroizing<[u8; KEY_BYTES]>);

impl DataKey {
    fn cipher(&self) -> Aes256Gcm {
        cipher_of(&self.0)
    }

    /// Encrypts `plaintext` for `user_id`'s field `purpose`, under a fresh nonce.
    pub fn seal(&self, user_id: &str, purpose: &str, plaintext: &[u8]) -> Sealed {
        let nonce = fresh_nonce();
        let ciphertext = self
            .cipher()
            .encrypt(
                &nonce_of(&nonce),
                Payload {
                    msg: plaintext,
                    aad: associated_data(purpose, user_id).as_bytes(),
                },
            )
            .expect("encrypting in memory cannot fail");
        Sealed { nonce, ciphertext }
    }

    pub fn open(
        &self,
        user_id: &str,
        purpose: &str,
        sealed: &Sealed,
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        self.cipher()
            .decrypt(
                &nonce_of(&sealed.nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad: associated_data(purpose, user_id).as_bytes(),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| CryptoError(format!("{purpose} of {user_id} does not decrypt")))
    }
}

/// The master keys a node knows: the current one first.
pub struct KeyRing {
    keys: RwLock<Vec<MasterKey>>,
}

impl KeyRing {
    pub fn new(current: MasterKey) -> Self {
        Self {
            keys: RwLock::new(vec![current]),
        }
    }

    pub fn current_id(&self) -> [u8; KEY_ID_BYTES] {
        self.read()[0].id()
    }

    /// Makes `key` the current key; the previous ones still unwrap until [`KeyRing::retire_all_but_current`].
    pub fn add_current(&self, key: MasterKey) {
        let mut keys = self.keys.write().unwrap_or_else(PoisonError::into_inner);
        keys.retain(|known| known.id() != key.id());
        keys.insert(0, key);
    }

    pub fn retire_all_but_current(&self) {
        self.keys
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .truncate(1);
    }

    /// A new random data key for `user_id`, and its wrapped form to store.
    pub fn new_data_key(&self, user_id: &str) -> (DataKey, WrappedKey) {
        let mut bytes = Zeroizing::new([0; KEY_BYTES]);
        engine::ids::fill_random(bytes.as_mut_slice());
        let wrapped = self.wrap(&bytes, user_id);
        (DataKey(bytes), wrapped)
    }

    pub fn unwrap(&self, wrapped: &WrappedKey, user_id: &str) -> Result<DataKey, CryptoError> {
        let keys = self.read();
        let master = keys
            .iter()
            .find(|key| key.id() == wrapped.master_key_id)
            .ok_or_else(|| CryptoError("data key wrapped under an unknown master key".into()))?;
        let bytes = master
            .cipher()
            .decrypt(
                &nonce_of(&wrapped.nonce),
                Payload {
                    msg: &wrapped.ciphertext,
                    aad: associated_data("data-key", user_id).as_bytes(),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| CryptoError(format!("data key of {user_id} does not decrypt")))?;
        let key: [u8; KEY_BYTES] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| CryptoError("a data key is 32 bytes".into()))?;
        Ok(DataKey(Zeroizing::new(key)))
    }

    /// The same data key, wrapped under the current master key.
    pub fn rewrap(&self, wrapped: &WrappedKey, user_id: &str) -> Result<WrappedKey, CryptoError> {
        let key = self.unwrap(wrapped, user_id)?;
        Ok(self.wrap(&key.0, user_id))
    }

    fn wrap(&self, key: &[u8; KEY_BYTES], user_id: &str) -> WrappedKey {
        let keys = self.read();
        let nonce = fresh_nonce();
        let ciphertext = keys[0]
            .cipher()
            .encrypt(
                &nonce_of(&nonce),
                Payload {
                    msg: key.as_slice(),
                    aad: associated_data("data-key", user_id).as_bytes(),
                },
            )
            .expect("encrypting in memory cannot fail");
        WrappedKey {
            master_key_id: keys[0].id(),
            nonce,
            ciphertext,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<MasterKey>> {
        self.keys.read().unwrap_or_else(PoisonError::into_inner)
    }
}

fn cipher_of(key: &[u8; KEY_BYTES]) -> Aes256Gcm {
    Aes256Gcm::new(&Key::<Aes256Gcm>::from(*key))
}

fn nonce_of(bytes: &[u8; NONCE_BYTES]) -> Nonce<U12> {
    Nonce::<U12>::from(*bytes)
}

fn fresh_nonce() -> [u8; NONCE_BYTES] {
    let mut nonce = [0; NONCE_BYTES];
    engine::ids::fill_random(&mut nonce);
    nonce
}

fn associated_data(purpose: &str, user_id: &str) -> String {
    format!("boxoffice/{purpose}/{user_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_only_for_its_user_and_purpose() {
        let ring = KeyRing::new(MasterKey::generate());
        let (key, wrapped) = ring.new_data_key("u_1");
        let sealed = key.seal("u_1", "card", b"4242424242424242");
        assert!(!sealed.ciphertext.windows(4).any(|w| w == b"4242"));
        assert_eq!(
            key.open("u_1", "card", &sealed).expect("opens").as_slice(),
            b"4242424242424242"
        );
        assert!(
            key.open("u_2", "card", &sealed).is_err(),
            "bound to the user"
        );
        assert!(
            key.open("u_1", "private", &sealed).is_err(),
            "bound to the purpose"
        );
        let again = ring.unwrap(&wrapped, "u_1").expect("unwraps");
        assert_eq!(
            again
                .open("u_1", "card", &sealed)
                .expect("opens")
                .as_slice(),
            b"4242424242424242"
        );
        assert!(
            ring.unwrap(&wrapped, "u_2").is_err(),
            "a data key is bound to its user"
        );
        let other = key.seal("u_1", "card", b"4242424242424242");
        assert_ne!(other.nonce, sealed.nonce, "a fresh nonce every time");
    }

    #[test]
    fn rotation_rewraps_data_keys_under_the_new_master_key() {
        let old = MasterKey::generate();
        let ring = KeyRing::new(old.clone());
        let (key, wrapped) = ring.new_data_key("u_1");
        let sealed = key.seal("u_1", "card", b"secret");
        let new = MasterKey::generate();
        assert_ne!(new.id(), old.id());
        ring.add_current(new.clone());
        let rewrapped = ring.rewrap(&wrapped, "u_1").expect("rewraps");
        assert_eq!(rewrapped.master_key_id, new.id());
        ring.retire_all_but_current();
        assert!(ring.unwrap(&wrapped, "u_1").is_err(), "the old key is gone");
        let key = ring.unwrap(&rewrapped, "u_1").expect("unwraps");
        assert_eq!(
            key.open("u_1", "card", &sealed).expect("opens").as_slice(),
            b"secret"
        );
    }

    #[test]
    fn master_keys_round_trip_through_base64_and_never_show_in_debug() {
        let key = MasterKey::generate();
        let again = MasterKey::from_base64(&key.to_base64()).expect("parses");
        assert_eq!(again.id(), key.id());
        assert_eq!(format!("{key:?}"), format!("MasterKey({})", key.id_hex()));
        assert!(MasterKey::from_base64("c2hvcnQ=").is_err());
    }
}
