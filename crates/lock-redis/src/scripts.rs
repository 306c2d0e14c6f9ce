//! The Lua scripts that make every operation one atomic round trip, and how they are called.
//!
//! Scripts are loaded once when a provider connects (`SCRIPT LOAD`, on every primary of a
//! cluster) and then called by digest with `EVALSHA`. A server that lost its script cache
//! (restart, failover, `SCRIPT FLUSH`) answers `NOSCRIPT`: the call is repeated once as `EVAL`
//! with the script's text, which also puts it back in the cache. That is safe because a
//! `NOSCRIPT` call ran nothing.
//!
//! The lock is a string `"<token> <depth> <owner>\0<start>"` (the owner last but for the
//! start: it may contain spaces, never a NUL byte); its expiry is the key's own `PX`, so the
//! server's clock decides it. `<start>` is the server's time in microseconds (`TIME`) when the
//! holder took the lock, kept by re-entry, refresh and the release of a nested level; it
//! follows a NUL byte, which no owner contains, so it can never be read as part of the owner.
//! A lock written without it (by an earlier version) reads as held with an unknown start
//! (held for zero); a version that does not know the start reads the owner with the NUL and
//! start in it, which matches no owner: such a lock is somebody else's to it. A string with `SET ...
//! PX` costs the server a fraction of what a hash with `HSET` plus `PEXPIRE` does. Replies are
//! one space-separated string too (the owner, if any, last): fred decodes it faster than an
//! array.

use fred::clients::Client;
use fred::error::Error;
use fred::interfaces::LuaInterface;
use fred::types::scripts::Script;
use fred::types::Value;

/// Acquires or re-enters a lock.
///
/// `KEYS`: lock, fencing counter. `ARGV`: owner, TTL in ms, the counter's lifetime in ms (the
/// TTL plus the counter's idle time).
///
/// Replies `"1 <token> <depth> <ttl_ms>"` when granted, `"0 <pttl_ms> <holder>"` when busy.
///
/// A new acquisition takes the next token from the counter, raised to at least the server's
/// time in microseconds: tokens then keep increasing even if the counter is lost (a restart
/// without persistence, a failover that lost the last writes, an eviction), as long as the
/// server's clock does not step back. The same time is the hold's start. The counter expires
/// the idle time after the new lease would: by then the time floor alone is above every token
/// the key had, unless the clock stepped back by more than that, and a key locked once does
/// not keep a counter for ever. Re-entry keeps the token and the start, and extends the lease
/// to the longer of what is left and the TTL asked for.
///
/// The common case costs three commands: `TIME`, the lock's `SET NX` with the time as its
/// token, and the counter's `SET ... GET`. Only when the counter was already at or past the
/// time (the clock stepped back, or two acquisitions fell in one microsecond) are the two
/// rewritten with the counter's next value, in the same script, so nobody sees the first
/// token. Times are kept as the digits `TIME` gives: a Lua number conversion costs the server
/// more than the rest of the script's logic, so the counter is compared as text of equal
/// length and converted only in that rare case.
pub(crate) const ACQUIRE: &str = r#"
local now = redis.call('TIME')
local us = now[2]
local fs = now[1] .. string.rep('0', 6 - #us) .. us
if redis.call('SET', KEYS[1], fs .. ' 1 ' .. ARGV[1] .. '\0' .. fs, 'NX', 'PX', ARGV[2]) then
  local c = redis.call('SET', KEYS[2], fs, 'PX', ARGV[3], 'GET')
  if c and #c >= #fs and (#c > #fs or c >= fs) then
    local n = tonumber(c)
    if n then
      local ts = string.format('%d', n + 1)
      redis.call('SET', KEYS[2], ts, 'PX', ARGV[3])
      redis.call('SET', KEYS[1], ts .. ' 1 ' .. ARGV[1] .. '\0' .. fs, 'KEEPTTL')
      return '1 ' .. ts .. ' 1 ' .. ARGV[2]
    end
  end
  return '1 ' .. fs .. ' 1 ' .. ARGV[2]
end
local v = redis.call('GET', KEYS[1])
if not v then return '0 0 ' end
local t, d, o = string.match(v, '^(%d+) (%d+) (.*)$')
local s = ''
local z = o and string.find(o, '\0', 1, true)
if z then s = string.sub(o, z); o = string.sub(o, 1, z - 1) end
if o == ARGV[1] then
  d = tonumber(d) + 1
  local left = redis.call('PTTL', KEYS[1])
  if left < tonumber(ARGV[2]) then
    redis.call('SET', KEYS[1], t .. ' ' .. d .. ' ' .. o .. s, 'PX', ARGV[2])
    return '1 ' .. t .. ' ' .. d .. ' ' .. ARGV[2]
  end
  redis.call('SET', KEYS[1], t .. ' ' .. d .. ' ' .. o .. s, 'KEEPTTL')
  return '1 ' .. t .. ' ' .. d .. ' ' .. left
end
return '0 ' .. redis.call('PTTL', KEYS[1]) .. ' ' .. (o or v)
"#;

/// Releases one level of a lock, publishing on its channel when the lock becomes free.
///
/// `KEYS`: lock. `ARGV`: owner, token (empty: any), channel.
///
/// Replies `"1 <depth_left> <token>"` when released, `"0"` when nobody holds the lock,
/// `"-1 <holder>"` when somebody else (or another acquisition, when a token is given) does.
/// The message published is the released token. A nested level keeps the hold's start.
pub(crate) const RELEASE: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v then return '0' end
local t, d, o = string.match(v, '^(%d+) (%d+) (.*)$')
local s = ''
local z = o and string.find(o, '\0', 1, true)
if z then s = string.sub(o, z); o = string.sub(o, 1, z - 1) end
if o ~= ARGV[1] or (ARGV[2] ~= '' and t ~= ARGV[2]) then return '-1 ' .. (o or v) end
d = tonumber(d) - 1
if d > 0 then
  redis.call('SET', KEYS[1], t .. ' ' .. d .. ' ' .. o .. s, 'KEEPTTL')
  return '1 ' .. d .. ' ' .. t
end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[3], t)
return '1 0 ' .. t
"#;

