//! The password file (`devicecloud broker passwd` format) with mosquitto clients: the right
//! password gets in, a wrong one is refused with the right CONNACK code.

use std::sync::Arc;

use broker::{
    listener::Scheme,
    password_file::{PasswordFile, PasswordFileAuth},
};

use crate::interop::{Proc, TestBroker, mosq_args};

#[tokio::test]
async fn password_file_users_get_in_and_wrong_passwords_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("passwd");
    PasswordFile::set_user(&path, "alice", "correct horse").unwrap();
    let auth = Arc::new(PasswordFileAuth::load(&path).unwrap());
    let broker = TestBroker::start(&["mqtt://127.0.0.1:0"], auth, None).await;
    let port = broker.port(Scheme::Mqtt).to_string();

    for version in ["mqttv311", "mqttv5"] {
        let topic = format!("interop/auth/{version}");
        let mut args = mosq_args(
            &port,
            version,
            &["-F", crate::interop::FORMAT, "-t", &topic, "-C", "1"],
        );
        args.extend_from_slice(&["-u", "alice", "-P", "correct horse"]);
        let mut subscriber = Proc::spawn("mosquitto_sub", &args);
        subscriber.subscribed().await;
        let args = mosq_args(
            &port,
            version,
            &[
                "-u",
                "alice",
                "-P",
                "correct horse",
                "-t",
                &topic,
                "-m",
                "authed",
            ],
        );
        Proc::spawn("mosquitto_pub", &args).success().await;
        assert_eq!(subscriber.message().await.payload, "authed");
        subscriber.success().await;

        for (user, password) in [("alice", "wrong"), ("mallory", "correct horse")] {
            let args = mosq_args(
                &port,
                version,
                &["-u", user, "-P", password, "-t", &topic, "-C", "1"],
            );
            let (status, out) = Proc::spawn("mosquitto_sub", &args).finish().await;
            let text = out.join("\n").to_lowercase();
            assert!(!status.success(), "{user}/{password} got in:\n{text}");
            // v3.1.1 return code 4, v5 reason code 0x86: both read "bad user name or password".
            assert!(
                text.contains("bad user name or password"),
                "{version} {user}:\n{text}"
            );
        }

        // No credentials at all: not authorised (v3 code 5, v5 0x87).
        let args = mosq_args(&port, version, &["-t", &topic, "-C", "1"]);
        let (status, out) = Proc::spawn("mosquitto_sub", &args).finish().await;
        let text = out.join("\n").to_lowercase();
        assert!(
            !status.success() && text.contains("not authori"),
            "{version}:\n{text}"
        );
    }
    broker.stop().await;
}
