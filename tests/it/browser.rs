//! Real browsers: two headless Chromium pages call each other through the call page.

use std::time::Duration;

use crate::cdp::{Browser, Page};
use crate::harness::{TestServer, need};
use crate::prereq::Prereq;

const CALL_TIMEOUT: Duration = Duration::from_secs(60);

#[test]
#[cfg_attr(not(has_chromium), ignore = "needs chromium (apt install chromium)")]
fn two_browser_tabs_see_each_others_video() {
    need(Prereq::Chromium);
    let server = TestServer::start("[signaling]\nroom_capacity = 2\n");
    let browser = Browser::launch(&[], &[]);
    let url = format!("https://{}/r/browser-call?autojoin", server.https);
    let first = browser.open(&url);
    let second = browser.open(&url);

    let connected = "s => s.phase === 'joined' && s.localMedia && s.peers.length === 1 \
                     && s.peers[0].connectionState === 'connected' \
                     && s.peers[0].videoWidth > 0 && s.peers[0].framesDecoded > 0";
    let (a, b) = match (
        first.try_wait_for_state(connected, CALL_TIMEOUT),
        second.try_wait_for_state(connected, CALL_TIMEOUT),
    ) {
        (Ok(a), Ok(b)) => (a, b),
        (a, b) => panic!("the call did not connect; first page: {a:#?}\nsecond page: {b:#?}"),
    };
    assert_eq!(
        a["peers"][0]["id"], b["peerId"],
        "each page shows the other"
    );
    assert_eq!(b["peers"][0]["id"], a["peerId"]);
    // On loopback with no ICE servers, the path is direct.
    assert_eq!(a["peers"][0]["candidateType"], "host", "{a:#}");

    // A third page finds the room full and says so.
    let third = browser.open(&url);
    let refused =
        third.wait_for_state("s => s.error !== null && s.phase === 'error'", CALL_TIMEOUT);
    assert!(
        refused["error"].as_str().unwrap().contains("full"),
        "{refused:#}"
    );
    // ...where it can be read: in the viewport, not below the room that fills it.
    let in_view = third
        .eval(
            "(() => { const r = document.getElementById('error').getBoundingClientRect(); \
               return r.height > 0 && r.top >= 0 && r.bottom <= innerHeight; })()",
        )
        .unwrap();
    assert_eq!(in_view, true, "the error is out of view");

    // Hanging up in one page is seen by the other.
    first
        .eval("document.getElementById('hangup-btn').click()")
        .unwrap();
    second.wait_for_state("s => s.peers.length === 0", CALL_TIMEOUT);
}

#[test]
#[cfg_attr(not(has_chromium), ignore = "needs chromium (apt install chromium)")]
fn the_lobby_proposes_an_unguessable_room_and_refuses_bad_names() {
    need(Prereq::Chromium);
    let server = TestServer::start("");
    let browser = Browser::launch(&[], &[]);
    let page = browser.open(&format!("https://{}/", server.https));
    page.wait_for_state("s => s.phase === 'home'", CALL_TIMEOUT);
    // The page proposes a room name nobody can guess: 16 signs of 32 (80 bits), new each time.
    let proposed = |page: &Page<'_>| {
        page.eval("document.getElementById('room-input').value")
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned()
    };
    let first = proposed(&page);
    let other = browser.open(&format!("https://{}/", server.https));
    other.wait_for_state("s => s.phase === 'home'", CALL_TIMEOUT);
    let second = proposed(&other);
    assert!(
        is_proposed_room(&first) && is_proposed_room(&second) && first != second,
        "{first} {second}"
    );
    let error = page
        .eval(
            "document.getElementById('room-input').value = 'no spaces';
             document.getElementById('join-form').requestSubmit();
             document.getElementById('error').textContent",
        )
        .unwrap();
    assert!(
        error.as_str().unwrap().contains("Invalid room name"),
        "{error}"
    );
}

/// Both pages relay-only through Switchboard's TURN over `transport`: the peers'
/// addresses are each other's relayed addresses on this server (relay to relay),
/// which policy admits although loopback is denied.
fn relayed_call(transport: &str) {
    need(Prereq::Chromium);
    let server = TestServer::start("");
    let browser = Browser::launch(&[], &[]);
    let url = format!(
        "https://{}/r/relay-{transport}?relay={transport}&autojoin",
        server.https
    );
    let first = browser.open(&url);
    let second = browser.open(&url);
    let relayed = "s => s.phase === 'joined' && s.peers.length === 1 \
                   && s.peers[0].connectionState === 'connected' && s.peers[0].framesDecoded > 0 \
                   && s.peers[0].candidateType === 'relay'";
    let (a, b) = match (
        first.try_wait_for_state(relayed, CALL_TIMEOUT),
        second.try_wait_for_state(relayed, CALL_TIMEOUT),
    ) {
        (Ok(a), Ok(b)) => (a, b),
        (a, b) => {
            panic!("the relayed call did not connect; first page: {a:#?}\nsecond page: {b:#?}")
        }
    };
    for state in [&a, &b] {
        assert_eq!(state["peers"][0]["relayProtocol"], transport, "{state:#}");
        assert_eq!(
            state["peers"][0]["remoteCandidateType"], "relay",
            "{state:#}"
        );
    }
}

