//! The call page as a person uses it, in headless Chromium and Firefox against the real
//! server: the lobby's preview and microphone level, joining, names, per-peer connection
//! quality, switching camera mid-call, screen sharing, a dropped socket and its automatic
//! rejoin, accessible controls, no console errors, and screenshots of the layout on a
//! desktop and a phone compared with `tests/data/screenshots/`.
//!
//! Everything is driven through the page (its buttons and selects) and observed through
//! `window.switchboardState()`, polled with `wait_for_state`: no sleeps.

use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::bidi::{Firefox, Tab};
use crate::cdp::{Browser, Page};
use crate::harness::{TestServer, need};
use crate::prereq::Prereq;

const TIMEOUT: Duration = Duration::from_secs(60);

/// Chromium with three fake cameras, so a test can switch between them. The second
/// (`fake_device_1`) produces Y16 (depth) frames, which WebRTC does not encode: a sender
/// switched to it sends no more frames. The third (`fake_device_2`, MJPEG) works.
const THREE_CAMERAS: &str = "--use-fake-device-for-media-stream=device-count=3";

/// The keys the tests press.
#[derive(Clone, Copy)]
enum Key {
    Space,
    Tab,
}

/// What the tests need of a page, in either browser.
trait Driver {
    fn browser(&self) -> &'static str;
    fn eval(&self, expression: &str) -> Result<Value, String>;
    fn try_wait(&self, predicate: &str, timeout: Duration) -> Result<Value, Value>;
    fn errors(&self) -> Vec<String>;
    /// Presses a key on the keyboard.
    fn press(&self, key: Key);

    fn wait(&self, predicate: &str) -> Value {
        self.try_wait(predicate, TIMEOUT).unwrap_or_else(|last| {
            panic!(
                "{}: the page never reached `{predicate}`; last state: {last:#}",
                self.browser()
            )
        })
    }

    fn run(&self, expression: &str) -> Value {
        self.eval(expression)
            .unwrap_or_else(|e| panic!("{}: `{expression}` failed: {e}", self.browser()))
    }

    fn click(&self, id: &str) {
        self.run(&format!("document.getElementById('{id}').click()"));
    }

    fn assert_no_errors(&self) {
        let errors = self.errors();
        assert!(
            errors.is_empty(),
            "{}: the page logged errors: {errors:#?}",
            self.browser()
        );
    }
}

impl Driver for Page<'_> {
    fn browser(&self) -> &'static str {
        "chromium"
    }
    fn eval(&self, expression: &str) -> Result<Value, String> {
        Page::eval(self, expression)
    }
    fn try_wait(&self, predicate: &str, timeout: Duration) -> Result<Value, Value> {
        self.try_wait_for_state(predicate, timeout)
    }
    fn errors(&self) -> Vec<String> {
        Page::errors(self)
    }
    fn press(&self, key: Key) {
        match key {
            Key::Space => self.press_key(" ", "Space", 32, " "),
            Key::Tab => self.press_key("Tab", "Tab", 9, ""),
        }
    }
}

impl Driver for Tab<'_> {
    fn browser(&self) -> &'static str {
        "firefox"
    }
    fn eval(&self, expression: &str) -> Result<Value, String> {
        Tab::eval(self, expression)
    }
    fn try_wait(&self, predicate: &str, timeout: Duration) -> Result<Value, Value> {
        self.try_wait_for_state(predicate, timeout)
    }
    fn errors(&self) -> Vec<String> {
        Tab::errors(self)
    }
    fn press(&self, key: Key) {
        match key {
            Key::Space => self.press_key(" "),
            Key::Tab => self.press_key("\u{E004}"),
        }
    }
}

/// In the lobby with the camera previewed, not joined.
const PREVIEWING: &str = "s => s.phase === 'lobby' && s.localMedia && s.localVideoWidth > 0 \
    && s.peerId === null && s.devices.cameras.length > 0";

/// The lobby's microphone level is moving: three different levels seen.
const LEVEL_MOVING: &str = "s => { const seen = window.__levels || (window.__levels = new Set()); \
    seen.add(s.micLevel); return s.meter === 'running' && s.micLevel > 0 && seen.size >= 3; }";

