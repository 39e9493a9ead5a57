//! A minimal Chrome DevTools Protocol client over `--remote-debugging-pipe`.
//!
//! Chromium reads commands from fd 3 and writes replies to fd 4, each a JSON
//! object ended by a NUL byte. A pipe needs no debugging port, so the same
//! driver works when Chromium runs inside a network namespace.
//! Only three commands are needed: open a page, attach to it, evaluate.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

type Pending = Arc<Mutex<HashMap<u64, mpsc::Sender<Value>>>>;

/// The events that report a page's errors, kept for `Page::errors`.
const ERROR_EVENTS: [&str; 3] = [
    "Runtime.exceptionThrown",
    "Runtime.consoleAPICalled",
    "Log.entryAdded",
];

/// The browser, looked up on PATH (Debian's `chromium` package puts it in /usr/bin);
/// `Prereq::Chromium` checks for it.
pub const CHROMIUM: &str = "chromium";

/// The flags that make headless Chromium usable for WebRTC tests as root on a closed network.
pub fn default_args() -> Vec<String> {
    [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
        "--mute-audio",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        "--autoplay-policy=no-user-gesture-required",
        "--disable-features=WebRtcHideLocalIpsWithMdns",
        "--ignore-certificate-errors",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

pub struct Browser {
    /// `None` once `Drop` has reaped it.
    child: Option<Child>,
    commands: Mutex<std::io::PipeWriter>,
    pending: Pending,
    next_id: AtomicU64,
    /// Events of `ERROR_EVENTS` from pages that `open_watched` opened.
    events: Arc<Mutex<Vec<Value>>>,
    _profile: tempfile::TempDir,
}

pub struct Page<'a> {
    browser: &'a Browser,
    session: String,
    target: Value,
}

impl Browser {
    /// Starts Chromium with `default_args`, `extra` flags and a fresh profile;
    /// `wrap` (e.g. `ip netns exec NS`) is put in front of the command.
    pub fn launch(wrap: &[&str], extra: &[&str]) -> Browser {
        let profile = crate::harness::temp_dir();
        let (cmd_read, cmd_write) = std::io::pipe().expect("pipe");
        let (resp_read, resp_write) = std::io::pipe().expect("pipe");
        let (program, prefix) = match wrap.split_first() {
            Some((first, rest)) => (*first, rest.to_vec()),
            None => (CHROMIUM, Vec::new()),
        };
        let mut command = Command::new(program);
        command.args(prefix);
        if !wrap.is_empty() {
            command.arg(CHROMIUM);
        }
        command
            .args(default_args())
            .args(extra)
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("--remote-debugging-pipe")
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let (read_fd, write_fd) = (cmd_read.as_raw_fd(), resp_write.as_raw_fd());
        // SAFETY: only async-signal-safe libc calls between fork and exec.
        unsafe {
            command.pre_exec(move || {
                // Move both ends above 3 and 4 first, so neither dup2 clobbers the other.
                let r = libc::fcntl(read_fd, libc::F_DUPFD, 10);
                let w = libc::fcntl(write_fd, libc::F_DUPFD, 10);
                if r < 0 || w < 0 || libc::dup2(r, 3) < 0 || libc::dup2(w, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("start chromium");
        drop(cmd_read);
        drop(resp_write);

        let pending: Pending = Arc::default();
        let replies = Arc::clone(&pending);
        let events: Arc<Mutex<Vec<Value>>> = Arc::default();
        let collected = Arc::clone(&events);
        std::thread::spawn(move || {
            let mut reader = BufReader::new(resp_read);
            let mut buf = Vec::new();
            while reader.read_until(0, &mut buf).is_ok_and(|n| n > 0) {
                if buf.last() == Some(&0) {
                    buf.pop();
                }
                if let Ok(msg) = serde_json::from_slice::<Value>(&buf)
                    && let Some(id) = msg["id"].as_u64()
                    && let Some(tx) = replies.lock().unwrap().remove(&id)
                {
                    let _ = tx.send(msg);
                } else if let Ok(msg) = serde_json::from_slice::<Value>(&buf)
                    && msg["method"]
                        .as_str()
                        .is_some_and(|m| ERROR_EVENTS.contains(&m))
                {
                    collected.lock().unwrap().push(msg);
                }
                buf.clear();
            }
        });
        Browser {
            child: Some(child),
            commands: Mutex::new(cmd_write),
            pending,
            next_id: AtomicU64::new(1),
            events,
            _profile: profile,
        }
    }

    /// Sends one command and waits for its reply; `Err` carries the protocol error.
    pub fn call(
        &self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        self.pending.lock().unwrap().insert(id, tx);
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.commands
            .lock()
            .unwrap()
            .write_all(&bytes)
            .map_err(|e| format!("chromium pipe closed: {e}"))?;
        let reply = rx
            .recv_timeout(crate::harness::DEADLINE)
            .map_err(|_| format!("no reply to {method}"))?;
        match reply.get("error") {
            Some(err) => Err(err.to_string()),
            None => Ok(reply["result"].clone()),
        }
    }

    /// Opens `url` in a new page and attaches to it.
    pub fn open(&self, url: &str) -> Page<'_> {
        let target = self
            .call(None, "Target.createTarget", json!({"url": url}))
            .expect("create target");
        let attached = self
            .call(
                None,
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
            )
            .expect("attach to target");
        Page {
            browser: self,
            session: attached["sessionId"]
                .as_str()
                .expect("session id")
                .to_owned(),
            target: target["targetId"].clone(),
        }
    }
}

impl Browser {
    /// Opens `url` in a new page as `open` does, but reports the page's errors from its
    /// start: the page is created blank, its `Runtime` and `Log` domains are enabled, and
    /// only then does it navigate. `Page::errors` returns them.
    pub fn open_watched(&self, url: &str) -> Page<'_> {
        let page = self.open("about:blank");
        for domain in ["Runtime.enable", "Log.enable", "Page.enable"] {
            self.call(Some(&page.session), domain, json!({}))
                .unwrap_or_else(|e| panic!("{domain}: {e}"));
        }
        self.call(Some(&page.session), "Page.navigate", json!({"url": url}))
            .unwrap_or_else(|e| panic!("navigate to {url}: {e}"));
        page
    }
}

impl Page<'_> {
    /// The uncaught exceptions, `console.error` calls and error-level log entries (failed
    /// loads, CSP violations) of this page so far, as text; only for pages opened with
    /// `Browser::open_watched`.
    pub fn errors(&self) -> Vec<String> {
        let events = self.browser.events.lock().unwrap();
        events
            .iter()
            .filter(|e| e["sessionId"].as_str() == Some(&self.session))
            .filter_map(|e| {
                let p = &e["params"];
                match e["method"].as_str()? {
                    "Runtime.exceptionThrown" => Some(format!(
                        "uncaught: {}",
                        p["exceptionDetails"]["exception"]["description"]
                            .as_str()
                            .unwrap_or_else(|| p["exceptionDetails"]["text"]
                                .as_str()
                                .unwrap_or("?"))
                    )),
                    "Runtime.consoleAPICalled" if p["type"] == "error" || p["type"] == "assert" => {
                        Some(format!("console.{}: {}", p["type"].as_str()?, p["args"]))
                    }
                    "Log.entryAdded" if p["entry"]["level"] == "error" => Some(format!(
                        "log: {} ({})",
                        p["entry"]["text"].as_str().unwrap_or("?"),
                        p["entry"]["url"].as_str().unwrap_or("")
                    )),
                    _ => None,
                }
            })
            .collect()
    }

    /// Sets the viewport to `width` x `height` CSS pixels at a device pixel ratio of 1,
    /// as a phone (`mobile`: meta viewport honoured, touch) or a desktop window.
    pub fn set_viewport(&self, width: u32, height: u32, mobile: bool) {
        self.browser
            .call(
                Some(&self.session),
                "Emulation.setDeviceMetricsOverride",
                json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}),
            )
            .expect("set the viewport");
    }

    /// A PNG of the viewport.
    pub fn screenshot(&self) -> Vec<u8> {
        use base64::Engine;
        let shot = self
            .browser
            .call(
                Some(&self.session),
                "Page.captureScreenshot",
                json!({"format": "png"}),
            )
            .expect("capture a screenshot");
        base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("screenshot base64")
    }

    /// Presses and releases a key in the page, as the keyboard would (`key` and `code` as
    /// in `KeyboardEvent`, `key_code` the Windows virtual key code; `text` for keys that type).
    pub fn press_key(&self, key: &str, code: &str, key_code: u32, text: &str) {
        for kind in ["keyDown", "keyUp"] {
            let mut params = json!({"type": kind, "key": key, "code": code,
                "windowsVirtualKeyCode": key_code, "nativeVirtualKeyCode": key_code});
            if kind == "keyDown" && !text.is_empty() {
                params["text"] = json!(text);
            }
            self.browser
                .call(Some(&self.session), "Input.dispatchKeyEvent", params)
                .unwrap_or_else(|e| panic!("press {key}: {e}"));
        }
    }

    /// Closes the page (ending its calls).
    pub fn close(self) {
        let _ = self
            .browser
            .call(None, "Target.closeTarget", json!({"targetId": self.target}));
    }

    /// Evaluates `expression` in the page, awaiting a returned promise.
    pub fn eval(&self, expression: &str) -> Result<Value, String> {
        let result = self.browser.call(
            Some(&self.session),
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        )?;
        if let Some(exception) = result.get("exceptionDetails") {
            return Err(exception.to_string());
        }
        Ok(result["result"]["value"].clone())
    }

    /// Waits until `predicate` (a JS function of `window.switchboardState()`) holds;
    /// returns the state, or panics with the last state seen after `timeout`.
    pub fn wait_for_state(&self, predicate: &str, timeout: Duration) -> Value {
        self.try_wait_for_state(predicate, timeout)
            .unwrap_or_else(|last| panic!("page never reached `{predicate}`; last state: {last:#}"))
    }

    /// Like `wait_for_state`, but returns the last state seen as the error.
    pub fn try_wait_for_state(&self, predicate: &str, timeout: Duration) -> Result<Value, Value> {
        wait_for_state(|e| self.eval(e), predicate, timeout)
    }
}