#[test]
#[cfg_attr(not(has_chromium), ignore = "needs chromium (apt install chromium)")]
fn relayed_call_over_turn_udp() {
    relayed_call("udp");
}

#[test]
#[cfg_attr(not(has_chromium), ignore = "needs chromium (apt install chromium)")]
fn relayed_call_over_turn_tcp() {
    relayed_call("tcp");
}

#[test]
#[cfg_attr(not(has_chromium), ignore = "needs chromium (apt install chromium)")]
fn relayed_call_over_turn_tls() {
    relayed_call("tls");
}

/// The connectivity page gathers candidates per path: on loopback every path of this server
/// works, and an unreachable TURN server from the config is reported with the reason.
#[test]
#[cfg_attr(not(has_chromium), ignore = "needs chromium (apt install chromium)")]
fn diag_page_shows_which_paths_work_and_why_not() {
    need(Prereq::Chromium);
    let server = TestServer::start(
        "[[ice_servers]]\nurls = [\"turn:127.0.0.1:9?transport=udp\"]\nusername = \"u\"\ncredential = \"p\"\n",
    );
    let browser = Browser::launch(&[], &[]);
    let page = browser.open(&format!("https://{}/diag", server.https));
    let state = page.wait_for_state(
        "s => s.phase === 'done' || s.phase === 'error'",
        CALL_TIMEOUT,
    );
    assert_eq!(state["phase"], "done", "{state:#}");
    let results = state["results"].as_array().unwrap();
    let find = |label: &str| {
        results
            .iter()
            .find(|r| {
                r["label"].as_str().unwrap().starts_with(label)
                    && r["server"].as_str().is_none_or(|s| !s.contains(":9?"))
            })
            .unwrap_or_else(|| panic!("no result {label:?} in {state:#}"))
    };
    assert_eq!(find("host")["ok"], true, "{state:#}");
    for label in ["relay over udp", "relay over tcp", "relay over tls"] {
        assert_eq!(find(label)["ok"], true, "{label}: {state:#}");
    }
    let blocked = results
        .iter()
        .find(|r| r["server"] == "turn:127.0.0.1:9?transport=udp")
        .expect("the configured TURN server is checked too");
    assert_eq!(blocked["ok"], false, "{state:#}");
    let reason = blocked["reason"].as_str().unwrap();
    assert!(
        reason.contains("127.0.0.1:9") || reason.contains("port 9"),
        "{reason}"
    );
    assert!(
        state["summary"]
            .as_str()
            .unwrap()
            .starts_with("Calls can be relayed"),
        "{state:#}"
    );
}

/// Four people in one room, relay-only with every TURN URL the page gets: each browser
/// allocates once per URL per peer connection, so a mesh of four needs many allocations
/// per person. The defaults must let every pair connect through the relay, with no quota
/// refusal.
#[test]
#[cfg_attr(not(has_chromium), ignore = "needs chromium (apt install chromium)")]
fn four_people_relay_only_fit_the_default_quotas() {
    need(Prereq::Chromium);
    let server = TestServer::start("");
    let browser = Browser::launch(&[], &[]);
    let url = format!("https://{}/r/four-relay?relay&autojoin", server.https);
    let pages: Vec<_> = (0..4).map(|_| browser.open(&url)).collect();
    let all_relayed = "s => s.phase === 'joined' && s.peers.length === 3 \
                       && s.peers.every(p => p.connectionState === 'connected' \
                          && p.framesDecoded > 0 && p.candidateType === 'relay' \
                          && p.remoteCandidateType === 'relay')";
    let states: Vec<_> = pages
        .iter()
        .map(|p| p.try_wait_for_state(all_relayed, Duration::from_secs(120)))
        .collect();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let metric =
        |name: &str, labels: &[(&str, &str)]| runtime.block_on(server.metric(name, labels));
    let allocations = metric("switchboard_turn_allocations", &[]);
    let refusals: f64 = [
        "max_allocations_per_credential",
        "max_allocations_per_room",
        "max_allocations",
        "max_allocations_per_source",
    ]
    .iter()
    .map(|q| {
        let n = metric("switchboard_turn_quota_refusals_total", &[("quota", q)]);
        if n > 0.0 {
            println!("refused by {q}: {n}");
        }
        n
    })
    .sum();
    let created: f64 = ["udp", "tcp", "tls"]
        .iter()
        .map(|t| {
            metric(
                "switchboard_turn_allocations_created_total",
                &[("transport", t)],
            )
        })
        .sum();
    println!(
        "four people relay-only: {allocations} allocations live, {created} created, {refusals} quota refusals"
    );
    if let Some(failed) = states.iter().position(Result::is_err) {
        panic!(
            "page {failed} did not connect every pair through the relay ({allocations} allocations, \
             {refusals} quota refusals): {states:#?}"
        );
    }
    assert_eq!(
        refusals, 0.0,
        "quota refusals with {allocations} allocations"
    );
}

/// Whether `room` is four groups of four signs of the page's alphabet, joined by `-`.
fn is_proposed_room(room: &str) -> bool {
    let groups: Vec<&str> = room.split('-').collect();
    groups.len() == 4
        && groups.iter().all(|g| {
            g.len() == 4
                && g.chars()
                    .all(|c| "abcdefghijkmnpqrstuvwxyz23456789".contains(c))
        })
}