/// Joined, with one peer connected, its video decoded and its connection measured.
const CONNECTED: &str = "s => s.phase === 'joined' && s.peers.length === 1 \
    && s.peers[0].connectionState === 'connected' && s.peers[0].framesDecoded > 0 \
    && s.peers[0].videoWidth > 0 && s.peers[0].rtt !== null && s.peers[0].path !== null \
    && s.peers[0].packetLoss !== null";

/// Every visible control's accessible-name problems, and the page's live region; empty
/// when every button, select, input, link and summary has a name and every toggle says
/// whether it is pressed.
const LABEL_PROBLEMS: &str = "(() => {
    const problems = [];
    const named = (el) => {
      const by = el.getAttribute('aria-labelledby');
      return el.getAttribute('aria-label')
        || (by && document.getElementById(by) && document.getElementById(by).textContent)
        || (el.labels && el.labels.length > 0 && el.labels[0].textContent)
        || el.textContent;
    };
    for (const el of document.querySelectorAll('button, select, input, a[href], summary, meter')) {
      if (el.closest('[hidden]')) continue;
      if (!(named(el) || '').trim()) problems.push('no name: ' + el.outerHTML.slice(0, 80));
      if (el.tabIndex < 0 && el.tagName !== 'METER') problems.push('not focusable: ' + el.id);
    }
    for (const id of ['mic-btn', 'cam-btn', 'share-btn']) {
      if (!document.getElementById(id).hasAttribute('aria-pressed')) problems.push(id + ' has no aria-pressed');
    }
    if (!document.querySelector('[role=status][aria-live]')) problems.push('no live region');
    return problems;
  })()";

/// Joins from the lobby as `name`.
fn join_as(page: &dyn Driver, name: &str) {
    page.run(&format!(
        "(document.getElementById('display-name').value = '{name}',
          document.getElementById('join-btn').click())"
    ));
}

/// Space on the focused mute button mutes (a muted microphone shows no level) and
/// unmutes; Tab moves on to the camera button with a visible focus ring.
fn keyboard_works_the_toggles(page: &dyn Driver) {
    page.run("document.getElementById('mic-btn').focus()");
    page.press(Key::Space);
    page.wait("s => !s.micOn && s.micLevel === 0");
    assert_eq!(
        page.run("document.getElementById('mic-btn').getAttribute('aria-pressed')"),
        "true",
        "{}",
        page.browser()
    );
    page.press(Key::Space);
    page.wait("s => s.micOn");
    page.press(Key::Tab);
    let focus = page.run(
        "(() => { const el = document.activeElement;
           return { id: el.id, visible: el.matches(':focus-visible'),
                    outline: getComputedStyle(el).outlineStyle }; })()",
    );
    assert_eq!(focus["id"], "cam-btn", "{}: {focus}", page.browser());
    assert_eq!(focus["visible"], true, "{}: {focus}", page.browser());
    assert_ne!(focus["outline"], "none", "{}: {focus}", page.browser());
}

fn assert_labelled(page: &dyn Driver) {
    let problems = page.run(LABEL_PROBLEMS);
    assert_eq!(
        problems,
        serde_json::json!([]),
        "{}: controls without names",
        page.browser()
    );
}

