//! The outside tools that some integration tests need, and how to tell whether they are here.
//!
//! build.rs includes this file too. For every prerequisite it finds, and for all of them when
//! `CI` is set, it sets the cfg named by [`Prereq::cfg`]; each test that needs one carries
//! `#[cfg_attr(not(has_chromium), ignore = "needs chromium (apt install chromium)")]` (with
//! the reason [`Prereq::needs`] gives), so that without the tool `cargo test` lists the test as
//! ignored, with the reason, instead of passing it. A test that does run checks again with
//! `harness::need` and fails when the tool is missing after all: in CI, where every tool must be
//! installed, or when run with `--include-ignored`.
//!
//! Only std here: build.rs has no dependencies.

use std::path::{Path, PathBuf};

/// One thing outside Cargo that a group of tests needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prereq {
    /// Headless Chromium, for the browser tests and the lab's browser calls.
    Chromium,
    /// coturn's test clients (`turnutils_uclient`, `_peer`, `_stunclient`) and Debian's
    /// `/etc/turnserver.conf`; coturn's daemon is never started.
    Coturn,
    /// Node and the tutorials' npm clients installed in tests/node.
    Node,
    /// pebble, a local ACME CA, and its DNS server pebble-challtestsrv.
    Pebble,
    /// Root with iproute2 and iptables: the NAT lab's network namespaces.
    Netns,
    /// Debian's redis-server, which the cluster tests start on a socket of their own.
    Redis,
    /// Headless Firefox ESR, driven over WebDriver BiDi, for the cross-browser calls, and
    /// NSS's certutil to trust a test certificate in its profile.
    Firefox,
}

impl Prereq {
    pub const ALL: [Prereq; 7] = [
        Prereq::Chromium,
        Prereq::Coturn,
        Prereq::Node,
        Prereq::Pebble,
        Prereq::Netns,
        Prereq::Redis,
        Prereq::Firefox,
    ];

    /// The cfg that build.rs sets when this prerequisite is present, or when `CI` is set.
    pub fn cfg(self) -> &'static str {
        match self {
            Prereq::Chromium => "has_chromium",
            Prereq::Coturn => "has_coturn",
            Prereq::Node => "has_node",
            Prereq::Pebble => "has_pebble",
            Prereq::Netns => "has_netns",
            Prereq::Redis => "has_redis",
            Prereq::Firefox => "has_firefox",
        }
    }

    /// The reason on the tests that need this, as the test runner prints it.
    /// A test that needs two says both, joined by "; " in the order of its cfgs.
    pub fn needs(self) -> &'static str {
        match self {
            Prereq::Chromium => "needs chromium (apt install chromium)",
            Prereq::Coturn => {
                "needs coturn's turnutils_* and /etc/turnserver.conf (apt install coturn)"
            }
            Prereq::Node => "needs node and tests/node/node_modules (npm ci --prefix tests/node)",
            Prereq::Pebble => "needs pebble and pebble-challtestsrv (apt install pebble)",
            Prereq::Netns => "needs root, ip and iptables (apt install iproute2 iptables)",
            Prereq::Redis => "needs redis-server (apt install redis-server)",
            Prereq::Firefox => {
                "needs firefox-esr and certutil (apt install firefox-esr libnss3-tools)"
            }
        }
    }

    /// What of this prerequisite is missing here, or `None` when all of it is present.
    /// `manifest_dir` is the package root (tests/node lives there).
    pub fn missing(self, manifest_dir: &Path) -> Option<String> {
        let mut missing: Vec<String> = self
            .programs()
            .iter()
            .filter(|name| find_in_path(name).is_none())
            .map(|name| format!("{name} is not on PATH"))
            .collect();
        match self {
            Prereq::Coturn if !Path::new(TURNSERVER_CONF).exists() => {
                missing.push(format!("{TURNSERVER_CONF} does not exist"));
            }
            Prereq::Node if !manifest_dir.join(NODE_MODULES).is_dir() => {
                missing.push(format!("{NODE_MODULES} does not exist"));
            }
            Prereq::Netns if !is_root() => missing.push("not running as root".to_owned()),
            _ => {}
        }
        (!missing.is_empty()).then(|| missing.join(", "))
    }

    /// The programs this prerequisite looks up on PATH.
    pub fn programs(self) -> &'static [&'static str] {
        match self {
            Prereq::Chromium => &["chromium"],
            Prereq::Coturn => &[
                "turnutils_uclient",
                "turnutils_peer",
                "turnutils_stunclient",
            ],
            Prereq::Node => &["node"],
            Prereq::Pebble => &["pebble", "pebble-challtestsrv"],
            Prereq::Netns => &["ip", "iptables"],
            Prereq::Redis => &["redis-server"],
            Prereq::Firefox => &["firefox-esr", "certutil"],
        }
    }
}

/// Debian's coturn package installs this; the import-coturn test reads it.
pub const TURNSERVER_CONF: &str = "/etc/turnserver.conf";

/// Where `npm ci --prefix tests/node` installs the npm clients, relative to the package root.
pub const NODE_MODULES: &str = "tests/node/node_modules";

/// The first executable file called `name` in a directory on PATH, as a shell would find it.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|file| {
            std::fs::metadata(file)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Whether this process's effective user is root, from /proc (build.rs has no libc).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    })
}

#[cfg(test)]
mod tests {
    use super::Prereq;

    /// Each `ignore` reason is the one its cfgs name, so the runner's list reads the same everywhere.
    #[test]
    fn ignore_reasons_match_their_cfgs() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            for line in text.lines().map(str::trim) {
                let Some(rest) = line.strip_prefix("#[cfg_attr(not(") else {
                    continue;
                };
                let (cfgs, reason) = rest
                    .strip_suffix("\")]")
                    .and_then(|r| r.split_once("), ignore = \""))
                    .unwrap_or_else(|| panic!("{}: unexpected form: {line}", path.display()));
                let cfgs = cfgs
                    .strip_prefix("all(")
                    .and_then(|c| c.strip_suffix(')'))
                    .unwrap_or(cfgs);
                let expected: Vec<_> = cfgs
                    .split(", ")
                    .map(|cfg| {
                        Prereq::ALL
                            .into_iter()
                            .find(|p| p.cfg() == cfg)
                            .unwrap_or_else(|| panic!("{}: unknown cfg {cfg}", path.display()))
                            .needs()
                    })
                    .collect();
                assert_eq!(reason, expected.join("; "), "{}", path.display());
                seen += 1;
            }
        }
        assert_ne!(
            seen, 0,
            "no test is marked; did the attribute's form change?"
        );
    }
}
