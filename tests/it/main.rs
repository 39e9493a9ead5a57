//! The single integration-test crate: every file is a module of one binary.

mod acme;
mod admin;
mod bidi;
mod browser;
mod budget;
mod call_page;
mod cdp;
mod cli;
mod cluster;
mod dialects;
mod doctor;
mod fence;
mod firefox;
mod harness;
mod http;
mod lab;
mod prereq;
mod raw_turn;
mod reload;
mod signaling;
mod tidy;
mod tokens;
mod turn;
mod turn_abuse;
mod webrtc_call;
