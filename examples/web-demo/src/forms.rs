//! The demo's forms as browsers post them
//! (`application/x-www-form-urlencoded`), and the little the web layer reads
//! from them before the clinic's own checks: a booking's instant, a share's
//! expiry, a role list, a care operation. Every value that reaches the
//! clinic is checked again there.
//!
//! ```
//! use careconnect_web_demo::forms::{self, Booking};
//!
//! let b: Booking = forms::decode(b"doctor=doctor-grey&date=2027-01-04&time=09:30&reason=cough")?;
//! assert_eq!(b.starts_at()?, 1_799_055_000);
//! assert!(forms::decode::<Booking>(b"doctor=doctor-grey").is_err());
//! # Ok::<(), forms::FormError>(())
//! ```

use careconnect::authz::RoleSet;
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// A form that does not decode, or a field the web layer cannot read; the
/// text names the field (for a 400 page, never with the value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FormError(pub &'static str);

/// Decodes a posted body into the form `T`: unknown fields are ignored, a
/// missing required one or bytes that are not a form are an error.
///
/// # Errors
///
/// [`FormError`] for anything but a complete form.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, FormError> {
    serde_urlencoded::from_bytes(body).map_err(|_| FormError("the form is incomplete or malformed"))
}

/// The CSRF token every form carries (read before the form itself).
#[derive(Debug, Deserialize)]
pub struct Token {
    /// The token, empty when absent.
    #[serde(default)]
    pub csrf: String,
}

/// A form with nothing but its CSRF token.
#[derive(Debug, Deserialize)]
pub struct Empty {}

/// CareConnect: a patient books an appointment.
#[derive(Debug, Deserialize)]
pub struct Booking {
    /// The doctor's subject.
    pub doctor: String,
    /// `YYYY-MM-DD`.
    pub date: String,
    /// `HH:MM`, UTC.
    pub time: String,
    /// Why (checked by the clinic).
    pub reason: String,
}

impl Booking {
    /// Seconds since the epoch of the date and time of day, in UTC.
    ///
    /// # Errors
    ///
    /// `date` or `time` when either does not parse or is before 1970.
    pub fn starts_at(&self) -> Result<u64, FormError> {
        let d = time::Date::parse(
            &self.date,
            time::macros::format_description!("[year]-[month]-[day]"),
        )
        .map_err(|_| FormError("date"))?;
        let t = time::Time::parse(
            &self.time,
            time::macros::format_description!("[hour]:[minute]"),
        )
        .map_err(|_| FormError("time"))?;
        u64::try_from(d.with_time(t).assume_utc().unix_timestamp()).map_err(|_| FormError("date"))
    }
}

/// Medicloud: an owner shares a document.
#[derive(Debug, Deserialize)]
pub struct Share {
    /// The subject shared with.
    pub user: String,
    /// Days until the share ends (empty: until revoked).
    #[serde(default)]
    pub days: String,
}

/// The longest share the demo offers, in days.
pub const MAX_SHARE_DAYS: u64 = 365;

impl Share {
    /// When the share ends, `days` after `now` (Unix seconds); `None` for
    /// a share until revoked.
    ///
    /// # Errors
    ///
    /// `days` for anything but empty or a whole number from 1 to
    /// [`MAX_SHARE_DAYS`].
    pub fn expires_at(&self, now: u64) -> Result<Option<u64>, FormError> {
        match self.days.trim() {
            "" => Ok(None),
            d => match d.parse::<u64>() {
                Ok(days) if (1..=MAX_SHARE_DAYS).contains(&days) => {
                    Ok(Some(now.saturating_add(days * 86_400)))
                }
                _ => Err(FormError("days: 1 to 365")),
            },
        }
    }
}

/// Medicloud: an owner ends a share.
#[derive(Debug, Deserialize)]
pub struct Revoke {
    /// The subject whose share ends.
    pub user: String,
}

/// MedRecords: a doctor adds a note.
#[derive(Debug, Deserialize)]
pub struct NewNote {
    /// The note.
    pub text: String,
    /// The note this one corrects (empty: none).
    #[serde(default)]
    pub amends: String,
}

/// MedRecords: a doctor declares break-glass access.
#[derive(Debug, Deserialize)]
pub struct BreakGlass {
    /// The patient's subject.
    pub patient: String,
    /// The stated reason.
    pub reason: String,
}

