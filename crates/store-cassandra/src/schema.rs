//! Configuration and every CQL statement the backend issues, as pure functions so they can
//! be tested without a server.

use std::time::Duration;

use ors_store::StoreError;

/// Connection and keyspace settings, after ORS's `persistence` options:
/// `cassandra-nodes` (`;`-separated), `cassandra-listenport`, `cassandra-keyspace-name`,
/// `cassandra-strategy-class`, `cassandra-strategy-options`, `username`, `password`.
#[derive(Debug, Clone)]
pub struct CassandraConfig {
    /// Contact points (`host` or `host:port`).
    pub nodes: Vec<String>,
    /// The port of contact points given without one.
    pub port: u16,
    /// The keyspace (ORS's is `orchestration`).
    pub keyspace: String,
    /// `SimpleStrategy` or `NetworkTopologyStrategy`.
    pub strategy_class: String,
    /// `replication_factor:2`, or `DC1:2;DC2:3` for `NetworkTopologyStrategy`.
    pub strategy_options: String,
    /// User name for password authentication.
    pub username: Option<String>,
    /// Password for password authentication.
    pub password: Option<String>,
    /// Create the keyspace and tables if missing.
    pub create_schema: bool,
    /// A safety-net TTL on session records and schedule entries (ORS writes one on every
    /// record); `None` for none.
    pub record_ttl: Option<Duration>,
    /// Giving up on connecting after this long.
    pub connect_timeout: Duration,
    /// Number of partitions of the due-time index (spreads schedule load).
    pub schedule_shards: u32,
}

impl Default for CassandraConfig {
    fn default() -> Self {
        CassandraConfig {
            nodes: vec!["127.0.0.1".into()],
            port: 9042,
            keyspace: "orchestration".into(),
            strategy_class: "SimpleStrategy".into(),
            strategy_options: "replication_factor:1".into(),
            username: None,
            password: None,
            create_schema: true,
            record_ttl: None,
            connect_timeout: Duration::from_secs(5),
            schedule_shards: 16,
        }
    }
}

impl CassandraConfig {
    /// Parses ORS's `cassandra-nodes` form: `host1;host2;host3` (an optional `:port`
    /// per host overrides `port`).
    pub fn parse_nodes(list: &str) -> Vec<String> {
        list.split([';', ','])
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    }

    /// `host:port` for every node.
    pub fn contact_points(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| {
                if n.contains(':') {
                    n.clone()
                } else {
                    format!("{n}:{}", self.port)
                }
            })
            .collect()
    }
}

fn identifier(kind: &str, s: &str) -> Result<(), StoreError> {
    let ok = !s.is_empty()
        && s.len() <= 48
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "{kind} \"{s}\" must be 1-48 letters, digits or _ and not start with a digit"
        )))
    }
}

/// The `replication` map of `CREATE KEYSPACE`, from ORS-style options.
pub fn replication(class: &str, options: &str) -> Result<String, StoreError> {
    let mut parts = Vec::new();
    for opt in options.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        let (k, v) = opt.split_once(':').ok_or_else(|| {
            StoreError::Invalid(format!("strategy option \"{opt}\" is not name:number"))
        })?;
        let (k, v) = (k.trim(), v.trim());
        identifier("strategy option name", k)?;
        let n: u32 = v.parse().map_err(|_| {
            StoreError::Invalid(format!("replication factor \"{v}\" is not a number"))
        })?;
        parts.push(format!("'{k}': {n}"));
    }
    match class {
        "SimpleStrategy" => {
            if parts.len() != 1 || !parts[0].starts_with("'replication_factor'") {
                return Err(StoreError::Invalid(
                    "SimpleStrategy takes exactly replication_factor:N".into(),
                ));
            }
        }
        "NetworkTopologyStrategy" => {
            if parts.is_empty() {
                return Err(StoreError::Invalid(
                    "NetworkTopologyStrategy needs DC:N entries such as DC1:2;DC2:3".into(),
                ));
            }
        }
        other => {
            return Err(StoreError::Invalid(format!(
                "strategy class \"{other}\" (use SimpleStrategy or NetworkTopologyStrategy)"
            )));
        }
    }
    Ok(format!("{{'class': '{class}', {}}}", parts.join(", ")))
}