/// A Chromium page and a Firefox page meet in the lobby, join, see each other's names,
/// camera and microphone state and connection quality; Chromium switches camera and
/// shares its screen mid-call, also to a third page that joins late.
#[test]
#[cfg_attr(
    not(all(has_firefox, has_chromium)),
    ignore = "needs firefox-esr and certutil (apt install firefox-esr libnss3-tools); needs chromium (apt install chromium)"
)]
fn lobby_then_a_call_with_camera_switch_and_screen_share() {
    need(Prereq::Chromium);
    need(Prereq::Firefox);
    let server = TestServer::start("");
    let url = format!("https://{}/r/call-page", server.https);
    let chromium = Browser::launch(&[], &[THREE_CAMERAS]);
    let firefox = Firefox::launch(&[]);
    let ann = chromium.open_watched(&url);
    let bob = firefox.open_watched(&url);

    // The lobby: a preview and a moving level, and no join until Join is pressed.
    for page in [&ann as &dyn Driver, &bob] {
        let lobby = page.wait(PREVIEWING);
        assert_eq!(lobby["people"], serde_json::json!([]), "{lobby:#}");
        assert_labelled(page);
    }
    ann.wait(LEVEL_MOVING);
    // Firefox runs an AudioContext only with an audio output device, which this headless
    // machine lacks: its meter waits for one (see README.md, "Browsers in tests").
    let fox = bob.wait("s => s.meter !== 'none'");
    if fox["meter"] == "running" {
        bob.wait(LEVEL_MOVING);
    }
    let devices = ann.wait(PREVIEWING)["devices"].clone();
    assert_eq!(
        devices["cameras"].as_array().map(Vec::len),
        Some(3),
        "{devices:#}"
    );

    // The keyboard reaches and works the toggles, with a visible focus.
    for page in [&ann as &dyn Driver, &bob] {
        keyboard_works_the_toggles(page);
    }

    join_as(&ann, "Ann");
    // Ann is alone: Bob, still in the lobby, is not in the room.
    ann.wait("s => s.phase === 'joined' && s.people.length === 1");
    join_as(&bob, "Bob");
    let a = ann.wait(CONNECTED);
    let b = bob.wait(CONNECTED);
    assert_eq!(
        a["people"],
        serde_json::json!(["Ann (you)", "Bob"]),
        "{a:#}"
    );
    assert_eq!(
        b["people"],
        serde_json::json!(["Bob (you)", "Ann"]),
        "{b:#}"
    );
    assert_eq!(a["peers"][0]["name"], "Bob");
    for s in [&a, &b] {
        let peer = &s["peers"][0];
        assert_eq!(
            peer["path"], "host",
            "on loopback the direct path wins: {s:#}"
        );
        assert!(
            peer["quality"].as_str().unwrap().contains(" ms"),
            "the tile shows the round trip: {s:#}"
        );
    }
    for page in [&ann as &dyn Driver, &bob] {
        assert_labelled(page);
    }

    // Ann turns her camera off and mutes: Bob's tile and people list say so.
    ann.click("cam-btn");
    ann.click("mic-btn");
    let told = bob.wait("s => s.peers[0].camera === false && s.peers[0].mic === false");
    assert_eq!(
        told["people"],
        serde_json::json!(["Bob (you)", "Ann (muted)"]),
        "{told:#}"
    );
    assert_eq!(
        bob.run("document.querySelector('.tile.remote').classList.contains('video-off')"),
        true
    );
    ann.click("cam-btn");
    ann.click("mic-btn");
    bob.wait("s => s.peers[0].camera === true && s.peers[0].mic === true");

    // The copy button copies the link, or selects it for the person to copy.
    ann.click("copy-btn");
    let copied = ann.wait("s => s.linkCopied !== null");
    if copied["linkCopied"] == "selected" {
        let selected = ann.run(
            "document.activeElement.id === 'room-link'
             && document.activeElement.selectionEnd - document.activeElement.selectionStart
                === document.activeElement.value.length",
        );
        assert_eq!(selected, true);
    }
    assert!(
        copied["status"].as_str().unwrap().contains("ink"),
        "{copied:#}"
    );

    // Ann switches to another camera: Bob's decoded frames keep growing.
    let start = b["peers"][0]["framesDecoded"].as_u64().unwrap();
    bob.wait(&format!(
        "s => s.peers.length === 1 && s.peers[0].framesDecoded > {start} + 30"
    ));
    let other = ann.run(
        "(() => { const s = document.getElementById('camera-select');
           const other = [...s.options].find((o) => o.textContent === 'fake_device_2');
           s.value = other.value; s.dispatchEvent(new Event('change')); return other.value; })()",
    );
    ann.wait(&format!(
        "s => s.switches === 1 && s.devices.camera === {other} && s.localVideoWidth > 0"
    ));
    let before = bob.wait(CONNECTED)["peers"][0]["framesDecoded"]
        .as_u64()
        .unwrap();
    bob.wait(&format!(
        "s => s.peers.length === 1 && s.peers[0].framesDecoded > {before} + 30"
    ));

    // Ann switches microphone (her level keeps moving) and speaker (Bob's tile plays there).
    let mic = ann.run(
        "(() => { const s = document.getElementById('mic-select');
           const other = [...s.options].find((o) => o.value !== s.value && o.value !== 'default');
           s.value = other.value; s.dispatchEvent(new Event('change')); return other.value; })()",
    );
    ann.run("window.__levels = new Set(); true");
    ann.wait(&format!(
        "s => s.switches === 2 && s.devices.microphone === {mic}"
    ));
    ann.wait(LEVEL_MOVING);
    let speaker = ann.run(
        "(() => { const s = document.getElementById('speaker-select');
           const other = [...s.options].find((o) => o.value !== s.value);
           s.value = other.value; s.dispatchEvent(new Event('change')); return other.value; })()",
    );
    let sink = ann.wait(&format!(
        "s => document.querySelector('.tile.remote video').sinkId === {speaker}"
    ));
    assert_eq!(sink["peers"][0]["connectionState"], "connected");

    // Ann shares her screen: Bob gets a second tile with frames; the camera stays.
    ann.click("share-btn");
    ann.wait("s => s.sharing");
    let shared = bob.wait(
        "s => s.peers.length === 1 && s.peers[0].screen !== null \
         && s.peers[0].screen.framesDecoded > 0 && s.peers[0].screen.videoWidth > 0",
    );
    let camera = shared["peers"][0]["framesDecoded"].as_u64().unwrap();
    bob.wait(&format!(
        "s => s.peers[0].framesDecoded > {camera} + 10 && s.peers[0].videoWidth > 0"
    ));
    assert_eq!(
        bob.run("document.querySelectorAll('.tile.remote').length"),
        2,
        "a tile for the camera and one for the screen"
    );
    // A late joiner gets the screen too: announced and added as its connection is made.
    let cy = chromium.open_watched(&format!("{url}?autojoin"));
    let late = cy.wait(
        "s => s.phase === 'joined' && s.peers.length === 2 \
         && s.peers.every((p) => p.connectionState === 'connected' && p.framesDecoded > 0) \
         && s.peers.some((p) => p.screen !== null && p.screen.framesDecoded > 0)",
    );
    let sharer = late["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| !p["screen"].is_null())
        .unwrap();
    assert_eq!(sharer["name"], "Ann", "{late:#}");
    cy.assert_no_errors();
    cy.close();
    bob.wait("s => s.peers.length === 1");
    ann.click("share-btn");
    ann.wait("s => !s.sharing");
    bob.wait("s => s.peers.length === 1 && s.peers[0].screen === null");
    assert_eq!(
        bob.run("document.querySelectorAll('.tile.remote').length"),
        1
    );
    ann.wait(CONNECTED);

    // Headless Firefox has nothing to share (no screen): the page says so, calmly.
    bob.eval_gesture("document.getElementById('share-btn').click()")
        .unwrap();
    let refused = bob.wait("s => s.error !== null");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("Screen sharing is not available"),
        "{refused:#}"
    );
    assert_eq!(refused["sharing"], false);

    ann.assert_no_errors();
    bob.assert_no_errors();
}

