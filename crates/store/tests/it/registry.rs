use store::{DeviceCredential, Error, Grants, Role, Store, secret};

use crate::temp_store;

fn cert(n: u8) -> DeviceCredential {
    DeviceCredential::Certificate {
        serial_hex: format!("4{n}aa"),
        fingerprint_sha256: format!("{n:02x}").repeat(32),
        not_after_ms: 1_900_000_000_000,
    }
}

#[tokio::test]
async fn devices_add_get_list_remove() {
    let (_dir, store) = temp_store().await;
    let devices = store.devices();
    let grants = Grants {
        publish: vec!["shared/#".into()],
        subscribe: vec!["devices/+/status".into()],
    };
    devices.add("kitchen", &cert(1), &grants).await.unwrap();
    let token_hash = secret::hash_token("t0k");
    devices
        .add(
            "garage",
            &DeviceCredential::Token {
                token_hash: token_hash.clone(),
            },
            &Grants::default(),
        )
        .await
        .unwrap();

    let err = devices
        .add("kitchen", &cert(2), &Grants::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::DeviceExists(_)));
    assert!(
        err.to_string().contains("device 'kitchen' already exists"),
        "{err}"
    );
    let err = devices
        .add("Bad/Id", &cert(3), &Grants::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("invalid device id"), "{err}");
    let bad_grant = Grants {
        publish: vec!["a/#/b".into()],
        subscribe: vec![],
    };
    assert!(devices.add("x", &cert(4), &bad_grant).await.is_err());

    let kitchen = devices.require("kitchen").await.unwrap();
    assert_eq!(kitchen.credential, cert(1));
    assert_eq!(kitchen.grants, grants);
    assert!(!kitchen.online && kitchen.last_seen.is_none() && kitchen.meta.is_none());
    let garage = devices.get("garage").await.unwrap().unwrap();
    assert_eq!(garage.credential, DeviceCredential::Token { token_hash });
    let ids: Vec<String> = devices
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(ids, ["garage", "kitchen"]);

    assert!(devices.set_presence("kitchen", true, 1234).await.unwrap());
    assert!(!devices.set_presence("nope", true, 1).await.unwrap());
    let meta = serde_json::json!({"agent": "a", "outputs": [{"name": "led", "type": "bool"}]});
    assert!(devices.set_meta("kitchen", &meta).await.unwrap());
    let kitchen = devices.require("kitchen").await.unwrap();
    assert!(kitchen.online);
    assert_eq!(kitchen.last_seen, Some(1234));
    assert_eq!(kitchen.meta, Some(meta));
    assert_eq!(devices.reset_presence().await.unwrap(), 1);
    assert!(!devices.require("kitchen").await.unwrap().online);

    // Removal revokes the certificate: told apart from an unknown one.
    assert!(
        !devices
            .is_cert_revoked("41aa", &"01".repeat(32))
            .await
            .unwrap()
    );
    let removed = devices.remove("kitchen").await.unwrap();
    assert_eq!(removed.id, "kitchen");
    assert!(devices.get("kitchen").await.unwrap().is_none());
    assert!(devices.is_cert_revoked("", &"01".repeat(32)).await.unwrap());
    assert!(devices.is_cert_revoked("41aa", "").await.unwrap());
    assert!(!devices.is_cert_revoked("", "").await.unwrap());
    assert!(matches!(
        devices.remove("kitchen").await,
        Err(Error::DeviceNotFound(_))
    ));
    let revoked = devices.revoked(10).await.unwrap();
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0].reason, "device removed");
    // The name is free again.
    devices
        .add("kitchen", &cert(5), &Grants::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn rotation_revokes_the_old_credential_and_moves_the_counter() {
    let (_dir, store) = temp_store().await;
    let devices = store.devices();
    let v0 = store.change_counter().await.unwrap();
    devices
        .add("d", &cert(1), &Grants::default())
        .await
        .unwrap();
    let v1 = store.change_counter().await.unwrap();
    assert!(v1 > v0);
    let old = devices
        .set_credential("d", &cert(2), "rotated")
        .await
        .unwrap();
    assert_eq!(old, cert(1));
    assert!(store.change_counter().await.unwrap() > v1);
    assert!(devices.is_cert_revoked("", &"01".repeat(32)).await.unwrap());
    assert!(!devices.is_cert_revoked("", &"02".repeat(32)).await.unwrap());
    assert_eq!(devices.require("d").await.unwrap().credential, cert(2));
    assert!(matches!(
        devices.set_credential("nope", &cert(3), "x").await,
        Err(Error::DeviceNotFound(_))
    ));
    // Presence is not a registry change.
    let v = store.change_counter().await.unwrap();
    devices.set_presence("d", true, 1).await.unwrap();
    assert_eq!(store.change_counter().await.unwrap(), v);
    // A failed change does not move it either.
    let _ = devices.add("d", &cert(4), &Grants::default()).await;
    assert_eq!(store.change_counter().await.unwrap(), v);
}

#[tokio::test]
async fn users_and_tokens() {
    let (_dir, store) = temp_store().await;
    let users = store.users();
    assert_eq!(users.count().await.unwrap(), 0);
    let hash = secret::hash_password("correct horse").unwrap();
    users.add("alice", Role::Admin, &hash).await.unwrap();
    users.add("bob", Role::Viewer, &hash).await.unwrap();
    assert!(matches!(
        users.add("alice", Role::Viewer, &hash).await,
        Err(Error::UserExists(_))
    ));
    assert!(users.add("bad name", Role::Viewer, &hash).await.is_err());
    let alice = users.get("alice").await.unwrap().unwrap();
    assert_eq!(alice.role, Role::Admin);
    assert!(secret::verify_password(
        "correct horse",
        &alice.password_hash
    ));
    assert!(
        !format!("{alice:?}").contains("argon2"),
        "Debug must not show the hash"
    );
    users
        .set_password("alice", &secret::hash_password("battery staple").unwrap())
        .await
        .unwrap();
    assert!(secret::verify_password(
        "battery staple",
        &users.get("alice").await.unwrap().unwrap().password_hash
    ));
    users.set_role("bob", Role::Operator).await.unwrap();
    let names: Vec<(String, Role)> = users
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|u| (u.name, u.role))
        .collect();
    assert_eq!(
        names,
        [
            ("alice".to_string(), Role::Admin),
            ("bob".to_string(), Role::Operator)
        ]
    );
    users.remove("bob").await.unwrap();
    assert!(matches!(
        users.remove("bob").await,
        Err(Error::UserNotFound(_))
    ));
    assert!(matches!(
        users.set_password("bob", &hash).await,
        Err(Error::UserNotFound(_))
    ));

    let tokens = store.tokens();
    let token = secret::generate_api_token();
    tokens
        .create("ci", Role::Operator, &secret::hash_token(&token))
        .await
        .unwrap();
    assert!(matches!(
        tokens.create("ci", Role::Viewer, "h").await,
        Err(Error::TokenExists(_))
    ));
    let found = tokens
        .find_by_hash(&secret::hash_token(&token))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((found.name.as_str(), found.role), ("ci", Role::Operator));
    assert!(
        tokens
            .find_by_hash(&secret::hash_token("other"))
            .await
            .unwrap()
            .is_none()
    );
    tokens.touch("ci", 99).await.unwrap();
    assert_eq!(tokens.get("ci").await.unwrap().unwrap().last_used, Some(99));
    assert_eq!(tokens.list().await.unwrap().len(), 1);
    tokens.revoke("ci").await.unwrap();
    assert!(
        tokens
            .find_by_hash(&secret::hash_token(&token))
            .await
            .unwrap()
            .is_none()
    );
    assert!(matches!(
        tokens.revoke("ci").await,
        Err(Error::TokenNotFound(_))
    ));
}

