//! `switchboard import-coturn`: reads a coturn `turnserver.conf` and writes the equivalent
//! Switchboard config, with a warning for every option that cannot be carried over.
//!
//! Plain data in, data out: `import` takes the file's text and returns the TOML and the
//! warnings; the command prints them. coturn's syntax is `option`, `option=value` or
//! `option value`, one per line, `#` starting a comment (also after a value).

use std::net::{IpAddr, SocketAddr};

use toml::{Table, Value};

/// The result of an import.
#[derive(Debug)]
pub struct Imported {
    /// A complete `config.toml` (only the keys that differ from Switchboard's defaults).
    pub toml: String,
    /// One line per option that was not carried over, with its line number and why.
    pub warnings: Vec<String>,
}

/// Options that need no counterpart: Switchboard always behaves so, or they are about
/// coturn's own process.
const ALREADY: &[(&str, &str)] = &[
    ("lt-cred-mech", "long-term credentials are always on"),
    ("fingerprint", "FINGERPRINT is always accepted and checked"),
    (
        "no-multicast-peers",
        "multicast peers are refused by default",
    ),
    ("no-loopback-peers", "loopback peers are refused by default"),
    (
        "no-tcp-relay",
        "relaying is UDP only (RFC 6062 TCP relays are not offered)",
    ),
    ("no-dtls", "TURN over DTLS is not offered"),
    (
        "no-cli",
        "there is no telnet CLI (the admin API is on admin.listen)",
    ),
    ("no-stdout-log", "logs go to stdout/stderr for journald"),
    (
        "keep-address-family",
        "the relay family follows REQUESTED-ADDRESS-FAMILY (RFC 6156)",
    ),
    (
        "stale-nonce",
        "nonces are stateless and expire after 10 minutes",
    ),
    ("no-software-attribute", "no SOFTWARE attribute is sent"),
    (
        "no-rfc5780",
        "RFC 5780 (NAT behavior discovery) is not offered",
    ),
    (
        "response-origin-only-with-rfc5780",
        "RFC 5780 is not offered",
    ),
    (
        "no-stun-backward-compatibility",
        "classic STUN (RFC 3489) is not answered",
    ),
];

