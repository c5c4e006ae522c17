//! `[cluster]`: the optional Redis store that replicas of one model share.
//!
//! Absent, `serve` is one process with no Redis. Present, each sidecar claims the alerts it
//! raises in Redis (one owner per (model, client, kind) across the fleet) and shares its
//! model's learned normal, so a new replica starts from the fleet's. The password never sits
//! in the config or the URL: it comes from an environment variable or a file, like every
//! other secret.

use super::sink::{from_env, from_file, Secret};
use super::{invalid, ConfigError};
use serde::{Deserialize, Serialize};

/// Key prefix when none is set: one deployment per Redis database.
pub const DEFAULT_KEY_PREFIX: &str = "probewatch:";
/// Interval between syncs: echoes sent and received, leases renewed. A client's evidence
/// from other replicas reaches a replica at most about one sync late.
pub const DEFAULT_SYNC_MS: u64 = 100;
/// Echoes waiting to be sent; past it the oldest are dropped and counted.
pub const DEFAULT_MAX_ECHOES: usize = 65_536;
/// Environment variable holding the key that names clients in Redis.
pub const DEFAULT_CLUSTER_KEY_ENV: &str = "PROBEWATCH_CLUSTER_KEY";
/// Shortest sync interval: each sync is a few Redis commands, whatever the traffic.
pub const MIN_SYNC_MS: u64 = 50;
/// Connect and response timeout of every Redis command.
pub const DEFAULT_REDIS_TIMEOUT_MS: u64 = 1_000;
/// How long an alert's owner holds it after its last event or renewal. A replica that dies
/// hands its alerts on after this long; renewals every `sync_ms` keep a live owner's.
pub const DEFAULT_LEASE_MS: u64 = 10_000;
/// Alert events waiting for their fleet-wide claim; past it, events are spooled unclaimed
/// (delivered, possibly twice fleet-wide) rather than held or lost.
pub const DEFAULT_MAX_PENDING_CLAIMS: usize = 4_096;
/// Interval between publications of each model's learned normal.
pub const DEFAULT_PUBLISH_NORMAL_MS: u64 = 30_000;

/// The `[cluster]` section.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// `redis://host:port/db` or `rediss://` (TLS). No password in it.
    pub redis_url: String,
    /// ACL user (Redis 6+); empty: the default user.
    #[serde(default)]
    pub username: String,
    /// Environment variable holding the password (AUTH).
    #[serde(default)]
    pub password_env: String,
    /// File holding the password (a mounted Kubernetes secret).
    #[serde(default)]
    pub password_file: String,
    /// PEM bundle of the CA that signed the server's certificate (`rediss://`); empty: the
    /// public web roots.
    #[serde(default)]
    pub ca_file: String,
    /// Prefix of every key, so deployments can share a Redis.
    #[serde(default = "default_prefix")]
    pub key_prefix: String,
    /// This replica's name; empty: `$POD_NAME`, else `$HOSTNAME`, else a random id.
    #[serde(default)]
    pub replica: String,
    #[serde(default = "default_sync")]
    pub sync_ms: u64,
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    #[serde(default = "default_lease")]
    pub lease_ms: u64,
    #[serde(default = "default_pending")]
    pub max_pending: usize,
    /// Interval between publications of the learned normal; 0 disables sharing it.
    #[serde(default = "default_publish")]
    pub publish_normal_ms: u64,
    /// Share what each query adds to its client's window and evidence with the other
    /// replicas, so that decisions rest on all of a client's queries.
    #[serde(default = "default_true")]
    pub share_windows: bool,
    /// Environment variable holding the key (at least 16 bytes, the same on every replica)
    /// under which clients are pseudonymised in Redis.
    #[serde(default = "default_key_env")]
    pub key_env: String,
    #[serde(default = "default_echoes")]
    pub max_echoes: usize,
    /// With `share_windows`: hold each spread client's policy steps for a sync and take them
    /// with the other replicas' echoes in event-time order (`crate::pipeline::hold`). Off by
    /// default: with each replica's normal learned from its own third of the samples, it
    /// alerted a borderline benign client in 2 of 11 runs of the three-sidecar test (see the
    /// README).
    #[serde(default)]
    pub hold_steps: bool,
}