#[tokio::test]
async fn enroll_codes_work_once_and_expire() {
    let (_dir, store) = temp_store().await;
    store
        .devices()
        .add("pi", &DeviceCredential::Pending, &Grants::default())
        .await
        .unwrap();
    let code = secret::generate_enroll_code();
    let hash = secret::hash_enroll_code(&code);
    let now = 1_000_000;
    store
        .enroll()
        .create("pi", &hash, now + 15 * 60_000)
        .await
        .unwrap();
    assert!(matches!(
        store.enroll().create("ghost", "h", now).await,
        Err(Error::DeviceNotFound(_))
    ));

    // Expired at that time: refused, and not spent.
    assert!(matches!(
        store.enroll().consume(&hash, now + 15 * 60_000).await,
        Err(Error::EnrollCodeInvalid)
    ));
    assert!(
        store
            .enroll()
            .consume(&secret::hash_enroll_code("WRONG"), now)
            .await
            .is_err()
    );
    // Concurrent attempts through two handles on the same file: exactly one wins.
    let other = Store::open(store.location()).await.unwrap();
    let (e1, e2) = (store.enroll(), other.enroll());
    let (a, b) = tokio::join!(e1.consume(&hash, now), e2.consume(&hash, now));
    let wins: Vec<String> = [a, b].into_iter().filter_map(Result::ok).collect();
    assert_eq!(wins, ["pi"]);
    assert!(matches!(
        store.enroll().consume(&hash, now).await,
        Err(Error::EnrollCodeInvalid)
    ));
    assert_eq!(store.enroll().purge(now).await.unwrap(), 1);

    // Removing the device removes its codes.
    let hash2 = secret::hash_enroll_code(&secret::generate_enroll_code());
    store
        .enroll()
        .create("pi", &hash2, now + 1000)
        .await
        .unwrap();
    store.devices().remove("pi").await.unwrap();
    assert!(store.enroll().consume(&hash2, now).await.is_err());
}