/// Options that are understood but have no equivalent; the reason is the warning.
const UNSUPPORTED: &[(&str, &str)] = &[
    (
        "log-file",
        "logs go to stdout/stderr (journald); set log.format = \"json\" for collectors",
    ),
    ("syslog", "logs go to stdout/stderr (journald)"),
    ("simple-log", "logs go to stdout/stderr (journald)"),
    ("verbose", "set log.level = \"debug\" instead"),
    ("Verbose", "set log.level = \"trace\" instead"),
    (
        "pidfile",
        "systemd tracks the process (packaging/switchboard.service)",
    ),
    ("proc-user", "the systemd unit runs as user switchboard"),
    ("proc-group", "the systemd unit runs as group switchboard"),
    (
        "cli-password",
        "there is no telnet CLI; the admin API uses admin.token",
    ),
    ("cli-ip", "there is no telnet CLI; see admin.listen"),
    ("cli-port", "there is no telnet CLI; see admin.listen"),
    (
        "prometheus",
        "metrics are always served at /metrics on admin.listen",
    ),
    ("relay-threads", "relaying uses every core"),
    (
        "cipher-list",
        "TLS uses rustls' safe defaults (TLS 1.2 and 1.3)",
    ),
    (
        "dh-file",
        "TLS uses rustls' safe defaults (no finite-field DH)",
    ),
    ("ec-curve-name", "TLS uses rustls' safe defaults"),
    ("no-tlsv1", "TLS 1.0 is never offered"),
    ("no-tlsv1_1", "TLS 1.1 is never offered"),
    ("no-tlsv1_2", "TLS 1.2 stays enabled beside 1.3"),
    ("bps-capacity", "no total bandwidth limit"),
    ("mobility", "MOBILITY-TICKET (RFC 8016) is not supported"),
    (
        "server-name",
        "not needed; set turn.public_host for the URLs handed to browsers",
    ),
    (
        "alt-listening-port",
        "no alternative listener (RFC 5780 is not supported)",
    ),
    (
        "alt-tls-listening-port",
        "no alternative listener (RFC 5780 is not supported)",
    ),
    (
        "userdb",
        "users come from the config (turn.static_users) or the REST secret",
    ),
    (
        "psql-userdb",
        "users come from the config (turn.static_users) or the REST secret",
    ),
    (
        "mysql-userdb",
        "users come from the config (turn.static_users) or the REST secret",
    ),
    (
        "mongo-userdb",
        "users come from the config (turn.static_users) or the REST secret",
    ),
    (
        "redis-userdb",
        "users come from the config (turn.static_users) or the REST secret",
    ),
    (
        "redis-statsdb",
        "statistics are Prometheus metrics on admin.listen",
    ),
    (
        "oauth",
        "third-party OAuth authorization (RFC 7635) is not supported",
    ),
    (
        "secure-stun",
        "STUN binding requests are answered without authentication",
    ),
    (
        "check-origin-consistency",
        "ORIGIN attributes are not checked",
    ),
    (
        "allow-loopback-peers",
        "add 127.0.0.0/8 and ::1 to turn.allow_peers if you need it",
    ),
    (
        "no-udp-relay",
        "relays are UDP; a TURN server without them relays nothing",
    ),
    (
        "channel-lifetime",
        "channel lifetime is RFC 8656's 10 minutes",
    ),
    (
        "permission-lifetime",
        "permission lifetime is RFC 8656's 5 minutes",
    ),
    (
        "max-allocate-lifetime",
        "allocation lifetime is capped at RFC 8656's 1 hour",
    ),
    ("web-admin", "the admin API is on admin.listen"),
    ("web-admin-ip", "the admin API is on admin.listen"),
    ("web-admin-port", "the admin API is on admin.listen"),
    ("no-auth", "every TURN request needs a credential"),
    (
        "static-auth-secret-file",
        "copy the secret into turn.secrets",
    ),
    ("ca-file", "client certificates are not checked"),
    (
        "pkey-pwd",
        "encrypted private keys are not supported; decrypt it (chmod 600)",
    ),
    (
        "daemon",
        "systemd runs the service (packaging/switchboard.service)",
    ),
];

/// One option of the file: its line number, name and value (if any).
struct Opt<'a> {
    line: usize,
    name: &'a str,
    value: Option<&'a str>,
}

fn options(text: &str) -> Vec<Opt<'_>> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split_once('#').map_or(raw, |(before, _)| before).trim();
        if line.is_empty() {
            continue;
        }
        let line = line.strip_prefix("--").unwrap_or(line);
        let (name, value) = match line.find(|c: char| c == '=' || c.is_whitespace()) {
            Some(at) => {
                let value = line[at + 1..].trim().trim_matches('"');
                (line[..at].trim(), (!value.is_empty()).then_some(value))
            }
            None => (line, None),
        };
        out.push(Opt {
            line: i + 1,
            name,
            value,
        });
    }
    out
}

