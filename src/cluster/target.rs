//! Where the cluster's Redis is now: `cluster.redis_url` (read by `config::RedisUrl`)
//! resolved to one server at every (re)connect: the server itself, the master a set of
//! Sentinels names, or the node of a Redis Cluster that owns the cluster's hash slot; a
//! failover (Sentinel promotes a replica, a Cluster moves the slot) ends the session and
//! the next one follows it.

use redis::{Client, RedisError, RedisResult};

use crate::config::RedisUrl;

/// The one server to use now; `key` is any of the cluster's keys (its slot, for a Redis
/// Cluster).
///
/// The caller bounds the time (`cluster.timeout_ms`). Sentinels are asked by redis-rs,
/// up to three at once, their answers taken in the order listed: list a reachable one
/// first.
///
/// # Errors
/// No Sentinel names a master that answers as one, or no seed node answers.
pub async fn resolve(url: &RedisUrl, key: &str) -> RedisResult<Client> {
    match url {
        RedisUrl::Direct(client) => Ok(client.clone()),
        RedisUrl::Sentinel {
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
        RedisUrl::Cluster { seeds, userinfo } => {
            // Every seed at once: one that does not answer must not hold up the others.
            let asks = seeds.iter().map(|seed| Box::pin(slot_owner(seed, key)));
            let (owner, _) = futures_util::future::select_ok(asks).await?;
            Client::open(format!("redis://{userinfo}{owner}"))
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
