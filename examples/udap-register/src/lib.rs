//! Registers an app with any UDAP server, as an embedding app would:
//!
//! 1. reads the server's `/.well-known/udap` and, given the community's
//!    trust anchor, verifies its `signed_metadata` before using the
//!    endpoints it names;
//! 2. registers with a software statement signed by the app's community
//!    certificate (`POST /register`), getting a `client_id`;
//! 3. with `--token`, authenticates with a signed client assertion and the
//!    `hl7-b2b` extension (`client_credentials`), getting an access token;
//!    with `--check-replay`, sends the same assertion again and reports the
//!    server's refusal.
//!
//! Against the web demo on its embedded defaults (which writes a
//! development community and a client certificate under its data
//! directory):
//!
//! ```text
//! udap-register --server https://127.0.0.1:8443 --ca data/tls/ca.pem \
//!   --anchor data/udap/anchor.pem \
//!   --chain data/udap/dev-client/chain.pem --key data/udap/dev-client/key.pem \
//!   --iss https://dev-app.stjohns.example/udap --token
//! ```

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use careconnect::authz::udap::{
    self, B2bExtension, ClientRequest, TrustCommunity, UdapClient, verify_signed_metadata,
};
use serde_json::{Value, json};

/// Command-line arguments.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "udap-register", version, about)]
pub struct Args {
    /// The server's base URL (where `/.well-known/udap` is).
    #[arg(long)]
    pub server: String,
    /// Extra TLS root (PEM) for a server with a private CA.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// The community's trust anchor (PEM): verify `signed_metadata` with it.
    /// Without it, the unsigned endpoints are used as they are.
    #[arg(long)]
    pub anchor: Option<PathBuf>,
    /// Ask for this community's metadata (`?community=`).
    #[arg(long)]
    pub community: Option<String>,
    /// The app's certificate chain (PEM, leaf first).
    #[arg(long)]
    pub chain: PathBuf,
    /// The app's private key (PKCS#8 PEM).
    #[arg(long)]
    pub key: PathBuf,
    /// The app's identity: a URI SAN of its certificate.
    #[arg(long)]
    pub iss: String,
    /// The app's name.
    #[arg(long, default_value = "careconnect udap-register example")]
    pub name: String,
    /// A contact (`mailto:` URI).
    #[arg(long, default_value = "mailto:udap-admin@example.org")]
    pub contact: String,
    /// Scopes to register for (default: every scope the server offers).
    #[arg(long = "scope")]
    pub scopes: Vec<String>,
    /// Cancel the registration instead (empty `grant_types`).
    #[arg(long, conflicts_with = "token")]
    pub cancel: bool,
    /// Then get a token (`client_credentials`).
    #[arg(long)]
    pub token: bool,
    /// With `--token`: send the same assertion again; the server must
    /// refuse it.
    #[arg(long, requires = "token")]
    pub check_replay: bool,
    /// `hl7-b2b` `organization_id`.
    #[arg(long, default_value = "https://example.org/organization")]
    pub organization: String,
    /// `hl7-b2b` `purpose_of_use`.
    #[arg(long, default_value = "urn:oid:2.16.840.1.113883.5.8#TREAT")]
    pub purpose: String,
    /// Print one JSON object instead of lines.
    #[arg(long)]
    pub json: bool,
}

/// What happened.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Whether `signed_metadata` was verified against `--anchor`.
    pub metadata_verified: bool,
    /// The registration endpoint used.
    pub registration_endpoint: String,
    /// The registration's HTTP status (201 new, 200 updated or cancelled).
    pub registration_status: u16,
    /// The client id.
    pub client_id: String,
    /// Scopes registered.
    pub scopes: String,
    /// The token response's `token_type`, `expires_in` and `scope` (never
    /// the token).
    pub token: Option<(String, u64, String)>,
    /// The replayed assertion's refusal (`error`, `error_description`).
    pub replay_refused: Option<(String, String)>,
}

impl Report {
    /// As JSON (no token).
    pub fn to_json(&self) -> Value {
        json!({
            "metadata_verified": self.metadata_verified,
            "registration_endpoint": self.registration_endpoint,
            "registration_status": self.registration_status,
            "client_id": self.client_id,
            "scopes": self.scopes,
            "token": self.token.as_ref().map(|(t, e, s)| json!({"token_type": t, "expires_in": e, "scope": s})),
            "replay_refused": self.replay_refused.as_ref().map(|(e, d)| json!({"error": e, "error_description": d})),
        })
    }

    /// For people.
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![if self.metadata_verified {
            "metadata: signed_metadata verified against the community anchor".to_owned()
        } else {
            "metadata: read (signed_metadata not verified: no --anchor)".to_owned()
        }];
        out.push(format!(
            "registered at {}: HTTP {} client_id={} scope={}",
            self.registration_endpoint, self.registration_status, self.client_id, self.scopes
        ));
        if let Some((t, e, s)) = &self.token {
            out.push(format!("token: {t}, expires in {e} s, scope={s}"));
        }
        if let Some((e, d)) = &self.replay_refused {
            out.push(format!("replayed assertion refused: {e} ({d})"));
        }
        out
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `s` with control characters replaced: the server's text never reaches
/// the terminal as escape sequences.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if udap::is_invisible(c) { '?' } else { c })
        .take(500)
        .collect()
}

