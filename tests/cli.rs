//! The binary's contract: `config default`, config validation, graceful shutdown and its last log line, plain
//! logs when stderr is not a terminal, and quiet ends on a closed stdout.

mod common;

use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

fn berth() -> Command {
    Command::new(env!("CARGO_BIN_EXE_berth"))
}

#[test]
fn config_default_is_a_valid_config_with_every_key_commented() {
    let out = berth().args(["config", "default"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for key in [
        "listen",
        "shutdown_timeout",
        "data_dir",
        "sqlite_synchronous",
        "max_manifest_size",
        "upload_expiry",
        "color",
    ] {
        assert!(
            text.contains(&format!("\n{key} = ")),
            "default config lacks {key}"
        );
    }
    // Every key is explained: by the comment line just above it, or by name in the comments of its section.
    let lines: Vec<&str> = text.lines().collect();
    let comments: String = lines
        .iter()
        .filter(|l| l.starts_with('#'))
        .copied()
        .collect();
    for (i, l) in lines.iter().enumerate() {
        if let Some((key, _)) = l.split_once(" = ")
            && !l.starts_with('#')
        {
            assert!(
                lines[i - 1].starts_with('#') || comments.contains(key.trim()),
                "key {key:?} is not explained by any comment"
            );
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("berth.toml");
    std::fs::write(&path, &text).unwrap();
    let check = berth()
        .args(["config", "check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}

#[test]
fn unknown_config_key_is_refused_by_name_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("berth.toml");
    std::fs::write(&path, "[storage]\ndata_dri = \"/tmp/x\"\n").unwrap();
    let out = berth()
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("data_dri"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

#[test]
fn invalid_listen_address_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let out = berth()
        .args(["serve", "--listen", "not-an-address", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not-an-address"));
}

/// SIGTERM while an upload is in flight: the request completes, then the process exits cleanly.
#[test]
fn sigterm_lets_in_flight_requests_finish() {
    let mut b = common::Berth::start();
    let data = vec![5u8; 4 << 20];
    let digest = common::sha256_digest(&data);
    let mut s = std::net::TcpStream::connect(("127.0.0.1", b.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "POST /v2/cli/term/blobs/uploads/?digest={digest} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        data.len()
    )
    .unwrap();
    s.write_all(&data[..1 << 20]).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let pid = b.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    std::thread::sleep(Duration::from_millis(300));
    s.write_all(&data[1 << 20..]).unwrap();
    let mut resp = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&resp).contains("\r\n\r\n") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "connection closed before a response");
        resp.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&resp);
    assert!(head.starts_with("HTTP/1.1 201"), "{head}");
    drop(s);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = b.child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "berth did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // What was acknowledged is there after a restart.
    let b2 = common::Berth::start_on(&b.data_dir, &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let status = rt.block_on(async {
        common::client()
            .head(format!("{}/v2/cli/term/blobs/{digest}", b2.url()))
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(status, 200);
}

/// A command whose stdout reader is gone (`berth … | head -1` after `head` exits) ends quietly: killed by
/// SIGPIPE like any Unix filter, or exit 0, never a "failed printing to stdout" panic. The pipe's read end is closed
/// before the command starts, so every write meets EPIPE (a shell pipeline into `head` would leave it to timing:
/// a short output fits the pipe buffer before `head` exits).
#[test]
fn every_command_ends_quietly_when_its_stdout_reader_is_gone() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let commands: [&[&str]; 4] = [
        &["config", "default"],
        &["--help"],
        &["status", "--data-dir", data],
        &["user", "list", "--data-dir", data],
    ];
    for args in commands {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = berth()
            .args(args)
            .env("BERTH_ADMIN_PASSWORD", common::ADMIN_PASSWORD)
            .stdout(writer)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.code() == Some(0) || out.status.signal() == Some(libc::SIGPIPE),
            "berth {args:?}: {} ({stderr})",
            out.status
        );
        assert!(!stderr.contains("panicked"), "berth {args:?}: {stderr}");
    }
    // The same through a shell, as people type it: the first line arrives, and nothing is said on stderr.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "'{}' config default | head -1",
            env!("CARGO_BIN_EXE_berth")
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", out.status);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "# berth configuration. Every key is optional; the values below are the defaults.\n"
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
}

/// Starts berth with its log (at `info`) in a file, makes one request, stops it with SIGTERM; returns the log.
fn log_of_a_short_run(config: &str) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("berth.toml");
    std::fs::write(&cfg, config).unwrap();
    let log = tmp.path().join("berth.log");
    let mut b = common::Berth::start_secure_logging(
        &tmp.path().join("data"),
        &["--config", cfg.to_str().unwrap()],
        &log,
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let status = rt.block_on(async {
        common::client()
            .get(format!("{}/v2/", b.url()))
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(status, 401, "an access log line");
    let (status, _) = b.terminate(Duration::from_secs(20));
    assert!(status.success(), "exit status {status}");
    std::fs::read_to_string(&log).unwrap()
}

#[test]
fn serve_writes_no_colour_escapes_when_stderr_is_a_file() {
    let log = log_of_a_short_run("");
    assert!(log.contains("berth listening"), "{log}");
    assert!(!log.contains('\x1b'), "ANSI escapes in a log file: {log:?}");
}

#[test]
fn log_color_always_writes_colour_escapes_even_to_a_file() {
    let log = log_of_a_short_run("[log]\ncolor = \"always\"\n");
    assert!(log.contains("\x1b["), "no ANSI escapes: {log:?}");
    let log = log_of_a_short_run("[log]\ncolor = \"never\"\n");
    assert!(!log.contains('\x1b'), "{log:?}");
}

#[test]
fn sigterm_ends_the_log_with_berth_stopped() {
    let log = log_of_a_short_run("");
    let last = log
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    assert!(
        last.contains("INFO") && last.ends_with("berth stopped"),
        "last line: {last:?}\n{log}"
    );
    assert!(log.contains("shutting down"), "{log}");
}