/// Every statement, rendered for one keyspace.
#[derive(Debug, Clone)]
pub struct Statements {
    /// `CREATE KEYSPACE` and `CREATE TABLE` statements, in order.
    pub create: Vec<String>,
    /// The CQL behind `put_document`.
    pub put_document: String,
    /// The CQL behind `get_document`.
    pub get_document: String,
    /// The CQL behind `create_session`.
    pub create_session: String,
    /// The CQL behind `update_session`.
    pub update_session: String,
    /// The CQL behind `read_session`.
    pub read_session: String,
    /// The CQL behind `delete_session`.
    pub delete_session: String,
    /// The CQL behind `move_session`.
    pub move_session: String,
    /// The CQL behind `index_session`.
    pub index_session: String,
    /// The CQL behind `unindex_session`.
    pub unindex_session: String,
    /// The CQL behind `node_sessions`.
    pub node_sessions: String,
    /// The CQL behind `put_schedule`.
    pub put_schedule: String,
    /// The CQL behind `announce` (the TTL in seconds is bound).
    pub announce: String,
    /// The CQL behind `members`.
    pub members: String,
    /// The CQL behind `withdraw`.
    pub withdraw: String,
    /// The CQL behind `index_due`.
    pub index_due: String,
    /// The CQL behind `unindex_due`.
    pub unindex_due: String,
    /// The CQL behind `index_session_schedule`.
    pub index_session_schedule: String,
    /// The CQL behind `unindex_session_schedule`.
    pub unindex_session_schedule: String,
    /// The CQL behind `session_schedules`.
    pub session_schedules: String,
    /// The CQL behind `read_schedule`.
    pub read_schedule: String,
    /// The CQL behind `due`.
    pub due: String,
    /// The CQL behind `claim_schedule`.
    pub claim_schedule: String,
    /// The CQL behind `delete_schedule`.
    pub delete_schedule: String,
    /// The CQL behind `create_lease`.
    pub create_lease: String,
    /// The CQL behind `take_lease`.
    pub take_lease: String,
    /// The CQL behind `renew_lease`.
    pub renew_lease: String,
    /// The CQL behind `release_lease`.
    pub release_lease: String,
    /// The CQL behind `read_lease`.
    pub read_lease: String,
}

