//! SMTP AUTH credentials: argon2id password hashes in PHC format, verified off
//! the event loop by the driver (a check costs tens of milliseconds on purpose).

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

use crate::policy::InboundPolicy;

/// Hashes a password for the directory (`mailflow hash-password`).
pub fn hash_password(password: &str) -> String {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default().hash_password(password.as_bytes(), &salt).map(|hash| hash.to_string()).unwrap_or_default()
}

/// The recipient's primary address if `password` matches the hash stored for
/// the recipient `login` names (by any of its addresses).
pub fn verify(policy: &InboundPolicy, login: &str, password: &str) -> Option<String> {
    let (primary, hash) = policy.password_hash(login)?;
    let parsed = PasswordHash::new(hash).ok()?;
    Argon2::default().verify_password(password.as_bytes(), &parsed).ok()?;
    Some(primary.to_string())
}
