//! Lua scripts: each runs atomically on the one slot its keys share.

/// A Lua helper: the newest token of the node's lease, read from `KEYS[key]` when the
/// script was given that key (a standalone server: the check is atomic with the write),
/// else taken from `ARGV[arg]` (Redis Cluster, where the counter lives in another slot:
/// the caller read it just before).
macro_rules! node_fence_lua {
    () => {
        r#"
local function node_fence(key, arg)
  if KEYS[key] then return tonumber(redis.call('GET', KEYS[key]) or '0') or 0 end
  return tonumber(ARGV[arg] or '0') or 0
end
"#
    };
}

/// KEYS[1] session hash, KEYS[2] (standalone) the node lease's token counter. ARGV:
/// expected version ('' = create), fence, node, document, snapshot, node fence (cluster).
/// Reply: {'ok', version, old node} | {'fenced', node fence} | {'stale', fence} |
/// {'conflict', version}.
pub const WRITE_SESSION: &str = concat!(
    node_fence_lua!(),
    r#"
local fence = tonumber(ARGV[2])
local nf = node_fence(2, 6)
if fence < nf then return {'fenced', tostring(nf)} end
local cur = redis.call('HMGET', KEYS[1], 'ver', 'fence', 'node')
local ver = 0
if cur[1] then
  ver = tonumber(cur[1])
  local f = tonumber(cur[2])
  if not ver or not f then return {'corrupt'} end
  if fence < f then return {'stale', tostring(f)} end
  if ARGV[1] == '' or tonumber(ARGV[1]) ~= ver then return {'conflict', tostring(ver)} end
elseif ARGV[1] ~= '' then
  return {'conflict', ''}
end
ver = ver + 1
redis.call('HSET', KEYS[1], 'node', ARGV[3], 'doc', ARGV[4], 'ver', ver, 'fence', fence, 'snap', ARGV[5])
return {'ok', tostring(ver), cur[3] or ''}
"#
);

