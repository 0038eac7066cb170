//! Secrets in the cluster state: each stored encrypted under the cluster's secrets key, which
//! Raft holds only sealed to each manager's node key ([`crate::pki::seal`]). The state machine
//! checks names, sizes and uses; it never sees a secret's bytes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::spec::{ServiceSpec, validate_ident};
use super::state::{ServiceOutcome, ServicesState};
use crate::manager::state::Millis;
use crate::pki::seal::{SealedKey, TAG_LEN};

/// At most this many bytes in a secret (Swarm's limit).
pub const MAX_SECRET_BYTES: usize = 500 * 1024;

/// A secret (`shoal secret create`): a named, immutable value given to the tasks of the
/// services that reference it as an in-memory file. Only its ciphertext is stored.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRecord {
    /// Secret ID (drawn by the API handler).
    pub id: String,
    /// Unique name: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, at most 64 characters.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// When it was created.
    pub created_at: Millis,
    /// The secrets key it is encrypted under.
    pub key_id: [u8; 8],
    /// The nonce of its encryption.
    pub nonce: [u8; 12],
    /// The ciphertext and its tag (ChaCha20-Poly1305, the ID as associated data).
    pub sealed: Vec<u8>,
}

impl std::fmt::Debug for SecretRecord {
    /// Without the ciphertext.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretRecord")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("bytes", &self.size())
            .finish_non_exhaustive()
    }
}

impl SecretRecord {
    /// The secret's size in bytes (the plaintext's).
    #[must_use]
    pub fn size(&self) -> usize {
        self.sealed.len().saturating_sub(TAG_LEN)
    }
}

/// The object of `objects` (by ID) that `reference` names: its ID, its name (`name`) or a
/// unique ID prefix; `kind` words the errors (`secret`, `config`).
pub(super) fn resolve_named<'a, T>(
    objects: &'a BTreeMap<String, T>,
    reference: &str,
    kind: &str,
    name: fn(&T) -> &str,
) -> Result<&'a T, String> {
    if let Some(o) = objects.get(reference) {
        return Ok(o);
    }
    if let Some(o) = objects.values().find(|o| name(o) == reference) {
        return Ok(o);
    }
    let by_prefix: Vec<&T> = objects
        .iter()
        .filter(|(id, _)| !reference.is_empty() && id.starts_with(reference))
        .map(|(_, o)| o)
        .collect();
    match by_prefix.as_slice() {
        [one] => Ok(one),
        [] => Err(format!("no such {kind}: {reference}")),
        many => Err(format!(
            "{kind} `{reference}` is ambiguous: it matches {} {kind} IDs; give more characters",
            many.len()
        )),
    }
}

fn no_such_secret(id: &str) -> String {
    format!("no such secret: {id}")
}

impl ServicesState {
    /// `secret create`: a unique ID and name, at most [`MAX_SECRET_BYTES`], encrypted under
    /// the secrets key the managers hold.
    pub(super) fn create_secret(&mut self, s: &SecretRecord) -> Result<ServiceOutcome, String> {
        validate_ident("secret ID", &s.id)?;
        super::spec::validate_object_name("secret", &s.name)?;
        if s.size() > MAX_SECRET_BYTES || s.sealed.len() < TAG_LEN {
            return Err(format!(
                "secret `{}` is {} bytes: at most {MAX_SECRET_BYTES}",
                s.name,
                s.size()
            ));
        }
        if self.secrets_key.values().all(|k| k.key_id != s.key_id) {
            return Err(format!(
                "secret `{}` is not encrypted under the cluster's secrets key",
                s.name
            ));
        }
        if self.secrets.contains_key(&s.id) {
            return Err(format!("secret ID {} already exists", s.id));
        }
        if self.secrets.values().any(|x| x.name == s.name) {
            return Err(format!("a secret named `{}` already exists", s.name));
        }
        self.secrets.insert(s.id.clone(), s.clone());
        Ok(ServiceOutcome::Config { id: s.id.clone() })
    }

    /// `secret rm`: refused while a live service uses it.
    pub(super) fn remove_secret(&mut self, id: &str) -> Result<ServiceOutcome, String> {
        let secret = self.secrets.get(id).ok_or_else(|| no_such_secret(id))?;
        if let Some(user) = self.secret_user(id) {
            return Err(format!(
                "secret `{}` is in use by service `{user}`: remove it from the service first (`service update --secret-rm {}`)",
                secret.name, secret.name
            ));
        }
        self.secrets.remove(id);
        Ok(ServiceOutcome::Config { id: id.to_owned() })
    }

    /// The name of a live service whose current spec uses the secret `id`.
    #[must_use]
    pub fn secret_user(&self, id: &str) -> Option<String> {
        self.services
            .values()
            .find(|s| s.spec.secrets.iter().any(|c| c.secret_id == id))
            .map(|s| s.spec.name.clone())
    }

    /// The secrets key sealed to more managers (or to fewer: `drop`). Refused when the boxes
    /// would hold two different keys.
    pub(super) fn share_secrets_key(
        &mut self,
        set: &BTreeMap<String, SealedKey>,
        drop: &[String],
    ) -> Result<ServiceOutcome, String> {
        let mut ids = self
            .secrets_key
            .values()
            .chain(set.values())
            .map(|k| k.key_id);
        if let Some(first) = ids.next()
            && ids.any(|i| i != first)
        {
            return Err("a different secrets key is already shared: not replaced".into());
        }
        for id in drop {
            self.secrets_key.remove(id);
        }
        self.secrets_key
            .extend(set.iter().map(|(k, v)| (k.clone(), v.clone())));
        Ok(ServiceOutcome::Config { id: String::new() })
    }

    /// Refuses a spec that uses a secret that does not exist.
    pub(super) fn check_secrets(&self, spec: &ServiceSpec) -> Result<(), String> {
        match spec
            .secrets
            .iter()
            .find(|c| !self.secrets.contains_key(&c.secret_id))
        {
            Some(c) => Err(format!(
                "no such secret: {} (create it with `shoal secret create`)",
                c.secret_name
            )),
            None => Ok(()),
        }
    }

    /// The secret `reference` names: ID, name or unique ID prefix.
    pub fn resolve_secret(&self, reference: &str) -> Result<&SecretRecord, String> {
        resolve_named(&self.secrets, reference, "secret", |s| &s.name)
    }

    /// Gives the secret references of `spec` that name a secret but have no ID yet (what the
    /// API body carries) the ID of the secret of that name.
    pub fn resolve_secret_refs(&self, spec: &mut ServiceSpec) -> Result<(), String> {
        for r in &mut spec.secrets {
            if r.secret_id.is_empty() {
                r.secret_id = self
                    .secrets
                    .values()
                    .find(|c| c.name == r.secret_name)
                    .map(|c| c.id.clone())
                    .ok_or_else(|| {
                        format!(
                            "no such secret: {} (create it with `shoal secret create {} FILE`)",
                            r.secret_name, r.secret_name
                        )
                    })?;
            }
        }
        Ok(())
    }
}