fn str_field(v: &Value, k: &str) -> Result<String> {
    v.get(k)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .with_context(|| format!("the server's answer has no {k}"))
}

/// Runs the registration (and token request) `args` describe.
///
/// # Errors
/// The server unreachable, its metadata unverifiable, or a refusal (with
/// the server's `error` and `error_description`).
pub async fn run(args: &Args) -> Result<Report> {
    let mut http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none());
    if let Some(ca) = &args.ca {
        let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
        http = http.add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
    }
    let http = http.build()?;
    let base = args.server.trim_end_matches('/');
    let client = UdapClient::from_pem(
        &std::fs::read(&args.chain).with_context(|| format!("reading {}", args.chain.display()))?,
        &std::fs::read(&args.key).with_context(|| format!("reading {}", args.key.display()))?,
        &args.iss,
    )?;

    // 1. Metadata.
    let mut req = http.get(format!("{base}/.well-known/udap"));
    if let Some(c) = &args.community {
        req = req.query(&[("community", c)]);
    }
    let resp = req
        .send()
        .await
        .context("reading the server's UDAP metadata")?;
    if resp.status().as_u16() == 204 {
        bail!("the server is not a member of that community (204)");
    }
    if !resp.status().is_success() {
        bail!("the server has no UDAP metadata (HTTP {})", resp.status());
    }
    let meta: Value = resp.json().await?;
    let mut report = Report::default();
    let mut registration_endpoint = str_field(&meta, "registration_endpoint")?;
    let mut token_endpoint = str_field(&meta, "token_endpoint")?;
    if let Some(anchor) = &args.anchor {
        let pem = std::fs::read(anchor).with_context(|| format!("reading {}", anchor.display()))?;
        let trust = TrustCommunity::new(args.community.as_deref().unwrap_or("community"), &pem)?;
        let signed =
            verify_signed_metadata(&str_field(&meta, "signed_metadata")?, &trust, base, now())?;
        if signed.registration_endpoint != registration_endpoint
            || signed.token_endpoint != token_endpoint
        {
            bail!("the signed and unsigned metadata name different endpoints");
        }
        registration_endpoint = signed.registration_endpoint;
        token_endpoint = signed.token_endpoint;
        report.metadata_verified = true;
    }
    // A statement and assertions go only to https endpoints.
    for e in [&registration_endpoint, &token_endpoint] {
        if !e.starts_with("https://") {
            bail!(
                "the server names an endpoint that is not https: {}",
                clean(e)
            );
        }
    }
    report.registration_endpoint = registration_endpoint.clone();

    // 2. Registration.
    let scopes: Vec<String> = if args.scopes.is_empty() {
        meta.get("scopes_supported")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    } else {
        args.scopes.clone()
    };
    let scope_refs: Vec<&str> = scopes.iter().map(String::as_str).collect();
    let mut request = ClientRequest::b2b(&args.name, &args.contact, &scope_refs);
    if args.cancel {
        request.grant_types.clear();
    }
    let body = client.registration_request(&registration_endpoint, &request, now())?;
    let resp = http.post(&registration_endpoint).json(&body).send().await?;
    let status = resp.status().as_u16();
    let answer: Value = resp
        .json()
        .await
        .context("the registration answer is not JSON")?;
    if !matches!(status, 200 | 201) {
        bail!(
            "registration refused (HTTP {status}): {} ({})",
            clean(answer["error"].as_str().unwrap_or("?")),
            clean(answer["error_description"].as_str().unwrap_or(""))
        );
    }
    report.registration_status = status;
    report.client_id = clean(&str_field(&answer, "client_id")?);
    report.scopes = clean(answer["scope"].as_str().unwrap_or_default());
    if !args.token {
        return Ok(report);
    }

    // 3. Token.
    let b2b = B2bExtension::new(&args.organization, vec![args.purpose.clone()]);
    let form = client.token_request(&report.client_id, &token_endpoint, &b2b, None, now())?;
    let send = |form: Vec<(&'static str, String)>| {
        let http = http.clone();
        let url = token_endpoint.clone();
        async move {
            let r = http.post(url).form(&form).send().await?;
            let s = r.status().as_u16();
            Ok::<_, anyhow::Error>((s, r.json::<Value>().await?))
        }
    };
    let (status, answer) = send(form.clone()).await?;
    if status != 200 {
        bail!(
            "token refused (HTTP {status}): {} ({})",
            clean(answer["error"].as_str().unwrap_or("?")),
            clean(answer["error_description"].as_str().unwrap_or(""))
        );
    }
    report.token = Some((
        clean(&str_field(&answer, "token_type")?),
        answer["expires_in"].as_u64().unwrap_or(0),
        clean(answer["scope"].as_str().unwrap_or_default()),
    ));
    if args.check_replay {
        let (status, answer) = send(form).await?;
        if status == 200 {
            bail!("the server accepted a replayed client assertion");
        }
        report.replay_refused = Some((
            answer["error"].as_str().unwrap_or("?").to_owned(),
            answer["error_description"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
        ));
    }
    Ok(report)
}