/// A batch of session writes as one script, so the batch is applied whole or not at all
/// (standalone Redis; a cluster writes one by one). Each write is checked on its own, in
/// order, as `WRITE_SESSION` does, and indexed under the node.
/// KEYS[1] the node lease's token counter, KEYS[2] the node's index set, KEYS[3..] the
/// session hashes. ARGV: fence, node, then per session: id, expected version ('' =
/// create), document, snapshot.
/// Reply: per session three values, as `WRITE_SESSION`'s (padded with '').
pub const WRITE_SESSIONS: &str = r#"
local fence = tonumber(ARGV[1])
local nf = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local out = {}
for i = 3, #KEYS do
  local a = 3 + (i - 3) * 4
  local r
  if fence < nf then
    r = {'fenced', tostring(nf), ''}
  else
    local cur = redis.call('HMGET', KEYS[i], 'ver', 'fence', 'node')
    local ver = 0
    if cur[1] then
      ver = tonumber(cur[1])
      local f = tonumber(cur[2])
      if not ver or not f then r = {'corrupt', '', ''}
      elseif fence < f then r = {'stale', tostring(f), ''}
      elseif ARGV[a + 1] == '' or tonumber(ARGV[a + 1]) ~= ver then r = {'conflict', tostring(ver), ''}
      end
    elseif ARGV[a + 1] ~= '' then
      r = {'conflict', '', ''}
    end
    if not r then
      ver = ver + 1
      redis.call('HSET', KEYS[i], 'node', ARGV[2], 'doc', ARGV[a + 2], 'ver', ver, 'fence', fence, 'snap', ARGV[a + 3])
      redis.call('SADD', KEYS[2], ARGV[a])
      r = {'ok', tostring(ver), cur[3] or ''}
    end
  end
  out[#out + 1] = r[1]
  out[#out + 1] = r[2]
  out[#out + 1] = r[3]
end
return out
"#;

/// KEYS[1] session hash, KEYS[2] its schedule set, KEYS[3] (standalone) the token
/// counter of the lease of the node the caller believes owns it. ARGV: fence, that node,
/// its node fence (cluster).
/// Reply: {'ok', node, schedule ids...} | {'missing'} | {'fenced', node fence} |
/// {'stale', fence} | {'moved', node} (the session belongs to another node than the
/// caller named: it must read it again).
pub const DELETE_SESSION: &str = concat!(
    node_fence_lua!(),
    r#"
local cur = redis.call('HMGET', KEYS[1], 'fence', 'node')
if not cur[1] then return {'missing'} end
local f = tonumber(cur[1])
if not f then return {'corrupt'} end
if cur[2] ~= ARGV[2] then return {'moved', cur[2] or ''} end
local nf = node_fence(3, 3)
if tonumber(ARGV[1]) < nf then return {'fenced', tostring(nf)} end
if tonumber(ARGV[1]) < f then return {'stale', tostring(f)} end
local out = {'ok', cur[2] or ''}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do table.insert(out, id) end
redis.call('DEL', KEYS[1], KEYS[2])
return out
"#
);

/// KEYS[1] session hash, KEYS[2] (standalone) the new node lease's token counter. ARGV:
/// new node, fence, node fence (cluster). Reply: {'ok', old node} | {'notfound'} |
/// {'fenced', node fence} | {'stale', fence}.
pub const MOVE_SESSION: &str = concat!(
    node_fence_lua!(),
    r#"
local fence = tonumber(ARGV[2])
local cur = redis.call('HMGET', KEYS[1], 'ver', 'fence', 'node')
if not cur[1] then return {'notfound'} end
local ver, f = tonumber(cur[1]), tonumber(cur[2])
if not ver or not f then return {'corrupt'} end
local nf = node_fence(2, 3)
if fence < nf then return {'fenced', tostring(nf)} end
-- Another node's tokens are not comparable with this record's (record::check_move).
if cur[3] == ARGV[1] and fence < f then return {'stale', tostring(f)} end
redis.call('HSET', KEYS[1], 'node', ARGV[1], 'fence', fence, 'ver', ver + 1)
return {'ok', cur[3] or ''}
"#
);

/// KEYS[1] schedule hash. ARGV: due, session, kind, payload. Replaces the entry and its
/// claim.
pub const PUT_SCHEDULE: &str = r#"
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'due', ARGV[1], 'session', ARGV[2], 'kind', ARGV[3], 'payload', ARGV[4], 'claimed_by', '', 'claim_until', 0)
return 1
"#;

/// KEYS[1] schedule hash. ARGV: claimer, now, claim until. Reply 1 when claimed.
pub const CLAIM_SCHEDULE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local c = redis.call('HMGET', KEYS[1], 'claimed_by', 'claim_until')
if c[1] and c[1] ~= '' and tonumber(c[2]) > tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'claimed_by', ARGV[1], 'claim_until', ARGV[3])
return 1
"#;

/// A Lua helper: the server's clock in milliseconds (leases use the store's clock).
macro_rules! now_ms_lua {
    () => {
        r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"#
    };
}

/// KEYS[1] lease hash, KEYS[2] token counter. ARGV: holder, ttl ms.
/// Reply: {token, expires} | {} while held.
pub const ACQUIRE_LEASE: &str = concat!(
    now_ms_lua!(),
    r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return {} end
local token = redis.call('INCR', KEYS[2])
local expires = now_ms() + tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'holder', ARGV[1], 'token', token, 'expires', expires)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {token, expires}
"#
);

/// KEYS[1] lease hash. ARGV: holder, token, ttl ms. Reply: new expiry, or nil if lost.
pub const RENEW_LEASE: &str = concat!(
    now_ms_lua!(),
    r#"
local c = redis.call('HMGET', KEYS[1], 'holder', 'token')
if c[1] ~= ARGV[1] or c[2] ~= ARGV[2] then return false end
local expires = now_ms() + tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'expires', expires)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return expires
"#
);

/// KEYS[1] lease hash. ARGV: token. Deletes the lease if still held with that token.
pub const RELEASE_LEASE: &str = r#"
if redis.call('HGET', KEYS[1], 'token') == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"#;

/// KEYS[1] membership hash. ARGV: field, ttl ms, entry. Stores
/// `<heartbeat ms>|<expiry ms>|<entry>` by the server's clock.
pub const ANNOUNCE: &str = concat!(
    now_ms_lua!(),
    r#"
local now = now_ms()
local v = string.format('%.0f|%.0f|', now, now + tonumber(ARGV[2])) .. ARGV[3]
redis.call('HSET', KEYS[1], ARGV[1], v)
return 1
"#
);

/// KEYS[1] membership hash. Removes expired entries; replies with the others as
/// {field, value, ...} (an entry whose expiry cannot be read is returned, to be reported).
pub const MEMBERS: &str = concat!(
    now_ms_lua!(),
    r#"
local now = now_ms()
local all = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #all, 2 do
  local exp = tonumber(string.match(all[i + 1], '^%d+|(%d+)|'))
  if exp and exp <= now then
    redis.call('HDEL', KEYS[1], all[i])
  else
    table.insert(out, all[i])
    table.insert(out, all[i + 1])
  end
end
return out
"#
);
