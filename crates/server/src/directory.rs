//! The registry's view of the store ([`Directory`] over [`store::Store`]).

use crate::registry::{
    DeviceEntry, DirFuture, Directory, DirectoryError, SessionEntry, TokenEntry, UserEntry,
};

#[derive(Debug, Clone)]
pub struct StoreDirectory {
    store: store::Store,
}

impl StoreDirectory {
    pub fn new(store: store::Store) -> StoreDirectory {
        StoreDirectory { store }
    }
}

fn err(e: store::Error) -> DirectoryError {
    DirectoryError(e.to_string())
}

impl Directory for StoreDirectory {
    fn device(&self, id: &str) -> DirFuture<'_, Result<Option<DeviceEntry>, DirectoryError>> {
        let id = id.to_owned();
        Box::pin(async move {
            let Some(device) = self.store.devices().get(&id).await.map_err(err)? else {
                return Ok(None);
            };
            let (cert_fingerprint, token_hash) = match device.credential {
                store::DeviceCredential::Certificate {
                    fingerprint_sha256, ..
                } => (Some(fingerprint_sha256), None),
                store::DeviceCredential::Token { token_hash } => (None, Some(token_hash)),
                // Registered for enrollment: no credential works until the device enrolls.
                store::DeviceCredential::Pending => (None, None),
            };
            Ok(Some(DeviceEntry {
                id: device.id,
                cert_fingerprint,
                token_hash,
                revoked: false,
                extra_publish: device.grants.publish,
                extra_subscribe: device.grants.subscribe,
            }))
        })
    }

    fn user(&self, name: &str) -> DirFuture<'_, Result<Option<UserEntry>, DirectoryError>> {
        let name = name.to_owned();
        Box::pin(async move {
            Ok(self
                .store
                .users()
                .get(&name)
                .await
                .map_err(err)?
                .map(|u| UserEntry {
                    name: u.name,
                    role: u.role,
                    password_hash: u.password_hash,
                }))
        })
    }

    fn api_token_by_hash(
        &self,
        token_hash: &str,
    ) -> DirFuture<'_, Result<Option<TokenEntry>, DirectoryError>> {
        let token_hash = token_hash.to_owned();
        Box::pin(async move {
            Ok(self
                .store
                .tokens()
                .find_by_hash(&token_hash)
                .await
                .map_err(err)?
                .map(|t| TokenEntry {
                    name: t.name,
                    role: t.role,
                    token_hash: token_hash.clone(),
                }))
        })
    }

    fn web_session(
        &self,
        id_hash: &str,
    ) -> DirFuture<'_, Result<Option<SessionEntry>, DirectoryError>> {
        let id_hash = id_hash.to_owned();
        Box::pin(async move {
            Ok(self
                .store
                .sessions()
                .get(&id_hash, store::now_ms())
                .await
                .map_err(err)?
                .map(|s| SessionEntry {
                    user: s.user,
                    role: s.role,
                }))
        })
    }

    fn change_counter(&self) -> DirFuture<'_, Result<i64, DirectoryError>> {
        Box::pin(async move { self.store.change_counter().await.map_err(err) })
    }
}
