//! `berth export` against a misbehaving or password-protected registry (the fault-injecting fake of
//! `tests/common/upstream.rs`): credentials go out as HTTP Basic only when given; a blob answered with wrong, short or
//! no bytes fails the export with a message naming it, and leaves neither the archive nor its `.partial` file.

#[path = "common/archive.rs"]
mod archive;
mod common;
#[path = "common/upstream.rs"]
mod upstream;

use archive::{berth_env, read_tar};
use upstream::{Auth, Fault, TestImage, Upstream};

fn export(
    up: &Upstream,
    out: &std::path::Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> std::process::Output {
    let url = up.url();
    let mut args = vec![
        "export",
        "team/app:v1",
        "-o",
        out.to_str().unwrap(),
        "--server",
        &url,
    ];
    args.extend_from_slice(extra);
    berth_env(&args, env)
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn export_sends_basic_credentials_only_when_given() {
    let up = Upstream::start_with_auth(Auth::Basic {
        username: "alice".into(),
        password: "s3cret-Pw".into(),
    });
    let img = TestImage::new(41, &[10_000, 70_000]);
    up.put_image("team/app", "v1", &img);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("a.tar");

    let o = export(&up, &out, &[], &[]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("401"), "{}", stderr(&o));
    assert!(!out.exists());

    let o = export(&up, &out, &["--user", "alice"], &[]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("BERTH_PASSWORD"), "{}", stderr(&o));

    let o = export(
        &up,
        &out,
        &["--user", "alice"],
        &[("BERTH_PASSWORD", "wrong")],
    );
    assert!(!o.status.success());
    assert!(
        !stderr(&o).contains("wrong"),
        "the password must not be echoed"
    );

    let o = export(
        &up,
        &out,
        &[],
        &[("BERTH_USER", "alice"), ("BERTH_PASSWORD", "s3cret-Pw")],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = export(
        &up,
        &out,
        &["--user", "alice", "--password-env", "MY_TOKEN"],
        &[("MY_TOKEN", "s3cret-Pw")],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let files = read_tar(&out);
    for (d, b) in img.blobs() {
        assert_eq!(files[&format!("blobs/sha256/{}", &d[7..])], b.to_vec());
    }
}

#[test]
fn export_refuses_wrong_short_or_empty_blobs_and_leaves_no_file() {
    let up = Upstream::start();
    let img = TestImage::new(42, &[10_000, 300_000]);
    up.put_image("team/app", "v1", &img);
    let tmp = tempfile::tempdir().unwrap();
    let layer = img.layers[1].0.clone();
    for (fault, expect) in [
        (Fault::WrongBytes, "hashes to"),
        (Fault::Truncate, &layer[..]),
        (Fault::ZeroBytes, &layer[..]),
        (Fault::Status(500), "500"),
    ] {
        up.heal();
        up.set_path_fault(&layer, fault.clone());
        let out = tmp.path().join("f.tar");
        let o = export(&up, &out, &[], &[]);
        assert!(!o.status.success(), "{fault:?}: export succeeded");
        assert!(stderr(&o).contains(expect), "{fault:?}: {}", stderr(&o));
        assert!(!out.exists(), "{fault:?}: archive left behind");
        assert!(
            !tmp.path().join("f.tar.partial").exists(),
            "{fault:?}: partial file left behind"
        );
    }
    up.heal();
    let out = tmp.path().join("ok.tar");
    let o = export(&up, &out, &[], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
}
