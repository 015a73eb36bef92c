//! Helpers for maintenance tests: a config with scheduling off (or on, for scheduler tests), running the
//! `berth gc|retention|scrub|status` commands on a data directory, and dumping the metadata to compare.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Maintenance config with every scheduled job off and tiny grace periods, plus `extra` TOML appended.
pub fn config(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("berth.toml");
    let toml = format!(
        "mirror = []\n[gc]\ninterval = \"0s\"\ngrace = \"1s\"\nuntagged_ttl = \"1s\"\n\
         [retention]\ninterval = \"0s\"\n[scrub]\ninterval = \"0s\"\n{extra}"
    );
    std::fs::write(&path, toml).expect("write config");
    path
}

/// Like [`config`], with the server's GC and retention scheduled every second (no jitter) and one retention
/// policy for `repos` keeping the newest 2 tags and `latest`, plus `extra` policy keys.
pub fn scheduled_config(dir: &Path, repos: &str, extra: &str) -> PathBuf {
    let path = config(
        dir,
        &format!(
            "[[retention.policy]]\nrepositories = [{repos:?}]\nkeep_newest = 2\nkeep_tags = [\"latest\"]\n{extra}"
        ),
    );
    let toml = std::fs::read_to_string(&path)
        .expect("read config")
        .replace(
            "[gc]\ninterval = \"0s\"",
            "[gc]\ninterval = \"1s\"\njitter = \"0s\"",
        )
        .replace(
            "[retention]\ninterval = \"0s\"",
            "[retention]\ninterval = \"1s\"\njitter = \"0s\"",
        );
    std::fs::write(&path, toml).expect("write config");
    path
}

/// Runs `berth <args…> --config CONFIG --data-dir DATA`.
pub fn run(args: &[&str], config: &Path, data_dir: &Path) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.args(args)
        .arg("--config")
        .arg(config)
        .arg("--data-dir")
        .arg(data_dir)
        .envs(crate::common::metadata_env(data_dir));
    crate::common::blob_env(&mut cmd, data_dir);
    cmd.output().expect("run berth")
}

/// Runs a command with `--json`, asserts the exit status, and parses its standard output.
pub fn json(
    args: &[&str],
    config: &Path,
    data_dir: &Path,
    want_success: bool,
) -> serde_json::Value {
    let mut all: Vec<&str> = args.to_vec();
    all.push("--json");
    let out = run(&all, config, data_dir);
    assert_eq!(
        out.status.success(),
        want_success,
        "berth {args:?}: status {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "berth {args:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

const DUMPED_TABLES: [&str; 7] = [
    "repository",
    "blob",
    "repo_blob",
    "manifest",
    "manifest_ref",
    "tag",
    "blob_tombstone",
];

/// Every row of every content table, in a stable order: equal dumps mean nothing changed.
pub fn db_dump(data_dir: &Path) -> String {
    if crate::common::on_postgres() {
        let mut out = String::new();
        for table in DUMPED_TABLES {
            for row in
                crate::common::psql(data_dir, &format!("SELECT * FROM {table} ORDER BY 1, 2"))
                    .lines()
            {
                out.push_str(&format!("{table} {row}\n"));
            }
        }
        return out;
    }
    let conn = rusqlite::Connection::open_with_flags(
        data_dir.join("berth.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open db");
    let mut out = String::new();
    for table in DUMPED_TABLES {
        let mut stmt = conn
            .prepare(&format!("SELECT * FROM {table} ORDER BY 1, 2"))
            .expect("prepare");
        let n = stmt.column_count();
        let rows = stmt
            .query_map([], |r| {
                let mut cols = Vec::new();
                for i in 0..n {
                    let v: rusqlite::types::Value = r.get(i)?;
                    cols.push(format!("{v:?}"));
                }
                Ok(cols.join("|"))
            })
            .expect("query");
        for row in rows {
            out.push_str(table);
            out.push(' ');
            out.push_str(&row.expect("row"));
            out.push('\n');
        }
    }
    out
}

/// The file holding a blob's bytes (filesystem backend only; see `common::read_blob` and friends for tests
/// that run on either backend).
pub fn blob_file(data_dir: &Path, digest: &str) -> PathBuf {
    let (alg, hex) = digest.split_once(':').expect("digest");
    data_dir.join("blobs").join(alg).join(&hex[..2]).join(hex)
}
