//! Reload against files on disk: applied, rejected, and what waits for a restart.

use super::*;
use std::io::Write;

const BASE: &str = r#"
[worker]
concurrency = 4
[routing]
default_alias = "fast"
[routing.aliases.fast]
provider = "fake"
model = "fake-fast"
[plugins.receipts]
"#;

struct Setup {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    pipeline: Arc<Pipeline>,
    reloader: Reloader,
}

fn write(path: &std::path::Path, text: &str) {
    let mut file = std::fs::File::create(path).expect("create");
    file.write_all(text.as_bytes()).expect("write");
}

fn setup(text: &str) -> Setup {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("worker.toml");
    write(&path, text);
    let config =
        Config::load_with_env(Some(&path), Some(config::Map::new())).expect("initial config");
    let pipeline = Arc::new(Pipeline::new(&config).expect("pipeline"));
    let reloader = Reloader::new(config, pipeline.clone());
    Setup {
        _dir: dir,
        path,
        pipeline,
        reloader,
    }
}

#[test]
fn new_plugins_and_aliases_apply_and_running_jobs_keep_theirs() {
    let s = setup(BASE);
    assert!(s.pipeline.identify(Some("tickets")).is_err());
    let before = s.pipeline.identify(Some("receipts")).expect("receipts");

    write(
        &s.path,
        &format!(
            "{BASE}model_override = true\n[plugins.tickets]\n\
             [routing.aliases.smart]\nprovider = \"fake\"\nmodel = \"fake-smart\"\n"
        ),
    );
    let applied = s.reloader.reload().expect("reload applies");
    assert_eq!(
        applied,
        Applied {
            plugins: 2,
            aliases: 2,
            restart_needed: Vec::new(),
        }
    );
    let tickets = s.pipeline.identify(Some("tickets")).expect("tickets now");
    assert!(tickets.aliases().contains_key("smart"));
    let after = s.pipeline.identify(Some("receipts")).expect("receipts");
    assert!(after.model_override() && !before.model_override());
    // A job that started before the reload runs under the aliases it started with.
    assert!(!before.aliases().contains_key("smart"));
}

#[test]
fn a_file_that_does_not_parse_keeps_the_running_config() {
    let s = setup(BASE);
    write(&s.path, "[plugins.tickets\n");
    let error = s.reloader.reload().expect_err("syntax error");
    assert!(matches!(error, ConfigError::Load(_)), "{error}");
    assert!(s.pipeline.identify(Some("receipts")).is_ok());
    assert!(s.pipeline.identify(Some("tickets")).is_err());

    // An unknown key is refused the same way, naming it.
    write(&s.path, &format!("{BASE}model_overide = true\n"));
    let error = s.reloader.reload().expect_err("unknown key");
    assert!(error.to_string().contains("model_overide"), "{error}");
    assert!(s.pipeline.identify(Some("receipts")).is_ok());
}

#[test]
fn aliases_must_fit_the_running_providers() {
    let s = setup(BASE);
    // A new provider is not built by a reload, so an alias naming it is refused, saying so.
    write(
        &s.path,
        &format!(
            "{BASE}[providers.fake]\n[providers.other]\nkind = \"openai\"\n\
             base_url = \"http://127.0.0.1:1/v1\"\n\
             [routing.aliases.other]\nprovider = \"other\"\nmodel = \"m\"\n"
        ),
    );
    let error = s.reloader.reload().expect_err("unknown provider");
    let text = error.to_string();
    assert!(text.contains("routing.aliases.other"), "{text}");
    assert!(text.contains("restart"), "{text}");
    assert_eq!(
        s.pipeline
            .identify(Some("receipts"))
            .unwrap()
            .aliases()
            .len(),
        1
    );

    // A plugin whose default alias does not exist is refused too.
    write(&s.path, &format!("{BASE}default_model = \"missing\"\n"));
    let error = s.reloader.reload().expect_err("unknown alias");
    assert!(error.to_string().contains("plugins.receipts"), "{error}");
}

#[test]
fn other_sections_are_named_as_waiting_for_a_restart_without_their_values() {
    let s = setup(BASE);
    write(
        &s.path,
        &(BASE.replace("concurrency = 4", "concurrency = 8")
            + "[providers.fake]\napi_key = \"sk-reload-secret-1\"\n"),
    );
    let applied = s.reloader.reload().expect("reload applies");
    assert_eq!(applied.restart_needed, vec!["providers", "worker"]);
    assert!(!format!("{applied:?}").contains("sk-reload-secret-1"));
    assert!(
        !format!("{:?}", s.reloader.state.lock().unwrap().running.origin)
            .contains("sk-reload-secret-1")
    );
    // They still wait: the running worker keeps its own values, and says so again.
    let again = s.reloader.reload().expect("reload applies");
    assert_eq!(again.restart_needed, vec!["providers", "worker"]);
    assert_eq!(
        s.reloader.state.lock().unwrap().running.worker.concurrency,
        4
    );

    // Back as it was: nothing waits.
    write(&s.path, BASE);
    assert!(s.reloader.reload().unwrap().restart_needed.is_empty());
}

#[test]
fn no_file_reloads_the_environment_only() {
    let config = Config::load_with_env(None, Some(config::Map::new())).expect("defaults");
    let pipeline = Arc::new(Pipeline::new(&config).expect("pipeline"));
    let reloader = Reloader::new(config, pipeline);
    assert_eq!(reloader.path(), None);
    let applied = reloader.reload().expect("defaults reload");
    assert!(applied.restart_needed.is_empty());
    assert_eq!(applied.plugins, 1);
}
