//! A minimal WebDriver BiDi client for headless Firefox (Debian's `firefox-esr`).
//!
//! Firefox is started with `--remote-debugging-port 0` and says on stderr where its BiDi
//! WebSocket listens; one session, tabs opened with `browsingContext.create`, scripts run
//! with `script.evaluate`, their results returned as JSON text (BiDi's typed values need
//! no decoding then). Calls are made one at a time on the one socket.
//! Fake media and no permission prompt come from the profile's prefs.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{Message, WebSocket};

/// The browser, looked up on PATH; `Prereq::Firefox` checks for it.
pub const FIREFOX: &str = "firefox-esr";
/// NSS's tool, to trust a certificate in a profile (Debian's `libnss3-tools`).
pub const CERTUTIL: &str = "certutil";

/// Prefs that make headless Firefox usable for WebRTC tests on a closed network: fake
/// camera and microphone without a prompt, real host addresses in candidates (no mDNS
/// names), loopback interfaces and ICE servers allowed, no first-run noise.
const PREFS: &str = r#"
user_pref("media.navigator.streams.fake", true);
user_pref("media.navigator.permission.disabled", true);
user_pref("media.peerconnection.ice.obfuscate_host_addresses", false);
user_pref("media.peerconnection.ice.loopback", true);
user_pref("media.autoplay.default", 0);
user_pref("media.autoplay.blocking_policy", 0);
user_pref("browser.shell.checkDefaultBrowser", false);
user_pref("browser.aboutwelcome.enabled", false);
user_pref("datareporting.policy.dataSubmissionEnabled", false);
user_pref("toolkit.telemetry.reportingpolicy.firstRun", false);
user_pref("app.update.disabledForTesting", true);
user_pref("network.captive-portal-service.enabled", false);
user_pref("network.connectivity-service.enabled", false);
"#;

pub struct Firefox {
    /// `None` once `Drop` has reaped it.
    child: Option<Child>,
    socket: Mutex<WebSocket<TcpStream>>,
    next_id: AtomicU64,
    _profile: tempfile::TempDir,
}

struct KillOnDrop(Option<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub struct Tab<'a> {
    browser: &'a Firefox,
    context: String,
}

impl Firefox {
    /// Starts Firefox with a fresh profile in which `certs` (PEM files) are trusted as TLS
    /// servers (Firefox checks the certificate of a TURN server over TLS, `turns:`, which
    /// the session's `acceptInsecureCerts` does not cover).
    pub fn launch(certs: &[&std::path::Path]) -> Firefox {
        Firefox::launch_in(None, certs)
    }