impl Statements {
    /// Renders every statement for `cfg` (its keyspace and TTL); invalid names are an error.
    pub fn new(cfg: &CassandraConfig) -> Result<Statements, StoreError> {
        let ks = &cfg.keyspace;
        identifier("keyspace name", ks)?;
        let repl = replication(&cfg.strategy_class, &cfg.strategy_options)?;
        let ttl = match cfg.record_ttl {
            Some(d) if d.as_secs() > 0 => format!(" USING TTL {}", d.as_secs()),
            _ => String::new(),
        };
        Ok(Statements {
            create: vec![
                format!("CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {repl}"),
                format!(
                    "CREATE TABLE IF NOT EXISTS {ks}.documents (hash text PRIMARY KEY, body blob)"
                ),
                format!(
                    "CREATE TABLE IF NOT EXISTS {ks}.sessions (id text PRIMARY KEY, node text, document text, \
                     version bigint, fence bigint, snapshot blob)"
                ),
                format!(
                    "CREATE TABLE IF NOT EXISTS {ks}.node_sessions (node text, session text, \
                     PRIMARY KEY (node, session))"
                ),
                format!(
                    "CREATE TABLE IF NOT EXISTS {ks}.schedules (id text PRIMARY KEY, session text, due bigint, \
                     kind text, payload blob, claimed_by text, claim_until bigint)"
                ),
                format!(
                    "CREATE TABLE IF NOT EXISTS {ks}.schedules_due (shard int, due bigint, id text, \
                     PRIMARY KEY (shard, due, id))"
                ),
                format!(
                    "CREATE TABLE IF NOT EXISTS {ks}.session_schedules (session text, id text, \
                     PRIMARY KEY (session, id))"
                ),
                format!(
                    "CREATE TABLE IF NOT EXISTS {ks}.leases (name text PRIMARY KEY, holder text, token bigint, \
                     expires bigint)"
                ),
                // One partition: the membership is small and read whole.
                format!(
                    "CREATE TABLE IF NOT EXISTS {ks}.members (cluster int, member text, body blob, \
                     PRIMARY KEY (cluster, member))"
                ),
            ],
            put_document: format!(
                "INSERT INTO {ks}.documents (hash, body) VALUES (?, ?) IF NOT EXISTS"
            ),
            get_document: format!("SELECT body FROM {ks}.documents WHERE hash = ?"),
            create_session: format!(
                "INSERT INTO {ks}.sessions (id, node, document, version, fence, snapshot) \
                 VALUES (?, ?, ?, 1, ?, ?) IF NOT EXISTS{ttl}"
            ),
            update_session: format!(
                "UPDATE {ks}.sessions{ttl} SET node = ?, document = ?, version = ?, fence = ?, snapshot = ? \
                 WHERE id = ? IF version = ? AND fence <= ?"
            ),
            read_session: format!(
                "SELECT node, document, version, fence, snapshot FROM {ks}.sessions WHERE id = ?"
            ),
            delete_session: format!("DELETE FROM {ks}.sessions WHERE id = ? IF fence <= ?"),
            move_session: format!(
                "UPDATE {ks}.sessions SET node = ?, fence = ?, version = ? WHERE id = ? IF version = ?"
            ),
            index_session: format!("INSERT INTO {ks}.node_sessions (node, session) VALUES (?, ?)"),
            unindex_session: format!(
                "DELETE FROM {ks}.node_sessions WHERE node = ? AND session = ?"
            ),
            node_sessions: format!("SELECT session FROM {ks}.node_sessions WHERE node = ?"),
            put_schedule: format!(
                "INSERT INTO {ks}.schedules (id, session, due, kind, payload, claimed_by, claim_until) \
                 VALUES (?, ?, ?, ?, ?, '', 0){ttl}"
            ),
            index_due: format!(
                "INSERT INTO {ks}.schedules_due (shard, due, id) VALUES (?, ?, ?){ttl}"
            ),
            unindex_due: format!(
                "DELETE FROM {ks}.schedules_due WHERE shard = ? AND due = ? AND id = ?"
            ),
            index_session_schedule: format!(
                "INSERT INTO {ks}.session_schedules (session, id) VALUES (?, ?)"
            ),
            unindex_session_schedule: format!(
                "DELETE FROM {ks}.session_schedules WHERE session = ? AND id = ?"
            ),
            session_schedules: format!("SELECT id FROM {ks}.session_schedules WHERE session = ?"),
            read_schedule: format!(
                "SELECT session, due, kind, payload, claimed_by, claim_until FROM {ks}.schedules WHERE id = ?"
            ),
            due: format!(
                "SELECT due, id FROM {ks}.schedules_due WHERE shard = ? AND due <= ? LIMIT ?"
            ),
            claim_schedule: format!(
                "UPDATE {ks}.schedules SET claimed_by = ?, claim_until = ? WHERE id = ? IF claim_until <= ?"
            ),
            delete_schedule: format!("DELETE FROM {ks}.schedules WHERE id = ?"),
            create_lease: format!(
                "INSERT INTO {ks}.leases (name, holder, token, expires) VALUES (?, ?, 1, ?) IF NOT EXISTS"
            ),
            take_lease: format!(
                "UPDATE {ks}.leases SET holder = ?, token = ?, expires = ? WHERE name = ? IF token = ? AND expires <= ?"
            ),
            renew_lease: format!(
                "UPDATE {ks}.leases SET expires = ? WHERE name = ? IF token = ? AND holder = ? AND expires > ?"
            ),
            release_lease: format!(
                "UPDATE {ks}.leases SET expires = 0 WHERE name = ? IF token = ?"
            ),
            read_lease: format!("SELECT holder, token, expires FROM {ks}.leases WHERE name = ?"),
            announce: format!(
                "INSERT INTO {ks}.members (cluster, member, body) VALUES (0, ?, ?) USING TTL ?"
            ),
            members: format!("SELECT member, body FROM {ks}.members WHERE cluster = 0"),
            withdraw: format!("DELETE FROM {ks}.members WHERE cluster = 0 AND member = ?"),
        })
    }
}

