//! The account commands and first start: `berth user …` on the data directory of a running server, htpasswd
//! import, the admin password shown once, and `serve`'s secure default.

#[path = "common/auth.rs"]
mod auth;
mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use auth::{Creds, send};
use reqwest::Method;

#[tokio::test(flavor = "multi_thread")]
async fn serve_is_closed_by_default() {
    let b = common::Berth::start_secure(&[]);
    let base = b.url();
    let (s, _, body) = send(
        Method::POST,
        &format!("{base}/v2/app/blobs/uploads/"),
        &Creds::Anonymous,
        &[],
        vec![],
    )
    .await;
    assert_eq!(
        (s.as_u16(), auth::code(&body).as_str()),
        (401, "UNAUTHORIZED")
    );
    let (s, _, _) = send(
        Method::GET,
        &format!("{base}/v2/app/tags/list"),
        &Creds::Anonymous,
        &[],
        vec![],
    )
    .await;
    assert_eq!(s, 401);
    let (s, _, _) = send(
        Method::GET,
        &format!("{base}/v2/_catalog"),
        &Creds::Anonymous,
        &[],
        vec![],
    )
    .await;
    assert_eq!(s, 401);
    // Any signed-in user may use private repositories under the default policy.
    let (s, _, _) = send(
        Method::POST,
        &format!("{base}/v2/app/blobs/uploads/"),
        &auth::admin(),
        &[],
        vec![],
    )
    .await;
    assert_eq!(s, 202);
}

#[tokio::test(flavor = "multi_thread")]
async fn first_start_prints_a_random_admin_password_once() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_berth"))
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(dir.path())
            .envs(common::metadata_env(dir.path()))
            .env_remove("BERTH_ADMIN_PASSWORD")
            .env_remove("BERTH_OPEN_ACCESS")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut child = spawn();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut password = None;
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(p) = line.split("with password: ").nth(1) {
            password = Some(p.trim().to_owned());
        }
        let listening = line.contains("berth listening");
        seen.push(line);
        if listening {
            break;
        }
    }
    let password =
        password.unwrap_or_else(|| panic!("no admin password in the log:\n{}", seen.join("\n")));
    assert!(password.len() >= 24);
    // Only that one line holds it: no other log line repeats the secret.
    assert_eq!(seen.iter().filter(|l| l.contains(&password)).count(), 1);
    let base = format!("http://127.0.0.1:{port}");
    let (s, _, _) = send(
        Method::GET,
        &format!("{base}/v2/"),
        &Creds::basic("admin", &password),
        &[],
        vec![],
    )
    .await;
    assert_eq!(s, 200);
    let _ = child.kill();
    let _ = child.wait();
    std::thread::spawn(move || for _ in lines {});

    // A second start creates nothing and prints no password.
    let mut child = spawn();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        assert!(!line.contains("with password"), "{line}");
        if line.contains("berth listening") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread")]
async fn user_commands_work_on_a_running_server() {
    let b = auth::secure_berth("[auth]\nmax_failed_logins = 0\n");
    let base = b.url();
    auth::add_user(&b, "alice", "alice-pw");
    let (s, _, _) = send(
        Method::GET,
        &format!("{base}/v2/"),
        &Creds::basic("alice", "alice-pw"),
        &[],
        vec![],
    )
    .await;
    assert_eq!(s, 200, "a user added by the CLI can sign in at once");
    // Duplicates, bad names and empty passwords are refused.
    assert!(
        !auth::cli(&b.data_dir, &["user", "add", "alice"], "x\n")
            .status
            .success()
    );
    assert!(
        !auth::cli(&b.data_dir, &["user", "add", "bad name"], "x\n")
            .status
            .success()
    );
    assert!(
        !auth::cli(&b.data_dir, &["user", "add", "carol"], "\n")
            .status
            .success()
    );
    auth::cli_ok(
        &b.data_dir,
        &["user", "add", "--admin", "root2"],
        "root-pw\n",
    );
    let list = auth::cli_ok(&b.data_dir, &["user", "list"], "");
    let rows: Vec<Vec<&str>> = list
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    let names: Vec<(&str, &str)> = rows.iter().map(|r| (r[0], r[1])).collect();
    assert_eq!(
        names,
        [("admin", "true"), ("alice", "false"), ("root2", "true")]
    );
    assert!(
        !auth::cli(&b.data_dir, &["user", "remove", "nobody"], "")
            .status
            .success()
    );

    // htpasswd (bcrypt) import keeps the hashes working.
    let htpasswd = b.data_dir.join("htpasswd");
    std::fs::write(
        &htpasswd,
        format!(
            "# comment\nbob:{}\ndave:{}\n",
            bcrypt::hash("bob-pw", 4).unwrap(),
            bcrypt::hash("dave-pw", 4).unwrap()
        ),
    )
    .unwrap();
    auth::cli_ok(
        &b.data_dir,
        &["user", "import-htpasswd", htpasswd.to_str().unwrap()],
        "",
    );
    let (s, _, _) = send(
        Method::GET,
        &format!("{base}/v2/"),
        &Creds::basic("bob", "bob-pw"),
        &[],
        vec![],
    )
    .await;
    assert_eq!(s, 200);
    let (s, _, _) = send(
        Method::GET,
        &format!("{base}/v2/"),
        &Creds::basic("dave", "bob-pw"),
        &[],
        vec![],
    )
    .await;
    assert_eq!(s, 401);
    // Unsupported hash schemes are refused as a whole.
    std::fs::write(&htpasswd, "eve:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n").unwrap();
    assert!(
        !auth::cli(
            &b.data_dir,
            &["user", "import-htpasswd", htpasswd.to_str().unwrap()],
            ""
        )
        .status
        .success()
    );

    // A token for a user that does not exist, or with a malformed scope, is refused.
    assert!(
        !auth::cli(
            &b.data_dir,
            &["token", "create", "--user", "nobody", "--scope", "a:pull"],
            ""
        )
        .status
        .success()
    );
    assert!(
        !auth::cli(
            &b.data_dir,
            &["token", "create", "--user", "alice", "--scope", "a:fly"],
            ""
        )
        .status
        .success()
    );
}

