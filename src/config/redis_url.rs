//! `cluster.redis_url`, read: one server, the Sentinels of a master, or the seed nodes of a
//! Redis Cluster. Plain data; `cluster::target` resolves it to one server at every connect.
//!
//! - `redis://[[user]:password@]host:port[/db]`, `redis+unix:///path`, `unix:///path`,
//!   `valkey://...`: that server.
//! - `redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]` with an
//!   optional `?sentinel_password=...` (and `sentinel_username`): the master the Sentinels
//!   name for `service` (the credentials are the master's).
//! - `redis+cluster://[[user]:password@]host:port[,host:port...]`: the seed nodes of a Redis
//!   Cluster; the node that owns the slot of every key (they share one hash tag).

use redis::Client;

/// A parsed `cluster.redis_url` (its `Debug` shows no credentials).
pub enum RedisUrl {
    Direct(Client),
    Sentinel {
        /// `redis://[sentinel credentials@]host:port` of every Sentinel.
        sentinels: Vec<String>,
        service: String,
        /// The master's credentials and database, as redis-rs reads them from a URL.
        master: redis::RedisConnectionInfo,
    },
    Cluster {
        /// `redis://[credentials@]host:port` of every seed node.
        seeds: Vec<String>,
        /// `[credentials@]`, kept as written, for the node that owns the slot.
        userinfo: String,
    },
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RedisUrl::Direct(_) => "RedisUrl::Direct",
            RedisUrl::Sentinel { .. } => "RedisUrl::Sentinel",
            RedisUrl::Cluster { .. } => "RedisUrl::Cluster",
        })
    }
}

/// Each URL as redis-rs will read it at connect time, checked now (the error names the
/// host's position, not the URL, which holds a password).
fn check_urls(urls: &[String]) -> Result<(), String> {
    for (i, url) in urls.iter().enumerate() {
        if redis::IntoConnectionInfo::into_connection_info(url.as_str()).is_err() {
            return Err(format!(
                "host {} of the URL, with the credentials, is not a valid Redis address \
                 (percent-encode special characters in a password)",
                i + 1
            ));
        }
    }
    Ok(())
}

/// A multi-host URL, split: userinfo (without `@`), hosts, path (without the first `/`) and
/// query pairs, all still percent-encoded.
struct Parts<'a> {
    userinfo: Option<&'a str>,
    hosts: Vec<&'a str>,
    path: &'a str,
    query: Vec<(&'a str, &'a str)>,
}

fn split(rest: &str) -> Result<Parts<'_>, String> {
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let hosts: Vec<&str> = hosts.split(',').filter(|h| !h.is_empty()).collect();
    if hosts.is_empty() {
        return Err("no host:port in the URL".to_owned());
    }
    for (i, host) in hosts.iter().enumerate() {
        let port = host.rsplit_once(':').map(|(_, p)| p);
        if port.is_none_or(|p| p.parse::<u16>().is_err()) {
            // Not quoted: a password with an unencoded '/', '?' or '@' ends up here.
            return Err(format!(
                "host {} of the URL is not host:port (percent-encode '/', '?' and '@' in a \
                 password)",
                i + 1
            ));
        }
    }
    let query = query
        .split('&')
        .filter(|q| !q.is_empty())
        .map(|q| q.split_once('=').unwrap_or((q, "")))
        .collect();
    Ok(Parts {
        userinfo,
        hosts,
        path,
        query,
    })
}

fn with_userinfo(userinfo: Option<&str>, host: &str) -> String {
    match userinfo {
        Some(u) => format!("redis://{u}@{host}"),
        None => format!("redis://{host}"),
    }
}