/// Sets a held lock's TTL (the value, and so the hold's start, stays).
///
/// `KEYS`: lock. `ARGV`: owner, TTL in ms.
///
/// Replies `"1 <token> <depth>"` when refreshed, `"0"` when the owner does not hold the lock.
pub(crate) const REFRESH: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v then return '0' end
local t, d, o = string.match(v, '^(%d+) (%d+) (.*)$')
local z = o and string.find(o, '\0', 1, true)
if z then o = string.sub(o, 1, z - 1) end
if o ~= ARGV[1] then return '0' end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return '1 ' .. t .. ' ' .. d
"#;

/// Reads a lock.
///
/// `KEYS`: lock. Replies `"0"` when free, `"1 <token> <depth> <pttl_ms> <held_us> <owner>"`
/// when held: `held_us` is how long the holder has held it by the server's clock (`TIME` minus
/// the start; 0 when the value has no start).
pub(crate) const INSPECT: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v then return '0' end
local t, d, o = string.match(v, '^(%d+) (%d+) (.*)$')
if not o then return redis.error_reply('distlock: malformed lock value') end
local held = 0
local z = string.find(o, '\0', 1, true)
if z then
  local start = tonumber(string.sub(o, z + 1))
  o = string.sub(o, 1, z - 1)
  if start then
    local now = redis.call('TIME')
    held = tonumber(now[1]) * 1000000 + tonumber(now[2]) - start
    if held < 0 then held = 0 end
  end
end
return '1 ' .. t .. ' ' .. d .. ' ' .. redis.call('PTTL', KEYS[1]) .. ' ' .. string.format('%d', held) .. ' ' .. o
"#;

