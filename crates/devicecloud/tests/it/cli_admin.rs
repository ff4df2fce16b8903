//! `device`, `user`, `token` and `audit` run as real processes against a temporary data
//! directory, while a second handle on the same database (standing in for the running
//! server) watches the changes arrive.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use proto::bundle::{Bundle, Credentials};
use store::{DeviceCredential, Role, Store, secret};

struct Cli {
    dir: tempfile::TempDir,
}

impl Cli {
    fn new() -> Cli {
        Cli {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn cwd(&self) -> &Path {
        self.dir.path()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_devicecloud"));
        cmd.args(args)
            .arg("--data")
            .arg(self.data())
            .current_dir(self.cwd())
            .env_remove("DEVICECLOUD_DATA")
            .env("DEVICECLOUD_LOG", "warn")
            .stdin(Stdio::null());
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    fn run_with_stdin(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The command may exit before reading (e.g. a refused role): a broken pipe is fine.
        let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
        child.wait_with_output().unwrap()
    }

    /// Runs and expects success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs and expects failure; returns stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "{args:?} should have failed");
        String::from_utf8(out.stderr).unwrap()
    }

    async fn store(&self) -> Store {
        Store::open_data_dir(&self.data()).await.unwrap()
    }
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn device_add_with_certificate_writes_a_bundle_and_pem_files() {
    let cli = Cli::new();
    let out = cli.ok(&["device", "add", "kitchen", "--pem", "pem"]);
    assert!(
        out.contains("device 'kitchen' added with a certificate"),
        "{out}"
    );

    let bundle_path = cli.cwd().join("kitchen.bundle");
    assert_eq!(mode(&bundle_path), 0o600);
    let bundle = Bundle::load(&bundle_path).unwrap();
    assert_eq!(bundle.device_id, "kitchen");
    assert!(
        bundle.broker_urls[0].starts_with("mqtts://") && bundle.broker_urls[0].ends_with(":8883")
    );
    assert!(bundle.api_url.as_deref().unwrap().starts_with("https://"));
    let Credentials::Certificate { cert_pem, key_pem } = &bundle.credentials else {
        panic!("expected a certificate")
    };
    let info = pki::cert_info(cert_pem).unwrap();
    assert_eq!(info.common_name.as_deref(), Some("kitchen"));
    // The bundle's CA is the data directory's CA, and it signed the device certificate.
    let ca = pki::Ca::load(&cli.data().join("ca")).unwrap();
    assert_eq!(bundle.ca_pem, ca.cert_pem());
    assert_eq!(mode(&cli.data().join("ca/ca.key")), 0o600);

    // PEM files for mosquitto_pub --cafile --cert --key.
    let pem = cli.cwd().join("pem");
    assert_eq!(
        std::fs::read_to_string(pem.join("ca.crt")).unwrap(),
        ca.cert_pem()
    );
    assert_eq!(
        &std::fs::read_to_string(pem.join("kitchen.crt")).unwrap(),
        cert_pem
    );
    assert_eq!(
        &std::fs::read_to_string(pem.join("kitchen.key")).unwrap(),
        key_pem
    );
    assert_eq!(mode(&pem.join("kitchen.key")), 0o600);

    // The registry knows the certificate by fingerprint.
    let store = cli.store().await;
    let device = store.devices().require("kitchen").await.unwrap();
    match device.credential {
        DeviceCredential::Certificate {
            fingerprint_sha256,
            serial_hex,
            ..
        } => {
            assert_eq!(fingerprint_sha256, info.fingerprint_sha256);
            assert_eq!(serial_hex, info.serial_hex);
        }
        other => panic!("unexpected credential {other:?}"),
    }
    assert!(!out.contains("PRIVATE KEY"), "no secret on stdout");

    // A second add of the same name fails without touching the existing bundle.
    let err = cli.fails(&["device", "add", "kitchen", "--force"]);
    assert!(err.contains("device 'kitchen' already exists"), "{err}");
    assert_eq!(Bundle::load(&bundle_path).unwrap(), bundle);
    // An existing bundle file is not overwritten by another device either.
    let err = cli.fails(&["device", "add", "other", "--out", "kitchen.bundle"]);
    assert!(
        err.contains("already exists") && err.contains("--force"),
        "{err}"
    );
    assert!(
        store.devices().get("other").await.unwrap().is_none(),
        "nothing registered when the files are refused"
    );
    let err = cli.fails(&["device", "add", "Bad/Name"]);
    assert!(err.contains("invalid device id"), "{err}");
}

#[tokio::test]
async fn token_devices_store_only_a_hash() {
    let cli = Cli::new();
    let out = cli.ok(&[
        "device", "add", "garage", "--token", "--out", "g.bundle", "--pem", "pem",
    ]);
    let bundle = Bundle::load(cli.cwd().join("g.bundle")).unwrap();
    let Credentials::Token { token } = &bundle.credentials else {
        panic!("expected a token")
    };
    assert_eq!(token.len(), 32, "128 bits, hex");
    assert!(
        !out.contains(token.as_str()),
        "the token is in the bundle, not on the terminal"
    );
    assert_eq!(
        &std::fs::read_to_string(cli.cwd().join("pem/garage.token")).unwrap(),
        token
    );
    let store = cli.store().await;
    let DeviceCredential::Token { token_hash } =
        store.devices().require("garage").await.unwrap().credential
    else {
        panic!("expected a token credential")
    };
    assert!(secret::verify_token(token, &token_hash));
    assert_ne!(&token_hash, token);
}

#[tokio::test]
async fn enrollment_codes_work_once() {
    let cli = Cli::new();
    let out = cli.ok(&["device", "add", "pi", "--enroll"]);
    // devicecloud agent enroll https://HOST:8443 CODE --ca-sha256 HEX
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(&words[..3], ["devicecloud", "agent", "enroll"], "{out}");
    assert!(
        words[3].starts_with("https://") && words[3].ends_with(":8443"),
        "{out}"
    );
    let code = words[4];
    assert_eq!(words[5], "--ca-sha256");
    let ca = pki::Ca::load(&cli.data().join("ca")).unwrap();
    assert_eq!(words[6], ca.sha256_hex());
    assert!(
        !cli.cwd().join("pi.bundle").exists(),
        "enrollment writes no bundle"
    );

    let store = cli.store().await;
    assert_eq!(
        store.devices().require("pi").await.unwrap().credential,
        DeviceCredential::Pending
    );
    let hash = secret::hash_enroll_code(code);
    assert_eq!(
        store
            .enroll()
            .consume(&hash, store::now_ms())
            .await
            .unwrap(),
        "pi"
    );
    assert!(
        store
            .enroll()
            .consume(&hash, store::now_ms())
            .await
            .is_err(),
        "a code works once"
    );
    let list = cli.ok(&["device", "list"]);
    assert!(list.contains("pending enrollment"), "{list}");

    // Re-enrolling a device with a certificate revokes it at once and hands out a new code.
    cli.ok(&["device", "add", "cam"]);
    let old = match store.devices().require("cam").await.unwrap().credential {
        DeviceCredential::Certificate {
            fingerprint_sha256, ..
        } => fingerprint_sha256,
        other => panic!("{other:?}"),
    };
    let out = cli.ok(&["device", "rotate", "cam", "--enroll"]);
    let code = out.split_whitespace().nth(4).unwrap();
    assert!(store.devices().is_cert_revoked("", &old).await.unwrap());
    assert_eq!(
        store.devices().require("cam").await.unwrap().credential,
        DeviceCredential::Pending
    );
    assert_eq!(
        store
            .enroll()
            .consume(&secret::hash_enroll_code(code), store::now_ms())
            .await
            .unwrap(),
        "cam"
    );
}

#[tokio::test]
async fn rotate_and_remove_revoke_at_once_while_the_server_watches() {
    let cli = Cli::new();
    cli.ok(&["device", "add", "kitchen"]);
    // The "server": a long-lived handle on the same database.
    let server = cli.store().await;
    let old = match server
        .devices()
        .require("kitchen")
        .await
        .unwrap()
        .credential
    {
        DeviceCredential::Certificate {
            fingerprint_sha256, ..
        } => fingerprint_sha256,
        other => panic!("{other:?}"),
    };
    let before = server.change_counter().await.unwrap();

    let out = cli.ok(&["device", "rotate", "kitchen"]);
    assert!(out.contains("the old certificate no longer works"), "{out}");
    assert!(
        server.change_counter().await.unwrap() > before,
        "the server can notice the change"
    );
    assert!(server.devices().is_cert_revoked("", &old).await.unwrap());
    let bundle = Bundle::load(cli.cwd().join("kitchen.bundle")).unwrap();
    let Credentials::Certificate { cert_pem, .. } = &bundle.credentials else {
        panic!()
    };
    let new = pki::cert_info(cert_pem).unwrap().fingerprint_sha256;
    assert_ne!(new, old);

    // Rotating to a token.
    cli.ok(&["device", "rotate", "kitchen", "--token"]);
    assert!(matches!(
        server
            .devices()
            .require("kitchen")
            .await
            .unwrap()
            .credential,
        DeviceCredential::Token { .. }
    ));
    assert!(server.devices().is_cert_revoked("", &new).await.unwrap());

    server
        .devices()
        .set_presence("kitchen", true, store::now_ms())
        .await
        .unwrap();
    let list = cli.ok(&["device", "list"]);
    let line = list.lines().find(|l| l.starts_with("kitchen")).unwrap();
    assert!(
        line.contains("online") && line.contains("token") && line.contains("s ago"),
        "{list}"
    );
    server
        .telemetry()
        .insert_batch(&[store::Sample::new(
            "kitchen",
            "temperature",
            store::now_ms() - 5_000,
            21.5,
        )])
        .await
        .unwrap();
    let show = cli.ok(&["device", "show", "kitchen"]);
    assert!(show.contains("token (MQTT user name kitchen)"), "{show}");
    assert!(
        show.contains("temperature = 21.5 (") && show.contains("s ago)"),
        "{show}"
    );

    let counter = server.change_counter().await.unwrap();
    let out = cli.ok(&["device", "remove", "kitchen"]);
    assert!(out.contains("removed"), "{out}");
    assert!(server.change_counter().await.unwrap() > counter);
    assert!(server.devices().get("kitchen").await.unwrap().is_none());
    let err = cli.fails(&["device", "show", "kitchen"]);
    assert!(err.contains("no device 'kitchen'"), "{err}");

    let audit = cli.ok(&["audit"]);
    let actions: Vec<&str> = audit
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().nth(3).unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "device.remove",
            "device.rotate",
            "device.rotate",
            "device.add"
        ],
        "{audit}"
    );
    assert!(
        audit
            .lines()
            .skip(1)
            .all(|l| l.split_whitespace().nth(2).unwrap().starts_with("cli:")),
        "{audit}"
    );
    assert_eq!(cli.ok(&["audit", "--limit", "1"]).lines().count(), 2);
}

#[tokio::test]
async fn users_get_argon2_passwords_from_stdin() {
    let cli = Cli::new();
    let out = cli.run_with_stdin(
        &["user", "add", "alice", "--role", "operator"],
        "correct horse battery\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let store = cli.store().await;
    let alice = store.users().get("alice").await.unwrap().unwrap();
    assert_eq!(alice.role, Role::Operator);
    assert!(alice.password_hash.starts_with("$argon2id$"));
    assert!(secret::verify_password(
        "correct horse battery",
        &alice.password_hash
    ));

    let weak = cli.run_with_stdin(&["user", "add", "bob", "--role", "viewer"], "short\n");
    assert!(!weak.status.success());
    assert!(String::from_utf8_lossy(&weak.stderr).contains("at least 8 characters"));
    let dup = cli.run_with_stdin(
        &["user", "add", "alice", "--role", "viewer"],
        "another password\n",
    );
    assert!(String::from_utf8_lossy(&dup.stderr).contains("user 'alice' already exists"));
    let bad_role = cli.run_with_stdin(
        &["user", "add", "carol", "--role", "root"],
        "another password\n",
    );
    assert!(String::from_utf8_lossy(&bad_role.stderr).contains("unknown role 'root'"));

    let out = cli.run_with_stdin(&["user", "passwd", "alice"], "a new password\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let alice = store.users().get("alice").await.unwrap().unwrap();
    assert!(secret::verify_password(
        "a new password",
        &alice.password_hash
    ));
    let list = cli.ok(&["user", "list"]);
    assert!(
        list.contains("alice") && list.contains("operator"),
        "{list}"
    );
    cli.ok(&["user", "remove", "alice"]);
    assert!(store.users().get("alice").await.unwrap().is_none());
    assert!(
        cli.fails(&["user", "remove", "alice"])
            .contains("no user 'alice'")
    );

    let audit = cli.ok(&["audit"]);
    assert!(
        audit.contains("user.add")
            && audit.contains("user.passwd")
            && audit.contains("user.remove"),
        "{audit}"
    );
    assert!(
        !audit.contains("horse") && !audit.contains("new password"),
        "no secret in the audit log"
    );
}

#[tokio::test]
async fn api_tokens_are_printed_once_and_revocable() {
    let cli = Cli::new();
    let token = cli
        .ok(&["token", "create", "ci", "--role", "operator"])
        .trim()
        .to_string();
    assert!(
        token.starts_with("dct_") && token.len() == 36,
        "stdout is just the token: {token}"
    );
    let store = cli.store().await;
    let found = store
        .tokens()
        .find_by_hash(&secret::hash_token(&token))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((found.name.as_str(), found.role), ("ci", Role::Operator));
    let viewer = cli.ok(&["token", "create", "dash"]);
    assert!(
        store
            .tokens()
            .find_by_hash(&secret::hash_token(viewer.trim()))
            .await
            .unwrap()
            .unwrap()
            .role
            == Role::Viewer
    );
    let list = cli.ok(&["token", "list"]);
    assert!(
        list.contains("ci") && list.contains("operator") && !list.contains(&token),
        "{list}"
    );
    assert!(
        cli.fails(&["token", "create", "ci"])
            .contains("token 'ci' already exists")
    );
    cli.ok(&["token", "revoke", "ci"]);
    assert!(
        store
            .tokens()
            .find_by_hash(&secret::hash_token(&token))
            .await
            .unwrap()
            .is_none()
    );
    let audit = cli.ok(&["audit"]);
    assert!(!audit.contains(&token), "{audit}");
}

#[tokio::test]
async fn bundles_and_enrollment_lines_use_the_server_config() {
    let cli = Cli::new();
    std::fs::create_dir_all(cli.data()).unwrap();
    std::fs::write(
        cli.data().join("server.toml"),
        "listeners = [\"mqtts://127.0.0.1:18883\", \"https://127.0.0.1:18443\", \"mqtt://127.0.0.1:11883\"]\n",
    )
    .unwrap();
    cli.ok(&["device", "add", "a"]);
    let bundle = Bundle::load(cli.cwd().join("a.bundle")).unwrap();
    assert_eq!(
        bundle.broker_urls,
        ["mqtts://127.0.0.1:18883"],
        "only TLS listeners go into bundles"
    );
    assert_eq!(bundle.api_url.as_deref(), Some("https://127.0.0.1:18443"));

    std::fs::write(
        cli.data().join("server.toml"),
        "public_broker_urls = [\"mqtts://iot.example.com:8883\"]\npublic_api_url = \"https://iot.example.com\"\n",
    )
    .unwrap();
    cli.ok(&["device", "add", "b"]);
    let bundle = Bundle::load(cli.cwd().join("b.bundle")).unwrap();
    assert_eq!(bundle.broker_urls, ["mqtts://iot.example.com:8883"]);
    cli.ok(&[
        "device",
        "add",
        "gw",
        "--token",
        "--grant-publish",
        "devices/child/#",
        "--grant-subscribe",
        "devices/+/status",
    ]);
    let store = cli.store().await;
    let gw = store.devices().require("gw").await.unwrap();
    assert_eq!(gw.grants.publish, ["devices/child/#"]);
    assert_eq!(gw.grants.subscribe, ["devices/+/status"]);
    let err = cli.fails(&["device", "add", "bad", "--grant-subscribe", "a/#/b"]);
    assert!(
        err.contains("'a/#/b' is not a valid MQTT topic filter"),
        "{err}"
    );
    assert!(store.devices().get("bad").await.unwrap().is_none());
    assert!(
        !cli.cwd().join("bad.bundle").exists(),
        "nothing written for a refused device"
    );
    let out = cli.ok(&["device", "add", "c", "--enroll"]);
    assert!(
        out.starts_with("devicecloud agent enroll https://iot.example.com "),
        "{out}"
    );

    std::fs::write(cli.data().join("server.toml"), "no_such_key = 1\n").unwrap();
    let err = cli.fails(&["device", "list"]);
    assert!(
        err.contains("server.toml") && err.contains("no_such_key"),
        "a broken config is reported: {err}"
    );
}
