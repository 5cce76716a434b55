//! A small W3C WebDriver client for Debian's chromedriver and chromium: enough to drive the
//! console like a person (navigate, click, type, read) and to take screenshots.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
/// The key W3C WebDriver uses for element references.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
/// How long a wait for something on the page may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(20);

/// A headless Chromium session behind its own chromedriver.
pub struct Browser {
    _driver: Driver,
    port: u16,
    session: String,
    http: reqwest::Client,
    shots: PathBuf,
    _profile: tempfile::TempDir,
}

/// An element on the page.
#[derive(Clone, Debug)]
pub struct Element(String);

impl Browser {
    /// Starts chromedriver and a fresh headless Chromium; `None` when chromedriver is not
    /// installed. Screenshots go to `shots`.
    pub async fn start(shots: &Path) -> Option<Self> {
        if !Path::new(CHROMEDRIVER).exists() {
            return None;
        }
        let _ = rustls::crypto::ring::default_provider().install_default();
        std::fs::create_dir_all(shots).expect("creating the screenshot directory");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        // Wrapped at once so that chromedriver stops even when starting the session fails.
        let driver = Driver(
            Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("starting chromedriver"),
        );
        let profile = tempfile::tempdir().expect("a browser profile directory");
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let ready = http.get(format!("{base}/status")).send().await;
            if let Ok(response) = ready {
                let status = read_json(response).await;
                if status["value"]["ready"] == true {
                    break;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    format!("--user-data-dir={}", profile.path().display()),
                    "--window-size=1280,900",
                ],
            },
        } } });
        let response = read_json(
            http.post(format!("{base}/session"))
                .header("content-type", "application/json")
                .body(capabilities.to_string())
                .send()
                .await
                .expect("creating a WebDriver session"),
        )
        .await;
        let session = response["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {response:#}"))
            .to_owned();
        Some(Self {
            _driver: driver,
            port,
            session,
            http,
            shots: shots.to_owned(),
            _profile: profile,
        })
    }

    async fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!(
            "http://127.0.0.1:{}/session/{}{path}",
            self.port, self.session
        );
        let mut request = self.http.request(method, url);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = read_json(request.send().await.expect("a WebDriver request")).await;
        if let Some(error) = response["value"]["error"].as_str() {
            panic!(
                "WebDriver {path}: {error}: {}",
                response["value"]["message"]
            );
        }
        response["value"].clone()
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.command(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn goto(&self, url: &str) {
        self.post("/url", json!({ "url": url })).await;
    }

    /// Runs JavaScript in the page and returns its result.
    pub async fn script(&self, source: &str, args: Value) -> Value {
        self.post("/execute/sync", json!({ "script": source, "args": args }))
            .await
    }

    /// The page's visible text, for failure messages.
    async fn page_text(&self) -> String {
        self.script("return document.body.innerText;", json!([]))
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Waits until `check` holds, or fails the test with a screenshot and the page's text.
    async fn wait(&self, what: &str, source: &str, args: Value) -> Value {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let value = self.script(source, args.clone()).await;
            if !(value.is_null() || value == false) {
                return value;
            }
            if tokio::time::Instant::now() > deadline {
                let shot = self.screenshot("failure").await;
                panic!(
                    "waited in vain for {what} (screenshot {}); the page says:\n{}",
                    shot.display(),
                    self.page_text().await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for a visible element matching `css`.
    pub async fn find(&self, css: &str) -> Element {
        let value = self
            .wait(
                &format!("a visible {css}"),
                "const el = document.querySelector(arguments[0]);
                 return el && el.getClientRects().length ? el : null;",
                json!([css]),
            )
            .await;
        Element(
            value[ELEMENT]
                .as_str()
                .unwrap_or_else(|| panic!("{css} is not an element: {value}"))
                .to_owned(),
        )
    }

    /// Waits until the element matching `css` shows `text`, and returns all its text.
    pub async fn wait_for_text(&self, css: &str, text: &str) -> String {
        self.wait(
            &format!("{css} to show {text:?}"),
            "const el = document.querySelector(arguments[0]);
             const field = el instanceof HTMLTextAreaElement || el instanceof HTMLInputElement;
             const text = el && (field ? el.value : el.innerText);
             return el && text.includes(arguments[1]) ? text : null;",
            json!([css, text]),
        )
        .await
        .as_str()
        .unwrap()
        .to_owned()
    }

    /// How many elements match `css` right now.
    pub async fn count(&self, css: &str) -> usize {
        self.script(
            "return [...document.querySelectorAll(arguments[0])].filter((el) => el.getClientRects().length).length;",
            json!([css]),
        )
        .await
        .as_u64()
        .unwrap() as usize
    }

    pub async fn click(&self, css: &str) {
        let element = self.find(css).await;
        self.post(&format!("/element/{}/click", element.0), json!({}))
            .await;
    }

    /// Empties a text field, then types `text` into it key by key.
    pub async fn fill(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        self.post(&format!("/element/{}/clear", element.0), json!({}))
            .await;
        self.post(
            &format!("/element/{}/value", element.0),
            json!({ "text": text }),
        )
        .await;
    }

    /// Chooses the option with `value` in the select matching `css`, as picking it from the
    /// list does (an `input` and a `change` event).
    pub async fn select(&self, css: &str, value: &str) {
        self.find(css).await;
        let chosen = self
            .script(
                "const el = document.querySelector(arguments[0]);
                 const value = arguments[1];
                 if (![...el.options].some((option) => option.value === value)) return false;
                 el.value = value;
                 el.dispatchEvent(new Event('input', { bubbles: true }));
                 el.dispatchEvent(new Event('change', { bubbles: true }));
                 return true;",
                json!([css, value]),
            )
            .await;
        assert_eq!(chosen, true, "{css} has no option {value:?}");
    }

    pub async fn set_window(&self, width: u32, height: u32) {
        self.post("/window/rect", json!({ "width": width, "height": height }))
            .await;
    }

    /// Emulates the system's colour scheme (`light` or `dark`) through Chromium's DevTools.
    pub async fn color_scheme(&self, scheme: &str) {
        self.post(
            "/goog/cdp/execute",
            json!({ "cmd": "Emulation.setEmulatedMedia", "params": {
                "features": [{ "name": "prefers-color-scheme", "value": scheme }],
            } }),
        )
        .await;
    }

    /// Saves a PNG of the window as `<name>.png` in the screenshot directory.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let value = self
            .command(reqwest::Method::GET, "/screenshot", None)
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(value.as_str().expect("a base64 screenshot"))
            .expect("valid base64");
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("writing a screenshot");
        path
    }
}

/// A WebDriver answer as JSON (reqwest is built without its `json` feature here).
async fn read_json(response: reqwest::Response) -> Value {
    let text = response.text().await.expect("a WebDriver answer");
    serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("WebDriver answered with non-JSON: {text}"))
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ends the session so chromedriver closes Chromium (the driver field stops chromedriver
        // afterwards). Drop cannot await, so this is one plain blocking HTTP request.
        if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = write!(
                stream,
                "DELETE /session/{} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                self.session, self.port
            );
            let _ = stream.read_to_end(&mut Vec::new());
        }
    }
}

/// The chromedriver process, stopped when dropped.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
