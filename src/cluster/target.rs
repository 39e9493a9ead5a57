//! Where the cluster's Redis is: one server, the master a set of Sentinels names, or the
//! node of a Redis Cluster that owns the cluster's hash slot. Parsed from
//! `cluster.redis_url` once, resolved to one server at every (re)connect, so a failover
//! (Sentinel promotes a replica, a Cluster moves the slot) is followed by the next session.
//!
//! - `redis://[[user]:password@]host:port[/db]`, `redis+unix:///path`, `unix:///path`,
//!   `valkey://...`: that server.
//! - `redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]` with an
//!   optional `?sentinel_password=...` (and `sentinel_username`): the master the Sentinels
//!   name for `service` (the credentials are the master's).
//! - `redis+cluster://[[user]:password@]host:port[,host:port...]`: the seed nodes of a Redis
//!   Cluster; the node that owns the slot of every key (they share one hash tag).

use redis::{Client, RedisError, RedisResult};

/// A parsed `cluster.redis_url` (its `Debug` shows no credentials).
pub enum Target {
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

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Target::Direct(_) => "Target::Direct",
            Target::Sentinel { .. } => "Target::Sentinel",
            Target::Cluster { .. } => "Target::Cluster",
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

impl Target {
    /// # Errors
    /// The URL is not one of the forms above; the message says what was wrong (and never
    /// repeats a password).
    pub fn parse(url: &str) -> Result<Target, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| "expected a URL such as redis://host:6379".to_owned())?;
        match scheme {
            "redis" | "redis+unix" | "unix" | "valkey" => Client::open(url)
                .map(Target::Direct)
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
                Ok(Target::Sentinel {
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
                Ok(Target::Cluster {
                    seeds,
                    userinfo: parts.userinfo.map(|u| format!("{u}@")).unwrap_or_default(),
                })
            }
            _ => Err(format!("unknown scheme {scheme:?}")),
        }
    }

    /// The one server to use now; `key` is any of the cluster's keys (its slot, for a Redis
    /// Cluster).
    ///
    /// # Errors
    /// No Sentinel names a master that answers as one, or no seed node answers.
    /// The caller bounds the time (`cluster.timeout_ms`). Sentinels are asked by redis-rs,
    /// up to three at once, their answers taken in the order listed: list a reachable one
    /// first.
    pub async fn resolve(&self, key: &str) -> RedisResult<Client> {
        match self {
            Target::Direct(client) => Ok(client.clone()),
            Target::Sentinel {
                sentinels,
                service,
                master,
            } => {
                let node = redis::sentinel::SentinelNodeConnectionInfo::default()
                    .set_redis_connection_info(master.clone());
                let mut sentinel = redis::sentinel::SentinelClient::build(
                    sentinels.clone(),
                    service.clone(),
                    Some(node),
                    redis::sentinel::SentinelServerType::Master,
                )?;
                sentinel.async_get_client().await
            }
            Target::Cluster { seeds, userinfo } => {
                // Every seed at once: one that does not answer must not hold up the others.
                let asks = seeds.iter().map(|seed| Box::pin(slot_owner(seed, key)));
                let (owner, _) = futures_util::future::select_ok(asks).await?;
                Client::open(format!("redis://{userinfo}{owner}"))
            }
        }
    }
}

/// `host:port` of the master that owns `key`'s slot, as `seed` knows it.
async fn slot_owner(seed: &str, key: &str) -> RedisResult<String> {
    let client = Client::open(seed)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let slot: i64 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query_async(&mut conn)
        .await?;
    let slots: redis::Value = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut conn)
        .await?;
    let (host, port) = master_for_slot(&slots, slot).ok_or_else(|| {
        RedisError::from(std::io::Error::other(format!(
            "no node of the Redis Cluster owns slot {slot} (is the cluster complete?)"
        )))
    })?;
    // A node that does not know its own address says "" (or "?", or nothing): it is the
    // seed's, as written there (an IPv6 address keeps its brackets).
    if host.is_empty() || host == "?" {
        let seed_host = seed
            .rsplit_once('@')
            .map_or(seed.trim_start_matches("redis://"), |(_, h)| h)
            .rsplit_once(':')
            .map_or("", |(h, _)| h);
        return Ok(format!("{seed_host}:{port}"));
    }
    Ok(if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    })
}

/// The master of `slot` in a `CLUSTER SLOTS` reply:
/// `[[first, last, [host, port, id, ...], replicas...], ...]`.
fn master_for_slot(reply: &redis::Value, slot: i64) -> Option<(String, u16)> {
    use redis::Value;
    let Value::Array(ranges) = reply else {
        return None;
    };
    ranges.iter().find_map(|range| {
        let Value::Array(range) = range else {
            return None;
        };
        let (Some(Value::Int(first)), Some(Value::Int(last)), Some(Value::Array(node))) =
            (range.first(), range.get(1), range.get(2))
        else {
            return None;
        };
        if !(*first..=*last).contains(&slot) {
            return None;
        }
        let host = match node.first()? {
            Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
            Value::SimpleString(s) => s.clone(),
            // Redis 7 with `cluster-preferred-endpoint-type unknown-endpoint`.
            Value::Nil => String::new(),
            _ => return None,
        };
        let Value::Int(port) = node.get(1)? else {
            return None;
        };
        Some((host, u16::try_from(*port).ok()?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_of_every_kind_are_read() {
        assert!(matches!(
            Target::parse("redis://:pw@10.0.0.1:6379/2"),
            Ok(Target::Direct(_))
        ));
        let Ok(Target::Sentinel {
            sentinels,
            service,
            master,
        }) = Target::parse(
            "redis+sentinel://:p%40ss@s1:26379,s2:26380/mymaster/3?sentinel_password=sp",
        )
        else {
            panic!("a Sentinel URL");
        };
        assert_eq!(sentinels, ["redis://:sp@s1:26379", "redis://:sp@s2:26380"]);
        assert_eq!(service, "mymaster");
        assert_eq!(master.password(), Some("p@ss"));
        assert_eq!(master.db(), 3);
        let Ok(Target::Cluster { seeds, userinfo }) =
            Target::parse("redis+cluster://u:pw@n1:7000,n2:7001")
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
            let err = Target::parse(url).expect_err(url);
            assert!(err.contains(says), "{url}: {err}");
            assert!(!err.contains("secret"), "{url}: {err}");
        }
    }

    #[test]
    fn the_slot_owner_is_found_in_a_cluster_slots_reply() {
        use redis::Value;
        let node = |host: &str, port| {
            Value::Array(vec![
                Value::BulkString(host.as_bytes().to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("10.0.0.1", 7000),
            ]),
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(16383),
                node("10.0.0.2", 7001),
                node("10.0.0.3", 7002),
            ]),
        ]);
        assert_eq!(
            master_for_slot(&reply, 616),
            Some(("10.0.0.1".to_owned(), 7000))
        );
        assert_eq!(
            master_for_slot(&reply, 9000),
            Some(("10.0.0.2".to_owned(), 7001))
        );
        assert_eq!(master_for_slot(&Value::Array(vec![]), 1), None);
    }
}