/// EPS: a doctor prescribes.
#[derive(Debug, Deserialize)]
pub struct NewPrescription {
    /// The patient's subject.
    pub patient: String,
    /// Drug.
    pub drug: String,
    /// Dosage.
    pub dosage: String,
    /// Frequency.
    pub frequency: String,
    /// Notes (optional).
    #[serde(default)]
    pub notes: String,
}

/// Admin: a person's name and stored roles.
#[derive(Debug, Deserialize)]
pub struct SetPerson {
    /// Their subject.
    pub subject: String,
    /// Display name.
    pub name: String,
    /// Role names, comma separated.
    #[serde(default)]
    pub roles: String,
}

impl SetPerson {
    /// The roles named.
    ///
    /// # Errors
    ///
    /// `roles` for a name that is not a role.
    pub fn role_set(&self) -> Result<RoleSet, FormError> {
        careconnect::authz::mapper::parse_roles(
            self.roles
                .split(',')
                .map(str::trim)
                .filter(|r| !r.is_empty()),
        )
        .map_err(|_| FormError("roles: patient, doctor, finance, external, admin"))
    }
}

/// Admin: a doctor's care of a patient begins or ends.
#[derive(Debug, Deserialize)]
pub struct Care {
    /// The doctor's subject.
    pub doctor: String,
    /// The patient's subject.
    pub patient: String,
    /// `assign` or `revoke`.
    pub op: String,
}

impl Care {
    /// Whether care begins (`assign`) or ends (`revoke`).
    ///
    /// # Errors
    ///
    /// `op` for anything else.
    pub fn assigns(&self) -> Result<bool, FormError> {
        match self.op.as_str() {
            "assign" => Ok(true),
            "revoke" => Ok(false),
            _ => Err(FormError("op")),
        }
    }
}

/// Admin: a patient's erasure.
#[derive(Debug, Deserialize)]
pub struct Erase {
    /// The patient's subject.
    pub patient: String,
    /// The stated reason.
    pub reason: String,
    /// The patient's subject typed again.
    pub confirm: String,
}

impl Erase {
    /// The patient's subject, when typed the same twice.
    ///
    /// # Errors
    ///
    /// When the two differ.
    pub fn confirmed(&self) -> Result<&str, FormError> {
        let patient = self.patient.trim();
        if patient == self.confirm.trim() {
            Ok(patient)
        } else {
            Err(FormError("type the patient id twice to confirm"))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn fields_the_web_layer_reads() {
        let b = |date: &str, time: &str| Booking {
            doctor: String::new(),
            date: date.into(),
            time: time.into(),
            reason: String::new(),
        };
        assert_eq!(b("1970-01-02", "00:01").starts_at(), Ok(86_460));
        assert_eq!(b("2026-12-01", "09:30").starts_at(), Ok(1_796_117_400));
        for (d, t) in [
            ("1969-12-31", "23:59"),
            ("2027-02-30", "09:00"),
            ("2027-01-01", "24:00"),
            ("2026-13-01", "09:30"),
            ("../x", "09:00"),
            ("", ""),
        ] {
            assert!(b(d, t).starts_at().is_err(), "{d} {t}");
        }
        let s = |days: &str| Share {
            user: String::new(),
            days: days.into(),
        };
        assert_eq!(s(" ").expires_at(10), Ok(None));
        assert_eq!(s("1").expires_at(10), Ok(Some(86_410)));
        assert_eq!(s("365").expires_at(u64::MAX), Ok(Some(u64::MAX)));
        for bad in ["0", "366", "-1", "1.5", "99999999999999999999999"] {
            assert!(s(bad).expires_at(0).is_err(), "{bad}");
        }
        let e: Erase = decode(b"patient=a&reason=r&confirm=+a+").unwrap();
        assert_eq!(e.confirmed(), Ok("a"));
        let e: Erase = decode(b"patient=a&reason=r&confirm=b").unwrap();
        assert!(e.confirmed().is_err());
        let p: SetPerson = decode(b"subject=s&name=n&roles=doctor,+admin,").unwrap();
        assert_eq!(p.role_set().unwrap().iter().count(), 2);
        let p: SetPerson = decode(b"subject=s&name=n&roles=root").unwrap();
        assert!(p.role_set().is_err());
        assert!(
            decode::<Care>(b"doctor=d&patient=p&op=drop")
                .unwrap()
                .assigns()
                .is_err()
        );
        assert!(decode::<NewNote>(b"%ff=x").is_err());
    }
}