/// The page's socket is cut by the network mid-call (a forwarder in between drops every
/// connection): each page takes its place back on a new socket (`resume`), with the same
/// peer id; the room sees no leave and no join, the call stays up, and ICE restarts (the
/// network may have changed).
#[test]
#[cfg_attr(
    not(all(has_firefox, has_chromium)),
    ignore = "needs firefox-esr and certutil (apt install firefox-esr libnss3-tools); needs chromium (apt install chromium)"
)]
fn a_dropped_socket_is_resumed_and_the_call_goes_on() {
    dropped_sockets_are_resumed(true);
}

/// Only one page's socket is cut (Chromium's, which answered the call, so it asks the
/// other page to restart ICE: the DTLS roles stay).
#[test]
#[cfg_attr(
    not(all(has_firefox, has_chromium)),
    ignore = "needs firefox-esr and certutil (apt install firefox-esr libnss3-tools); needs chromium (apt install chromium)"
)]
fn one_dropped_socket_is_resumed_and_the_other_page_restarts_ice() {
    dropped_sockets_are_resumed(false);
}

/// Ann (Chromium) reaches the server through a forwarder that cuts its connections mid-call;
/// Bob (Firefox) too when `both`.
fn dropped_sockets_are_resumed(both: bool) {
    need(Prereq::Chromium);
    need(Prereq::Firefox);
    let server = TestServer::start("");
    let network = Forwarder::start(server.https);
    let through = format!("https://{}/r/dropped?autojoin", network.addr);
    let direct = format!("https://{}/r/dropped?autojoin", server.https);
    let chromium = Browser::launch(&[], &[]);
    let firefox = Firefox::launch(&[]);
    let ann = chromium.open_watched(&through);
    ann.wait("s => s.phase === 'joined'");
    let bob = firefox.open_watched(if both { &through } else { &direct });
    let first = [ann.wait(CONNECTED), bob.wait(CONNECTED)];

    assert!(network.cut() > 0, "the pages' connections went through");
    let resumed = "s => s.resumes === 1 && s.iceRestarts >= 1 && !s.banner";
    ann.wait(resumed);
    if both {
        bob.wait(resumed);
    }
    let again = [ann.wait(CONNECTED), bob.wait(CONNECTED)];
    for (before, after) in first.iter().zip(&again) {
        assert_eq!(after["rejoins"], 0, "{after:#}");
        assert_eq!(after["peerId"], before["peerId"], "the same membership");
    }
    assert_eq!(again[1]["resumes"], u64::from(both), "{:#}", again[1]);
    assert_eq!(again[0]["peers"][0]["id"], again[1]["peerId"]);
    // The server saw two joins, a resume per cut page, and no leave.
    assert_eq!(server.logged("joined").len(), 2);
    assert_eq!(server.logged("resumed").len(), if both { 2 } else { 1 });
    assert!(
        server.logged("left").is_empty(),
        "{:?}",
        server.logged("left")
    );
    ann.assert_no_errors();
    bob.assert_no_errors();
}

