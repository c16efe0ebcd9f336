//! Who is acting: a stable user identity and the roles it holds.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::AuthzError;

/// The five roles of the clinic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Sees and acts on their own record, appointments and prescriptions.
    Patient,
    /// Treats patients: records, notes, prescriptions, documents.
    Doctor,
    /// Sees pseudonymous transactions, never clinical data.
    Finance,
    /// A partner organisation: only documents shared with it.
    External,
    /// Enters every subsystem to look (every such access is audited) and
    /// administers roles and keys.
    Admin,
}

impl Role {
    /// Every role, in a fixed order.
    pub const ALL: [Role; 5] = [
        Role::Patient,
        Role::Doctor,
        Role::Finance,
        Role::External,
        Role::Admin,
    ];

    /// The lower-case name used in configuration and storage.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Patient => "patient",
            Role::Doctor => "doctor",
            Role::Finance => "finance",
            Role::External => "external",
            Role::Admin => "admin",
        }
    }

    const fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = AuthzError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| AuthzError::UnknownRole(s.chars().take(40).collect()))
    }
}

/// A set of roles. Empty means no access at all (unknown users get no
/// default role).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct RoleSet(u8);

impl RoleSet {
    /// No roles.
    pub const EMPTY: RoleSet = RoleSet(0);

    /// Whether `role` is in the set.
    pub fn contains(self, role: Role) -> bool {
        self.0 & role.bit() != 0
    }

    /// Adds `role`.
    pub fn insert(&mut self, role: Role) {
        self.0 |= role.bit();
    }

    /// Both sets together.
    #[must_use]
    pub fn union(self, other: RoleSet) -> RoleSet {
        RoleSet(self.0 | other.0)
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The roles, in [`Role::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = Role> {
        Role::ALL.into_iter().filter(move |r| self.contains(*r))
    }
}

impl FromIterator<Role> for RoleSet {
    fn from_iter<I: IntoIterator<Item = Role>>(iter: I) -> Self {
        let mut s = RoleSet::EMPTY;
        for r in iter {
            s.insert(r);
        }
        s
    }
}

impl fmt::Debug for RoleSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl fmt::Display for RoleSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(Role::as_str).collect();
        f.write_str(&names.join(","))
    }
}

impl Serialize for RoleSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for RoleSet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Vec::<Role>::deserialize(d)?.into_iter().collect())
    }
}

/// A user as the identity provider names them: issuer + subject. Stable and
/// never reassigned, unlike an e-mail address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct UserId {
    issuer: String,
    subject: String,
}

impl UserId {
    /// Longest issuer or subject accepted.
    pub const MAX_LEN: usize = 255;

    /// A user id; issuer and subject are 1 to 255 bytes without control
    /// characters.
    ///
    /// # Errors
    ///
    /// [`AuthzError::InvalidIdentity`] otherwise.
    pub fn new(issuer: impl Into<String>, subject: impl Into<String>) -> Result<Self, AuthzError> {
        let (issuer, subject) = (issuer.into(), subject.into());
        for (what, v) in [("issuer", &issuer), ("subject", &subject)] {
            if v.is_empty() || v.len() > Self::MAX_LEN || v.chars().any(char::is_control) {
                return Err(AuthzError::InvalidIdentity(what));
            }
        }
        Ok(Self { issuer, subject })
    }

    /// The issuer URL.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The subject, unique within the issuer.
    pub fn subject(&self) -> &str {
        &self.subject
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.issuer, self.subject)
    }
}

/// An authenticated user and the roles they hold now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// Who.
    pub user: UserId,
    /// What they may act as.
    pub roles: RoleSet,
}

impl Principal {
    /// A principal.
    pub fn new(user: UserId, roles: RoleSet) -> Self {
        Self { user, roles }
    }

    /// Whether they hold `role`.
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_round_trip_and_unknown_is_an_error() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>().unwrap(), r);
        }
        assert!(matches!(
            "root".parse::<Role>(),
            Err(AuthzError::UnknownRole(_))
        ));
        let set: RoleSet = [Role::Admin, Role::Patient].into_iter().collect();
        assert_eq!(set.to_string(), "patient,admin");
        let json = serde_json::to_string(&set).unwrap();
        assert_eq!(json, r#"["patient","admin"]"#);
        assert_eq!(serde_json::from_str::<RoleSet>(&json).unwrap(), set);
        assert!(serde_json::from_str::<RoleSet>(r#"["root"]"#).is_err());
    }

    #[test]
    fn user_ids_are_bounded() {
        assert!(UserId::new("https://idp", "u1").is_ok());
        assert!(UserId::new("", "u1").is_err());
        assert!(UserId::new("https://idp", "a\nb").is_err());
        assert!(UserId::new("https://idp", "x".repeat(256)).is_err());
    }
}