/// The scripts, with their digests computed once.
#[derive(Clone, Debug)]
pub(crate) struct Scripts {
    pub(crate) acquire: Script,
    pub(crate) release: Script,
    pub(crate) refresh: Script,
    pub(crate) inspect: Script,
}

impl Default for Scripts {
    fn default() -> Self {
        Scripts {
            acquire: Script::from_lua(ACQUIRE),
            release: Script::from_lua(RELEASE),
            refresh: Script::from_lua(REFRESH),
            inspect: Script::from_lua(INSPECT),
        }
    }
}

impl Scripts {
    /// Loads every script into the server's cache (every primary of a cluster).
    pub(crate) async fn load(&self, client: &Client) -> Result<(), Error> {
        for s in [&self.acquire, &self.release, &self.refresh, &self.inspect] {
            s.load(client).await?;
        }
        Ok(())
    }
}

/// `true` for the server's answer to `EVALSHA` of a script it does not have.
pub(crate) fn is_noscript(e: &Error) -> bool {
    e.details().starts_with("NOSCRIPT")
}

/// One `EVALSHA`; on `NOSCRIPT`, one `EVAL` with the script's text, which runs it whatever the
/// cache holds (another flush may come at any time) and caches it again for the next calls.
pub(crate) async fn call(
    client: &Client,
    script: &Script,
    keys: &[&str],
    args: &[&str],
) -> Result<String, Error> {
    let keys_of = || keys.iter().map(|k| fred::types::Key::from(*k)).collect::<Vec<_>>();
    let args_of = || args.iter().map(|a| Value::from(*a)).collect::<Vec<_>>();
    match client.evalsha(script.sha1().clone(), keys_of(), args_of()).await {
        Err(e) if is_noscript(&e) => {
            tracing::debug!(script = %script.sha1(), "script cache lost on the server; sending the script itself");
            let lua = script.lua().expect("scripts are built from their text").clone();
            client.eval(lua, keys_of(), args_of()).await
        }
        other => other,
    }
}

/// A script's reply: space-separated fields, the last of which may contain spaces.
pub(crate) struct Reply<'a> {
    fields: std::str::SplitN<'a, char>,
    text: &'a str,
    what: &'static str,
}

impl<'a> Reply<'a> {
    /// Splits `text` into at most `n` fields.
    pub(crate) fn new(text: &'a str, n: usize, what: &'static str) -> Self {
        Reply { fields: text.splitn(n, ' '), text, what }
    }

    fn bad(&self) -> Error {
        Error::new(
            fred::error::ErrorKind::Parse,
            format!("unexpected {} script reply: {:?}", self.what, self.text),
        )
    }

    /// The next field as text.
    pub(crate) fn text(&mut self) -> Result<&'a str, Error> {
        self.fields.next().ok_or_else(|| self.bad())
    }

    /// Field `i` (0-based), skipping the ones before it.
    pub(crate) fn nth(mut self, i: usize) -> Result<&'a str, Error> {
        self.fields.nth(i).ok_or_else(|| self.bad())
    }

    /// The next field as a number.
    pub(crate) fn num<T: std::str::FromStr>(&mut self) -> Result<T, Error> {
        self.text()?.parse().map_err(|_| self.bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_field_keeps_its_spaces() {
        let mut r = Reply::new("0 1500 worker 7 on host a", 3, "acquire");
        assert_eq!(
            (r.text().unwrap(), r.num::<i64>().unwrap(), r.text().unwrap()),
            ("0", 1500, "worker 7 on host a")
        );
        assert_eq!(Reply::new("-1 an owner", 2, "release").nth(1).unwrap(), "an owner");
        let mut r = Reply::new("1 17 2", 3, "refresh");
        assert!(r.num::<u32>().is_ok() && r.num::<u64>().is_ok());
        assert!(r.num::<u32>().is_ok());
        assert!(r.text().is_err(), "no more fields");
        assert!(Reply::new("x", 2, "inspect").num::<u64>().is_err());
    }
}