/// Leave pressed while the page waits to reconnect (the banner shows): no reconnection is
/// left pending, so the person stays out of the room.
#[test]
#[cfg_attr(not(has_chromium), ignore = "needs chromium (apt install chromium)")]
fn leaving_while_reconnecting_stays_out() {
    need(Prereq::Chromium);
    // No resume (which is tried at once): the page waits a second before its rejoin.
    let server = TestServer::start("[signaling]\nresume_grace_s = 0\n");
    let network = Forwarder::start(server.https);
    let browser = Browser::launch(&[], &[]);
    let page = browser.open_watched(&format!("https://{}/r/leaving?autojoin", network.addr));
    page.wait("s => s.phase === 'joined'");
    assert!(network.cut() > 0, "the page's connection went through");
    // The first attempt waits a second: Leave comes before it.
    page.wait("s => s.banner && s.reconnectPending");
    page.run("document.getElementById('hangup-btn').click()");
    let left = page.wait("s => s.phase === 'ended'");
    assert_eq!(left["reconnectPending"], false, "{left:#}");
    assert_eq!(left["banner"], false, "{left:#}");
    page.assert_no_errors();
}

/// The operator closes the room: the page says so, offers to rejoin, and does not come
/// back on its own (no banner, no reconnection).
#[test]
#[cfg_attr(not(has_chromium), ignore = "needs chromium (apt install chromium)")]
fn closed_by_the_operator_the_page_says_so_and_stays_out() {
    need(Prereq::Chromium);
    let server = TestServer::start("");
    let browser = Browser::launch(&[], &[]);
    let page = browser.open_watched(&format!("https://{}/r/closing?autojoin", server.https));
    page.wait("s => s.phase === 'joined'");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (status, body) = runtime.block_on(server.admin("DELETE", "/api/v1/rooms/closing", true));
    assert_eq!(status, 200, "{body}");
    let ended = page.wait("s => s.phase === 'ended'");
    assert_eq!(
        ended["status"],
        "Removed from the call by the server operator"
    );
    assert_eq!(ended["banner"], false, "{ended:#}");
    assert_eq!(
        page.run("document.getElementById('rejoin-link').hidden"),
        false
    );
    page.assert_no_errors();
}