impl RedisUrl {
    /// # Errors
    /// The URL is not one of the forms above; the message says what was wrong (and never
    /// repeats a password).
    pub fn parse(url: &str) -> Result<RedisUrl, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| "expected a URL such as redis://host:6379".to_owned())?;
        match scheme {
            "redis" | "redis+unix" | "unix" | "valkey" => Client::open(url)
                .map(RedisUrl::Direct)
                .map_err(|e| format!("{:?}: {}", e.kind(), e.detail().unwrap_or("invalid URL"))),
            "redis+sentinel" => {
                let parts = split(rest)?;
                let (service, db) = parts.path.split_once('/').unwrap_or((parts.path, ""));
                if service.is_empty() {
                    return Err("expected the Sentinel service name as the path: \
                                redis+sentinel://host:26379/mymaster"
                        .to_owned());
                }
                let mut sentinel_user = None;
                let mut sentinel_password = None;
                for (i, (key, value)) in parts.query.iter().enumerate() {
                    match *key {
                        "sentinel_username" => sentinel_user = Some(*value),
                        "sentinel_password" => sentinel_password = Some(*value),
                        // Not quoted: it may be the tail of a password with an unencoded '&'.
                        _ => {
                            return Err(format!(
                                "option {} of the URL is unknown (expected sentinel_password \
                                 or sentinel_username; percent-encode '&' in a password)",
                                i + 1
                            ));
                        }
                    }
                }
                if sentinel_user.is_some() && sentinel_password.is_none() {
                    return Err("sentinel_username needs sentinel_password".to_owned());
                }
                let sentinel_userinfo =
                    sentinel_password.map(|p| format!("{}:{p}", sentinel_user.unwrap_or_default()));
                let sentinels: Vec<String> = parts
                    .hosts
                    .iter()
                    .map(|h| with_userinfo(sentinel_userinfo.as_deref(), h))
                    .collect();
                check_urls(&sentinels)?;
                // The master's settings as redis-rs reads them (it decodes the password).
                let master_url = format!(
                    "{}/{}",
                    with_userinfo(parts.userinfo, "localhost:6379"),
                    if db.is_empty() { "0" } else { db }
                );
                let master = redis::IntoConnectionInfo::into_connection_info(master_url)
                    .map_err(|_| "the credentials or the database are not valid".to_owned())?
                    .redis_settings()
                    .clone();
                Ok(RedisUrl::Sentinel {
                    sentinels,
                    service: service.to_owned(),
                    master,
                })
            }
            "redis+cluster" => {
                let parts = split(rest)?;
                if !parts.path.is_empty() || !parts.query.is_empty() {
                    return Err("a Redis Cluster has no database or options: \
                                redis+cluster://host:6379,host:6380"
                        .to_owned());
                }
                let seeds: Vec<String> = parts
                    .hosts
                    .iter()
                    .map(|h| with_userinfo(parts.userinfo, h))
                    .collect();
                check_urls(&seeds)?;
                Ok(RedisUrl::Cluster {
                    seeds,
                    userinfo: parts.userinfo.map(|u| format!("{u}@")).unwrap_or_default(),
                })
            }
            _ => Err(format!("unknown scheme {scheme:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_of_every_kind_are_read() {
        assert!(matches!(
            RedisUrl::parse("redis://:pw@10.0.0.1:6379/2"),
            Ok(RedisUrl::Direct(_))
        ));
        let Ok(RedisUrl::Sentinel {
            sentinels,
            service,
            master,
        }) = RedisUrl::parse(
            "redis+sentinel://:p%40ss@s1:26379,s2:26380/mymaster/3?sentinel_password=sp",
        )
        else {
            panic!("a Sentinel URL");
        };
        assert_eq!(sentinels, ["redis://:sp@s1:26379", "redis://:sp@s2:26380"]);
        assert_eq!(service, "mymaster");
        assert_eq!(master.password(), Some("p@ss"));
        assert_eq!(master.db(), 3);
        let Ok(RedisUrl::Cluster { seeds, userinfo }) =
            RedisUrl::parse("redis+cluster://u:pw@n1:7000,n2:7001")
        else {
            panic!("a Cluster URL");
        };
        assert_eq!(seeds, ["redis://u:pw@n1:7000", "redis://u:pw@n2:7001"]);
        assert_eq!(userinfo, "u:pw@");
    }

    #[test]
    fn bad_urls_say_what_is_wrong_without_the_password() {
        for (url, says) in [
            ("redis+sentinel://s1:26379", "service name"),
            ("redis+sentinel://:secret@s1/mymaster", "host:port"),
            ("redis+sentinel://s1:26379/m?password=secret", "is unknown"),
            ("redis+cluster://admin:se/cret@n1:7000", "host 1"),
            (
                "redis+sentinel://s1:1/m?sentinel_password=se&cret",
                "option 2",
            ),
            (
                "redis+sentinel://s1:1/m?sentinel_username=u",
                "needs sentinel_password",
            ),
            ("redis+cluster://:secret@n1:7000/0", "no database"),
            ("redis+cluster://", "no host:port"),
            ("rediss://:secret@h:6379", "unknown scheme"),
            ("h:6379", "expected a URL"),
        ] {
            let err = RedisUrl::parse(url).expect_err(url);
            assert!(err.contains(says), "{url}: {err}");
            assert!(!err.contains("secret"), "{url}: {err}");
        }
    }
}
