//! From an identity provider's claims to roles.
//!
//! Two sources, combined as a union:
//! - rules in configuration (TOML) on the claims: an exact e-mail address, an
//!   e-mail domain, membership in a groups claim, a value in a roles claim;
//! - role assignments stored in the database, keyed by issuer + subject
//!   (never by e-mail alone, which an identity provider may let users change).
//!
//! Unknown users get no role, not a default one. E-mail rules apply only when
//! the provider says the address is verified (`email_verified: true`):
//! otherwise anyone who can type an address at a permissive provider would get
//! its roles. Rules can be pinned to one issuer; with several providers,
//! group and role-claim rules must be (see [`RoleMapper::check_providers`]):
//! a group called `doctors` at one provider says nothing about a group of the
//! same name at another.
//!
//! The names of the groups and roles claims are one setting ([`ClaimNames`]),
//! read here and handed to each provider's
//! [`OidcConfig`](crate::oidc::OidcConfig) with `with_claim_names`.
//!
//! ```
//! use careconnect_authz::mapper::{Claims, RoleMapper};
//! use careconnect_authz::{Role, UserId};
//! let mapper = RoleMapper::from_toml(r#"
//!     [[rule]]
//!     email_domain = "stjohns.example"
//!     roles = ["doctor"]
//!
//!     [[rule]]
//!     group = "finance-team"
//!     roles = ["finance"]
//! "#).unwrap();
//! let mut c = Claims::new(UserId::new("https://idp.example", "u1").unwrap());
//! c.email = Some("grey@stjohns.example".into());
//! assert!(mapper.claim_roles(&c).is_empty()); // not verified
//! c.email_verified = true;
//! assert!(mapper.claim_roles(&c).contains(Role::Doctor));
//! ```

use std::sync::Arc;

use careconnect_storage::{RecordStore, RowId, StorageError, Write};
use serde::{Deserialize, Serialize};

use crate::error::AuthzError;
use crate::principal::{Role, RoleSet, UserId};
use crate::rows::SealedRows;

/// What the role mapper looks at, taken from a validated ID token (and
/// userinfo, when used).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// Issuer + subject.
    pub user: UserId,
    /// The `email` claim.
    pub email: Option<String>,
    /// The `email_verified` claim (false when absent).
    pub email_verified: bool,
    /// The display name, for the UI only.
    pub name: Option<String>,
    /// The groups claim's values (claim name configurable).
    pub groups: Vec<String>,
    /// The roles claim's values (claim name configurable).
    pub roles: Vec<String>,
}

impl Claims {
    /// Claims with only an identity.
    pub fn new(user: UserId) -> Self {
        Self {
            user,
            email: None,
            email_verified: false,
            name: None,
            groups: Vec::new(),
            roles: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default = "default_groups")]
    groups_claim: String,
    #[serde(default = "default_roles")]
    roles_claim: String,
    #[serde(default, rename = "rule")]
    rules: Vec<RuleConfig>,
}