/// A room the application controls: a link with a token joins, as the token's name; one
/// without is told it needs an invitation; a token that only receives gets the host's video
/// with its own camera released, and the host sees it in the room.
#[test]
#[cfg_attr(not(has_chromium), ignore = "needs chromium (apt install chromium)")]
fn a_room_that_needs_a_token_is_joined_with_the_link_of_the_application() {
    need(Prereq::Chromium);
    const SECRET: &str = "a-secret-of-more-than-32-bytes-for-tests";
    let server = TestServer::start(&format!(
        "[tokens]\nrequire = \"prefixes\"\nprefixes = [\"clinic-\"]\n\
         [[tokens.keys]]\nid = \"app\"\nsecret = \"{SECRET}\"\n"
    ));
    let signer = switchboard::config::TokenKeyConfig {
        id: "app".into(),
        algorithm: "HS256".into(),
        secret: Some(switchboard::config::Secret::new(SECRET.into())),
        public_key: None,
    }
    .signer()
    .unwrap();
    let token = |sub: &str, publish: bool| {
        signer.mint(&switchboard::tokens::Claims {
            room: "clinic-1".into(),
            sub: Some(sub.into()),
            exp: switchboard::clock::unix_now() + 600,
            nbf: None,
            aud: None,
            capacity: None,
            allocations: None,
            messages_per_s: None,
            publish: (!publish).then_some(false),
            kick: None,
        })
    };
    let url = format!("https://{}/r/clinic-1?autojoin", server.https);
    let browser = Browser::launch(&[], &[]);
    let doctor = browser.open_watched(&format!("{url}&token={}", token("Dr. Ada", true)));
    let joined = doctor.wait("s => s.phase === 'joined'");
    assert_eq!(joined["roles"]["publish"], true, "{joined:#}");
    let stranger = browser.open_watched(&url);
    let refused = stranger.wait("s => s.phase === 'error'");
    assert!(
        refused["error"]
            .as_str()
            .unwrap_or("")
            .contains("invitation"),
        "{refused:#}"
    );
    let viewer = browser.open_watched(&format!("{url}&token={}", token("Student", false)));
    let watching = viewer
        .wait("s => s.phase === 'joined' && s.peers.length === 1 && s.peers[0].framesDecoded > 0");
    assert_eq!(watching["roles"]["publish"], false, "{watching:#}");
    assert_eq!(watching["localMedia"], false, "{watching:#}");
    assert_eq!(watching["peers"][0]["name"], "Dr. Ada", "{watching:#}");
    let host =
        doctor.wait("s => s.peers.length === 1 && s.peers[0].connectionState === 'connected'");
    assert_eq!(host["peers"][0]["name"], "Student", "{host:#}");
    assert!(host["people"].to_string().contains("Student"), "{host:#}");
    for page in [&doctor, &stranger, &viewer] {
        page.assert_no_errors();
    }
}

/// The viewports of the screenshots: a desktop window and a phone.
const VIEWPORTS: [(&str, u32, u32); 2] = [("desktop", 1280, 800), ("phone", 390, 844)];

/// Problems with the layout at this viewport: horizontal overflow, or a control out of
/// reach (outside the viewport).
const LAYOUT_PROBLEMS: &str = "(() => {
    const problems = [];
    const doc = document.documentElement;
    if (doc.scrollWidth > doc.clientWidth) problems.push('page scrolls sideways: ' + doc.scrollWidth);
    for (const el of document.querySelectorAll('.controls button, #join-btn, #copy-btn')) {
      if (el.closest('[hidden]')) continue;
      const r = el.getBoundingClientRect();
      if (r.left < 0 || r.right > innerWidth || r.top < 0 || r.bottom > innerHeight) {
        problems.push(el.id + ' out of view: ' + JSON.stringify([r.left, r.top, r.right, r.bottom]));
      }
    }
    return problems;
  })()";

/// Makes the page still for a screenshot: no video pixels, no live numbers.
const STILL: &str = "(() => { document.documentElement.classList.add('test-still');
    if (document.activeElement) document.activeElement.blur(); return true; })()";

