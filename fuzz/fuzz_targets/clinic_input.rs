//! The clinic's input parsers on any text: patient details (name, date of
//! birth, blood type, allergies), finance date ranges, the CSV formula
//! neutraliser, upload names and content sniffing. Typed errors, never a
//! panic; what validates once validates again unchanged; a date range's
//! bounds are ordered; a neutralised cell never starts a formula; a display
//! name holds no path separator, quote or control character.
#![no_main]

use careconnect_core::finance::{DateRange, neutralise_formula};
use careconnect_core::medicloud::{FileType, display_name};
use careconnect_core::records::PatientDetails;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.split('\0');
    let mut next = || parts.next().unwrap_or("").to_owned();
    let details = PatientDetails {
        name: next(),
        date_of_birth: next(),
        blood_type: next(),
        allergies: next().split(',').map(str::to_owned).collect(),
    };
    if let Ok(ok) = details.validated() {
        assert_eq!(ok.validated().ok().as_ref(), Some(&ok));
    }
    let range = DateRange {
        from: Some(next()),
        to: Some(next()),
    };
    if let Ok((from, to)) = range.bounds() {
        assert!(from < to);
    }
    let cell = next();
    let safe = neutralise_formula(&cell);
    assert!(!safe.starts_with(['=', '+', '-', '@', '\t', '\r']));
    // Upload names and content sniffing.
    if let Some(name) = display_name(&cell) {
        assert!(!name.is_empty() && name.chars().count() <= 100);
        assert!(!name.contains(['/', '\\', '"', ';']) && !name.chars().any(char::is_control));
    }
    let _ = FileType::sniff(data, &cell);
});
