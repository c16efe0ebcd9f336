//! A demo on loopback (port 0, its own data directory and development
//! issuer) and HTTP clients that sign in through the issuer as a browser
//! would.

#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::path::PathBuf;

use careconnect_web_demo::{Running, Settings, start};
use reqwest::StatusCode;
use reqwest::header::LOCATION;

pub struct Demo {
    pub running: Option<Running>,
    /// The demo as a process of its own ([`Demo::spawn`]).
    pub child: Option<std::process::Child>,
    /// Its development issuer's port (identities are bound to the issuer's
    /// URL, so a restart on the same data must reuse it).
    pub issuer_port: u16,
    pub dir: tempfile::TempDir,
    pub url: String,
}

/// A port free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Demo {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// A demo with `change` made to its settings.
    pub async fn start_with(change: impl FnOnce(&mut Settings)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Settings::embedded(dir.path(), "127.0.0.1:0".parse().unwrap());
        s.dev_issuer = "127.0.0.1:0".parse().unwrap();
        change(&mut s);
        let running = start(s).await.unwrap();
        let url = running.url().to_owned();
        Self {
            running: Some(running),
            child: None,
            issuer_port: 0,
            dir,
            url,
        }
    }

    /// The `web-demo` binary on loopback with a data directory of its own
    /// (`dir`, or a new one) and `args`; returns once it says it is open.
    pub fn spawn(again: Option<(tempfile::TempDir, u16)>, args: &[&str]) -> Self {
        Self::spawn_env(again, None, args, &[])
    }

    /// As [`Demo::spawn`], on `port` if given, with more environment
    /// variables.
    pub fn spawn_env(
        again: Option<(tempfile::TempDir, u16)>,
        port: Option<u16>,
        args: &[&str],
        env: &[(&str, String)],
    ) -> Self {
        use std::io::BufRead;
        let (dir, issuer_port) =
            again.unwrap_or_else(|| (tempfile::tempdir().unwrap(), free_port()));
        let port = port.unwrap_or_else(free_port);
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_web-demo"))
            .arg("--data-dir")
            .arg(dir.path())
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--dev-issuer", &format!("127.0.0.1:{issuer_port}")])
            .args(args)
            .env("CARECONNECT_LOG", "info")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let mut lines = std::io::BufReader::new(out).lines();
        let url = loop {
            let line = lines
                .next()
                .expect("web-demo ended before it opened")
                .unwrap();
            if let Some(u) = line.strip_prefix("St John's Clinic is open at ") {
                break u.trim().to_owned();
            }
        };
        // Keep draining its output so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self {
            running: None,
            child: Some(child),
            issuer_port,
            dir,
            url,
        }
    }

    /// Sends SIGTERM to the spawned process.
    pub fn terminate(&self) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        let ok = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("tls").join("ca.pem")
    }

    /// A client trusting the development CA, keeping cookies, following no
    /// redirects.
    pub fn client(&self) -> reqwest::Client {
        self.client_from(None)
    }

    /// [`Demo::client`], its connections from `local` (e.g. 127.0.0.2, to
    /// be another client address than 127.0.0.1).
    pub fn client_from(&self, local: Option<std::net::IpAddr>) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(&std::fs::read(self.ca()).unwrap()).unwrap();
        reqwest::Client::builder()
            .add_root_certificate(ca)
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .local_address(local)
            .build()
            .unwrap()
    }

    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// A client signed in as `subject` through the development issuer.
    pub async fn login(&self, subject: &str) -> Session {
        self.login_from(subject, None).await
    }

    /// [`Demo::login`] from the local address `local`.
    pub async fn login_from(&self, subject: &str, local: Option<std::net::IpAddr>) -> Session {
        let client = self.client_from(local);
        let r = client.get(self.at("/login")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        let authorize = url::Url::parse(r.headers()[LOCATION].to_str().unwrap()).unwrap();
        let mut form: Vec<(String, String)> = authorize.query_pairs().into_owned().collect();
        form.push(("user".into(), subject.into()));
        let mut post = authorize.clone();
        post.set_query(None);
        let r = client.post(post).form(&form).send().await.unwrap();
        assert!(r.status().is_redirection(), "issuer: {}", r.status());
        let callback = r.headers()[LOCATION].to_str().unwrap().to_owned();
        let r = client.get(&callback).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "callback for {subject}");
        let home = client
            .get(self.at("/"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let csrf = between(&home, "name=\"csrf\" value=\"", "\"")
            .expect("a signed-in page has a CSRF token");
        Session {
            client,
            csrf,
            base: self.url.clone(),
            callback,
        }
    }

    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        // A failed test must not leave the process behind.
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub struct Session {
    pub client: reqwest::Client,
    pub csrf: String,
    pub base: String,
    /// The callback URL this login completed with (for replay tests).
    pub callback: String,
}

impl Session {
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
    }

    pub async fn page(&self, path: &str) -> String {
        let r = self.get(path).await;
        assert_eq!(r.status(), StatusCode::OK, "GET {path}");
        r.text().await.unwrap()
    }

    /// Posts `form` with this session's CSRF token.
    pub async fn post(&self, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
        let mut f: Vec<(&str, &str)> = vec![("csrf", &self.csrf)];
        f.extend_from_slice(form);
        self.post_raw(path, &f).await
    }

    /// Uploads `bytes` as `name` to Medicloud (token first, as the page does).
    pub async fn upload(&self, name: &str, bytes: Vec<u8>) -> reqwest::Response {
        let form = reqwest::multipart::Form::new()
            .text("csrf", self.csrf.clone())
            .part(
                "file",
                reqwest::multipart::Part::bytes(bytes)
                    .file_name(name.to_owned())
                    .mime_str("application/pdf")
                    .unwrap(),
            );
        self.client
            .post(format!("{}/medicloud/upload", self.base))
            .multipart(form)
            .send()
            .await
            .unwrap()
    }

    /// The ids of the Medicloud documents this user may manage, as the
    /// page lists them.
    pub async fn documents(&self) -> Vec<String> {
        ids(
            &self.page("/medicloud").await,
            "/medicloud/documents/",
            "/share",
        )
    }

    /// The start of a hand-made multipart upload of `name` (the token, then
    /// the file part's headers) with `boundary`, for bodies that trickle
    /// or fail part-way.
    pub fn upload_head(&self, boundary: &str, name: &str) -> Vec<u8> {
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\n{}\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\nContent-Type: application/pdf\r\n\r\n",
            self.csrf
        )
        .into_bytes()
    }

    /// Posts `form` as it is (no token added).
    pub async fn post_raw(&self, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.base))
            .form(form)
            .send()
            .await
            .unwrap()
    }
}

/// The text between `start` and the next `end` after it.
pub fn between(s: &str, start: &str, end: &str) -> Option<String> {
    let i = s.find(start)? + start.len();
    let j = s[i..].find(end)? + i;
    Some(s[i..j].to_owned())
}

/// Every id in form actions like `/prefix/{id}/suffix`.
pub fn ids(page: &str, prefix: &str, suffix: &str) -> Vec<String> {
    page.match_indices(prefix)
        .filter_map(|(i, _)| {
            let rest = &page[i + prefix.len()..];
            let end = rest.find(suffix)?;
            let id = &rest[..end];
            (!id.is_empty()
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
            .then(|| id.to_owned())
        })
        .collect()
}

/// A PDF of about `n` bytes (random after the magic).
pub fn pdf(n: usize) -> Vec<u8> {
    let mut v = b"%PDF-1.7\n".to_vec();
    let mut x: u32 = 0x9e37_79b9;
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        v.push(x as u8);
    }
    v
}

/// Files under `dir`, recursively.
pub fn files_under(dir: &std::path::Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() { files_under(&p) } else { 1 }
        })
        .sum()
}