/// Waits until `predicate` (a JS function of `window.switchboardState()`) holds in a page
/// that `eval` evaluates in (any browser's driver); the last state seen is the error.
pub fn wait_for_state(
    eval: impl Fn(&str) -> Result<Value, String>,
    predicate: &str,
    timeout: Duration,
) -> Result<Value, Value> {
    let deadline = Instant::now() + timeout;
    // The page polls itself for a few seconds per evaluation (well inside the
    // reply deadline); a navigation destroys the context, which ends the
    // evaluation early, and we evaluate again.
    let ms = 3000;
    let expression = format!(
        "(async () => {{ const pred = {predicate}; const end = Date.now() + {ms}; let s = null;
           for (;;) {{
             try {{ s = window.switchboardState ? window.switchboardState() : null; }} catch (e) {{ s = null; }}
             if (s && pred(s)) return {{ ok: true, state: s }};
             if (Date.now() > end) return {{ ok: false, state: s }};
             await new Promise((r) => setTimeout(r, 250));
           }} }})()"
    );
    let mut last = Value::Null;
    while Instant::now() < deadline {
        match eval(&expression) {
            Ok(v) if v["ok"] == true => return Ok(v["state"].clone()),
            Ok(v) => last = v["state"].clone(),
            Err(e) => last = json!({ "evaluation_error": e }),
        }
    }
    Err(last)
}

impl Drop for Browser {
    /// Asks Chromium to close, so its helper processes are gone before the
    /// profile directory is removed; kills it if it does not exit in time.
    fn drop(&mut self) {
        let Some(child) = self.child.take() else {
            return;
        };
        let _ = self.call(None, "Browser.close", json!({}));
        reap(child);
    }
}

/// Waits for a browser that was asked to quit; kills it if it has not within 10 s.
pub fn reap(mut child: Child) {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    if rx.recv_timeout(Duration::from_secs(10)).is_err() {
        let _ = Command::new("kill")
            .arg("-KILL")
            .arg(pid.to_string())
            .status();
        let _ = rx.recv_timeout(Duration::from_secs(10));
    }
}