/// The partition of the due-time index an entry goes to (FNV-1a of its id).
pub fn shard_of(id: &str, shards: u32) -> i32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in id.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    (h % shards.max(1)) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replication_follows_ors_options() {
        assert_eq!(
            replication("SimpleStrategy", "replication_factor:2").unwrap(),
            "{'class': 'SimpleStrategy', 'replication_factor': 2}"
        );
        assert_eq!(
            replication("NetworkTopologyStrategy", "DC1:2;DC2:3").unwrap(),
            "{'class': 'NetworkTopologyStrategy', 'DC1': 2, 'DC2': 3}"
        );
        for (class, opts) in [
            ("SimpleStrategy", "DC1:2"),
            ("SimpleStrategy", ""),
            ("NetworkTopologyStrategy", ""),
            ("NetworkTopologyStrategy", "DC1:x"),
            ("NetworkTopologyStrategy", "DC1'; DROP KEYSPACE x; --:1"),
            ("EverywhereStrategy", "replication_factor:1"),
        ] {
            assert!(replication(class, opts).is_err(), "{class} {opts}");
        }
    }

    #[test]
    fn keyspace_names_are_checked() {
        for bad in ["", "1abc", "a-b", "ks; DROP TABLE x", &"k".repeat(49)] {
            let cfg = CassandraConfig {
                keyspace: bad.to_string(),
                ..Default::default()
            };
            assert!(Statements::new(&cfg).is_err(), "{bad}");
        }
    }

    #[test]
    fn schema_and_statements() {
        let cfg = CassandraConfig {
            keyspace: "ors_test".into(),
            strategy_class: "NetworkTopologyStrategy".into(),
            strategy_options: "DC1:2;DC2:3".into(),
            record_ttl: Some(Duration::from_secs(86_400)),
            ..Default::default()
        };
        let s = Statements::new(&cfg).unwrap();
        assert_eq!(
            s.create[0],
            "CREATE KEYSPACE IF NOT EXISTS ors_test WITH replication = \
             {'class': 'NetworkTopologyStrategy', 'DC1': 2, 'DC2': 3}"
        );
        assert_eq!(s.create.len(), 9);
        assert!(
            s.create
                .iter()
                .skip(1)
                .all(|c| c.starts_with("CREATE TABLE IF NOT EXISTS ors_test."))
        );
        // Compare-and-set is a lightweight transaction with version and fence conditions.
        assert!(s.update_session.ends_with("IF version = ? AND fence <= ?"));
        assert!(s.update_session.contains("USING TTL 86400"));
        assert!(s.create_session.ends_with("IF NOT EXISTS USING TTL 86400"));
        assert!(s.claim_schedule.ends_with("IF claim_until <= ?"));
        assert!(s.take_lease.ends_with("IF token = ? AND expires <= ?"));
        // Every statement is counted: placeholders match what the backend binds.
        for (stmt, n) in [
            (&s.create_session, 5),
            (&s.update_session, 8),
            (&s.move_session, 5),
            (&s.put_schedule, 5),
            (&s.claim_schedule, 4),
            (&s.take_lease, 6),
            (&s.renew_lease, 5),
            (&s.due, 3),
            (&s.announce, 3),
        ] {
            assert_eq!(stmt.matches('?').count(), n, "{stmt}");
        }
        let no_ttl = Statements::new(&CassandraConfig::default()).unwrap();
        assert!(!no_ttl.update_session.contains("TTL"));
    }

    #[test]
    fn nodes_and_shards() {
        assert_eq!(
            CassandraConfig::parse_nodes("a; b;c:9999;"),
            ["a", "b", "c:9999"]
        );
        let cfg = CassandraConfig {
            nodes: CassandraConfig::parse_nodes("a;c:9999"),
            port: 9142,
            ..Default::default()
        };
        assert_eq!(cfg.contact_points(), ["a:9142", "c:9999"]);
        let shards: std::collections::BTreeSet<i32> =
            (0..1000).map(|i| shard_of(&format!("e{i}"), 16)).collect();
        assert_eq!(shards.len(), 16, "ids spread over every shard");
        assert_eq!(shard_of("x", 16), shard_of("x", 16));
    }
}