#[tokio::test]
async fn audit_log_is_newest_first() {
    let (_dir, store) = temp_store().await;
    let audit = store.audit();
    let a = audit
        .append("cli:root", "device.add", "kitchen", "certificate")
        .await
        .unwrap();
    let b = audit
        .append("user:alice", "device.remove", "kitchen", "")
        .await
        .unwrap();
    assert!(b > a);
    let entries = audit.list(10).await.unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0].action, "device.remove");
    assert_eq!(entries[1].actor, "cli:root");
    assert_eq!(audit.list(1).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_second_process_sees_changes_and_reopening_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/dir/devicecloud.db");
    let server = Store::open(&path.to_string_lossy()).await.unwrap();
    let cli = Store::open(&path.to_string_lossy()).await.unwrap();
    let before = server.change_counter().await.unwrap();
    cli.devices()
        .add("d1", &cert(1), &Grants::default())
        .await
        .unwrap();
    assert!(server.change_counter().await.unwrap() > before);
    assert!(server.devices().get("d1").await.unwrap().is_some());
    server.close().await;
    cli.close().await;
    let again = Store::open(&path.to_string_lossy()).await.unwrap();
    assert_eq!(again.devices().list().await.unwrap().len(), 1);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o077,
            0,
            "database is owner-only"
        );
    }
    let err = Store::open("postgres://user:secret@127.0.0.1:1/none")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        !err.contains("secret"),
        "passwords stay out of messages: {err}"
    );
}

#[test]
fn default_data_dir_follows_the_environment_contract() {
    // Only checks the shape; the variables are process-global, so they are not changed here.
    let dir = store::default_data_dir();
    if let Some(explicit) = std::env::var_os("DEVICECLOUD_DATA").filter(|v| !v.is_empty()) {
        assert_eq!(dir, std::path::PathBuf::from(explicit));
    } else {
        assert!(dir.ends_with("devicecloud"), "{}", dir.display());
    }
}

/// The CLI changes the registry while the server writes telemetry: writers wait for each
/// other (busy timeout) instead of failing with "database is locked".
#[tokio::test]
async fn concurrent_writers_from_two_handles_wait_instead_of_failing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Store::open_data_dir(dir.path()).await.unwrap();
    let cli = Store::open_data_dir(dir.path()).await.unwrap();
    let ingest = {
        let server = server.clone();
        tokio::spawn(async move {
            let mut total = 0;
            for batch in 0..20i64 {
                let samples: Vec<store::Sample> = (0..2_000)
                    .map(|i| store::Sample::new("d0", "t", batch * 10_000 + i, i as f64))
                    .collect();
                total += server.telemetry().insert_batch(&samples).await.unwrap();
            }
            total
        })
    };
    for i in 0..20 {
        let id = format!("d{i}");
        cli.devices()
            .add(&id, &cert(i as u8), &Grants::default())
            .await
            .unwrap();
        cli.audit()
            .append("cli:test", "device.add", &id, "")
            .await
            .unwrap();
    }
    assert_eq!(ingest.await.unwrap(), 40_000);
    assert_eq!(server.devices().list().await.unwrap().len(), 20);
}