/// Converts coturn's `turnserver.conf` text.
pub fn import(text: &str) -> Imported {
    let mut warnings = Vec::new();
    let mut warn = |opt: &Opt, why: &str| {
        warnings.push(format!("line {}: {}: {why}", opt.line, opt.name));
    };
    let mut listening_ips: Vec<IpAddr> = Vec::new();
    let (mut port, mut tls_port) = (3478u16, 5349u16);
    let (mut no_udp, mut no_tcp, mut no_tls) = (false, false, false);
    let mut secrets = Vec::new();
    let mut use_auth_secret = false;
    let mut users = Vec::new();
    let mut allow = Vec::new();
    let mut deny = Vec::new();
    let mut https = Table::new();
    let mut turn = Table::new();

    for opt in options(text) {
        let value = opt.value;
        let need = |v: Option<&str>| v.map(str::to_owned);
        match opt.name {
            "listening-port" | "tls-listening-port" => match value.and_then(|v| v.parse().ok()) {
                Some(p) if opt.name == "listening-port" => port = p,
                Some(p) => tls_port = p,
                None => warn(&opt, "expected a port number; default kept"),
            },
            "listening-ip" => match value.and_then(|v| v.parse().ok()) {
                Some(ip) => listening_ips.push(ip),
                None => warn(&opt, "expected an IP address; skipped"),
            },
            "relay-ip" => match value.and_then(|v| v.parse::<IpAddr>().ok()) {
                Some(ip) if ip.is_ipv4() && !turn.contains_key("relay_ip") => {
                    turn.insert("relay_ip".into(), ip.to_string().into());
                }
                Some(ip) if ip.is_ipv6() && !turn.contains_key("relay_ipv6") => {
                    turn.insert("relay_ipv6".into(), ip.to_string().into());
                }
                Some(_) => warn(&opt, "only one relay address per family; the first is kept"),
                None => warn(&opt, "expected an IP address; skipped"),
            },
            "external-ip" => {
                // `public` or `public/private`: the public address is what clients are told.
                let public = value
                    .and_then(|v| v.split('/').next())
                    .and_then(|v| v.parse::<IpAddr>().ok());
                match public {
                    Some(ip) if !turn.contains_key("external_ip") => {
                        turn.insert("external_ip".into(), ip.to_string().into());
                    }
                    Some(_) => warn(
                        &opt,
                        "only one external address is supported; the first is kept",
                    ),
                    None => warn(&opt, "expected an IP address (or public/private); skipped"),
                }
            }
            "min-port" | "max-port" => match value.and_then(|v| v.parse::<u16>().ok()) {
                Some(p) => {
                    let key = if opt.name == "min-port" {
                        "min_port"
                    } else {
                        "max_port"
                    };
                    turn.insert(key.into(), i64::from(p).into());
                }
                None => warn(&opt, "expected a port number; default kept"),
            },
            "realm" => match need(value) {
                Some(r) => {
                    turn.insert("realm".into(), r.into());
                }
                None => warn(&opt, "expected a value; default kept"),
            },
            "use-auth-secret" => use_auth_secret = true,
            "static-auth-secret" => match need(value) {
                Some(s) if s.len() >= 16 => secrets.push(s),
                Some(_) => warn(
                    &opt,
                    "secrets shorter than 16 characters are refused; generate a longer one and update your backend",
                ),
                None => warn(&opt, "expected a value; skipped"),
            },
            "user" => match value.and_then(|v| v.split_once(':')) {
                Some((_, key)) if key.starts_with("0x") => warn(
                    &opt,
                    "a hashed key (0x...) cannot be carried over; add the user with its password to turn.static_users",
                ),
                Some((name, password)) => users.push((name.to_owned(), password.to_owned())),
                None => warn(&opt, "expected name:password; skipped"),
            },
            "cert" | "pkey" => match need(value) {
                Some(path) => {
                    let key = if opt.name == "cert" { "cert" } else { "key" };
                    https.insert(key.into(), path.into());
                }
                None => warn(&opt, "expected a file path; skipped"),
            },
            "denied-peer-ip" | "allowed-peer-ip" => match value.map(range_to_cidrs) {
                Some(Some(cidrs)) if opt.name == "denied-peer-ip" => deny.extend(cidrs),
                Some(Some(cidrs)) => allow.extend(cidrs),
                _ => warn(&opt, "expected an address or a range a-b; skipped"),
            },
            "no-udp" => no_udp = true,
            "no-tcp" => no_tcp = true,
            "no-tls" => no_tls = true,
            "user-quota" | "total-quota" => match value.and_then(|v| v.parse::<i64>().ok()) {
                Some(0) => warn(
                    &opt,
                    "0 (no limit) cannot be carried over; Switchboard's default limit stays",
                ),
                Some(n) if n > 0 => {
                    let key = if opt.name == "user-quota" {
                        "max_allocations_per_credential"
                    } else {
                        "max_allocations"
                    };
                    turn.insert(key.into(), n.into());
                }
                _ => warn(&opt, "expected a number; default kept"),
            },
            // coturn's per-session limit, each way separately: an allocation's here.
            "max-bps" => match value.and_then(|v| v.parse::<u64>().ok()) {
                Some(0) => {}
                Some(n) if (8000..=i64::MAX as u64).contains(&n) => {
                    turn.insert("max_allocation_bytes_per_s".into(), (n as i64).into());
                }
                Some(_) => warn(
                    &opt,
                    "below 8000 bytes per second (one audio stream) is refused; no limit carried over",
                ),
                None => warn(&opt, "expected a number of bytes per second; skipped"),
            },
            name => {
                if let Some((_, why)) = UNSUPPORTED.iter().find(|(n, _)| *n == name) {
                    warn(&opt, &format!("not carried over: {why}"));
                } else if !ALREADY.iter().any(|(n, _)| *n == name) {
                    warn(&opt, "unknown option, not carried over");
                }
            }
        }
    }

    if !secrets.is_empty() && !use_auth_secret {
        warnings.push(
            "static-auth-secret without use-auth-secret: coturn ignores the secret, Switchboard accepts REST credentials with it"
                .to_owned(),
        );
    }
    if use_auth_secret && secrets.is_empty() {
        warnings.push(
            "use-auth-secret without static-auth-secret: a secret is generated into server.state_dir/turn-secret; give your backend that one"
                .to_owned(),
        );
    }
    let addrs = |port: u16| -> Vec<SocketAddr> {
        if listening_ips.is_empty() {
            vec![
                SocketAddr::from(([0, 0, 0, 0], port)),
                SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)),
            ]
        } else {
            listening_ips
                .iter()
                .map(|ip| SocketAddr::new(*ip, port))
                .collect()
        }
    };
    let list = |addrs: Vec<SocketAddr>| -> Value {
        Value::Array(addrs.iter().map(|a| Value::from(a.to_string())).collect())
    };
    let empty = || Value::Array(Vec::new());
    if port != 3478 || !listening_ips.is_empty() || no_udp {
        turn.insert(
            "udp_listen".into(),
            if no_udp { empty() } else { list(addrs(port)) },
        );
    }
    if port != 3478 || !listening_ips.is_empty() || no_tcp {
        turn.insert(
            "tcp_listen".into(),
            if no_tcp { empty() } else { list(addrs(port)) },
        );
    }
    if tls_port != 5349 || !listening_ips.is_empty() || no_tls {
        turn.insert(
            "tls_listen".into(),
            if no_tls {
                empty()
            } else {
                list(addrs(tls_port))
            },
        );
    }
    if !secrets.is_empty() {
        turn.insert("secrets".into(), secrets.into());
    }
    if !users.is_empty() {
        let users: Vec<Value> = users
            .into_iter()
            .map(|(name, password)| {
                let mut t = Table::new();
                t.insert("username".into(), name.into());
                t.insert("password".into(), password.into());
                Value::Table(t)
            })
            .collect();
        turn.insert("static_users".into(), users.into());
    }
    if !allow.is_empty() {
        turn.insert("allow_peers".into(), allow.into());
    }
    if !deny.is_empty() {
        turn.insert("deny_peers".into(), deny.into());
    }
    if https.contains_key("cert") != https.contains_key("key") {
        warnings.push(
            "cert and pkey must both be set to be used; the certificate is not carried over"
                .to_owned(),
        );
        https.clear();
    }
    let mut root = Table::new();
    if !https.is_empty() {
        root.insert("https".into(), Value::Table(https));
    }
    if !turn.is_empty() {
        root.insert("turn".into(), Value::Table(turn));
    }
    let mut toml = String::from(
        "# Converted from coturn's turnserver.conf by `switchboard import-coturn`.\n\
         # Keys not listed keep Switchboard's defaults (see the shipped config.toml);\n\
         # the certificate also serves HTTPS/WSS on https.listen.\n",
    );
    if !root.is_empty() {
        toml.push('\n');
        toml.push_str(&toml::to_string(&root).expect("a table always serializes"));
    }
    Imported { toml, warnings }
}