/// The lobby, the call alone and the call with a second person (opened by `open_other`) in
/// each viewport, each compared with its reference; the layout checked for overflow and
/// reachable controls on the way.
fn screenshots<'a>(
    browser: &str,
    url: &str,
    page: &dyn Driver,
    set_viewport: &dyn Fn(u32, u32, bool),
    screenshot: &dyn Fn() -> Vec<u8>,
    open_other: &dyn Fn() -> Box<dyn Driver + 'a>,
) {
    let mut failures = Vec::new();
    let mut other = None;
    page.wait(
        "s => s.phase === 'lobby' && s.localMedia && s.localVideoWidth > 0 \
         && s.devices.cameras.length > 0",
    );
    page.run(STILL);
    for state in ["lobby", "call", "two"] {
        if state == "call" {
            join_as(page, "Ann");
            page.wait("s => s.phase === 'joined' && s.status.startsWith('Waiting')");
            page.run(STILL);
        }
        if state == "two" {
            let bob = open_other();
            bob.wait("s => s.phase === 'lobby'");
            join_as(&*bob, "Bob");
            page.wait(
                "s => s.peers.length === 1 && s.peers[0].connectionState === 'connected' \
                 && s.peers[0].framesDecoded > 0 && s.status === 'In the call with 1 other person' \
                 && s.people.join() === 'Ann (you),Bob'",
            );
            other = Some(bob);
        }
        for (viewport, width, height) in VIEWPORTS {
            set_viewport(width, height, viewport == "phone");
            let size = page.run("[innerWidth, innerHeight]");
            assert_eq!(size, serde_json::json!([width, height]), "{url}");
            let problems = page.run(LAYOUT_PROBLEMS);
            assert_eq!(
                problems,
                serde_json::json!([]),
                "{browser} {viewport} {state}: layout problems"
            );
            let name = format!("{browser}-{viewport}-{state}");
            if let Err(failure) = compare_screenshot(&name, &screenshot()) {
                failures.push(failure);
            }
        }
    }
    page.assert_no_errors();
    if let Some(bob) = other {
        bob.assert_no_errors();
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
#[cfg_attr(not(has_chromium), ignore = "needs chromium (apt install chromium)")]
fn screenshots_in_chromium_match_the_references() {
    need(Prereq::Chromium);
    let server = TestServer::start("");
    let url = format!("https://{}/r/screenshot", server.https);
    let browser = Browser::launch(&[], &[]);
    let page = browser.open_watched(&url);
    screenshots(
        "chromium",
        &url,
        &page,
        &|w, h, mobile| page.set_viewport(w, h, mobile),
        &|| page.screenshot(),
        &|| Box::new(browser.open_watched(&url)),
    );
}

#[test]
#[cfg_attr(
    not(has_firefox),
    ignore = "needs firefox-esr and certutil (apt install firefox-esr libnss3-tools)"
)]
fn screenshots_in_firefox_match_the_references() {
    need(Prereq::Firefox);
    let server = TestServer::start("");
    let url = format!("https://{}/r/screenshot", server.https);
    let browser = Firefox::launch(&[]);
    let tab = browser.open_watched(&url);
    screenshots(
        "firefox",
        &url,
        &tab,
        &|w, h, _| tab.set_viewport(w, h),
        &|| tab.screenshot(),
        &|| Box::new(browser.open_watched(&url)),
    );
}

/// Where the references are.
fn references() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/screenshots")
}

/// Where a mismatch's actual and difference images go.
fn mismatches() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("screenshots")
}

/// A channel differing by more than this is a different pixel: below a button's or a
/// panel's background against the page (8-22), above rendering noise.
const CHANNEL_TOLERANCE: u8 = 6;
/// At most this share of pixels may differ: less than a button or a line of text.
const PIXEL_TOLERANCE: f64 = 0.001;

/// Compares `png` with the reference `name`.png; with `SWITCHBOARD_UPDATE_SCREENSHOTS=1`
/// writes it as the reference instead. On a mismatch writes the actual image and a
/// difference image (differing pixels red) under the target directory and says where.
fn compare_screenshot(name: &str, png: &[u8]) -> Result<(), String> {
    let reference = references().join(format!("{name}.png"));
    if std::env::var_os("SWITCHBOARD_UPDATE_SCREENSHOTS").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(references()).unwrap();
        std::fs::write(&reference, png).unwrap();
        println!("wrote {}", reference.display());
        return Ok(());
    }
    let actual = decode(png);
    let expected = match std::fs::read(&reference) {
        Ok(bytes) => decode(&bytes),
        Err(e) => {
            let at = write_mismatch(name, png, None);
            return Err(format!(
                "{name}: no reference {} ({e}); actual image at {at} \
                 (SWITCHBOARD_UPDATE_SCREENSHOTS=1 writes the references)",
                reference.display()
            ));
        }
    };
    if (actual.width, actual.height) != (expected.width, expected.height) {
        let at = write_mismatch(name, png, None);
        return Err(format!(
            "{name}: {}x{} instead of {}x{}; actual image at {at}",
            actual.width, actual.height, expected.width, expected.height
        ));
    }
    let mut diff = Vec::with_capacity(actual.rgba.len());
    let mut differing = 0usize;
    for (a, e) in actual.rgba.chunks(4).zip(expected.rgba.chunks(4)) {
        let differs = a
            .iter()
            .zip(e)
            .any(|(x, y)| x.abs_diff(*y) > CHANNEL_TOLERANCE);
        if differs {
            differing += 1;
            diff.extend_from_slice(&[255, 0, 0, 255]);
        } else {
            let grey = (u16::from(e[0]) + u16::from(e[1]) + u16::from(e[2])) / 12 + 160;
            let grey = u8::try_from(grey).unwrap_or(255);
            diff.extend_from_slice(&[grey, grey, grey, 255]);
        }
    }
    let share = differing as f64 / (actual.width as f64 * actual.height as f64);
    if share <= PIXEL_TOLERANCE {
        println!("{name}: {:.3}% of pixels differ", share * 100.0);
        return Ok(());
    }
    let diff_png = encode(actual.width, actual.height, &diff);
    let at = write_mismatch(name, png, Some(&diff_png));
    Err(format!(
        "{name}: {:.2}% of pixels differ from {} (at most {:.2}% may); actual and diff images at {at}",
        share * 100.0,
        reference.display(),
        PIXEL_TOLERANCE * 100.0
    ))
}

