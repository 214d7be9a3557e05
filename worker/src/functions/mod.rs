//! The worker's Redis scripts as one Redis Functions library (`FUNCTION LOAD`, `FCALL`),
//! loaded when the worker starts.
//!
//! The library's name carries a hash of its text (`quarry_<hash>`, functions
//! `quarry_<hash>_<name>`), so workers of different versions in one rolling upgrade each call
//! their own code, and loading is idempotent. Redis keeps functions across restarts only with
//! persistence; a Redis that came back without them answers `Function not found`, and
//! [`Library::query`] loads the library again and repeats the call: the one recovery path.

use redis::aio::ConnectionManager;
use redis::{Cmd, FromRedisValue, RedisResult, ToRedisArgs};
use std::sync::LazyLock;

/// The library's source: each script's body becomes a local function of `(KEYS, ARGV)`.
const TEMPLATE: &str = concat!(
    "#!lua name=quarry_@V\n",
    include_str!("window.lua"),
    "local function claim(KEYS, ARGV)\n",
    include_str!("claim.lua"),
    "\nend\n",
    "local function reserve(KEYS, ARGV)\n",
    include_str!("reserve.lua"),
    "\nend\n",
    "local function finish(KEYS, ARGV)\n",
    include_str!("finish.lua"),
    "\nend\n",
    "local function status(KEYS, ARGV)\n",
    include_str!("status.lua"),
    "\nend\n",
    "redis.register_function('quarry_@V_claim', claim)\n",
    "redis.register_function('quarry_@V_reserve', reserve)\n",
    "redis.register_function('quarry_@V_finish', finish)\n",
    "redis.register_function('quarry_@V_status', status)\n",
);

/// The library, computed once.
pub static LIBRARY: LazyLock<Library> = LazyLock::new(Library::build);

/// A function of the library.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Function {
    /// A job's idempotency claim (`claim.lua`).
    Claim,
    /// One atomic limiter decision (`reserve.lua`).
    Reserve,
    /// A reservation's settlement (`finish.lua`).
    Finish,
    /// Key state for the gauges (`status.lua`).
    Status,
}

/// The library's text and its functions' names.
#[derive(Debug)]
pub struct Library {
    text: String,
    names: [String; 4],
}

impl Library {
    fn build() -> Self {
        // The version is the template's SHA-1 (the hash Redis itself gives a script).
        let hash = redis::Script::new(TEMPLATE).get_hash().to_owned();
        let version = &hash[..12];
        let name = |f: &str| format!("quarry_{version}_{f}");
        Self {
            text: TEMPLATE.replace("@V", version),
            names: [
                name("claim"),
                name("reserve"),
                name("finish"),
                name("status"),
            ],
        }
    }

    /// The name Redis knows a function by.
    pub fn name(&self, function: Function) -> &str {
        let i = match function {
            Function::Claim => 0,
            Function::Reserve => 1,
            Function::Finish => 2,
            Function::Status => 3,
        };
        &self.names[i]
    }

    /// `FCALL` of `function` with `keys`; the caller adds the arguments. Runs with
    /// [`Library::query`] or in a pipeline.
    pub fn call<K: ToRedisArgs>(&self, function: Function, keys: &[K]) -> Cmd {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg(self.name(function)).arg(keys.len()).arg(keys);
        cmd
    }

    /// Loads the library (idempotent: the same text under the same name).
    pub async fn load(&self, redis: &ConnectionManager) -> RedisResult<()> {
        let mut conn = redis.clone();
        redis::cmd("FUNCTION")
            .arg("LOAD")
            .arg("REPLACE")
            .arg(&self.text)
            .query_async::<String>(&mut conn)
            .await
            .map(drop)
    }

    /// Runs `cmd`; if Redis lost the library (it restarted without persistence), loads it and
    /// runs `cmd` once more.
    pub async fn query<T: FromRedisValue>(
        &self,
        redis: &ConnectionManager,
        cmd: &Cmd,
    ) -> RedisResult<T> {
        let mut conn = redis.clone();
        match cmd.query_async(&mut conn).await {
            Err(error) if is_missing(&error) => {
                tracing::warn!("Redis lost the quarry functions (restarted?); loading them again");
                self.load(redis).await?;
                cmd.query_async(&mut conn).await
            }
            other => other,
        }
    }
}

/// Whether `error` says a function is not loaded.
pub fn is_missing(error: &redis::RedisError) -> bool {
    error.to_string().contains("Function not found")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_library_is_named_by_its_text_and_names_every_function() {
        let library = Library::build();
        assert!(library.text.starts_with("#!lua name=quarry_"));
        assert!(!library.text.contains("@V"));
        for function in [
            Function::Claim,
            Function::Reserve,
            Function::Finish,
            Function::Status,
        ] {
            let name = library.name(function);
            assert!(
                library
                    .text
                    .contains(&format!("redis.register_function('{name}'")),
                "{name}"
            );
        }
        assert_eq!(
            Library::build().names,
            library.names,
            "the version is stable"
        );
    }
}