fn default_groups() -> String {
    "groups".into()
}
fn default_roles() -> String {
    "roles".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleConfig {
    issuer: Option<String>,
    email: Option<String>,
    email_domain: Option<String>,
    group: Option<String>,
    role_claim: Option<String>,
    roles: Vec<Role>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Condition {
    Email(String),
    EmailDomain(String),
    Group(String),
    RoleClaim(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    /// 1-based position in the configuration, for error messages.
    n: usize,
    issuer: Option<String>,
    condition: Condition,
    roles: RoleSet,
}

impl Rule {
    fn matches(&self, c: &Claims) -> bool {
        if self.issuer.as_deref().is_some_and(|i| i != c.user.issuer()) {
            return false;
        }
        let verified_email = c.email.as_deref().filter(|_| c.email_verified);
        match &self.condition {
            Condition::Email(e) => verified_email.is_some_and(|m| m.eq_ignore_ascii_case(e)),
            Condition::EmailDomain(d) => verified_email
                .and_then(|m| m.rsplit_once('@'))
                .is_some_and(|(_, dom)| dom.eq_ignore_ascii_case(d)),
            Condition::Group(g) => c.groups.iter().any(|x| x == g),
            Condition::RoleClaim(r) => c.roles.iter().any(|x| x == r),
        }
    }
}

/// The names of the claims that carry groups and roles (default `groups`
/// and `roles`). One setting: the role mapper's configuration
/// (`groups_claim`, `roles_claim`) names them, and each provider's
/// configuration takes them from there
/// ([`OidcConfig::with_claim_names`](crate::oidc::OidcConfig::with_claim_names)),
/// which [`RoleMapper::check_providers`] verifies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimNames {
    /// The claim holding groups.
    pub groups: String,
    /// The claim holding roles.
    pub roles: String,
}

impl Default for ClaimNames {
    fn default() -> Self {
        Self {
            groups: default_groups(),
            roles: default_roles(),
        }
    }
}

/// Claim rules from configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleMapper {
    claim_names: ClaimNames,
    rules: Vec<Rule>,
}

impl RoleMapper {
    /// Parses the TOML configuration (see the module docs and
    /// `docs/roles.example.toml`): optional `groups_claim` and `roles_claim`
    /// names, then `[[rule]]` tables with exactly one of `email`,
    /// `email_domain`, `group`, `role_claim`, a `roles` list and optionally
    /// an `issuer`.
    ///
    /// # Errors
    ///
    /// [`AuthzError::Config`] naming the problem (and its line for TOML
    /// syntax errors): unknown keys or roles, a rule with no or several
    /// conditions, empty values.
    pub fn from_toml(text: &str) -> Result<Self, AuthzError> {
        let file: ConfigFile =
            toml::from_str(text).map_err(|e| AuthzError::Config(e.to_string()))?;
        let mut rules = Vec::with_capacity(file.rules.len());
        for (i, r) in file.rules.into_iter().enumerate() {
            let n = i + 1;
            let mut conds = Vec::new();
            if let Some(e) = r.email {
                conds.push(Condition::Email(e));
            }
            if let Some(d) = r.email_domain {
                conds.push(Condition::EmailDomain(d.trim_start_matches('@').to_owned()));
            }
            if let Some(g) = r.group {
                conds.push(Condition::Group(g));
            }
            if let Some(rc) = r.role_claim {
                conds.push(Condition::RoleClaim(rc));
            }
            let condition = match conds.len() {
                1 => conds.remove(0),
                0 => return Err(AuthzError::Config(format!("rule {n} has no condition"))),
                _ => {
                    return Err(AuthzError::Config(format!(
                        "rule {n} has several conditions; write one rule per condition"
                    )));
                }
            };
            let empty = match &condition {
                Condition::Email(v)
                | Condition::EmailDomain(v)
                | Condition::Group(v)
                | Condition::RoleClaim(v) => v.is_empty(),
            };
            if empty || r.roles.is_empty() || r.issuer.as_deref() == Some("") {
                return Err(AuthzError::Config(format!("rule {n} has an empty value")));
            }
            rules.push(Rule {
                n,
                issuer: r.issuer,
                condition,
                roles: r.roles.into_iter().collect(),
            });
        }
        Ok(Self {
            claim_names: ClaimNames {
                groups: file.groups_claim,
                roles: file.roles_claim,
            },
            rules,
        })
    }

    /// Reads and parses a configuration file.
    ///
    /// # Errors
    ///
    /// [`AuthzError::Config`] when it cannot be read or parsed.
    pub fn load(path: &std::path::Path) -> Result<Self, AuthzError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| AuthzError::Config(format!("{}: {e}", path.display())))?;
        Self::from_toml(&text).map_err(|e| AuthzError::Config(format!("{}: {e}", path.display())))
    }

    /// The names of the groups and roles claims (hand them to every
    /// provider's configuration).
    pub fn claim_names(&self) -> &ClaimNames {
        &self.claim_names
    }

    /// The name of the claim holding groups (default `groups`).
    pub fn groups_claim(&self) -> &str {
        &self.claim_names.groups
    }

    /// The name of the claim holding roles (default `roles`).
    pub fn roles_claim(&self) -> &str {
        &self.claim_names.roles
    }

    /// Checks the rules against the identity providers configured beside
    /// them (call it once at start, with every provider's issuer and claim
    /// names):
    /// - with more than one provider, every `group` and `role_claim` rule
    ///   names its `issuer` (group and role names are each provider's own);
    /// - every rule's `issuer` is one of the providers (a typo would
    ///   silently grant nothing);
    /// - every provider reads groups and roles from the claims named here.
    ///
    /// # Errors
    ///
    /// [`AuthzError::Config`] naming the rule or provider at fault.
    pub fn check_providers<'a>(
        &self,
        providers: impl IntoIterator<Item = (&'a str, &'a ClaimNames)>,
    ) -> Result<(), AuthzError> {
        let providers: Vec<(&str, &ClaimNames)> = providers.into_iter().collect();
        for (issuer, names) in &providers {
            if **names != self.claim_names {
                return Err(AuthzError::Config(format!(
                    "provider {issuer} reads groups/roles from claims {:?}/{:?}, the role mapper from {:?}/{:?}: set them once, in the role mapping",
                    names.groups, names.roles, self.claim_names.groups, self.claim_names.roles
                )));
            }
        }
        for r in &self.rules {
            let claim_rule = matches!(r.condition, Condition::Group(_) | Condition::RoleClaim(_));
            match &r.issuer {
                None if claim_rule && providers.len() > 1 => {
                    return Err(AuthzError::Config(format!(
                        "rule {} matches a group or roles claim without an issuer; with several providers it must name one",
                        r.n
                    )));
                }
                Some(i) if !providers.iter().any(|(p, _)| p == i) => {
                    return Err(AuthzError::Config(format!(
                        "rule {} names issuer {i:?}, which is not a configured provider",
                        r.n
                    )));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Roles from the claim rules alone.
    pub fn claim_roles(&self, claims: &Claims) -> RoleSet {
        self.rules
            .iter()
            .filter(|r| r.matches(claims))
            .fold(RoleSet::EMPTY, |acc, r| acc.union(r.roles))
    }

    /// Roles from the claim rules and the stored assignments together.
    ///
    /// # Errors
    ///
    /// Storage failures.
    pub async fn roles(
        &self,
        claims: &Claims,
        assignments: &RoleAssignments,
    ) -> Result<RoleSet, AuthzError> {
        let stored = assignments.get(&claims.user).await?;
        Ok(self.claim_roles(claims).union(stored))
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredAssignment {
    user: UserId,
    roles: RoleSet,
}

/// Role assignments stored in a [`RecordStore`], keyed by issuer + subject.
/// The row id is a SHA-256 of the identity, so ids do not reveal who holds
/// roles; the row holds the identity and roles (no clinical data), sealed
/// with a [`Keyring`](careconnect_crypto::Keyring) and bound to its row id: a row forged or altered by
/// someone who can write the database grants no role.
#[derive(Clone, Debug)]
pub struct RoleAssignments {
    store: Arc<dyn RecordStore>,
    rows: SealedRows,
}

/// The collection assignments live in.
pub const ASSIGNMENTS_COLLECTION: &str = "authz_role_assignments";

impl RoleAssignments {
    /// Assignments in `store`, sealed with `keys` (a [`careconnect_crypto::Keyring`], or a
    /// [`careconnect_crypto::SharedKeyring`] that a rotation replaces while
    /// this runs).
    ///
    /// # Errors
    ///
    /// Never in practice (the collection name is a valid constant).
    pub fn new(
        store: Arc<dyn RecordStore>,
        keys: impl Into<careconnect_crypto::SharedKeyring>,
    ) -> Result<Self, AuthzError> {
        Ok(Self {
            store,
            rows: SealedRows::new(keys, ASSIGNMENTS_COLLECTION)?,
        })
    }

    fn row(user: &UserId) -> Result<RowId, AuthzError> {
        Ok(RowId::digest(&[
            user.issuer().as_bytes(),
            user.subject().as_bytes(),
        ]))
    }

    /// The roles stored for `user` (empty when none, and when the row does
    /// not open: a forged or altered row grants nothing).
    ///
    /// # Errors
    ///
    /// Storage failures.
    pub async fn get(&self, user: &UserId) -> Result<RoleSet, AuthzError> {
        match self.store.get(self.rows.coll(), &Self::row(user)?).await {
            Ok(row) => Ok(self
                .rows
                .open::<StoredAssignment>(&row)
                // Bound to the row id, which is the identity's hash; checked anyway.
                .filter(|a| a.user == *user)
                .map_or(RoleSet::EMPTY, |a| a.roles)),
            Err(StorageError::NotFound) => Ok(RoleSet::EMPTY),
            Err(e) => Err(e.into()),
        }
    }

    /// The write that replaces `user`'s stored roles by `change` applied
    /// to what is stored now, for a caller that commits it in one batch
    /// with other rows ([`RecordStore::commit`]): the new roles, and the
    /// write (`None` when nothing changes). It is a compare-and-swap on the
    /// version read, so a concurrent change makes the batch fail
    /// ([`StorageError::VersionConflict`] or [`StorageError::DuplicateId`]):
    /// call again.
    ///
    /// # Errors
    ///
    /// Storage failures.
    pub async fn write(
        &self,
        user: &UserId,
        change: impl FnOnce(RoleSet) -> RoleSet,
    ) -> Result<(RoleSet, Option<Write>), AuthzError> {
        let id = Self::row(user)?;
        let coll = self.rows.coll().clone();
        let current = match self.store.get(&coll, &id).await {
            Ok(row) => Some(row),
            Err(StorageError::NotFound) => None,
            Err(e) => return Err(e.into()),
        };
        let before = current
            .as_ref()
            .and_then(|row| self.rows.open::<StoredAssignment>(row))
            .filter(|a| a.user == *user)
            .map_or(RoleSet::EMPTY, |a| a.roles);
        let roles = change(before);
        if current.is_some() && roles == before {
            return Ok((roles, None));
        }
        let data = || {
            self.rows.seal(
                &id,
                &StoredAssignment {
                    user: user.clone(),
                    roles,
                },
            )
        };
        let write = match current {
            Some(row) if roles.is_empty() => Some(Write::Delete {
                coll,
                id,
                expected: row.version,
            }),
            Some(row) => Some(Write::Update {
                coll,
                data: data()?,
                id,
                expected: row.version,
            }),
            None if roles.is_empty() => None,
            None => Some(Write::Insert {
                coll,
                data: data()?,
                id,
            }),
        };
        Ok((roles, write))
    }

    /// Sets `user`'s stored roles (an empty set removes the assignment).
    /// Retries on a concurrent change, so two admins cannot lose each
    /// other's write silently: the last complete write wins.
    ///
    /// # Errors
    ///
    /// Storage failures.
    pub async fn set(&self, user: &UserId, roles: RoleSet) -> Result<(), AuthzError> {
        for _ in 0..8 {
            let Some(write) = self.write(user, |_| roles).await?.1 else {
                return Ok(());
            };
            match self.store.commit(&[write]).await {
                Ok(_) => return Ok(()),
                Err(
                    StorageError::VersionConflict { .. }
                    | StorageError::DuplicateId
                    | StorageError::NotFound,
                ) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(AuthzError::Storage(StorageError::Unavailable(
            "role assignment kept changing under concurrent writers".into(),
        )))
    }
}

/// Adds the identity's roles by name, for callers holding strings (CLI).
///
/// # Errors
///
/// [`AuthzError::UnknownRole`].
pub fn parse_roles<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<RoleSet, AuthzError> {
    names
        .into_iter()
        .map(str::parse::<Role>)
        .collect::<Result<RoleSet, _>>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use careconnect_crypto::Keyring;
    use careconnect_storage::MemoryStore;

    const CONFIG: &str = r#"
        roles_claim = "app_roles"

        [[rule]]
        email = "House@StJohns.example"
        roles = ["doctor", "admin"]

        [[rule]]
        email_domain = "@partner.example"
        roles = ["external"]

        [[rule]]
        group = "finance-team"
        roles = ["finance"]

        [[rule]]
        role_claim = "clinician"
        issuer = "https://idp.one"
        roles = ["doctor"]
    "#;

    fn claims(issuer: &str) -> Claims {
        Claims::new(UserId::new(issuer, "s1").unwrap())
    }

    #[test]
    fn each_condition_maps() {
        let m = RoleMapper::from_toml(CONFIG).unwrap();
        assert_eq!(m.roles_claim(), "app_roles");
        assert_eq!(m.groups_claim(), "groups");
        let mut c = claims("https://idp.one");
        assert!(m.claim_roles(&c).is_empty(), "unknown user: no role");
        c.email = Some("house@stjohns.example".into());
        assert!(m.claim_roles(&c).is_empty(), "unverified e-mail: no role");
        c.email_verified = true;
        assert_eq!(m.claim_roles(&c).to_string(), "doctor,admin");
        c.email = Some("ext@partner.example".into());
        assert_eq!(m.claim_roles(&c).to_string(), "external");
        c.email = Some("ext@evil-partner.example".into());
        assert!(m.claim_roles(&c).is_empty(), "domain is matched whole");
        c.groups = vec!["finance-team".into()];
        c.roles = vec!["clinician".into()];
        assert_eq!(m.claim_roles(&c).to_string(), "doctor,finance");
        let mut other = claims("https://idp.two");
        other.roles = vec!["clinician".into()];
        assert!(
            m.claim_roles(&other).is_empty(),
            "rule pinned to another issuer"
        );
    }

    #[test]
    fn bad_configuration_is_a_typed_error() {
        for (bad, why) in [
            ("[[rule]]\nroles = [\"doctor\"]", "no condition"),
            (
                "[[rule]]\ngroup = \"a\"\nemail = \"b@c\"\nroles = [\"doctor\"]",
                "several",
            ),
            ("[[rule]]\ngroup = \"a\"\nroles = [\"root\"]", "root"),
            ("[[rule]]\ngroup = \"a\"\nroles = []", "empty"),
            ("[[rule]]\ngroup = \"\"\nroles = [\"doctor\"]", "empty"),
            ("[[rule]]\ngroop = \"a\"\nroles = [\"doctor\"]", "groop"),
            ("[[rule]\n", "line 1"),
        ] {
            let err = RoleMapper::from_toml(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad:?} -> {err}");
        }
    }

    #[test]
    fn claim_rules_must_be_pinned_when_several_providers_are_configured() {
        let names = ClaimNames::default();
        let one = ("https://idp.one", &names);
        let two = ("https://idp.two", &names);
        let unpinned = RoleMapper::from_toml(
            "[[rule]]\nemail_domain = \"stjohns.example\"\nroles = [\"doctor\"]\n\
             [[rule]]\ngroup = \"clinicians\"\nroles = [\"doctor\"]",
        )
        .unwrap();
        // One provider: a group means that provider's group.
        unpinned.check_providers([one]).unwrap();
        // Two: the same group name at the other provider must not grant it.
        let err = unpinned
            .check_providers([one, two])
            .unwrap_err()
            .to_string();
        assert!(err.contains("rule 2"), "{err}");
        let pinned = RoleMapper::from_toml(
            "[[rule]]\nissuer = \"https://idp.one\"\ngroup = \"clinicians\"\nroles = [\"doctor\"]\n\
             [[rule]]\nissuer = \"https://idp.two\"\nrole_claim = \"md\"\nroles = [\"doctor\"]",
        )
        .unwrap();
        pinned.check_providers([one, two]).unwrap();
        // A pinned issuer that is not configured is a typo, not a rule.
        let err = pinned.check_providers([one]).unwrap_err().to_string();
        assert!(err.contains("not a configured provider"), "{err}");
        // Claim names are one setting: a provider reading other claims is refused.
        let other = ClaimNames {
            groups: "grp".into(),
            roles: "roles".into(),
        };
        let err = pinned
            .check_providers([one, ("https://idp.two", &other)])
            .unwrap_err()
            .to_string();
        assert!(err.contains("set them once"), "{err}");
    }

    #[tokio::test]
    async fn forged_or_moved_assignment_rows_grant_nothing() {
        use careconnect_storage::{Collection, RowData};
        let store: Arc<dyn RecordStore> = Arc::new(MemoryStore::new());
        let a = RoleAssignments::new(store.clone(), Keyring::generate()).unwrap();
        let coll = Collection::new(ASSIGNMENTS_COLLECTION).unwrap();
        let mallory = claims("https://idp.one").user;
        let grey = UserId::new("https://idp.one", "grey").unwrap();
        // A plain JSON row, as this crate wrote them before rows were sealed.
        let forged = serde_json::to_vec(&StoredAssignment {
            user: mallory.clone(),
            roles: parse_roles(["admin"]).unwrap(),
        })
        .unwrap();
        store
            .insert(
                &coll,
                &RoleAssignments::row(&mallory).unwrap(),
                RowData {
                    key_id: 0,
                    envelope: forged,
                    indexes: vec![],
                },
            )
            .await
            .unwrap();
        assert!(a.get(&mallory).await.unwrap().is_empty());
        // A genuine row copied to another identity's id does not open there.
        a.set(&grey, parse_roles(["admin"]).unwrap()).await.unwrap();
        let genuine = store
            .get(&coll, &RoleAssignments::row(&grey).unwrap())
            .await
            .unwrap();
        let row = RoleAssignments::row(&mallory).unwrap();
        let current = store.get(&coll, &row).await.unwrap();
        store
            .update(
                &coll,
                &row,
                current.version,
                RowData {
                    key_id: genuine.key_id,
                    envelope: genuine.envelope.clone(),
                    indexes: vec![],
                },
            )
            .await
            .unwrap();
        assert!(a.get(&mallory).await.unwrap().is_empty());
        assert_eq!(a.get(&grey).await.unwrap().to_string(), "admin");
        // A keyring that did not seal the row does not open it either.
        let other = RoleAssignments::new(store, Keyring::generate()).unwrap();
        assert!(other.get(&grey).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn stored_assignments_are_keyed_by_issuer_and_subject() {
        let store: Arc<dyn RecordStore> = Arc::new(MemoryStore::new());
        let a = RoleAssignments::new(store, Keyring::generate()).unwrap();
        let m = RoleMapper::from_toml("").unwrap();
        let one = claims("https://idp.one");
        let two = claims("https://idp.two"); // same subject, other issuer
        a.set(&one.user, parse_roles(["doctor"]).unwrap())
            .await
            .unwrap();
        assert_eq!(m.roles(&one, &a).await.unwrap().to_string(), "doctor");
        assert!(m.roles(&two, &a).await.unwrap().is_empty());
        a.set(&one.user, parse_roles(["doctor", "admin"]).unwrap())
            .await
            .unwrap();
        assert_eq!(a.get(&one.user).await.unwrap().to_string(), "doctor,admin");
        a.set(&one.user, RoleSet::EMPTY).await.unwrap();
        assert!(a.get(&one.user).await.unwrap().is_empty());
        a.set(&one.user, RoleSet::EMPTY).await.unwrap();
    }
}

#[cfg(test)]
mod example_file {
    #[test]
    fn the_documented_example_parses() {
        let text = include_str!("../../../docs/roles.example.toml");
        assert!(super::RoleMapper::from_toml(text).is_ok());
    }
}