/// Audit lines (target `audit`) for failed logins, pushes, deletes and token creation, and no secret in any line
/// of the server's or the CLI's output.
#[tokio::test(flavor = "multi_thread")]
async fn audit_lines_name_events_and_never_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log_path = dir.path().join("server.log");
    let port = common::free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(&data)
        .envs(common::metadata_env(&data))
        .env("BERTH_ADMIN_PASSWORD", common::ADMIN_PASSWORD)
        .env_remove("BERTH_OPEN_ACCESS")
        .env("RUST_LOG", "warn,audit=info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "server did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = auth::cli(&data, &["user", "add", "ci"], "ci-secret-pw\n");
    assert!(out.status.success());
    let cli_log = String::from_utf8_lossy(&out.stderr).to_string();
    let out = auth::cli(
        &data,
        &["token", "create", "--user", "ci", "--scope", "**:*"],
        "",
    );
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let cli_log = cli_log + &String::from_utf8_lossy(&out.stderr);
    assert!(
        cli_log.contains("user_added") && cli_log.contains("token_created"),
        "{cli_log}"
    );
    // In words, not Rust's debug output: no `Some(…)`, and a token without `--expires` says so.
    assert!(
        cli_log.contains("expires_at=never") && cli_log.contains("(does not expire)"),
        "{cli_log}"
    );
    assert!(!cli_log.contains("Some("), "{cli_log}");

    let (s, _, _) = send(
        Method::GET,
        &format!("{base}/v2/"),
        &Creds::basic("ci", "wrong-guess-pw"),
        &[],
        vec![],
    )
    .await;
    assert_eq!(s, 401);
    let ci = Creds::basic("ci", &token);
    let pushed = auth::push_image(&base, &ci, "team/app", "v1", "audit").await;
    let (s, _, _) = send(
        Method::DELETE,
        &format!("{base}/v2/team/app/manifests/{}", pushed.manifest),
        &ci,
        &[],
        vec![],
    )
    .await;
    assert_eq!(s, 202);
    let _ = child.kill();
    let _ = child.wait();

    let server_log = std::fs::read_to_string(&log_path).unwrap();
    let audit: Vec<&str> = server_log.lines().filter(|l| l.contains("audit")).collect();
    let has = |event: &str, detail: &str| {
        audit
            .iter()
            .any(|l| l.contains(event) && l.contains(detail))
    };
    assert!(has("login_failed", "ci"), "{server_log}");
    assert!(has("login_failed", "ip=127.0.0.1"), "{server_log}");
    assert!(!server_log.contains("Some("), "{server_log}");
    assert!(has("\"push\"", "team/app"), "{server_log}");
    assert!(has("\"delete\"", "team/app"), "{server_log}");
    let secret_part = token.rsplit('_').next().unwrap();
    for log in [&server_log, &cli_log] {
        for secret in [
            "ci-secret-pw",
            "wrong-guess-pw",
            secret_part,
            common::ADMIN_PASSWORD,
        ] {
            assert!(!log.contains(secret), "a secret leaked into a log:\n{log}");
        }
    }
}
