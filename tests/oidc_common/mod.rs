//! Playing the browser in OpenID Connect tests: follows the provider's
//! redirects by hand and fills its login/consent forms, stopping at the
//! redirect URI (nothing listens there).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use careconnect::authz::oidc::Callback;
use url::Url;

/// The redirect URI registered with the test providers.
pub(crate) const REDIRECT: &str = "http://127.0.0.1:8080/callback";

/// Logs `user` in through the provider's HTML forms (oidc-provider's
/// devInteractions login + consent, or the development issuer's user
/// picker) and returns the callback URL.
pub(crate) async fn headless_login(auth_url: &Url, user: &str) -> Url {
    let browser = reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut url = auth_url.clone();
    let mut form: Option<Vec<(String, String)>> = None;
    for _ in 0..12 {
        let resp = match form.take() {
            Some(f) => browser.post(url.clone()).form(&f).send().await.unwrap(),
            None => browser.get(url.clone()).send().await.unwrap(),
        };
        if resp.status().is_redirection() {
            let loc = resp.headers()["location"].to_str().unwrap().to_owned();
            url = url.join(&loc).unwrap();
            if url.as_str().starts_with(REDIRECT) {
                return url;
            }
            continue;
        }
        let status = resp.status();
        let html = resp.text().await.unwrap();
        let action = html
            .split("action=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap_or_else(|| panic!("no form on page ({status}): {html}"));
        url = url.join(&action.replace("&amp;", "&")).unwrap();
        form = Some(if html.contains(r#"name="prompt" value="login""#) {
            vec![
                ("prompt".into(), "login".into()),
                ("login".into(), user.into()),
                ("password".into(), "any".into()),
            ]
        } else if html.contains(r#"name="prompt" value="consent""#) {
            vec![("prompt".into(), "consent".into())]
        } else if html.contains(r#"name="user""#) {
            // The development issuer: its form carries the request in
            // hidden fields; pick the user's button.
            hidden_fields(&html)
                .into_iter()
                .chain([("user".into(), user.into())])
                .collect()
        } else {
            panic!("unexpected page: {html}");
        });
    }
    panic!("too many hops");
}

/// `<input type="hidden" name=".." value="..">` pairs of a page.
fn hidden_fields(html: &str) -> Vec<(String, String)> {
    html.split("<input")
        .skip(1)
        .filter(|t| t.contains(r#"type="hidden""#))
        .filter_map(|t| {
            let attr = |a: &str| {
                t.split(&format!("{a}=\""))
                    .nth(1)
                    .and_then(|s| s.split('"').next())
                    .map(|v| {
                        v.replace("&amp;", "&")
                            .replace("&quot;", "\"")
                            .replace("&#x2f;", "/")
                    })
            };
            Some((attr("name")?, attr("value")?))
        })
        .collect()
}

/// The callback URL's query as the relying party's input.
pub(crate) fn callback_of(url: &Url) -> Callback {
    let q: std::collections::HashMap<String, String> = url.query_pairs().into_owned().collect();
    Callback {
        state: q.get("state").cloned().unwrap_or_default(),
        code: q.get("code").cloned(),
        iss: q.get("iss").cloned(),
        error: q.get("error").cloned(),
    }
}

/// Redeems `code` by hand (client_secret_basic), with or without a PKCE
/// verifier; returns the HTTP status.
pub(crate) async fn token_request(
    token_url: &str,
    code: &str,
    verifier: Option<&str>,
    client: (&str, &str),
) -> u16 {
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", REDIRECT),
    ];
    if let Some(v) = verifier {
        form.push(("code_verifier", v));
    }
    reqwest::Client::new()
        .post(token_url)
        .basic_auth(client.0, Some(client.1))
        .form(&form)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// A fresh 2048-bit RSA private key (PEM) made by `openssl genpkey`.
pub(crate) fn rsa_pem() -> String {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("rsa.pem");
    let ok = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&key)
        .status()
        .unwrap();
    assert!(ok.success(), "openssl genpkey failed");
    std::fs::read_to_string(&key).unwrap()
}
