//! Makes many keys for `bench/stores.sh`: one tab-separated line per key with what the
//! store keeps of it (`n id lookup_id partial_key last6 hash`), for psql's `\copy` into
//! PostgreSQL (text format: the PHC string has commas), and
//! the full secrets of the first `IN_USE` keys, one per line, for the load generator.
//!
//! The secrets are real keys (`Token::generate`) and their hashes real argon2id PHC
//! strings that keygate verifies as it verifies any other; only the cost parameters are
//! the smallest argon2 allows (m = 8 KiB, t = 1), read back from the PHC string at
//! verification, so that making 100 000 keys and each replica's first use of 10 000 of
//! them take seconds, not an hour. After that first use argon2 never runs again for a
//! key, so the measured hot path is the same as with production hashes.
//!
//! Usage: cargo run --example bench_keys -- COUNT IN_USE KEYS_TSV SECRETS_TXT

use std::{
    fs::File,
    io::{BufWriter, Write},
};

use argon2::{
    password_hash::{rand_core::OsRng, PasswordHasher, SaltString},
    Algorithm, Argon2, Params, Version,
};
use keygate::keys::token::Token;
use uuid::Uuid;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [count, in_use, keys_tsv, secrets_txt] = args.as_slice() else {
        return Err("usage: bench_keys COUNT IN_USE KEYS_TSV SECRETS_TXT".into());
    };
    let (count, in_use): (usize, usize) = (count.parse()?, in_use.parse()?);
    let cheap = Argon2::new(
        Algorithm::Argon2id,
        Version::V0x13,
        Params::new(Params::MIN_M_COST, 1, 1, None).map_err(|e| e.to_string())?,
    );
    let mut keys = BufWriter::new(File::create(keys_tsv)?);
    let mut secrets = BufWriter::new(File::create(secrets_txt)?);
    for n in 0..count {
        let token = Token::generate();
        let salt = SaltString::generate(&mut OsRng);
        let hash = cheap
            .hash_password(token.expose().as_bytes(), &salt)
            .map_err(|e| e.to_string())?;
        writeln!(
            keys,
            "{n}\t{}\t{}\t{}\t{}\t{hash}",
            Uuid::now_v7(),
            token.lookup_id(),
            token.partial(),
            token.last6()
        )?;
        if n < in_use {
            writeln!(secrets, "{}", token.expose())?;
        }
    }
    keys.flush()?;
    secrets.flush()?;
    Ok(())
}