    /// [`Firefox::launch`] inside network namespace `netns` (`ip netns exec`), when given:
    /// its WebDriver BiDi port is on that namespace's loopback, reached from a thread that
    /// joins the namespace to connect.
    pub fn launch_in(netns: Option<&str>, certs: &[&std::path::Path]) -> Firefox {
        let profile = crate::harness::temp_dir();
        std::fs::write(profile.path().join("user.js"), PREFS).expect("write user.js");
        let db = format!("sql:{}", profile.path().display());
        for (i, cert) in certs.iter().enumerate() {
            let status = Command::new(CERTUTIL)
                .args([
                    "-A",
                    "-d",
                    &db,
                    "-n",
                    &format!("switchboard-test-{i}"),
                    "-t",
                    "P,,",
                ])
                .arg("-i")
                .arg(cert)
                .status()
                .expect("run certutil (apt install libnss3-tools)");
            assert!(
                status.success(),
                "certutil could not add {}",
                cert.display()
            );
        }
        let mut command = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, FIREFOX]);
                c
            }
            None => Command::new(FIREFOX),
        };
        let child = command
            .args(["--headless", "--no-remote", "--remote-debugging-port", "0"])
            .arg("--profile")
            .arg(profile.path())
            .arg("about:blank")
            .env("MOZ_CRASHREPORTER_DISABLE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start firefox-esr");
        // Killed if anything below fails, before the profile directory goes.
        let mut child = KillOnDrop(Some(child));
        let stderr = child
            .0
            .as_mut()
            .and_then(|c| c.stderr.take())
            .expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.split("WebDriver BiDi listening on ").nth(1) {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        });
        let url = rx
            .recv_timeout(crate::harness::DEADLINE)
            .expect("firefox-esr never said where WebDriver BiDi listens");
        let addr = url
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .expect("host:port")
            .to_owned();
        let stream = match netns {
            Some(ns) => crate::harness::in_netns(ns, move || TcpStream::connect(addr)),
            None => TcpStream::connect(&addr),
        }
        .expect("connect to Firefox's WebDriver BiDi");
        stream
            .set_read_timeout(Some(crate::harness::DEADLINE))
            .expect("read timeout");
        let (socket, _) = tokio_tungstenite::tungstenite::client(format!("{url}/session"), stream)
            .expect("WebDriver BiDi handshake");
        let browser = Firefox {
            child: child.0.take(),
            socket: Mutex::new(socket),
            next_id: AtomicU64::new(1),
            _profile: profile,
        };
        browser
            .call(
                "session.new",
                json!({"capabilities": {"alwaysMatch": {"acceptInsecureCerts": true}}}),
            )
            .expect("a BiDi session");
        browser
    }

    /// Sends one command and waits for its reply (events in between are skipped); `Err`
    /// carries the protocol error.
    pub fn call(&self, method: &str, params: Value) -> Result<Value, String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut socket = self.socket.lock().unwrap();
        socket
            .send(Message::text(
                json!({"id": id, "method": method, "params": params}).to_string(),
            ))
            .map_err(|e| format!("BiDi socket closed: {e}"))?;
        loop {
            let msg = socket
                .read()
                .map_err(|e| format!("no reply to {method}: {e}"))?;
            let Message::Text(text) = msg else { continue };
            let Ok(reply) = serde_json::from_str::<Value>(text.as_str()) else {
                continue;
            };
            if reply["id"].as_u64() != Some(id) {
                note_event(&reply);
                continue;
            }
            return match reply["type"].as_str() {
                Some("success") => Ok(reply["result"].clone()),
                _ => Err(format!("{}: {}", reply["error"], reply["message"])),
            };
        }
    }

    /// Opens `url` in a new tab.
    pub fn open(&self, url: &str) -> Tab<'_> {
        let created = self
            .call("browsingContext.create", json!({"type": "tab"}))
            .expect("a new tab");
        let context = created["context"].as_str().expect("context").to_owned();
        self.call(
            "browsingContext.navigate",
            json!({"context": context, "url": url, "wait": "interactive"}),
        )
        .unwrap_or_else(|e| panic!("navigate to {url}: {e}"));
        Tab {
            browser: self,
            context,
        }
    }
}

impl Tab<'_> {
    /// Evaluates `expression` in the tab, awaiting a returned promise; the value comes
    /// back through JSON (`undefined` as null).
    pub fn eval(&self, expression: &str) -> Result<Value, String> {
        let wrapped = format!(
            "(async () => {{ const v = await ({expression}); \
               return v === undefined ? 'null' : JSON.stringify(v); }})()"
        );
        let result = self.browser.call(
            "script.evaluate",
            json!({
                "expression": wrapped,
                "target": {"context": self.context},
                "awaitPromise": true,
                "resultOwnership": "none",
            }),
        )?;
        if result["type"] == "exception" {
            return Err(result["exceptionDetails"].to_string());
        }
        let text = result["result"]["value"].as_str().unwrap_or("null");
        serde_json::from_str(text).map_err(|e| format!("{e}: {text}"))
    }

    /// Like `cdp::Page::try_wait_for_state`.
    pub fn try_wait_for_state(&self, predicate: &str, timeout: Duration) -> Result<Value, Value> {
        crate::cdp::wait_for_state(|e| self.eval(e), predicate, timeout)
    }
}

impl Drop for Firefox {
    /// Ends the session (Firefox quits), so its helper processes are gone before the
    /// profile directory is removed; kills it if it does not exit in time.
    fn drop(&mut self) {
        let Some(child) = self.child.take() else {
            return;
        };
        let _ = self.call("browser.close", json!({}));
        crate::cdp::reap(child);
    }
}

