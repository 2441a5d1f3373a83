//! Lua scripts: each runs atomically on the one slot its keys share.

/// KEYS[1] session hash. ARGV: expected version ('' = create), fence, node, document,
/// snapshot. Reply: {'ok', version, old node} | {'stale', fence} | {'conflict', version}.
pub const WRITE_SESSION: &str = r#"
local cur = redis.call('HMGET', KEYS[1], 'ver', 'fence', 'node')
local fence = tonumber(ARGV[2])
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
"#;

/// KEYS[1] session hash, KEYS[2] its schedule set. ARGV: fence.
/// Reply: {'ok', node, schedule ids...} | {'missing'} | {'stale', fence}.
pub const DELETE_SESSION: &str = r#"
local cur = redis.call('HMGET', KEYS[1], 'fence', 'node')
if not cur[1] then return {'missing'} end
local f = tonumber(cur[1])
if not f then return {'corrupt'} end
if tonumber(ARGV[1]) < f then return {'stale', tostring(f)} end
local out = {'ok', cur[2] or ''}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do table.insert(out, id) end
redis.call('DEL', KEYS[1], KEYS[2])
return out
"#;

/// KEYS[1] session hash. ARGV: new node, fence. Reply: {'ok', old node} | {'notfound'} |
/// {'stale', fence}.
pub const MOVE_SESSION: &str = r#"
local cur = redis.call('HMGET', KEYS[1], 'ver', 'fence', 'node')
if not cur[1] then return {'notfound'} end
local ver, f = tonumber(cur[1]), tonumber(cur[2])
if not ver or not f then return {'corrupt'} end
local fence = tonumber(ARGV[2])
if fence < f then return {'stale', tostring(f)} end
redis.call('HSET', KEYS[1], 'node', ARGV[1], 'fence', fence, 'ver', ver + 1)
return {'ok', cur[3] or ''}
"#;

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