/// Writes `<name>.actual.png` (and `<name>.diff.png`) under the mismatch directory; returns
/// where, as text.
fn write_mismatch(name: &str, actual: &[u8], diff: Option<&[u8]>) -> String {
    let dir = mismatches();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.actual.png")), actual).unwrap();
    if let Some(diff) = diff {
        std::fs::write(dir.join(format!("{name}.diff.png")), diff).unwrap();
    }
    format!("{}/{name}.{{actual,diff}}.png", dir.display())
}

struct Image {
    width: u32,
    height: u32,
    /// 8-bit RGBA, row by row.
    rgba: Vec<u8>,
}

fn decode(png_bytes: &[u8]) -> Image {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size().expect("PNG size")];
    let info = reader.next_frame(&mut buf).expect("PNG frame");
    buf.truncate(info.buffer_size());
    let rgba = match info.color_type {
        png::ColorType::Rgba => buf,
        png::ColorType::Rgb => buf
            .chunks(3)
            .flat_map(|p| [p[0], p[1], p[2], 255])
            .collect(),
        png::ColorType::GrayscaleAlpha => buf
            .chunks(2)
            .flat_map(|p| [p[0], p[0], p[0], p[1]])
            .collect(),
        png::ColorType::Grayscale => buf.iter().flat_map(|&g| [g, g, g, 255]).collect(),
        png::ColorType::Indexed => unreachable!("normalize_to_color8 expands palettes"),
    };
    Image {
        width: info.width,
        height: info.height,
        rgba,
    }
}

fn encode(width: u32, height: u32, rgba: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, width, height);
        encoder.set_color(png::ColorType::Rgba);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().expect("PNG header");
        writer.write_image_data(rgba).expect("PNG data");
    }
    out
}

/// A TCP forwarder in front of the server, standing for the network between a browser and
/// it: `cut` drops every connection through it at once, as a lost network does, while new
/// connections still get through.
struct Forwarder {
    addr: SocketAddr,
    /// Both sides of every connection forwarded so far.
    open: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl Forwarder {
    fn start(target: SocketAddr) -> Forwarder {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the forwarder");
        let addr = listener.local_addr().unwrap();
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (streams, stopped) = (Arc::clone(&open), Arc::clone(&stop));
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stopped.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                let (Ok(c), Ok(s)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                streams.lock().unwrap().extend([c, s]);
                pipe(&client, &server);
                pipe(&server, &client);
            }
        });
        Forwarder { addr, open, stop }
    }

    /// Drops every open connection (both sides); returns how many there were.
    fn cut(&self) -> usize {
        let streams: Vec<TcpStream> = self.open.lock().unwrap().drain(..).collect();
        for stream in &streams {
            let _ = stream.shutdown(Shutdown::Both);
        }
        streams.len() / 2
    }
}

/// Copies `from` to `to` on a thread until either side closes.
fn pipe(from: &TcpStream, to: &TcpStream) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.flush();
        let _ = to.shutdown(Shutdown::Write);
    });
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop, which then sees `stop`.
        let _ = TcpStream::connect(self.addr);
        self.cut();
    }
}
