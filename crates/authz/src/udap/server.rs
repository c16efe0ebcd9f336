//! The server side: metadata, registration, client authentication and
//! access tokens, over sealed rows in a `RecordStore`.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use careconnect_crypto::SharedKeyring;
use careconnect_storage::{RecordStore, RowId, StorageError};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::UdapError;
use super::assertion::{self, AssertionClaims, B2bExtension, JWT_BEARER};
use super::client::Signer;
use super::community::TrustCommunity;
use super::jws;
use super::registration::{self, ClientMetadata, GrantType, RegistrationRequest, StatementClaims};
use crate::rows::SealedRows;
use crate::session::Clock;

/// Registered clients.
pub const CLIENTS_COLLECTION: &str = "udap_clients";
/// `jti`s seen, until their JWT expires.
pub const JTI_COLLECTION: &str = "udap_jti";
/// Issued access tokens (by hash).
pub const TOKENS_COLLECTION: &str = "udap_tokens";
/// The longest access-token lifetime the IG allows.
pub const MAX_TOKEN_LIFETIME: u64 = 3600;
/// The longest registration request body.
pub const MAX_REGISTRATION_BODY: usize = 64 * 1024;
/// Signed metadata is valid this long, and re-signed at half of it.
const METADATA_LIFETIME: u64 = 24 * 3600;

/// This server's certificate in one community (its `x5c` and key): it signs
/// `signed_metadata`, and its URI SAN must be the server's base URL.
pub struct ServerCommunity {
    trust: Arc<TrustCommunity>,
    signer: Signer,
}

impl fmt::Debug for ServerCommunity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerCommunity")
            .field("trust", &self.trust)
            .finish_non_exhaustive()
    }
}

impl ServerCommunity {
    /// `trust`, with this server's chain (PEM, leaf first) and RSA key
    /// (PKCS#8 PEM) in it.
    ///
    /// # Errors
    /// [`UdapError::Config`] when the key is not RSA (signed metadata is
    /// RS256) or not the certificate's.
    pub fn new(
        trust: Arc<TrustCommunity>,
        chain_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<Self, UdapError> {
        let signer = Signer::from_pem(chain_pem, key_pem)?;
        if signer.algorithm() != "RS256" {
            return Err(UdapError::Config(
                "the server's community certificate needs an RSA key (signed_metadata is RS256)"
                    .into(),
            ));
        }
        Ok(Self { trust, signer })
    }

    /// The community.
    pub fn trust(&self) -> &Arc<TrustCommunity> {
        &self.trust
    }
}

/// What this server offers.
#[derive(Debug, Clone)]
pub struct UdapConfig {
    /// The FHIR base URL: `iss` of the signed metadata, and a URI SAN of
    /// every community certificate of this server.
    pub base_url: String,
    /// Where clients register (`aud` of software statements).
    pub registration_endpoint: String,
    /// Where clients get tokens (`aud` of client assertions).
    pub token_endpoint: String,
    /// Scopes clients may register for.
    pub scopes: Vec<String>,
    /// Access-token lifetime in seconds, at most [`MAX_TOKEN_LIFETIME`].
    pub token_lifetime: u64,
}

/// A registered client, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisteredClient {
    /// The id it authenticates as.
    pub client_id: String,
    /// Its community's name.
    pub community: String,
    /// Its identity: the software statement's `iss`.
    pub iss: String,
    /// What it registered.
    pub metadata: ClientMetadata,
    /// SHA-256 of the certificate it registered with (hex).
    pub certificate_sha256: String,
    /// Random, new for each registration after none or a cancellation
    /// (kept by updates): tokens carry it, so a client cancelled and
    /// registered again does not revive the tokens issued before.
    pub registration_id: String,
    /// First registered (Unix seconds).
    pub registered_at: u64,
    /// Last registered or updated.
    pub updated_at: u64,
}

/// What a registration did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistrationOutcome {
    /// A new client (HTTP 201).
    Created,
    /// The same `iss` in the same community registered again: updated (200).
    Updated,
    /// Empty `grant_types`: the registration was cancelled (200).
    Cancelled,
}

/// A registration's result: what happened, the client, and the response
/// body (RFC 7591 3.2.1 with the statement echoed).
#[derive(Debug, Clone)]
pub struct Registration {
    /// Created, updated or cancelled.
    pub outcome: RegistrationOutcome,
    /// The client as now stored (as it was, for a cancellation).
    pub client: RegisteredClient,
    /// The JSON response body.
    pub body: serde_json::Value,
}

