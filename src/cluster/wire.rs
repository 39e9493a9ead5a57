//! What instances tell each other through Redis, as plain data, and the Lua scripts that
//! change the shared rooms.
//!
//! Keys (every one holds the hash tag `{prefix}`, so a Redis Cluster keeps them in one slot
//! and the scripts may touch several):
//! - `{P}:seq`: the counter that orders every membership change;
//! - `{P}:r:<dialect>:<room>`: a hash, peer id → `{"i": instance, "n": name, "s": seq}`;
//! - `{P}:rooms:<dialect>`: the set of that dialect's rooms;
//! - `{P}:n:<dialect>:<room>`: a hash, name → peer id, where names are unique in a room;
//! - `{P}:m:<instance>`: a hash, `<dialect> <peer id>` → room, of the peers an instance holds;
//! - `{P}:i:<instance>`: the instance's heartbeat, expiring after `heartbeat_ttl_ms`;
//! - `{P}:instances`: the set of instances that registered.
//!
//! Channels: `{P}:events` carries every membership change (`Note::Joined`, `Note::Left`),
//! published by the script that made it, so every instance sees them in the order they
//! took effect; `{P}:to:<instance>` carries what goes to one instance's sockets
//! (`Note::Message`, `Note::Evict`), published in the order its senders sent.

use serde::{Deserialize, Serialize};

/// One thing an instance hears on its channels.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "k")]
pub enum Note {
    /// `p` (named `n`) joined room `r` of dialect `sp` on instance `i`: change number `s`;
    /// `t` is the token of the join that asked (empty for a re-registration).
    #[serde(rename = "j")]
    Joined {
        s: u64,
        sp: String,
        r: String,
        p: String,
        n: Option<String>,
        i: String,
        #[serde(default)]
        t: String,
    },
    /// `p` left room `r` of dialect `sp`: change number `s`.
    #[serde(rename = "l")]
    Left {
        s: u64,
        sp: String,
        r: String,
        p: String,
    },
    /// A dialect message from `f` to `t` (or, with no `t`, to every other member of `f`'s
    /// room on the receiving instance): event `e`, JSON `d`, carried as it is (not as a
    /// string, which would be escaped on one side and unescaped on the other).
    /// (Read by `decode` through `MessageWire`: serde cannot read a `RawValue` inside an
    /// internally tagged enum.)
    #[serde(rename = "m", skip_deserializing)]
    Message {
        sp: String,
        f: String,
        t: Option<String>,
        e: String,
        d: Box<serde_json::value::RawValue>,
    },
    /// The operator closed `p`'s room or kicked it (`kick`) through another instance.
    #[serde(rename = "x")]
    Evict {
        sp: String,
        p: String,
        #[serde(default)]
        kick: bool,
    },
    /// On `events`, for every instance: the operator closed room `r` (every dialect's room
    /// of that name) through instance `i`.
    #[serde(rename = "c")]
    Closed { r: String, i: String },
    /// On `events`, for every instance: the operator kicked peer `p` of dialect `sp`, in room
    /// `r`, whose client's address was `c`.
    #[serde(rename = "o")]
    Kicked {
        sp: String,
        p: String,
        r: Option<String>,
        c: Option<std::net::IpAddr>,
    },
}

