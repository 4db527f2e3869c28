//! The first admin key (DESIGN §9): on a start with no live admin key in the store, one is
//! created in the `default` workspace. The operator either provides it
//! (`KEYGATE_BOOTSTRAP_ADMIN_KEY`, for containers) or gets a generated one printed once.

use secrecy::{ExposeSecret, SecretString};

use super::{input::NewKey, Caller, KeyError, KeyKind, KeysService, Token};

pub const BOOTSTRAP_KEY_NAME: &str = "bootstrap admin";

#[derive(Debug)]
pub enum Bootstrap {
    /// Admin keys exist: nothing was done.
    NotNeeded,
    /// The operator's key was installed.
    Installed,
    /// A key was generated; it must be shown to the operator now, and never again.
    Generated(Token),
}

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("KEYGATE_BOOTSTRAP_ADMIN_KEY is not a keygate key ({0}); `keygate keys generate` prints a valid one")]
    BadKey(super::TokenError),
    #[error(transparent)]
    Key(#[from] KeyError),
}

pub async fn ensure_admin_key(
    keys: &KeysService,
    provided: Option<&SecretString>,
) -> Result<Bootstrap, BootstrapError> {
    if keys
        .store()
        .count_live_admin_keys()
        .await
        .map_err(KeyError::from)?
        > 0
    {
        return Ok(Bootstrap::NotNeeded);
    }
    let workspace = keys
        .store()
        .default_workspace()
        .await
        .map_err(KeyError::from)?;
    let caller = Caller {
        workspace_id: workspace.id,
        ..Caller::operator("bootstrap")
    };
    let new = NewKey {
        name: BOOTSTRAP_KEY_NAME.into(),
        kind: Some(KeyKind::Admin),
        ..NewKey::default()
    };
    match provided {
        Some(secret) => {
            let token = Token::parse(secret.expose_secret()).map_err(BootstrapError::BadKey)?;
            match keys.create_with_token(&caller, new, token).await {
                Ok(_) => Ok(Bootstrap::Installed),
                // Replicas of a new deployment start together with the same key: the
                // others' inserts lose on the lookup id. An admin key now exists, which is
                // all this start needed.
                Err(err) => {
                    if keys.store().count_live_admin_keys().await.unwrap_or(0) > 0 {
                        Ok(Bootstrap::NotNeeded)
                    } else {
                        Err(err.into())
                    }
                }
            }
        }
        None => {
            let created = keys.create(&caller, new).await?;
            Ok(Bootstrap::Generated(created.secret))
        }
    }
}