impl Registration {
    /// 201 for a new client, 200 otherwise.
    pub fn status(&self) -> u16 {
        match self.outcome {
            RegistrationOutcome::Created => 201,
            _ => 200,
        }
    }
}

/// A refused registration or token request, and who signed it when the
/// signing certificate is proven to be a community's (its chain validated,
/// or a path to an anchor validated but the certificate is revoked,
/// expired...): the statement's `iss`, or the client id. Such a refusal
/// concerns a member and is worth auditing in full; any other can come
/// from anyone with a key, and is named only by the certificate it
/// presented.
#[derive(Debug)]
pub struct Refusal {
    /// The error to answer with.
    pub error: UdapError,
    /// Who signed the request, if a community is proven to have issued
    /// the signing certificate.
    pub signer: Option<String>,
    /// SHA-256 (hex) of the leaf certificate whose key signed the request,
    /// when the signature verified (whether or not its chain did); `None`
    /// when the request was refused before that.
    pub leaf_sha256: Option<String>,
}

impl From<Refusal> for UdapError {
    fn from(r: Refusal) -> Self {
        r.error
    }
}

/// A registration checked by [`UdapServer::prepare_registration`], not
/// stored yet.
#[derive(Debug)]
pub struct PendingRegistration {
    /// The client id it will have.
    pub client_id: String,
    /// Its community.
    pub community: String,
    statement: String,
    checked: registration::CheckedStatement,
}

impl PendingRegistration {
    /// The client's identity (`iss`).
    pub fn iss(&self) -> &str {
        &self.checked.iss
    }

    /// Whether this cancels the registration (empty `grant_types`).
    pub fn cancels(&self) -> bool {
        self.checked.metadata.grant_types.is_empty()
    }
}

/// A token request checked by [`UdapServer::authenticate`], not issued yet.
#[derive(Debug, Clone)]
pub struct PendingToken {
    /// The authenticated client.
    pub client_id: String,
    /// Its current registration.
    registration_id: String,
    /// The scopes it will grant.
    pub scopes: Vec<String>,
    /// The `hl7-b2b` extension the client sent.
    pub b2b: B2bExtension,
}

/// What an access token grants, as stored (under its hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessGrant {
    /// The client it was issued to.
    pub client_id: String,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// Expiry (Unix seconds).
    pub expires_at: u64,
    /// The `hl7-b2b` extension the client sent.
    pub b2b: B2bExtension,
    /// The registration it was issued under
    /// ([`RegisteredClient::registration_id`]).
    pub registration_id: String,
}

/// An issued access token. The token itself is a secret: it is not in
/// `Debug`, and is zeroed when dropped.
pub struct IssuedToken {
    token: Zeroizing<String>,
    /// What it grants.
    pub grant: AccessGrant,
    /// Seconds until it expires.
    pub expires_in: u64,
}

impl fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedToken")
            .field("grant", &self.grant)
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

impl IssuedToken {
    /// The bearer token, for the response only.
    pub fn secret(&self) -> &str {
        &self.token
    }

    /// The RFC 6749 5.1 response body (no refresh token: the IG issues none
    /// for `client_credentials`).
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "access_token": self.token.as_str(),
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "scope": self.grant.scopes.join(" "),
        })
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct SeenJti {
    exp: u64,
}

/// A UDAP authorization server: metadata, registration, client
/// authentication and access tokens. Clients, `jti`s and tokens are sealed
/// rows (a forged or moved row does not open and counts as absent), so a
/// cluster of nodes sharing one store shares them: a `jti` used on one
/// node is a replay on every other.
pub struct UdapServer {
    config: UdapConfig,
    communities: Vec<ServerCommunity>,
    store: Arc<dyn RecordStore>,
    clients: SealedRows,
    jtis: SealedRows,
    tokens: SealedRows,
    clock: Arc<dyn Clock>,
    metadata_cache: Mutex<HashMap<String, (u64, String)>>,
}

impl fmt::Debug for UdapServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UdapServer")
            .field("config", &self.config)
            .field("communities", &self.communities)
            .finish_non_exhaustive()
    }
}

fn row_id(prefix: &str, parts: &[&str]) -> Result<RowId, UdapError> {
    let mut h = Sha256::new();
    h.update(prefix.as_bytes());
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p.as_bytes());
    }
    Ok(RowId::new(hex::encode(h.finalize()))?)
}

