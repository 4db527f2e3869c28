//! argon2id at rest (DESIGN §8). Hashing and verifying run on the blocking pool, never on
//! an async worker, and at most `MAX_CONCURRENT` at a time so a burst of cache misses or
//! key creations cannot take every core or `MAX_CONCURRENT × 7 MiB` of memory at once.
//!
//! Parameters: argon2id, m = 7 MiB, t = 5, p = 1 — one of OWASP's equivalent recommended
//! settings (same strength as m = 19 MiB, t = 2), chosen for its smaller memory: the
//! gateway aims to run in under 40 MiB, and each hash briefly needs m of memory.
//! Keys carry ≈214 random bits, so argon2 is defence in depth for a leaked database,
//! not what makes a key unguessable; verification happens once per key per instance
//! (then the SHA-256 cache answers), so the cost is paid at creation and first use only.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use argon2::{
    password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString},
    Algorithm, Argon2, Params, Version,
};
use tokio::sync::Semaphore;

pub const MEMORY_KIB: u32 = 7 * 1024;
pub const ITERATIONS: u32 = 5;
pub const PARALLELISM: u32 = 1;
const MAX_CONCURRENT: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("argon2: {0}")]
    Argon2(String),
    #[error("hashing task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("hashing pool closed")]
    Closed,
}

#[derive(Clone)]
pub struct Hasher {
    permits: Arc<Semaphore>,
    verifications: Arc<AtomicU64>,
}

impl Default for Hasher {
    fn default() -> Self {
        Hasher {
            permits: Arc::new(Semaphore::new(MAX_CONCURRENT)),
            verifications: Arc::default(),
        }
    }
}

fn argon2() -> Result<Argon2<'static>, HashError> {
    let params = Params::new(MEMORY_KIB, ITERATIONS, PARALLELISM, None)
        .map_err(|e| HashError::Argon2(e.to_string()))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// argon2's working memory is freed when a hash ends, but an allocator may keep it for
/// reuse; ask mimalloc (the binary's allocator) to return this thread's free memory to the
/// OS now, so RSS does not keep `MEMORY_KIB` per blocking thread after a burst of logins.
fn give_back_memory() {
    // SAFETY: mi_collect only walks this thread's mimalloc heap; it is harmless (a no-op on
    // an empty heap) when mimalloc is not the global allocator, as in the test binaries.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

impl Hasher {
    /// argon2 verifications started so far (each is a cache miss of a well-formed key).
    pub fn verifications(&self) -> u64 {
        self.verifications.load(Ordering::Relaxed)
    }

    /// The argon2id PHC string of `secret`.
    pub async fn hash(&self, secret: String) -> Result<String, HashError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| HashError::Closed)?;
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            let salt = SaltString::generate(&mut OsRng);
            let hashed = argon2()?
                .hash_password(secret.as_bytes(), &salt)
                .map(|hash| hash.to_string())
                .map_err(|e| HashError::Argon2(e.to_string()));
            give_back_memory();
            hashed
        })
        .await?
    }

    /// Whether `secret` matches the PHC string `phc`. A malformed `phc` is an error, not a
    /// mismatch, so a corrupted row is noticed.
    pub async fn verify(&self, secret: String, phc: String) -> Result<bool, HashError> {
        self.verifications.fetch_add(1, Ordering::Relaxed);
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| HashError::Closed)?;
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            let parsed = PasswordHash::new(&phc).map_err(|e| HashError::Argon2(e.to_string()))?;
            // Parameters come from the PHC string, so hashes made with older settings still verify.
            let matched = Argon2::default()
                .verify_password(secret.as_bytes(), &parsed)
                .is_ok();
            give_back_memory();
            Ok(matched)
        })
        .await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_then_verify() {
        let hasher = Hasher::default();
        let phc = hasher.hash("kg_secret".into()).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=7168,t=5,p=1$"));
        assert!(!phc.contains("kg_secret"));
        assert!(hasher
            .verify("kg_secret".into(), phc.clone())
            .await
            .unwrap());
        assert!(!hasher.verify("kg_secreT".into(), phc).await.unwrap());
        assert!(hasher.verify("x".into(), "not-a-phc".into()).await.is_err());
    }
}