fn default_true() -> bool {
    true
}
fn default_key_env() -> String {
    DEFAULT_CLUSTER_KEY_ENV.into()
}
fn default_echoes() -> usize {
    DEFAULT_MAX_ECHOES
}

fn default_prefix() -> String {
    DEFAULT_KEY_PREFIX.into()
}
fn default_sync() -> u64 {
    DEFAULT_SYNC_MS
}
fn default_timeout() -> u64 {
    DEFAULT_REDIS_TIMEOUT_MS
}
fn default_lease() -> u64 {
    DEFAULT_LEASE_MS
}
fn default_pending() -> usize {
    DEFAULT_MAX_PENDING_CLAIMS
}
fn default_publish() -> u64 {
    DEFAULT_PUBLISH_NORMAL_MS
}

/// A cluster section with its secrets read and its replica named.
#[derive(Debug, Clone)]
pub struct ResolvedCluster {
    pub config: ClusterConfig,
    pub password: Option<Secret>,
    /// The CA bundle's PEM bytes (`ca_file`).
    pub ca_pem: Option<Vec<u8>>,
    pub replica: String,
    /// The client pseudonym key, with `share_windows`.
    pub key: Option<Secret<Vec<u8>>>,
}

impl ClusterConfig {
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        let url = &self.redis_url;
        let rest = url
            .strip_prefix("redis://")
            .or_else(|| url.strip_prefix("rediss://"))
            .ok_or_else(|| invalid("cluster.redis_url", "must start with redis:// or rediss://"))?;
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.contains('@') {
            // Say what is wrong without echoing what may be a password.
            return Err(invalid(
                "cluster.redis_url",
                "must not hold credentials: set cluster.password_env or cluster.password_file",
            ));
        }
        if authority.is_empty() {
            return Err(invalid("cluster.redis_url", "names no host"));
        }
        if !self.ca_file.is_empty() && !url.starts_with("rediss://") {
            return Err(invalid("cluster.ca_file", "needs a rediss:// URL"));
        }
        if !self.password_env.is_empty() && !self.password_file.is_empty() {
            return Err(invalid(
                "cluster.password_env",
                "set password_env or password_file, not both",
            ));
        }
        if self.key_prefix.is_empty() || self.key_prefix.len() > 64 {
            return Err(invalid("cluster.key_prefix", "must be 1 to 64 bytes"));
        }
        if self.sync_ms < MIN_SYNC_MS {
            return Err(invalid(
                "cluster.sync_ms",
                format!("must be at least {MIN_SYNC_MS}"),
            ));
        }
        if self.timeout_ms == 0 || self.timeout_ms >= self.lease_ms {
            return Err(invalid(
                "cluster.timeout_ms",
                "must be over 0 and under lease_ms (a claim must answer before its lease ends)",
            ));
        }
        if self.lease_ms < 2 * self.sync_ms {
            return Err(invalid(
                "cluster.lease_ms",
                "must be at least twice sync_ms (renewals come every sync)",
            ));
        }
        if self.max_pending == 0 {
            return Err(invalid("cluster.max_pending", "must be at least 1"));
        }
        if self.max_echoes == 0 {
            return Err(invalid("cluster.max_echoes", "must be at least 1"));
        }
        Ok(())
    }

    /// Reads the password and CA file, and names the replica.
    pub fn resolve(&self) -> Result<ResolvedCluster, ConfigError> {
        let password = match (self.password_env.as_str(), self.password_file.as_str()) {
            ("", "") => None,
            (v, "") => Some(from_env(v).map_err(|r| invalid("cluster.password_env", r))?),
            (_, f) => Some(from_file(f).map_err(|r| invalid("cluster.password_file", r))?),
        };
        let ca_pem = if self.ca_file.is_empty() {
            None
        } else {
            Some(std::fs::read(&self.ca_file).map_err(|e| {
                invalid(
                    "cluster.ca_file",
                    format!("cannot read {}: {e}", self.ca_file),
                )
            })?)
        };
        let key = if self.share_windows {
            let k = from_env(&self.key_env).map_err(|r| invalid("cluster.key_env", r))?;
            if k.len() < 16 {
                return Err(invalid(
                    "cluster.key_env",
                    format!("${} must hold at least 16 bytes", self.key_env),
                ));
            }
            Some(Secret(k.into_bytes()))
        } else {
            None
        };
        Ok(ResolvedCluster {
            config: self.clone(),
            password: password.map(Secret),
            ca_pem,
            replica: self.replica_name(),
            key,
        })
    }

    fn replica_name(&self) -> String {
        if !self.replica.is_empty() {
            return self.replica.clone();
        }
        ["POD_NAME", "HOSTNAME"]
            .iter()
            .filter_map(|v| std::env::var(v).ok())
            .find(|v| !v.trim().is_empty())
            .unwrap_or_else(|| format!("replica-{}", uuid::Uuid::now_v7().simple()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;

    fn err(text: &str) -> String {
        Config::from_toml_str(text).unwrap_err().to_string()
    }

    #[test]
    fn the_default_config_has_no_cluster() {
        assert!(Config::from_toml_str("").unwrap().cluster.is_none());
    }

    #[test]
    fn bad_cluster_sections_are_rejected_with_the_key_named() {
        let e = err("[cluster]\nredis_url = \"http://r:6379\"\n");
        assert!(e.contains("cluster.redis_url"), "{e}");
        let e = err("[cluster]\nredis_url = \"redis://:hunter2@r:6379\"\n");
        assert!(e.contains("credentials") && !e.contains("hunter2"), "{e}");
        let e = err("[cluster]\nredis_url = \"redis://r\"\nsync_ms = 10\n");
        assert!(e.contains("cluster.sync_ms"), "{e}");
        let e = err("[cluster]\nredis_url = \"redis://r\"\nca_file = \"ca.pem\"\n");
        assert!(e.contains("cluster.ca_file"), "{e}");
        let e = err("[cluster]\nredis_url = \"redis://r\"\nlease_ms = 600\n");
        assert!(e.contains("cluster.timeout_ms"), "{e}");
        let e = err("[cluster]\nredis_url = \"redis://r\"\nkey_prefix = \"\"\n");
        assert!(e.contains("cluster.key_prefix"), "{e}");
        let e = err("[cluster]\nredis_url = \"redis://r\"\nredis_host = \"r\"\n");
        assert!(e.contains("redis_host"), "{e}");
    }

    #[test]
    fn the_password_comes_from_the_environment_and_never_prints() {
        let c = Config::from_toml_str(
            "[cluster]\nredis_url = \"redis://r\"\npassword_env = \"PW_TEST_REDIS_PASSWORD\"\nreplica = \"a\"\nshare_windows = false\n",
        )
        .unwrap();
        let cl = c.cluster.unwrap();
        let e = cl.resolve().unwrap_err().to_string();
        assert!(e.contains("PW_TEST_REDIS_PASSWORD"), "{e}");
        std::env::set_var("PW_TEST_REDIS_PASSWORD", "s3cret-pass");
        let r = cl.resolve().unwrap();
        assert_eq!(r.password.as_ref().unwrap().0, "s3cret-pass");
        assert!(!format!("{r:?}").contains("s3cret"));
        assert_eq!(r.replica, "a");
    }

    #[test]
    fn shared_windows_need_a_key_of_sixteen_bytes() {
        let text =
            |var: &str| format!("[cluster]\nredis_url = \"redis://r\"\nkey_env = \"{var}\"\n");
        let c = Config::from_toml_str(&text("PW_TEST_CLUSTER_KEY_UNSET")).unwrap();
        let e = c.cluster.unwrap().resolve().unwrap_err().to_string();
        assert!(e.contains("cluster.key_env"), "{e}");
        std::env::set_var("PW_TEST_CLUSTER_KEY_SHORT", "short");
        let c = Config::from_toml_str(&text("PW_TEST_CLUSTER_KEY_SHORT")).unwrap();
        let e = c.cluster.unwrap().resolve().unwrap_err().to_string();
        assert!(e.contains("16 bytes") && !e.contains("short\""), "{e}");
        std::env::set_var("PW_TEST_CLUSTER_KEY_OK", "0123456789abcdef");
        let c = Config::from_toml_str(&text("PW_TEST_CLUSTER_KEY_OK")).unwrap();
        let r = c.cluster.unwrap().resolve().unwrap();
        assert_eq!(r.key.unwrap().0, b"0123456789abcdef");
    }
}
