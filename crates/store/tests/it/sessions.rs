use store::{CommandStatus, Error, Role, secret};

use crate::temp_store;

#[tokio::test]
async fn sessions_follow_their_user() {
    let (_dir, store) = temp_store().await;
    store
        .users()
        .add(
            "alice",
            Role::Operator,
            &secret::hash_password("pw-pw-pw-pw").unwrap(),
        )
        .await
        .unwrap();
    let sid = secret::generate_session_secret();
    let id_hash = secret::hash_token(&sid);
    let csrf = secret::generate_session_secret();
    store
        .sessions()
        .create(&id_hash, "alice", &csrf, 2_000)
        .await
        .unwrap();
    assert!(matches!(
        store.sessions().create("x", "ghost", "c", 2_000).await,
        Err(Error::UserNotFound(_))
    ));

    let s = store
        .sessions()
        .get(&id_hash, 1_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (s.user.as_str(), s.role, s.csrf_token.as_str()),
        ("alice", Role::Operator, csrf.as_str())
    );
    assert!(
        store
            .sessions()
            .get(&id_hash, 2_000)
            .await
            .unwrap()
            .is_none(),
        "expired"
    );
    store.sessions().extend(&id_hash, 3_000).await.unwrap();
    assert!(
        store
            .sessions()
            .get(&id_hash, 2_500)
            .await
            .unwrap()
            .is_some()
    );
    // A role change applies to live sessions at once.
    store.users().set_role("alice", Role::Viewer).await.unwrap();
    assert_eq!(
        store
            .sessions()
            .get(&id_hash, 2_500)
            .await
            .unwrap()
            .unwrap()
            .role,
        Role::Viewer
    );
    // A password change ends sessions.
    store
        .users()
        .set_password("alice", &secret::hash_password("another-pw").unwrap())
        .await
        .unwrap();
    assert!(
        store
            .sessions()
            .get(&id_hash, 2_500)
            .await
            .unwrap()
            .is_none()
    );

    store
        .sessions()
        .create(&id_hash, "alice", &csrf, 5_000)
        .await
        .unwrap();
    store
        .sessions()
        .create("other", "alice", &csrf, 100)
        .await
        .unwrap();
    assert_eq!(store.sessions().delete_expired(1_000).await.unwrap(), 1);
    store.users().remove("alice").await.unwrap();
    assert!(
        store
            .sessions()
            .get(&id_hash, 1_000)
            .await
            .unwrap()
            .is_none(),
        "removing a user ends sessions"
    );
}

#[tokio::test]
async fn commands_reach_one_final_status() {
    let (_dir, store) = temp_store().await;
    let cmds = store.commands();
    let value = serde_json::json!(true);
    cmds.create("c1", "pi", "led", &value, Some("user:alice"), 100)
        .await
        .unwrap();
    cmds.create("c2", "pi", "led", &serde_json::json!(false), None, 200)
        .await
        .unwrap();
    assert!(
        cmds.create("c1", "pi", "led", &value, None, 300)
            .await
            .is_err(),
        "ids are unique"
    );
    let c1 = cmds.get("c1").await.unwrap().unwrap();
    assert_eq!(
        (c1.status, c1.value.clone(), c1.actor.as_deref()),
        (CommandStatus::Pending, value, Some("user:alice"))
    );

    assert!(
        cmds.finish("c1", CommandStatus::Confirmed, None, 150)
            .await
            .unwrap()
    );
    assert!(
        !cmds
            .finish("c1", CommandStatus::Timeout, Some("late"), 160)
            .await
            .unwrap(),
        "first outcome wins"
    );
    let c1 = cmds.get("c1").await.unwrap().unwrap();
    assert_eq!((c1.status, c1.updated_at), (CommandStatus::Confirmed, 150));

    assert_eq!(cmds.expire_pending(250, 400).await.unwrap(), 1);
    let c2 = cmds.get("c2").await.unwrap().unwrap();
    assert_eq!(c2.status, CommandStatus::Timeout);
    assert!(c2.error.unwrap().contains("did not confirm"));
    let listed: Vec<String> = cmds
        .list_for_device("pi", 10)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(listed, ["c2", "c1"]);
    assert_eq!(cmds.purge(1_000).await.unwrap(), 2);
    assert!(cmds.get("c1").await.unwrap().is_none());
}