impl Note {
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("notes serialize")
    }

    /// The text of a `Message` note, written directly: `data` is JSON a dialect checked
    /// (it is written as it is), ids and the dialect's name need no escaping.
    pub fn message_text(
        dialect: &str,
        from: &str,
        to: Option<&str>,
        event: &str,
        data: &str,
    ) -> String {
        let event = serde_json::to_string(event).expect("a string serializes");
        let mut text = String::with_capacity(64 + dialect.len() + event.len() + data.len());
        text.push_str(r#"{"k":"m","sp":""#);
        text.push_str(dialect);
        text.push_str(r#"","f":""#);
        text.push_str(from);
        match to {
            Some(to) => {
                text.push_str(r#"","t":""#);
                text.push_str(to);
                text.push('"');
            }
            None => text.push_str(r#"","t":null"#),
        }
        text.push_str(r#","e":"#);
        text.push_str(&event);
        text.push_str(r#","d":"#);
        text.push_str(data);
        text.push('}');
        text
    }

    /// # Errors
    /// Not a note (another program publishing on our channels): the caller counts and drops it.
    pub fn decode(text: &str) -> Result<Note, serde_json::Error> {
        /// A `Message` note, as `message_text` and `encode` write it.
        #[derive(Deserialize)]
        struct MessageWire {
            sp: String,
            f: String,
            t: Option<String>,
            e: String,
            d: Box<serde_json::value::RawValue>,
        }
        if text.starts_with(r#"{"k":"m","#) {
            // `k` is one more field, which the struct ignores.
            let m: MessageWire = serde_json::from_str(text)?;
            return Ok(Note::Message {
                sp: m.sp,
                f: m.f,
                t: m.t,
                e: m.e,
                d: m.d,
            });
        }
        serde_json::from_str(text)
    }
}

/// What the join script answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinReply {
    Ok,
    Full,
    TooManyRooms,
    Already,
    /// Another member of the room has this name (rooms with unique names).
    NameTaken,
    /// This instance's heartbeat is gone (it was taken for dead): it must register again.
    NotRegistered,
}

impl JoinReply {
    pub fn parse(s: &str) -> Option<JoinReply> {
        Some(match s {
            "ok" => JoinReply::Ok,
            "full" => JoinReply::Full,
            "rooms" => JoinReply::TooManyRooms,
            "already" => JoinReply::Already,
            "dead" => JoinReply::NotRegistered,
            "name" => JoinReply::NameTaken,
            _ => return None,
        })
    }
}

/// KEYS[1]: `{P}`. ARGV: dialect, room, peer, name (JSON: a string or null), instance,
/// capacity, max rooms, force ("1": a member coming back after its instance was taken for
/// dead or Redis lost it: no capacity check, and no change if it is there), token, unique
/// ("1": names are unique in the dialect's rooms, kept in `{P}:n:<dialect>:<room>`).
pub const JOIN: &str = r"
local P = KEYS[1]
local sp, room, peer, name, inst = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local cap, maxr, force, token = tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8] == '1', ARGV[9]
local unique = ARGV[10] == '1'
if redis.call('EXISTS', P .. ':i:' .. inst) == 0 then return 'dead' end
local rk = P .. ':r:' .. sp .. ':' .. room
local mk = P .. ':m:' .. inst
local field = sp .. ' ' .. peer
if redis.call('HEXISTS', mk, field) == 1 then
  if force then return 'ok' end
  return 'already'
end
local n_ = cjson.decode(name)
local nk = P .. ':n:' .. sp .. ':' .. room
if unique and n_ ~= cjson.null then
  local holder = redis.call('HGET', nk, n_)
  if holder and holder ~= peer then return 'name' end
end
local n = redis.call('HLEN', rk)
if not force then
  if n == 0 then
    if redis.call('SCARD', P .. ':rooms:' .. sp) >= maxr then return 'rooms' end
  elseif n >= cap then
    return 'full'
  end
end
local seq = redis.call('INCR', P .. ':seq')
if unique and n_ ~= cjson.null then redis.call('HSET', nk, n_, peer) end
redis.call('HSET', rk, peer, cjson.encode({i = inst, n = n_, s = seq, t = token}))
redis.call('SADD', P .. ':rooms:' .. sp, room)
redis.call('HSET', mk, field, room)
redis.call('PUBLISH', P .. ':events',
  cjson.encode({k = 'j', s = seq, sp = sp, r = room, p = peer, n = n_, i = inst, t = token}))
return 'ok'
";

/// KEYS[1]: `{P}`. ARGV: dialect, peer, instance. 1 if the peer was there.
pub const LEAVE: &str = r"
local P = KEYS[1]
local sp, peer, inst = ARGV[1], ARGV[2], ARGV[3]
local mk = P .. ':m:' .. inst
local field = sp .. ' ' .. peer
local room = redis.call('HGET', mk, field)
if not room then return 0 end
redis.call('HDEL', mk, field)
local rk = P .. ':r:' .. sp .. ':' .. room
local record = redis.call('HGET', rk, peer)
if record then
  local n_ = cjson.decode(record).n
  local nk = P .. ':n:' .. sp .. ':' .. room
  if n_ ~= cjson.null and n_ ~= nil and redis.call('HGET', nk, n_) == peer then
    redis.call('HDEL', nk, n_)
  end
end
redis.call('HDEL', rk, peer)
if redis.call('HLEN', rk) == 0 then redis.call('SREM', P .. ':rooms:' .. sp, room) end
local seq = redis.call('INCR', P .. ':seq')
redis.call('PUBLISH', P .. ':events', cjson.encode({k = 'l', s = seq, sp = sp, r = room, p = peer}))
return 1
";

/// KEYS[1]: `{P}`. ARGV: instance, what it says of itself (JSON), ttl in ms. Refreshes the
/// instance's heartbeat; 1 if it was still there, 0 if it had expired (or Redis lost it).
pub const HEARTBEAT: &str = r"
local P = KEYS[1]
local inst, info, ttl = ARGV[1], ARGV[2], ARGV[3]
local was = redis.call('EXISTS', P .. ':i:' .. inst)
redis.call('SET', P .. ':i:' .. inst, info, 'PX', ttl)
redis.call('SADD', P .. ':instances', inst)
return was
";

/// KEYS[1]: `{P}`. Takes every instance whose heartbeat expired out of the cluster: each of
/// its peers leaves its room (published as `Left`, as a leave is). The number of peers.
pub const REAP: &str = r"
local P = KEYS[1]
local gone = 0
for _, inst in ipairs(redis.call('SMEMBERS', P .. ':instances')) do
  if redis.call('EXISTS', P .. ':i:' .. inst) == 0 then
    local mk = P .. ':m:' .. inst
    local held = redis.call('HGETALL', mk)
    for j = 1, #held, 2 do
      local field, room = held[j], held[j + 1]
      local at = string.find(field, ' ', 1, true)
      local sp, peer = string.sub(field, 1, at - 1), string.sub(field, at + 1)
      local rk = P .. ':r:' .. sp .. ':' .. room
      local record = redis.call('HGET', rk, peer)
      if record then
        local n_ = cjson.decode(record).n
        local nk = P .. ':n:' .. sp .. ':' .. room
        if n_ ~= cjson.null and n_ ~= nil and redis.call('HGET', nk, n_) == peer then
          redis.call('HDEL', nk, n_)
        end
      end
      redis.call('HDEL', rk, peer)
      if redis.call('HLEN', rk) == 0 then redis.call('SREM', P .. ':rooms:' .. sp, room) end
      local seq = redis.call('INCR', P .. ':seq')
      redis.call('PUBLISH', P .. ':events',
        cjson.encode({k = 'l', s = seq, sp = sp, r = room, p = peer}))
      gone = gone + 1
    end
    redis.call('DEL', mk)
    redis.call('SREM', P .. ':instances', inst)
  end
end
return gone
";

/// KEYS[1]: `{P}`. ARGV: the dialects. The last change number, then dialect, room, peer and
/// member record (`{"i", "n", "s"}`) of every member, flat.
pub const SNAPSHOT: &str = r"
local P = KEYS[1]
local out = {redis.call('GET', P .. ':seq') or '0'}
for _, sp in ipairs(ARGV) do
  for _, room in ipairs(redis.call('SMEMBERS', P .. ':rooms:' .. sp)) do
    local held = redis.call('HGETALL', P .. ':r:' .. sp .. ':' .. room)
    for j = 1, #held, 2 do
      out[#out + 1] = sp
      out[#out + 1] = room
      out[#out + 1] = held[j]
      out[#out + 1] = held[j + 1]
    end
  end
end
return out
";

/// A member as the snapshot and the room hashes hold it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Record {
    pub i: String,
    pub n: Option<String>,
    pub s: u64,
    #[serde(default)]
    pub t: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_read_back_what_they_wrote_and_what_the_scripts_write() {
        let joined = Note::Joined {
            s: 7,
            sp: "native".into(),
            r: "team".into(),
            p: "ab".into(),
            n: None,
            i: "a".into(),
            t: "x1".into(),
        };
        let same = |a: &Note, b: &Note| assert_eq!(a.encode(), b.encode());
        same(&Note::decode(&joined.encode()).unwrap(), &joined);
        // cjson's order of keys is its own, and a name may be null.
        let from_lua =
            r#"{"n":null,"i":"a","t":"x1","p":"ab","r":"team","sp":"native","s":7,"k":"j"}"#;
        same(&Note::decode(from_lua).unwrap(), &joined);
        let data = r#"{"sdp":"v=0\r\n","n":[1,2]}"#;
        let text = Note::message_text("native", "ab", Some("cd"), "sig\"nal", data);
        match Note::decode(&text).unwrap() {
            Note::Message { sp, f, t, e, d } => {
                assert_eq!(
                    (sp.as_str(), f.as_str(), t.as_deref()),
                    ("native", "ab", Some("cd"))
                );
                assert_eq!((e.as_str(), d.get()), ("sig\"nal", data));
            }
            other => panic!("{other:?}"),
        }
        let to_all = Note::message_text("socketio", "ab", None, "message", "\"hi\"");
        assert!(matches!(
            Note::decode(&to_all).unwrap(),
            Note::Message { t: None, .. }
        ));
        assert!(Note::decode(r#"{"k":"z"}"#).is_err());
        assert!(Note::decode("hello").is_err());
    }

    #[test]
    fn join_replies_are_known() {
        assert_eq!(JoinReply::parse("full"), Some(JoinReply::Full));
        assert_eq!(JoinReply::parse("dead"), Some(JoinReply::NotRegistered));
        assert_eq!(JoinReply::parse("?"), None);
    }
}