/// The error-level `log.entryAdded` events (uncaught exceptions, `console.error`) of the tabs
/// that `Firefox::open_watched` opened, in every Firefox of this process; `Tab::errors` picks
/// its own by browsing context, which is unique.
static LOG_ERRORS: Mutex<Vec<Value>> = Mutex::new(Vec::new());

/// Keeps `event` in `LOG_ERRORS` if it is an error-level log entry.
fn note_event(event: &Value) {
    if event["method"] == "log.entryAdded" && event["params"]["level"] == "error" {
        LOG_ERRORS.lock().unwrap().push(event["params"].clone());
    }
}

impl Firefox {
    /// Opens `url` in a new tab as `open` does, but subscribed to the tab's log entries
    /// before it navigates, so `Tab::errors` sees everything from the start.
    pub fn open_watched(&self, url: &str) -> Tab<'_> {
        let created = self
            .call("browsingContext.create", json!({"type": "tab"}))
            .expect("a new tab");
        let context = created["context"].as_str().expect("context").to_owned();
        self.call(
            "session.subscribe",
            json!({"events": ["log.entryAdded"], "contexts": [context]}),
        )
        .expect("subscribe to log entries");
        self.call(
            "browsingContext.navigate",
            json!({"context": context, "url": url, "wait": "interactive"}),
        )
        .unwrap_or_else(|e| panic!("navigate to {url}: {e}"));
        Tab {
            browser: self,
            context,
        }
    }
}

impl Tab<'_> {
    /// The uncaught exceptions and `console.error` calls of this tab so far, as text; only
    /// for tabs opened with `Firefox::open_watched`.
    pub fn errors(&self) -> Vec<String> {
        // Entries logged before this call's reply are read (and kept) on the way to it.
        let _ = self.browser.call("session.status", json!({}));
        LOG_ERRORS
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e["source"]["context"].as_str() == Some(&self.context))
            .map(|e| {
                format!(
                    "{}: {}",
                    e["type"].as_str().unwrap_or("?"),
                    e["text"].as_str().unwrap_or("?")
                )
            })
            .collect()
    }

    /// Like `eval`, with the transient user activation that a click would give (Firefox
    /// requires it for `getDisplayMedia`).
    pub fn eval_gesture(&self, expression: &str) -> Result<Value, String> {
        let wrapped = format!(
            "(async () => {{ const v = await ({expression}); \
               return v === undefined ? 'null' : JSON.stringify(v); }})()"
        );
        let result = self.browser.call(
            "script.evaluate",
            json!({
                "expression": wrapped,
                "target": {"context": self.context},
                "awaitPromise": true,
                "resultOwnership": "none",
                "userActivation": true,
            }),
        )?;
        if result["type"] == "exception" {
            return Err(result["exceptionDetails"].to_string());
        }
        let text = result["result"]["value"].as_str().unwrap_or("null");
        serde_json::from_str(text).map_err(|e| format!("{e}: {text}"))
    }

    /// Presses and releases `key` (a character, or a WebDriver key code such as `\u{E004}`
    /// for Tab) as the keyboard would, in this tab.
    pub fn press_key(&self, key: &str) {
        self.browser
            .call(
                "input.performActions",
                json!({"context": self.context, "actions": [{"type": "key", "id": "keyboard",
                    "actions": [{"type": "keyDown", "value": key}, {"type": "keyUp", "value": key}]}]}),
            )
            .unwrap_or_else(|e| panic!("press {key:?}: {e}"));
    }

    /// Sets the viewport to `width` x `height` CSS pixels at a device pixel ratio of 1.
    pub fn set_viewport(&self, width: u32, height: u32) {
        self.browser
            .call(
                "browsingContext.setViewport",
                json!({"context": self.context, "viewport": {"width": width, "height": height},
                       "devicePixelRatio": 1}),
            )
            .expect("set the viewport");
    }

    /// A PNG of the viewport.
    pub fn screenshot(&self) -> Vec<u8> {
        use base64::Engine;
        let shot = self
            .browser
            .call(
                "browsingContext.captureScreenshot",
                json!({"context": self.context}),
            )
            .expect("capture a screenshot");
        base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("screenshot base64")
    }
}