/// The client id for `iss` in `community`: stable, so a re-registration
/// updates the same client (and no other community's).
fn client_id_for(community: &str, iss: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"careconnect/udap-client-id\0");
    h.update((community.len() as u64).to_be_bytes());
    h.update(community.as_bytes());
    h.update(iss.as_bytes());
    URL_SAFE_NO_PAD.encode(&h.finalize()[..18])
}

impl UdapServer {
    /// A server offering `config` to `communities` (the first is the
    /// default for metadata), keeping its rows in `store` sealed under
    /// `keys`.
    ///
    /// # Errors
    /// [`UdapError::Config`] when there is no community, a community
    /// certificate does not name `base_url`, or the token lifetime is 0 or
    /// over an hour.
    pub fn new(
        config: UdapConfig,
        communities: Vec<ServerCommunity>,
        store: Arc<dyn RecordStore>,
        keys: impl Into<SharedKeyring>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, UdapError> {
        if communities.is_empty() {
            return Err(UdapError::Config("no trust community".into()));
        }
        for c in &communities {
            if !c.signer.san_uris().contains(&config.base_url) {
                return Err(UdapError::Config(format!(
                    "the certificate for community {} does not name {} as a URI SAN",
                    c.trust.name(),
                    config.base_url
                )));
            }
        }
        if config.token_lifetime == 0 || config.token_lifetime > MAX_TOKEN_LIFETIME {
            return Err(UdapError::Config(
                "token lifetime must be 1 to 3600 s".into(),
            ));
        }
        let keys = keys.into();
        Ok(Self {
            clients: SealedRows::new(keys.clone(), CLIENTS_COLLECTION)?,
            jtis: SealedRows::new(keys.clone(), JTI_COLLECTION)?,
            tokens: SealedRows::new(keys, TOKENS_COLLECTION)?,
            config,
            communities,
            store,
            clock,
            metadata_cache: Mutex::new(HashMap::new()),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &UdapConfig {
        &self.config
    }

    /// The communities served, default first.
    pub fn communities(&self) -> impl Iterator<Item = &Arc<TrustCommunity>> {
        self.communities.iter().map(|c| &c.trust)
    }

    fn community(&self, name: Option<&str>) -> Result<&ServerCommunity, UdapError> {
        match name {
            None => self.communities.first().ok_or(UdapError::UnknownCommunity),
            Some(n) => self
                .communities
                .iter()
                .find(|c| c.trust.name() == n)
                .ok_or(UdapError::UnknownCommunity),
        }
    }

    /// The `/.well-known/udap` document for `community` (the default when
    /// `None`), with `signed_metadata` signed by this server's certificate
    /// in it.
    ///
    /// # Errors
    /// [`UdapError::UnknownCommunity`] (the IG answers 204 No Content), or
    /// a signing failure.
    pub fn metadata(&self, community: Option<&str>) -> Result<serde_json::Value, UdapError> {
        let c = self.community(community)?;
        let signed = self.signed_metadata(c)?;
        let cfg = &self.config;
        Ok(json!({
            "udap_versions_supported": ["1"],
            "udap_profiles_supported": ["udap_dcr", "udap_authn", "udap_authz"],
            "udap_authorization_extensions_supported": ["hl7-b2b"],
            "udap_authorization_extensions_required": ["hl7-b2b"],
            "udap_certifications_supported": [],
            "udap_certifications_required": [],
            "grant_types_supported": ["client_credentials"],
            "scopes_supported": cfg.scopes,
            "token_endpoint": cfg.token_endpoint,
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": jws::ALGORITHMS,
            "registration_endpoint": cfg.registration_endpoint,
            "registration_endpoint_jwt_signing_alg_values_supported": jws::ALGORITHMS,
            "signed_metadata": signed,
        }))
    }

    fn signed_metadata(&self, c: &ServerCommunity) -> Result<String, UdapError> {
        let now = self.clock.now();
        let name = c.trust.name();
        let mut cache = self
            .metadata_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some((at, jwt)) = cache.get(name)
            && now >= *at
            && now - at < METADATA_LIFETIME / 2
        {
            return Ok(jwt.clone());
        }

        let jwt = c.signer.sign(&json!({
            "iss": self.config.base_url,
            "sub": self.config.base_url,
            "iat": now,
            "exp": now + METADATA_LIFETIME,
            "jti": super::random_id()?,
            "token_endpoint": self.config.token_endpoint,
            "registration_endpoint": self.config.registration_endpoint,
        }))?;
        cache.insert(name.to_owned(), (now, jwt.clone()));
        Ok(jwt)
    }

    /// Records `jti` from `iss` as used until `exp` (plus the clock
    /// leeway); a second use before then is a replay, on this node or any
    /// other sharing the store. Once the JWT that used it has expired, the
    /// `jti` may be used again (UDAP Security IG 1.2.4): its row is
    /// replaced, compare-and-swap, so two reuses racing cannot both win.
    /// A row that does not open (forged, or under a destroyed key) counts
    /// as expired, as [`UdapServer::purge`] would delete it.
    async fn use_jti(
        &self,
        scope: &str,
        iss: &str,
        jti: &str,
        exp: u64,
    ) -> Result<bool, UdapError> {
        let id = row_id("careconnect/udap-jti\0", &[scope, iss, jti])?;
        let data = self.jtis.seal(
            &id,
            &SeenJti {
                exp: exp + jws::MAX_SKEW,
            },
        )?;
        match self.store.insert(self.jtis.coll(), &id, data.clone()).await {
            Ok(_) => return Ok(true),
            Err(StorageError::DuplicateId) => {}
            Err(e) => return Err(e.into()),
        }
        let row = match self.store.get(self.jtis.coll(), &id).await {
            Ok(row) => row,
            // Purged in between: the insert decides.
            Err(StorageError::NotFound) => {
                return match self.store.insert(self.jtis.coll(), &id, data).await {
                    Ok(_) => Ok(true),
                    Err(StorageError::DuplicateId) => Ok(false),
                    Err(e) => Err(e.into()),
                };
            }
            Err(e) => return Err(e.into()),
        };
        let seen: Option<SeenJti> = self.jtis.open(&row);
        if seen.is_some_and(|s| s.exp >= self.clock.now()) {
            return Ok(false);
        }
        match self
            .store
            .update(self.jtis.coll(), &id, row.version, data)
            .await
        {
            Ok(_) => Ok(true),
            Err(StorageError::VersionConflict { .. } | StorageError::NotFound) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Handles a registration request body (`application/json`):
    /// [`UdapServer::prepare_registration`] then
    /// [`UdapServer::complete_registration`].
    ///
    /// # Errors
    /// The RFC 7591 error to answer with.
    pub async fn register(&self, body: &[u8]) -> Result<Registration, UdapError> {
        let pending = self.prepare_registration(body).await?;
        self.complete_registration(pending).await
    }

    /// Validates `signed`'s chain in every community: the indexes and
    /// claims of those that validate it, in order. Any refusal other than
    /// "not this community's" (revoked, expired, a stale list...) is final,
    /// whatever the order: a certificate one community knows to be revoked
    /// is refused even where another has no list.
    fn chain_everywhere<C: serde::de::DeserializeOwned>(
        &self,
        signed: &jws::Signed,
        now: u64,
    ) -> Result<Vec<(usize, jws::Verified<C>)>, jws::Fault> {
        let mut ok = Vec::new();
        for (i, c) in self.communities.iter().enumerate() {
            match signed.in_community::<C>(&c.trust, now) {
                Ok(v) => ok.push((i, v)),
                Err(jws::Fault::Untrusted(d)) if d == super::community::UNKNOWN_ISSUER => {}
                Err(f) => return Err(f),
            }
        }
        if ok.is_empty() {
            return Err(jws::Fault::Untrusted(super::community::UNKNOWN_ISSUER));
        }
        Ok(ok)
    }

    /// Checks a registration request body. The statement must verify in one
    /// of the communities (tried in order; a certificate one community
    /// finds revoked or expired is refused, not tried in the next); its
    /// claims and metadata must follow the IG; its `jti` must be new. Only
    /// the `jti` is stored: nothing else changes until
    /// [`UdapServer::complete_registration`], so a caller can audit first.
    ///
    /// # Errors
    /// The RFC 7591 error to answer with.
    pub async fn prepare_registration(&self, body: &[u8]) -> Result<PendingRegistration, Refusal> {
        let mut who = Who::default();
        self.prepare_inner(body, &mut who)
            .await
            .map_err(|error| Refusal {
                error,
                signer: who.signer,
                leaf_sha256: who.leaf_sha256,
            })
    }

    async fn prepare_inner(
        &self,
        body: &[u8],
        who: &mut Who,
    ) -> Result<PendingRegistration, UdapError> {
        let req = RegistrationRequest::parse(body)?;
        let now = self.clock.now();
        // The signature once; the cheap claims (audience, times) before any
        // chain is built; then the chain in every community. The client
        // belongs to the first that validates it.
        let signed = jws::verify_signature(&req.software_statement)
            .map_err(registration::registration_fault)?;
        who.leaf_sha256 = Some(signed.leaf_sha256());
        signed
            .precheck(
                &self.config.registration_endpoint,
                registration::AUD_RULE,
                now,
            )
            .map_err(UdapError::InvalidSoftwareStatement)?;
        let chains = self.chain_everywhere::<StatementClaims>(&signed, now);
        if issued_by_a_community(&chains) {
            who.signer = Some(signed.claimed_iss());
        }
        let (i, verified) = chains
            .map_err(registration::registration_fault)?
            .swap_remove(0);
        let community = &self.communities[i];
        let checked = registration::check_statement(
            verified,
            &self.config.registration_endpoint,
            &self.config.scopes,
            false,
            now,
        )?;
        if !self
            .use_jti("registration", &checked.iss, &checked.jti, checked.exp)
            .await?
        {
            return Err(UdapError::InvalidSoftwareStatement(
                "jti has been used before (replay)",
            ));
        }
        let name = community.trust.name().to_owned();
        Ok(PendingRegistration {
            client_id: client_id_for(&name, &checked.iss),
            community: name,
            statement: req.software_statement,
            checked,
        })
    }

    /// Stores what [`UdapServer::prepare_registration`] checked: a new `iss`
    /// creates a client, a known one updates it, empty `grant_types`
    /// cancels it.
    ///
    /// # Errors
    /// Cancelling a registration that does not exist
    /// (`invalid_client_metadata`); a storage failure (also when another
    /// registration of the same client raced this one).
    pub async fn complete_registration(
        &self,
        p: PendingRegistration,
    ) -> Result<Registration, UdapError> {
        // Two registrations of one client at once: the loser of the
        // compare-and-swap reads again and applies its own on top.
        let mut attempt = 0;
        loop {
            match self.try_complete(&p).await {
                Err(UdapError::Storage(
                    StorageError::VersionConflict { .. }
                    | StorageError::DuplicateId
                    | StorageError::NotFound,
                )) if attempt < 8 => attempt += 1,
                done => return done,
            }
        }
    }

    async fn try_complete(&self, p: &PendingRegistration) -> Result<Registration, UdapError> {
        let now = self.clock.now();
        let PendingRegistration {
            client_id,
            community,
            statement,
            checked,
        } = p;
        let checked = checked.clone();
        let (client_id, community) = (client_id.clone(), community.clone());
        let id = RowId::new(hex::encode(client_id.as_bytes()))?;
        let existing = match self.store.get(self.clients.coll(), &id).await {
            Ok(row) => Some((self.clients.open::<RegisteredClient>(&row), row.version)),
            Err(StorageError::NotFound) => None,
            Err(e) => return Err(e.into()),
        };
        let cancel = checked.metadata.grant_types.is_empty();
        let (outcome, client) = match (existing, cancel) {
            (None | Some((None, _)), true) => {
                return Err(UdapError::InvalidClientMetadata(
                    "empty grant_types cancels a registration, and there is none to cancel",
                ));
            }
            (Some((Some(old), version)), true) => {
                self.store.delete(self.clients.coll(), &id, version).await?;
                (
                    RegistrationOutcome::Cancelled,
                    RegisteredClient {
                        metadata: checked.metadata,
                        updated_at: now,
                        ..old
                    },
                )
            }
            (existing, false) => {
                let (registered_at, registration_id) = match &existing {
                    Some((Some(old), _)) => (old.registered_at, old.registration_id.clone()),
                    _ => (now, super::random_id()?),
                };
                let client = RegisteredClient {
                    client_id: client_id.clone(),
                    community,
                    iss: checked.iss,
                    metadata: checked.metadata,
                    certificate_sha256: checked.fingerprint,
                    registration_id,
                    registered_at,
                    updated_at: now,
                };
                let data = self.clients.seal(&id, &client)?;
                match existing {
                    // A row that does not open (forged, or under a key
                    // destroyed since) is replaced by the genuine one.
                    Some((old, version)) => {
                        self.store
                            .update(self.clients.coll(), &id, version, data)
                            .await?;
                        let outcome = if old.is_some() {
                            RegistrationOutcome::Updated
                        } else {
                            RegistrationOutcome::Created
                        };
                        (outcome, client)
                    }
                    None => {
                        self.store.insert(self.clients.coll(), &id, data).await?;
                        (RegistrationOutcome::Created, client)
                    }
                }
            }
        };
        let m = &client.metadata;
        let mut body = json!({
            "client_id": client.client_id,
            "software_statement": statement,
            "client_name": m.client_name,
            "grant_types": m.grant_types.iter().map(|g| g.as_str()).collect::<Vec<_>>(),
            "token_endpoint_auth_method": "private_key_jwt",
            "scope": m.scopes.join(" "),
            "contacts": m.contacts,
            "client_id_issued_at": client.registered_at,
        });
        if !m.redirect_uris.is_empty() {
            body["redirect_uris"] = json!(m.redirect_uris);
            body["response_types"] = json!(m.response_types);
        }
        if let Some(l) = &m.logo_uri {
            body["logo_uri"] = json!(l);
        }
        Ok(Registration {
            outcome,
            client,
            body,
        })
    }

    /// The registered client `client_id`, if any (a row that does not open
    /// is none).
    ///
    /// # Errors
    /// A storage failure.
    pub async fn client(&self, client_id: &str) -> Result<Option<RegisteredClient>, UdapError> {
        if client_id.is_empty() || client_id.len() > 64 {
            return Ok(None);
        }
        let id = RowId::new(hex::encode(client_id.as_bytes()))?;
        match self.store.get(self.clients.coll(), &id).await {
            Ok(row) => Ok(self
                .clients
                .open::<RegisteredClient>(&row)
                .filter(|c| c.client_id == client_id)),
            Err(StorageError::NotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Every registered client (rows that do not open are left out), at
    /// most `limit`.
    ///
    /// # Errors
    /// A storage failure.
    pub async fn clients(&self, limit: usize) -> Result<Vec<RegisteredClient>, UdapError> {
        let mut out = Vec::new();
        let mut after: Option<RowId> = None;
        while out.len() < limit {
            let page = self
                .store
                .list(self.clients.coll(), after.as_ref(), 200)
                .await?;
            out.extend(
                page.rows
                    .iter()
                    .filter_map(|r| self.clients.open::<RegisteredClient>(r)),
            );
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        out.truncate(limit);
        Ok(out)
    }

    /// Handles a token request's form fields:
    /// [`UdapServer::authenticate`] then [`UdapServer::issue`].
    ///
    /// # Errors
    /// The RFC 6749 error to answer with; no token is issued.
    pub async fn token(&self, form: &[(String, String)]) -> Result<IssuedToken, UdapError> {
        let pending = self.authenticate(form).await?;
        self.issue(pending).await
    }

    /// Checks a token request: `client_credentials` with a JWT client
    /// assertion (`udap=1`) verified in the client's community now, and the
    /// `hl7-b2b` extension. Only the assertion's `jti` is stored; the token
    /// is made by [`UdapServer::issue`], so a caller can audit first.
    ///
    /// # Errors
    /// The RFC 6749 error to answer with.
    pub async fn authenticate(&self, form: &[(String, String)]) -> Result<PendingToken, Refusal> {
        let mut who = Who::default();
        self.authenticate_inner(form, &mut who)
            .await
            .map_err(|error| Refusal {
                error,
                signer: who.signer,
                leaf_sha256: who.leaf_sha256,
            })
    }

    async fn authenticate_inner(
        &self,
        form: &[(String, String)],
        who: &mut Who,
    ) -> Result<PendingToken, UdapError> {
        let field = |name: &str| -> Result<Option<&str>, UdapError> {
            let mut it = form.iter().filter(|(k, _)| k == name);
            let first = it.next().map(|(_, v)| v.as_str());
            if it.next().is_some() {
                return Err(UdapError::InvalidRequest("a parameter is repeated"));
            }
            Ok(first)
        };
        let grant_type =
            field("grant_type")?.ok_or(UdapError::InvalidRequest("grant_type is required"))?;
        if grant_type != "client_credentials" {
            return Err(UdapError::UnsupportedGrantType);
        }
        if field("udap")? != Some("1") {
            return Err(UdapError::InvalidRequest("udap=1 is required"));
        }
        if field("client_assertion_type")? != Some(JWT_BEARER) {
            return Err(UdapError::InvalidClient(
                "client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ));
        }
        let jwt = field("client_assertion")?
            .ok_or(UdapError::InvalidClient("client_assertion is required"))?;
        if field("client_secret")?.is_some() {
            return Err(UdapError::InvalidRequest("client secrets are not accepted"));
        }
        // The assertion names its client; which community to verify it in
        // follows from that client's registration. Nothing else from the
        // unverified payload is used.
        let claimed = unverified_iss(jwt)?;
        if let Some(id) = field("client_id")?
            && id != claimed
        {
            return Err(UdapError::InvalidClient(
                "client_id does not match the assertion",
            ));
        }
        let client = self
            .client(&claimed)
            .await?
            .ok_or(UdapError::InvalidClient("unknown client_id"))?;
        if self.community(Some(&client.community)).is_err() {
            return Err(UdapError::InvalidClient(
                "the client's community is no longer served",
            ));
        }
        let now = self.clock.now();
        let signed = jws::verify_signature(jwt).map_err(assertion::assertion_fault)?;
        who.leaf_sha256 = Some(signed.leaf_sha256());
        signed
            .precheck(&self.config.token_endpoint, assertion::AUD_RULE, now)
            .map_err(UdapError::InvalidClient)?;
        // The chain as at registration: in every community, revocation
        // anywhere final; it must validate in the client's own.
        let chains = self.chain_everywhere::<AssertionClaims>(&signed, now);
        if issued_by_a_community(&chains) {
            who.signer = Some(client.client_id.clone());
        }
        let verified = chains
            .map_err(assertion::assertion_fault)?
            .into_iter()
            .find(|(i, _)| self.communities[*i].trust.name() == client.community)
            .map(|(_, v)| v)
            .ok_or(UdapError::InvalidClient(
                "the certificate does not chain to the client's community",
            ))?;
        let checked = assertion::check_assertion(
            verified,
            &client.client_id,
            &self.config.token_endpoint,
            now,
        )?;
        if !checked.san_uris.contains(&client.iss) {
            return Err(UdapError::InvalidClient(
                "the certificate does not name the registered client (its iss) as a URI SAN",
            ));
        }
        if !client
            .metadata
            .grant_types
            .contains(&GrantType::ClientCredentials)
        {
            return Err(UdapError::UnauthorizedClient(
                "the client is not registered for client_credentials",
            ));
        }
        let b2b = checked
            .b2b
            .map_err(UdapError::InvalidGrant)?
            .ok_or(UdapError::InvalidGrant(
                "the hl7-b2b authorization extension is required",
            ))?;
        b2b.check().map_err(UdapError::InvalidGrant)?;
        // What the client registered, less what this server no longer
        // offers.
        let offered: Vec<String> = client
            .metadata
            .scopes
            .iter()
            .filter(|s| self.config.scopes.contains(s))
            .cloned()
            .collect();
        let scopes = match field("scope")? {
            None => offered,
            Some(s) => {
                // UDAP Security IG STU 2 7.3: the registered subset of
                // what is asked, returned as the granted `scope`.
                let wanted = registration::parse_scopes(s)
                    .ok_or(UdapError::InvalidScope("scope must list 1 to 64 scopes"))?;
                let granted: Vec<String> =
                    wanted.into_iter().filter(|w| offered.contains(w)).collect();
                if granted.is_empty() {
                    return Err(UdapError::InvalidScope(
                        "scope asks for none of the scopes the client registered",
                    ));
                }
                granted
            }
        };
        if scopes.is_empty() {
            return Err(UdapError::InvalidScope(
                "none of the client's scopes is offered any more",
            ));
        }
        if !self
            .use_jti("assertion", &client.client_id, &checked.jti, checked.exp)
            .await?
        {
            return Err(UdapError::InvalidClient(
                "jti has been used before (replay)",
            ));
        }
        Ok(PendingToken {
            registration_id: client.registration_id,
            client_id: client.client_id,
            scopes,
            b2b,
        })
    }

    /// Issues the token [`UdapServer::authenticate`] allowed.
    ///
    /// # Errors
    /// A storage or randomness failure.
    pub async fn issue(&self, p: PendingToken) -> Result<IssuedToken, UdapError> {
        let mut raw = Zeroizing::new([0u8; 32]);
        getrandom::fill(raw.as_mut()).map_err(|_| UdapError::Random)?;
        let token = Zeroizing::new(URL_SAFE_NO_PAD.encode(raw.as_ref()));
        let lifetime = self.config.token_lifetime;
        let grant = AccessGrant {
            client_id: p.client_id,
            registration_id: p.registration_id,
            scopes: p.scopes,
            expires_at: self.clock.now().saturating_add(lifetime),
            b2b: p.b2b,
        };
        let id = token_row(&token)?;
        let data = self.tokens.seal(&id, &grant)?;
        self.store.insert(self.tokens.coll(), &id, data).await?;
        Ok(IssuedToken {
            token,
            grant,
            expires_in: lifetime,
        })
    }

    /// What `token` grants, if it is one this server issued, it has not
    /// expired, and its client is still registered (in a community still
    /// served) for every scope it grants: cancelling a client ends its
    /// tokens at once. Only the token's hash is stored, so a copy of the
    /// database yields no usable token. A certificate revoked after the
    /// token was issued is noticed at the client's next token request, so
    /// within the token lifetime.
    ///
    /// # Errors
    /// A storage failure.
    pub async fn introspect(&self, token: &str) -> Result<Option<AccessGrant>, UdapError> {
        if token.len() != 43 {
            return Ok(None);
        }
        let id = token_row(token)?;
        let grant = match self.store.get(self.tokens.coll(), &id).await {
            Ok(row) => self.tokens.open::<AccessGrant>(&row),
            Err(StorageError::NotFound) => None,
            Err(e) => return Err(e.into()),
        };
        let Some(grant) = grant.filter(|g| g.expires_at > self.clock.now()) else {
            return Ok(None);
        };
        let Some(client) = self.client(&grant.client_id).await? else {
            return Ok(None);
        };
        let still = client.registration_id == grant.registration_id
            && self.community(Some(&client.community)).is_ok()
            && client
                .metadata
                .grant_types
                .contains(&GrantType::ClientCredentials)
            && grant
                .scopes
                .iter()
                .all(|s| client.metadata.scopes.contains(s) && self.config.scopes.contains(s));
        Ok(still.then_some(grant))
    }

    /// Deletes expired `jti`s and tokens (and rows that do not open);
    /// returns how many.
    ///
    /// # Errors
    /// A storage failure.
    pub async fn purge(&self) -> Result<usize, UdapError> {
        let now = self.clock.now();
        let store = self.store.as_ref();
        let a = self
            .jtis
            .purge(store, |v: Option<SeenJti>| v.is_none_or(|s| s.exp < now))
            .await?;
        let b = self
            .tokens
            .purge(store, |v: Option<AccessGrant>| {
                v.is_none_or(|g| g.expires_at <= now)
            })
            .await?;
        Ok(a + b)
    }
}

/// What is known of a request's signer while it is checked.
#[derive(Default)]
struct Who {
    signer: Option<String>,
    leaf_sha256: Option<String>,
}

/// Whether a chain result proves a certificate some community issued: it
/// validated, or a path to an anchor validated but the certificate was
/// refused (revoked, expired...). Anyone can sign with a key of their own,
/// and make a certificate that fails for reasons of its own (expired, a CA,
/// the wrong key usage); only these refusals concern a member, and are
/// audited in full.
fn issued_by_a_community<T>(r: &Result<T, jws::Fault>) -> bool {
    matches!(r, Ok(_) | Err(jws::Fault::Member(_)))
}

fn token_row(token: &str) -> Result<RowId, UdapError> {
    row_id("careconnect/udap-token\0", &[token])
}

/// The `iss` of an assertion, read before verification only to find the
/// client (and so the community) to verify it with.
fn unverified_iss(jwt: &str) -> Result<String, UdapError> {
    #[derive(Deserialize)]
    struct Iss {
        iss: String,
    }
    if jwt.len() > jws::MAX_JWT_LEN {
        return Err(UdapError::InvalidClient("the JWT is longer than 32 KiB"));
    }
    let payload = jwt
        .split('.')
        .nth(1)
        .ok_or(UdapError::InvalidClient("not a compact JWS"))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| UdapError::InvalidClient("the JWT payload is not base64url"))?;
    let iss: Iss = serde_json::from_slice(&bytes)
        .map_err(|_| UdapError::InvalidClient("the JWT has no iss"))?;
    Ok(iss.iss)
}