/// coturn's `a`, `a-b` (an inclusive range) or CIDR, as the smallest list of CIDRs.
fn range_to_cidrs(value: &str) -> Option<Vec<String>> {
    if value.contains('/') {
        return value
            .parse::<crate::model::Cidr>()
            .ok()
            .map(|_| vec![value.to_owned()]);
    }
    let (first, last) = value.split_once('-').unwrap_or((value, value));
    match (
        first.trim().parse::<IpAddr>().ok()?,
        last.trim().parse::<IpAddr>().ok()?,
    ) {
        (IpAddr::V4(a), IpAddr::V4(b)) => Some(
            cover(u128::from(u32::from(a)), u128::from(u32::from(b)), 32)?
                .into_iter()
                .map(|(n, p)| format!("{}/{p}", std::net::Ipv4Addr::from(n as u32)))
                .collect(),
        ),
        (IpAddr::V6(a), IpAddr::V6(b)) => Some(
            cover(u128::from(a), u128::from(b), 128)?
                .into_iter()
                .map(|(n, p)| format!("{}/{p}", std::net::Ipv6Addr::from(n)))
                .collect(),
        ),
        _ => None,
    }
}

/// The aligned blocks covering `first..=last` in a `bits`-bit address space.
fn cover(mut first: u128, last: u128, bits: u32) -> Option<Vec<(u128, u32)>> {
    if first > last {
        return None;
    }
    let mut out = Vec::new();
    loop {
        // The largest block that starts at `first` (alignment) and ends by `last`.
        let mut size = if first == 0 {
            bits
        } else {
            first.trailing_zeros().min(bits)
        };
        while size > 0 && (size == 128 || first + ((1u128 << size) - 1) > last) {
            size -= 1;
        }
        out.push((first, bits - size));
        let end = first + ((1u128 << size) - 1);
        if end >= last {
            return Some(out);
        }
        first = end + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_become_the_smallest_cidr_lists() {
        assert_eq!(
            range_to_cidrs("10.0.0.0-10.255.255.255").unwrap(),
            ["10.0.0.0/8"]
        );
        assert_eq!(
            range_to_cidrs("192.168.0.0 - 192.168.255.255").unwrap(),
            ["192.168.0.0/16"]
        );
        assert_eq!(range_to_cidrs("10.0.0.1").unwrap(), ["10.0.0.1/32"]);
        assert_eq!(
            range_to_cidrs("10.0.0.1-10.0.0.6").unwrap(),
            ["10.0.0.1/32", "10.0.0.2/31", "10.0.0.4/31", "10.0.0.6/32"]
        );
        assert_eq!(
            range_to_cidrs("0.0.0.0-255.255.255.255").unwrap(),
            ["0.0.0.0/0"]
        );
        assert_eq!(
            range_to_cidrs("fc00::-fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff").unwrap(),
            ["fc00::/7"]
        );
        assert_eq!(range_to_cidrs("100.64.0.0/10").unwrap(), ["100.64.0.0/10"]);
        assert!(range_to_cidrs("10.0.0.9-10.0.0.1").is_none());
        assert!(range_to_cidrs("10.0.0.1-::1").is_none());
        assert!(range_to_cidrs("nonsense").is_none());
    }

    #[test]
    fn options_accept_both_syntaxes_and_trailing_comments() {
        let opts = options("# c\n\nrealm=a.example\nuser-quota 12 # per user\n--fingerprint\n");
        let got: Vec<_> = opts.iter().map(|o| (o.line, o.name, o.value)).collect();
        assert_eq!(
            got,
            [
                (3, "realm", Some("a.example")),
                (4, "user-quota", Some("12")),
                (5, "fingerprint", None)
            ]
        );
    }
}
